//! The pure HA decision: `(cluster view, local view, policy, now) -> Decision`.
//!
//! No DCS, no PostgreSQL, no clock and no randomness in here: everything arrives as a value, and
//! the answer is a list of actions *with the reasons for them*. Failover, recovery and bootstrap
//! are not separate routines: they are what this function returns when the observed state is
//! not what it should be. Each cycle is idempotent; the next cycle is the retry.

use std::fmt;
use std::time::Duration;

use crate::api::client::PeerStatus;
use crate::dcs::Cluster;
pub use crate::ha::refusal::NotHealthiest;

/// Settings that shape decisions.
#[derive(Clone, Debug)]
pub struct Policy {
    /// This member's name.
    pub name: String,
    /// Session/leader TTL.
    pub ttl: Duration,
    /// Time between cycles.
    pub loop_wait: Duration,
    /// DCS/PostgreSQL deadline.
    pub retry_timeout: Duration,
    /// Leader-race lag limit in bytes.
    pub maximum_lag_on_failover: u64,
    /// How long a crashed primary holding the lease may take to come back before failing over.
    pub primary_start_timeout: Duration,
    /// Refuse to promote with a timeline behind the cluster's.
    pub check_timeline: bool,
    /// pg_rewind former primaries.
    pub use_pg_rewind: bool,
    /// Re-copy when rewind fails.
    pub remove_data_directory_on_rewind_failure: bool,
    /// This node's effective failover priority (0 = never promote).
    pub failover_priority: i64,
    /// Maintenance mode.
    pub paused: bool,
    /// The `replicatefrom` tag: stream from this member instead of the leader (cascading).
    pub replicatefrom: Option<String>,
    /// `synchronous_mode` is on: only the standbys named in the `sync` key (and its leader) may
    /// be promoted automatically.
    pub synchronous: bool,
    /// `synchronous_mode: quorum`: a candidate also needs `quorum` voters not ahead of it.
    pub quorum: bool,
    /// The dynamic configuration has a `standby_cluster` section: the leader follows the other
    /// cluster (a standby leader) and nobody promotes.
    pub standby_cluster: bool,
    /// An empty node may restore the newest backup while the cluster has no leader
    /// (`spilo_restore` is a replica method, with `no_leader`, and there is a store).
    pub restore_without_leader: bool,
}

/// Whom a replica follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Nobody (read-only, replaying what it has).
    Nobody,
    /// This member of the cluster.
    Member(String),
    /// The other cluster a standby cluster follows (`standby_cluster`: its primary, its
    /// archive, or both): what the standby leader follows.
    StandbySource,
}

impl Target {
    /// The member, when it is one.
    pub fn member(&self) -> Option<&str> {
        match self {
            Target::Member(m) => Some(m),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Nobody => f.write_str("nobody"),
            Target::Member(m) => f.write_str(m),
            Target::StandbySource => f.write_str("the standby cluster's source"),
        }
    }
}

/// What is in the data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDir {
    /// Missing or empty.
    Empty,
    /// A cluster exists.
    Initialized {
        /// Its system identifier, when known.
        sysid: Option<String>,
        /// pg_control says it last ran as a primary (`in production` or `shut down`).
        was_primary: bool,
        /// pg_control says it did not shut down cleanly (`in production`, `in crash recovery`).
        crashed: bool,
        /// The timeline in pg_control.
        timeline: Option<u64>,
    },
}

/// The local PostgreSQL as observed at the start of the cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pg {
    /// Not running.
    Stopped,
    /// The postmaster runs but does not answer queries (starting, or stuck).
    Unresponsive,
    /// Running and answering.
    Running {
        /// `pg_is_in_recovery()` is false.
        primary: bool,
        /// Current timeline.
        timeline: Option<u64>,
        /// WAL position (flush on primary, max(receive, replay) on a replica).
        wal_position: Option<u64>,
        /// A replica's wal receiver is streaming.
        streaming: bool,
    },
}

/// A long action running in the background while the loop goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// initdb, start, roles.
    Bootstrap,
    /// pg_basebackup then start as a replica.
    Clone,
    /// pg_rewind (after single-user crash recovery) then start as a replica.
    Rewind,
    /// pg_ctl start.
    Start,
    /// pg_ctl promote.
    Promote,
    /// A requested restart (stop, start in the same role).
    Restart,
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            JobKind::Bootstrap => "bootstrap",
            JobKind::Clone => "replica creation",
            JobKind::Rewind => "rewind",
            JobKind::Start => "start",
            JobKind::Promote => "promote",
            JobKind::Restart => "restart",
        };
        f.write_str(s)
    }
}

/// Everything the node knows about itself this cycle.
#[derive(Clone, Debug)]
pub struct LocalView {
    /// The session keep-alive of this cycle succeeded.
    pub session_ok: bool,
    /// The data directory.
    pub data: DataDir,
    /// PostgreSQL.
    pub pg: Pg,
    /// The background job, if one runs.
    pub job: Option<JobKind>,
    /// Whom PostgreSQL is configured to follow (`None`: unknown).
    pub upstream: Option<Target>,
    /// A rewind/re-copy is required before this node can follow anyone (it ran as primary on a
    /// timeline the leader does not share).
    pub needs_rewind: bool,
    /// A rewind failed and re-copying is not allowed: wait for the operator.
    pub rewind_failed: bool,
    /// Since when PostgreSQL has been down while we hold the lease (for primary_start_timeout).
    pub down_since: Option<Duration>,
    /// Peers' answers to `GET /patroni`: asked only when [`peers_needed`] says so, and
    /// [`Peers::NotQueried`] otherwise — never an empty list standing for "not asked", which
    /// would read as "no rivals".
    pub peers: Peers,
    /// When we last renewed the lease while holding the leader key (monotonic, as a duration
    /// since the daemon started), None when we do not hold it.
    pub lease_renewed_at: Option<Duration>,
    /// Wall-clock time (Unix seconds), for scheduled switchovers.
    pub unix_now: i64,
    /// A replica copy must come from the leader, not from a `clonefrom` member
    /// (`reinitialize` with `from_leader`).
    pub clone_from_leader: bool,
    /// The `before_promote` hook / `pre_promote` answer for this leaderless period.
    pub promotion_gate: PromotionGate,
    /// The `choose_failover_candidate` answer for this leaderless period.
    pub candidate_choice: CandidateChoice,
    /// This node's bootstrap failed, with the cause: it gives the bootstrap up.
    pub bootstrap_failed: Option<String>,
}

