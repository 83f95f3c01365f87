//! The C ABI between spilo and a plugin loaded from a shared library. Version 1.1.
//!
//! Rules (`include/spilo_plugin.h` is the same contract in C):
//! - A plugin exports one symbol, [`DESCRIPTOR_SYMBOL`]: `const SpiloPluginDescriptor
//!   *spilo_plugin_descriptor(void)`, returning a pointer to static data.
//! - Every exported struct starts with an [`AbiHeader`] `{abi_major, abi_minor, struct_size}`.
//!   **Each struct carries its own minor**: the minor of the SDK (or header) it was built
//!   against, for that struct.
//! - **Versioning rule.** Within major 1, structs only grow by appending fields, and each
//!   minor's size of each struct is recorded in a size table ([`struct_size_of`]). The host
//!   refuses another major, a minor newer than its own, and a `struct_size` smaller than the
//!   size the declared minor had; it reads a field appended in a later minor only when the
//!   struct's `struct_size` covers it (a 1.0 struct reads as if the 1.1 fields were absent).
//!   Wire formats inside buffers follow the minor of the struct whose call returns them.
//! - The descriptor's `vtable` slot is interpreted by `kind`: a [`DcsVTable`] for
//!   [`KIND_DCS`], a [`StorageVTable`] for [`KIND_STORAGE`], an [`LbVTable`] for
//!   [`KIND_LOAD_BALANCER`].
//! - Only integers, byte slices (pointer + length), opaque handles and `extern "C"` function
//!   pointers cross. Status codes are `u32` constants ([`STATUS_OK`], …), never Rust enums.
//! - Configuration crosses as a JSON string. Results cross in buffers the plugin allocates
//!   ([`Buf`]) and frees when the host hands them back to `free_buf`.
//! - Every call that talks to the store gets a timeout in milliseconds and must return by then;
//!   the host runs calls on a blocking pool and stops waiting shortly after the timeout anyway.
//! - A panic must not cross the boundary: the export macro catches it and returns
//!   [`STATUS_PANIC`] with the message.
//!
//! What 1.1 added: the `created` counter of every DCS snapshot entry and the granted session
//! TTL (wire formats of the DCS vtable 1.1), the storage and load-balancer vtables, the status
//! codes [`STATUS_NOT_FOUND`], [`STATUS_EXISTS`] and [`STATUS_STALE_TERM`], and the
//! kind-interpreted descriptor slot (same layout as 1.0's `dcs` pointer).

use std::ffi::c_void;

/// The major version: a plugin with another major is refused.
pub const ABI_MAJOR: u32 = 1;
/// The newest minor this SDK knows: a struct built for a newer minor than the host's is
/// refused; older minors are accepted (fields are only ever appended).
pub const ABI_MINOR: u32 = 1;

/// The minor of [`PluginDescriptor`] this SDK builds.
pub const DESCRIPTOR_MINOR: u32 = 1;
/// The minor of [`DcsVTable`] (and of its wire formats) this SDK builds.
pub const DCS_VTABLE_MINOR: u32 = 1;
/// The minor of [`StorageVTable`] this SDK builds (the kind exists since 1.1).
pub const STORAGE_VTABLE_MINOR: u32 = 1;
/// The minor of [`LbVTable`] this SDK builds (the kind exists since 1.1).
pub const LB_VTABLE_MINOR: u32 = 1;

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
/// (1.1) The object does not exist (storage `get_open`, `head`, `delete`).
pub const STATUS_NOT_FOUND: u32 = 6;
/// (1.1) A put-if-absent found the key holding different content.
pub const STATUS_EXISTS: u32 = 7;
/// (1.1) The call carried an older leader term than one the backend has seen.
pub const STATUS_STALE_TERM: u32 = 8;

/// A DCS backend.
pub const KIND_DCS: u32 = 1;
/// A storage backend (since 1.1).
pub const KIND_STORAGE: u32 = 2;
/// A load-balancer backend (since 1.1).
pub const KIND_LOAD_BALANCER: u32 = 3;

