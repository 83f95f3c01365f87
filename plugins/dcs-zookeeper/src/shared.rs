//! State shared by the [`crate::ZkDcs`] object and its watch task: the current client
//! (session), when to replace it, the session keep-alive, and the operation deadline.
//!
//! Invariants: at most one client is current; a client is replaced (and its session closed)
//! when its session ended, or when its connection has been gone for longer than its session
//! timeout; every public entry point is bounded by `retry_timeout`. When only the TTL changed,
//! the replaced session stays open until the next keep-alive, so that the daemon can move its
//! leader znode to the new session in one transaction first: closing it at once would delete
//! the leader znode and start a leader race the holder may lose.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spilo_sdk::{DcsError, SessionInfo};
use tokio::sync::watch;
use zookeeper_client::{Acl, Error as ZkError};

use crate::client::{close_session, Client, ConnectSpec};

/// Pause between attempts to establish a first session with a server that is not serving yet.
const CONNECT_PAUSE: Duration = Duration::from_millis(200);

/// How long a replaced, still connected client gets to close its session.
const RETIRE_GRACE: Duration = Duration::from_secs(1);

/// Maps a zookeeper-client error: connection and session problems are `Unreachable`, the rest
/// `Refused`.
pub(crate) fn map_err(op: &'static str, error: ZkError) -> DcsError {
    match error {
        ZkError::ConnectionLoss
        | ZkError::SessionExpired
        | ZkError::SessionMoved
        | ZkError::Timeout
        | ZkError::NoHosts
        | ZkError::ClientClosed => DcsError::Unreachable {
            op,
            message: error.to_string(),
        },
        _ => DcsError::Refused {
            op,
            message: error.to_string(),
        },
    }
}

/// Everything the daemon object and the watch task share.
pub(crate) struct Shared {
    pub(crate) spec: ConnectSpec,
    /// The prefix with leading and trailing `/`.
    pub(crate) prefix: String,
    pub(crate) member: String,
    pub(crate) retry_timeout: Duration,
    pub(crate) ttl_ms: AtomicU64,
    /// Whether the session's id is reported (false for the CLI).
    pub(crate) session: bool,
    pub(crate) acl: Vec<Acl>,
    pub(crate) current: Mutex<Option<Arc<Client>>>,
    /// Serialises making and replacing clients.
    pub(crate) create_lock: tokio::sync::Mutex<()>,
    pub(crate) generations: AtomicU64,
    /// The session id the last keep-alive reported.
    pub(crate) reported: AtomicI64,
    /// The client a TTL change replaced, still holding its session (and so the ephemeral
    /// znodes not yet moved); closed at the next keep-alive.
    pub(crate) retired: Mutex<Option<Arc<Client>>>,
    pub(crate) changes: watch::Sender<u64>,
}

