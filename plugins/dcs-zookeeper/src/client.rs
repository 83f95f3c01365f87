//! One ZooKeeper client (= one session), running on a thread of its own.
//!
//! zookeeper-async spawns its I/O task on the current runtime and that task never ends unless
//! the session is closed: a dropped `ZooKeeper` keeps reconnecting and heart-beating, so its
//! session (and every ephemeral node of it) would live on forever. Each client therefore runs
//! on a dedicated single-threaded runtime; dropping the [`Client`] shuts that runtime down,
//! which closes the socket, and the server expires the session after its timeout.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use spilo_sdk::DcsError;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use zookeeper_async::{WatchedEvent, ZkError, ZkState, ZooKeeper};

/// What the state listener saw of the connection.
#[derive(Debug)]
pub(crate) struct Track {
    /// Connected right now (as far as the listener knows).
    pub(crate) connected: bool,
    /// When the client was last seen connected (the moment it lost the connection, while
    /// disconnected).
    pub(crate) last_connected: Instant,
    /// The session expired, was closed, or authentication failed: the client is useless.
    pub(crate) expired: bool,
    /// How many times the client (re)connected; auth data must be sent again after each.
    pub(crate) connects: u64,
}

/// A ZooKeeper client with its session.
pub(crate) struct Client {
    pub(crate) zk: ZooKeeper,
    /// Our number among the clients made by one [`crate::ZkDcs`].
    pub(crate) generation: u64,
    /// The session timeout asked for.
    pub(crate) ttl: Duration,
    /// The session id, 0 until learned (zookeeper-async does not expose it; see
    /// [`crate::ZkDcs`]'s session probe).
    pub(crate) session_id: AtomicI64,
    /// `track.connects` when the auth data was last sent.
    pub(crate) authed: AtomicU64,
    /// Serialises re-sending the auth data.
    pub(crate) auth_lock: tokio::sync::Mutex<()>,
    track: Arc<Mutex<Track>>,
    /// Dropping it stops the client's runtime.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("generation", &self.generation)
            .field("ttl", &self.ttl)
            .field("session_id", &self.session_id.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

fn lock(track: &Mutex<Track>) -> MutexGuard<'_, Track> {
    track.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Starts a client of `hosts` on its own thread. Returns once the TCP connection is made
    /// (the session handshake may still be under way); the caller bounds the wait.
    /// `epoch` is bumped on every (re)connection, for the watch task.
    pub(crate) async fn start(
        hosts: String,
        ttl: Duration,
        retry: Duration,
        generation: u64,
        epoch: Arc<watch::Sender<u64>>,
    ) -> Result<Client, DcsError> {
        let track = Arc::new(Mutex::new(Track {
            connected: false,
            last_connected: Instant::now(),
            expired: false,
            connects: 0,
        }));
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, made) = oneshot::channel::<Result<ZooKeeper, ZkError>>();
        let listener_track = track.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DcsError::Unreachable {
                op: "connect",
                message: format!("cannot start the ZooKeeper client runtime: {e}"),
            })?;
        std::thread::Builder::new()
            .name(format!("zk-client-{generation}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut stopped = stopped;
                    let connect = ZooKeeper::connect_with_retry_time(
                        &hosts,
                        ttl,
                        |_: WatchedEvent| {},
                        retry,
                    );
                    let zk = tokio::select! {
                        _ = &mut stopped => return,
                        zk = connect => zk,
                    };
                    // No await between `connect` returning and `add_listener`: the I/O task
                    // spawned on this single-threaded runtime cannot run before the listener is
                    // in place, so no state change is missed.
                    if let Ok(zk) = &zk {
                        zk.add_listener(move |state| on_state(&listener_track, &epoch, state));
                    }
                    if ready.send(zk).is_err() {
                        return;
                    }
                    let _ = stopped.await;
                });
            })
            .map_err(|e| DcsError::Unreachable {
                op: "connect",
                message: format!("cannot start the ZooKeeper client thread: {e}"),
            })?;
        let zk = made
            .await
            .map_err(|_| DcsError::Unreachable {
                op: "connect",
                message: "ZooKeeper client thread ended".to_string(),
            })?
            .map_err(|e| DcsError::Unreachable {
                op: "connect",
                message: format!("bad ZooKeeper hosts {e}"),
            })?;
        Ok(Client {
            zk,
            generation,
            ttl,
            session_id: AtomicI64::new(0),
            authed: AtomicU64::new(0),
            auth_lock: tokio::sync::Mutex::new(()),
            track,
            _stop: stop,
        })
    }

    /// A copy of the connection state.
    pub(crate) fn track(&self) -> (bool, Instant, bool, u64) {
        let t = lock(&self.track);
        (t.connected, t.last_connected, t.expired, t.connects)
    }

    /// Records that a request just succeeded: the client is connected.
    pub(crate) fn mark_alive(&self) {
        let mut t = lock(&self.track);
        if !t.expired {
            if !t.connected {
                t.connects += 1;
            }
            t.connected = true;
            t.last_connected = Instant::now();
        }
    }

    /// Marks the client as unusable (after `close`).
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

    pub(crate) fn expired(&self) -> bool {
        lock(&self.track).expired
    }

    pub(crate) fn session_id(&self) -> i64 {
        self.session_id.load(Ordering::SeqCst)
    }
}

#[allow(deprecated)]
fn on_state(track: &Mutex<Track>, epoch: &watch::Sender<u64>, state: ZkState) {
    let mut t = lock(track);
    match state {
        ZkState::Connected | ZkState::ConnectedReadOnly => {
            if !t.expired {
                t.connected = true;
                t.connects += 1;
                t.last_connected = Instant::now();
                drop(t);
                epoch.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        ZkState::Connecting | ZkState::Associating => {
            if t.connected {
                t.last_connected = Instant::now();
            }
            t.connected = false;
        }
        // `NotConnected` is what zookeeper-async reports when the server says the session
        // expired (it then silently starts a new session, which we do not want to use).
        ZkState::NotConnected | ZkState::Closed | ZkState::AuthFailed => {
            if t.connected {
                t.last_connected = Instant::now();
            }
            t.connected = false;
            t.expired = true;
            tracing::debug!(?state, "ZooKeeper session ended");
        }
    }
}
