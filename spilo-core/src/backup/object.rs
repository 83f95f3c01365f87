//! The stored form of a WAL file: a zstd stream of its bytes followed by a zstd *skippable
//! frame* (which every zstd decoder passes over, so `zstd -d` and WAL-G read the object as a
//! plain `.zst`) holding spilo's trailer: a digest and the length of the original bytes.
//!
//! ```text
//! [zstd frame(s) of the file][magic 0x184D2A5E LE][payload length 45 LE]["SPLO" version digest(32) size(8 LE)]
//! ```
//!
//! Version 3 (written since 2026-12-06) holds an XXH3-128 digest (16 bytes, big-endian as
//! `xxhsum -H2` prints it, then 16 zero bytes); versions 2 (BLAKE3) and 1 (SHA-256) are read
//! still. On the archive's hot path the digest of every original byte cost about a third of
//! the daemon's CPU with SHA-256, a tenth with BLAKE3 (4.6 GB/s on one core here) and a few
//! percent with XXH3 (17 GB/s). The digest guards against corruption and decides "same
//! content"; it is no defence against someone who may write the bucket (they could rewrite
//! the trailer with any digest): client-side encryption's AEAD is that.
//!
//! The trailer is what makes "same content" decidable when a put-if-absent finds an object
//! already there (a retried upload, or another primary's WAL): the originals are compared, not
//! the compressed bytes (which differ between compression levels).

use std::io::Read;

use sha2::{Digest as _, Sha256};

/// Skippable-frame magic (0x184D2A50–0x184D2A5F are all skippable); spilo uses 0x…5E.
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const TAG: &[u8; 4] = b"SPLO";
const PAYLOAD: usize = 4 + 1 + 32 + 8;
/// Bytes the trailer adds to an object.
pub const TRAILER_LEN: usize = 8 + PAYLOAD;

/// The digest a trailer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// Trailer version 1.
    Sha256,
    /// Trailer version 2.
    Blake3,
    /// Trailer version 3, what spilo writes.
    Xxh3,
}

impl Algo {
    /// What new objects get.
    pub const WRITE: Algo = Algo::Xxh3;

    fn version(self) -> u8 {
        match self {
            Algo::Sha256 => 1,
            Algo::Blake3 => 2,
            Algo::Xxh3 => 3,
        }
    }

    fn from_version(v: u8) -> Option<Algo> {
        match v {
            1 => Some(Algo::Sha256),
            2 => Some(Algo::Blake3),
            3 => Some(Algo::Xxh3),
            _ => None,
        }
    }

    /// Its name, as messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Sha256 => "sha256",
            Algo::Blake3 => "blake3",
            Algo::Xxh3 => "xxh3-128",
        }
    }

    /// Bytes of its digest (the trailer's 32-byte field holds it, zero-padded).
    pub fn digest_len(self) -> usize {
        match self {
            Algo::Sha256 | Algo::Blake3 => 32,
            Algo::Xxh3 => 16,
        }
    }

    /// Its digest held in a trailer's 32-byte field, as lowercase hex of its own length.
    fn hex(self, digest: &[u8; 32]) -> String {
        hex(&digest[..self.digest_len()])
    }
}

/// A running digest of either kind.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256.
    Sha256(Sha256),
    /// BLAKE3.
    Blake3(Box<blake3::Hasher>),
    /// XXH3-128.
    Xxh3(Box<twox_hash::XxHash3_128>),
}