/// What this cycle knows of its peers.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Peers {
    /// They were not asked this cycle: nothing is known of them.
    #[default]
    NotQueried,
    /// Their answers (unreachable peers included, marked so).
    Queried(Vec<PeerStatus>),
}

impl Peers {
    /// The answers; empty when not asked.
    pub fn list(&self) -> &[PeerStatus] {
        match self {
            Peers::NotQueried => &[],
            Peers::Queried(v) => v,
        }
    }
}

/// Whether this cycle must ask its peers for their state: in a leader race (no leader, this
/// node a running replica not named as the failover candidate), or as a leader (a primary, or
/// a standby cluster's standby leader) asked to hand over (to find a healthy candidate).
/// Nothing else reads them. The runner and the simulation both ask this function.
pub fn peers_needed(cluster: Option<&Cluster>, pg: &Pg, me: &str, job_running: bool) -> bool {
    let (Some(c), Pg::Running { primary, .. }) = (cluster, pg) else {
        return false;
    };
    if job_running {
        return false;
    }
    let candidate = c.failover.as_ref().and_then(|f| f.value.member.as_deref());
    let leader_is_me = c.leader.as_ref().map(|l| l.name == me).unwrap_or(false);
    (!primary && c.leader.is_none() && candidate != Some(me))
        || (c.failover.is_some() && leader_is_me)
}

/// May this node promote, as far as the site's hooks are concerned?
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PromotionGate {
    /// No hook objects (or none is configured).
    #[default]
    Open,
    /// The hook was asked and has not answered yet.
    Pending,
    /// A hook vetoed, with its reason.
    Vetoed(String),
}

/// Which candidate the site's hook picked among [`failover_candidates`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CandidateChoice {
    /// No preference (or no hook): the healthiest wins.
    #[default]
    Default,
    /// The hook was asked and has not answered yet.
    Pending,
    /// This member.
    Member(String),
    /// Nobody may take over (the hook failed with `on_error: deny`).
    Nobody(String),
}

/// Why the node does what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The DCS could not be read or the session not renewed.
    DcsUnreachable,
    /// This node holds the leader key and renewed it.
    LeaderLockHeld,
    /// Another member holds the leader key.
    FollowingLeader(String),
    /// The cluster has no leader and this node is the healthiest candidate.
    HealthiestAfterLeaderExpired,
    /// The cluster has no leader, and this node is not the one to take it.
    NotHealthiest(NotHealthiest),
    /// Nobody has initialised the cluster yet.
    ClusterUninitialized,
    /// The bootstrap race was lost or is in progress elsewhere.
    WaitingForBootstrap,
    /// This node has no data and the leader exists.
    NoDataDirectory,
    /// A job runs.
    JobInProgress(JobKind),
    /// PostgreSQL is down while this node holds the lease.
    CrashedWhileLeader,
    /// PostgreSQL stayed down past primary_start_timeout.
    PrimaryStartTimeout,
    /// PostgreSQL runs as primary but another member holds the key.
    PrimaryWithoutLock(String),
    /// PostgreSQL runs as a replica while we hold the key.
    PromotionPending,
    /// The timeline of this former primary diverged from the leader's.
    TimelineDiverged,
    /// A former primary waits for the new leader to finish its promotion (post-promote
    /// checkpoint, new timeline published) before rewinding from it.
    WaitingForLeaderTimeline(String),
    /// The data directory belongs to another cluster.
    SystemIdMismatch {
        /// Ours.
        local: String,
        /// The cluster's.
        cluster: String,
    },
    /// Maintenance mode.
    Paused,
    /// This member may not be promoted.
    NoFailover,
    /// The rewind failed and re-copying is not allowed.
    RewindFailed,
    /// The leader key holds our name under an older session (the daemon restarted).
    LeaderKeyFromPreviousSession,
    /// Streaming from this member (`replicatefrom`), not from the leader.
    ReplicatingFrom(String),
    /// A switchover or failover was requested and a healthy candidate exists.
    ManualFailover {
        /// The named candidate, if any.
        candidate: Option<String>,
    },
    /// A scheduled switchover is not due yet.
    ScheduledSwitchover(String),
    /// A failover request that cannot or need not be carried out was cleared.
    FailoverRequestCleared(String),
    /// A `before_promote` hook or `pre_promote` vetoed this node's promotion.
    PromotionVetoed(String),
    /// Waiting for a decision hook's answer.
    WaitingForHook(&'static str),
    /// `choose_failover_candidate` picked this member.
    ChosenByHook(String),
    /// `choose_failover_candidate` allowed nobody.
    NoCandidateChosen(String),
    /// This node's bootstrap failed (the cause).
    BootstrapFailed(String),
    /// A decision needs the other members' state, which was not asked this cycle.
    PeersNotQueried,
    /// This node leads a standby cluster: it follows the other cluster and never promotes.
    StandbyLeader,
    /// No leader to copy from: the newest backup is restored (`no_leader`).
    RestoreWithoutLeader,
    /// `standby_cluster` is set while this node runs as a primary: a running primary is not
    /// turned into a standby (it would need a rewind against another cluster); it stays primary.
    StandbyClusterOnPrimary,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DcsUnreachable => write!(f, "DCS is not accessible"),
            Reason::LeaderLockHeld => write!(f, "I hold the leader lock"),
            Reason::FollowingLeader(l) => write!(f, "following leader {l}"),
            Reason::HealthiestAfterLeaderExpired => {
                write!(f, "no leader and I am the healthiest member")
            }
            Reason::NotHealthiest(why) => {
                write!(f, "no leader, but I am not the healthiest member: {why}")
            }
            Reason::ClusterUninitialized => write!(f, "cluster is not initialized"),
            Reason::WaitingForBootstrap => write!(f, "waiting for the leader to bootstrap"),
            Reason::NoDataDirectory => write!(f, "no data directory and a leader exists"),
            Reason::JobInProgress(j) => write!(f, "{j} in progress"),
            Reason::CrashedWhileLeader => {
                write!(f, "PostgreSQL is down while I hold the leader lock")
            }
            Reason::PrimaryStartTimeout => {
                write!(f, "PostgreSQL did not start within primary_start_timeout")
            }
            Reason::PrimaryWithoutLock(l) => {
                write!(f, "running as primary but {l} holds the leader lock")
            }
            Reason::PromotionPending => write!(
                f,
                "I hold the leader lock and PostgreSQL is still a replica"
            ),
            Reason::TimelineDiverged => write!(f, "my timeline diverged from the leader's"),
            Reason::WaitingForLeaderTimeline(l) => {
                write!(
                    f,
                    "former primary waiting for leader {l} to finish promotion before rewinding"
                )
            }
            Reason::SystemIdMismatch { local, cluster } => {
                write!(
                    f,
                    "data directory system id {local} differs from the cluster's {cluster}"
                )
            }
            Reason::Paused => write!(f, "cluster is paused"),
            Reason::NoFailover => write!(f, "I am not allowed to promote (nofailover)"),
            Reason::RewindFailed => write!(f, "pg_rewind failed and re-copying is not allowed"),
            Reason::LeaderKeyFromPreviousSession => {
                write!(f, "the leader key holds my name from a previous session")
            }
            Reason::ReplicatingFrom(m) => write!(f, "replicating from {m} (replicatefrom)"),
            Reason::ManualFailover { candidate: Some(c) } => {
                write!(f, "manual switchover to {c} requested")
            }
            Reason::ManualFailover { candidate: None } => write!(f, "manual switchover requested"),
            Reason::ScheduledSwitchover(at) => write!(f, "switchover scheduled at {at}"),
            Reason::FailoverRequestCleared(why) => write!(f, "failover request cleared: {why}"),
            Reason::PromotionVetoed(why) => write!(f, "promotion vetoed by a hook: {why}"),
            Reason::WaitingForHook(h) => write!(f, "waiting for the {h} hook to answer"),
            Reason::ChosenByHook(m) => write!(f, "choose_failover_candidate picked {m}"),
            Reason::NoCandidateChosen(why) => write!(f, "no failover candidate: {why}"),
            Reason::BootstrapFailed(why) => write!(f, "bootstrap failed: {why}"),
            Reason::PeersNotQueried => {
                write!(f, "the other members' state was not asked this cycle")
            }
            Reason::RestoreWithoutLeader => write!(
                f,
                "no leader to copy from: restoring the newest backup (spilo_restore, no_leader)"
            ),
            Reason::StandbyLeader => write!(
                f,
                "I am the standby leader: following the standby cluster's source"
            ),
            Reason::StandbyClusterOnPrimary => write!(
                f,
                "standby_cluster is set but I run as a primary: staying primary (a primary cluster is not demoted into a standby cluster; rebuild it as one)"
            ),
        }
    }
}

