//! A plugin's DCS behind the same async [`Dcs`] trait as the built-in backends, so `decide()`
//! cannot tell them apart.
//!
//! Calls go through the generic [`adapter::Instance`] (blocking pool, timeouts, no pile-up,
//! panics as errors). A panic inside the plugin comes back as an error; the daemon keeps
//! running and, if the DCS keeps failing, a primary demotes as on any lost lease.
//!
//! The wire formats follow the minor of the plugin's DCS vtable: a 1.0 plugin's snapshot has
//! no `created` counters, so its entries' `created` is `None` and the leader term is unknown
//! (see `spilo_sdk::term`); its keep-alive reports no granted TTL.

use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spilo_sdk::abi::{self, Buf, Bytes, DcsVTable};
use spilo_sdk::{Cas, Dcs, DcsError, SessionInfo, Snapshot};
use tokio::sync::watch;

use crate::plugin::adapter::{null_entry, Class, Failure, Instance};
use crate::plugin::loader::LoadedPlugin;

/// How long one `wait_changes` call blocks.
const WATCH_POLL: Duration = Duration::from_millis(1000);

/// A [`Dcs`] backed by a loaded plugin.
pub struct PluginDcs {
    inner: Arc<Instance>,
    vt: &'static DcsVTable,
    /// The DCS vtable's minor: decides the wire formats.
    minor: u32,
    changes: watch::Receiver<u64>,
}

fn dcs_error(op: &'static str, f: Failure) -> DcsError {
    match f.class() {
        Class::Unreachable(message) => DcsError::Unreachable { op, message },
        Class::Timeout(after) => DcsError::Timeout { op, after },
        Class::Refused(message) => DcsError::Refused { op, message },
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
            message: format!(
                "plugin {} ({}) is a {} plugin, not a DCS plugin",
                plugin.name,
                plugin.path.display(),
                plugin.kind
            ),
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
        let (Some(create), Some(destroy), Some(free)) = (vt.create, vt.destroy, vt.free_buf) else {
            return Err(DcsError::Refused {
                op: "connect",
                message: format!("plugin {}: NULL entry points", plugin.name),
            });
        };
        let inner = Instance::create(plugin, create, destroy, free, config, host.retry_timeout)
            .await
            .map_err(|f| dcs_error("connect", f))?;
        let (tx, rx) = watch::channel(0u64);
        if host.watch {
            if let Some(wait) = vt.wait_changes {
                let weak = Arc::downgrade(&inner);
                let _ = std::thread::Builder::new()
                    .name(format!("spilo-plugin-watch-{}", plugin.name))
                    .spawn(move || watch_loop(weak, wait, tx));
            }
        }
        Ok(PluginDcs {
            inner,
            vt,
            minor: plugin.vtable_minor,
            changes: rx,
        })
    }

    async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        call: impl FnOnce(&Instance, &'static DcsVTable, *mut c_void, u64) -> Result<T, Failure>
            + Send
            + 'static,
    ) -> Result<T, DcsError> {
        let vt = self.vt;
        self.inner
            .run(move |i, ms| call(i, vt, i.handle.0, ms))
            .await
            .map_err(|f| dcs_error(op, f))
    }

    async fn flag(
        &self,
        op: &'static str,
        f: fn(
            &DcsVTable,
        ) -> Option<unsafe extern "C" fn(*mut c_void, u64, *mut u8, *mut Buf) -> u32>,
    ) -> Result<bool, DcsError> {
        self.call(op, move |i, vt, h, ms| {
            let entry = f(vt).ok_or_else(|| null_entry(i, op))?;
            let (mut done, mut err) = (0u8, Buf::empty());
            // SAFETY: per the ABI; out-pointers to locals.
            let status = unsafe { entry(h, ms, &mut done, &mut err) };
            if status == abi::STATUS_OK {
                i.take(err);
                Ok(done != 0)
            } else {
                Err(i.status(status, err))
            }
        })
        .await
    }
}

