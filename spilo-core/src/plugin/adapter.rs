//! Blocking plugin calls from async code, one mechanism for every plugin kind.
//!
//! A plugin's entry points block (each with its own deadline), so the host runs each call on
//! tokio's blocking pool under a host-side timeout a little longer than the plugin's. The
//! [`Instance`] owns the plugin's handle and keeps three promises:
//! - **timeouts**: a call that hangs past its deadline plus [`GRACE`] is reported as timed
//!   out; the host stops waiting (the thread stays with the plugin);
//! - **no pile-up**: while [`MAX_IN_FLIGHT`] calls still hang inside the plugin, further calls
//!   fail at once instead of parking more threads behind it;
//! - **panics as errors**: the SDK's shims turn a panic into `STATUS_PANIC`, and a call that
//!   dies on the host side (a join error) becomes [`Failure::Crashed`].
//!
//! Messages name the plugin and its file. The kind adapters (`dcs`, `storage`, `lb`) map
//! [`Failure`] to their own error types.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spilo_sdk::abi::{self, Buf, Bytes};

use crate::plugin::loader::LoadedPlugin;

/// Extra time the host waits beyond the plugin's own timeout.
pub const GRACE: Duration = Duration::from_millis(500);
/// Calls allowed to hang inside one plugin instance before further ones fail at once.
pub const MAX_IN_FLIGHT: usize = 4;

/// A plugin's opaque pointer (an instance, an upload, a download). The ABI makes every entry
/// point callable from any thread.
#[derive(Clone, Copy, Debug)]
pub struct RawHandle(pub *mut c_void);
impl RawHandle {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub fn ptr(self) -> *mut c_void {
        self.0
    }
}

// SAFETY: the ABI contract requires handles to be usable from any thread.
unsafe impl Send for RawHandle {}
// SAFETY: as above.
unsafe impl Sync for RawHandle {}

/// `free_buf` of a plugin.
pub type FreeBuf = unsafe extern "C" fn(Buf);
/// `create` of a plugin (the same signature for every kind).
pub type CreateFn = unsafe extern "C" fn(Bytes, *mut *mut c_void, *mut Buf) -> u32;
/// `destroy` of a plugin.
pub type DestroyFn = unsafe extern "C" fn(*mut c_void);

/// Why a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The plugin answered a non-OK status; `message` is what it said (prefixed with the
    /// plugin and file).
    Status {
        /// The `STATUS_*` code.
        code: u32,
        /// Its message.
        message: String,
    },
    /// Earlier calls still hang inside the plugin.
    Busy {
        /// Which plugin.
        message: String,
    },
    /// No answer within the deadline plus grace.
    TimedOut {
        /// How long the host waited.
        after: Duration,
    },
    /// The call died on the host side, or the plugin broke the contract (NULL out-pointer,
    /// unreadable output).
    Crashed {
        /// What happened.
        message: String,
    },
}

/// What a [`Failure`] means to a backend of any kind; each kind's error type takes it from
/// here after its own special statuses (not found, exists, stale term).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// The backend could not be reached (or the plugin is stuck): retry later.
    Unreachable(String),
    /// No answer in time.
    Timeout(Duration),
    /// A refusal, a crash or a broken contract.
    Refused(String),
}

/// The failure of a vtable entry the plugin left NULL.
pub fn null_entry(i: &Instance, op: &str) -> Failure {
    Failure::Crashed {
        message: format!("{}: NULL entry point {op}", i.label),
    }
}

impl Failure {
    /// How it counts (see [`Class`]).
    pub fn class(&self) -> Class {
        match self {
            Failure::Status { code, .. }
                if *code == abi::STATUS_UNAVAILABLE || *code == abi::STATUS_TIMEOUT =>
            {
                Class::Unreachable(self.describe())
            }
            Failure::Busy { message } => Class::Unreachable(message.clone()),
            Failure::TimedOut { after } => Class::Timeout(*after),
            other => Class::Refused(other.describe()),
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        match self {
            Failure::Status { code, message } => match *code {
                abi::STATUS_PANIC => format!("{message} (the plugin panicked)"),
                c if c > abi::STATUS_STALE_TERM => format!("{message} (unknown status {c})"),
                _ => message.clone(),
            },
            Failure::Busy { message } | Failure::Crashed { message } => message.clone(),
            Failure::TimedOut { after } => format!("no answer within {after:?}"),
        }
    }
}

/// Copies a plugin buffer out and hands it back to the plugin.
pub fn take(free: FreeBuf, buf: Buf) -> Vec<u8> {
    if buf.ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: the plugin filled `buf` with `len` readable bytes.
    let out = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec();
    // SAFETY: handing the plugin's own buffer back once.
    unsafe { free(buf) };
    out
}

/// A live plugin instance of any kind, and the one way to call into it.
pub struct Instance {
    /// `plugin NAME (FILE)`, for messages.
    pub label: String,
    /// Its handle.
    pub handle: RawHandle,
    /// Deadline of each call, passed to the plugin.
    pub timeout: Duration,
    free: FreeBuf,
    destroy: DestroyFn,
    in_flight: Arc<AtomicUsize>,
    /// Set when the instance is closed (watch threads stop).
    pub closed: AtomicBool,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            // SAFETY: the handle came from `create` and nothing else uses it now.
            unsafe { (self.destroy)(self.handle.0) };
        }
        // A call still hangs inside the plugin: leak the instance rather than free it under
        // that call.
    }
}

