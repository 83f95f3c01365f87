//! Writing a DCS plugin in Rust: implement [`DcsPlugin`] (plain blocking calls, each with a
//! deadline) and export it with [`export_dcs_plugin!`](crate::export_dcs_plugin). The macro
//! builds the C vtable; every entry point catches panics and turns them into
//! [`STATUS_PANIC`](crate::abi::STATUS_PANIC) with the message, so a bug in a plugin is an
//! error in the daemon's log, never undefined behaviour.
//!
//! ```ignore
//! use spilo_sdk::plugin::{DcsPlugin, PluginConfig, PluginError};
//!
//! struct MyStore { /* a connection */ }
//!
//! impl DcsPlugin for MyStore {
//!     fn create(config: &PluginConfig) -> Result<Self, PluginError> { /* connect */ }
//!     /* … the other calls … */
//! }
//!
//! spilo_sdk::export_dcs_plugin!(MyStore, name = "mystore", version = env!("CARGO_PKG_VERSION"));
//! ```
//!
//! `examples/plugin-etcd-gateway` is a complete plugin.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::abi::{self, Buf, Bytes, DcsVTable, Handle};
use crate::{Cas, SessionInfo, Snapshot};

/// What went wrong in a plugin call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginError {
    /// One of the `STATUS_*` codes other than OK.
    pub status: u32,
    /// Human-readable detail.
    pub message: String,
}

impl PluginError {
    /// The store could not be reached.
    pub fn unavailable(message: impl Into<String>) -> PluginError {
        PluginError {
            status: abi::STATUS_UNAVAILABLE,
            message: message.into(),
        }
    }

    /// The call ran out of time.
    pub fn timeout(message: impl Into<String>) -> PluginError {
        PluginError {
            status: abi::STATUS_TIMEOUT,
            message: message.into(),
        }
    }

    /// The store refused.
    pub fn refused(message: impl Into<String>) -> PluginError {
        PluginError {
            status: abi::STATUS_REFUSED,
            message: message.into(),
        }
    }

    /// Bad configuration or arguments.
    pub fn invalid(message: impl Into<String>) -> PluginError {
        PluginError {
            status: abi::STATUS_INVALID,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The configuration the host passes to `create`, as JSON:
///
/// ```json
/// {"spilo": {"prefix": "/service/batman/", "member": "n1", "ttl_ms": 30000,
///            "retry_timeout_ms": 10000, "watch": true, "session": true},
///  "config": { …the `dcs:` section of the node configuration, minus `plugin`… }}
/// ```
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// The cluster prefix, with leading and trailing `/`.
    pub prefix: String,
    /// This daemon's member name.
    pub member: String,
    /// Session time-to-live.
    pub ttl: Duration,
    /// Deadline of every store operation.
    pub retry_timeout: Duration,
    /// The host wants change notifications (`wait_changes`).
    pub watch: bool,
    /// The host uses the session (the daemon); false for the CLI.
    pub session: bool,
    /// The plugin's own settings.
    pub config: serde_json::Value,
}

impl PluginConfig {
    /// Parses the JSON the host sends; an error names the field.
    pub fn parse(json: &[u8]) -> Result<PluginConfig, PluginError> {
        let v: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| PluginError::invalid(format!("plugin configuration: {e}")))?;
        let s = &v["spilo"];
        let text = |k: &str| {
            s[k].as_str().map(str::to_string).ok_or_else(|| {
                PluginError::invalid(format!("plugin configuration: spilo.{k} missing"))
            })
        };
        let millis = |k: &str| {
            s[k].as_u64().map(Duration::from_millis).ok_or_else(|| {
                PluginError::invalid(format!("plugin configuration: spilo.{k} missing"))
            })
        };
        Ok(PluginConfig {
            prefix: text("prefix")?,
            member: text("member")?,
            ttl: millis("ttl_ms")?,
            retry_timeout: millis("retry_timeout_ms")?,
            watch: s["watch"].as_bool().unwrap_or(false),
            session: s["session"].as_bool().unwrap_or(false),
            config: v.get("config").cloned().unwrap_or(serde_json::Value::Null),
        })
    }
}

/// A DCS backend behind the C ABI: the same contract as [`crate::dcs`]'s async trait, as
/// blocking calls. Each call must return by its `deadline`.
pub trait DcsPlugin: Send + Sync + 'static {
    /// Connects (or prepares to) with the host's configuration.
    fn create(config: &PluginConfig) -> Result<Self, PluginError>
    where
        Self: Sized;
    /// Every key under the cluster prefix.
    fn snapshot(&self, deadline: Instant) -> Result<Snapshot, PluginError>;
    /// Renews the session, making a new one if it expired.
    fn keepalive(&self, deadline: Instant) -> Result<SessionInfo, PluginError>;
    /// Writes `members/<name>` bound to the session.
    fn put_member(&self, value: &[u8], deadline: Instant) -> Result<(), PluginError>;
    /// Creates the leader key holding our name if absent.
    fn acquire_leader(&self, deadline: Instant) -> Result<bool, PluginError>;
    /// Binds the leader key holding our name to the current session (or creates it).
    fn reattach_leader(&self, deadline: Instant) -> Result<bool, PluginError>;
    /// Deletes the leader key if it holds our name.
    fn release_leader(&self, deadline: Instant) -> Result<bool, PluginError>;
    /// Writes a persistent key under `cas`.
    fn put(
        &self,
        key: &str,
        value: &[u8],
        cas: Cas,
        deadline: Instant,
    ) -> Result<bool, PluginError>;
    /// Deletes a key under `cas`.
    fn delete(&self, key: &str, cas: Cas, deadline: Instant) -> Result<bool, PluginError>;
    /// Blocks until the change counter exceeds `seen` or `timeout` passes; the counter.
    fn wait_changes(&self, seen: u64, timeout: Duration) -> u64;
    /// The TTL of the next session.
    fn set_ttl(&self, ttl: Duration);
    /// Ends the session now.
    fn close(&self, deadline: Instant) -> Result<(), PluginError>;
}

