//! Pure planners beside [`crate::ha::decide`]: the smaller decisions the executor used to make on
//! its own — how a former primary rejoins, what happens after a failed rewind, what the leader
//! writes to the DCS this cycle, what must happen before a promotion in synchronous mode, what a
//! REST restart or reinitialize does. Each
//! returns a value (with its reason where there is a choice); the executor carries it out and
//! the simulation runs the same functions.

use crate::dcs::Cluster;
use crate::ha::decide::JobKind;

/// Where a former primary stands on its way back as a replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RewindState {
    /// Nothing to do (never was primary on a diverged timeline, or already rewound).
    #[default]
    NotNeeded,
    /// It ran as primary on a timeline the leader may not share: rewind (or re-copy) before it
    /// may follow anyone.
    Needed,
    /// A rewind failed and re-copying is not allowed: it waits for the operator.
    Failed,
}

impl RewindState {
    /// `decide()`'s `needs_rewind` input: still true after a failed rewind (the data directory
    /// has not become any less diverged).
    pub fn needed(self) -> bool {
        matches!(self, RewindState::Needed | RewindState::Failed)
    }

    /// `decide()`'s `rewind_failed` input.
    pub fn failed(self) -> bool {
        self == RewindState::Failed
    }
}

/// What happened to a node, as far as its rewind state goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewindEvent {
    /// It took the leader key (it is the timeline now).
    AcquiredLeader,
    /// Its PostgreSQL stopped as a primary (demotion, hand-over): it may have diverged.
    StoppedAsPrimary,
    /// A rewind (or the re-copy standing in for it) finished.
    RewindDone,
    /// A rewind could not reach its source (the leader): a network problem, retried on a
    /// later cycle; nothing is concluded about the data.
    RewindSourceUnreachable,
    /// A rewind failed; `recopy_allowed` is `remove_data_directory_on_rewind_failure`.
    RewindFailed {
        /// Whether the data directory may be removed to copy it again.
        recopy_allowed: bool,
    },
    /// The operator asked for a fresh copy (`reinitialize`).
    Reinitialized,
}

/// Why a data directory is to be removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    /// `pg_rewind` failed and `remove_data_directory_on_rewind_failure` is on.
    RewindFailed,
    /// `POST /reinitialize` or `spiloctl reinit`.
    Reinitialize,
    /// A bootstrap failed; only what it made goes.
    FailedBootstrap,
}

impl std::fmt::Display for RemovalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemovalReason::RewindFailed => {
                "pg_rewind failed and remove_data_directory_on_rewind_failure is on: copying it again"
            }
            RemovalReason::Reinitialize => "reinitialize requested: copying it again",
            RemovalReason::FailedBootstrap => "the bootstrap that made it failed",
        })
    }
}

/// The signature of [`next_rewind_state`] (a simulation may plant a broken one in the executor
/// to show that its checks catch it).
pub type RewindPlanner = fn(RewindState, RewindEvent) -> (RewindState, Option<RemovalReason>);

/// The decision function the executor calls each cycle: [`crate::ha::decide::decide`], or in a
/// simulation a deliberately broken one whose checks must catch it.
pub type Decider = fn(
    Option<&crate::dcs::Cluster>,
    &crate::ha::decide::LocalView,
    &crate::ha::decide::Policy,
    std::time::Duration,
) -> crate::ha::decide::Decision;

/// The rewind state after `event`, and a data directory to remove, if any.
pub fn next_rewind_state(
    state: RewindState,
    event: RewindEvent,
) -> (RewindState, Option<RemovalReason>) {
    match event {
        RewindEvent::AcquiredLeader | RewindEvent::RewindDone => (RewindState::NotNeeded, None),
        RewindEvent::StoppedAsPrimary => (RewindState::Needed, None),
        RewindEvent::RewindSourceUnreachable => (state, None),
        RewindEvent::RewindFailed {
            recopy_allowed: true,
        } => (RewindState::NotNeeded, Some(RemovalReason::RewindFailed)),
        RewindEvent::RewindFailed {
            recopy_allowed: false,
        } => (RewindState::Failed, None),
        RewindEvent::Reinitialized => {
            let _ = state;
            (RewindState::NotNeeded, Some(RemovalReason::Reinitialize))
        }
    }
}

