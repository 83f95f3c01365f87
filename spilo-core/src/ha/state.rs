//! What the HA loop publishes after every cycle. The REST API, `/metrics` and the state file
//! read only this; they never wait on PostgreSQL or the DCS.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::config::DynamicConfig;
use crate::dcs::Cluster;

/// The role the local PostgreSQL runs in, as `GET /patroni` names it (Patroni's strings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// No data directory yet.
    #[default]
    Uninitialized,
    /// Runs as the primary.
    Primary,
    /// Runs in recovery (or is not running and last ran as one).
    Replica,
    /// The leader of a standby cluster.
    StandbyLeader,
    /// Not running, and pg_control says it last ran as a primary.
    Demoted,
}

impl Role {
    /// Patroni's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Uninitialized => "uninitialized",
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
        }
    }

    /// Accepts writes (the primary; Patroni also says `master`).
    pub fn is_primary(self) -> bool {
        self == Role::Primary
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the local PostgreSQL is doing, as `GET /patroni` names it (Patroni's strings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum PgState {
    /// No postmaster.
    #[default]
    #[serde(rename = "stopped")]
    Stopped,
    /// Running and answering queries.
    #[serde(rename = "running")]
    Running,
    /// The postmaster runs but does not answer yet, or the daemon is starting it.
    #[serde(rename = "starting")]
    Starting,
    /// A requested restart is under way.
    #[serde(rename = "restarting")]
    Restarting,
    /// initdb and the first start of a new cluster.
    #[serde(rename = "initializing new cluster")]
    InitializingNewCluster,
    /// A replica is being copied from another member.
    #[serde(rename = "creating replica")]
    CreatingReplica,
}

impl PgState {
    /// Patroni's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            PgState::Stopped => "stopped",
            PgState::Running => "running",
            PgState::Starting => "starting",
            PgState::Restarting => "restarting",
            PgState::InitializingNewCluster => "initializing new cluster",
            PgState::CreatingReplica => "creating replica",
        }
    }
}

impl std::fmt::Display for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The local PostgreSQL as last observed.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PgStatus {
    /// What it is doing.
    pub state: PgState,
    /// The role it runs in.
    pub role: Role,
    /// True when the postmaster runs and answers queries.
    pub running: bool,
    /// `server_version_num`.
    pub server_version: Option<i64>,
    /// `pg_postmaster_start_time()` as text.
    pub postmaster_start_time: Option<String>,
    /// Current timeline.
    pub timeline: Option<u64>,
    /// Primary: `pg_current_wal_flush_lsn()` in bytes.
    pub wal_flush: Option<u64>,
    /// Replica: `pg_last_wal_receive_lsn()`.
    pub received: Option<u64>,
    /// Replica: `pg_last_wal_replay_lsn()`.
    pub replayed: Option<u64>,
    /// Replica: `pg_last_xact_replay_timestamp()` as text.
    pub replayed_timestamp: Option<String>,
    /// Replica: replay paused.
    pub replay_paused: bool,
    /// Replica: `streaming` or `in archive recovery`.
    pub replication_state: Option<String>,
    /// Replica: the wal receiver's `latest_end_lsn`.
    pub latest_end_lsn: Option<u64>,
    /// Primary: rows of `pg_stat_replication`.
    pub replication: Vec<ReplicationRow>,
    /// Database system identifier.
    pub sysid: Option<String>,
    /// Settings changed that need a restart (`pg_settings.pending_restart`).
    pub pending_restart: bool,
    /// The `spilo` extension's fence is armed (`spilo.fence = on`, library preloaded).
    pub fence_armed: bool,
}

impl PgStatus {
    /// The WAL position Patroni compares in the leader race: flush on a primary,
    /// max(received, replayed) on a replica.
    pub fn wal_position(&self) -> Option<u64> {
        if self.role.is_primary() {
            self.wal_flush
        } else {
            match (self.received, self.replayed) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        }
    }
}

/// One row of `pg_stat_replication`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ReplicationRow {
    /// Role name.
    pub usename: String,
    /// Standby's member name.
    pub application_name: String,
    /// Standby address.
    pub client_addr: Option<String>,
    /// `streaming`, `catchup`…
    pub state: String,
    /// `async`, `sync`, `potential`, `quorum`.
    pub sync_state: String,
    /// Sync priority.
    pub sync_priority: i64,
    /// Flush position the standby reported.
    #[serde(skip)]
    pub flush_lsn: Option<u64>,
}

/// The last decision, for logs, `GET /patroni` and `spiloctl`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DecisionReport {
    /// The actions, in words.
    pub actions: Vec<String>,
    /// Why.
    pub reasons: Vec<String>,
    /// RFC 3339 time of the decision.
    pub at: String,
    /// The actions' variant names (`promote`, `demote`), for metric labels.
    #[serde(skip)]
    pub action_kinds: Vec<&'static str>,
    /// The reasons' variant names (`leader_lock_held`), for metric labels.
    #[serde(skip)]
    pub reason_kinds: Vec<&'static str>,
}