/// How to demote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoteMode {
    /// Immediate stop, keep nothing: another node holds the key or we lost it.
    Immediate,
    /// Immediate stop, then start read-only following nobody (DCS lost).
    Offline,
    /// Switchover: checkpoint, fast stop (standbys receive the shutdown checkpoint), record
    /// it in `status`, release the leader key.
    Graceful,
}

/// One thing to do. Actions run in order; a failed one stops the rest of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the leader key if absent; the plan stops if somebody else got it.
    AcquireLeader,
    /// Bind the leader key holding our name to our current session.
    ReattachLeader,
    /// Delete the leader key if it still holds our name.
    ReleaseLeader,
    /// Start the bootstrap job (initdb…), then write `initialize` and `config`.
    StartBootstrap,
    /// Start copying the data directory from this member (or, for a standby cluster's leader,
    /// from the other cluster).
    StartClone(Target),
    /// Start rewinding from the leader (or re-copying when rewind is impossible).
    StartRewind(String),
    /// Start PostgreSQL as primary (restart in place, holding the lease).
    StartPrimary,
    /// Start PostgreSQL as a replica following this target.
    StartReplica(Target),
    /// Point a running replica at this target and reload.
    Follow(Target),
    /// Promote the running replica.
    Promote,
    /// Stop PostgreSQL to stop accepting writes.
    Demote(DemoteMode),
    /// Write `initialize` with the local system identifier.
    WriteInitialize(String),
    /// Write the leader's bookkeeping: `status`, `history`, `config` if missing, slots.
    LeaderHousekeeping,
    /// Write `{}` to the `failover` key if it still has this version.
    ClearFailover(i64),
    /// Undo a failed bootstrap as Patroni does: stop the PostgreSQL it started, remove the data
    /// directory it made, release the leader key and an `initialize` key holding this data
    /// directory's system id, so that another node can bootstrap.
    AbandonBootstrap,
    /// Give up: the node must not run (wrong cluster, failed bootstrap).
    Fatal(String),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::AcquireLeader => write!(f, "acquire leader lock"),
            Action::ReattachLeader => write!(f, "re-attach leader lock to my session"),
            Action::ReleaseLeader => write!(f, "release leader lock"),
            Action::StartBootstrap => write!(f, "bootstrap a new cluster"),
            Action::StartClone(m) => write!(f, "create replica from {m}"),
            Action::StartRewind(m) => write!(f, "rewind from {m}"),
            Action::StartPrimary => write!(f, "start PostgreSQL as primary"),
            Action::StartReplica(Target::Nobody) => {
                write!(f, "start PostgreSQL as replica following nobody")
            }
            Action::StartReplica(m) => write!(f, "start PostgreSQL as replica of {m}"),
            Action::Follow(m) => write!(f, "follow {m}"),
            Action::Promote => write!(f, "promote"),
            Action::Demote(DemoteMode::Immediate) => write!(f, "demote (immediate stop)"),
            Action::Demote(DemoteMode::Offline) => {
                write!(f, "demote (read-only, following nobody)")
            }
            Action::Demote(DemoteMode::Graceful) => write!(f, "demote gracefully and hand over"),
            Action::ClearFailover(_) => write!(f, "clear the failover request"),
            Action::WriteInitialize(s) => write!(f, "write initialize={s}"),
            Action::LeaderHousekeeping => write!(f, "update leader status"),
            Action::AbandonBootstrap => write!(
                f,
                "give the bootstrap up (stop PostgreSQL, remove the data directory, release the keys)"
            ),
            Action::Fatal(m) => write!(f, "exit: {m}"),
        }
    }
}