/// How a former primary comes back as a replica of the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejoinPlan {
    /// `pg_rewind` from the leader, after single-user crash recovery when the data directory
    /// did not shut down cleanly (pg_rewind needs a clean shutdown).
    Rewind {
        /// Run crash recovery first.
        crash_recovery_first: bool,
    },
    /// `use_pg_rewind` is off, re-copying allowed: a fresh `pg_basebackup`.
    Recopy,
    /// `use_pg_rewind` is off and re-copying is not allowed: start as a replica as is
    /// (Patroni's behaviour; PostgreSQL refuses to stream from a forked timeline and says so).
    StartWithoutRewind,
}

/// The rejoin plan from the settings and the data directory's state.
pub fn plan_rejoin(use_pg_rewind: bool, recopy_allowed: bool, crashed: bool) -> RejoinPlan {
    if use_pg_rewind {
        RejoinPlan::Rewind {
            crash_recovery_first: crashed,
        }
    } else if recopy_allowed {
        RejoinPlan::Recopy
    } else {
        RejoinPlan::StartWithoutRewind
    }
}

/// What the leader has written to the DCS in earlier cycles (the executor's memory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BookkeepingMemo {
    /// The `status` value last written.
    pub status_written: Option<Vec<u8>>,
    /// The timeline whose history was last published (or found already published).
    pub history_for: Option<u64>,
    /// The slots made (or found) last time, in member order.
    pub slots_for: Vec<String>,
}

/// One thing the leader writes this cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bookkeeping {
    /// The cluster has no `config` key: write `bootstrap.dcs` (timeouts adjusted).
    WriteInitialConfig,
    /// `status` with this optime (only when it changed).
    WriteStatus(Vec<u8>),
    /// Publish the history of this timeline (read from `pg_wal/<tl>.history`).
    PublishHistory(u64),
    /// The history of this timeline is already in the DCS: remember it.
    HistoryCurrent(u64),
    /// Make sure these physical slots exist (one per other member).
    EnsureSlots(Vec<String>),
}

/// What the leader's bookkeeping writes this cycle. `status` is the encoded `status` value for
/// the current flush position (None when unknown), `timeline` PostgreSQL's, `me` this member.
pub fn plan_bookkeeping(
    cluster: &Cluster,
    me: &str,
    status: Option<Vec<u8>>,
    timeline: Option<u64>,
    use_slots: bool,
    memo: &BookkeepingMemo,
) -> Vec<Bookkeeping> {
    let mut plan = Vec::new();
    if cluster.config.is_none() && cluster.config_raw.is_none() {
        plan.push(Bookkeeping::WriteInitialConfig);
    }
    if let Some(bytes) = status {
        if memo.status_written.as_deref() != Some(&bytes[..]) {
            plan.push(Bookkeeping::WriteStatus(bytes));
        }
    }
    if let Some(tl) = timeline {
        if cluster.timeline() == tl {
            if memo.history_for != Some(tl) {
                plan.push(Bookkeeping::HistoryCurrent(tl));
            }
        } else if tl > 1 && memo.history_for != Some(tl) {
            plan.push(Bookkeeping::PublishHistory(tl));
        }
    }
    if use_slots {
        let wanted: Vec<String> = cluster
            .members
            .iter()
            .filter(|m| m.name != me)
            .map(|m| crate::dcs::codec::slot_name(&m.name))
            .collect();
        // Re-check while some replica is not streaming: its slot may be what is missing.
        let lagging = cluster
            .members
            .iter()
            .any(|m| m.name != me && m.data.replication_state.as_deref() != Some("streaming"));
        if wanted != memo.slots_for || lagging {
            plan.push(Bookkeeping::EnsureSlots(wanted));
        }
    }
    plan
}

