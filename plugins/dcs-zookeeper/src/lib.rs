//! ZooKeeper backend.
//!
//! Keys follow Patroni's ZooKeeper layout: every key is a znode below the cluster prefix, e.g.
//! `/service/batman/leader` and `/service/batman/members/n1`. `leader` and `members/<name>` are
//! EPHEMERAL znodes of this daemon's session, so both vanish when the session expires or is
//! closed; every other key is a persistent znode, created with its parents as needed.
//! Compare-and-set uses the znode's data `version`.
//!
//! zookeeper-async does not expose the session id, which is needed to tell our ephemeral
//! znodes from a stale one of an older session: once per session, a short-lived ephemeral
//! znode `<prefix>.spilo-session-<member>` is created and deleted again, and the id read from
//! its `ephemeralOwner`. Patroni ignores unknown children of the prefix.

mod client;
mod watcher;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use spilo_sdk::{Cas, Dcs, DcsError, Entry, SessionInfo, Snapshot};
use tokio::sync::{oneshot, watch};
use zookeeper_async::{Acl, CreateMode, Permission, Stat, ZkError};

use crate::client::Client;

/// zookeeper-async's pause between failed TCP connection attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// How long a replaced client gets to close its session before its runtime is stopped.
const RETIRE_GRACE: Duration = Duration::from_secs(1);

/// Keys below the prefix that are directories of further keys.
const DIRECTORIES: [&str; 2] = ["members", "optime"];

/// How to reach ZooKeeper and which cluster to manage.
///
/// `Debug` output hides the credentials.
#[derive(Clone)]
pub struct ZkSettings {
    /// The servers, `host:port`.
    pub hosts: Vec<String>,
    /// The cluster prefix, e.g. `/service/batman/` (a missing leading or trailing `/` is added).
    pub prefix: String,
    /// Our member name.
    pub member: String,
    /// Session timeout (the server may cap it to its `minSessionTimeout..maxSessionTimeout`).
    pub ttl: Duration,
    /// Deadline of every operation.
    pub retry_timeout: Duration,
    /// Start a task watching `leader`, `config`, `failover` and `initialize`, feeding
    /// [`Dcs::changes`] (false for the CLI).
    pub watch: bool,
    /// Whether this client uses its session for ephemeral znodes (false for the CLI, which only
    /// reads and writes plain keys and never learns its session id).
    pub session: bool,
    /// Authentication sent on every connection: `(scheme, credential)`, e.g.
    /// `("digest", "user:pass")`.
    pub auth_data: Vec<(String, String)>,
    /// Patroni's `set_acls`: principal → permissions (`CREATE`, `READ`, `WRITE`, `DELETE`,
    /// `ADMIN`, `ALL`), applied to the znodes we create. A principal written `scheme:id` with a
    /// scheme of `world`, `auth`, `digest`, `ip`, `sasl` or `x509` uses that scheme; any other
    /// principal is an `x509` one, as in Patroni. `None`: open ACL (`world:anyone`, all).
    pub set_acls: Option<BTreeMap<String, Vec<String>>>,
}

impl std::fmt::Debug for ZkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth: Vec<&str> = self.auth_data.iter().map(|(s, _)| s.as_str()).collect();
        f.debug_struct("ZkSettings")
            .field("hosts", &self.hosts)
            .field("prefix", &self.prefix)
            .field("member", &self.member)
            .field("ttl", &self.ttl)
            .field("retry_timeout", &self.retry_timeout)
            .field("watch", &self.watch)
            .field("session", &self.session)
            .field("auth_schemes", &auth)
            .field("set_acls", &self.set_acls)
            .finish()
    }
}

/// The ACL list of Patroni's `set_acls`.
fn build_acls(set_acls: &Option<BTreeMap<String, Vec<String>>>) -> Result<Vec<Acl>, DcsError> {
    let Some(map) = set_acls else {
        return Ok(Acl::open_unsafe().clone());
    };
    let mut acls = Vec::new();
    for (principal, perms) in map {
        let mut p = Permission::NONE;
        for perm in perms {
            p = p | match perm.to_ascii_uppercase().as_str() {
                "READ" => Permission::READ,
                "WRITE" => Permission::WRITE,
                "CREATE" => Permission::CREATE,
                "DELETE" => Permission::DELETE,
                "ADMIN" => Permission::ADMIN,
                "ALL" => Permission::ALL,
                other => {
                    return Err(DcsError::Refused {
                        op: "connect",
                        message: format!("unknown ZooKeeper permission {other:?} for {principal}"),
                    })
                }
            };
        }
        let (scheme, id) = match principal.split_once(':') {
            Some((scheme, id))
                if ["world", "auth", "digest", "ip", "sasl", "x509"].contains(&scheme) =>
            {
                (scheme, id)
            }
            _ => ("x509", principal.as_str()),
        };
        acls.push(Acl::new(p, scheme, id));
    }
    if acls.is_empty() {
        return Ok(Acl::open_unsafe().clone());
    }
    Ok(acls)
}

