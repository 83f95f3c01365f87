//! Writing a load-balancer plugin in Rust: implement [`LbPlugin`] and export it with
//! [`export_lb_plugin!`](crate::export_lb_plugin). Keep a [`crate::TermFence`] and refuse
//! stale terms with [`PluginError::stale_term`].
//!
//! ```ignore
//! spilo_sdk::export_lb_plugin!(MyBalancer, name = "mylb", version = "1.0");
//! ```

use std::time::Instant;

use super::{create_shim, deadline, destroy_shim, free_buf, give, guarded, text};
use super::{Instance, PluginError};
use crate::abi::{self, Buf, Bytes, Handle, LbVTable};
use crate::term::Term;

/// A load balancer behind the C ABI: the contract of [`crate::lb`] as blocking calls.
pub trait LbPlugin: Send + Sync + 'static {
    /// Builds the backend from the `config` section of the host's JSON.
    fn create(config: &serde_json::Value) -> Result<Self, PluginError>
    where
        Self: Sized;
    /// Routes read-write traffic to `member` (`None`: nobody) for `term`.
    fn set_primary(
        &self,
        member: Option<&str>,
        term: Term,
        deadline: Instant,
    ) -> Result<(), PluginError>;
    /// Routes read-only traffic to `members` for `term`.
    fn set_replicas(
        &self,
        members: &[String],
        term: Term,
        deadline: Instant,
    ) -> Result<(), PluginError>;
    /// What it routes now: `{"primary": …, "replicas": […], "term": …}`.
    fn describe(&self, deadline: Instant) -> Result<serde_json::Value, PluginError>;
}

/// The instance behind a load-balancer plugin's handle.
#[repr(transparent)]
pub struct LbInstance<T>(T);

impl<T: LbPlugin> Instance for LbInstance<T> {
    fn from_json(json: &[u8]) -> Result<Self, PluginError> {
        let v: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| PluginError::invalid(format!("plugin configuration: {e}")))?;
        let config = v.get("config").cloned().unwrap_or(serde_json::Value::Null);
        Ok(LbInstance(T::create(&config)?))
    }
}

/// # Safety
/// `h` must be a live handle of `LbInstance<T>`.
unsafe fn plugin<'a, T: LbPlugin>(h: Handle) -> &'a T {
    // SAFETY: per the caller.
    &unsafe { super::instance::<LbInstance<T>>(h) }.0
}

fn term_of(term: u64) -> Result<Term, PluginError> {
    if term == 0 {
        Err(PluginError::invalid(
            "term 0: side effects need a known term",
        ))
    } else {
        Ok(Term(term))
    }
}

unsafe extern "C" fn set_primary_shim<T: LbPlugin>(
    h: Handle,
    member: Bytes,
    term: u64,
    timeout_ms: u64,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, member) = unsafe { (plugin::<T>(h), text(member, "member")?) };
        let member = Some(member).filter(|m| !m.is_empty());
        p.set_primary(member, term_of(term)?, deadline(timeout_ms))
    })
}

unsafe extern "C" fn set_replicas_shim<T: LbPlugin>(
    h: Handle,
    members: Bytes,
    term: u64,
    timeout_ms: u64,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, raw) = unsafe { (plugin::<T>(h), members.as_slice()) };
        let names = abi::decode_names(raw).map_err(|e| PluginError::invalid(e.to_string()))?;
        p.set_replicas(&names, term_of(term)?, deadline(timeout_ms))
    })
}

unsafe extern "C" fn describe_shim<T: LbPlugin>(
    h: Handle,
    timeout_ms: u64,
    out: *mut Buf,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let v = unsafe { plugin::<T>(h) }.describe(deadline(timeout_ms))?;
        give(out, v.to_string().into_bytes());
        Ok(())
    })
}

/// The vtable of `T` (used by [`export_lb_plugin!`](crate::export_lb_plugin)).
pub const fn lb_vtable<T: LbPlugin>() -> LbVTable {
    LbVTable {
        header: abi::AbiHeader::of::<LbVTable>(),
        create: Some(create_shim::<LbInstance<T>>),
        destroy: Some(destroy_shim::<LbInstance<T>>),
        set_primary: Some(set_primary_shim::<T>),
        set_replicas: Some(set_replicas_shim::<T>),
        describe: Some(describe_shim::<T>),
        free_buf: Some(free_buf),
    }
}

/// Exports `$ty` (an [`LbPlugin`]) as this library's plugin:
/// `export_lb_plugin!(MyBalancer, name = "mylb", version = "1.0");`
#[macro_export]
macro_rules! export_lb_plugin {
    ($ty:ty, name = $name:expr, version = $version:expr) => {
        $crate::__export_descriptor!(
            $crate::abi::KIND_LOAD_BALANCER,
            $crate::abi::LbVTable,
            $crate::plugin::lb::lb_vtable::<$ty>(),
            $name,
            $version
        );
    };
}