impl Shared {
    /// The znode path of `key`.
    pub(crate) fn path(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key.trim_start_matches('/'))
    }

    /// The znode of the prefix itself.
    pub(crate) fn prefix_path(&self) -> String {
        let trimmed = self.prefix.trim_end_matches('/');
        if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::SeqCst))
    }

    /// Wakes whoever waits on [`spilo_sdk::Dcs::changes`].
    pub(crate) fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs `f` with a deadline of `retry_timeout`; `Timeout` when it passes.
    pub(crate) async fn bounded<T, Fut>(&self, op: &'static str, f: Fut) -> Result<T, DcsError>
    where
        Fut: Future<Output = Result<T, DcsError>>,
    {
        match tokio::time::timeout(self.retry_timeout, f).await {
            Ok(result) => result,
            Err(_) => Err(DcsError::Timeout {
                op,
                after: self.retry_timeout,
            }),
        }
    }

    /// Makes a client, retrying while the servers refuse or drop the connection (the caller
    /// bounds the wait).
    async fn new_client(&self, op: &'static str) -> Result<Arc<Client>, DcsError> {
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let ttl = self.ttl();
        loop {
            match Client::connect(&self.spec, ttl, generation).await {
                Ok(client) => {
                    tracing::debug!(
                        generation,
                        ?ttl,
                        session = client.session_id(),
                        "ZooKeeper session established"
                    );
                    return Ok(Arc::new(client));
                }
                Err(e @ (ZkError::AuthFailed | ZkError::BadArguments(_))) => {
                    return Err(DcsError::Refused {
                        op,
                        message: format!("cannot connect to ZooKeeper: {e}"),
                    })
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no ZooKeeper session yet");
                    tokio::time::sleep(CONNECT_PAUSE).await;
                }
            }
        }
    }

    /// The current client, making one if there is none or its session ended.
    pub(crate) async fn client(&self, op: &'static str) -> Result<Arc<Client>, DcsError> {
        if let Some(client) = self.current().filter(|c| !c.expired()) {
            return Ok(client);
        }
        let _guard = self.create_lock.lock().await;
        let old = self.current();
        if let Some(client) = old.clone().filter(|c| !c.expired()) {
            return Ok(client);
        }
        let client = self.new_client(op).await?;
        self.install(client.clone(), old).await;
        Ok(client)
    }

    /// The current client, if any.
    pub(crate) fn current(&self) -> Option<Arc<Client>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `client` current and retires `old`.
    async fn install(&self, client: Arc<Client>, old: Option<Arc<Client>>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(client);
        if let Some(old) = old {
            self.retire(old).await;
        }
    }

    /// Closes the session kept after a TTL change, if any.
    pub(crate) async fn close_retired(&self) {
        let retired = self
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(old) = retired {
            self.retire(old).await;
        }
    }

    /// Retires `old`: while it is still connected, its session is closed (waiting up to
    /// [`RETIRE_GRACE`]), so its ephemeral znodes are gone when the caller goes on; otherwise it
    /// is dropped and the server expires it.
    async fn retire(&self, old: Arc<Client>) {
        let connected = old.disconnected_for().is_zero() && !old.expired();
        old.mark_expired();
        if connected {
            let closed = tokio::time::timeout(RETIRE_GRACE, close_session(&self.spec, old)).await;
            if !matches!(closed, Ok(Ok(()))) {
                tracing::debug!(?closed, "could not close the replaced ZooKeeper session");
            }
        }
    }

    /// The client for session operations: replaced when its session ended, the connection
    /// has been gone for longer than the session timeout, or the TTL changed.
    pub(crate) async fn ensure_session(&self, op: &'static str) -> Result<Arc<Client>, DcsError> {
        let _guard = self.create_lock.lock().await;
        let wanted = self.ttl();
        let current = self.current();
        match current {
            Some(client)
                if !client.expired()
                    && client.ttl == wanted
                    && client.disconnected_for() <= client.ttl =>
            {
                Ok(client)
            }
            Some(old) if !old.expired() && old.disconnected_for().is_zero() && self.session => {
                // Only the TTL changed: keep the old session until the next keep-alive.
                tracing::info!(
                    generation = old.generation,
                    "making a new ZooKeeper session for the new ttl"
                );
                let client = self.new_client(op).await?;
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
                let previous = self
                    .retired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .replace(old);
                if let Some(previous) = previous {
                    self.retire(previous).await;
                }
                Ok(client)
            }
            old => {
                if let Some(old) = &old {
                    tracing::info!(
                        generation = old.generation,
                        expired = old.expired(),
                        "making a new ZooKeeper session"
                    );
                }
                let client = self.new_client(op).await?;
                self.install(client.clone(), old).await;
                Ok(client)
            }
        }
    }

    /// The `keepalive` operation: proves the session alive with a round trip.
    pub(crate) async fn keepalive(&self, op: &'static str) -> Result<SessionInfo, DcsError> {
        // A session a TTL change replaced: the new one has been reported, so the daemon had a
        // cycle to move its leader znode; what is left on the old one goes now.
        let reported_current = self
            .current()
            .is_some_and(|c| c.session_id() == self.reported.load(Ordering::SeqCst));
        if reported_current {
            self.close_retired().await;
        }
        if let Some(client) = self.current() {
            let gone = client.disconnected_for();
            if !client.expired() && gone > self.retry_timeout && gone <= client.ttl {
                return Err(DcsError::Unreachable {
                    op,
                    message: format!("connection to ZooKeeper lost {gone:?} ago"),
                });
            }
        }
        for _ in 0..2 {
            let client = if self.session {
                self.ensure_session(op).await?
            } else {
                self.client(op).await?
            };
            match client.zk.check_stat(&self.prefix_path()).await {
                Ok(_) => {}
                // The session expired between the check and the request: make a new one.
                Err(ZkError::SessionExpired) => {
                    client.mark_expired();
                    continue;
                }
                Err(e) => return Err(map_err(op, e)),
            }
            let id = client.session_id();
            let previous = self.reported.swap(id, Ordering::SeqCst);
            return Ok(SessionInfo {
                id,
                new_session: self.session && id != previous,
                // The timeout the server negotiated within its min/maxSessionTimeout.
                granted_ttl: Some(client.zk.session_timeout()).filter(|t| !t.is_zero()),
            });
        }
        Err(DcsError::Unreachable {
            op,
            message: "ZooKeeper session expired again at once".to_string(),
        })
    }
}