/// Maps a zookeeper-async error: connection problems are `Unreachable`, the rest `Refused`.
pub(crate) fn map_err(op: &'static str, error: ZkError) -> DcsError {
    match error {
        ZkError::ConnectionLoss
        | ZkError::SessionExpired
        | ZkError::SessionMoved
        | ZkError::OperationTimeout => DcsError::Unreachable {
            op,
            message: format!("{error:?}"),
        },
        _ => DcsError::Refused {
            op,
            message: format!("{error:?}"),
        },
    }
}

/// Everything the daemon object and the watch task share.
pub(crate) struct Shared {
    hosts: String,
    /// The prefix with leading and trailing `/`.
    prefix: String,
    member: String,
    retry_timeout: Duration,
    ttl_ms: AtomicU64,
    session: bool,
    auth: Vec<(String, Vec<u8>)>,
    acl: Vec<Acl>,
    current: Mutex<Option<Arc<Client>>>,
    /// Serialises making and replacing clients.
    create_lock: tokio::sync::Mutex<()>,
    generations: AtomicU64,
    /// The session id the last keep-alive reported.
    reported: AtomicI64,
    /// Bumped on every (re)connection of a client.
    pub(crate) epoch: Arc<watch::Sender<u64>>,
    changes: watch::Sender<u64>,
}