impl Reason {
    /// The variant's name alone (`snake_case`): what a metric label may carry (the free text of
    /// [`std::fmt::Display`] holds LSNs and names, which would make a label per value).
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::DcsUnreachable => "dcs_unreachable",
            Reason::LeaderLockHeld => "leader_lock_held",
            Reason::FollowingLeader(..) => "following_leader",
            Reason::HealthiestAfterLeaderExpired => "healthiest_after_leader_expired",
            Reason::NotHealthiest(..) => "not_healthiest",
            Reason::ClusterUninitialized => "cluster_uninitialized",
            Reason::WaitingForBootstrap => "waiting_for_bootstrap",
            Reason::NoDataDirectory => "no_data_directory",
            Reason::JobInProgress(..) => "job_in_progress",
            Reason::CrashedWhileLeader => "crashed_while_leader",
            Reason::PrimaryStartTimeout => "primary_start_timeout",
            Reason::PrimaryWithoutLock(..) => "primary_without_lock",
            Reason::PromotionPending => "promotion_pending",
            Reason::TimelineDiverged => "timeline_diverged",
            Reason::WaitingForLeaderTimeline(..) => "waiting_for_leader_timeline",
            Reason::SystemIdMismatch { .. } => "system_id_mismatch",
            Reason::Paused => "paused",
            Reason::NoFailover => "no_failover",
            Reason::RewindFailed => "rewind_failed",
            Reason::LeaderKeyFromPreviousSession => "leader_key_from_previous_session",
            Reason::ReplicatingFrom(..) => "replicating_from",
            Reason::ManualFailover { .. } => "manual_failover",
            Reason::ScheduledSwitchover(..) => "scheduled_switchover",
            Reason::FailoverRequestCleared(..) => "failover_request_cleared",
            Reason::PromotionVetoed(..) => "promotion_vetoed",
            Reason::WaitingForHook(..) => "waiting_for_hook",
            Reason::ChosenByHook(..) => "chosen_by_hook",
            Reason::NoCandidateChosen(..) => "no_candidate_chosen",
            Reason::BootstrapFailed(..) => "bootstrap_failed",
            Reason::PeersNotQueried => "peers_not_queried",
            Reason::StandbyLeader => "standby_leader",
            Reason::RestoreWithoutLeader => "restore_without_leader",
            Reason::StandbyClusterOnPrimary => "standby_cluster_on_primary",
        }
    }
}

impl Action {
    /// The variant's name alone (`snake_case`): what a metric label may carry (the free text of
    /// [`std::fmt::Display`] holds LSNs and names, which would make a label per value).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::AcquireLeader => "acquire_leader",
            Action::ReattachLeader => "reattach_leader",
            Action::ReleaseLeader => "release_leader",
            Action::StartBootstrap => "start_bootstrap",
            Action::StartClone(..) => "start_clone",
            Action::StartRewind(..) => "start_rewind",
            Action::StartPrimary => "start_primary",
            Action::StartReplica(..) => "start_replica",
            Action::Follow(..) => "follow",
            Action::Promote => "promote",
            Action::Demote(..) => "demote",
            Action::WriteInitialize(..) => "write_initialize",
            Action::LeaderHousekeeping => "leader_housekeeping",
            Action::ClearFailover(..) => "clear_failover",
            Action::AbandonBootstrap => "abandon_bootstrap",
            Action::Fatal(..) => "fatal",
        }
    }
}

/// The answer of [`decide`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// Why.
    pub reasons: Vec<Reason>,
}

impl Decision {
    fn act(mut self, a: Action) -> Self {
        self.actions.push(a);
        self
    }
    fn because(mut self, r: Reason) -> Self {
        self.reasons.push(r);
        self
    }
    /// One line for the log.
    pub fn summary(&self) -> String {
        let acts: Vec<String> = self.actions.iter().map(ToString::to_string).collect();
        let why: Vec<String> = self.reasons.iter().map(ToString::to_string).collect();
        let acts = if acts.is_empty() {
            "no action".to_string()
        } else {
            acts.join(", ")
        };
        format!("{acts}: {}", why.join("; "))
    }
}

