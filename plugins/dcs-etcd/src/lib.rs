//! etcd v3 backend.
//!
//! Keys follow Patroni's layout: every key lives below the cluster prefix
//! (`/service/<scope>/`), e.g. `/service/batman/leader` and `/service/batman/members/n1`.
//! The daemon holds one lease; its member key and the leader key are bound to it, so both
//! vanish together when the lease expires or is revoked.
//!
//! The client talks to one endpoint at a time and moves on to the next one in the list when
//! the current one fails (see [`EtcdDcs::connect`]).

mod conn;
mod shared;
mod watcher;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions,
    Txn, TxnOp, TxnOpResponse,
};
use spilo_sdk::{Cas, Dcs, DcsError, Entry, SessionInfo, Snapshot};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::conn::Conn;
use crate::shared::{lease_gone, Shared};

/// HTTP/2 ping interval on the connection; etcd refuses pings more often than every 5 s.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How to reach etcd and which cluster to manage.
///
/// `Debug` output hides the password.
#[derive(Clone)]
pub struct EtcdSettings {
    /// The endpoints, `host:port` without scheme (a scheme given anyway is kept).
    pub endpoints: Vec<String>,
    /// Speak TLS (`protocol: https`).
    pub https: bool,
    /// CA certificate (PEM) to verify the servers with.
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), together with `key`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), together with `cert`.
    pub key: Option<PathBuf>,
    /// User name for etcd authentication.
    pub username: Option<String>,
    /// Password for etcd authentication.
    pub password: Option<String>,
    /// The cluster prefix, e.g. `/service/batman/` (a missing trailing `/` is added).
    pub prefix: String,
    /// Our member name.
    pub member: String,
    /// Lease time-to-live (rounded up to whole seconds, at least 1).
    pub ttl: Duration,
    /// Deadline of every operation.
    pub retry_timeout: Duration,
    /// Start a task watching the prefix, feeding [`Dcs::changes`] (false for the CLI).
    pub watch: bool,
    /// Whether this client holds a session (false for the CLI, which only reads and writes
    /// plain keys). `connect` never grants a lease either way: the first session operation
    /// (`keepalive`, `put_member`, `acquire_leader`, `reattach_leader`) does, so a client
    /// made with `false` simply never gets one as long as it does not call them.
    pub session: bool,
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("https", &self.https)
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("prefix", &self.prefix)
            .field("member", &self.member)
            .field("ttl", &self.ttl)
            .field("retry_timeout", &self.retry_timeout)
            .field("watch", &self.watch)
            .field("session", &self.session)
            .finish()
    }
}

/// The etcd v3 implementation of [`Dcs`].
pub struct EtcdDcs {
    shared: Arc<Shared>,
    /// Dropping it stops the watch task.
    _stop_watch: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for EtcdDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDcs")
            .field("endpoints", &self.shared.conn.urls())
            .field("prefix", &self.shared.prefix)
            .field("member", &self.shared.member)
            .finish_non_exhaustive()
    }
}

/// The URL of `endpoint`, adding the scheme when missing.
fn endpoint_url(endpoint: &str, https: bool) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else if https {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// Reads a PEM file for the TLS configuration.
async fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>, DcsError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| DcsError::Unreachable {
            op: "connect",
            message: format!("cannot read etcd {what} {}: {e}", path.display()),
        })
}