/// Everything the daemon publishes after a cycle.
#[derive(Clone, Debug)]
pub struct NodeState {
    /// Member name.
    pub name: String,
    /// Cluster name.
    pub scope: String,
    /// `http://…/patroni` of this node.
    pub api_url: String,
    /// The local PostgreSQL.
    pub pg: PgStatus,
    /// When this node last renewed the leader key successfully (it holds the lock while this is
    /// within [`NodeState::lease_ttl`]).
    pub leader_renewed_at: Option<Instant>,
    /// The session TTL the DCS reported granting at the last keep-alive (ZooKeeper negotiates
    /// it within the server's bounds); `None` when the backend does not say.
    pub granted_ttl: Option<std::time::Duration>,
    /// The last DCS view (None until the first successful read).
    pub cluster: Option<Arc<Cluster>>,
    /// Unix time of the last successful DCS read.
    pub dcs_last_seen: Option<i64>,
    /// When the last HA cycle finished.
    pub last_cycle: Instant,
    /// This node's tags.
    pub tags: BTreeMap<String, Value>,
    /// The effective dynamic configuration.
    pub dynamic: DynamicConfig,
    /// The last decision.
    pub decision: DecisionReport,
    /// A hook vetoed this node's promotion in the current leader race (shown in `/patroni`
    /// as `promotion_veto`, so that peers skip this node).
    pub promotion_veto: Option<String>,
    /// The member `choose_failover_candidate` picked in the current leader race.
    pub hook_choice: Option<String>,
    /// Hook counters: calls, errors, timeouts, dropped, callbacks, callback errors.
    pub hook_stats: [u64; 6],
    /// A scheduled restart (the `POST /restart` body plus `schedule`), if any.
    pub scheduled_restart: Option<Value>,
    /// Loop and DCS timings for `/metrics`.
    pub stats: LoopStats,
    /// The loop's current phase and since when (updated as the loop moves, not per cycle).
    pub phase: Arc<crate::ha::phase::PhaseTracker>,
    /// The WAL archiver's counters, when this node archives (a `storage:` section).
    pub archive: Option<Arc<crate::backup::archiver::ArchiveStats>>,
    /// The counters of the load balancers this node drives (`load_balancers:`).
    pub load_balancers: Vec<Arc<crate::lb::driver::LbStats>>,
    /// The counters of the built-in proxies this daemon runs (`type: proxy`).
    pub proxies: Vec<Arc<crate::proxy::stats::ProxyStats>>,
}

/// Upper bounds (seconds) of the loop-duration histogram buckets.
pub const LOOP_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Counters the loop keeps for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoopStats {
    /// Cycles run.
    pub cycles: u64,
    /// Cycles whose duration was at most `LOOP_BUCKETS[i]` (not cumulative).
    pub buckets: [u64; 10],
    /// Sum of cycle durations, seconds.
    pub sum_secs: f64,
    /// Duration of the last DCS keep-alive + read, seconds.
    pub dcs_rtt_secs: Option<f64>,
    /// DCS operations that failed.
    pub dcs_errors: u64,
}

impl LoopStats {
    /// Record one cycle.
    pub fn observe(&mut self, secs: f64) {
        self.cycles += 1;
        self.sum_secs += secs;
        if let Some(i) = LOOP_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
    }
}

impl NodeState {
    /// An empty state before the first cycle.
    pub fn new(name: &str, scope: &str, api_url: &str) -> NodeState {
        NodeState {
            name: name.to_string(),
            scope: scope.to_string(),
            api_url: api_url.to_string(),
            pg: PgStatus {
                state: PgState::Stopped,
                role: Role::Uninitialized,
                ..PgStatus::default()
            },
            leader_renewed_at: None,
            granted_ttl: None,
            cluster: None,
            dcs_last_seen: None,
            last_cycle: crate::clock::now(),
            tags: BTreeMap::new(),
            dynamic: DynamicConfig::default(),
            decision: DecisionReport::default(),
            promotion_veto: None,
            hook_choice: None,
            hook_stats: [0; 6],
            scheduled_restart: None,
            stats: LoopStats::default(),
            phase: Arc::new(crate::ha::phase::PhaseTracker::default()),
            archive: None,
            load_balancers: Vec::new(),
            proxies: Vec::new(),
        }
    }

    /// True while this node holds the leader lock: renewed within [`NodeState::lease_ttl`].
    pub fn holds_lock(&self, now: Instant) -> bool {
        let ttl = self.lease_ttl();
        self.leader_renewed_at
            .map(|t| now.saturating_duration_since(t) < ttl)
            .unwrap_or(false)
    }

    /// The TTL this node's lease and fence deadlines count with: see [`lease_ttl`].
    pub fn lease_ttl(&self) -> std::time::Duration {
        lease_ttl(
            std::time::Duration::from_secs(self.dynamic.ttl),
            self.granted_ttl,
        )
    }

    /// True when this node is paused.
    pub fn paused(&self) -> bool {
        self.dynamic.pause
    }
}

/// The channel the loop publishes through.
pub type StateTx = tokio::sync::watch::Sender<Arc<NodeState>>;
/// The receiving end, cloned into the REST API.
pub type StateRx = tokio::sync::watch::Receiver<Arc<NodeState>>;

/// The TTL to count lease and fence deadlines with: the configured `ttl`, or the one the DCS
/// granted when that is shorter (a ZooKeeper server clamps the session timeout to its
/// `maxSessionTimeout`; believing the configured one would keep a primary writing after its
/// session, and its leader key, are gone).
pub fn lease_ttl(
    configured: std::time::Duration,
    granted: Option<std::time::Duration>,
) -> std::time::Duration {
    granted.map_or(configured, |g| configured.min(g))
}

#[cfg(test)]
mod lease_ttl_tests {
    use super::lease_ttl;
    use std::time::Duration;

    #[test]
    fn deadlines_count_with_the_shorter_of_configured_and_granted_ttl() {
        let s = Duration::from_secs;
        assert_eq!(lease_ttl(s(30), None), s(30));
        assert_eq!(lease_ttl(s(30), Some(s(20))), s(20), "server clamped it");
        assert_eq!(
            lease_ttl(s(10), Some(s(40))),
            s(10),
            "a longer grant is no reason to hold on longer than configured"
        );
    }
}