/// Decide what to do this cycle. `now` is the monotonic time since the daemon started.
pub fn decide(
    cluster: Option<&Cluster>,
    local: &LocalView,
    policy: &Policy,
    now: Duration,
) -> Decision {
    let d = Decision::default();
    let me = policy.name.as_str();

    // 0. A bootstrap that failed is given up, whatever else holds: what it left behind is
    //    removed and the keys released so another node can try, then the daemon exits with the
    //    cause (Patroni's behaviour).
    if let Some(cause) = &local.bootstrap_failed {
        return d
            .act(Action::AbandonBootstrap)
            .act(Action::Fatal(format!("bootstrap failed: {cause}")))
            .because(Reason::BootstrapFailed(cause.clone()));
    }

    // 1. Without the DCS nothing can be known: a primary stops accepting writes at once (it can
    //    no longer prove it holds the lease); a replica keeps serving reads.
    let cluster = match cluster {
        Some(c) if local.session_ok => c,
        _ => {
            let primary = matches!(local.pg, Pg::Running { primary: true, .. });
            if primary && !policy.paused {
                return d
                    .act(Action::Demote(DemoteMode::Offline))
                    .because(Reason::DcsUnreachable);
            }
            return d.because(Reason::DcsUnreachable);
        }
    };

    // 2. The lease was renewed by this cycle's keep-alive (`session_ok`), so a leader key bound to
    //    our session stands for at least `ttl` from the moment the keep-alive was sent.
    let leader_is_me = cluster
        .leader
        .as_ref()
        .map(|l| l.name == me)
        .unwrap_or(false);
    let leader_owned = cluster
        .leader
        .as_ref()
        .map(|l| l.name == me && l.owned_by_us)
        .unwrap_or(false);

    let mut d = d;
    if leader_is_me && !leader_owned {
        // The key holds our name under an older session (this daemon restarted before the
        // old lease expired). We are that node: bind the key to our session.
        d = d
            .act(Action::ReattachLeader)
            .because(Reason::LeaderKeyFromPreviousSession);
    }
    let leader_name = cluster.leader.as_ref().map(|l| l.name.clone());
    let other_leader = leader_name.clone().filter(|n| n != me);

    // 3. A running job: keep the lock (the keep-alive did), do nothing else.
    if let Some(job) = local.job {
        if let (Some(l), Pg::Running { primary: true, .. }) = (&other_leader, &local.pg) {
            if !policy.paused {
                return d
                    .act(Action::Demote(DemoteMode::Immediate))
                    .because(Reason::PrimaryWithoutLock(l.clone()));
            }
        }
        return d.because(Reason::JobInProgress(job));
    }

    // 4. The data directory.
    let (sysid, was_primary, crashed, data_tl) = match &local.data {
        DataDir::Empty => {
            return uninitialized(d, cluster, local, policy, leader_is_me, other_leader)
        }
        DataDir::Initialized {
            sysid,
            was_primary,
            crashed,
            timeline,
        } => (sysid.clone(), *was_primary, *crashed, *timeline),
    };
    let _ = crashed;
    if let (Some(local_id), Some(cluster_id)) = (sysid.as_deref(), cluster.sysid()) {
        if local_id != cluster_id {
            let r = Reason::SystemIdMismatch {
                local: local_id.to_string(),
                cluster: cluster_id.to_string(),
            };
            if policy.paused {
                return d.because(r);
            }
            return d
                .act(Action::Fatal(format!(
                    "the data directory belongs to another cluster (system id {local_id}, cluster has {cluster_id})"
                )))
                .because(r);
        }
    }
    if cluster
        .initialize
        .as_deref()
        .map(|s| s.is_empty())
        .unwrap_or(true)
        && (leader_is_me || other_leader.is_none())
    {
        if let Some(id) = &sysid {
            d = d.act(Action::WriteInitialize(id.clone()));
        }
    }

    // 5. PostgreSQL is down.
    match &local.pg {
        Pg::Stopped => {
            if policy.paused {
                if leader_is_me {
                    return d.act(Action::ReleaseLeader).because(Reason::Paused);
                }
                return d.because(Reason::Paused);
            }
            if leader_is_me {
                if was_primary {
                    if let Some(down) = local.down_since {
                        if now.saturating_sub(down) > policy.primary_start_timeout {
                            return d
                                .act(Action::ReleaseLeader)
                                .because(Reason::PrimaryStartTimeout);
                        }
                    }
                    return d
                        .act(Action::StartPrimary)
                        .because(Reason::CrashedWhileLeader);
                }
                // We hold the key but our data is a replica's: start it, then promote (or, as a
                // standby cluster's leader, start it following the other cluster).
                if policy.standby_cluster {
                    return d
                        .act(Action::StartReplica(Target::StandbySource))
                        .because(Reason::StandbyLeader);
                }
                return d
                    .act(Action::StartReplica(Target::Nobody))
                    .because(Reason::PromotionPending);
            }
            if let Some(l) = other_leader {
                if local.rewind_failed {
                    return d.because(Reason::RewindFailed);
                }
                if was_primary || local.needs_rewind {
                    // A former primary may hold WAL the new leader never had. Rewind only once
                    // the leader has finished its post-promote checkpoint and published a
                    // timeline beyond ours: before that, pg_rewind would read the old timeline
                    // from the leader's pg_control and wrongly find nothing to do.
                    let leader = cluster.leader_member();
                    let ready = leader
                        .map(|m| {
                            m.data.state == "running"
                                && m.data.normalized_role() == "primary"
                                && !m.data.extra.contains_key("checkpoint_after_promote")
                        })
                        .unwrap_or(false);
                    let leader_tl = leader.and_then(|m| m.data.timeline);
                    return match (ready, leader_tl, data_tl) {
                        (true, Some(lt), Some(dt)) if lt > dt => d
                            .act(Action::StartRewind(l.clone()))
                            .because(Reason::TimelineDiverged),
                        (true, Some(_), None) => d
                            .act(Action::StartRewind(l.clone()))
                            .because(Reason::TimelineDiverged),
                        _ => d.because(Reason::WaitingForLeaderTimeline(l.clone())),
                    };
                }
                let (target, why) = upstream_target(cluster, policy, &l);
                return d
                    .act(Action::StartReplica(Target::Member(target)))
                    .because(why);
            }
            // No leader, but a named candidate is taking over (we may have just handed over to
            // it): wait for it rather than start and race.
            if let Some(c) = cluster
                .failover
                .as_ref()
                .and_then(|f| f.value.member.as_deref())
            {
                if c != me && cluster.member(c).is_some() {
                    return d.because(Reason::NotHealthiest(NotHealthiest::WaitingForCandidate(
                        c.to_string(),
                    )));
                }
            }
            // No leader: come up read-only so that we can report a position and race. A former
            // primary (stopped by a crash or the lease guard) may hold WAL that whoever wins the
            // race never received, and once it runs as a replica its pg_control no longer says
            // it was a primary: it comes up as a demoted primary does, marked for a rewind
            // before it follows anyone.
            if was_primary && !local.needs_rewind {
                return d
                    .act(Action::Demote(DemoteMode::Offline))
                    .because(Reason::NotHealthiest(NotHealthiest::NotRunningWasPrimary));
            }
            return d
                .act(Action::StartReplica(Target::Nobody))
                .because(Reason::NotHealthiest(NotHealthiest::NotRunning));
        }
        Pg::Unresponsive => {
            if leader_is_me {
                return d.because(Reason::LeaderLockHeld);
            }
            return d.because(Reason::NotHealthiest(NotHealthiest::Unresponsive));
        }
        Pg::Running { .. } => {}
    }
    let (primary, my_tl, my_pos) = match &local.pg {
        Pg::Running {
            primary,
            timeline,
            wal_position,
            ..
        } => (*primary, *timeline, *wal_position),
        _ => (false, None, None),
    };

    // 6. Somebody else leads.
    if let Some(l) = other_leader {
        if primary {
            if policy.paused {
                return d.because(Reason::Paused);
            }
            return d
                .act(Action::Demote(DemoteMode::Immediate))
                .because(Reason::PrimaryWithoutLock(l));
        }
        if local.needs_rewind || past_the_fork(cluster, my_tl, my_pos) {
            return d
                .act(Action::Demote(DemoteMode::Immediate))
                .because(Reason::TimelineDiverged);
        }
        let (target, why) = upstream_target(cluster, policy, &l);
        let target = Target::Member(target);
        if local.upstream.as_ref() != Some(&target) {
            return d.act(Action::Follow(target)).because(why);
        }
        return d.because(why);
    }

    // 7. We lead.
    if leader_is_me {
        if primary {
            if let Some(f) = &cluster.failover {
                return match manual_failover_from_leader(cluster, local, policy, &f.value) {
                    FailoverStep::Go => d.act(Action::Demote(DemoteMode::Graceful)).because(
                        Reason::ManualFailover {
                            candidate: f.value.member.clone(),
                        },
                    ),
                    FailoverStep::Wait(at) => d
                        .act(Action::LeaderHousekeeping)
                        .because(Reason::LeaderLockHeld)
                        .because(Reason::ScheduledSwitchover(at)),
                    FailoverStep::AskPeers => d
                        .act(Action::LeaderHousekeeping)
                        .because(Reason::LeaderLockHeld)
                        .because(Reason::PeersNotQueried),
                    FailoverStep::Clear(why) => d
                        .act(Action::ClearFailover(f.version))
                        .act(Action::LeaderHousekeeping)
                        .because(Reason::LeaderLockHeld)
                        .because(Reason::FailoverRequestCleared(why)),
                };
            }
            let d = d
                .act(Action::LeaderHousekeeping)
                .because(Reason::LeaderLockHeld);
            if policy.standby_cluster {
                return d.because(Reason::StandbyClusterOnPrimary);
            }
            return d;
        }
        if policy.standby_cluster {
            // The standby leader: it follows the other cluster and keeps the key; in
            // maintenance mode PostgreSQL is left as it is.
            if policy.paused {
                return d
                    .act(Action::LeaderHousekeeping)
                    .because(Reason::StandbyLeader)
                    .because(Reason::Paused);
            }
            // A switchover inside the standby cluster: nothing is written here, so handing
            // over is releasing the key; the candidate takes it and follows the other cluster,
            // and this node follows the candidate.
            let mut d = d;
            if let Some(f) = &cluster.failover {
                match manual_failover_from_leader(cluster, local, policy, &f.value) {
                    FailoverStep::Go => {
                        return d
                            .act(Action::ReleaseLeader)
                            .because(Reason::ManualFailover {
                                candidate: f.value.member.clone(),
                            })
                    }
                    FailoverStep::Wait(at) => d = d.because(Reason::ScheduledSwitchover(at)),
                    FailoverStep::AskPeers => d = d.because(Reason::PeersNotQueried),
                    FailoverStep::Clear(why) => {
                        d = d
                            .act(Action::ClearFailover(f.version))
                            .because(Reason::FailoverRequestCleared(why))
                    }
                }
            }
            let d = if local.upstream.as_ref() != Some(&Target::StandbySource) {
                d.act(Action::Follow(Target::StandbySource))
            } else {
                d
            };
            return d
                .act(Action::LeaderHousekeeping)
                .because(Reason::StandbyLeader);
        }
        if policy.paused {
            return d.act(Action::ReleaseLeader).because(Reason::Paused);
        }
        return d.act(Action::Promote).because(Reason::PromotionPending);
    }

    // 8. Nobody leads: the leader race.
    if policy.paused {
        if primary {
            return d
                .act(Action::AcquireLeader)
                .act(Action::LeaderHousekeeping)
                .because(Reason::Paused);
        }
        // In maintenance mode only a manual failover to this very node promotes it (makes it
        // the standby leader, in a standby cluster).
        if let Some(f) = cluster
            .failover
            .as_ref()
            .filter(|f| f.value.member.as_deref() == Some(me))
        {
            if policy.standby_cluster {
                return d
                    .act(Action::AcquireLeader)
                    .act(Action::ClearFailover(f.version))
                    .act(Action::Follow(Target::StandbySource))
                    .because(Reason::ManualFailover {
                        candidate: Some(me.to_string()),
                    })
                    .because(Reason::StandbyLeader);
            }
            match &local.promotion_gate {
                PromotionGate::Open => {}
                PromotionGate::Pending => {
                    return d.because(Reason::WaitingForHook("before_promote"))
                }
                PromotionGate::Vetoed(why) => {
                    return d.because(Reason::PromotionVetoed(why.clone()))
                }
            }
            return d
                .act(Action::AcquireLeader)
                .act(Action::ClearFailover(f.version))
                .act(Action::Promote)
                .because(Reason::ManualFailover {
                    candidate: Some(me.to_string()),
                });
        }
        return d.because(Reason::Paused);
    }
    if primary {
        // A primary left running (say, the daemon restarted and the lease expired meanwhile):
        // it is the healthiest unless it is behind the cluster's timeline.
        let cluster_tl = cluster.timeline();
        if my_tl.map(|t| t < cluster_tl).unwrap_or(false) {
            return d
                .act(Action::Demote(DemoteMode::Offline))
                .because(Reason::NotHealthiest(NotHealthiest::TimelineBehind {
                    mine: None,
                    cluster: cluster_tl,
                }));
        }
        return d
            .act(Action::AcquireLeader)
            .act(Action::LeaderHousekeeping)
            .because(Reason::HealthiestAfterLeaderExpired);
    }
    // The site's hooks: a candidate choice (unless a failover request names one) and a veto.
    let named = cluster
        .failover
        .as_ref()
        .and_then(|f| f.value.member.as_deref())
        .is_some();
    let mut chosen = None;
    if policy.failover_priority > 0 && !named {
        match &local.candidate_choice {
            CandidateChoice::Pending => {
                return d.because(Reason::WaitingForHook("choose_failover_candidate"))
            }
            CandidateChoice::Nobody(why) => {
                return d.because(Reason::NoCandidateChosen(why.clone()))
            }
            CandidateChoice::Member(c)
                if failover_candidates(cluster, policy, local).contains(c) =>
            {
                chosen = Some(c.clone());
            }
            _ => {}
        }
    }
    match healthiest(
        cluster,
        policy,
        my_tl,
        my_pos,
        &local.peers,
        chosen.as_deref(),
    ) {
        Ok(()) if policy.standby_cluster => {
            // A standby cluster's new leader follows the other cluster: nothing is promoted,
            // so the promotion hooks are not asked.
            let d = d.act(Action::AcquireLeader);
            let d = match &cluster.failover {
                Some(f) => d.act(Action::ClearFailover(f.version)),
                None => d,
            };
            d.act(Action::Follow(Target::StandbySource))
                .act(Action::LeaderHousekeeping)
                .because(Reason::HealthiestAfterLeaderExpired)
                .because(Reason::StandbyLeader)
        }
        Ok(()) => {
            match &local.promotion_gate {
                PromotionGate::Open => {}
                PromotionGate::Pending => {
                    return d.because(Reason::WaitingForHook("before_promote"))
                }
                PromotionGate::Vetoed(why) => {
                    return d.because(Reason::PromotionVetoed(why.clone()))
                }
            }
            let d = d.act(Action::AcquireLeader);
            let d = match &cluster.failover {
                Some(f) => d.act(Action::ClearFailover(f.version)),
                None => d,
            };
            let d = d.act(Action::Promote);
            match chosen {
                Some(c) => d.because(Reason::ChosenByHook(c)),
                None => d.because(Reason::HealthiestAfterLeaderExpired),
            }
        }
        Err(why) => {
            if policy.failover_priority <= 0 {
                d.because(Reason::NoFailover)
            } else {
                d.because(Reason::NotHealthiest(why))
            }
        }
    }
}

