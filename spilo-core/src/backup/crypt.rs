//! Client-side encryption of stored objects (`backup.encryption`): ChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`) over the object in 64 KiB chunks, each sealed with its own nonce — a
//! random 7-byte prefix per object, the chunk's number and a last-chunk flag — so that chunks
//! cannot be reordered, dropped or the object cut short without the open failing.
//!
//! ```text
//! "SPLE" 1 | key id (8: SHA-256 of the key, first bytes) | nonce prefix (7) | chunk size (4 LE)
//! then per chunk: ciphertext of min(chunk size, rest) bytes + 16-byte tag
//! ```
//!
//! What is encrypted is the whole object of [`super::object`] (zstd and its trailer), so the
//! same checks apply after opening. A wrong key is named by its id before any decryption.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"SPLE";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 8 + 7 + 4;
/// Plaintext bytes per sealed chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;

/// A 256-bit key.
#[derive(Clone)]
pub struct SecretKey {
    key: [u8; 32],
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(id {})", hex(&self.id()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Why a key or an object could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    /// The key's text is not 32 bytes as hex (64 digits) or base64.
    #[error("{0}: an encryption key must be 32 bytes, written as 64 hex digits or base64")]
    BadKey(String),
    /// The object was sealed with another key.
    #[error("{key}: encrypted with key id {stored}, but the configured key's id is {ours}")]
    WrongKey {
        /// The object.
        key: String,
        /// The id in the object.
        stored: String,
        /// The configured key's id.
        ours: String,
    },
    /// A chunk does not open: corrupted, reordered or cut.
    #[error("{key}: chunk {chunk} does not authenticate (the object is corrupted or truncated)")]
    Corrupt {
        /// The object.
        key: String,
        /// The chunk number.
        chunk: u32,
    },
    /// Not an encrypted object.
    #[error("{0}: not an encrypted spilo object (no SPLE header)")]
    NotEncrypted(String),
}

impl SecretKey {
    /// Reads a key from text (64 hex digits, or base64 of 32 bytes); `origin` names it in
    /// errors.
    pub fn parse(text: &str, origin: &str) -> Result<SecretKey, CryptError> {
        use base64::Engine as _;
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| CryptError::BadKey(origin.into()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| CryptError::BadKey(origin.into()))?
        };
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptError::BadKey(origin.into()))?;
        Ok(SecretKey { key })
    }

    /// A key opened from a KMS secret: 32 raw bytes (a KMS data key), or the key's text.
    pub fn from_opened(plain: &[u8], origin: &str) -> Result<SecretKey, CryptError> {
        if let Ok(key) = <[u8; 32]>::try_from(plain) {
            return Ok(SecretKey { key });
        }
        let text = std::str::from_utf8(plain).map_err(|_| CryptError::BadKey(origin.into()))?;
        SecretKey::parse(text, origin)
    }

    /// The first 8 bytes of the key's SHA-256 (stored in objects; says nothing of the key).
    pub fn id(&self) -> [u8; 8] {
        let d = Sha256::digest(self.key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        id
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.key))
    }
}

fn nonce(prefix: &[u8; 7], counter: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Seals a stream: feed plaintext, take sealed bytes; [`Sealer::finish`] seals the last chunk.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    prefix: [u8; 7],
    counter: u32,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Sealer {
    /// A sealer for one object (a fresh random nonce prefix).
    pub fn new(key: &SecretKey) -> Sealer {
        let mut prefix = [0u8; 7];
        fill_random(&mut prefix);
        let mut out = Vec::with_capacity(HEADER);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&key.id());
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&(CHUNK as u32).to_le_bytes());
        Sealer {
            cipher: key.cipher(),
            prefix,
            counter: 0,
            buf: Vec::with_capacity(CHUNK),
            out,
        }
    }

    fn seal(&mut self, last: bool) {
        let n = nonce(&self.prefix, self.counter, last);
        // Sealing only fails for plaintexts past 256 GiB per chunk; ours are 64 KiB.
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&n),
                Payload {
                    msg: &self.buf,
                    aad: MAGIC,
                },
            )
            .unwrap_or_default();
        self.out.extend_from_slice(&sealed);
        self.buf.clear();
        self.counter = self.counter.wrapping_add(1);
    }

    /// Takes plaintext; returns the sealed bytes ready so far.
    pub fn update(&mut self, mut data: &[u8]) -> Vec<u8> {
        while !data.is_empty() {
            // A full chunk is sealed only once more data follows: the last one is flagged.
            if self.buf.len() == CHUNK {
                self.seal(false);
            }
            let n = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        std::mem::take(&mut self.out)
    }

    /// Seals what is left (the last chunk, possibly empty).
    pub fn finish(mut self) -> Vec<u8> {
        self.seal(true);
        self.out
    }
}