/// Builds the connection options from the settings.
async fn connect_options(
    settings: &EtcdSettings,
    attempt: Duration,
) -> Result<ConnectOptions, DcsError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(attempt)
        .with_timeout(attempt)
        .with_keep_alive(H2_KEEPALIVE_INTERVAL, settings.retry_timeout.max(attempt))
        .with_keep_alive_while_idle(false)
        .with_require_leader(true);
    match (&settings.username, &settings.password) {
        (Some(user), password) => {
            options = options
                .with_user(user.clone(), password.clone().unwrap_or_default())
                .with_auto_token_refresh(true);
        }
        (None, Some(_)) => {
            return Err(DcsError::Unreachable {
                op: "connect",
                message: "etcd password given without a username".to_string(),
            })
        }
        (None, None) => {}
    }
    if settings.https {
        let mut tls = TlsOptions::new().timeout(attempt);
        if let Some(path) = &settings.cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read_pem("cacert", path).await?));
        }
        match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => {
                let cert = read_pem("cert", cert).await?;
                let key = read_pem("key", key).await?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => {
                return Err(DcsError::Unreachable {
                    op: "connect",
                    message: "etcd cert and key must be given together".to_string(),
                })
            }
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

/// The success result of a transaction, or of the transaction nested as its first `else` op.
fn nested_succeeded(response: &etcd_client::TxnResponse) -> bool {
    response.succeeded()
        || response
            .op_responses()
            .iter()
            .any(|op| matches!(op, TxnOpResponse::Txn(inner) if inner.succeeded()))
}

impl EtcdDcs {
    /// Makes the client. Nothing is dialled yet unless a username is set (authentication needs a
    /// round trip); bounded by `retry_timeout`. Fails with a [`DcsError`] naming the endpoints
    /// on bad settings or when authentication fails everywhere.
    ///
    /// The client talks to one endpoint at a time: etcd-client's balanced channel keeps a dead
    /// endpoint in its pool and sends it a random share of the requests, so instead every
    /// operation that meets a transport error (or no answer within `retry_timeout / n`, n the
    /// number of endpoints up to 3) moves on to the next endpoint and retries until
    /// `retry_timeout`.
    pub async fn connect(settings: EtcdSettings) -> Result<EtcdDcs, DcsError> {
        let op = "connect";
        let urls: Vec<String> = settings
            .endpoints
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| endpoint_url(e, settings.https))
            .collect();
        if urls.is_empty() {
            return Err(DcsError::Unreachable {
                op,
                message: "no etcd endpoints configured".to_string(),
            });
        }
        let retry_timeout = settings.retry_timeout.max(Duration::from_millis(1));
        let spread = u32::try_from(urls.len().min(3)).unwrap_or(1);
        let attempt = (retry_timeout / spread).max(retry_timeout.min(Duration::from_secs(1)));
        let options = connect_options(&settings, attempt).await?;

        let mut prefix = settings.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let shared = Arc::new(Shared::new(
            Conn::new(urls.clone(), options, attempt),
            prefix,
            settings.member.clone(),
            retry_timeout,
            settings.ttl,
        ));

        // Make the client of the first endpoint that takes it (this only reaches the server
        // when authenticating).
        shared
            .bounded(op, |deadline| {
                shared.call(op, deadline, |_, _| async { Ok(()) })
            })
            .await
            .map_err(|e| DcsError::Unreachable {
                op,
                message: format!("cannot connect to etcd at {}: {e}", urls.join(", ")),
            })?;

        let stop_watch = if settings.watch {
            let (stop, stopped) = oneshot::channel();
            watcher::spawn(shared.clone(), stopped);
            Some(stop)
        } else {
            None
        };
        tracing::debug!(endpoints = ?urls, session = settings.session, "etcd client ready");
        Ok(EtcdDcs {
            shared,
            _stop_watch: stop_watch,
        })
    }

    /// Puts `key` bound to the lease, granting a new lease once if etcd lost the current one.
    async fn put_with_lease(
        &self,
        op: &'static str,
        deadline: Instant,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), DcsError> {
        let mut lease = self.shared.ensure_lease(op, deadline).await?;
        for retry in [false, true] {
            let result = self
                .shared
                .call(op, deadline, |mut client, _| {
                    let (key, value) = (key.clone(), value.clone());
                    async move {
                        client
                            .put(key, value, Some(PutOptions::new().with_lease(lease)))
                            .await
                    }
                })
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(error) if lease_gone(&error) && !retry => {
                    lease = self.shared.replace_lease(op, deadline, lease).await?;
                }
                Err(error) => return Err(error),
            }
        }
        Err(DcsError::Refused {
            op,
            message: "lease vanished twice".to_string(),
        })
    }

    /// Runs `txn` (built for a lease id), granting a new lease once if etcd lost the current one.
    async fn txn_with_lease<F>(
        &self,
        op: &'static str,
        deadline: Instant,
        build: F,
    ) -> Result<(etcd_client::TxnResponse, i64), DcsError>
    where
        F: Fn(i64) -> Txn + Send + Sync,
    {
        let mut lease = self.shared.ensure_lease(op, deadline).await?;
        for retry in [false, true] {
            let txn = build(lease);
            let result = self
                .shared
                .call(op, deadline, |mut client, _| {
                    let txn = txn.clone();
                    async move { client.txn(txn).await }
                })
                .await;
            match result {
                Ok(response) => return Ok((response, lease)),
                Err(error) if lease_gone(&error) && !retry => {
                    lease = self.shared.replace_lease(op, deadline, lease).await?;
                }
                Err(error) => return Err(error),
            }
        }
        Err(DcsError::Refused {
            op,
            message: "lease vanished twice".to_string(),
        })
    }

    /// Runs a transaction without lease and returns whether its compare held.
    async fn plain_txn(
        &self,
        op: &'static str,
        deadline: Instant,
        txn: Txn,
    ) -> Result<bool, DcsError> {
        let response = self
            .shared
            .call(op, deadline, |mut client, _| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await?;
        Ok(response.succeeded())
    }
}