impl Hasher {
    /// A digest of `algo` over nothing yet.
    pub fn new(algo: Algo) -> Hasher {
        match algo {
            Algo::Sha256 => Hasher::Sha256(Sha256::new()),
            Algo::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            Algo::Xxh3 => Hasher::Xxh3(Box::new(twox_hash::XxHash3_128::new())),
        }
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
            Hasher::Xxh3(h) => h.write(bytes),
        }
    }

    /// Its kind.
    pub fn algo(&self) -> Algo {
        match self {
            Hasher::Sha256(_) => Algo::Sha256,
            Hasher::Blake3(_) => Algo::Blake3,
            Hasher::Xxh3(_) => Algo::Xxh3,
        }
    }

    /// The digest, zero-padded to 32 bytes (as the trailer holds it).
    pub fn finalize(self) -> [u8; 32] {
        match self {
            Hasher::Sha256(h) => h.finalize().into(),
            Hasher::Blake3(h) => *h.finalize().as_bytes(),
            Hasher::Xxh3(h) => {
                let mut d = [0u8; 32];
                d[..16].copy_from_slice(&h.finish_128().to_be_bytes());
                d
            }
        }
    }

    /// The digest as lowercase hex (its own length: 32 hex digits for XXH3-128).
    pub fn finalize_hex(self) -> String {
        let algo = self.algo();
        algo.hex(&self.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the trailer records about the original file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The digest's kind.
    pub algo: Algo,
    /// The digest of the original bytes (zero-padded when shorter than 32 bytes).
    pub digest: [u8; 32],
    /// Their length.
    pub size: u64,
}

impl Trailer {
    /// The digest as lowercase hex.
    pub fn digest_hex(&self) -> String {
        self.algo.hex(&self.digest)
    }

    /// `<algo> <hex>`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.algo.name(), self.digest_hex())
    }

    /// The trailer's bytes.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[..4].copy_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&(PAYLOAD as u32).to_le_bytes());
        out[8..12].copy_from_slice(TAG);
        out[12] = self.algo.version();
        out[13..45].copy_from_slice(&self.digest);
        out[45..53].copy_from_slice(&self.size.to_le_bytes());
        out
    }

    /// The version byte of a spilo trailer at the end of `object`, known to this spilo or
    /// not (a newer spilo's objects are told apart from objects with no trailer).
    pub fn version_of(object: &[u8]) -> Option<u8> {
        let t = object.get(object.len().checked_sub(TRAILER_LEN)?..)?;
        (t[..4] == SKIPPABLE_MAGIC.to_le_bytes()
            && t[4..8] == (PAYLOAD as u32).to_le_bytes()
            && &t[8..12] == TAG)
            .then_some(t[12])
    }

    /// The trailer at the end of `object`, if it has one.
    pub fn find(object: &[u8]) -> Option<Trailer> {
        let t = object.get(object.len().checked_sub(TRAILER_LEN)?..)?;
        if t[..4] != SKIPPABLE_MAGIC.to_le_bytes()
            || t[4..8] != (PAYLOAD as u32).to_le_bytes()
            || &t[8..12] != TAG
        {
            return None;
        }
        let algo = Algo::from_version(t[12])?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&t[13..45]);
        // A shorter digest's padding is zero in every trailer spilo writes.
        if digest[algo.digest_len()..].iter().any(|&b| b != 0) {
            return None;
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&t[45..53]);
        Some(Trailer {
            algo,
            digest,
            size: u64::from_le_bytes(size),
        })
    }

    /// The trailer of `input`'s bytes with `algo`'s digest (what the object of an identical
    /// file holds), read in chunks of `chunk` bytes.
    pub fn of_reader(mut input: impl Read, algo: Algo, chunk: usize) -> std::io::Result<Trailer> {
        let mut h = Hasher::new(algo);
        let mut buf = vec![0u8; chunk];
        let mut size = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            size += n as u64;
        }
        Ok(Trailer {
            algo,
            digest: h.finalize(),
            size,
        })
    }
}