/// True when `object` starts like a sealed object.
pub fn is_sealed(object: &[u8]) -> bool {
    object.len() >= HEADER && &object[..4] == MAGIC
}

/// Opens a whole sealed object.
pub fn open(key: &SecretKey, name: &str, object: &[u8]) -> Result<Vec<u8>, CryptError> {
    let mut o = Opener::new(key, name);
    let mut out = o.update(object)?;
    out.extend_from_slice(&o.finish()?);
    Ok(out)
}

/// Opens a sealed stream: feed sealed bytes, take plaintext; [`Opener::finish`] opens the last
/// chunk (which must be flagged last: an object cut short does not open). Memory: one chunk.
pub struct Opener {
    key: SecretKey,
    name: String,
    /// Cipher, nonce prefix and chunk size, once the header is read.
    head: Option<(ChaCha20Poly1305, [u8; 7], usize)>,
    counter: u32,
    buf: Vec<u8>,
}

impl Opener {
    /// An opener for the object `name`.
    pub fn new(key: &SecretKey, name: &str) -> Opener {
        Opener {
            key: key.clone(),
            name: name.to_string(),
            head: None,
            counter: 0,
            buf: Vec::new(),
        }
    }

    fn corrupt(&self, chunk: u32) -> CryptError {
        CryptError::Corrupt {
            key: self.name.clone(),
            chunk,
        }
    }

    fn read_header(&mut self) -> Result<(), CryptError> {
        let h = &self.buf[..HEADER];
        if &h[..4] != MAGIC || h[4] != VERSION {
            return Err(CryptError::NotEncrypted(self.name.clone()));
        }
        let stored: [u8; 8] = h[5..13].try_into().unwrap_or_default();
        if stored != self.key.id() {
            return Err(CryptError::WrongKey {
                key: self.name.clone(),
                stored: hex(&stored),
                ours: hex(&self.key.id()),
            });
        }
        let prefix: [u8; 7] = h[13..20].try_into().unwrap_or_default();
        let chunk = u32::from_le_bytes(h[20..24].try_into().unwrap_or_default()) as usize;
        if chunk == 0 || chunk > 1 << 26 {
            return Err(self.corrupt(0));
        }
        self.head = Some((self.key.cipher(), prefix, chunk));
        self.buf.drain(..HEADER);
        Ok(())
    }

    fn open_chunk(&self, sealed: &[u8], last: bool) -> Result<Vec<u8>, CryptError> {
        let Some((cipher, prefix, _)) = &self.head else {
            return Err(CryptError::NotEncrypted(self.name.clone()));
        };
        let n = nonce(prefix, self.counter, last);
        cipher
            .decrypt(
                Nonce::from_slice(&n),
                Payload {
                    msg: sealed,
                    aad: MAGIC,
                },
            )
            .map_err(|_| self.corrupt(self.counter))
    }

    /// Takes sealed bytes; returns the plaintext of the chunks complete so far (a chunk is
    /// opened once bytes beyond it show it is not the last).
    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>, CryptError> {
        self.buf.extend_from_slice(data);
        if self.head.is_none() {
            if self.buf.len() < HEADER {
                return Ok(Vec::new());
            }
            self.read_header()?;
        }
        let step = self.head.as_ref().map_or(0, |h| h.2) + TAG;
        let mut out = Vec::with_capacity(self.buf.len());
        let mut at = 0;
        while self.buf.len() - at > step {
            let plain = self.open_chunk(&self.buf[at..at + step], false)?;
            out.extend_from_slice(&plain);
            at += step;
            self.counter = self
                .counter
                .checked_add(1)
                .ok_or_else(|| self.corrupt(self.counter))?;
        }
        self.buf.drain(..at);
        Ok(out)
    }

