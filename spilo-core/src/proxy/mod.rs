//! The built-in proxy (`load_balancers: [{type: proxy, listen_rw, listen_ro}]`): a read-write
//! port that forwards to the primary the DCS names, and a read-only port that spreads over the
//! healthy replicas. It follows the DCS's watch (not health checks): when the primary changes
//! every connection to the old one is closed at once and new ones go to the new one; while
//! there is no primary, new read-write connections wait up to `hold` for one.
//!
//! It runs inside the daemon (any node with a `type: proxy` entry) or on its own host as
//! `spilo proxy CONFIG`.

pub mod forward;
pub mod routes;
pub mod stats;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::lb::{listen_addr, LoadBalancerConfig};
use crate::dcs::{decode_cluster, Dcs};
use forward::PortSettings;
use routes::ProxyRoutes;
use stats::{ProxyStats, Side};

/// How often the routes are read again without a change event (a missed event, a store
/// without watches).
const REREAD: Duration = Duration::from_secs(1);
/// Bound of one read of the DCS.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the routes are read while a new leader is not primary yet: its member key's role
/// changes when the promotion is done, and member keys do not wake a watch (only the leader,
/// config, failover and initialize keys do), so the proxy looks more often for a while.
const PROMOTION_POLL: Duration = Duration::from_millis(20);
/// How long after a leader change the proxy looks that often.
const PROMOTION_WINDOW: Duration = Duration::from_secs(15);

/// A running proxy; its tasks stop when it is dropped.
pub struct Proxy {
    /// Its counters.
    pub stats: Arc<ProxyStats>,
    /// The routes it follows.
    pub routes: watch::Receiver<Arc<ProxyRoutes>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why a proxy did not start; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No `listen_rw`.
    #[error("listen_rw: required for type proxy")]
    NoListenRw,
    /// A listen address that is not `ip:port`.
    #[error("{key}: '{addr}' is not ip:port")]
    BadAddress {
        /// The key.
        key: &'static str,
        /// Its value.
        addr: String,
    },
    /// A port that cannot be bound.
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        /// The key.
        key: &'static str,
        /// Its value.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    let a = listen_addr(addr).ok_or_else(|| StartError::BadAddress {
        key,
        addr: addr.to_string(),
    })?;
    TcpListener::bind(a)
        .await
        .map_err(|source| StartError::Bind {
            key,
            addr: addr.to_string(),
            source,
        })
}

/// Where a proxy gets its DCS client: a future that yields it once connected (the ports are
/// bound and served meanwhile; read-write connections wait for a primary).
pub type DcsSource = Pin<Box<dyn Future<Output = Arc<dyn Dcs>> + Send>>;