/// A failure to read back a stored object.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The object has no spilo trailer (not written by spilo, or cut short).
    #[error("{key}: no spilo trailer (not written by spilo, or truncated)")]
    NoTrailer {
        /// The object.
        key: String,
    },
    /// The trailer is of a version this spilo does not know (written by a newer one).
    #[error("{key}: spilo trailer version {version}, which this spilo does not know (written by a newer spilo?)")]
    UnknownVersion {
        /// The object.
        key: String,
        /// The trailer's version.
        version: u8,
    },
    /// A trailer of a known version whose digest field is not as spilo writes it (bytes past
    /// a shorter digest that are not zero).
    #[error(
        "{key}: corrupt spilo trailer (version {version}: bytes after the digest are not zero)"
    )]
    BadTrailer {
        /// The object.
        key: String,
        /// The trailer's version.
        version: u8,
    },
    /// The zstd stream does not decode.
    #[error("{key}: corrupt compressed data")]
    Corrupt {
        /// The object.
        key: String,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// The decoded bytes do not match the trailer (digests as `<algo> <hex>`).
    #[error("{key}: checksum mismatch (stored {expected}, {size} bytes; decoded {actual}, {actual_size} bytes)")]
    Mismatch {
        /// The object.
        key: String,
        /// The recorded digest.
        expected: String,
        /// The recorded size.
        size: u64,
        /// The decoded bytes' digest.
        actual: String,
        /// Their length.
        actual_size: u64,
    },
}

/// A zstd compression context making one frame per call, with the parameters spilo's objects
/// are written with: the level asked for; no frame checksum (the trailer's digest covers every
/// original byte and is checked on every read, and PostgreSQL checks each WAL record's CRC on
/// replay: zstd's XXH64 over the same bytes was 5 % of the archiver's CPU); and no block
/// pre-splitting, which zstd 1.5.7 added at level 3 and earlier versions (Debian 12's 1.5.4,
/// what pgBackRest there compresses with) do not do: it cost another 5 % for objects within a
/// fraction of a percent of the same size.
struct FrameEncoder(std::ptr::NonNull<zstd::zstd_safe::zstd_sys::ZSTD_CCtx>);

impl FrameEncoder {
    fn new(level: i32) -> std::io::Result<FrameEncoder> {
        use zstd::zstd_safe::zstd_sys::ZSTD_cParameter as P;
        // SAFETY: no preconditions; a null answer is handled below.
        let ctx = unsafe { zstd::zstd_safe::zstd_sys::ZSTD_createCCtx() };
        let ctx = std::ptr::NonNull::new(ctx).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                "zstd: no memory for a compression context",
            )
        })?;
        let enc = FrameEncoder(ctx);
        enc.set(P::ZSTD_c_compressionLevel, level)?;
        enc.set(P::ZSTD_c_checksumFlag, 0)?;
        // ZSTD_c_blockSplitterLevel (experimental in zstd.h): 1 = no pre-splitting. Only a
        // matter of speed, and unknown to a libzstd before 1.5.7 (a build against the
        // system's): a refusal is ignored.
        let _ = enc.set(P::ZSTD_c_experimentalParam20, 1);
        Ok(enc)
    }

    fn set(
        &self,
        param: zstd::zstd_safe::zstd_sys::ZSTD_cParameter,
        value: i32,
    ) -> std::io::Result<()> {
        // SAFETY: the context is live; zstd checks the parameter and its bounds.
        let r = unsafe {
            zstd::zstd_safe::zstd_sys::ZSTD_CCtx_setParameter(self.0.as_ptr(), param, value)
        };
        zstd_result(r).map(|_| ())
    }

    /// Compresses `src` into one frame, replacing what `out` held; `out` grows to the bound.
    fn frame(&mut self, src: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        let bound = zstd::zstd_safe::compress_bound(src.len());
        out.clear();
        out.reserve(bound);
        // SAFETY: `out` has room for `bound` bytes, zstd writes at most that many and returns
        // how many it wrote; `src` is read only.
        let r = unsafe {
            zstd::zstd_safe::zstd_sys::ZSTD_compress2(
                self.0.as_ptr(),
                out.as_mut_ptr().cast(),
                out.capacity(),
                src.as_ptr().cast(),
                src.len(),
            )
        };
        let n = zstd_result(r)?;
        // SAFETY: zstd initialised the first `n` bytes (n <= capacity).
        unsafe { out.set_len(n) };
        Ok(())
    }
}

// SAFETY: a zstd context belongs to no thread; it is used by one at a time (`&mut self`).
unsafe impl Send for FrameEncoder {}

impl Drop for FrameEncoder {
    fn drop(&mut self) {
        // SAFETY: the context was created by ZSTD_createCCtx and is freed once.
        unsafe { zstd::zstd_safe::zstd_sys::ZSTD_freeCCtx(self.0.as_ptr()) };
    }
}

