//! Writing a plugin in Rust: implement the blocking trait of its kind — [`DcsPlugin`],
//! [`StoragePlugin`] or [`LbPlugin`] — and export it with [`export_dcs_plugin!`],
//! [`export_storage_plugin!`] or [`export_lb_plugin!`](crate::export_lb_plugin).
//!
//! The macros build the C vtable of the kind. What every kind shares is written once here:
//! the `create` and `destroy` shims, buffer hand-over and `free_buf`, and [`guarded`], which
//! wraps every entry point in `catch_unwind` so that a panic becomes
//! [`STATUS_PANIC`](crate::abi::STATUS_PANIC) with its message — an error in the daemon's log,
//! never undefined behaviour. The descriptor itself is emitted by one internal macro for all
//! kinds.
//!
//! `examples/plugin-etcd-gateway` (DCS), `plugins/storage-fs` (storage) and
//! `tests/plugins/lb-memory` (load balancer) are complete plugins.
//!
//! [`export_dcs_plugin!`]: crate::export_dcs_plugin
//! [`export_storage_plugin!`]: crate::export_storage_plugin

pub mod dcs;
pub mod lb;
#[cfg(feature = "tokio-runtime")]
pub mod runtime;
pub mod storage;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::abi::{self, Buf, Bytes, Handle};

pub use dcs::{DcsPlugin, PluginConfig};
pub use lb::LbPlugin;
pub use storage::StoragePlugin;

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
        PluginError::with(abi::STATUS_UNAVAILABLE, message)
    }

    /// The call ran out of time.
    pub fn timeout(message: impl Into<String>) -> PluginError {
        PluginError::with(abi::STATUS_TIMEOUT, message)
    }

    /// The store refused.
    pub fn refused(message: impl Into<String>) -> PluginError {
        PluginError::with(abi::STATUS_REFUSED, message)
    }

    /// Bad configuration or arguments.
    pub fn invalid(message: impl Into<String>) -> PluginError {
        PluginError::with(abi::STATUS_INVALID, message)
    }

    /// (storage) No such object.
    pub fn not_found(message: impl Into<String>) -> PluginError {
        PluginError::with(abi::STATUS_NOT_FOUND, message)
    }

    /// (storage) A put-if-absent found different content.
    pub fn exists(message: impl Into<String>) -> PluginError {
        PluginError::with(abi::STATUS_EXISTS, message)
    }

    /// The call carried an older term than one already seen.
    pub fn stale_term(stale: crate::term::StaleTerm) -> PluginError {
        PluginError::with(abi::STATUS_STALE_TERM, stale.to_string())
    }

    fn with(status: u32, message: impl Into<String>) -> PluginError {
        PluginError {
            status,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A plugin instance of any kind as the shared shims see it: built from the JSON the host
/// passes to `create`. The kind modules implement it for their wrapper types.
pub trait Instance: Send + Sync + Sized + 'static {
    /// Builds the instance from the host's JSON.
    fn from_json(json: &[u8]) -> Result<Self, PluginError>;
}

/// Hands `bytes` to the host in `out` (freed later by [`free_buf`]).
pub(crate) fn give(out: *mut Buf, bytes: Vec<u8>) {
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

/// Runs `f`, catching panics; on error writes the message to `err` and returns its status.
pub fn guarded(err: *mut Buf, f: impl FnOnce() -> Result<(), PluginError>) -> u32 {
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

/// Runs `f` where no status can be returned (destroy, abort, close): a panic is swallowed.
pub(crate) fn quietly(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// The deadline of a call given `timeout_ms`.
pub(crate) fn deadline(timeout_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(timeout_ms)
}

/// UTF-8 text of a byte slice the host passed, or an INVALID error naming `what`.
///
/// # Safety
/// `b` must be valid for the call.
pub(crate) unsafe fn text<'a>(b: Bytes, what: &str) -> Result<&'a str, PluginError> {
    // SAFETY: per the caller.
    let bytes = unsafe { b.as_slice() };
    std::str::from_utf8(bytes).map_err(|_| PluginError::invalid(format!("{what} is not UTF-8")))
}

/// # Safety
/// `h` must be a handle `create_shim::<T>` returned and not yet destroyed.
pub(crate) unsafe fn instance<'a, T: Instance>(h: Handle) -> &'a T {
    // SAFETY: per the contract, `h` came from `Box::<T>::into_raw` and is not yet destroyed.
    unsafe { &*(h as *const T) }
}

/// `create` for every kind.
///
/// # Safety
/// Called by the host per the ABI.
pub unsafe extern "C" fn create_shim<T: Instance>(
    config: Bytes,
    out: *mut Handle,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        if out.is_null() {
            return Err(PluginError::invalid("null output handle"));
        }
        // SAFETY: the host passes a JSON string valid for the call.
        let json = unsafe { config.as_slice() };
        let p = Box::new(T::from_json(json)?);
        // SAFETY: `out` is valid for the call.
        unsafe { *out = Box::into_raw(p) as Handle };
        Ok(())
    })
}

/// `destroy` for every kind.
///
/// # Safety
/// Called by the host per the ABI, once per handle.
pub unsafe extern "C" fn destroy_shim<T: Instance>(h: Handle) {
    if h.is_null() {
        return;
    }
    quietly(|| {
        // SAFETY: `h` came from `create_shim::<T>` and the host destroys it once.
        drop(unsafe { Box::from_raw(h as *mut T) });
    });
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

/// Emits `spilo_plugin_descriptor` for a vtable of any kind (used by the export macros).
#[doc(hidden)]
#[macro_export]
macro_rules! __export_descriptor {
    ($kind:expr, $vtable_ty:ty, $vtable:expr, $name:expr, $version:expr) => {
        /// The plugin's entry point (see `spilo_sdk::abi`).
        #[no_mangle]
        pub extern "C" fn spilo_plugin_descriptor() -> *const $crate::abi::PluginDescriptor {
            static VTABLE: $vtable_ty = $vtable;
            static DESCRIPTOR: $crate::abi::PluginDescriptor = $crate::abi::PluginDescriptor {
                header: $crate::abi::AbiHeader::of::<$crate::abi::PluginDescriptor>(),
                kind: $kind,
                name: $crate::abi::Bytes::from_static($name),
                version: $crate::abi::Bytes::from_static($version),
                vtable: &VTABLE as *const $vtable_ty as *const ::std::ffi::c_void,
            };
            &DESCRIPTOR
        }
    };
}
