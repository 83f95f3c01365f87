//! The C ABI between spilo and a plugin loaded from a shared library. Version 1.0.
//!
//! Rules (`include/spilo_plugin.h` is the same contract in C):
//! - A plugin exports one symbol, [`DESCRIPTOR_SYMBOL`]: `const SpiloPluginDescriptor
//!   *spilo_plugin_descriptor(void)`, returning a pointer to static data.
//! - Every exported struct starts with an [`AbiHeader`] `{abi_major, abi_minor, struct_size}`.
//!   The host refuses a different major, a minor newer than its own, and a struct smaller than
//!   the fields it reads.
//! - Only integers, byte slices (pointer + length), opaque handles and `extern "C"` function
//!   pointers cross. Status codes are `u32` constants ([`STATUS_OK`], …), never Rust enums.
//! - Configuration crosses as a JSON string. Results cross in buffers the plugin allocates
//!   ([`Buf`]) and frees when the host hands them back to `free_buf`.
//! - Every call that talks to the store gets a timeout in milliseconds and must return by then;
//!   the host runs calls on a blocking pool and stops waiting shortly after the timeout anyway.
//! - A panic must not cross the boundary: the export macro catches it and returns
//!   [`STATUS_PANIC`] with the message.

use std::ffi::c_void;

/// The major version: a plugin with another major is refused.
pub const ABI_MAJOR: u32 = 1;
/// The minor version: a plugin built for a newer minor than the host's is refused; older
/// minors are accepted (fields are only ever appended).
pub const ABI_MINOR: u32 = 0;

/// The symbol every plugin exports.
pub const DESCRIPTOR_SYMBOL: &[u8] = b"spilo_plugin_descriptor";

/// The call succeeded.
pub const STATUS_OK: u32 = 0;
/// The store could not be reached.
pub const STATUS_UNAVAILABLE: u32 = 1;
/// The call did not finish within its timeout.
pub const STATUS_TIMEOUT: u32 = 2;
/// The store refused the operation.
pub const STATUS_REFUSED: u32 = 3;
/// The arguments (configuration, key, value) are invalid.
pub const STATUS_INVALID: u32 = 4;
/// The plugin panicked; the message says where.
pub const STATUS_PANIC: u32 = 5;

/// A DCS backend.
pub const KIND_DCS: u32 = 1;
/// A storage backend (reserved).
pub const KIND_STORAGE: u32 = 2;
/// A load-balancer backend (reserved).
pub const KIND_LOAD_BALANCER: u32 = 3;

/// `Cas::Any`.
pub const CAS_ANY: u32 = 0;
/// `Cas::Absent`.
pub const CAS_ABSENT: u32 = 1;
/// `Cas::Version(version)`.
pub const CAS_VERSION: u32 = 2;

/// The first field of every exported struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiHeader {
    /// [`ABI_MAJOR`] the plugin was built for.
    pub abi_major: u32,
    /// [`ABI_MINOR`] the plugin was built for.
    pub abi_minor: u32,
    /// `sizeof` the struct this header starts.
    pub struct_size: u32,
}

impl AbiHeader {
    /// The header of a `T` built against this SDK.
    pub const fn of<T>() -> AbiHeader {
        AbiHeader {
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            struct_size: std::mem::size_of::<T>() as u32,
        }
    }
}