/// A DCS client of the proxy's own (no session, a watch), connecting until it succeeds.
pub async fn connect_watcher(cfg: crate::config::Config) -> Arc<dyn Dcs> {
    use crate::dcs::registry;
    let (dynamic, _) = crate::config::effective_dynamic(None, &cfg);
    let mut logged = false;
    loop {
        match registry::connect(
            &cfg,
            Duration::from_secs(dynamic.ttl),
            Duration::from_secs(dynamic.retry_timeout),
            registry::Role::Watcher,
        )
        .await
        {
            Ok(d) => return d,
            Err(e) => {
                if !logged {
                    tracing::warn!("proxy: DCS {}: {e}; retrying", registry::describe(&cfg));
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl Proxy {
    /// Binds the ports of `cfg` and starts following the DCS `dcs` yields. The read-only side's
    /// lag limit is the entry's `max_lag`, else the cluster's `maximum_lag_on_failover` as the
    /// DCS holds it now (followed as it changes), else `default_max_lag`. The error names the
    /// key (a port that cannot be bound).
    pub async fn start(
        dcs: DcsSource,
        cfg: &LoadBalancerConfig,
        label: &str,
        default_max_lag: u64,
    ) -> Result<Proxy, StartError> {
        let rw_addr = cfg.listen_rw.as_deref().ok_or(StartError::NoListenRw)?;
        let rw = bind("listen_rw", rw_addr).await?;
        let ro = match &cfg.listen_ro {
            Some(a) => Some(bind("listen_ro", a).await?),
            None => None,
        };
        let metrics = match &cfg.listen_metrics {
            Some(a) => Some(bind("listen_metrics", a).await?),
            None => None,
        };
        let stats = Arc::new(ProxyStats::new(label));
        let (tx, rx) = watch::channel(Arc::new(ProxyRoutes::default()));
        let lag = LagLimit {
            fixed: cfg.max_lag,
            default: default_max_lag,
        };
        let fallback = cfg.ro_fallback_primary.unwrap_or(false);
        let mut tasks = vec![tokio::spawn(follow(dcs, tx, stats.clone(), lag, fallback))];
        let port = |side| PortSettings {
            side,
            hold: Duration::from_secs(cfg.hold.unwrap_or(10)),
            connect_timeout: Duration::from_secs(cfg.connect_timeout.unwrap_or(3)),
            max_connections: cfg.max_connections.unwrap_or(1000) as usize,
        };
        tasks.push(tokio::spawn(forward::serve(
            rw,
            port(Side::Rw),
            rx.clone(),
            stats.clone(),
        )));
        if let Some(ro) = ro {
            tasks.push(tokio::spawn(forward::serve(
                ro,
                port(Side::Ro),
                rx.clone(),
                stats.clone(),
            )));
        }
        if let Some(m) = metrics {
            tasks.push(tokio::spawn(serve_metrics(m, stats.clone())));
        }
        tracing::info!(
            proxy = label,
            "proxy: read-write on {rw_addr}{}",
            cfg.listen_ro
                .as_deref()
                .map(|a| format!(", read-only on {a}"))
                .unwrap_or_default()
        );
        Ok(Proxy {
            stats,
            routes: rx,
            tasks,
        })
    }
}

/// The read-only side's lag limit: the entry's own, else the cluster's current
/// `maximum_lag_on_failover`, else the one the proxy started with.
#[derive(Clone, Copy, Debug)]
struct LagLimit {
    fixed: Option<u64>,
    default: u64,
}

impl LagLimit {
    fn of(&self, c: &crate::dcs::model::Cluster) -> u64 {
        self.fixed
            .or_else(|| c.config.as_ref().map(|v| v.value.maximum_lag_on_failover))
            .unwrap_or(self.default)
    }
}

/// Reads the cluster on every change event (and every [`REREAD`]) and publishes the routes
/// when they change. A DCS that cannot be read leaves the routes as they are: a primary that
/// loses the DCS stops accepting writes by itself (the lease guard), and reads go on.
async fn follow(
    dcs: DcsSource,
    tx: watch::Sender<Arc<ProxyRoutes>>,
    stats: Arc<ProxyStats>,
    lag: LagLimit,
    fallback: bool,
) {
    let dcs = dcs.await;
    let mut changes = dcs.changes();
    let mut failing = false;
    // The leader last seen and since when, and whether its promotion is still awaited.
    let mut leader: Option<String> = None;
    let mut leader_since = tokio::time::Instant::now();
    let mut awaiting = false;
    loop {
        match tokio::time::timeout(READ_TIMEOUT, dcs.snapshot()).await {
            Ok(Ok(snap)) => {
                if failing {
                    tracing::info!(proxy = %stats.label, "proxy: the DCS answers again");
                    failing = false;
                }
                let c = decode_cluster(&snap);
                let r = routes::routes(&c, lag.of(&c), fallback);
                let now_leader = c.leader.as_ref().map(|l| l.name.clone());
                if now_leader != leader {
                    leader = now_leader;
                    leader_since = tokio::time::Instant::now();
                }
                awaiting =
                    leader.is_some() && r.rw.is_none() && leader_since.elapsed() < PROMOTION_WINDOW;
                let changed = **tx.borrow() != r;
                if changed {
                    tracing::info!(
                        proxy = %stats.label,
                        "proxy: read-write to {}, read-only to [{}]",
                        r.rw.as_ref().map(|t| format!("{} ({})", t.member, t.addr)).unwrap_or_else(|| "nobody (new connections wait)".into()),
                        r.ro.iter().map(|t| t.member.as_str()).collect::<Vec<_>>().join(", ")
                    );
                    stats
                        .route_changes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *stats.primary.lock().unwrap_or_else(|p| p.into_inner()) =
                        r.rw.as_ref().map(|t| t.member.clone());
                    tx.send_replace(Arc::new(r));
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(proxy = %stats.label, "proxy: cannot read the DCS (routes kept): {e}");
                    failing = true;
                }
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(proxy = %stats.label, "proxy: the DCS read timed out (routes kept)");
                    failing = true;
                }
            }
        }
        let wait = if awaiting { PROMOTION_POLL } else { REREAD };
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    // No more events: read on the timer only.
                    tokio::time::sleep(wait).await;
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// `GET /metrics` (any path) on the proxy's own port: its series as Prometheus text.
async fn serve_metrics(listener: TcpListener, stats: Arc<ProxyStats>) {
    let app = axum::Router::new().fallback(move || {
        let stats = stats.clone();
        async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                stats::render(&[&stats]),
            )
        }
    });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!("proxy metrics endpoint stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::model::{Cluster, Versioned};

    #[test]
    fn the_lag_limit_follows_the_clusters_config_unless_the_entry_fixes_it() {
        let mut c = Cluster::default();
        let follow = LagLimit {
            fixed: None,
            default: 7,
        };
        assert_eq!(follow.of(&c), 7, "no config key yet");
        let dynamic = crate::config::DynamicConfig {
            maximum_lag_on_failover: 4096,
            ..Default::default()
        };
        c.config = Some(Versioned {
            value: dynamic,
            version: 1,
        });
        assert_eq!(follow.of(&c), 4096, "the DCS's value now");
        let fixed = LagLimit {
            fixed: Some(10),
            default: 7,
        };
        assert_eq!(fixed.of(&c), 10);
    }
}
