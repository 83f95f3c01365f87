//! A plugin's DCS behind the same async [`Dcs`] trait as the built-in backends, so `decide()`
//! cannot tell them apart.
//!
//! Every call runs on tokio's blocking pool with the plugin's own timeout (`retry_timeout`) and
//! a host-side timeout a little longer. A call that hangs past it is reported as
//! [`DcsError::Timeout`]; while it still hangs, further calls fail at once as unavailable
//! instead of piling up blocked threads. A panic inside the plugin comes back as an error
//! (the SDK's export macro catches it); the daemon keeps running and, if the DCS keeps
//! failing, a primary demotes as on any lost lease.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spilo_sdk::abi::{self, Buf, Bytes, DcsVTable};
use spilo_sdk::{Cas, Dcs, DcsError, SessionInfo, Snapshot};
use tokio::sync::watch;

use crate::plugin::loader::LoadedPlugin;

/// Extra time the host waits beyond the plugin's own timeout.
const GRACE: Duration = Duration::from_millis(500);
/// How long one `wait_changes` call blocks.
const WATCH_POLL: Duration = Duration::from_millis(1000);

/// The plugin's instance handle. The ABI makes every entry point callable from any thread.
#[derive(Clone, Copy)]
struct Handle(*mut c_void);
// SAFETY: the ABI contract requires instances to be usable from any thread, concurrently.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

struct Inner {
    name: String,
    vt: &'static DcsVTable,
    handle: Handle,
    timeout: Duration,
    /// Calls still running on the blocking pool.
    in_flight: AtomicUsize,
    /// The session was closed: the watch thread stops.
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            if let Some(destroy) = self.vt.destroy {
                // SAFETY: the handle came from `create` and nothing else uses it now.
                unsafe { destroy(self.handle.0) };
            }
        }
        // A call still hangs inside the plugin: leak the instance rather than free it under
        // that call.
    }
}

/// A [`Dcs`] backed by a loaded plugin.
pub struct PluginDcs {
    inner: Arc<Inner>,
    changes: watch::Receiver<u64>,
}

/// Copies a plugin buffer out and frees it.
fn take(vt: &DcsVTable, buf: Buf) -> Vec<u8> {
    if buf.ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: the plugin filled `buf` with `len` readable bytes.
    let out = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec();
    if let Some(free) = vt.free_buf {
        // SAFETY: handing the plugin's own buffer back once.
        unsafe { free(buf) };
    }
    out
}

fn status_error(op: &'static str, plugin: &str, status: u32, msg: Vec<u8>) -> DcsError {
    let message = format!("plugin {plugin}: {}", String::from_utf8_lossy(&msg));
    match status {
        abi::STATUS_UNAVAILABLE => DcsError::Unreachable { op, message },
        abi::STATUS_TIMEOUT => DcsError::Unreachable { op, message },
        abi::STATUS_PANIC => DcsError::Refused {
            op,
            message: format!("{message} (the plugin panicked)"),
        },
        abi::STATUS_REFUSED | abi::STATUS_INVALID => DcsError::Refused { op, message },
        other => DcsError::Refused {
            op,
            message: format!("{message} (unknown status {other})"),
        },
    }
}

fn cas_parts(cas: Cas) -> (u32, i64) {
    match cas {
        Cas::Any => (abi::CAS_ANY, 0),
        Cas::Absent => (abi::CAS_ABSENT, 0),
        Cas::Version(v) => (abi::CAS_VERSION, v),
    }
}

/// What the plugin's `create` gets, besides its own section.
#[derive(Clone, Debug)]
pub struct HostSettings {
    /// Cluster prefix.
    pub prefix: String,
    /// Member name.
    pub member: String,
    /// Session TTL.
    pub ttl: Duration,
    /// Deadline of each call.
    pub retry_timeout: Duration,
    /// Start the change watch.
    pub watch: bool,
    /// Use a session.
    pub session: bool,
}