/// What must happen before `pg_ctl promote`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromotionPrep {
    /// Synchronous mode: first name this node in the `sync` key with no standby yet (so no
    /// stale standby listed there can be promoted after it), and run with this
    /// `synchronous_standby_names` (in strict mode, commits wait until a standby is confirmed).
    ClaimSyncKey {
        /// The `synchronous_standby_names` to run with until standbys are confirmed.
        ssn: String,
    },
    /// Asynchronous: nothing.
    Nothing,
}

/// The preparation of a promotion.
pub fn plan_promotion(synchronous: bool, strict: bool) -> PromotionPrep {
    if synchronous {
        PromotionPrep::ClaimSyncKey {
            ssn: crate::ha::sync::ssn(&[], 1, strict),
        }
    } else {
        PromotionPrep::Nothing
    }
}

/// What a REST restart request becomes when it arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartArrival {
    /// Refused with this HTTP status and message.
    Refuse(u16, String),
    /// Kept and run when due.
    Schedule,
    /// Checked against the node now ([`plan_restart`]).
    Now,
}

/// A restart request on arrival: scheduled restarts are refused in maintenance mode and when
/// another is scheduled (Patroni's answers).
pub fn restart_arrival(
    request: &crate::ha::command::RestartRequest,
    paused: bool,
    already_scheduled: bool,
) -> RestartArrival {
    if request.schedule.is_none() {
        return RestartArrival::Now;
    }
    if paused {
        return RestartArrival::Refuse(500, "Can't schedule restart in the paused state".into());
    }
    if already_scheduled {
        return RestartArrival::Refuse(409, "Another restart is already scheduled".into());
    }
    RestartArrival::Schedule
}

/// The node as a restart sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartView {
    /// A job already runs.
    pub job: Option<JobKind>,
    /// PostgreSQL runs as primary.
    pub primary: bool,
    /// `server_version_num` of the running server.
    pub server_version: Option<i64>,
    /// `pg_settings` says a restart is pending.
    pub pending_restart: bool,
}

/// What a due restart does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartPlan {
    /// Not now: HTTP status and message (for a scheduled restart, logged).
    Refuse(u16, String),
    /// Stop (fast) and start PostgreSQL in its current role: as a standby when it is not the
    /// primary.
    Run {
        /// Start with `standby.signal`.
        standby: bool,
    },
}

/// A restart that is due (asked for now, or scheduled and its time came): refused while a job
/// runs or when the request's conditions (role, version below, restart pending) do not hold.
pub fn plan_restart(request: &crate::ha::command::RestartRequest, v: &RestartView) -> RestartPlan {
    if let Some(j) = v.job {
        return RestartPlan::Refuse(503, format!("{j} already in progress"));
    }
    let unmet = || RestartPlan::Refuse(503, "restart conditions are not satisfied".into());
    if let Some(want) = &request.role {
        let want_primary = matches!(want.as_str(), "primary" | "master");
        if want_primary != v.primary {
            return unmet();
        }
    }
    if let Some(below) = request.postgres_version {
        if v.server_version.map(|cur| cur >= below).unwrap_or(true) {
            return unmet();
        }
    }
    if request.restart_pending && !v.pending_restart {
        return unmet();
    }
    RestartPlan::Run {
        standby: !v.primary,
    }
}

/// What a REST reinitialize does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReinitPlan {
    /// Refused: HTTP 503 with this message.
    Refuse(String),
    /// Stop PostgreSQL (immediately), cancel the running job if any, let the rewind planner
    /// decide about the data directory ([`RewindEvent::Reinitialized`]), then rebuild the
    /// replica (from the leader when asked).
    Run {
        /// The job to cancel first (`force`).
        cancel: Option<JobKind>,
    },
}