/// Borrowed bytes: valid for the duration of the call (or forever, for the descriptor's
/// strings).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Bytes {
    /// First byte (may be null when `len` is 0).
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl Bytes {
    /// A view of `s`.
    pub const fn from_static(s: &'static str) -> Bytes {
        Bytes {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// A view of `b` for the duration of a call.
    pub fn of(b: &[u8]) -> Bytes {
        Bytes {
            ptr: b.as_ptr(),
            len: b.len(),
        }
    }

    /// The bytes.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive `'a` (or `len` must be 0).
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: the caller guarantees `ptr` points to `len` live bytes.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// A buffer the plugin allocated and fills; the host reads it and hands it back to the
/// plugin's `free_buf`. All zero means empty.
#[repr(C)]
#[derive(Debug)]
pub struct Buf {
    /// First byte.
    pub ptr: *mut u8,
    /// Bytes used.
    pub len: usize,
    /// Bytes allocated (the plugin's own bookkeeping).
    pub cap: usize,
}

impl Buf {
    /// An empty buffer.
    pub const fn empty() -> Buf {
        Buf {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }
}

/// What a plugin declares.
#[repr(C)]
pub struct PluginDescriptor {
    /// ABI version and `sizeof(PluginDescriptor)`.
    pub header: AbiHeader,
    /// [`KIND_DCS`], …
    pub kind: u32,
    /// The plugin's name (must match the name in the node configuration).
    pub name: Bytes,
    /// The plugin's own version, free text.
    pub version: Bytes,
    /// The DCS entry points when `kind` is [`KIND_DCS`], else null.
    pub dcs: *const DcsVTable,
}

// SAFETY: a descriptor is immutable static data (pointers to static strings and a static
// vtable), so sharing it between threads is sound.
unsafe impl Sync for PluginDescriptor {}

/// An opaque plugin instance.
pub type Handle = *mut c_void;

/// The DCS entry points. Every function pointer is nullable on the C side; the host refuses a
/// plugin with a null one.
#[repr(C)]
pub struct DcsVTable {
    /// ABI version and `sizeof(DcsVTable)`.
    pub header: AbiHeader,
    /// Builds an instance from a JSON configuration (see [`crate::plugin::PluginConfig`]).
    /// On success `*out` is the handle; on failure `err` holds a message.
    pub create: Option<unsafe extern "C" fn(config: Bytes, out: *mut Handle, err: *mut Buf) -> u32>,
    /// Ends the session (best effort) and frees the instance.
    pub destroy: Option<unsafe extern "C" fn(h: Handle)>,
    /// Every key under the cluster prefix, encoded with [`encode_snapshot`].
    pub snapshot: Option<
        unsafe extern "C" fn(h: Handle, timeout_ms: u64, out: *mut Buf, err: *mut Buf) -> u32,
    >,
    /// Renews the session; `out` holds [`encode_session`].
    pub keepalive: Option<
        unsafe extern "C" fn(h: Handle, timeout_ms: u64, out: *mut Buf, err: *mut Buf) -> u32,
    >,
    /// Writes `members/<name>` bound to the session.
    pub put_member: Option<
        unsafe extern "C" fn(h: Handle, value: Bytes, timeout_ms: u64, err: *mut Buf) -> u32,
    >,
    /// Creates the leader key if absent; `*done` is 1 when we got it.
    pub acquire_leader: Option<
        unsafe extern "C" fn(h: Handle, timeout_ms: u64, done: *mut u8, err: *mut Buf) -> u32,
    >,
    /// Binds our leader key to the current session; `*done` is 0 when another name holds it.
    pub reattach_leader: Option<
        unsafe extern "C" fn(h: Handle, timeout_ms: u64, done: *mut u8, err: *mut Buf) -> u32,
    >,
    /// Deletes the leader key if it holds our name; `*done` is 1 when it did.
    pub release_leader: Option<
        unsafe extern "C" fn(h: Handle, timeout_ms: u64, done: *mut u8, err: *mut Buf) -> u32,
    >,
    /// Writes a persistent key under the condition (`CAS_*`, version); `*done` is 0 when the
    /// condition failed.
    pub put: Option<
        unsafe extern "C" fn(
            h: Handle,
            key: Bytes,
            value: Bytes,
            cas: u32,
            version: i64,
            timeout_ms: u64,
            done: *mut u8,
            err: *mut Buf,
        ) -> u32,
    >,
    /// Deletes a key under the condition; `*done` is 0 when the condition failed.
    pub delete: Option<
        unsafe extern "C" fn(
            h: Handle,
            key: Bytes,
            cas: u32,
            version: i64,
            timeout_ms: u64,
            done: *mut u8,
            err: *mut Buf,
        ) -> u32,
    >,
    /// Blocks until the change counter (bumped when `leader`, `config`, `failover` or
    /// `initialize` change) exceeds `seen`, or `timeout_ms` passes; returns the counter.
    pub wait_changes: Option<unsafe extern "C" fn(h: Handle, seen: u64, timeout_ms: u64) -> u64>,
    /// The session TTL for the next session.
    pub set_ttl: Option<unsafe extern "C" fn(h: Handle, ttl_ms: u64)>,
    /// Ends the session now.
    pub close: Option<unsafe extern "C" fn(h: Handle, timeout_ms: u64, err: *mut Buf) -> u32>,
    /// Frees a buffer this plugin filled.
    pub free_buf: Option<unsafe extern "C" fn(buf: Buf)>,
}

// SAFETY: a vtable is immutable static data (function pointers).
unsafe impl Sync for DcsVTable {}

impl std::fmt::Debug for DcsVTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DcsVTable")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Appends a length-prefixed byte string.
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The snapshot wire format (all integers little-endian): `revision: i64`, `count: u32`, then
/// per entry `key_len: u32, key, value_len: u32, value, version: i64, owned_by_us: u8`.
pub fn encode_snapshot(s: &crate::Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + s.entries.len() * 64);
    out.extend_from_slice(&s.revision.to_le_bytes());
    out.extend_from_slice(&(s.entries.len() as u32).to_le_bytes());
    for e in &s.entries {
        put_bytes(&mut out, e.key.as_bytes());
        put_bytes(&mut out, &e.value);
        out.extend_from_slice(&e.version.to_le_bytes());
        out.push(u8::from(e.owned_by_us));
    }
    out
}

/// Reads the wire format back; an error names what is wrong, never a panic.
pub fn decode_snapshot(b: &[u8]) -> Result<crate::Snapshot, String> {
    let mut r = Reader { b, at: 0 };
    let revision = r.i64()?;
    let count = r.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(4096));
    for i in 0..count {
        let key = String::from_utf8(r.bytes()?.to_vec())
            .map_err(|_| format!("entry {i}: key is not UTF-8"))?;
        let value = r.bytes()?.to_vec();
        let version = r.i64()?;
        let owned_by_us = r.u8()? != 0;
        entries.push(crate::Entry {
            key,
            value,
            version,
            owned_by_us,
        });
    }
    if r.at != b.len() {
        return Err(format!("{} trailing bytes", b.len() - r.at));
    }
    Ok(crate::Snapshot { revision, entries })
}

/// The session wire format: `id: i64`, `new_session: u8`.
pub fn encode_session(s: &crate::SessionInfo) -> Vec<u8> {
    let mut out = s.id.to_le_bytes().to_vec();
    out.push(u8::from(s.new_session));
    out
}

/// Reads [`encode_session`]'s format.
pub fn decode_session(b: &[u8]) -> Result<crate::SessionInfo, String> {
    let mut r = Reader { b, at: 0 };
    let id = r.i64()?;
    let new_session = r.u8()? != 0;
    if r.at != b.len() {
        return Err(format!("{} trailing bytes", b.len() - r.at));
    }
    Ok(crate::SessionInfo { id, new_session })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("truncated at byte {} (wanted {n} more)", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn i64(&mut self) -> Result<i64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, SessionInfo, Snapshot};

    #[test]
    fn snapshot_round_trips_and_garbage_is_an_error() {
        let s = Snapshot {
            revision: 42,
            entries: vec![
                Entry {
                    key: "leader".into(),
                    value: b"n1".to_vec(),
                    version: 7,
                    owned_by_us: true,
                },
                Entry {
                    key: "members/n2".into(),
                    value: Vec::new(),
                    version: -1,
                    owned_by_us: false,
                },
            ],
        };
        let b = encode_snapshot(&s);
        assert_eq!(decode_snapshot(&b), Ok(s));
        assert!(decode_snapshot(&b[..b.len() - 1])
            .unwrap_err()
            .contains("truncated"));
        let mut long = b.clone();
        long.push(0);
        assert!(decode_snapshot(&long).unwrap_err().contains("trailing"));
        // A count far beyond the data fails cleanly instead of allocating it.
        let mut huge = 1i64.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_snapshot(&huge).is_err());
        let si = SessionInfo {
            id: -5,
            new_session: true,
        };
        assert_eq!(decode_session(&encode_session(&si)), Ok(si));
        assert!(decode_session(&[1, 2]).is_err());
    }

    #[test]
    fn headers_carry_the_struct_sizes() {
        let h = AbiHeader::of::<DcsVTable>();
        assert_eq!(h.abi_major, ABI_MAJOR);
        assert_eq!(h.struct_size as usize, std::mem::size_of::<DcsVTable>());
        // The C header's layout on 64-bit targets: 12-byte header + pad, 14 pointers.
        assert_eq!(std::mem::size_of::<DcsVTable>(), 16 + 14 * 8);
        assert_eq!(std::mem::size_of::<PluginDescriptor>(), 16 + 16 + 16 + 8);
    }
}