impl Instance {
    /// Creates an instance with `config` (JSON) on a blocking thread, within `timeout` plus
    /// grace.
    pub async fn create(
        plugin: &LoadedPlugin,
        create: CreateFn,
        destroy: DestroyFn,
        free: FreeBuf,
        config: String,
        timeout: Duration,
    ) -> Result<Arc<Instance>, Failure> {
        let label = format!("plugin {} ({})", plugin.name, plugin.path.display());
        let create_label = label.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut handle: *mut c_void = std::ptr::null_mut();
            let mut err = Buf::empty();
            // SAFETY: per the ABI: a JSON string valid for the call, out-pointers to locals.
            let status = unsafe { create(Bytes::of(config.as_bytes()), &mut handle, &mut err) };
            let msg = take(free, err);
            if status != abi::STATUS_OK {
                Err(Failure::Status {
                    code: status,
                    message: format!(
                        "{create_label}: create failed: {}",
                        String::from_utf8_lossy(&msg)
                    ),
                })
            } else if handle.is_null() {
                Err(Failure::Crashed {
                    message: format!("{create_label}: create returned a NULL handle"),
                })
            } else {
                Ok(RawHandle(handle))
            }
        });
        let handle = match tokio::time::timeout(timeout + GRACE, task).await {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => {
                return Err(Failure::Crashed {
                    message: format!("{label}: create failed: {e}"),
                })
            }
            Err(_) => {
                return Err(Failure::TimedOut {
                    after: timeout + GRACE,
                })
            }
        };
        Ok(Arc::new(Instance {
            label,
            handle,
            timeout,
            free,
            destroy,
            in_flight: Arc::new(AtomicUsize::new(0)),
            closed: AtomicBool::new(false),
        }))
    }

    /// Copies out and frees a buffer of this plugin.
    pub fn take(&self, buf: Buf) -> Vec<u8> {
        take(self.free, buf)
    }

    /// The failure for a non-OK `status` with the plugin's message buffer `err`.
    pub fn status(&self, status: u32, err: Buf) -> Failure {
        let msg = self.take(err);
        Failure::Status {
            code: status,
            message: format!("{}: {}", self.label, String::from_utf8_lossy(&msg)),
        }
    }

    /// Runs `call(handle, timeout_ms)` on the blocking pool under the timeouts. `call` gets
    /// the instance (for its buffers) and the timeout to pass to the plugin.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        call: impl FnOnce(&Instance, u64) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        if self.in_flight.load(Ordering::SeqCst) >= MAX_IN_FLIGHT {
            return Err(Failure::Busy {
                message: format!(
                    "{}: earlier calls are still hanging inside the plugin",
                    self.label
                ),
            });
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let me = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let r = call(&me, timeout_ms);
            me.in_flight.fetch_sub(1, Ordering::SeqCst);
            r
        });
        match tokio::time::timeout(self.timeout + GRACE, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(Failure::Crashed {
                message: format!("{}: call failed: {e}", self.label),
            }),
            Err(_) => Err(Failure::TimedOut {
                after: self.timeout + GRACE,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_describe_panics_and_unknown_statuses() {
        let panic = Failure::Status {
            code: abi::STATUS_PANIC,
            message: "plugin x (/x.so): boom".into(),
        };
        assert!(panic.describe().ends_with("(the plugin panicked)"));
        let odd = Failure::Status {
            code: 77,
            message: "plugin x (/x.so): ?".into(),
        };
        assert!(odd.describe().contains("unknown status 77"));
        let t = Failure::TimedOut {
            after: Duration::from_millis(1500),
        };
        assert_eq!(t.describe(), "no answer within 1.5s");
    }
}
