//! One ZooKeeper client (= one session) and what is known of its connection.
//!
//! zookeeper-client runs the session on a task of the current runtime. Sessions are made
//! detached: dropping the client drops the connection only, and the server expires the session
//! after its timeout (as when the process dies); [`close_session`] ends one at once. The
//! library never replaces an expired session by itself: once the session state is terminal
//! (`Expired`, `AuthFailed`, `Closed`) every request fails, and [`crate::shared::Shared`] makes
//! a new client. A small task follows the session state so that the time since the connection was
//! lost is known (a connection lost for longer than `retry_timeout` is a lost lease).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use zookeeper_client::{Connector, SessionState, TlsOptions};

/// How to make a client: everything but the session timeout.
#[derive(Clone)]
pub(crate) struct ConnectSpec {
    /// `host:port,host:port`.
    pub(crate) hosts: String,
    /// `(scheme, credential)` sent on every connection (the library re-sends them itself).
    pub(crate) auth: Vec<(String, Vec<u8>)>,
    /// TLS options; `None`: plain TCP.
    pub(crate) tls: Option<TlsOptions>,
}

/// What the state follower saw of the connection.
#[derive(Debug)]
struct Track {
    /// Connected right now.
    connected: bool,
    /// When the client was last seen connected (the moment it lost the connection, while
    /// disconnected).
    last_connected: Instant,
    /// The session expired, was closed, or authentication failed: the client is useless.
    expired: bool,
}

/// A ZooKeeper client with its session.
pub(crate) struct Client {
    /// The library's client.
    pub(crate) zk: zookeeper_client::Client,
    /// Our number among the clients made by one [`crate::ZkDcs`].
    pub(crate) generation: u64,
    /// The session timeout asked for.
    pub(crate) ttl: Duration,
    track: Arc<Mutex<Track>>,
    /// Dropping it stops the state follower.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("generation", &self.generation)
            .field("ttl", &self.ttl)
            .field("session_id", &self.session_id())
            .finish_non_exhaustive()
    }
}

fn lock(track: &Mutex<Track>) -> MutexGuard<'_, Track> {
    track.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Connects and establishes a session of `ttl`. Returns once the session is established;
    /// the library retries the servers until about `ttl` has passed, so the caller bounds the
    /// wait.
    pub(crate) async fn connect(
        spec: &ConnectSpec,
        ttl: Duration,
        generation: u64,
    ) -> Result<Client, zookeeper_client::Error> {
        let zk = open(spec, connector(spec, ttl).with_detached()).await?;
        let track = Arc::new(Mutex::new(Track {
            connected: true,
            last_connected: Instant::now(),
            expired: false,
        }));
        let (stop, stopped) = oneshot::channel();
        follow_state(zk.state_watcher(), track.clone(), stopped);
        Ok(Client {
            zk,
            generation,
            ttl,
            track,
            _stop: stop,
        })
    }

    /// Marks the client as unusable (it is being replaced or closed).
    pub(crate) fn mark_expired(&self) {
        let mut t = lock(&self.track);
        t.expired = true;
        t.connected = false;
    }

    /// How long the client has been without a connection (zero while connected).
    pub(crate) fn disconnected_for(&self) -> Duration {
        let t = lock(&self.track);
        if t.connected {
            Duration::ZERO
        } else {
            t.last_connected.elapsed()
        }
    }

    /// True when the session is over (expired, closed, authentication failed, or replaced).
    pub(crate) fn expired(&self) -> bool {
        lock(&self.track).expired || self.zk.state().is_terminated()
    }

    /// The session id.
    pub(crate) fn session_id(&self) -> i64 {
        self.zk.session_id().0
    }
}

/// A connector for `spec` and a session timeout of `ttl`, with the auth data.
///
/// The connection timeout is 3/5 of `ttl`, the largest the client accepts before it falls back
/// to pinging every 3/20 of the session timeout: it pings after 3/8 of the connection timeout
/// without traffic, so an idle daemon sends about one ping per `loop_wait` (2 s at `ttl` 5)
/// instead of three, and a dead server is still left well within `ttl`.
fn connector(spec: &ConnectSpec, ttl: Duration) -> Connector {
    let mut connector = zookeeper_client::Client::connector()
        .with_session_timeout(ttl)
        .with_connection_timeout(ttl * 3 / 5);
    for (scheme, credential) in &spec.auth {
        connector = connector.with_auth(scheme, credential);
    }
    connector
}

/// Connects `connector` to the servers of `spec`, over TLS when `spec` says so.
async fn open(
    spec: &ConnectSpec,
    connector: Connector,
) -> Result<zookeeper_client::Client, zookeeper_client::Error> {
    match &spec.tls {
        Some(tls) => {
            connector
                .with_tls(tls.clone())
                .secure_connect(&spec.hosts)
                .await
        }
        None => connector.connect(&spec.hosts).await,
    }
}

/// Ends the session of `client` now (ZooKeeper `closeSession`), so that its ephemeral znodes
/// vanish at once; the caller bounds the wait.
///
/// Sessions are made *detached*: dropping a client only drops its connection, and the server
/// expires the session after its timeout, as when the process dies. To close one, the
/// session is attached to a second, non-detached connection that is dropped at once, which
/// sends `closeSession`. Ok when the session had expired already.
pub(crate) async fn close_session(
    spec: &ConnectSpec,
    client: Arc<Client>,
) -> Result<(), zookeeper_client::Error> {
    client.mark_expired();
    let session = client.zk.session().clone();
    let ttl = client.ttl;
    drop(client);
    // One connection attempt per try (fail eagerly), tried again while the caller's deadline
    // allows: a busy server can miss one handshake, and giving up then would leave the
    // session (and its ephemeral znodes) to expire after the whole ttl.
    let mut tries = 0;
    let closer = loop {
        let connector = connector(spec, ttl)
            .with_session(session.clone())
            .with_fail_eagerly();
        match open(spec, connector).await {
            Ok(closer) => break closer,
            Err(zookeeper_client::Error::SessionExpired) => return Ok(()),
            Err(e) if tries >= 2 => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "closing the ZooKeeper session: trying again");
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    let mut states = closer.state_watcher();
    drop(closer);
    let mut state = states.state();
    while !state.is_terminated() {
        state = states.changed().await;
    }
    Ok(())
}

/// Follows the session state into `track` until the state is terminal or `stop` resolves.
fn follow_state(
    mut states: zookeeper_client::StateWatcher,
    track: Arc<Mutex<Track>>,
    mut stop: oneshot::Receiver<()>,
) {
    tokio::spawn(async move {
        loop {
            let state = tokio::select! {
                _ = &mut stop => return,
                state = states.changed() => state,
            };
            let mut t = lock(&track);
            match state {
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                    if !t.expired {
                        t.connected = true;
                        t.last_connected = Instant::now();
                    }
                }
                SessionState::Disconnected => {
                    if t.connected {
                        t.last_connected = Instant::now();
                    }
                    t.connected = false;
                }
                SessionState::Expired | SessionState::AuthFailed | SessionState::Closed => {
                    if t.connected {
                        t.last_connected = Instant::now();
                    }
                    t.connected = false;
                    t.expired = true;
                    tracing::debug!(?state, "ZooKeeper session ended");
                    return;
                }
            }
        }
    });
}