impl Shared {
    /// The znode path of `key`.
    pub(crate) fn path(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key.trim_start_matches('/'))
    }

    /// The znode of the prefix itself.
    fn prefix_path(&self) -> String {
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

    /// Sends the auth data again if the client (re)connected since it was last sent.
    pub(crate) async fn ensure_auth(
        &self,
        op: &'static str,
        client: &Client,
    ) -> Result<(), DcsError> {
        if self.auth.is_empty() {
            return Ok(());
        }
        let _guard = client.auth_lock.lock().await;
        let (_, _, _, connects) = client.track();
        if client.authed.load(Ordering::SeqCst) == connects && connects != 0 {
            return Ok(());
        }
        for (scheme, credential) in &self.auth {
            client
                .zk
                .add_auth(scheme, credential.clone())
                .await
                .map_err(|e| map_err(op, e))?;
        }
        client.authed.store(connects, Ordering::SeqCst);
        Ok(())
    }

    /// Makes a client and waits until it answers.
    async fn new_client(&self, op: &'static str) -> Result<Arc<Client>, DcsError> {
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let ttl = self.ttl();
        let client = Client::start(
            self.hosts.clone(),
            ttl,
            RECONNECT_PAUSE,
            generation,
            self.epoch.clone(),
        )
        .await?;
        let client = Arc::new(client);
        // A server that is still starting accepts the connection and drops it again; the
        // client reconnects by itself, so retry (the caller bounds the wait).
        loop {
            let answered = match self.ensure_auth(op, &client).await {
                Ok(()) => client
                    .zk
                    .exists(&self.prefix_path(), false)
                    .await
                    .map_err(|e| map_err(op, e)),
                Err(e) => Err(e),
            };
            match answered {
                Ok(_) => break,
                Err(DcsError::Unreachable { message, .. }) if !client.expired() => {
                    tracing::debug!(error = %message, "ZooKeeper client not connected yet");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
        client.mark_alive();
        tracing::debug!(generation, ?ttl, "ZooKeeper client connected");
        Ok(client)
    }

    /// The current client, making one if there is none.
    pub(crate) async fn client(&self, op: &'static str) -> Result<Arc<Client>, DcsError> {
        if let Some(client) = self.current() {
            return Ok(client);
        }
        let _guard = self.create_lock.lock().await;
        if let Some(client) = self.current() {
            return Ok(client);
        }
        let client = self.new_client(op).await?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
        Ok(client)
    }

    fn current(&self) -> Option<Arc<Client>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes a replaced client's session in the background, then stops it.
    fn retire(&self, old: Arc<Client>) {
        old.mark_expired();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(RETIRE_GRACE, old.zk.close()).await;
            drop(old);
        });
    }

    /// The client for session operations: replaced when its session expired, the connection
    /// has been gone for longer than the session timeout, or the TTL changed; with the session
    /// id known.
    async fn ensure_session(&self, op: &'static str) -> Result<Arc<Client>, DcsError> {
        let _guard = self.create_lock.lock().await;
        let wanted = self.ttl();
        let current = self.current();
        let client = match current {
            Some(client)
                if !client.expired()
                    && client.ttl == wanted
                    && client.disconnected_for() <= client.ttl =>
            {
                client
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
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
                if let Some(old) = old {
                    self.retire(old);
                }
                client
            }
        };
        if self.session && client.session_id() == 0 {
            self.probe_session(op, &client).await?;
        }
        Ok(client)
    }

    /// Learns the session id from the owner of a short-lived ephemeral znode.
    async fn probe_session(&self, op: &'static str, client: &Client) -> Result<(), DcsError> {
        let path = self.path(&format!(".spilo-session-{}", self.member));
        self.ensure_auth(op, client).await?;
        for _ in 0..3 {
            ensure_parents(client, &path, &self.acl)
                .await
                .map_err(|e| map_err(op, e))?;
            match client
                .zk
                .create2(&path, Vec::new(), self.acl.clone(), CreateMode::Ephemeral)
                .await
            {
                Ok((_, stat)) => {
                    client
                        .session_id
                        .store(stat.ephemeral_owner, Ordering::SeqCst);
                    if let Err(error) = client.zk.delete(&path, None).await {
                        tracing::debug!(?error, "could not delete the session probe znode");
                    }
                    client.mark_alive();
                    tracing::debug!(session = stat.ephemeral_owner, "ZooKeeper session id");
                    return Ok(());
                }
                Err(ZkError::NodeExists) => match client.zk.delete(&path, None).await {
                    Ok(()) | Err(ZkError::NoNode) => {}
                    Err(e) => return Err(map_err(op, e)),
                },
                Err(e) => return Err(map_err(op, e)),
            }
        }
        Err(DcsError::Refused {
            op,
            message: "cannot create the session probe znode".to_string(),
        })
    }

    /// The `keepalive` operation.
    async fn keepalive(&self, op: &'static str) -> Result<SessionInfo, DcsError> {
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
            self.ensure_auth(op, &client).await?;
            client
                .zk
                .exists(&self.prefix_path(), false)
                .await
                .map_err(|e| map_err(op, e))?;
            // zookeeper-async silently starts a new session after an expired one: such a client
            // must be replaced, since our ephemeral znodes are gone with the old session.
            if self.session && client.expired() {
                continue;
            }
            client.mark_alive();
            let id = client.session_id();
            let previous = self.reported.swap(id, Ordering::SeqCst);
            return Ok(SessionInfo {
                id,
                new_session: self.session && id != previous,
            });
        }
        Err(DcsError::Unreachable {
            op,
            message: "ZooKeeper session expired again at once".to_string(),
        })
    }
}

