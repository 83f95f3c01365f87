//! The daemon's session: one etcd lease, granted lazily by the first call that needs it.
//!
//! Invariants: at most one lease is current; `lease_id` mirrors it for readers that must not
//! wait for the session lock (`snapshot`'s `owned_by_us`); a keep-alive that finds the lease
//! gone grants a new one and reports `new_session`; a TTL change takes effect by granting a new
//! lease at the next keep-alive, and the old one is revoked (best effort) one keep-alive later,
//! once the daemon has moved its leader and member keys to the new lease: revoking it at once
//! would delete the leader key and start a leader race.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use serde_json::json;
use spilo_sdk::plugin::PluginError;
use spilo_sdk::SessionInfo;

use crate::client::{self, int, Client, Failure};

/// Whole seconds for a lease TTL: rounded up, at least 1.
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis().div_ceil(1000).max(1)).unwrap_or(i64::MAX)
}

/// The lease as last granted.
#[derive(Default)]
struct Lease {
    /// Current lease id; 0 when there is none.
    id: i64,
    /// The TTL (seconds) it was asked for with.
    granted_ttl: i64,
    /// The TTL (seconds) etcd answered the grant with (0: not said).
    server_ttl: i64,
    /// The lease id the last keep-alive reported, to tell new sessions.
    reported: i64,
    /// The lease a TTL change replaced, revoked at the next keep-alive; 0 when none.
    retired: i64,
}

/// The lease of this daemon.
pub(crate) struct Session {
    lease: Mutex<Lease>,
    /// Mirror of the current lease id.
    lease_id: AtomicI64,
    /// The wanted TTL in milliseconds.
    ttl_ms: AtomicU64,
}

