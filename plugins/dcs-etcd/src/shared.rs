//! State shared by [`crate::EtcdDcs`] and its watch task, and the retry machinery.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use spilo_sdk::DcsError;
use tokio::time::Instant;

use crate::conn::{classify, Conn, Failure};

/// Pause after every endpoint failed once, before trying them again.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// An open keep-alive stream of the current lease.
pub(crate) struct Keeper {
    /// The connection generation the stream belongs to.
    generation: u64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

/// The lease of this daemon.
#[derive(Default)]
pub(crate) struct Session {
    /// Current lease id; 0 when there is none.
    pub(crate) lease: i64,
    /// The TTL (seconds) the lease was asked for with.
    granted_ttl: i64,
    /// The TTL (seconds) etcd answered the grant with (its own minimum may raise it).
    server_ttl: i64,
    /// The lease id the last keep-alive reported, to tell new sessions.
    reported: i64,
    /// The lease replaced by a TTL change, kept until the daemon has moved its keys to the new
    /// one (revoked at the next keep-alive); 0 when there is none.
    retired: i64,
    keeper: Option<Keeper>,
}

/// What a keep-alive request found.
enum Renewal {
    Alive,
    Expired,
}

/// Everything the daemon object and the watch task share.
pub(crate) struct Shared {
    pub(crate) conn: Conn,
    pub(crate) prefix: String,
    pub(crate) member: String,
    pub(crate) retry_timeout: Duration,
    /// Wanted lease TTL in milliseconds.
    ttl_ms: AtomicU64,
    /// Mirror of `session.lease`, readable without waiting for the session lock.
    pub(crate) lease_id: AtomicI64,
    pub(crate) session: tokio::sync::Mutex<Session>,
    pub(crate) changes: tokio::sync::watch::Sender<u64>,
}

/// True when `error` says the lease is gone.
pub(crate) fn lease_gone(error: &DcsError) -> bool {
    matches!(error, DcsError::Refused { message, .. } if message.contains("lease not found"))
}

/// Whole seconds for a lease TTL: rounded up, at least 1.
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_millis().div_ceil(1000).max(1);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl Shared {
    pub(crate) fn new(
        conn: Conn,
        prefix: String,
        member: String,
        retry_timeout: Duration,
        ttl: Duration,
    ) -> Shared {
        let (changes, _) = tokio::sync::watch::channel(0);
        Shared {
            conn,
            prefix,
            member,
            retry_timeout,
            ttl_ms: AtomicU64::new(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            lease_id: AtomicI64::new(0),
            session: tokio::sync::Mutex::new(Session::default()),
            changes,
        }
    }

    /// The full etcd key of `key` below the prefix.
    pub(crate) fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{}", self.prefix, key).into_bytes()
    }

    pub(crate) fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    fn wanted_ttl(&self) -> i64 {
        ttl_secs(Duration::from_millis(self.ttl_ms.load(Ordering::SeqCst)))
    }

    /// Bumps the change counter.
    pub(crate) fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs `f` with a deadline of `retry_timeout`; `Timeout` when it passes.
    pub(crate) async fn bounded<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, DcsError>
    where
        F: FnOnce(Instant) -> Fut,
        Fut: Future<Output = Result<T, DcsError>>,
    {
        let deadline = Instant::now() + self.retry_timeout;
        match tokio::time::timeout_at(deadline, f(deadline)).await {
            Ok(result) => result,
            Err(_) => Err(DcsError::Timeout {
                op,
                after: self.retry_timeout,
            }),
        }
    }

    /// Runs `f` against the current endpoint, moving on to the next endpoint on transport
    /// errors and retrying until `deadline`. `f` gets the client and its connection generation.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        deadline: Instant,
        mut f: F,
    ) -> Result<T, DcsError>
    where
        F: FnMut(Client, u64) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last: Option<DcsError> = None;
        let mut failures = 0usize;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(last.unwrap_or(DcsError::Timeout {
                    op,
                    after: self.retry_timeout,
                }));
            }
            let budget = self.conn.attempt_timeout.min(deadline - now);
            let (generation, url, cached) = self.conn.current();
            let attempt = async {
                let client = match cached {
                    Some(client) => client,
                    None => self.conn.create(generation, &url).await?,
                };
                f(client, generation).await
            };
            match tokio::time::timeout(budget, attempt).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => match classify(&error) {
                    Failure::Transport(message) => {
                        tracing::debug!(op, url = %url, error = %message, "etcd call failed");
                        self.conn.rotate(generation);
                        last = Some(DcsError::Unreachable {
                            op,
                            message: format!("{url}: {message}"),
                        });
                    }
                    Failure::LeaseGone(message) | Failure::Refused(message) => {
                        return Err(DcsError::Refused {
                            op,
                            message: format!("{url}: {message}"),
                        });
                    }
                },
                Err(_) => {
                    tracing::debug!(op, url = %url, ?budget, "etcd call got no answer");
                    self.conn.rotate(generation);
                    last = Some(DcsError::Timeout {
                        op,
                        after: self.retry_timeout,
                    });
                }
            }
            failures += 1;
            if failures >= self.conn.len() {
                failures = 0;
                tokio::time::sleep_until(deadline.min(Instant::now() + ROUND_PAUSE)).await;
            }
        }
    }

    /// Forgets the current lease locally.
    fn drop_lease(&self, session: &mut Session) {
        session.lease = 0;
        session.granted_ttl = 0;
        session.server_ttl = 0;
        session.keeper = None;
        self.lease_id.store(0, Ordering::SeqCst);
    }

    /// Grants a new lease with the wanted TTL and makes it current.
    async fn grant(
        &self,
        session: &mut Session,
        op: &'static str,
        deadline: Instant,
    ) -> Result<i64, DcsError> {
        let ttl = self.wanted_ttl();
        let response = self
            .call(op, deadline, |mut client, _| async move {
                client.lease_grant(ttl, None).await
            })
            .await?;
        if !response.error().is_empty() || response.id() == 0 {
            return Err(DcsError::Refused {
                op,
                message: format!("lease grant failed: {}", response.error()),
            });
        }
        session.lease = response.id();
        session.granted_ttl = ttl;
        session.server_ttl = response.ttl();
        session.keeper = None;
        self.lease_id.store(response.id(), Ordering::SeqCst);
        tracing::debug!(lease = response.id(), ttl, "granted etcd lease");
        Ok(response.id())
    }

    /// The current lease, granting one if there is none.
    pub(crate) async fn ensure_lease(
        &self,
        op: &'static str,
        deadline: Instant,
    ) -> Result<i64, DcsError> {
        let mut session = self.session.lock().await;
        if session.lease != 0 {
            return Ok(session.lease);
        }
        self.grant(&mut session, op, deadline).await
    }

    /// Replaces lease `old`, which etcd no longer knows, by a new one (unless that happened
    /// already).
    pub(crate) async fn replace_lease(
        &self,
        op: &'static str,
        deadline: Instant,
        old: i64,
    ) -> Result<i64, DcsError> {
        let mut session = self.session.lock().await;
        if session.lease != old && session.lease != 0 {
            return Ok(session.lease);
        }
        self.drop_lease(&mut session);
        self.grant(&mut session, op, deadline).await
    }

    /// Sends one keep-alive for the current lease.
    async fn renew(
        &self,
        session: &mut Session,
        op: &'static str,
        deadline: Instant,
    ) -> Result<Renewal, DcsError> {
        let id = session.lease;
        // The keeper is taken out while in use: if this call is cancelled half-way, a stream
        // with an unread answer is dropped rather than reused.
        if let Some(mut keeper) = session.keeper.take() {
            if keeper.generation == self.conn.generation() {
                let budget = self
                    .conn
                    .attempt_timeout
                    .min(deadline.saturating_duration_since(Instant::now()));
                let exchange = async {
                    keeper.keeper.keep_alive().await?;
                    keeper.stream.message().await
                };
                match tokio::time::timeout(budget, exchange).await {
                    Ok(Ok(Some(response))) => {
                        if response.ttl() <= 0 {
                            return Ok(Renewal::Expired);
                        }
                        session.keeper = Some(keeper);
                        return Ok(Renewal::Alive);
                    }
                    Ok(Ok(None)) => tracing::debug!("etcd keep-alive stream ended"),
                    Ok(Err(error)) => {
                        tracing::debug!(error = %error, "etcd keep-alive stream failed")
                    }
                    Err(_) => {
                        tracing::debug!("etcd keep-alive got no answer");
                        self.conn.rotate(keeper.generation);
                    }
                }
            }
        }
        // A new stream; opening it sends the keep-alive and reads its answer.
        let opened = self
            .call(op, deadline, |mut client, generation| async move {
                let (keeper, stream) = client.lease_keep_alive(id).await?;
                Ok(Keeper {
                    generation,
                    keeper,
                    stream,
                })
            })
            .await;
        match opened {
            Ok(keeper) => {
                session.keeper = Some(keeper);
                Ok(Renewal::Alive)
            }
            Err(error) if lease_gone(&error) => Ok(Renewal::Expired),
            Err(error) => Err(error),
        }
    }

    /// The `keepalive` operation.
    pub(crate) async fn keepalive(
        &self,
        op: &'static str,
        deadline: Instant,
    ) -> Result<spilo_sdk::SessionInfo, DcsError> {
        let mut session = self.session.lock().await;
        let wanted = self.wanted_ttl();
        // The lease a TTL change replaced: the daemon had a cycle (with `new_session` reported)
        // to bind its leader and member keys to the new lease, so what is left on it goes now.
        if session.retired != 0 && session.reported == session.lease {
            let old = std::mem::take(&mut session.retired);
            self.revoke_best_effort(op, old, deadline).await;
        }
        if session.lease == 0 {
            self.grant(&mut session, op, deadline).await?;
        } else if session.granted_ttl != wanted {
            // A TTL change: a new lease, and the old one kept alive until the next keep-alive.
            // Revoking it now would delete the leader key with it and open a leader race the
            // holder may lose; instead the daemon re-attaches the key (one transaction) first.
            let old = session.lease;
            if session.retired != 0 {
                let older = std::mem::take(&mut session.retired);
                self.revoke_best_effort(op, older, deadline).await;
            }
            self.grant(&mut session, op, deadline).await?;
            session.retired = old;
        } else {
            match self.renew(&mut session, op, deadline).await? {
                Renewal::Alive => {}
                Renewal::Expired => {
                    tracing::warn!(
                        lease = session.lease,
                        "etcd lease expired, granting a new one"
                    );
                    self.drop_lease(&mut session);
                    self.grant(&mut session, op, deadline).await?;
                }
            }
        }
        let new_session = session.lease != session.reported;
        session.reported = session.lease;
        Ok(spilo_sdk::SessionInfo {
            id: session.lease,
            new_session,
            granted_ttl: u64::try_from(session.server_ttl)
                .ok()
                .filter(|s| *s > 0)
                .map(std::time::Duration::from_secs),
        })
    }

    /// Revokes `lease`, logging (not returning) a failure: it expires by itself anyway.
    async fn revoke_best_effort(&self, op: &'static str, lease: i64, deadline: Instant) {
        let revoke_by = deadline.min(Instant::now() + self.conn.attempt_timeout);
        let revoked = self
            .call(op, revoke_by, |mut client, _| async move {
                client.lease_revoke(lease).await
            })
            .await;
        if let Err(error) = revoked {
            if !lease_gone(&error) {
                tracing::debug!(lease, error = %error, "could not revoke a replaced etcd lease");
            }
        }
    }

    /// The `close` operation: revoke the lease (and a replaced one still alive).
    pub(crate) async fn close(&self, op: &'static str, deadline: Instant) -> Result<(), DcsError> {
        let mut session = self.session.lock().await;
        if session.retired != 0 {
            let old = std::mem::take(&mut session.retired);
            self.revoke_best_effort(op, old, deadline).await;
        }
        let id = session.lease;
        if id == 0 {
            return Ok(());
        }
        let revoked = self
            .call(op, deadline, |mut client, _| async move {
                client.lease_revoke(id).await
            })
            .await;
        match revoked {
            Ok(_) => {
                self.drop_lease(&mut session);
                Ok(())
            }
            Err(error) if lease_gone(&error) => {
                self.drop_lease(&mut session);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}
