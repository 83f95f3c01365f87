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

use super::{
    create_shim, deadline, destroy_shim, free_buf, give, guarded, text, Instance, PluginError,
};
use crate::abi::{self, Buf, Bytes, DcsVTable, Handle};
use crate::{Cas, SessionInfo, Snapshot};

/// The instance behind a DCS plugin's handle.
#[repr(transparent)]
pub struct DcsInstance<T>(T);

impl<T: DcsPlugin> Instance for DcsInstance<T> {
    fn from_json(json: &[u8]) -> Result<Self, PluginError> {
        Ok(DcsInstance(T::create(&PluginConfig::parse(json)?)?))
    }
}

/// # Safety
/// `h` must be a handle `create_shim::<DcsInstance<T>>` returned, not yet destroyed.
unsafe fn plugin<'a, T: DcsPlugin>(h: Handle) -> &'a T {
    // SAFETY: per the caller.
    &unsafe { super::instance::<DcsInstance<T>>(h) }.0
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

fn cas_from(kind: u32, version: i64) -> Result<Cas, PluginError> {
    match kind {
        abi::CAS_ANY => Ok(Cas::Any),
        abi::CAS_ABSENT => Ok(Cas::Absent),
        abi::CAS_VERSION => Ok(Cas::Version(version)),
        other => Err(PluginError::invalid(format!("unknown CAS kind {other}"))),
    }
}

fn set_done(done: *mut u8, v: bool) {
    if !done.is_null() {
        // SAFETY: the host passes a valid pointer for the call.
        unsafe { *done = u8::from(v) };
    }
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
        give(out, abi::encode_snapshot(&s, abi::DCS_VTABLE_MINOR));
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
        give(out, abi::encode_session(&s, abi::DCS_VTABLE_MINOR));
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

/// The leader-key shims, all of one shape: `(handle, timeout_ms, done, err)` calling a method
/// of the plugin that answers whether it was done.
macro_rules! leader_shim {
    ($($shim:ident => $method:ident),+ $(,)?) => {$(
        unsafe extern "C" fn $shim<T: DcsPlugin>(
            h: Handle,
            timeout_ms: u64,
            done: *mut u8,
            err: *mut Buf,
        ) -> u32 {
            guarded(err, || {
                // SAFETY: per the ABI contract.
                let r = unsafe { plugin::<T>(h) }.$method(deadline(timeout_ms))?;
                set_done(done, r);
                Ok(())
            })
        }
    )+};
}

leader_shim!(
    acquire_shim => acquire_leader,
    reattach_shim => reattach_leader,
    release_shim => release_leader,
);

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
        let (p, k, v) = unsafe { (plugin::<T>(h), text(key, "key")?, value.as_slice()) };
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
        let (p, k) = unsafe { (plugin::<T>(h), text(key, "key")?) };
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

/// The vtable of `T` (used by [`export_dcs_plugin!`](crate::export_dcs_plugin)).
pub const fn dcs_vtable<T: DcsPlugin>() -> DcsVTable {
    DcsVTable {
        header: abi::AbiHeader::of::<DcsVTable>(),
        create: Some(create_shim::<DcsInstance<T>>),
        destroy: Some(destroy_shim::<DcsInstance<T>>),
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
        $crate::__export_descriptor!(
            $crate::abi::KIND_DCS,
            $crate::abi::DcsVTable,
            $crate::plugin::dcs::dcs_vtable::<$ty>(),
            $name,
            $version
        );
    };
}