fn uninitialized(
    d: Decision,
    cluster: &Cluster,
    local: &LocalView,
    policy: &Policy,
    leader_is_me: bool,
    other_leader: Option<String>,
) -> Decision {
    if let Some(l) = other_leader {
        if policy.paused {
            return d.because(Reason::Paused);
        }
        let running = cluster
            .leader_member()
            .map(|m| m.data.state == "running")
            .unwrap_or(false);
        if !running || cluster.sysid().is_none() {
            return d.because(Reason::WaitingForBootstrap);
        }
        // A running replica tagged `clonefrom` spares the leader the copy.
        let source = cluster
            .members
            .iter()
            .filter(|m| !local.clone_from_leader && m.name != policy.name && m.name != l)
            .find(|m| {
                m.tag_bool("clonefrom")
                    && m.data.state == "running"
                    && m.data.normalized_role() == "replica"
            })
            .map(|m| m.name.clone())
            .unwrap_or(l);
        return d
            .act(Action::StartClone(Target::Member(source)))
            .because(Reason::NoDataDirectory);
    }
    if leader_is_me {
        // We hold the key with no data: a bootstrap that died half-way, or data removed.
        if cluster.sysid().is_none() {
            if policy.standby_cluster {
                return d
                    .act(Action::StartClone(Target::StandbySource))
                    .because(Reason::ClusterUninitialized)
                    .because(Reason::StandbyLeader);
            }
            return d
                .act(Action::StartBootstrap)
                .because(Reason::ClusterUninitialized);
        }
        return d
            .act(Action::ReleaseLeader)
            .because(Reason::NoDataDirectory);
    }
    if policy.paused {
        return d.because(Reason::Paused);
    }
    if cluster.sysid().is_none() {
        if policy.failover_priority <= 0 {
            return d.because(Reason::NoFailover);
        }
        // A new standby cluster's first node copies the other cluster instead of running
        // initdb: it becomes the standby leader.
        if policy.standby_cluster {
            return d
                .act(Action::AcquireLeader)
                .act(Action::StartClone(Target::StandbySource))
                .because(Reason::ClusterUninitialized)
                .because(Reason::StandbyLeader);
        }
        return d
            .act(Action::AcquireLeader)
            .act(Action::StartBootstrap)
            .because(Reason::ClusterUninitialized);
    }
    // An initialized cluster with no leader: a new or wiped node restores the newest backup
    // (when allowed) rather than wait, and comes up following nobody.
    if policy.restore_without_leader && !policy.standby_cluster {
        return d
            .act(Action::StartClone(Target::Nobody))
            .because(Reason::RestoreWithoutLeader);
    }
    d.because(Reason::WaitingForBootstrap)
}