/// Hands `bytes` to the host in `out` (freed later by [`free_buf`]).
fn give(out: *mut Buf, bytes: Vec<u8>) {
    if out.is_null() {
        return;
    }
    let mut b = std::mem::ManuallyDrop::new(bytes);
    // SAFETY: `out` is a valid pointer the host passed for this call.
    unsafe {
        *out = Buf {
            ptr: b.as_mut_ptr(),
            len: b.len(),
            cap: b.capacity(),
        };
    }
}

/// The text of a caught panic.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => format!("plugin panicked: {s}"),
        Err(p) => match p.downcast::<&'static str>() {
            Ok(s) => format!("plugin panicked: {s}"),
            Err(_) => "plugin panicked".to_string(),
        },
    }
}

/// Runs `f`, catching panics; on error writes the message to `err`.
fn guarded(err: *mut Buf, f: impl FnOnce() -> Result<(), PluginError>) -> u32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => abi::STATUS_OK,
        Ok(Err(e)) => {
            give(err, e.message.into_bytes());
            e.status
        }
        Err(p) => {
            give(err, panic_text(p).into_bytes());
            abi::STATUS_PANIC
        }
    }
}

fn deadline(timeout_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(timeout_ms)
}

fn cas_from(kind: u32, version: i64) -> Result<Cas, PluginError> {
    match kind {
        abi::CAS_ANY => Ok(Cas::Any),
        abi::CAS_ABSENT => Ok(Cas::Absent),
        abi::CAS_VERSION => Ok(Cas::Version(version)),
        other => Err(PluginError::invalid(format!("unknown CAS kind {other}"))),
    }
}

/// # Safety
/// `h` must be a handle `create_shim::<T>` returned.
unsafe fn plugin<'a, T: DcsPlugin>(h: Handle) -> &'a T {
    // SAFETY: per the contract, `h` came from `Box::<T>::into_raw` and is not yet destroyed.
    unsafe { &*(h as *const T) }
}

fn set_done(done: *mut u8, v: bool) {
    if !done.is_null() {
        // SAFETY: the host passes a valid pointer for the call.
        unsafe { *done = u8::from(v) };
    }
}

unsafe extern "C" fn create_shim<T: DcsPlugin>(
    config: Bytes,
    out: *mut Handle,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: the host passes a JSON string valid for the call.
        let json = unsafe { config.as_slice() };
        let cfg = PluginConfig::parse(json)?;
        let p = Box::new(T::create(&cfg)?);
        if out.is_null() {
            return Err(PluginError::invalid("null output handle"));
        }
        // SAFETY: `out` is valid for the call.
        unsafe { *out = Box::into_raw(p) as Handle };
        Ok(())
    })
}

unsafe extern "C" fn destroy_shim<T: DcsPlugin>(h: Handle) {
    if h.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `h` came from `create_shim::<T>` and the host destroys it once.
        drop(unsafe { Box::from_raw(h as *mut T) });
    }));
}

unsafe extern "C" fn snapshot_shim<T: DcsPlugin>(
    h: Handle,
    timeout_ms: u64,
    out: *mut Buf,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let s = unsafe { plugin::<T>(h) }.snapshot(deadline(timeout_ms))?;
        give(out, abi::encode_snapshot(&s));
        Ok(())
    })
}

unsafe extern "C" fn keepalive_shim<T: DcsPlugin>(
    h: Handle,
    timeout_ms: u64,
    out: *mut Buf,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let s = unsafe { plugin::<T>(h) }.keepalive(deadline(timeout_ms))?;
        give(out, abi::encode_session(&s));
        Ok(())
    })
}

unsafe extern "C" fn put_member_shim<T: DcsPlugin>(
    h: Handle,
    value: Bytes,
    timeout_ms: u64,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, v) = unsafe { (plugin::<T>(h), value.as_slice()) };
        p.put_member(v, deadline(timeout_ms))
    })
}

unsafe extern "C" fn acquire_shim<T: DcsPlugin>(
    h: Handle,
    timeout_ms: u64,
    done: *mut u8,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let r = unsafe { plugin::<T>(h) }.acquire_leader(deadline(timeout_ms))?;
        set_done(done, r);
        Ok(())
    })
}