/// A zstd return code as a byte count, or the error zstd names.
fn zstd_result(code: usize) -> std::io::Result<usize> {
    // SAFETY: both take any code; the name is a static NUL-terminated string.
    unsafe {
        if zstd::zstd_safe::zstd_sys::ZSTD_isError(code) != 0 {
            let name = std::ffi::CStr::from_ptr(zstd::zstd_safe::zstd_sys::ZSTD_getErrorName(code));
            return Err(std::io::Error::other(format!(
                "zstd: {}",
                name.to_string_lossy()
            )));
        }
    }
    Ok(code)
}

/// What compressing files one after another needs, kept from one file to the next: the zstd
/// context with its tables and window, the chunk being read and its compressed form. Made
/// afresh for each file they cost the archiver a page fault per 4 KiB of them (about 3.5 MB
/// a file: some 4 % of its CPU), large allocations being fresh mappings.
pub struct Workspace {
    level: i32,
    enc: FrameEncoder,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Workspace {
    /// A workspace compressing at `level` in chunks of `chunk` bytes (at least 1).
    pub fn new(level: i32, chunk: usize) -> std::io::Result<Workspace> {
        let chunk = chunk.max(1);
        Ok(Workspace {
            level,
            enc: FrameEncoder::new(level)?,
            buf: vec![0u8; chunk],
            out: Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk)),
        })
    }

    /// Whether it compresses at `level` in chunks of `chunk` bytes.
    pub fn fits(&self, level: i32, chunk: usize) -> bool {
        self.level == level && self.buf.len() == chunk.max(1)
    }
}

