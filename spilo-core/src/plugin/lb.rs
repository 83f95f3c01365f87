//! A load-balancer plugin behind the async [`LoadBalancer`] trait, through the generic
//! blocking-call [`Instance`].
//!
//! Every call carries a known [`Term`]; the plugin refuses a stale one with
//! `STATUS_STALE_TERM`, which comes back as [`LbError::StaleTermReported`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spilo_sdk::abi::{self, Buf, Bytes, LbVTable};
use spilo_sdk::{LbError, LbState, LoadBalancer, Term};

use crate::plugin::adapter::{null_entry, Class, Failure, Instance};
use crate::plugin::loader::LoadedPlugin;

/// `set_primary` and `set_replicas`: one argument, a term, a timeout.
type SetFn = unsafe extern "C" fn(*mut std::ffi::c_void, Bytes, u64, u64, *mut Buf) -> u32;

/// A [`LoadBalancer`] backed by a loaded plugin.
pub struct PluginLb {
    inner: Arc<Instance>,
    vt: &'static LbVTable,
    name: String,
}

fn lb_error(op: &'static str, f: Failure) -> LbError {
    match f {
        Failure::Status { code, message } if code == abi::STATUS_STALE_TERM => {
            LbError::StaleTermReported { message }
        }
        other => match other.class() {
            Class::Unreachable(message) => LbError::Unreachable { op, message },
            Class::Timeout(after) => LbError::Timeout { op, after },
            Class::Refused(message) => LbError::Refused { op, message },
        },
    }
}

impl PluginLb {
    /// Creates an instance of `plugin` with its settings; each call gets `timeout`.
    pub async fn connect(
        plugin: &LoadedPlugin,
        settings: serde_json::Value,
        timeout: Duration,
    ) -> Result<PluginLb, LbError> {
        let vt = plugin.lb.ok_or_else(|| LbError::Refused {
            op: "connect",
            message: format!(
                "plugin {} ({}) is a {} plugin, not a load-balancer plugin",
                plugin.name,
                plugin.path.display(),
                plugin.kind
            ),
        })?;
        let (Some(create), Some(destroy), Some(free)) = (vt.create, vt.destroy, vt.free_buf) else {
            return Err(LbError::Refused {
                op: "connect",
                message: format!("plugin {}: NULL entry points", plugin.name),
            });
        };
        let config = serde_json::json!({ "config": settings }).to_string();
        let inner = Instance::create(plugin, create, destroy, free, config, timeout)
            .await
            .map_err(|f| lb_error("connect", f))?;
        Ok(PluginLb {
            inner,
            vt,
            name: plugin.name.clone(),
        })
    }

    async fn send(
        &self,
        op: &'static str,
        arg: Vec<u8>,
        term: Term,
        pick: fn(&LbVTable) -> Option<SetFn>,
    ) -> Result<(), LbError> {
        let vt = self.vt;
        self.inner
            .run(move |i, ms| {
                let f = pick(vt).ok_or_else(|| null_entry(i, op))?;
                let mut err = Buf::empty();
                // SAFETY: per the ABI; `arg` outlives the call.
                let status = unsafe { f(i.handle.0, Bytes::of(&arg), term.0, ms, &mut err) };
                if status == abi::STATUS_OK {
                    i.take(err);
                    Ok(())
                } else {
                    Err(i.status(status, err))
                }
            })
            .await
            .map_err(|f| lb_error(op, f))
    }
}

#[async_trait]
impl LoadBalancer for PluginLb {
    fn backend(&self) -> &str {
        &self.name
    }

    async fn set_primary(&self, member: Option<&str>, term: Term) -> Result<(), LbError> {
        let arg = member.unwrap_or("").as_bytes().to_vec();
        self.send("set_primary", arg, term, |vt| vt.set_primary)
            .await
    }

    async fn set_replicas(&self, members: &[String], term: Term) -> Result<(), LbError> {
        let arg = abi::encode_names(members);
        self.send("set_replicas", arg, term, |vt| vt.set_replicas)
            .await
    }

    async fn describe(&self) -> Result<LbState, LbError> {
        let vt = self.vt;
        self.inner
            .run(move |i, ms| {
                let f = vt.describe.ok_or_else(|| null_entry(i, "describe"))?;
                let (mut out, mut err) = (Buf::empty(), Buf::empty());
                // SAFETY: per the ABI; out-pointers to locals.
                let status = unsafe { f(i.handle.0, ms, &mut out, &mut err) };
                let out = i.take(out);
                if status != abi::STATUS_OK {
                    return Err(i.status(status, err));
                }
                i.take(err);
                let unreadable = |e: String| Failure::Crashed {
                    message: format!("{}: unreadable describe answer: {e}", i.label),
                };
                let v: serde_json::Value =
                    serde_json::from_slice(&out).map_err(|e| unreadable(e.to_string()))?;
                LbState::from_json(v).map_err(|e| unreadable(e.to_string()))
            })
            .await
            .map_err(|f| lb_error("describe", f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_term_status_is_a_stale_term_error_and_others_are_not() {
        let stale = lb_error(
            "set_primary",
            Failure::Status {
                code: abi::STATUS_STALE_TERM,
                message: "plugin l (/l.so): stale term 3".into(),
            },
        );
        assert!(stale.is_stale_term(), "{stale}");
        let refused = lb_error(
            "set_primary",
            Failure::Status {
                code: abi::STATUS_REFUSED,
                message: "plugin l (/l.so): no".into(),
            },
        );
        assert!(!refused.is_stale_term());
        let timed_out = lb_error(
            "describe",
            Failure::TimedOut {
                after: Duration::from_secs(1),
            },
        );
        assert!(matches!(timed_out, LbError::Timeout { .. }));
    }
}