impl Session {
    pub(crate) fn new(ttl: Duration) -> Session {
        Session {
            lease: Mutex::new(Lease::default()),
            lease_id: AtomicI64::new(0),
            ttl_ms: AtomicU64::new(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The current lease id, 0 when there is none.
    pub(crate) fn current(&self) -> i64 {
        self.lease_id.load(Ordering::SeqCst)
    }

    pub(crate) fn set_ttl(&self, ttl: Duration) {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.ttl_ms.store(ms, Ordering::SeqCst);
    }

    fn wanted_ttl(&self) -> i64 {
        ttl_secs(Duration::from_millis(self.ttl_ms.load(Ordering::SeqCst)))
    }

    /// The lease lock, waited for at most until `deadline` (a call holding it for long, e.g. a
    /// keep-alive against a silent endpoint, must not make other calls miss their deadlines).
    fn lock_by(&self, deadline: Instant) -> Result<MutexGuard<'_, Lease>, Failure> {
        loop {
            match self.lease.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(TryLockError::Poisoned(poisoned)) => return Ok(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) if Instant::now() >= deadline => {
                    return Err(Failure::Transport {
                        message: "session busy with another call until the deadline".into(),
                        timed_out: true,
                    })
                }
                Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    fn forget(&self, lease: &mut Lease) {
        lease.id = 0;
        lease.granted_ttl = 0;
        lease.server_ttl = 0;
        self.lease_id.store(0, Ordering::SeqCst);
    }

    /// Grants a lease with the wanted TTL and makes it current.
    fn grant(&self, client: &Client, lease: &mut Lease, deadline: Instant) -> Result<i64, Failure> {
        let ttl = self.wanted_ttl();
        let answer = client.call(
            "lease grant",
            "/v3/lease/grant",
            &json!({"TTL": ttl}),
            deadline,
        )?;
        let id = int(&answer, "ID")?;
        if id == 0 {
            let why = answer["error"].as_str().unwrap_or("no lease id");
            return Err(Failure::Refused(format!("lease grant failed: {why}")));
        }
        lease.id = id;
        lease.granted_ttl = ttl;
        lease.server_ttl = int(&answer, "TTL")?;
        self.lease_id.store(id, Ordering::SeqCst);
        Ok(id)
    }

    /// The current lease, granting one if there is none.
    pub(crate) fn ensure(&self, client: &Client, deadline: Instant) -> Result<i64, Failure> {
        let mut lease = self.lock_by(deadline)?;
        if lease.id != 0 {
            return Ok(lease.id);
        }
        self.grant(client, &mut lease, deadline)
    }

    /// Replaces lease `old`, which etcd no longer knows, by a new one (unless that happened
    /// already).
    pub(crate) fn replace(
        &self,
        client: &Client,
        old: i64,
        deadline: Instant,
    ) -> Result<i64, Failure> {
        let mut lease = self.lock_by(deadline)?;
        if lease.id != old && lease.id != 0 {
            return Ok(lease.id);
        }
        self.forget(&mut lease);
        self.grant(client, &mut lease, deadline)
    }

    /// One keep-alive of the current lease: `Ok(false)` when etcd no longer knows it.
    fn renew(&self, client: &Client, id: i64, deadline: Instant) -> Result<bool, Failure> {
        // The keep-alive stream answers one message per request and ends with the request body.
        let answer = match client.call(
            "keepalive",
            "/v3/lease/keepalive",
            &json!({"ID": id.to_string()}),
            deadline,
        ) {
            Ok(answer) => answer,
            Err(Failure::LeaseGone(_)) => return Ok(false),
            Err(other) => return Err(other),
        };
        if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
            return match client::classify_stream_error(error) {
                Failure::LeaseGone(_) => Ok(false),
                other => Err(other),
            };
        }
        Ok(int(&answer["result"], "TTL")? > 0)
    }

    /// The `keepalive` operation.
    pub(crate) fn keepalive(
        &self,
        client: &Client,
        deadline: Instant,
    ) -> Result<SessionInfo, PluginError> {
        let mut lease = self.lock_by(deadline).map_err(|f| f.during("keepalive"))?;
        let wanted = self.wanted_ttl();
        let by = deadline.min(Instant::now() + Duration::from_secs(1));
        if lease.retired != 0 && lease.reported == lease.id {
            // The daemon had a cycle to re-attach its keys to the new lease.
            let old = std::mem::take(&mut lease.retired);
            let _ = revoke(client, old, by);
        }
        let result = if lease.id == 0 {
            self.grant(client, &mut lease, deadline).map(drop)
        } else if lease.granted_ttl != wanted {
            let old = lease.id;
            if lease.retired != 0 {
                let older = std::mem::take(&mut lease.retired);
                let _ = revoke(client, older, by);
            }
            self.grant(client, &mut lease, deadline)
                .map(|_| lease.retired = old)
        } else {
            match self.renew(client, lease.id, deadline) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    self.forget(&mut lease);
                    self.grant(client, &mut lease, deadline).map(drop)
                }
                Err(e) => Err(e),
            }
        };
        result.map_err(|f| f.during("keepalive"))?;
        let new_session = lease.id != lease.reported;
        lease.reported = lease.id;
        Ok(session_info(lease.id, new_session, lease.server_ttl))
    }

    /// The `close` operation: revoke the lease, so that its keys vanish now.
    pub(crate) fn close(&self, client: &Client, deadline: Instant) -> Result<(), PluginError> {
        let mut lease = self.lock_by(deadline).map_err(|f| f.during("close"))?;
        if lease.retired != 0 {
            let old = std::mem::take(&mut lease.retired);
            let _ = revoke(client, old, deadline);
        }
        if lease.id == 0 {
            return Ok(());
        }
        match revoke(client, lease.id, deadline) {
            Ok(()) | Err(Failure::LeaseGone(_)) => {
                self.forget(&mut lease);
                Ok(())
            }
            Err(e) => Err(e.during("close")),
        }
    }
}

fn revoke(client: &Client, id: i64, deadline: Instant) -> Result<(), Failure> {
    client
        .call(
            "lease revoke",
            "/v3/lease/revoke",
            &json!({"ID": id.to_string()}),
            deadline,
        )
        .map(drop)
}

/// What `keepalive` reports (the SDK 1.0 has no granted TTL; this source builds against both).
#[cfg(not(feature = "abi-1-0"))]
fn session_info(id: i64, new_session: bool, server_ttl: i64) -> SessionInfo {
    SessionInfo {
        id,
        new_session,
        granted_ttl: u64::try_from(server_ttl)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
    }
}

/// What `keepalive` reports under the ABI 1.0 SDK (the test fixture build).
#[cfg(feature = "abi-1-0")]
fn session_info(id: i64, new_session: bool, _server_ttl: i64) -> SessionInfo {
    SessionInfo { id, new_session }
}