/// Compresses a file read from `input` in chunks of `chunk` bytes, calling `emit` with each
/// piece of the object as it is produced (the trailer last; borrowed: the caller copies what
/// it keeps). Each chunk is a zstd frame of its own, compressed in one call: zstd's streaming
/// mode keeps its window in a ring buffer and searches it as an external dictionary, which
/// cost a third more CPU per byte on WAL (zstd 3, 1 MiB frames: 0.5 % larger objects). Every
/// zstd reader takes concatenated frames. Memory: one chunk, one bound of its compressed size
/// and the encoder's tables.
pub fn encode_stream(
    input: impl Read,
    level: i32,
    chunk: usize,
    emit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<Trailer> {
    encode_stream_in(&mut Workspace::new(level, chunk)?, input, emit)
}

/// [`encode_stream`] in a workspace kept between files.
pub fn encode_stream_in(
    ws: &mut Workspace,
    mut input: impl Read,
    mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<Trailer> {
    let mut hasher = Hasher::new(Algo::WRITE);
    let mut size = 0u64;
    let chunk = ws.buf.len();
    loop {
        let n = fill(&mut input, &mut ws.buf)?;
        // An empty file is one empty frame, so the object is a zstd stream like any other.
        if n == 0 && size > 0 {
            break;
        }
        hasher.update(&ws.buf[..n]);
        size += n as u64;
        ws.enc.frame(&ws.buf[..n], &mut ws.out)?;
        emit(&ws.out)?;
        if n < chunk {
            break;
        }
    }
    let trailer = Trailer {
        algo: Algo::WRITE,
        digest: hasher.finalize(),
        size,
    };
    emit(&trailer.encode())?;
    Ok(trailer)
}

/// Reads from `input` until `buf` is full or the input ends; returns the bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads a stored object: opens it first when it is sealed (with `key`; a sealed object and no
/// key is an error naming it), then [`decode`]s it.
pub fn read(
    key: Option<&super::crypt::SecretKey>,
    name: &str,
    object: &[u8],
) -> Result<Vec<u8>, ReadError> {
    if super::crypt::is_sealed(object) {
        let k = key.ok_or_else(|| ReadError::NoKey(name.to_string()))?;
        let plain = super::crypt::open(k, name, object)?;
        return Ok(decode(name, &plain)?);
    }
    Ok(decode(name, object)?)
}

/// Why a stored object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The object is encrypted and no key is configured.
    #[error("{0}: encrypted, and no backup.encryption key is configured")]
    NoKey(String),
    /// It does not open.
    #[error(transparent)]
    Crypt(#[from] super::crypt::CryptError),
    /// It does not decode.
    #[error(transparent)]
    Object(#[from] ObjectError),
}

/// Compresses (and with `key` seals) `input` like [`encode_stream`]; `emit` gets the stored
/// bytes.
pub fn encode_sealed(
    input: impl Read,
    level: i32,
    chunk: usize,
    key: Option<&super::crypt::SecretKey>,
    emit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<Trailer> {
    encode_sealed_in(&mut Workspace::new(level, chunk)?, input, key, emit)
}

/// [`encode_sealed`] in a workspace kept between files.
pub fn encode_sealed_in(
    ws: &mut Workspace,
    input: impl Read,
    key: Option<&super::crypt::SecretKey>,
    mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<Trailer> {
    let Some(k) = key else {
        return encode_stream_in(ws, input, emit);
    };
    let mut sealer = super::crypt::Sealer::new(k);
    let t = encode_stream_in(ws, input, |c| {
        let out = sealer.update(c);
        if out.is_empty() {
            Ok(())
        } else {
            emit(&out)
        }
    })?;
    emit(&sealer.finish())?;
    Ok(t)
}

/// Decodes a whole object and checks it against its trailer.
pub fn decode(key: &str, object: &[u8]) -> Result<Vec<u8>, ObjectError> {
    let trailer = Trailer::find(object).ok_or_else(|| match Trailer::version_of(object) {
        Some(version) if Algo::from_version(version).is_some() => ObjectError::BadTrailer {
            key: key.to_string(),
            version,
        },
        Some(version) => ObjectError::UnknownVersion {
            key: key.to_string(),
            version,
        },
        None => ObjectError::NoTrailer {
            key: key.to_string(),
        },
    })?;
    let mut out = Vec::with_capacity(usize::try_from(trailer.size).unwrap_or(0).min(1 << 26));
    zstd::stream::read::Decoder::new(object)
        .and_then(|mut d| d.read_to_end(&mut out))
        .map_err(|source| ObjectError::Corrupt {
            key: key.to_string(),
            source,
        })?;
    let mut h = Hasher::new(trailer.algo);
    h.update(&out);
    let actual = h.finalize();
    if actual != trailer.digest || out.len() as u64 != trailer.size {
        return Err(ObjectError::Mismatch {
            key: key.to_string(),
            expected: trailer.describe(),
            size: trailer.size,
            actual: format!("{} {}", trailer.algo.name(), trailer.algo.hex(&actual)),
            actual_size: out.len() as u64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(data: &[u8], level: i32) -> (Vec<u8>, Trailer) {
        let mut obj = Vec::new();
        let t = encode_stream(data, level, 4096, |c| {
            obj.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        (obj, t)
    }

    fn wal_like(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (((i / 7) as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    }

    #[test]
    fn round_trip_and_plain_zstd_readers_skip_the_trailer() {
        let data = wal_like(300_000);
        let (obj, t) = encode(&data, 3);
        assert_eq!(t.size, 300_000);
        assert!(obj.len() < data.len());
        assert_eq!(decode("k", &obj).unwrap(), data);
        // A plain zstd decoder (what `zstd -d` or WAL-G does) passes over the skippable frame.
        assert_eq!(zstd::stream::decode_all(&obj[..]).unwrap(), data);
        // Another level gives other bytes but the same trailer.
        let (obj9, t9) = encode(&data, 9);
        assert_eq!(t, t9);
        assert_eq!(Trailer::find(&obj9), Some(t));
    }

    #[test]
    fn corruption_and_truncation_are_named() {
        let data = wal_like(50_000);
        let (mut obj, _) = encode(&data, 3);
        let cut = &obj[..obj.len() - 1];
        assert!(matches!(
            decode("k", cut),
            Err(ObjectError::NoTrailer { .. })
        ));
        let mid = obj.len() / 2;
        obj[mid] ^= 0xff;
        let e = decode("wal_005/x.zst", &obj).unwrap_err();
        assert!(
            matches!(
                e,
                ObjectError::Corrupt { .. } | ObjectError::Mismatch { .. }
            ),
            "{e}"
        );
        assert!(e.to_string().starts_with("wal_005/x.zst"), "{e}");
        assert!(decode("k", b"").is_err());
    }

    /// New objects are version 3 (XXH3-128, zero-padded); objects written before (version 2,
    /// BLAKE3; version 1, SHA-256) still read and check; an unknown version is no trailer, said
    /// as such; a known one with its padding disturbed is a corrupt trailer.
    #[test]
    fn older_trailer_versions_read_and_check_by_their_own_digest() {
        use sha2::Digest;
        let data = wal_like(70_000);
        let (obj, t) = encode(&data, 3);
        assert_eq!(t.algo, Algo::Xxh3);
        assert_eq!(obj[obj.len() - TRAILER_LEN + 12], 3);
        let xxh = twox_hash::XxHash3_128::oneshot(&data).to_be_bytes();
        assert_eq!(t.digest[..16], xxh);
        assert_eq!(t.digest[16..], [0u8; 16]);
        assert_eq!(t.digest_hex().len(), 32);
        assert_eq!(t.digest_hex(), hex(&xxh));
        assert_eq!(Trailer::of_reader(&data[..], Algo::Xxh3, 4096).unwrap(), t);
        let mut h = Hasher::new(Algo::Xxh3);
        for piece in data.chunks(999) {
            h.update(piece);
        }
        assert_eq!(h.finalize_hex(), t.digest_hex());
        let body = &obj[..obj.len() - TRAILER_LEN];
        // The same compressed bytes with the trailers spilo wrote before.
        let v2 = Trailer {
            algo: Algo::Blake3,
            digest: *blake3::hash(&data).as_bytes(),
            size: data.len() as u64,
        };
        let v1 = Trailer {
            algo: Algo::Sha256,
            digest: sha2::Sha256::digest(&data).into(),
            size: data.len() as u64,
        };
        for (old, version) in [(v2, 2u8), (v1, 1u8)] {
            assert_eq!(Trailer::of_reader(&data[..], old.algo, 1000).unwrap(), old);
            let mut stored = body.to_vec();
            stored.extend_from_slice(&old.encode());
            assert_eq!(stored[stored.len() - TRAILER_LEN + 12], version);
            assert_eq!(Trailer::find(&stored), Some(old));
            assert_eq!(decode("k", &stored).unwrap(), data);
            // A digest that is not the content's is a mismatch naming its kind.
            let mut bad = old;
            bad.digest[0] ^= 1;
            let mut wrong = body.to_vec();
            wrong.extend_from_slice(&bad.encode());
            let e = decode("k", &wrong).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("stored {} ", old.algo.name())),
                "{e}"
            );
        }
        let mut bad = t;
        bad.digest[15] ^= 1;
        let mut wrong = body.to_vec();
        wrong.extend_from_slice(&bad.encode());
        let e = decode("k", &wrong).unwrap_err();
        assert!(e.to_string().contains("stored xxh3-128 "), "{e}");
        // Version 3 with a byte of its padding set: corrupt, not unknown.
        let mut padded = obj.clone();
        let at = padded.len() - TRAILER_LEN + 13 + 20;
        padded[at] = 1;
        assert_eq!(Trailer::find(&padded), None);
        let e = decode("k", &padded).unwrap_err();
        assert!(
            matches!(e, ObjectError::BadTrailer { version: 3, .. }),
            "{e}"
        );
        // Version 4 is not known: no trailer this spilo reads, said as such.
        let mut v4 = obj.clone();
        let at = v4.len() - TRAILER_LEN + 12;
        v4[at] = 4;
        assert_eq!(Trailer::find(&v4), None);
        assert_eq!(Trailer::version_of(&v4), Some(4));
        let e = decode("k", &v4).unwrap_err();
        assert!(
            matches!(e, ObjectError::UnknownVersion { version: 4, .. }),
            "{e}"
        );
        assert_eq!(Trailer::version_of(&data), None);
    }

    /// The digest's hex is what `xxhsum -H2` prints for the same bytes (xxHash 0.8.1).
    #[test]
    fn xxh3_digests_read_as_xxhsum_prints_them() {
        for (input, want) in [
            (&b""[..], "99aa06d3014798d86001c324468d497f"),
            (&b"spilo"[..], "820c76bda62f560f353d78c7d5dada64"),
        ] {
            let mut h = Hasher::new(Algo::Xxh3);
            h.update(input);
            assert_eq!(h.finalize_hex(), want);
            let t = Trailer::of_reader(input, Algo::Xxh3, 3).unwrap();
            assert_eq!(t.digest_hex(), want);
        }
    }

    /// Frames are cut by the chunk size, not by how the input hands its bytes over (a pipe
    /// from pg_basebackup gives short reads): the same object either way, every frame but
    /// the last holding a whole chunk, and a plain zstd reader takes the frames in turn.
    #[test]
    fn frames_follow_the_chunk_size_whatever_the_reads() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(7);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data = wal_like(4096 * 5 + 100);
        let (whole, t) = encode(&data, 3);
        let mut trickled = Vec::new();
        let t2 = encode_stream(Trickle(&data), 3, 4096, |c| {
            trickled.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!((trickled.as_slice(), t2), (whole.as_slice(), t));
        // Six frames: five of 4096 bytes and one of 100, each with its content size.
        let mut at = 0;
        let mut sizes = Vec::new();
        while at < whole.len() - TRAILER_LEN {
            let frame = &whole[at..whole.len() - TRAILER_LEN];
            let n = zstd::zstd_safe::find_frame_compressed_size(frame).unwrap();
            sizes.push(zstd::bulk::decompress(&frame[..n], 1 << 20).unwrap().len());
            at += n;
        }
        assert_eq!(sizes, vec![4096, 4096, 4096, 4096, 4096, 100]);
        assert_eq!(zstd::stream::decode_all(&whole[..]).unwrap(), data);
        // A file of whole chunks (a 16 MiB segment in 1 MiB chunks): no empty frame after them.
        let even = wal_like(4096 * 3);
        let (obj, t) = encode(&even, 3);
        assert_eq!(t.size, 4096 * 3);
        let mut frames = 0;
        let mut at = 0;
        while at < obj.len() - TRAILER_LEN {
            at += zstd::zstd_safe::find_frame_compressed_size(&obj[at..obj.len() - TRAILER_LEN])
                .unwrap();
            frames += 1;
        }
        assert_eq!(frames, 3);
        assert_eq!(decode("k", &obj).unwrap(), even);
    }

    #[test]
    fn empty_file() {
        let (obj, t) = encode(b"", 3);
        assert_eq!(t.size, 0);
        assert_eq!(decode("k", &obj).unwrap(), b"");
    }

    #[test]
    fn a_workspace_kept_between_files_writes_what_a_fresh_one_does() {
        // Files of different sizes and contents, a shorter one after a longer one (what the
        // chunk buffer and zstd's tables held must not leak into the next object).
        let long = wal_like(4096 * 4 + 17);
        let short: Vec<u8> = long.iter().rev().take(5000).copied().collect();
        let mut ws = Workspace::new(3, 4096).unwrap();
        assert!(ws.fits(3, 4096) && !ws.fits(1, 4096) && !ws.fits(3, 8192));
        for data in [&long[..], &short[..], b"", &long[..]] {
            let mut kept = Vec::new();
            let t = encode_stream_in(&mut ws, data, |c| {
                kept.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
            assert_eq!((kept.clone(), t), encode(data, 3));
            assert_eq!(decode("k", &kept).unwrap(), data);
        }
        // A sealed object from a kept workspace opens to the same bytes.
        let key = crate::backup::crypt::SecretKey::from_opened(&[7u8; 32], "test").unwrap();
        let mut sealed = Vec::new();
        encode_sealed_in(&mut ws, &short[..], Some(&key), |c| {
            sealed.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(read(Some(&key), "k", &sealed).unwrap(), short);
    }
}
