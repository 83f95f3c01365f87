//! ZooKeeper backend.
//!
//! Keys follow Patroni's ZooKeeper layout: every key is a znode below the cluster prefix, e.g.
//! `/service/batman/leader` and `/service/batman/members/n1`. `leader` and `members/<name>` are
//! EPHEMERAL znodes of this daemon's session, so both vanish when the session expires or is
//! closed; every other key is a persistent znode, created with its parents as needed.
//! Compare-and-set uses the znode's data `version`.
//!
//! The client library is zookeeper-client (async, TLS through rustls). One library client is
//! one session; the session id is read from it, so `owned_by_us` compares a znode's
//! `ephemeralOwner` with it. With [`ZkSettings::tls`] every server is reached over TLS.
//!
//! Modules: [`settings`] (the settings and `set_acls`), `tls` (PEM files to TLS options),
//! `probe` (why a TLS handshake fails), `client` (one session and its connection state), `shared` (which client is current, the
//! keep-alive, deadlines), `znode` (create with parents, reads), `watcher` (the wake-up task),
//! `ops` (the [`spilo_sdk::Dcs`] operations).

mod client;
mod ops;
mod probe;
pub mod settings;
mod shared;
mod tls;
mod watcher;
mod znode;

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spilo_sdk::DcsError;
use tokio::sync::{oneshot, watch};
use zookeeper_client::{CreateMode, Error as ZkError};

pub use settings::{ZkSettings, ZkTls};

/// How long a failed first connection waits for the TLS probe's answer (it has usually had
/// the whole `retry_timeout` already).
const PROBE_GRACE: Duration = Duration::from_millis(300);
pub use tls::TlsSetupError;

use crate::client::{Client, ConnectSpec};
use crate::shared::{map_err, Shared};
use crate::znode::{create_path, read};

/// The ZooKeeper implementation of [`spilo_sdk::Dcs`].
pub struct ZkDcs {
    shared: Arc<Shared>,
    /// Dropping it stops the watch task.
    _stop_watch: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for ZkDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkDcs")
            .field("hosts", &self.shared.spec.hosts)
            .field("tls", &self.shared.spec.tls.is_some())
            .field("prefix", &self.shared.prefix)
            .field("member", &self.shared.member)
            .finish_non_exhaustive()
    }
}

impl ZkDcs {
    /// Connects to ZooKeeper (a session is made; nothing is written), bounded by
    /// `retry_timeout`. Fails with a [`DcsError`] naming the hosts on bad settings (an
    /// unreadable TLS file names its config key) or when no server answers in time.
    pub async fn connect(settings: ZkSettings) -> Result<ZkDcs, DcsError> {
        let op = "connect";
        let hosts: Vec<String> = settings
            .hosts
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        if hosts.is_empty() {
            return Err(DcsError::Unreachable {
                op,
                message: "no ZooKeeper hosts configured".to_string(),
            });
        }
        let mut prefix = settings.prefix.trim().to_string();
        if !prefix.starts_with('/') {
            prefix.insert(0, '/');
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let acl = settings::build_acls(&settings.set_acls)?;
        let (tls, probe) = match &settings.tls {
            Some(files) => {
                let (options, probe) =
                    tls::options(files).map_err(TlsSetupError::into_dcs_error)?;
                (Some(options), probe)
            }
            None => (None, None),
        };
        let over = if tls.is_some() { " over TLS" } else { "" };
        let (changes, _) = watch::channel(0);
        let retry_timeout = settings.retry_timeout.max(Duration::from_millis(1));
        let shared = Arc::new(Shared {
            spec: ConnectSpec {
                hosts: hosts.join(","),
                auth: settings
                    .auth_data
                    .iter()
                    .map(|(s, c)| (s.clone(), c.clone().into_bytes()))
                    .collect(),
                tls,
            },
            prefix,
            member: settings.member.clone(),
            retry_timeout,
            ttl_ms: AtomicU64::new(u64::try_from(settings.ttl.as_millis()).unwrap_or(u64::MAX)),
            session: settings.session,
            acl,
            current: Mutex::new(None),
            create_lock: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(0),
            reported: AtomicI64::new(0),
            retired: Mutex::new(None),
            changes,
        });
        // With TLS, a handshake probe runs next to the first connection: if the connection
        // fails, it tells why (the client library only times out).
        let probing = probe.map(|probe| {
            let first = hosts[0].clone();
            tokio::spawn(async move {
                tokio::time::timeout(retry_timeout, probe.why_refused(&first))
                    .await
                    .ok()
                    .flatten()
            })
        });
        let connected = shared.bounded(op, shared.client(op)).await;
        if let Err(e) = connected {
            let why = match probing {
                Some(task) => tokio::time::timeout(PROBE_GRACE, task)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten(),
                None => None,
            };
            let why = match why {
                Some(why) => format!(" ({why})"),
                None if !over.is_empty() => " (check zookeeper.cacert, zookeeper.cert and \
                                             zookeeper.key)"
                    .to_string(),
                None => String::new(),
            };
            return Err(DcsError::Unreachable {
                op,
                message: format!(
                    "cannot connect to ZooKeeper at {}{over}: {e}{why}",
                    hosts.join(", ")
                ),
            });
        }
        if let Some(task) = probing {
            task.abort();
        }
        let stop_watch = if settings.watch {
            let (stop, stopped) = oneshot::channel();
            watcher::spawn(shared.clone(), stopped);
            Some(stop)
        } else {
            None
        };
        tracing::debug!(hosts = ?hosts, session = settings.session, "ZooKeeper client ready");
        Ok(ZkDcs {
            shared,
            _stop_watch: stop_watch,
        })
    }

    /// Creates the ephemeral leader znode; `Ok(false)` when it exists.
    async fn create_leader(&self, op: &'static str, client: &Client) -> Result<bool, DcsError> {
        let path = self.shared.path("leader");
        let name = self.shared.member.as_bytes();
        match create_path(client, &path, name, CreateMode::Ephemeral, &self.shared.acl).await {
            Ok(()) => Ok(true),
            Err(ZkError::NodeExists) => {
                // A retried request that had been applied already finds our own znode.
                let ours = read(client, &path)
                    .await
                    .map_err(|e| map_err(op, e))?
                    .is_some_and(|(data, stat)| {
                        data == name && stat.ephemeral_owner == client.session_id()
                    });
                Ok(ours)
            }
            Err(e) => Err(map_err(op, e)),
        }
    }
}