/// `Cas::Any`.
pub const CAS_ANY: u32 = 0;
/// `Cas::Absent`.
pub const CAS_ABSENT: u32 = 1;
/// `Cas::Version(version)`.
pub const CAS_VERSION: u32 = 2;

/// Storage put mode: replace whatever is there.
pub const PUT_OVERWRITE: u32 = 0;
/// Storage put mode: create only; an existing key with the same content is success, with
/// different content [`STATUS_EXISTS`].
pub const PUT_IF_ABSENT: u32 = 1;

/// The first field of every exported struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiHeader {
    /// [`ABI_MAJOR`] the plugin was built for.
    pub abi_major: u32,
    /// The minor of *this struct* the plugin was built for.
    pub abi_minor: u32,
    /// `sizeof` the struct this header starts.
    pub struct_size: u32,
}

/// A struct that starts with an [`AbiHeader`] and has its own minor.
pub trait AbiStruct {
    /// Which struct, for the size table.
    const WHICH: Struct;
    /// The minor this SDK builds it for.
    const MINOR: u32;
}

/// The structs of the ABI, for the size table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Struct {
    /// [`PluginDescriptor`].
    Descriptor,
    /// [`DcsVTable`].
    Dcs,
    /// [`StorageVTable`].
    Storage,
    /// [`LbVTable`].
    LoadBalancer,
}

impl Struct {
    /// How the struct is called in messages.
    pub fn describe(self) -> &'static str {
        match self {
            Struct::Descriptor => "the descriptor",
            Struct::Dcs => "the DCS vtable",
            Struct::Storage => "the storage vtable",
            Struct::LoadBalancer => "the load-balancer vtable",
        }
    }
}

/// The size table: `sizeof` each struct had in each minor of major 1, `None` when the struct
/// did not exist in that minor (or the minor is unknown). A new minor that appends a field adds
/// a line here with the offset just past it; a line is never changed afterwards.
pub fn struct_size_of(which: Struct, minor: u32) -> Option<usize> {
    use std::mem::size_of;
    match (which, minor) {
        // 1.1 re-read the `dcs` slot as a kind-interpreted `vtable`: same layout.
        (Struct::Descriptor, 0 | 1) => Some(size_of::<PluginDescriptor>()),
        // 1.1 changed the DCS wire formats (entry `created`, granted TTL), not the struct.
        (Struct::Dcs, 0 | 1) => Some(size_of::<DcsVTable>()),
        (Struct::Storage, 1) => Some(size_of::<StorageVTable>()),
        (Struct::LoadBalancer, 1) => Some(size_of::<LbVTable>()),
        _ => None,
    }
}

impl AbiHeader {
    /// The header of a `T` built against this SDK: its own minor and size.
    pub const fn of<T: AbiStruct>() -> AbiHeader {
        AbiHeader {
            abi_major: ABI_MAJOR,
            abi_minor: T::MINOR,
            struct_size: std::mem::size_of::<T>() as u32,
        }
    }
}

impl AbiStruct for PluginDescriptor {
    const WHICH: Struct = Struct::Descriptor;
    const MINOR: u32 = DESCRIPTOR_MINOR;
}

impl AbiStruct for DcsVTable {
    const WHICH: Struct = Struct::Dcs;
    const MINOR: u32 = DCS_VTABLE_MINOR;
}

impl AbiStruct for StorageVTable {
    const WHICH: Struct = Struct::Storage;
    const MINOR: u32 = STORAGE_VTABLE_MINOR;
}