/// Whom a replica streams from: its `replicatefrom` member while that one runs, else the
/// leader.
/// Whether a replica on timeline `tl` at `pos` holds WAL the cluster's history left behind:
/// the `history` key says timeline `tl` ended at an LSN below `pos`. Such a replica received
/// WAL from the old primary after the new one forked off (e.g. the old primary's shutdown
/// checkpoint, streamed after the new leader's promotion point); PostgreSQL refuses to follow
/// the new timeline from there, so it must be rewound first.
fn past_the_fork(cluster: &Cluster, tl: Option<u64>, pos: Option<u64>) -> bool {
    let (Some(tl), Some(pos)) = (tl, pos) else {
        return false;
    };
    cluster
        .history
        .as_ref()
        .and_then(|h| h.iter().find(|line| line.timeline == tl))
        .map(|line| pos > line.lsn)
        .unwrap_or(false)
}

fn upstream_target(cluster: &Cluster, policy: &Policy, leader: &str) -> (String, Reason) {
    if let Some(m) = &policy.replicatefrom {
        let usable = m != &policy.name
            && cluster
                .member(m)
                .map(|x| x.data.state == "running")
                .unwrap_or(false);
        if usable {
            return (m.clone(), Reason::ReplicatingFrom(m.clone()));
        }
    }
    (
        leader.to_string(),
        Reason::FollowingLeader(leader.to_string()),
    )
}

/// What the leader does about a `failover` key.
enum FailoverStep {
    /// Hand over now.
    Go,
    /// Scheduled for later (the time, as written).
    Wait(String),
    /// Clear the key, for this reason.
    Clear(String),
    /// The candidates' state is not known this cycle: ask them, decide next cycle.
    AskPeers,
}

fn manual_failover_from_leader(
    cluster: &Cluster,
    local: &LocalView,
    policy: &Policy,
    f: &crate::dcs::Failover,
) -> FailoverStep {
    if let Some(l) = &f.leader {
        if l != &policy.name {
            return FailoverStep::Clear(format!("it names {l} as the leader"));
        }
    }
    if f.member.as_deref() == Some(policy.name.as_str()) {
        return FailoverStep::Clear("I am the candidate and already the leader".into());
    }
    if let Some(at) = &f.scheduled_at {
        match crate::timestamp::parse_timestamp(at) {
            Ok(t) if t.timestamp() > local.unix_now => return FailoverStep::Wait(at.clone()),
            Ok(_) => {}
            Err(_) => {
                return FailoverStep::Clear(format!(
                    "scheduled_at '{at}' is not a time with a timezone"
                ))
            }
        }
    }
    if policy.paused && f.member.is_none() {
        return FailoverStep::Clear("a switchover in a paused cluster needs a candidate".into());
    }
    if let Some(c) = &f.member {
        if cluster.member(c).is_none() {
            return FailoverStep::Clear(format!("candidate {c} is not a member"));
        }
    }
    let Peers::Queried(peers) = &local.peers else {
        // Not asked this cycle: nothing proves a candidate healthy, nor that none is.
        return FailoverStep::AskPeers;
    };
    let healthy = peers.iter().any(|p| {
        p.name != policy.name
            && f.member.as_ref().map(|c| c == &p.name).unwrap_or(true)
            && p.reachable
            && p.in_recovery
            && !p.barred()
        // No lag check: the position a peer publishes can be a loop behind (right after a
        // base backup, a whole WAL segment), and the graceful stop makes PostgreSQL send
        // every record, the shutdown checkpoint included, to connected standbys before the key
        // is released; the candidate promotes with all of it.
    });
    if healthy {
        FailoverStep::Go
    } else {
        FailoverStep::Clear("no healthy candidate found".into())
    }
}

/// Why a member's position bars it from promotion, whoever compares.
enum Bar {
    /// Synchronous mode is on and the member is not a synchronous standby.
    NotSynchronous(Vec<String>),
    /// Further behind the last known leader position than `maximum_lag_on_failover`.
    Lag {
        /// The member's position.
        pos: u64,
        /// The leader's last known position.
        optime: u64,
    },
    /// Its timeline is behind the cluster's.
    Timeline {
        /// The member's timeline.
        tl: Option<u64>,
        /// The cluster's.
        cluster: u64,
    },
}