/// A REST reinitialize: only a replica of a cluster with a leader, and over a running job only
/// with `force` (Patroni's rules and answers).
pub fn plan_reinitialize(
    leader: Option<&str>,
    me: &str,
    job: Option<JobKind>,
    force: bool,
) -> ReinitPlan {
    match leader {
        None => return ReinitPlan::Refuse("Cluster has no leader, can not reinitialize".into()),
        Some(l) if l == me => {
            return ReinitPlan::Refuse("I am the leader, can not reinitialize".into())
        }
        Some(_) => {}
    }
    match job {
        Some(j) if !force => ReinitPlan::Refuse(format!("{j} already in progress")),
        cancel => ReinitPlan::Run { cancel },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{Member, MemberData, Versioned};

    #[test]
    fn the_rewind_state_machine() {
        use RewindEvent::*;
        use RewindState::*;
        assert_eq!(
            next_rewind_state(NotNeeded, StoppedAsPrimary),
            (Needed, None)
        );
        assert_eq!(next_rewind_state(Needed, RewindDone), (NotNeeded, None));
        assert_eq!(
            next_rewind_state(
                Needed,
                RewindFailed {
                    recopy_allowed: false
                }
            ),
            (Failed, None)
        );
        assert_eq!(
            next_rewind_state(
                Needed,
                RewindFailed {
                    recopy_allowed: true
                }
            ),
            (NotNeeded, Some(RemovalReason::RewindFailed))
        );
        assert_eq!(next_rewind_state(Failed, AcquiredLeader), (NotNeeded, None));
        // A leader out of reach is no verdict: try again later.
        assert_eq!(
            next_rewind_state(Needed, RewindSourceUnreachable),
            (Needed, None)
        );
        assert_eq!(
            next_rewind_state(Failed, Reinitialized),
            (NotNeeded, Some(RemovalReason::Reinitialize))
        );
        assert!(Needed.needed() && !Needed.failed());
        // A failed rewind leaves the node as diverged as before.
        assert!(Failed.needed() && Failed.failed());
        assert!(!NotNeeded.needed() && !NotNeeded.failed());
    }

    #[test]
    fn rejoin_plans() {
        assert_eq!(
            plan_rejoin(true, false, true),
            RejoinPlan::Rewind {
                crash_recovery_first: true
            }
        );
        assert_eq!(
            plan_rejoin(true, true, false),
            RejoinPlan::Rewind {
                crash_recovery_first: false
            }
        );
        assert_eq!(plan_rejoin(false, true, true), RejoinPlan::Recopy);
        assert_eq!(
            plan_rejoin(false, false, true),
            RejoinPlan::StartWithoutRewind
        );
    }

    fn member(name: &str, streaming: bool) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                replication_state: streaming.then(|| "streaming".into()),
                ..MemberData::default()
            },
            version: 1,
            owned_by_us: false,
        }
    }

    #[test]
    fn bookkeeping_writes_only_what_changed() {
        let mut c = Cluster {
            members: vec![member("n1", false), member("n2", true), member("n3", true)],
            ..Cluster::default()
        };
        let memo = BookkeepingMemo::default();
        let status = Some(b"{\"optime\":5}".to_vec());
        let plan = plan_bookkeeping(&c, "n1", status.clone(), Some(2), true, &memo);
        assert_eq!(
            plan,
            vec![
                Bookkeeping::WriteInitialConfig,
                Bookkeeping::WriteStatus(b"{\"optime\":5}".to_vec()),
                Bookkeeping::PublishHistory(2),
                Bookkeeping::EnsureSlots(vec!["n2".into(), "n3".into()]),
            ]
        );
        // Everything done and remembered: nothing to write.
        c.config_raw = Some(Versioned {
            value: serde_json::json!({}),
            version: 1,
        });
        let memo = BookkeepingMemo {
            status_written: status.clone(),
            history_for: Some(2),
            slots_for: vec!["n2".into(), "n3".into()],
        };
        assert!(plan_bookkeeping(&c, "n1", status.clone(), Some(2), true, &memo).is_empty());
        // Timeline 1 has no history; slots off: none; a lagging replica re-checks slots.
        assert!(plan_bookkeeping(&c, "n1", status.clone(), Some(1), false, &memo).is_empty());
        c.members[2] = member("n3", false);
        assert_eq!(
            plan_bookkeeping(&c, "n1", status, Some(2), true, &memo),
            vec![Bookkeeping::EnsureSlots(vec!["n2".into(), "n3".into()])]
        );
    }

    #[test]
    fn a_synchronous_promotion_claims_the_sync_key_first() {
        assert_eq!(plan_promotion(false, true), PromotionPrep::Nothing);
        match plan_promotion(true, false) {
            PromotionPrep::ClaimSyncKey { ssn } => {
                assert_eq!(ssn, crate::ha::sync::ssn(&[], 1, false))
            }
            other => panic!("{other:?}"),
        }
    }

    fn req(
        role: Option<&str>,
        version: Option<i64>,
        pending: bool,
    ) -> crate::ha::command::RestartRequest {
        crate::ha::command::RestartRequest {
            schedule: None,
            role: role.map(str::to_string),
            postgres_version: version,
            timeout: None,
            restart_pending: pending,
        }
    }

    fn view(primary: bool) -> RestartView {
        RestartView {
            job: None,
            primary,
            server_version: Some(150_020),
            pending_restart: false,
        }
    }

    #[test]
    fn a_restart_checks_its_conditions_and_keeps_the_role() {
        assert_eq!(
            plan_restart(&req(None, None, false), &view(true)),
            RestartPlan::Run { standby: false }
        );
        assert_eq!(
            plan_restart(&req(Some("master"), None, false), &view(true)),
            RestartPlan::Run { standby: false }
        );
        assert_eq!(
            plan_restart(&req(Some("replica"), None, false), &view(false)),
            RestartPlan::Run { standby: true }
        );
        let unmet = RestartPlan::Refuse(503, "restart conditions are not satisfied".into());
        assert_eq!(
            plan_restart(&req(Some("primary"), None, false), &view(false)),
            unmet
        );
        assert_eq!(
            plan_restart(&req(Some("replica"), None, false), &view(true)),
            unmet
        );
        // Restart only if the running version is below the one asked for.
        assert_eq!(
            plan_restart(&req(None, Some(150_020), false), &view(true)),
            unmet
        );
        assert_eq!(
            plan_restart(&req(None, Some(150_021), false), &view(true)),
            RestartPlan::Run { standby: false }
        );
        let mut unknown = view(true);
        unknown.server_version = None;
        assert_eq!(
            plan_restart(&req(None, Some(160_000), false), &unknown),
            unmet
        );
        assert_eq!(plan_restart(&req(None, None, true), &view(true)), unmet);
        let mut pending = view(false);
        pending.pending_restart = true;
        assert_eq!(
            plan_restart(&req(None, None, true), &pending),
            RestartPlan::Run { standby: true }
        );
        let mut busy = view(true);
        busy.job = Some(JobKind::Rewind);
        assert!(
            matches!(plan_restart(&req(None, None, false), &busy), RestartPlan::Refuse(503, m) if m.contains("already in progress"))
        );
    }

    #[test]
    fn a_scheduled_restart_is_refused_when_paused_or_already_scheduled() {
        let mut r = req(None, None, false);
        assert_eq!(restart_arrival(&r, true, true), RestartArrival::Now);
        r.schedule = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00+00:00").ok();
        assert_eq!(restart_arrival(&r, false, false), RestartArrival::Schedule);
        assert!(matches!(
            restart_arrival(&r, true, false),
            RestartArrival::Refuse(500, _)
        ));
        assert!(matches!(
            restart_arrival(&r, false, true),
            RestartArrival::Refuse(409, _)
        ));
    }

    #[test]
    fn reinitialize_needs_a_leader_that_is_not_me_and_force_over_a_job() {
        assert!(
            matches!(plan_reinitialize(None, "n1", None, false), ReinitPlan::Refuse(m) if m.contains("no leader"))
        );
        assert!(
            matches!(plan_reinitialize(Some("n1"), "n1", None, true), ReinitPlan::Refuse(m) if m.contains("I am the leader"))
        );
        assert_eq!(
            plan_reinitialize(Some("n2"), "n1", None, false),
            ReinitPlan::Run { cancel: None }
        );
        assert!(matches!(
            plan_reinitialize(Some("n2"), "n1", Some(JobKind::Clone), false),
            ReinitPlan::Refuse(m) if m.contains("already in progress")
        ));
        assert_eq!(
            plan_reinitialize(Some("n2"), "n1", Some(JobKind::Clone), true),
            ReinitPlan::Run {
                cancel: Some(JobKind::Clone)
            }
        );
    }
}