/// The compare of a compare-and-set condition (`None` for [`Cas::Any`]).
fn cas_compare(key: &[u8], cas: Cas) -> Option<Compare> {
    match cas {
        Cas::Any => None,
        Cas::Absent => Some(Compare::create_revision(key, CompareOp::Equal, 0)),
        Cas::Version(version) => Some(Compare::mod_revision(key, CompareOp::Equal, version)),
    }
}

#[async_trait]
impl Dcs for EtcdDcs {
    fn backend(&self) -> &'static str {
        "etcd3"
    }

    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        let op = "snapshot";
        let shared = &self.shared;
        shared
            .bounded(op, |deadline| async move {
                let prefix = shared.prefix.clone().into_bytes();
                let mut response = shared
                    .call(op, deadline, |mut client, _| {
                        let prefix = prefix.clone();
                        async move {
                            client
                                .get(prefix, Some(GetOptions::new().with_prefix()))
                                .await
                        }
                    })
                    .await?;
                let ours = shared.lease_id.load(Ordering::SeqCst);
                let revision = response.header().map_or(0, |h| h.revision());
                let entries = response
                    .take_kvs()
                    .into_iter()
                    .filter_map(|kv| {
                        let key = kv.key().strip_prefix(prefix.as_slice())?;
                        if key.is_empty() {
                            return None;
                        }
                        Some(Entry {
                            key: String::from_utf8_lossy(key).into_owned(),
                            value: kv.value().to_vec(),
                            version: kv.mod_revision(),
                            owned_by_us: ours != 0 && kv.lease() == ours,
                            created: Some(kv.create_revision()).filter(|c| *c > 0),
                        })
                    })
                    .collect();
                Ok(Snapshot { revision, entries })
            })
            .await
    }

    async fn keepalive(&self) -> Result<SessionInfo, DcsError> {
        let op = "keepalive";
        let shared = &self.shared;
        shared
            .bounded(op, |deadline| shared.keepalive(op, deadline))
            .await
    }

    async fn put_member(&self, value: &[u8]) -> Result<(), DcsError> {
        let op = "put_member";
        let key = self.shared.key(&format!("members/{}", self.shared.member));
        let value = value.to_vec();
        self.shared
            .bounded(op, |deadline| self.put_with_lease(op, deadline, key, value))
            .await
    }

    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let op = "acquire_leader";
        let key = self.shared.key("leader");
        let member = self.shared.member.clone();
        self.shared
            .bounded(op, |deadline| async move {
                let (response, lease) = self
                    .txn_with_lease(op, deadline, |lease| {
                        Txn::new()
                            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(
                                key.clone(),
                                member.clone(),
                                Some(PutOptions::new().with_lease(lease)),
                            )])
                            .or_else([TxnOp::get(key.clone(), None)])
                    })
                    .await?;
                if response.succeeded() {
                    return Ok(true);
                }
                // A retried request that had been applied already finds our own key.
                let ours = response.op_responses().iter().any(|op| match op {
                    TxnOpResponse::Get(get) => get
                        .kvs()
                        .iter()
                        .any(|kv| kv.value() == member.as_bytes() && kv.lease() == lease),
                    _ => false,
                });
                Ok(ours)
            })
            .await
    }

    async fn reattach_leader(&self) -> Result<bool, DcsError> {
        let op = "reattach_leader";
        let key = self.shared.key("leader");
        let member = self.shared.member.clone();
        self.shared
            .bounded(op, |deadline| async move {
                let (response, _) = self
                    .txn_with_lease(op, deadline, |lease| {
                        let put = || {
                            TxnOp::put(
                                key.clone(),
                                member.clone(),
                                Some(PutOptions::new().with_lease(lease)),
                            )
                        };
                        let create = Txn::new()
                            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                            .and_then([put()]);
                        Txn::new()
                            .when([Compare::value(
                                key.clone(),
                                CompareOp::Equal,
                                member.clone(),
                            )])
                            .and_then([put()])
                            .or_else([TxnOp::txn(create)])
                    })
                    .await?;
                Ok(nested_succeeded(&response))
            })
            .await
    }

    async fn release_leader(&self) -> Result<bool, DcsError> {
        let op = "release_leader";
        let key = self.shared.key("leader");
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.shared.member.clone(),
            )])
            .and_then([TxnOp::delete(key, None)]);
        self.shared
            .bounded(op, |deadline| self.plain_txn(op, deadline, txn))
            .await
    }

    async fn put(&self, key: &str, value: &[u8], cas: Cas) -> Result<bool, DcsError> {
        let op = "put";
        let key = self.shared.key(key);
        let value = value.to_vec();
        let shared = &self.shared;
        match cas_compare(&key, cas) {
            None => {
                shared
                    .bounded(op, |deadline| async move {
                        shared
                            .call(op, deadline, |mut client, _| {
                                let (key, value) = (key.clone(), value.clone());
                                async move { client.put(key, value, None).await }
                            })
                            .await?;
                        Ok(true)
                    })
                    .await
            }
            Some(compare) => {
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key, value, None)]);
                shared
                    .bounded(op, |deadline| self.plain_txn(op, deadline, txn))
                    .await
            }
        }
    }

    async fn delete(&self, key: &str, cas: Cas) -> Result<bool, DcsError> {
        let op = "delete";
        let key = self.shared.key(key);
        let shared = &self.shared;
        match cas_compare(&key, cas) {
            None => {
                shared
                    .bounded(op, |deadline| async move {
                        shared
                            .call(op, deadline, |mut client, _| {
                                let key = key.clone();
                                async move { client.delete(key, None).await }
                            })
                            .await?;
                        Ok(true)
                    })
                    .await
            }
            Some(compare) => {
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::delete(key, None)]);
                shared
                    .bounded(op, |deadline| self.plain_txn(op, deadline, txn))
                    .await
            }
        }
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    fn set_ttl(&self, ttl: Duration) {
        self.shared.set_ttl(ttl);
    }

    async fn close(&self) -> Result<(), DcsError> {
        let op = "close";
        let shared = &self.shared;
        shared
            .bounded(op, |deadline| shared.close(op, deadline))
            .await
    }
}