/// The `sync` key's standbys and leader when synchronous mode is on and the key exists.
fn sync_set(cluster: &Cluster, policy: &Policy) -> Option<(Vec<String>, String)> {
    if !policy.synchronous {
        return None;
    }
    crate::ha::sync::key_leader(cluster)
        .map(|l| (crate::ha::sync::key_standbys(cluster), l.to_string()))
}

/// The absolute rules a candidate's position must pass (not the comparison with others).
fn position_bar(
    cluster: &Cluster,
    policy: &Policy,
    sync: &Option<(Vec<String>, String)>,
    name: &str,
    tl: Option<u64>,
    pos: u64,
) -> Option<Bar> {
    if let Some((list, leader)) = sync {
        if leader != name && !crate::ha::sync::listed(list, name) {
            return Some(Bar::NotSynchronous(list.clone()));
        }
    }
    if let Some(optime) = cluster.optime() {
        if sync.is_none() && optime > pos && optime - pos > policy.maximum_lag_on_failover {
            return Some(Bar::Lag { pos, optime });
        }
    }
    if policy.check_timeline {
        let ctl = cluster.timeline();
        if !matches!(tl, Some(t) if t >= ctl) {
            return Some(Bar::Timeline { tl, cluster: ctl });
        }
    }
    None
}

/// The members that may take over after the leader is gone, best first (WAL position, then
/// failover priority, then name): this node unless barred, and every reachable replica peer
/// not barred by `nofailover`, a hook veto, synchronous mode, lag or timeline. This is the
/// list `choose_failover_candidate` chooses from.
pub fn failover_candidates(cluster: &Cluster, policy: &Policy, local: &LocalView) -> Vec<String> {
    let sync = sync_set(cluster, policy);
    let (my_tl, my_pos) = match &local.pg {
        Pg::Running {
            primary: false,
            timeline,
            wal_position,
            ..
        } => (*timeline, wal_position.unwrap_or(0)),
        _ => return Vec::new(),
    };
    let mut out: Vec<(u64, i64, String)> = Vec::new();
    let me_barred = policy.failover_priority <= 0
        || matches!(local.promotion_gate, PromotionGate::Vetoed(_))
        || position_bar(cluster, policy, &sync, &policy.name, my_tl, my_pos).is_some();
    if !me_barred {
        out.push((my_pos, policy.failover_priority, policy.name.clone()));
    }
    for p in local.peers.list() {
        if p.name == policy.name || !p.reachable || !p.in_recovery || p.barred() {
            continue;
        }
        let pos = p.wal_position.unwrap_or(0);
        if position_bar(cluster, policy, &sync, &p.name, p.timeline, pos).is_none() {
            out.push((pos, p.failover_priority, p.name.clone()));
        }
    }
    out.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    out.into_iter().map(|(_, _, n)| n).collect()
}

/// The leader race rules: may this node take the leader key? `chosen` is the member
/// `choose_failover_candidate` picked (already checked to be a candidate): it replaces the
/// comparison of positions, never the absolute rules.
fn healthiest(
    cluster: &Cluster,
    policy: &Policy,
    my_tl: Option<u64>,
    my_pos: Option<u64>,
    peers: &Peers,
    chosen: Option<&str>,
) -> Result<(), NotHealthiest> {
    if policy.failover_priority <= 0 {
        return Err(NotHealthiest::NoFailover);
    }
    if let Some(f) = &cluster.failover {
        if let Some(candidate) = &f.value.member {
            if candidate == &policy.name {
                return Ok(());
            }
            if peers
                .list()
                .iter()
                .any(|p| &p.name == candidate && p.reachable && !p.barred())
            {
                return Err(NotHealthiest::ManualFailoverTo(candidate.clone()));
            }
        }
    }
    // Synchronous mode: an acknowledged commit is guaranteed only on the standbys named in the
    // `sync` key; nobody else may be promoted automatically, and only they are compared.
    let Peers::Queried(peers) = peers else {
        return Err(NotHealthiest::PeersNotQueried);
    };
    let sync = sync_set(cluster, policy);
    let peers: Vec<&PeerStatus> = peers
        .iter()
        .filter(|p| match &sync {
            Some((list, _)) => crate::ha::sync::listed(list, &p.name),
            None => true,
        })
        .collect();
    let my_pos = my_pos.unwrap_or(0);
    match position_bar(cluster, policy, &sync, &policy.name, my_tl, my_pos) {
        None => {}
        Some(Bar::NotSynchronous(list)) => return Err(NotHealthiest::NotSynchronous(list)),
        Some(Bar::Lag { pos, optime }) => {
            return Err(NotHealthiest::Lagging {
                pos,
                optime,
                max: policy.maximum_lag_on_failover,
            })
        }
        Some(Bar::Timeline { tl, cluster: ctl }) => {
            return Err(NotHealthiest::TimelineBehind {
                mine: tl,
                cluster: ctl,
            })
        }
    }
    if policy.quorum {
        if let Some((list, leader)) = &sync {
            if leader != &policy.name {
                let need = crate::ha::sync::key_quorum(cluster);
                let votes = peers
                    .iter()
                    .filter(|p| {
                        p.name != policy.name
                            && p.reachable
                            && p.wal_position.unwrap_or(0) <= my_pos
                    })
                    .count() as u64;
                if votes < need {
                    return Err(NotHealthiest::Quorum {
                        votes,
                        need,
                        voters: list.clone(),
                    });
                }
            }
        }
    }
    for p in peers {
        if p.name == policy.name || !p.reachable || p.barred() {
            continue;
        }
        if !p.in_recovery {
            return Err(NotHealthiest::PrimaryAlive(p.name.clone()));
        }
        match chosen {
            Some(c) if c == policy.name => continue,
            Some(c) if c == p.name => {
                return Err(NotHealthiest::HookPicked(c.to_string()));
            }
            Some(_) => continue,
            None => {}
        }
        let their = p.wal_position.unwrap_or(0);
        if their > my_pos {
            return Err(NotHealthiest::Behind {
                member: p.name.clone(),
                theirs: their,
                mine: my_pos,
            });
        }
        if their == my_pos && p.failover_priority > policy.failover_priority {
            return Err(NotHealthiest::LowerPriority {
                member: p.name.clone(),
                theirs: p.failover_priority,
                mine: policy.failover_priority,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
