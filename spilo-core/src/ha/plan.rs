//! Pure planners beside [`crate::ha::decide`]: the smaller decisions the executor used to make on
//! its own — how a former primary rejoins, what happens after a failed rewind, what the leader
//! writes to the DCS this cycle, what must happen before a promotion in synchronous mode. Each
//! returns a value (with its reason where there is a choice); the executor carries it out and
//! the simulation runs the same functions.

use crate::dcs::Cluster;

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
}