impl AbiStruct for LbVTable {
    const WHICH: Struct = Struct::LoadBalancer;
    const MINOR: u32 = LB_VTABLE_MINOR;
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
    /// The entry points, interpreted by `kind`: `*const DcsVTable` for [`KIND_DCS`],
    /// `*const StorageVTable` for [`KIND_STORAGE`], `*const LbVTable` for
    /// [`KIND_LOAD_BALANCER`]. (ABI 1.0 called it `dcs`; the layout is the same.)
    pub vtable: *const c_void,
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

/// (1.1) The storage entry points: a flat namespace of immutable-once-written objects (WAL
/// segments, backups). Every function pointer must be non-null. Handles of uploads and
/// downloads are the plugin's own; each is finished or aborted (closed) exactly once.
#[repr(C)]
pub struct StorageVTable {
    /// ABI version (this struct's minor) and `sizeof(StorageVTable)`.
    pub header: AbiHeader,
    /// Builds an instance from a JSON configuration `{"config": {…}}`.
    pub create: Option<unsafe extern "C" fn(config: Bytes, out: *mut Handle, err: *mut Buf) -> u32>,
    /// Frees the instance.
    pub destroy: Option<unsafe extern "C" fn(h: Handle)>,
    /// Starts an upload to `key` in `mode` ([`PUT_OVERWRITE`], [`PUT_IF_ABSENT`]); `*upload`
    /// is its handle. Nothing is visible at `key` before `put_finish` succeeds.
    pub put_open: Option<
        unsafe extern "C" fn(
            h: Handle,
            key: Bytes,
            mode: u32,
            timeout_ms: u64,
            upload: *mut Handle,
            err: *mut Buf,
        ) -> u32,
    >,
    /// Appends a chunk to an upload.
    pub put_write: Option<
        unsafe extern "C" fn(
            h: Handle,
            upload: Handle,
            chunk: Bytes,
            timeout_ms: u64,
            err: *mut Buf,
        ) -> u32,
    >,
    /// Makes the upload durable and visible at its key, atomically; ends the upload either way.
    /// [`STATUS_EXISTS`] when a put-if-absent found different content.
    pub put_finish: Option<
        unsafe extern "C" fn(h: Handle, upload: Handle, timeout_ms: u64, err: *mut Buf) -> u32,
    >,
    /// Drops an upload; nothing becomes visible.
    pub put_abort: Option<unsafe extern "C" fn(h: Handle, upload: Handle)>,
    /// Opens `key` for reading; `*download` is its handle and `*size` its length in bytes.
    /// [`STATUS_NOT_FOUND`] when absent.
    pub get_open: Option<
        unsafe extern "C" fn(
            h: Handle,
            key: Bytes,
            timeout_ms: u64,
            download: *mut Handle,
            size: *mut u64,
            err: *mut Buf,
        ) -> u32,
    >,
    /// Reads the next chunk of at most `max` bytes into `out`; an empty `out` is the end.
    pub get_read: Option<
        unsafe extern "C" fn(
            h: Handle,
            download: Handle,
            max: u64,
            timeout_ms: u64,
            out: *mut Buf,
            err: *mut Buf,
        ) -> u32,
    >,
    /// Ends a download.
    pub get_close: Option<unsafe extern "C" fn(h: Handle, download: Handle)>,
    /// The size of `key`; [`STATUS_NOT_FOUND`] when absent.
    pub head: Option<
        unsafe extern "C" fn(
            h: Handle,
            key: Bytes,
            timeout_ms: u64,
            size: *mut u64,
            err: *mut Buf,
        ) -> u32,
    >,
    /// One page of the keys starting with `prefix` that sort after `start_after` (bytewise),
    /// at most `limit`, encoded with [`encode_list_page`].
    pub list: Option<
        unsafe extern "C" fn(
            h: Handle,
            prefix: Bytes,
            start_after: Bytes,
            limit: u32,
            timeout_ms: u64,
            out: *mut Buf,
            err: *mut Buf,
        ) -> u32,
    >,
    /// Deletes `key`; [`STATUS_NOT_FOUND`] when absent.
    pub delete:
        Option<unsafe extern "C" fn(h: Handle, key: Bytes, timeout_ms: u64, err: *mut Buf) -> u32>,
    /// Frees a buffer this plugin filled.
    pub free_buf: Option<unsafe extern "C" fn(buf: Buf)>,
}

// SAFETY: a vtable is immutable static data (function pointers).
unsafe impl Sync for StorageVTable {}

impl std::fmt::Debug for StorageVTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageVTable")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// (1.1) The load-balancer entry points. Every call carries the leader term it acts for; a
/// backend refuses ([`STATUS_STALE_TERM`]) a term older than the newest it has seen.
#[repr(C)]
pub struct LbVTable {
    /// ABI version (this struct's minor) and `sizeof(LbVTable)`.
    pub header: AbiHeader,
    /// Builds an instance from a JSON configuration `{"config": {…}}`.
    pub create: Option<unsafe extern "C" fn(config: Bytes, out: *mut Handle, err: *mut Buf) -> u32>,
    /// Frees the instance.
    pub destroy: Option<unsafe extern "C" fn(h: Handle)>,
    /// Routes read-write traffic to `member` (empty: to nobody) for leader term `term`.
    pub set_primary: Option<
        unsafe extern "C" fn(
            h: Handle,
            member: Bytes,
            term: u64,
            timeout_ms: u64,
            err: *mut Buf,
        ) -> u32,
    >,
    /// Routes read-only traffic to `members` (encoded with [`encode_names`]) for `term`.
    pub set_replicas: Option<
        unsafe extern "C" fn(
            h: Handle,
            members: Bytes,
            term: u64,
            timeout_ms: u64,
            err: *mut Buf,
        ) -> u32,
    >,
    /// What the backend routes now, as JSON:
    /// `{"primary": "n1" | null, "replicas": ["n2"], "term": 7 | null}` (more fields allowed).
    pub describe: Option<
        unsafe extern "C" fn(h: Handle, timeout_ms: u64, out: *mut Buf, err: *mut Buf) -> u32,
    >,
    /// Frees a buffer this plugin filled.
    pub free_buf: Option<unsafe extern "C" fn(buf: Buf)>,
}

// SAFETY: a vtable is immutable static data (function pointers).
unsafe impl Sync for LbVTable {}

impl std::fmt::Debug for LbVTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbVTable")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Appends a length-prefixed byte string.
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The snapshot wire format of DCS vtable minor `minor` (all integers little-endian):
/// `revision: i64`, `count: u32`, then per entry `key_len: u32, key, value_len: u32, value,
/// version: i64, owned_by_us: u8`, and since 1.1 `created: i64` (0 when unknown).
pub fn encode_snapshot(s: &crate::Snapshot, minor: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + s.entries.len() * 64);
    out.extend_from_slice(&s.revision.to_le_bytes());
    out.extend_from_slice(&(s.entries.len() as u32).to_le_bytes());
    for e in &s.entries {
        put_bytes(&mut out, e.key.as_bytes());
        put_bytes(&mut out, &e.value);
        out.extend_from_slice(&e.version.to_le_bytes());
        out.push(u8::from(e.owned_by_us));
        if minor >= 1 {
            out.extend_from_slice(&e.created.unwrap_or(0).to_le_bytes());
        }
    }
    out
}

