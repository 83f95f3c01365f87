//! `lb-memory`: a load balancer that only remembers. It keeps the routes in memory, records
//! every call it admitted or refused (`describe` lists them under `calls`), and refuses stale
//! terms with the SDK's [`TermFence`]. The LB conformance suite runs it through the loader.
//!
//! Configured with `{"fault": "panic"}` or `{"fault": "hang"}`, its `set_primary` panics or
//! blocks for 3 s, for the tests of the host's blocking-call adapter (`describe` still works).

use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};
use spilo_sdk::plugin::{LbPlugin, PluginError};
use spilo_sdk::{Term, TermFence};

#[derive(Default)]
struct Routes {
    primary: Option<String>,
    replicas: Vec<String>,
    calls: Vec<Value>,
}

/// The plugin.
pub struct MemoryLb {
    fault: Option<String>,
    fence: TermFence,
    routes: Mutex<Routes>,
}

impl MemoryLb {
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits `term` (under the routes' lock, so that admission and change are one step) and
    /// records the call either way.
    fn change(
        &self,
        call: Value,
        term: Term,
        apply: impl FnOnce(&mut Routes),
    ) -> Result<(), PluginError> {
        let mut r = self.routes();
        let admitted = self.fence.admit(term);
        r.calls
            .push(json!({"call": call, "term": term.0, "admitted": admitted.is_ok()}));
        admitted.map_err(PluginError::stale_term)?;
        apply(&mut r);
        Ok(())
    }
}

impl LbPlugin for MemoryLb {
    fn create(config: &Value) -> Result<Self, PluginError> {
        let fault = match &config["fault"] {
            Value::Null => None,
            Value::String(f) if f == "panic" || f == "hang" => Some(f.clone()),
            other => {
                return Err(PluginError::invalid(format!(
                    "fault: {other}: panic or hang"
                )))
            }
        };
        Ok(MemoryLb {
            fault,
            fence: TermFence::new(),
            routes: Mutex::new(Routes::default()),
        })
    }

    fn set_primary(
        &self,
        member: Option<&str>,
        term: Term,
        _deadline: Instant,
    ) -> Result<(), PluginError> {
        match self.fault.as_deref() {
            Some("panic") => panic!("injected fault in set_primary"),
            Some(_) => std::thread::sleep(std::time::Duration::from_secs(3)),
            None => {}
        }
        let member = member.map(str::to_string);
        self.change(json!({"set_primary": member}), term, |r| {
            r.primary = member.clone()
        })
    }

    fn set_replicas(
        &self,
        members: &[String],
        term: Term,
        _deadline: Instant,
    ) -> Result<(), PluginError> {
        self.change(json!({"set_replicas": members}), term, |r| {
            r.replicas = members.to_vec()
        })
    }

    fn describe(&self, _deadline: Instant) -> Result<Value, PluginError> {
        let r = self.routes();
        Ok(json!({
            "primary": r.primary,
            "replicas": r.replicas,
            "term": self.fence.highest().map(|t| t.0),
            "calls": r.calls,
        }))
    }
}

spilo_sdk::export_lb_plugin!(
    MemoryLb,
    name = "lb-memory",
    version = env!("CARGO_PKG_VERSION")
);