unsafe extern "C" fn reattach_shim<T: DcsPlugin>(
    h: Handle,
    timeout_ms: u64,
    done: *mut u8,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let r = unsafe { plugin::<T>(h) }.reattach_leader(deadline(timeout_ms))?;
        set_done(done, r);
        Ok(())
    })
}

unsafe extern "C" fn release_shim<T: DcsPlugin>(
    h: Handle,
    timeout_ms: u64,
    done: *mut u8,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let r = unsafe { plugin::<T>(h) }.release_leader(deadline(timeout_ms))?;
        set_done(done, r);
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn put_shim<T: DcsPlugin>(
    h: Handle,
    key: Bytes,
    value: Bytes,
    cas: u32,
    version: i64,
    timeout_ms: u64,
    done: *mut u8,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, k, v) = unsafe { (plugin::<T>(h), key.as_slice(), value.as_slice()) };
        let k = std::str::from_utf8(k).map_err(|_| PluginError::invalid("key is not UTF-8"))?;
        let r = p.put(k, v, cas_from(cas, version)?, deadline(timeout_ms))?;
        set_done(done, r);
        Ok(())
    })
}

unsafe extern "C" fn delete_shim<T: DcsPlugin>(
    h: Handle,
    key: Bytes,
    cas: u32,
    version: i64,
    timeout_ms: u64,
    done: *mut u8,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, k) = unsafe { (plugin::<T>(h), key.as_slice()) };
        let k = std::str::from_utf8(k).map_err(|_| PluginError::invalid("key is not UTF-8"))?;
        let r = p.delete(k, cas_from(cas, version)?, deadline(timeout_ms))?;
        set_done(done, r);
        Ok(())
    })
}

unsafe extern "C" fn wait_changes_shim<T: DcsPlugin>(h: Handle, seen: u64, timeout_ms: u64) -> u64 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the ABI contract.
        unsafe { plugin::<T>(h) }.wait_changes(seen, Duration::from_millis(timeout_ms))
    }))
    .unwrap_or(seen)
}

unsafe extern "C" fn set_ttl_shim<T: DcsPlugin>(h: Handle, ttl_ms: u64) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the ABI contract.
        unsafe { plugin::<T>(h) }.set_ttl(Duration::from_millis(ttl_ms))
    }));
}

unsafe extern "C" fn close_shim<T: DcsPlugin>(h: Handle, timeout_ms: u64, err: *mut Buf) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        unsafe { plugin::<T>(h) }.close(deadline(timeout_ms))
    })
}

/// Frees a buffer made by [`give`].
///
/// # Safety
/// `buf` must come from this plugin and be freed once.
pub unsafe extern "C" fn free_buf(buf: Buf) {
    if !buf.ptr.is_null() {
        // SAFETY: `buf` was made from a `Vec<u8>` by `give` with these parts.
        drop(unsafe { Vec::from_raw_parts(buf.ptr, buf.len, buf.cap) });
    }
}

/// The vtable of `T` (used by [`export_dcs_plugin!`](crate::export_dcs_plugin)).
pub const fn dcs_vtable<T: DcsPlugin>() -> DcsVTable {
    DcsVTable {
        header: abi::AbiHeader::of::<DcsVTable>(),
        create: Some(create_shim::<T>),
        destroy: Some(destroy_shim::<T>),
        snapshot: Some(snapshot_shim::<T>),
        keepalive: Some(keepalive_shim::<T>),
        put_member: Some(put_member_shim::<T>),
        acquire_leader: Some(acquire_shim::<T>),
        reattach_leader: Some(reattach_shim::<T>),
        release_leader: Some(release_shim::<T>),
        put: Some(put_shim::<T>),
        delete: Some(delete_shim::<T>),
        wait_changes: Some(wait_changes_shim::<T>),
        set_ttl: Some(set_ttl_shim::<T>),
        close: Some(close_shim::<T>),
        free_buf: Some(free_buf),
    }
}

/// Exports `$ty` (a [`DcsPlugin`]) as this library's plugin:
/// `export_dcs_plugin!(MyStore, name = "mystore", version = "1.0");`
#[macro_export]
macro_rules! export_dcs_plugin {
    ($ty:ty, name = $name:expr, version = $version:expr) => {
        /// The plugin's entry point (see `spilo_sdk::abi`).
        #[no_mangle]
        pub extern "C" fn spilo_plugin_descriptor() -> *const $crate::abi::PluginDescriptor {
            static VTABLE: $crate::abi::DcsVTable = $crate::plugin::dcs_vtable::<$ty>();
            static DESCRIPTOR: $crate::abi::PluginDescriptor = $crate::abi::PluginDescriptor {
                header: $crate::abi::AbiHeader::of::<$crate::abi::PluginDescriptor>(),
                kind: $crate::abi::KIND_DCS,
                name: $crate::abi::Bytes::from_static($name),
                version: $crate::abi::Bytes::from_static($version),
                dcs: &VTABLE,
            };
            &DESCRIPTOR
        }
    };
}