/// A buffer that does not hold the wire format it should (a plugin built against another
/// format, or a bug); the message says where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer ends inside a field.
    #[error("truncated at byte {at} (wanted {wanted} more)")]
    Truncated {
        /// Where the field starts.
        at: usize,
        /// Bytes missing from there.
        wanted: usize,
    },
    /// A snapshot entry's key is not UTF-8.
    #[error("entry {index}: key is not UTF-8")]
    EntryKey {
        /// The entry.
        index: usize,
        /// Why.
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// A listed object's key is not UTF-8.
    #[error("object {index}: key is not UTF-8")]
    ObjectKey {
        /// The object.
        index: usize,
        /// Why.
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// A member name is not UTF-8.
    #[error("name {index} is not UTF-8")]
    Name {
        /// The name's position.
        index: usize,
        /// Why.
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// Bytes after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Reads the wire format of DCS vtable minor `minor` back; an error names what is wrong,
/// never a panic. A 1.0 snapshot has no `created`: every entry's is `None`.
pub fn decode_snapshot(b: &[u8], minor: u32) -> Result<crate::Snapshot, DecodeError> {
    let mut r = Reader { b, at: 0 };
    let revision = r.i64()?;
    let count = r.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(4096));
    for i in 0..count {
        let key = String::from_utf8(r.bytes()?.to_vec())
            .map_err(|source| DecodeError::EntryKey { index: i, source })?;
        let value = r.bytes()?.to_vec();
        let version = r.i64()?;
        let owned_by_us = r.u8()? != 0;
        let created = if minor >= 1 {
            Some(r.i64()?).filter(|c| *c > 0)
        } else {
            None
        };
        entries.push(crate::Entry {
            key,
            value,
            version,
            owned_by_us,
            created,
        });
    }
    if r.at != b.len() {
        return Err(DecodeError::Trailing(b.len() - r.at));
    }
    Ok(crate::Snapshot { revision, entries })
}

/// The session wire format of DCS vtable minor `minor`: `id: i64`, `new_session: u8`, and
/// since 1.1 `granted_ttl_ms: u64` (0 when unknown).
pub fn encode_session(s: &crate::SessionInfo, minor: u32) -> Vec<u8> {
    let mut out = s.id.to_le_bytes().to_vec();
    out.push(u8::from(s.new_session));
    if minor >= 1 {
        let ms = s
            .granted_ttl
            .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        out.extend_from_slice(&ms.to_le_bytes());
    }
    out
}

/// Reads [`encode_session`]'s format of minor `minor`.
pub fn decode_session(b: &[u8], minor: u32) -> Result<crate::SessionInfo, DecodeError> {
    let mut r = Reader { b, at: 0 };
    let id = r.i64()?;
    let new_session = r.u8()? != 0;
    let granted_ttl = if minor >= 1 {
        Some(r.u64()?)
            .filter(|ms| *ms > 0)
            .map(std::time::Duration::from_millis)
    } else {
        None
    };
    if r.at != b.len() {
        return Err(DecodeError::Trailing(b.len() - r.at));
    }
    Ok(crate::SessionInfo {
        id,
        new_session,
        granted_ttl,
    })
}

/// One page of a storage listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// `(key, size in bytes)`, sorted bytewise by key.
    pub objects: Vec<(String, u64)>,
    /// True when more keys follow the last one of this page.
    pub more: bool,
}

/// The list-page wire format: `count: u32`, then per object `key_len: u32, key, size: u64`,
/// then `more: u8`.
pub fn encode_list_page(p: &ListPage) -> Vec<u8> {
    let mut out = (p.objects.len() as u32).to_le_bytes().to_vec();
    for (key, size) in &p.objects {
        put_bytes(&mut out, key.as_bytes());
        out.extend_from_slice(&size.to_le_bytes());
    }
    out.push(u8::from(p.more));
    out
}

/// Reads [`encode_list_page`]'s format.
pub fn decode_list_page(b: &[u8]) -> Result<ListPage, DecodeError> {
    let mut r = Reader { b, at: 0 };
    let count = r.u32()? as usize;
    let mut objects = Vec::with_capacity(count.min(4096));
    for i in 0..count {
        let key = String::from_utf8(r.bytes()?.to_vec())
            .map_err(|source| DecodeError::ObjectKey { index: i, source })?;
        objects.push((key, r.u64()?));
    }
    let more = r.u8()? != 0;
    if r.at != b.len() {
        return Err(DecodeError::Trailing(b.len() - r.at));
    }
    Ok(ListPage { objects, more })
}

/// The member-list wire format of `set_replicas`: `count: u32`, then per name
/// `len: u32, name`.
pub fn encode_names(names: &[String]) -> Vec<u8> {
    let mut out = (names.len() as u32).to_le_bytes().to_vec();
    for n in names {
        put_bytes(&mut out, n.as_bytes());
    }
    out
}

/// Reads [`encode_names`]'s format.
pub fn decode_names(b: &[u8]) -> Result<Vec<String>, DecodeError> {
    let mut r = Reader { b, at: 0 };
    let count = r.u32()? as usize;
    let mut names = Vec::with_capacity(count.min(4096));
    for i in 0..count {
        names.push(
            String::from_utf8(r.bytes()?.to_vec())
                .map_err(|source| DecodeError::Name { index: i, source })?,
        );
    }
    if r.at != b.len() {
        return Err(DecodeError::Trailing(b.len() - r.at));
    }
    Ok(names)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(DecodeError::Truncated {
                at: self.at,
                wanted: n,
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, SessionInfo, Snapshot};
    use std::time::Duration;

    fn snapshot() -> Snapshot {
        Snapshot {
            revision: 42,
            entries: vec![
                Entry {
                    key: "leader".into(),
                    value: b"n1".to_vec(),
                    version: 7,
                    owned_by_us: true,
                    created: Some(5),
                },
                Entry {
                    key: "members/n2".into(),
                    value: Vec::new(),
                    version: -1,
                    owned_by_us: false,
                    created: None,
                },
            ],
        }
    }

    #[test]
    fn snapshot_round_trips_and_garbage_is_an_error() {
        let s = snapshot();
        let b = encode_snapshot(&s, DCS_VTABLE_MINOR);
        assert_eq!(decode_snapshot(&b, DCS_VTABLE_MINOR), Ok(s));
        assert!(decode_snapshot(&b[..b.len() - 1], 1)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        let mut long = b.clone();
        long.push(0);
        assert!(decode_snapshot(&long, 1)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
        // A count far beyond the data fails cleanly instead of allocating it.
        let mut huge = 1i64.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_snapshot(&huge, 1).is_err());
    }

    #[test]
    fn a_1_0_snapshot_has_no_creation_counters_and_is_not_read_as_1_1() {
        let s = snapshot();
        let old = encode_snapshot(&s, 0);
        let read = decode_snapshot(&old, 0).expect("1.0 format");
        assert!(read.entries.iter().all(|e| e.created.is_none()));
        assert_eq!(read.entries[0].version, 7);
        // The formats differ, so reading one as the other is an error, not garbage terms.
        assert!(decode_snapshot(&old, 1).is_err());
        assert!(decode_snapshot(&encode_snapshot(&s, 1), 0).is_err());
    }

    #[test]
    fn sessions_round_trip_in_both_minors() {
        let si = SessionInfo {
            id: -5,
            new_session: true,
            granted_ttl: Some(Duration::from_secs(20)),
        };
        assert_eq!(decode_session(&encode_session(&si, 1), 1), Ok(si));
        let old = decode_session(&encode_session(&si, 0), 0).expect("1.0 format");
        assert_eq!((old.id, old.granted_ttl), (-5, None));
        assert!(decode_session(&[1, 2], 1).is_err());
    }

    #[test]
    fn list_pages_and_names_round_trip() {
        let p = ListPage {
            objects: vec![("wal/000000010000000000000001".into(), 16 << 20)],
            more: true,
        };
        assert_eq!(decode_list_page(&encode_list_page(&p)), Ok(p));
        assert!(decode_list_page(&[1, 0, 0, 0]).is_err());
        let names = vec!["n2".to_string(), "n3".to_string()];
        assert_eq!(decode_names(&encode_names(&names)), Ok(names));
        assert!(decode_names(&[9, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn headers_carry_each_structs_own_minor_and_size() {
        let h = AbiHeader::of::<DcsVTable>();
        assert_eq!((h.abi_major, h.abi_minor), (ABI_MAJOR, DCS_VTABLE_MINOR));
        assert_eq!(h.struct_size as usize, std::mem::size_of::<DcsVTable>());
        assert_eq!(
            AbiHeader::of::<LbVTable>().abi_minor,
            LB_VTABLE_MINOR,
            "each struct stamps its own minor"
        );
        // The C header's layout on 64-bit targets: 12-byte header + pad, then pointers.
        assert_eq!(std::mem::size_of::<DcsVTable>(), 16 + 14 * 8);
        assert_eq!(std::mem::size_of::<PluginDescriptor>(), 16 + 16 + 16 + 8);
        assert_eq!(std::mem::size_of::<StorageVTable>(), 16 + 13 * 8);
        assert_eq!(std::mem::size_of::<LbVTable>(), 16 + 6 * 8);
    }

    #[test]
    fn the_size_table_knows_which_struct_existed_in_which_minor() {
        assert_eq!(struct_size_of(Struct::Dcs, 0), Some(128));
        assert_eq!(struct_size_of(Struct::Descriptor, 0), Some(56));
        assert_eq!(struct_size_of(Struct::Storage, 0), None);
        assert_eq!(struct_size_of(Struct::LoadBalancer, 0), None);
        assert_eq!(struct_size_of(Struct::Storage, 1), Some(120));
        assert_eq!(struct_size_of(Struct::Dcs, ABI_MINOR + 1), None);
    }
}
