//! The DCS contract.
//!
//! Invariants every implementation keeps:
//! - one **session** per daemon (an etcd lease, a ZooKeeper session) with a time-to-live of
//!   `ttl`; the member key and the leader key are bound to it, so both vanish when it expires;
//! - the leader key is created only if absent, and deleted only while it still holds our name;
//! - every call returns within the deadline the backend was built with (`retry_timeout`), with
//!   an error rather than a hang.

use std::time::Duration;

#[cfg(feature = "host")]
use async_trait::async_trait;

/// One key read from the store, relative to the cluster prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Key below the cluster prefix, without a leading `/`: `leader`, `members/n1`, `config`.
    pub key: String,
    /// The raw value.
    pub value: Vec<u8>,
    /// The store's version of the key (etcd `mod_revision`, ZooKeeper znode version), used for
    /// compare-and-set.
    pub version: i64,
    /// True when the key is bound to *this* daemon's current session.
    pub owned_by_us: bool,
}

/// A read of every key under the cluster prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's revision at the time of the read (0 when the store has none).
    pub revision: i64,
    /// The keys, in no particular order.
    pub entries: Vec<Entry>,
}

impl Snapshot {
    /// The entry for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// The condition of a compare-and-set write or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cas {
    /// Unconditional.
    Any,
    /// Only if the key does not exist.
    Absent,
    /// Only if the key exists with exactly this version.
    Version(i64),
}

/// What a keep-alive reports about the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The store's id of the session (etcd lease id, ZooKeeper session id).
    pub id: i64,
    /// True when the previous session had expired and a new one was made: keys bound to the old
    /// one are gone, and the member key must be written again.
    pub new_session: bool,
}

/// A failed DCS operation.
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// No endpoint could be reached.
    #[error("DCS unreachable during {op}: {message}")]
    Unreachable {
        /// The operation that failed.
        op: &'static str,
        /// What the client library said.
        message: String,
    },
    /// The operation did not finish within its deadline.
    #[error("DCS {op} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The store answered with an error.
    #[error("DCS refused {op}: {message}")]
    Refused {
        /// The operation that failed.
        op: &'static str,
        /// What the store said.
        message: String,
    },
}

/// A distributed configuration store holding one cluster's keys.
///
/// The daemon calls these from one task at a time; implementations must still be `Sync`
/// because the REST API and `spiloctl` read through the same object.
#[cfg(feature = "host")]
#[async_trait]
pub trait Dcs: Send + Sync + 'static {
    /// The backend's name as written in the config (`etcd3`, `zookeeper`).
    fn backend(&self) -> &'static str;

    /// Read every key under the cluster prefix, linearizably.
    async fn snapshot(&self) -> Result<Snapshot, DcsError>;

    /// Renew this daemon's session, making a new one if it expired. Called at most once per
    /// HA cycle; this *is* the leader-key renewal, since the leader key is bound to the session.
    async fn keepalive(&self) -> Result<SessionInfo, DcsError>;

    /// Write `members/<name>` bound to the session.
    async fn put_member(&self, value: &[u8]) -> Result<(), DcsError>;

    /// Create the leader key holding our name, bound to the session, only if it is absent.
    /// `Ok(false)` means somebody else holds it.
    async fn acquire_leader(&self) -> Result<bool, DcsError>;

    /// Bind an existing leader key that holds our name to the current session (after a new
    /// session was made), or create it if absent. `Ok(false)` when another name holds it.
    async fn reattach_leader(&self) -> Result<bool, DcsError>;

    /// Delete the leader key only if it still holds our name. `Ok(false)` when it did not.
    async fn release_leader(&self) -> Result<bool, DcsError>;

    /// Write a persistent key. `Ok(false)` when the compare-and-set condition failed.
    async fn put(&self, key: &str, value: &[u8], cas: Cas) -> Result<bool, DcsError>;

    /// Delete a key. `Ok(false)` when the compare-and-set condition failed.
    async fn delete(&self, key: &str, cas: Cas) -> Result<bool, DcsError>;

    /// A counter bumped by the backend whenever the `leader`, `config`, `failover` or
    /// `initialize` key changes (and once after a broken watch is restored); the HA loop waits
    /// on it to wake early. Member keys do not bump it: they change with every WAL position.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Change the session time-to-live; the next keep-alive makes a session with the new one.
    fn set_ttl(&self, ttl: Duration);

    /// End the session now, so that the member key (and the leader key, if held) vanish at once.
    async fn close(&self) -> Result<(), DcsError>;
}
