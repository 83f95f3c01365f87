//! Load balancers that follow the primary (`load_balancers:`): the routes each cycle asks for
//! ([`plan`]), the tasks that carry them to the backends ([`driver`]), and opening the
//! configured backends ([`open`]).
//!
//! Only the leader asks, with its leader term: on promotion read-write traffic comes to it;
//! before it demotes or hands over, read-write traffic leaves it (bounded wait, never blocking
//! the demotion); healthy replicas within the lag limit get the read-only traffic. A backend
//! refuses a call with an older term than it has seen, so a deposed primary's late call does
//! not route writes back to it (as far as the backend can compare and set: see the ELB plugin
//! for the window its API leaves).

pub mod driver;
pub mod plan;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use spilo_sdk::{LbError, LoadBalancer};

use crate::config::lb::{LoadBalancerConfig, ELB_PLUGIN_FILE};
use crate::dcs::Cluster;
use driver::{Ask, Handle, LbStats};
use plan::{Leading, Routes};

/// How long opening a backend may take (the ELB plugin's `create` asks the instance metadata
/// and probes its ELBs within 30 s).
const CREATE_BUDGET: Duration = Duration::from_secs(40);

/// One backend to drive: its label, the backend, the bound of each call, and its lag limit.
pub struct BackendSpec {
    /// The name in logs and metrics.
    pub label: String,
    /// The backend.
    pub lb: Arc<dyn LoadBalancer>,
    /// How long one call may take.
    pub timeout: Duration,
    /// Replicas further behind leave the read-only side (`None`: `maximum_lag_on_failover`).
    pub max_lag: Option<u64>,
}

/// The configured load balancers, as the HA loop drives them.
pub struct LoadBalancers {
    backends: Vec<Backend>,
}

struct Backend {
    handle: Handle,
    /// The routes (in the backend's addressing) asked last, and their generation.
    asked: Option<(Routes, u64)>,
    generation: u64,
}

impl LoadBalancers {
    /// Drives `backends`, each from a task of its own.
    pub fn start(backends: Vec<BackendSpec>) -> LoadBalancers {
        LoadBalancers {
            backends: backends
                .into_iter()
                .map(|b| Backend {
                    handle: Handle::start(b.label, b.lb, b.timeout, b.max_lag),
                    asked: None,
                    generation: 0,
                })
                .collect(),
        }
    }

    /// The counters of each backend.
    pub fn stats(&self) -> Vec<Arc<LbStats>> {
        self.backends
            .iter()
            .map(|b| b.handle.stats.clone())
            .collect()
    }

    /// The member-key fields that tell the backends who this node is (`instance_id` for ELB).
    pub fn member_fields(&self) -> Vec<(String, String)> {
        self.backends
            .iter()
            .filter_map(|b| Some((b.handle.addressing()?, b.handle.stats.self_target()?)))
            .collect()
    }

    /// Asks each backend for the routes this cycle calls for (nothing when this node is not
    /// the leader). Returns the generations asked, for [`LoadBalancers::wait`].
    pub fn update(
        &mut self,
        cluster: Option<&Cluster>,
        me: &str,
        leading: Leading,
        default_max_lag: u64,
        every: Duration,
    ) -> Vec<u64> {
        let mut gens = Vec::new();
        for b in &mut self.backends {
            if !b.handle.stats.learned.load(Relaxed) {
                continue;
            }
            let max_lag = b.handle.max_lag.unwrap_or(default_max_lag);
            let Some(routes) = plan::desired(cluster, me, leading, max_lag) else {
                continue;
            };
            let field = b.handle.addressing();
            let primary = match (&routes.primary, &field) {
                (None, _) => None,
                (Some(p), None) => Some(p.clone()),
                (Some(_), Some(_)) => {
                    match b.handle.stats.self_target() {
                        Some(t) => Some(t),
                        // The backend cannot say who this node is: nothing sensible to ask.
                        None => continue,
                    }
                }
            };
            let routes = Routes {
                primary,
                replicas: plan::to_targets(cluster, &routes.replicas, field.as_deref()),
                term: routes.term,
            };
            if b.asked.as_ref().map(|(r, _)| r) != Some(&routes) {
                b.generation += 1;
                b.asked = Some((routes.clone(), b.generation));
            }
            let generation = b.generation;
            b.handle.ask(Ask {
                routes,
                every,
                generation,
            });
            gens.push(generation);
        }
        gens
    }

    /// Waits up to `bound` for every backend to carry out what was asked last.
    pub async fn wait(&self, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        let mut all = true;
        // One deadline for all: awaiting them in turn takes no longer than the slowest.
        for b in &self.backends {
            if let Some((_, g)) = &b.asked {
                all &= b.handle.wait_done(*g, deadline).await;
            }
        }
        if !all {
            tracing::warn!(
                "a load balancer did not confirm within {bound:?}; going on (it is repaired later)"
            );
        }
    }
}

/// Opens the backend one `load_balancers:` entry names: `elb` through its plugin (found as
/// [`ELB_PLUGIN_FILE`] next to the binary or in the library directories unless `plugins:`
/// names one `elb`), or a loaded load-balancer plugin.
pub async fn open(cfg: &LoadBalancerConfig) -> Result<Arc<dyn LoadBalancer>, LbError> {
    let refused = |message: String| LbError::Refused {
        op: "open",
        message,
    };
    let plugin = match cfg.kind.as_str() {
        "elb" if crate::plugin::get("elb").is_none() => {
            crate::plugin::load_bundled(
                ELB_PLUGIN_FILE,
                "elb",
                "load_balancer",
                "load balancer type elb: the ELB plugin",
            )
            .map_err(|e| refused(e.to_string()))?
        }
        name => crate::plugin::get(name).ok_or_else(|| {
            refused(format!(
                "load balancer type '{name}': no load_balancer plugin of that name is loaded (list it under plugins:)"
            ))
        })?,
    };
    let lb =
        // `create` may ask the instance metadata and probe the backend (the ELB plugin bounds
        // that by 30 s); each call afterwards is bounded by the driver at `timeout`.
        crate::plugin::lb::PluginLb::connect(
            &plugin,
            cfg.backend_settings(),
            cfg.call_timeout().max(CREATE_BUDGET),
        )
        .await?;
    Ok(Arc::new(lb))
}