    /// Opens the last chunk.
    pub fn finish(self) -> Result<Vec<u8>, CryptError> {
        if self.head.is_none() {
            return Err(CryptError::NotEncrypted(self.name.clone()));
        }
        self.open_chunk(&self.buf, true)
    }
}

/// Random bytes from the kernel.
fn fill_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: getrandom(2) writes at most len bytes into the buffer.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n > 0 {
            done += n as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::parse(&hex(&[b; 32]), "test").unwrap()
    }

    fn seal_all(k: &SecretKey, data: &[u8], step: usize) -> Vec<u8> {
        let mut s = Sealer::new(k);
        let mut out = Vec::new();
        for c in data.chunks(step.max(1)) {
            out.extend(s.update(c));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn round_trips_at_chunk_edges() {
        let k = key(7);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for step in [1000, CHUNK, 7 * CHUNK] {
                let sealed = seal_all(&k, &data, step);
                assert!(is_sealed(&sealed));
                assert_eq!(
                    open(&k, "o", &sealed).unwrap(),
                    data,
                    "len {len} step {step}"
                );
            }
        }
    }

    #[test]
    fn wrong_key_corruption_truncation_and_reordering_are_errors() {
        let data = vec![5u8; 3 * CHUNK + 10];
        let sealed = seal_all(&key(1), &data, 4096);
        assert!(matches!(
            open(&key(2), "o", &sealed),
            Err(CryptError::WrongKey { .. })
        ));
        let mut bad = sealed.clone();
        bad[HEADER + 100] ^= 1;
        assert_eq!(
            open(&key(1), "o", &bad),
            Err(CryptError::Corrupt {
                key: "o".into(),
                chunk: 0
            })
        );
        // Cut after whole chunks: the new last chunk was not sealed as last.
        let cut = &sealed[..HEADER + 2 * (CHUNK + TAG)];
        assert!(matches!(
            open(&key(1), "o", cut),
            Err(CryptError::Corrupt { .. })
        ));
        // Two chunks swapped.
        let mut swapped = sealed[..HEADER].to_vec();
        let c = |i: usize| &sealed[HEADER + i * (CHUNK + TAG)..HEADER + (i + 1) * (CHUNK + TAG)];
        swapped.extend_from_slice(c(1));
        swapped.extend_from_slice(c(0));
        swapped.extend_from_slice(&sealed[HEADER + 2 * (CHUNK + TAG)..]);
        assert!(matches!(
            open(&key(1), "o", &swapped),
            Err(CryptError::Corrupt { .. })
        ));
        assert!(matches!(
            open(&key(1), "o", b"zstd..."),
            Err(CryptError::NotEncrypted(_))
        ));
        // Two seals of the same data differ (fresh nonce prefix).
        assert_ne!(seal_all(&key(1), &data, 4096), sealed);
    }

    #[test]
    fn the_streaming_opener_takes_any_piece_sizes() {
        let k = key(9);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = seal_all(&k, &data, 1000);
            for piece in [1, 7, 4096, CHUNK + TAG, sealed.len().max(1)] {
                let mut o = Opener::new(&k, "x");
                let mut out = Vec::new();
                for c in sealed.chunks(piece) {
                    out.extend_from_slice(&o.update(c).expect("update"));
                }
                out.extend_from_slice(&o.finish().expect("finish"));
                assert!(out == data, "len {len}, pieces of {piece}");
            }
            // Cut short at a chunk boundary: the last chunk seen is not flagged last.
            if len > CHUNK {
                let mut o = Opener::new(&k, "x");
                let _ = o.update(&sealed[..HEADER + CHUNK + TAG]).expect("update");
                assert!(o.finish().is_err(), "len {len}: a truncated object opened");
            }
        }
    }

    #[test]
    fn keys() {
        assert!(SecretKey::parse(&"ab".repeat(32), "k").is_ok());
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        assert_eq!(SecretKey::parse(&b64, "k").unwrap().id(), key(9).id());
        let e = SecretKey::parse("short", "/etc/spilo/key").unwrap_err();
        assert!(e.to_string().starts_with("/etc/spilo/key:"), "{e}");
        assert!(SecretKey::parse(&"ab".repeat(31), "k").is_err());
        assert!(!format!("{:?}", key(3)).contains("030303"));
    }
}