/// Creates the missing ancestors of `path` (not `path` itself) as persistent empty znodes.
async fn ensure_parents(client: &Client, path: &str, acl: &[Acl]) -> Result<(), ZkError> {
    for (i, c) in path.char_indices().skip(1) {
        if c != '/' {
            continue;
        }
        match client
            .zk
            .create(&path[..i], Vec::new(), acl.to_vec(), CreateMode::Persistent)
            .await
        {
            Ok(_) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `path`, and its ancestors when missing (`makepath`).
async fn create_path(
    client: &Client,
    path: &str,
    data: &[u8],
    mode: CreateMode,
    acl: &[Acl],
) -> Result<(), ZkError> {
    match client
        .zk
        .create(path, data.to_vec(), acl.to_vec(), mode)
        .await
    {
        Err(ZkError::NoNode) => {
            ensure_parents(client, path, acl).await?;
            client
                .zk
                .create(path, data.to_vec(), acl.to_vec(), mode)
                .await
                .map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// Data and stat of `path`, `None` when it does not exist.
async fn read(client: &Client, path: &str) -> Result<Option<(Vec<u8>, Stat)>, ZkError> {
    match client.zk.get_data(path, false).await {
        Ok(found) => Ok(Some(found)),
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Children of `path`, empty when it does not exist.
async fn children(client: &Client, path: &str) -> Result<Vec<String>, ZkError> {
    match client.zk.get_children(path, false).await {
        Ok(children) => Ok(children),
        Err(ZkError::NoNode) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The ZooKeeper implementation of [`Dcs`].
pub struct ZkDcs {
    shared: Arc<Shared>,
    /// Dropping it stops the watch task.
    _stop_watch: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for ZkDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkDcs")
            .field("hosts", &self.shared.hosts)
            .field("prefix", &self.shared.prefix)
            .field("member", &self.shared.member)
            .finish_non_exhaustive()
    }
}

impl ZkDcs {
    /// Connects to ZooKeeper (a session is made; nothing is written), bounded by
    /// `retry_timeout`. Fails with a [`DcsError`] naming the hosts on bad settings or when no
    /// server answers in time.
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
        let acl = build_acls(&settings.set_acls)?;
        let (changes, _) = watch::channel(0);
        let (epoch, _) = watch::channel(0);
        let retry_timeout = settings.retry_timeout.max(Duration::from_millis(1));
        let shared = Arc::new(Shared {
            hosts: hosts.join(","),
            prefix,
            member: settings.member.clone(),
            retry_timeout,
            ttl_ms: AtomicU64::new(u64::try_from(settings.ttl.as_millis()).unwrap_or(u64::MAX)),
            session: settings.session,
            auth: settings
                .auth_data
                .iter()
                .map(|(s, c)| (s.clone(), c.clone().into_bytes()))
                .collect(),
            acl,
            current: Mutex::new(None),
            create_lock: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(0),
            reported: AtomicI64::new(0),
            epoch: Arc::new(epoch),
            changes,
        });
        shared
            .bounded(op, shared.client(op))
            .await
            .map_err(|e| DcsError::Unreachable {
                op,
                message: format!("cannot connect to ZooKeeper at {}: {e}", hosts.join(", ")),
            })?;
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

    /// The session client with auth data sent.
    async fn session_client(&self, op: &'static str) -> Result<Arc<Client>, DcsError> {
        let client = self.shared.ensure_session(op).await?;
        self.shared.ensure_auth(op, &client).await?;
        Ok(client)
    }

    /// A client for plain operations with auth data sent.
    async fn plain_client(&self, op: &'static str) -> Result<Arc<Client>, DcsError> {
        let client = self.shared.client(op).await?;
        self.shared.ensure_auth(op, &client).await?;
        Ok(client)
    }

    /// Creates the ephemeral leader znode; `Ok(false)` when it exists.
    async fn create_leader(&self, op: &'static str, client: &Client) -> Result<bool, DcsError> {
        let path = self.shared.path("leader");
        match create_path(
            client,
            &path,
            self.shared.member.as_bytes(),
            CreateMode::Ephemeral,
            &self.shared.acl,
        )
        .await
        {
            Ok(()) => Ok(true),
            Err(ZkError::NodeExists) => {
                // A retried request that had been applied already finds our own znode.
                let ours = read(client, &path)
                    .await
                    .map_err(|e| map_err(op, e))?
                    .is_some_and(|(data, stat)| {
                        data == self.shared.member.as_bytes()
                            && stat.ephemeral_owner == client.session_id()
                            && client.session_id() != 0
                    });
                Ok(ours)
            }
            Err(e) => Err(map_err(op, e)),
        }
    }
}

#[async_trait]
impl Dcs for ZkDcs {
    fn backend(&self) -> &'static str {
        "zookeeper"
    }

    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        let op = "snapshot";
        let shared = &self.shared;
        shared
            .bounded(op, async {
                let client = self.plain_client(op).await?;
                let err = |e| map_err(op, e);
                let top = children(&client, &shared.prefix_path())
                    .await
                    .map_err(err)?;
                let mut keys = Vec::new();
                for child in top {
                    if child.starts_with('.') {
                        continue;
                    }
                    if DIRECTORIES.contains(&child.as_str()) {
                        let below = children(&client, &shared.path(&child)).await.map_err(err)?;
                        keys.extend(below.into_iter().map(|c| format!("{child}/{c}")));
                    } else {
                        keys.push(child);
                    }
                }
                let mut reads = tokio::task::JoinSet::new();
                for key in keys {
                    let client = client.clone();
                    let path = shared.path(&key);
                    reads.spawn(async move { (key, read(&client, &path).await) });
                }
                let ours = client.session_id();
                let mut snapshot = Snapshot::default();
                while let Some(joined) = reads.join_next().await {
                    let (key, found) = joined.map_err(|e| DcsError::Refused {
                        op,
                        message: format!("read task failed: {e}"),
                    })?;
                    let Some((value, stat)) = found.map_err(err)? else {
                        continue;
                    };
                    snapshot.revision = snapshot.revision.max(stat.mzxid);
                    snapshot.entries.push(Entry {
                        key,
                        value,
                        version: i64::from(stat.version),
                        owned_by_us: ours != 0 && stat.ephemeral_owner == ours,
                    });
                }
                client.mark_alive();
                Ok(snapshot)
            })
            .await
    }

    async fn keepalive(&self) -> Result<SessionInfo, DcsError> {
        let op = "keepalive";
        self.shared.bounded(op, self.shared.keepalive(op)).await
    }

    async fn put_member(&self, value: &[u8]) -> Result<(), DcsError> {
        let op = "put_member";
        let shared = &self.shared;
        shared
            .bounded(op, async {
                let client = self.session_client(op).await?;
                let path = shared.path(&format!("members/{}", shared.member));
                let err = |e| map_err(op, e);
                for _ in 0..4 {
                    match client.zk.exists(&path, false).await.map_err(err)? {
                        None => {
                            match create_path(
                                &client,
                                &path,
                                value,
                                CreateMode::Ephemeral,
                                &shared.acl,
                            )
                            .await
                            {
                                Ok(()) => return Ok(()),
                                Err(ZkError::NodeExists) => continue,
                                Err(e) => return Err(err(e)),
                            }
                        }
                        Some(stat) if stat.ephemeral_owner == client.session_id() => {
                            match client.zk.set_data(&path, value.to_vec(), None).await {
                                Ok(_) => return Ok(()),
                                Err(ZkError::NoNode) => continue,
                                Err(e) => return Err(err(e)),
                            }
                        }
                        Some(stat) => {
                            // A stale znode of an older session (or a persistent one).
                            tracing::debug!(
                                owner = stat.ephemeral_owner,
                                "replacing a member znode not bound to our session"
                            );
                            match client.zk.delete(&path, Some(stat.version)).await {
                                Ok(()) | Err(ZkError::NoNode) | Err(ZkError::BadVersion) => {}
                                Err(e) => return Err(err(e)),
                            }
                        }
                    }
                }
                Err(DcsError::Refused {
                    op,
                    message: "member znode kept changing".to_string(),
                })
            })
            .await
    }

    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let op = "acquire_leader";
        self.shared
            .bounded(op, async {
                let client = self.session_client(op).await?;
                self.create_leader(op, &client).await
            })
            .await
    }

    async fn reattach_leader(&self) -> Result<bool, DcsError> {
        let op = "reattach_leader";
        let shared = &self.shared;
        shared
            .bounded(op, async {
                let client = self.session_client(op).await?;
                let path = shared.path("leader");
                let err = |e| map_err(op, e);
                match read(&client, &path).await.map_err(err)? {
                    None => self.create_leader(op, &client).await,
                    Some((data, _)) if data != shared.member.as_bytes() => Ok(false),
                    Some((_, stat)) if stat.ephemeral_owner == client.session_id() => Ok(true),
                    Some((_, stat)) => {
                        match client.zk.delete(&path, Some(stat.version)).await {
                            Ok(()) | Err(ZkError::NoNode) => {}
                            Err(ZkError::BadVersion) => return Ok(false),
                            Err(e) => return Err(err(e)),
                        }
                        self.create_leader(op, &client).await
                    }
                }
            })
            .await
    }

    async fn release_leader(&self) -> Result<bool, DcsError> {
        let op = "release_leader";
        let shared = &self.shared;
        shared
            .bounded(op, async {
                let client = self.plain_client(op).await?;
                let path = shared.path("leader");
                let err = |e| map_err(op, e);
                match read(&client, &path).await.map_err(err)? {
                    Some((data, stat)) if data == shared.member.as_bytes() => {
                        match client.zk.delete(&path, Some(stat.version)).await {
                            Ok(()) => Ok(true),
                            Err(ZkError::NoNode) | Err(ZkError::BadVersion) => Ok(false),
                            Err(e) => Err(err(e)),
                        }
                    }
                    _ => Ok(false),
                }
            })
            .await
    }

    async fn put(&self, key: &str, value: &[u8], cas: Cas) -> Result<bool, DcsError> {
        let op = "put";
        let shared = &self.shared;
        let path = shared.path(key);
        shared
            .bounded(op, async {
                let client = self.plain_client(op).await?;
                let err = |e| map_err(op, e);
                let persistent = CreateMode::Persistent;
                match cas {
                    Cas::Any => {
                        for _ in 0..3 {
                            match client.zk.set_data(&path, value.to_vec(), None).await {
                                Ok(_) => return Ok(true),
                                Err(ZkError::NoNode) => {}
                                Err(e) => return Err(err(e)),
                            }
                            match create_path(&client, &path, value, persistent, &shared.acl).await
                            {
                                Ok(()) => return Ok(true),
                                Err(ZkError::NodeExists) => {}
                                Err(e) => return Err(err(e)),
                            }
                        }
                        Err(DcsError::Refused {
                            op,
                            message: "key kept appearing and vanishing".to_string(),
                        })
                    }
                    Cas::Absent => {
                        match create_path(&client, &path, value, persistent, &shared.acl).await {
                            Ok(()) => Ok(true),
                            Err(ZkError::NodeExists) => Ok(false),
                            Err(e) => Err(err(e)),
                        }
                    }
                    Cas::Version(version) => {
                        let Ok(version) = i32::try_from(version) else {
                            return Ok(false);
                        };
                        match client
                            .zk
                            .set_data(&path, value.to_vec(), Some(version))
                            .await
                        {
                            Ok(_) => Ok(true),
                            Err(ZkError::NoNode) | Err(ZkError::BadVersion) => Ok(false),
                            Err(e) => Err(err(e)),
                        }
                    }
                }
            })
            .await
    }

    async fn delete(&self, key: &str, cas: Cas) -> Result<bool, DcsError> {
        let op = "delete";
        let shared = &self.shared;
        let path = shared.path(key);
        shared
            .bounded(op, async {
                let client = self.plain_client(op).await?;
                let err = |e| map_err(op, e);
                match cas {
                    Cas::Any => match client.zk.delete(&path, None).await {
                        Ok(()) | Err(ZkError::NoNode) => Ok(true),
                        Err(e) => Err(err(e)),
                    },
                    Cas::Absent => Ok(client.zk.exists(&path, false).await.map_err(err)?.is_none()),
                    Cas::Version(version) => {
                        let Ok(version) = i32::try_from(version) else {
                            return Ok(false);
                        };
                        match client.zk.delete(&path, Some(version)).await {
                            Ok(()) => Ok(true),
                            Err(ZkError::NoNode) | Err(ZkError::BadVersion) => Ok(false),
                            Err(e) => Err(err(e)),
                        }
                    }
                }
            })
            .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    fn set_ttl(&self, ttl: Duration) {
        self.shared.ttl_ms.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    async fn close(&self) -> Result<(), DcsError> {
        let op = "close";
        let shared = &self.shared;
        let taken = {
            let _guard = shared.create_lock.lock().await;
            shared
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
        };
        let Some(client) = taken else {
            return Ok(());
        };
        client.mark_expired();
        let closed = shared
            .bounded(op, async {
                client.zk.close().await.map_err(|e| map_err(op, e))
            })
            .await;
        // Dropping the last reference stops the client's runtime either way.
        drop(client);
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acls_follow_patroni() {
        let mut map = BTreeMap::new();
        map.insert("CN=admin".to_string(), vec!["all".to_string()]);
        map.insert(
            "digest:u:hash".to_string(),
            vec!["READ".to_string(), "create".to_string()],
        );
        let acls = build_acls(&Some(map)).expect("acls");
        assert_eq!(acls.len(), 2);
        assert_eq!(acls[0], Acl::new(Permission::ALL, "x509", "CN=admin"));
        assert_eq!(
            acls[1],
            Acl::new(Permission::READ | Permission::CREATE, "digest", "u:hash")
        );
        assert!(build_acls(&Some(BTreeMap::from([(
            "x".to_string(),
            vec!["FLY".to_string()]
        )])))
        .is_err());
        assert_eq!(build_acls(&None).expect("open"), *Acl::open_unsafe());
    }
}