/// Feeds the watch channel from `wait_changes` until the instance is closed or dropped.
fn watch_loop(
    inner: std::sync::Weak<Instance>,
    wait: unsafe extern "C" fn(*mut c_void, u64, u64) -> u64,
    tx: watch::Sender<u64>,
) {
    let mut seen = 0u64;
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.closed.load(Ordering::SeqCst) || tx.is_closed() {
            return;
        }
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
        let minor = self.minor;
        self.call("snapshot", move |i, vt, h, ms| {
            let (mut out, mut err) = (Buf::empty(), Buf::empty());
            let f = vt.snapshot.ok_or_else(|| null_entry(i, "snapshot"))?;
            // SAFETY: per the ABI.
            let status = unsafe { f(h, ms, &mut out, &mut err) };
            let out = i.take(out);
            if status != abi::STATUS_OK {
                return Err(i.status(status, err));
            }
            i.take(err);
            abi::decode_snapshot(&out, minor).map_err(|e| Failure::Crashed {
                message: format!("{}: unreadable snapshot (DCS ABI 1.{minor}): {e}", i.label),
            })
        })
        .await
    }

    async fn keepalive(&self) -> Result<SessionInfo, DcsError> {
        let minor = self.minor;
        self.call("keepalive", move |i, vt, h, ms| {
            let (mut out, mut err) = (Buf::empty(), Buf::empty());
            let f = vt.keepalive.ok_or_else(|| null_entry(i, "keepalive"))?;
            // SAFETY: per the ABI.
            let status = unsafe { f(h, ms, &mut out, &mut err) };
            let out = i.take(out);
            if status != abi::STATUS_OK {
                return Err(i.status(status, err));
            }
            i.take(err);
            abi::decode_session(&out, minor).map_err(|e| Failure::Crashed {
                message: format!("{}: unreadable session (DCS ABI 1.{minor}): {e}", i.label),
            })
        })
        .await
    }

    async fn put_member(&self, value: &[u8]) -> Result<(), DcsError> {
        let value = value.to_vec();
        self.call("put_member", move |i, vt, h, ms| {
            let mut err = Buf::empty();
            let f = vt.put_member.ok_or_else(|| null_entry(i, "put_member"))?;
            // SAFETY: per the ABI; `value` outlives the call.
            let status = unsafe { f(h, Bytes::of(&value), ms, &mut err) };
            if status == abi::STATUS_OK {
                i.take(err);
                Ok(())
            } else {
                Err(i.status(status, err))
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
        let (key, value) = (key.to_string(), value.to_vec());
        let (kind, version) = cas_parts(cas);
        self.call("put", move |i, vt, h, ms| {
            let (mut done, mut err) = (0u8, Buf::empty());
            let f = vt.put.ok_or_else(|| null_entry(i, "put"))?;
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
            if status == abi::STATUS_OK {
                i.take(err);
                Ok(done != 0)
            } else {
                Err(i.status(status, err))
            }
        })
        .await
    }

    async fn delete(&self, key: &str, cas: Cas) -> Result<bool, DcsError> {
        let key = key.to_string();
        let (kind, version) = cas_parts(cas);
        self.call("delete", move |i, vt, h, ms| {
            let (mut done, mut err) = (0u8, Buf::empty());
            let f = vt.delete.ok_or_else(|| null_entry(i, "delete"))?;
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
            if status == abi::STATUS_OK {
                i.take(err);
                Ok(done != 0)
            } else {
                Err(i.status(status, err))
            }
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    fn set_ttl(&self, ttl: Duration) {
        if let Some(f) = self.vt.set_ttl {
            // SAFETY: per the ABI; set_ttl does not block.
            unsafe { f(self.inner.handle.0, ttl.as_millis() as u64) };
        }
    }

    async fn close(&self) -> Result<(), DcsError> {
        let r = self
            .call("close", move |i, vt, h, ms| {
                let mut err = Buf::empty();
                let f = vt.close.ok_or_else(|| null_entry(i, "close"))?;
                // SAFETY: per the ABI.
                let status = unsafe { f(h, ms, &mut err) };
                if status == abi::STATUS_OK {
                    i.take(err);
                    Ok(())
                } else {
                    Err(i.status(status, err))
                }
            })
            .await;
        self.inner.closed.store(true, Ordering::SeqCst);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_failures_map_to_dcs_errors() {
        let unavailable = Failure::Status {
            code: abi::STATUS_UNAVAILABLE,
            message: "plugin x (/x.so): down".into(),
        };
        assert!(matches!(
            dcs_error("snapshot", unavailable),
            DcsError::Unreachable { .. }
        ));
        let timed_out = Failure::TimedOut {
            after: Duration::from_secs(2),
        };
        assert!(matches!(
            dcs_error("snapshot", timed_out),
            DcsError::Timeout { .. }
        ));
        let panicked = Failure::Status {
            code: abi::STATUS_PANIC,
            message: "plugin x (/x.so): boom".into(),
        };
        let e = dcs_error("put", panicked).to_string();
        assert!(e.contains("/x.so") && e.contains("panicked"), "{e}");
    }
}