impl PluginDcs {
    /// Creates an instance of `plugin` with its `dcs:` settings (on a blocking thread).
    pub async fn connect(
        plugin: &LoadedPlugin,
        settings: serde_json::Value,
        host: HostSettings,
    ) -> Result<PluginDcs, DcsError> {
        let vt = plugin.dcs.ok_or_else(|| DcsError::Refused {
            op: "connect",
            message: format!("plugin {} is not a DCS plugin", plugin.name),
        })?;
        let config = serde_json::json!({
            "spilo": {
                "prefix": host.prefix,
                "member": host.member,
                "ttl_ms": host.ttl.as_millis() as u64,
                "retry_timeout_ms": host.retry_timeout.as_millis() as u64,
                "watch": host.watch,
                "session": host.session,
            },
            "config": settings,
        })
        .to_string();
        let name = plugin.name.clone();
        let create_name = name.clone();
        let created = tokio::time::timeout(
            host.retry_timeout + GRACE,
            tokio::task::spawn_blocking(move || {
                let mut handle: *mut c_void = std::ptr::null_mut();
                let mut err = Buf::empty();
                let create = vt.create.expect("checked at load");
                // SAFETY: per the ABI: a JSON string valid for the call, out-pointers to locals.
                let status = unsafe { create(Bytes::of(config.as_bytes()), &mut handle, &mut err) };
                let msg = take(vt, err);
                if status == abi::STATUS_OK && !handle.is_null() {
                    Ok(Handle(handle))
                } else if status == abi::STATUS_OK {
                    Err(status_error(
                        "connect",
                        &create_name,
                        abi::STATUS_INVALID,
                        b"create returned a NULL handle".to_vec(),
                    ))
                } else {
                    Err(status_error("connect", &create_name, status, msg))
                }
            }),
        )
        .await;
        let handle = match created {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => {
                return Err(DcsError::Refused {
                    op: "connect",
                    message: format!("plugin {name}: create failed: {e}"),
                })
            }
            Err(_) => {
                return Err(DcsError::Timeout {
                    op: "connect",
                    after: host.retry_timeout + GRACE,
                })
            }
        };
        let inner = Arc::new(Inner {
            name,
            vt,
            handle,
            timeout: host.retry_timeout,
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        let (tx, rx) = watch::channel(0u64);
        if host.watch {
            let weak = Arc::downgrade(&inner);
            let _ = std::thread::Builder::new()
                .name(format!("spilo-plugin-watch-{}", inner.name))
                .spawn(move || watch_loop(weak, tx));
        }
        Ok(PluginDcs { inner, changes: rx })
    }

    /// Runs `call` on the blocking pool under the timeouts.
    async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        call: impl FnOnce(&'static DcsVTable, *mut c_void, u64) -> Result<T, DcsError> + Send + 'static,
    ) -> Result<T, DcsError> {
        let inner = self.inner.clone();
        if inner.in_flight.load(Ordering::SeqCst) >= 4 {
            return Err(DcsError::Unreachable {
                op,
                message: format!(
                    "plugin {}: earlier calls are still hanging inside the plugin",
                    inner.name
                ),
            });
        }
        inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let timeout_ms = inner.timeout.as_millis() as u64;
        let task_inner = inner.clone();
        let task = tokio::task::spawn_blocking(move || {
            let r = call(task_inner.vt, task_inner.handle.0, timeout_ms);
            task_inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            r
        });
        match tokio::time::timeout(inner.timeout + GRACE, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(DcsError::Refused {
                op,
                message: format!("plugin {}: call failed: {e}", inner.name),
            }),
            Err(_) => Err(DcsError::Timeout {
                op,
                after: inner.timeout + GRACE,
            }),
        }
    }

    async fn flag(
        &self,
        op: &'static str,
        f: fn(
            &DcsVTable,
        ) -> Option<unsafe extern "C" fn(*mut c_void, u64, *mut u8, *mut Buf) -> u32>,
    ) -> Result<bool, DcsError> {
        let name = self.inner.name.clone();
        self.call(op, move |vt, h, ms| {
            let entry = f(vt).expect("checked at load");
            let (mut done, mut err) = (0u8, Buf::empty());
            // SAFETY: per the ABI; out-pointers to locals.
            let status = unsafe { entry(h, ms, &mut done, &mut err) };
            let msg = take(vt, err);
            if status == abi::STATUS_OK {
                Ok(done != 0)
            } else {
                Err(status_error(op, &name, status, msg))
            }
        })
        .await
    }
}

/// Feeds the watch channel from `wait_changes` until the instance is closed or dropped.
fn watch_loop(inner: std::sync::Weak<Inner>, tx: watch::Sender<u64>) {
    let mut seen = 0u64;
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.closed.load(Ordering::SeqCst) || tx.is_closed() {
            return;
        }
        let wait = i.vt.wait_changes.expect("checked at load");
        // SAFETY: per the ABI; the instance lives while `i` is held.
        let now = unsafe { wait(i.handle.0, seen, WATCH_POLL.as_millis() as u64) };
        drop(i);
        if now != seen {
            seen = now;
            tx.send_modify(|c| *c += 1);
        }
    }
}

#[async_trait]
impl Dcs for PluginDcs {
    fn backend(&self) -> &'static str {
        "plugin"
    }

    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        let name = self.inner.name.clone();
        self.call("snapshot", move |vt, h, ms| {
            let (mut out, mut err) = (Buf::empty(), Buf::empty());
            let f = vt.snapshot.expect("checked at load");
            // SAFETY: per the ABI.
            let status = unsafe { f(h, ms, &mut out, &mut err) };
            let (out, msg) = (take(vt, out), take(vt, err));
            if status != abi::STATUS_OK {
                return Err(status_error("snapshot", &name, status, msg));
            }
            abi::decode_snapshot(&out).map_err(|e| DcsError::Refused {
                op: "snapshot",
                message: format!("plugin {name}: unreadable snapshot: {e}"),
            })
        })
        .await
    }

    async fn keepalive(&self) -> Result<SessionInfo, DcsError> {
        let name = self.inner.name.clone();
        self.call("keepalive", move |vt, h, ms| {
            let (mut out, mut err) = (Buf::empty(), Buf::empty());
            let f = vt.keepalive.expect("checked at load");
            // SAFETY: per the ABI.
            let status = unsafe { f(h, ms, &mut out, &mut err) };
            let (out, msg) = (take(vt, out), take(vt, err));
            if status != abi::STATUS_OK {
                return Err(status_error("keepalive", &name, status, msg));
            }
            abi::decode_session(&out).map_err(|e| DcsError::Refused {
                op: "keepalive",
                message: format!("plugin {name}: unreadable session: {e}"),
            })
        })
        .await
    }

    async fn put_member(&self, value: &[u8]) -> Result<(), DcsError> {
        let name = self.inner.name.clone();
        let value = value.to_vec();
        self.call("put_member", move |vt, h, ms| {
            let mut err = Buf::empty();
            let f = vt.put_member.expect("checked at load");
            // SAFETY: per the ABI; `value` outlives the call.
            let status = unsafe { f(h, Bytes::of(&value), ms, &mut err) };
            let msg = take(vt, err);
            if status == abi::STATUS_OK {
                Ok(())
            } else {
                Err(status_error("put_member", &name, status, msg))
            }
        })
        .await
    }

    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        self.flag("acquire_leader", |vt| vt.acquire_leader).await
    }

    async fn reattach_leader(&self) -> Result<bool, DcsError> {
        self.flag("reattach_leader", |vt| vt.reattach_leader).await
    }

    async fn release_leader(&self) -> Result<bool, DcsError> {
        self.flag("release_leader", |vt| vt.release_leader).await
    }

    async fn put(&self, key: &str, value: &[u8], cas: Cas) -> Result<bool, DcsError> {
        let name = self.inner.name.clone();
        let (key, value) = (key.to_string(), value.to_vec());
        let (kind, version) = cas_parts(cas);
        self.call("put", move |vt, h, ms| {
            let (mut done, mut err) = (0u8, Buf::empty());
            let f = vt.put.expect("checked at load");
            // SAFETY: per the ABI; `key` and `value` outlive the call.
            let status = unsafe {
                f(
                    h,
                    Bytes::of(key.as_bytes()),
                    Bytes::of(&value),
                    kind,
                    version,
                    ms,
                    &mut done,
                    &mut err,
                )
            };
            let msg = take(vt, err);
            if status == abi::STATUS_OK {
                Ok(done != 0)
            } else {
                Err(status_error("put", &name, status, msg))
            }
        })
        .await
    }

    async fn delete(&self, key: &str, cas: Cas) -> Result<bool, DcsError> {
        let name = self.inner.name.clone();
        let key = key.to_string();
        let (kind, version) = cas_parts(cas);
        self.call("delete", move |vt, h, ms| {
            let (mut done, mut err) = (0u8, Buf::empty());
            let f = vt.delete.expect("checked at load");
            // SAFETY: per the ABI; `key` outlives the call.
            let status = unsafe {
                f(
                    h,
                    Bytes::of(key.as_bytes()),
                    kind,
                    version,
                    ms,
                    &mut done,
                    &mut err,
                )
            };
            let msg = take(vt, err);
            if status == abi::STATUS_OK {
                Ok(done != 0)
            } else {
                Err(status_error("delete", &name, status, msg))
            }
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    fn set_ttl(&self, ttl: Duration) {
        if let Some(f) = self.inner.vt.set_ttl {
            // SAFETY: per the ABI; set_ttl does not block.
            unsafe { f(self.inner.handle.0, ttl.as_millis() as u64) };
        }
    }

    async fn close(&self) -> Result<(), DcsError> {
        let name = self.inner.name.clone();
        let r = self
            .call("close", move |vt, h, ms| {
                let mut err = Buf::empty();
                let f = vt.close.expect("checked at load");
                // SAFETY: per the ABI.
                let status = unsafe { f(h, ms, &mut err) };
                let msg = take(vt, err);
                if status == abi::STATUS_OK {
                    Ok(())
                } else {
                    Err(status_error("close", &name, status, msg))
                }
            })
            .await;
        self.inner.closed.store(true, Ordering::SeqCst);
        r
    }
}
