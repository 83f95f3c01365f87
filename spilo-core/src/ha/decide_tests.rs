//! Scenario tables for `decide()`: given a cluster, a local state and a time, the expected
//! actions and reasons.

use std::time::Duration;

use super::*;
use crate::api::client::PeerStatus;
use crate::config::DynamicConfig;
use crate::dcs::{Cluster, Failover, HistoryLine, Leader, Member, MemberData, Status, Versioned};

const SYSID: &str = "7268616322854375442";

fn policy(name: &str) -> Policy {
    Policy {
        name: name.into(),
        ttl: Duration::from_secs(10),
        loop_wait: Duration::from_secs(2),
        retry_timeout: Duration::from_secs(3),
        maximum_lag_on_failover: 1_048_576,
        primary_start_timeout: Duration::from_secs(300),
        check_timeline: false,
        use_pg_rewind: true,
        remove_data_directory_on_rewind_failure: false,
        failover_priority: 1,
        paused: false,
        replicatefrom: None,
        synchronous: false,
        quorum: false,
        standby_cluster: false,
        restore_without_leader: false,
    }
}

fn member(name: &str, role: &str, tl: u64) -> Member {
    Member {
        name: name.into(),
        data: MemberData {
            conn_url: format!("postgres://127.0.0.1:5{}/postgres", &name[1..]),
            api_url: format!("http://127.0.0.1:8{}/patroni", &name[1..]),
            state: "running".into(),
            role: role.into(),
            timeline: Some(tl),
            ..MemberData::default()
        },
        version: 1,
        owned_by_us: false,
    }
}

/// A cluster of n1..n3, initialized, with `leader` holding the key (None: unlocked).
fn cluster(leader: Option<&str>, me: &str) -> Cluster {
    let mut c = Cluster {
        initialize: Some(SYSID.into()),
        config: Some(Versioned {
            value: DynamicConfig::default(),
            version: 1,
        }),
        status: Some(Status {
            optime: Some(1000),
            ..Status::default()
        }),
        history: None,
        ..Cluster::default()
    };
    for n in ["n1", "n2", "n3"] {
        let role = if Some(n) == leader {
            "primary"
        } else {
            "replica"
        };
        c.members.push(member(n, role, 1));
    }
    if let Some(l) = leader {
        c.leader = Some(Leader {
            name: l.into(),
            version: 7,
            owned_by_us: l == me,
            term: None,
        });
    }
    c
}

fn data() -> DataDir {
    DataDir::Initialized {
        sysid: Some(SYSID.into()),
        was_primary: false,
        crashed: false,
        timeline: Some(1),
    }
}

fn replica(pos: u64) -> Pg {
    Pg::Running {
        primary: false,
        timeline: Some(1),
        wal_position: Some(pos),
        streaming: true,
    }
}

fn primary(pos: u64) -> Pg {
    Pg::Running {
        primary: true,
        timeline: Some(1),
        wal_position: Some(pos),
        streaming: false,
    }
}

fn local(pg: Pg) -> LocalView {
    LocalView {
        session_ok: true,
        data: data(),
        pg,
        job: None,
        upstream: Some(Target::Nobody),
        needs_rewind: false,
        rewind_failed: false,
        down_since: None,
        peers: Peers::Queried(Vec::new()),
        lease_renewed_at: None,
        unix_now: 1_700_000_000,
        clone_from_leader: false,
        promotion_gate: PromotionGate::Open,
        candidate_choice: CandidateChoice::Default,
        bootstrap_failed: None,
    }
}

fn peer(name: &str, primary: bool, pos: u64) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        reachable: true,
        role: Some(if primary { "primary" } else { "replica" }.into()),
        in_recovery: !primary,
        wal_position: Some(pos),
        timeline: Some(1),
        nofailover: false,
        failover_priority: 1,
        promotion_veto: None,
    }
}

const NOW: Duration = Duration::from_secs(1000);

/// A `failover` key asking `leader` to hand over to `member`.
fn switchover(leader: &str, member: &str, version: i64) -> Versioned<Failover> {
    Versioned {
        value: Failover {
            leader: Some(leader.into()),
            member: Some(member.into()),
            scheduled_at: None,
        },
        version,
    }
}

fn run(c: Option<&Cluster>, l: &LocalView, p: &Policy) -> Decision {
    decide(c, l, p, NOW)
}

// ---------------------------------------------------------------- bootstrap

#[test]
fn bootstrap_race_on_an_empty_cluster() {
    let c = Cluster::default();
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Empty;
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(
        d.actions,
        vec![Action::AcquireLeader, Action::StartBootstrap]
    );
    assert_eq!(d.reasons, vec![Reason::ClusterUninitialized]);
}

#[test]
fn a_failed_bootstrap_is_given_up_and_the_daemon_exits_with_the_cause() {
    // Whatever the DCS says (even unreachable) and whatever PostgreSQL does.
    let mut c = cluster(Some("n1"), "n1");
    c.initialize = None;
    for (cluster, session_ok) in [(Some(&c), true), (None, false)] {
        let mut l = local(primary(100));
        l.session_ok = session_ok;
        l.bootstrap_failed = Some("initdb: invalid locale name \"xx\"".into());
        let d = run(cluster, &l, &policy("n1"));
        assert_eq!(
            d.actions,
            vec![
                Action::AbandonBootstrap,
                Action::Fatal("bootstrap failed: initdb: invalid locale name \"xx\"".into())
            ]
        );
        assert_eq!(
            d.reasons,
            vec![Reason::BootstrapFailed(
                "initdb: invalid locale name \"xx\"".into()
            )]
        );
    }
}

#[test]
fn bootstrap_race_lost_clones_from_the_winner_once_it_runs() {
    let mut c = cluster(Some("n1"), "n2");
    c.members.retain(|m| m.name == "n1");
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Empty;
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(
        d.actions,
        vec![Action::StartClone(Target::Member("n1".into()))]
    );
    assert_eq!(d.reasons, vec![Reason::NoDataDirectory]);
}

#[test]
fn bootstrap_in_progress_elsewhere_waits() {
    let mut c = cluster(Some("n1"), "n2");
    c.initialize = Some(String::new());
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Empty;
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
    assert_eq!(d.reasons, vec![Reason::WaitingForBootstrap]);
}

#[test]
fn nofailover_node_never_bootstraps() {
    let c = Cluster::default();
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Empty;
    let mut p = policy("n1");
    p.failover_priority = 0;
    let d = run(Some(&c), &l, &p);
    assert!(d.actions.is_empty());
    assert_eq!(d.reasons, vec![Reason::NoFailover]);
}

#[test]
fn initialized_cluster_without_leader_and_no_data_waits() {
    let c = cluster(None, "n3");
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Empty;
    let d = run(Some(&c), &l, &policy("n3"));
    assert!(d.actions.is_empty());
    assert_eq!(d.reasons, vec![Reason::WaitingForBootstrap]);
}

// ---------------------------------------------------------------- steady state

#[test]
fn leader_alive_primary_keeps_the_lock() {
    let c = cluster(Some("n1"), "n1");
    let d = run(Some(&c), &local(primary(1000)), &policy("n1"));
    assert_eq!(d.actions, vec![Action::LeaderHousekeeping]);
    assert_eq!(d.reasons, vec![Reason::LeaderLockHeld]);
}

#[test]
fn leader_alive_replica_follows() {
    let c = cluster(Some("n1"), "n2");
    let mut l = local(replica(1000));
    l.upstream = Some(Target::Member("n1".into()));
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
    assert_eq!(d.reasons, vec![Reason::FollowingLeader("n1".into())]);
}

#[test]
fn replica_pointing_elsewhere_is_repointed_to_the_new_leader() {
    let c = cluster(Some("n3"), "n2");
    let mut l = local(replica(1000));
    l.upstream = Some(Target::Member("n1".into()));
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(d.actions, vec![Action::Follow(Target::Member("n3".into()))]);
}

/// Seen in the chaos suite's self-test: n1 kept streaming from the old primary n3 after n2 had
/// been promoted from an earlier position, then "followed" n2 for ever while PostgreSQL refused
/// the new timeline. A replica past the point where its timeline ended must rewind.
#[test]
fn a_replica_that_streamed_past_the_new_timelines_fork_rewinds_instead_of_following() {
    let mut c = cluster(Some("n2"), "n1");
    c.members[1].data.timeline = Some(2);
    c.history = Some(vec![HistoryLine {
        timeline: 1,
        lsn: 900,
        reason: "no recovery target specified".into(),
        timestamp: None,
        new_leader: Some("n2".into()),
    }]);
    let mut l = local(replica(1000));
    l.upstream = Some(Target::Member("n2".into()));
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::Demote(DemoteMode::Immediate)]);
    assert_eq!(d.reasons, vec![Reason::TimelineDiverged]);
    // At or before the fork it simply follows the new timeline.
    let l = local(replica(900));
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::Follow(Target::Member("n2".into()))]);
    // Already on the new timeline: nothing to rewind.
    let mut l = local(Pg::Running {
        primary: false,
        timeline: Some(2),
        wal_position: Some(5000),
        streaming: true,
    });
    l.upstream = Some(Target::Member("n2".into()));
    let d = run(Some(&c), &l, &policy("n1"));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
}

#[test]
fn writes_initialize_when_missing() {
    let mut c = cluster(Some("n1"), "n1");
    c.initialize = None;
    let d = run(Some(&c), &local(primary(1000)), &policy("n1"));
    assert_eq!(
        d.actions,
        vec![
            Action::WriteInitialize(SYSID.into()),
            Action::LeaderHousekeeping
        ]
    );
}

// ---------------------------------------------------------------- leader race

#[test]
fn leader_expired_and_this_node_is_ahead_promotes() {
    let c = cluster(None, "n2");
    let mut l = local(replica(1000));
    l.peers = Peers::Queried(vec![peer("n3", false, 900)]);
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(d.actions, vec![Action::AcquireLeader, Action::Promote]);
    assert_eq!(d.reasons, vec![Reason::HealthiestAfterLeaderExpired]);
}

#[test]
fn leader_expired_and_another_node_is_ahead_waits() {
    let c = cluster(None, "n2");
    let mut l = local(replica(900));
    l.peers = Peers::Queried(vec![peer("n3", false, 1000)]);
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
    assert!(
        matches!(&d.reasons[0], Reason::NotHealthiest(w) if w.to_string().contains("n3 is ahead")),
        "{d:?}"
    );
}

#[test]
fn leader_expired_but_lagging_past_the_limit_does_not_race() {
    let mut c = cluster(None, "n2");
    c.status = Some(Status {
        optime: Some(10_000_000),
        ..Status::default()
    });
    let d = run(Some(&c), &local(replica(1000)), &policy("n2"));
    assert!(d.actions.is_empty());
    assert!(
        matches!(&d.reasons[0], Reason::NotHealthiest(w) if w.to_string().contains("maximum_lag_on_failover"))
    );
}

#[test]
fn leader_expired_lag_within_the_limit_races() {
    let mut c = cluster(None, "n2");
    c.status = Some(Status {
        optime: Some(1000 + 1_048_576),
        ..Status::default()
    });
    let d = run(Some(&c), &local(replica(1000)), &policy("n2"));
    assert_eq!(d.actions, vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn leader_expired_nofailover_node_does_not_race() {
    let c = cluster(None, "n2");
    let mut p = policy("n2");
    p.failover_priority = 0;
    let d = run(Some(&c), &local(replica(5000)), &p);
    assert!(d.actions.is_empty());
    assert_eq!(d.reasons, vec![Reason::NoFailover]);
}

#[test]
fn equal_position_and_lower_failover_priority_yields() {
    let c = cluster(None, "n2");
    let mut l = local(replica(1000));
    let mut other = peer("n3", false, 1000);
    other.failover_priority = 5;
    l.peers = Peers::Queried(vec![other]);
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
    assert!(
        matches!(&d.reasons[0], Reason::NotHealthiest(w) if w.to_string().contains("failover_priority"))
    );
}

#[test]
fn equal_position_and_equal_priority_both_race() {
    let c = cluster(None, "n2");
    let mut l = local(replica(1000));
    l.peers = Peers::Queried(vec![peer("n3", false, 1000)]);
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(d.actions, vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn timeline_behind_with_check_timeline_does_not_race() {
    let mut c = cluster(None, "n2");
    c.history = Some(vec![crate::dcs::HistoryLine {
        timeline: 1,
        lsn: 100,
        reason: "x".into(),
        timestamp: None,
        new_leader: None,
    }]);
    let mut p = policy("n2");
    p.check_timeline = true;
    let d = run(Some(&c), &local(replica(1000)), &p);
    assert!(d.actions.is_empty());
    assert!(
        matches!(&d.reasons[0], Reason::NotHealthiest(w) if w.to_string().contains("timeline"))
    );
}

#[test]
fn a_live_primary_peer_blocks_the_race() {
    let c = cluster(None, "n2");
    let mut l = local(replica(1000));
    l.peers = Peers::Queried(vec![peer("n1", true, 1000)]);
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
    assert!(
        matches!(&d.reasons[0], Reason::NotHealthiest(w) if w.to_string().contains("still alive"))
    );
}

#[test]
fn unreachable_and_nofailover_peers_are_ignored() {
    let c = cluster(None, "n2");
    let mut l = local(replica(1000));
    let mut dead = peer("n1", true, 5000);
    dead.reachable = false;
    let mut nf = peer("n3", false, 5000);
    nf.nofailover = true;
    l.peers = Peers::Queried(vec![dead, nf]);
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(d.actions, vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn manual_failover_candidate_races_even_when_behind() {
    let mut c = cluster(None, "n2");
    c.failover = Some(Versioned {
        value: Failover {
            leader: None,
            member: Some("n2".into()),
            scheduled_at: None,
        },
        version: 3,
    });
    let mut l = local(replica(900));
    l.peers = Peers::Queried(vec![peer("n3", false, 1000)]);
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(
        d.actions,
        vec![
            Action::AcquireLeader,
            Action::ClearFailover(3),
            Action::Promote
        ]
    );
}

#[test]
fn primary_left_running_without_a_leader_takes_the_lock() {
    let c = cluster(None, "n1");
    let d = run(Some(&c), &local(primary(1000)), &policy("n1"));
    assert_eq!(
        d.actions,
        vec![Action::AcquireLeader, Action::LeaderHousekeeping]
    );
}

// ---------------------------------------------------------------- fencing

#[test]
fn dcs_unreachable_as_primary_demotes_at_once() {
    let d = run(None, &local(primary(1000)), &policy("n1"));
    assert_eq!(d.actions, vec![Action::Demote(DemoteMode::Offline)]);
    assert_eq!(d.reasons, vec![Reason::DcsUnreachable]);
}

#[test]
fn lease_not_renewed_as_primary_demotes_even_if_a_stale_view_says_leader() {
    let c = cluster(Some("n1"), "n1");
    let mut l = local(primary(1000));
    l.session_ok = false;
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::Demote(DemoteMode::Offline)]);
}

#[test]
fn dcs_unreachable_as_replica_keeps_serving() {
    let d = run(None, &local(replica(1000)), &policy("n2"));
    assert!(d.actions.is_empty());
    assert_eq!(d.reasons, vec![Reason::DcsUnreachable]);
}

#[test]
fn dcs_unreachable_while_paused_leaves_the_primary_alone() {
    let mut p = policy("n1");
    p.paused = true;
    let d = run(None, &local(primary(1000)), &p);
    assert!(d.actions.is_empty());
}

#[test]
fn another_holder_demotes_a_running_primary() {
    let c = cluster(Some("n2"), "n1");
    let d = run(Some(&c), &local(primary(1000)), &policy("n1"));
    assert_eq!(d.actions, vec![Action::Demote(DemoteMode::Immediate)]);
    assert_eq!(d.reasons, vec![Reason::PrimaryWithoutLock("n2".into())]);
}

#[test]
fn primary_during_a_job_with_another_holder_still_demotes() {
    let c = cluster(Some("n2"), "n1");
    let mut l = local(primary(1000));
    l.job = Some(JobKind::Promote);
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::Demote(DemoteMode::Immediate)]);
}

// ---------------------------------------------------------------- crashes and rejoin

#[test]
fn postgres_crashed_while_holding_the_lease_restarts_in_place() {
    let c = cluster(Some("n1"), "n1");
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Initialized {
        sysid: Some(SYSID.into()),
        was_primary: true,
        crashed: true,
        timeline: Some(1),
    };
    l.down_since = Some(NOW.saturating_sub(Duration::from_secs(5)));
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::StartPrimary]);
    assert_eq!(d.reasons, vec![Reason::CrashedWhileLeader]);
}

#[test]
fn postgres_down_past_primary_start_timeout_releases_the_lock() {
    let c = cluster(Some("n1"), "n1");
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Initialized {
        sysid: Some(SYSID.into()),
        was_primary: true,
        crashed: true,
        timeline: Some(1),
    };
    l.down_since = Some(NOW.saturating_sub(Duration::from_secs(301)));
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::ReleaseLeader]);
    assert_eq!(d.reasons, vec![Reason::PrimaryStartTimeout]);
}

#[test]
fn former_primary_on_an_old_timeline_rewinds() {
    let mut c = cluster(Some("n2"), "n1");
    c.members[1].data.timeline = Some(2);
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Initialized {
        sysid: Some(SYSID.into()),
        was_primary: true,
        crashed: true,
        timeline: Some(1),
    };
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::StartRewind("n2".into())]);
    assert_eq!(d.reasons, vec![Reason::TimelineDiverged]);
}

#[test]
fn demoted_node_marked_for_rewind_rewinds_once_the_leader_is_on_a_new_timeline() {
    let mut c = cluster(Some("n2"), "n1");
    c.members[1].data.timeline = Some(2);
    let mut l = local(Pg::Stopped);
    l.needs_rewind = true;
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::StartRewind("n2".into())]);
}

#[test]
fn former_primary_waits_while_the_new_leader_still_reports_the_old_timeline() {
    // The new leader promoted a moment ago and has not published its new timeline yet:
    // starting as its replica now would follow a forked history.
    let c = cluster(Some("n2"), "n1");
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Initialized {
        sysid: Some(SYSID.into()),
        was_primary: true,
        crashed: true,
        timeline: Some(1),
    };
    let d = run(Some(&c), &l, &policy("n1"));
    assert!(d.actions.is_empty(), "{d:?}");
    assert_eq!(
        d.reasons,
        vec![Reason::WaitingForLeaderTimeline("n2".into())]
    );
}

#[test]
fn former_primary_waits_for_the_post_promote_checkpoint() {
    let mut c = cluster(Some("n2"), "n1");
    c.members[1].data.timeline = Some(2);
    c.members[1].data.extra.insert(
        "checkpoint_after_promote".into(),
        serde_json::Value::Bool(false),
    );
    let mut l = local(Pg::Stopped);
    l.needs_rewind = true;
    let d = run(Some(&c), &l, &policy("n1"));
    assert!(d.actions.is_empty(), "{d:?}");
}

#[test]
fn stopped_replica_starts_following_the_leader() {
    let c = cluster(Some("n1"), "n2");
    let d = run(Some(&c), &local(Pg::Stopped), &policy("n2"));
    assert_eq!(
        d.actions,
        vec![Action::StartReplica(Target::Member("n1".into()))]
    );
}

#[test]
fn stopped_node_without_a_leader_starts_read_only_to_race() {
    let c = cluster(None, "n2");
    let d = run(Some(&c), &local(Pg::Stopped), &policy("n2"));
    assert_eq!(d.actions, vec![Action::StartReplica(Target::Nobody)]);
}

/// Found by the first, hand-written simulation of `decide()` (since replaced by
/// `tests/executor_sim`): the lease guard stopped primary n1; with no
/// leader, its daemon started it read-only following nobody, and its pg_control then said
/// "replica". n2, whose copy lagged a few records behind n1's last writes, won the race, and
/// n1 followed n2 without a rewind: a forked history PostgreSQL refuses to stream. A former
/// primary now comes up the way a demoted one does, marked for a rewind.
#[test]
fn primary_stopped_by_the_lease_guard_without_a_leader_comes_up_marked_for_a_rewind() {
    let c = cluster(None, "n1");
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Initialized {
        sysid: Some(SYSID.into()),
        was_primary: true,
        crashed: true,
        timeline: Some(1),
    };
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::Demote(DemoteMode::Offline)]);
    // Marked (the daemon's `needs_rewind`), it starts read-only as any replica would...
    l.needs_rewind = true;
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::StartReplica(Target::Nobody)]);
    // ...and once n2 leads, it stops to rewind instead of following n2.
    let c = cluster(Some("n2"), "n1");
    let mut l = local(replica(1000));
    l.needs_rewind = true;
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::Demote(DemoteMode::Immediate)]);
    assert_eq!(d.reasons, vec![Reason::TimelineDiverged]);
}

#[test]
fn failed_rewind_waits_for_the_operator() {
    let c = cluster(Some("n2"), "n1");
    let mut l = local(Pg::Stopped);
    l.needs_rewind = true;
    l.rewind_failed = true;
    let d = run(Some(&c), &l, &policy("n1"));
    assert!(d.actions.is_empty());
    assert_eq!(d.reasons, vec![Reason::RewindFailed]);
}

#[test]
fn a_leader_holding_the_key_with_a_replica_promotes() {
    let c = cluster(Some("n2"), "n2");
    let d = run(Some(&c), &local(replica(1000)), &policy("n2"));
    assert_eq!(d.actions, vec![Action::Promote]);
    assert_eq!(d.reasons, vec![Reason::PromotionPending]);
}

// ---------------------------------------------------------------- identity

#[test]
fn system_id_mismatch_is_fatal() {
    let mut c = cluster(Some("n1"), "n2");
    c.initialize = Some("1111111111111111111".into());
    let d = run(Some(&c), &local(replica(1000)), &policy("n2"));
    assert!(matches!(&d.actions[0], Action::Fatal(m) if m.contains("another cluster")));
}

#[test]
fn leader_key_from_a_previous_session_is_reattached() {
    let mut c = cluster(Some("n1"), "n1");
    c.leader.as_mut().unwrap().owned_by_us = false;
    let d = run(Some(&c), &local(primary(1000)), &policy("n1"));
    assert_eq!(
        d.actions,
        vec![Action::ReattachLeader, Action::LeaderHousekeeping]
    );
    assert_eq!(d.reasons[0], Reason::LeaderKeyFromPreviousSession);
}

#[test]
fn running_job_blocks_other_actions() {
    let c = cluster(Some("n1"), "n2");
    let mut l = local(Pg::Stopped);
    l.job = Some(JobKind::Clone);
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
    assert_eq!(d.reasons, vec![Reason::JobInProgress(JobKind::Clone)]);
}

#[test]
fn paused_cluster_does_not_start_or_race() {
    let c = cluster(None, "n2");
    let mut p = policy("n2");
    p.paused = true;
    assert!(run(Some(&c), &local(Pg::Stopped), &p).actions.is_empty());
    assert!(run(Some(&c), &local(replica(5000)), &p).actions.is_empty());
}

#[test]
fn decision_summary_names_actions_and_reasons() {
    let c = cluster(None, "n2");
    let d = run(Some(&c), &local(replica(1000)), &policy("n2"));
    let s = d.summary();
    assert!(
        s.contains("acquire leader lock") && s.contains("healthiest"),
        "{s}"
    );
}

// ---------------------------------------------------------------- switchover and failover

fn with_failover(
    mut c: Cluster,
    leader: Option<&str>,
    member: Option<&str>,
    at: Option<&str>,
) -> Cluster {
    c.failover = Some(Versioned {
        value: Failover {
            leader: leader.map(str::to_string),
            member: member.map(str::to_string),
            scheduled_at: at.map(str::to_string),
        },
        version: 9,
    });
    c
}

#[test]
fn switchover_to_a_healthy_candidate_hands_over_gracefully() {
    let c = with_failover(cluster(Some("n1"), "n1"), Some("n1"), Some("n2"), None);
    let mut l = local(primary(1000));
    l.peers = Peers::Queried(vec![peer("n2", false, 1000), peer("n3", false, 1000)]);
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::Demote(DemoteMode::Graceful)]);
    assert_eq!(
        d.reasons,
        vec![Reason::ManualFailover {
            candidate: Some("n2".into())
        }]
    );
}

#[test]
fn switchover_without_candidate_needs_any_healthy_replica() {
    let c = with_failover(cluster(Some("n1"), "n1"), Some("n1"), None, None);
    let mut l = local(primary(1000));
    l.peers = Peers::Queried(vec![peer("n3", false, 1000)]);
    assert_eq!(
        run(Some(&c), &l, &policy("n1")).actions,
        vec![Action::Demote(DemoteMode::Graceful)]
    );
    l.peers = Peers::Queried(Vec::new());
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(
        d.actions,
        vec![Action::ClearFailover(9), Action::LeaderHousekeeping]
    );
}

#[test]
fn switchover_to_an_unreachable_or_nofailover_candidate_is_cleared() {
    let c = with_failover(cluster(Some("n1"), "n1"), Some("n1"), Some("n2"), None);
    let mut l = local(primary(1000));
    let mut dead = peer("n2", false, 1000);
    dead.reachable = false;
    l.peers = Peers::Queried(vec![dead, peer("n3", false, 1000)]);
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(
        d.actions,
        vec![Action::ClearFailover(9), Action::LeaderHousekeeping]
    );
    let mut nf = peer("n2", false, 1000);
    nf.nofailover = true;
    l.peers = Peers::Queried(vec![nf]);
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions[0], Action::ClearFailover(9));
}

#[test]
fn switchover_to_a_candidate_that_published_an_old_position_still_runs() {
    // The candidate's published position is a loop old; the graceful stop hands it the rest.
    let c = with_failover(cluster(Some("n1"), "n1"), Some("n1"), Some("n2"), None);
    let mut l = local(primary(50_000_000));
    l.peers = Peers::Queried(vec![peer("n2", false, 1000)]);
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::Demote(DemoteMode::Graceful)]);
}

#[test]
fn scheduled_switchover_waits_until_due_then_runs() {
    let c = with_failover(
        cluster(Some("n1"), "n1"),
        Some("n1"),
        Some("n2"),
        Some("2023-11-14T22:13:30+00:00"),
    );
    let mut l = local(primary(1000));
    l.peers = Peers::Queried(vec![peer("n2", false, 1000)]);
    l.unix_now = 1_700_000_000; // 2023-11-14T22:13:20Z: ten seconds early
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::LeaderHousekeeping]);
    assert!(matches!(d.reasons[1], Reason::ScheduledSwitchover(_)));
    l.unix_now = 1_700_000_011;
    assert_eq!(
        run(Some(&c), &l, &policy("n1")).actions,
        vec![Action::Demote(DemoteMode::Graceful)]
    );
}

#[test]
fn failover_key_naming_another_leader_is_cleared() {
    let c = with_failover(cluster(Some("n1"), "n1"), Some("n3"), Some("n2"), None);
    let d = run(Some(&c), &local(primary(1000)), &policy("n1"));
    assert_eq!(
        d.actions,
        vec![Action::ClearFailover(9), Action::LeaderHousekeeping]
    );
}

#[test]
fn the_new_leader_clears_the_failover_key_after_taking_the_lock() {
    let c = with_failover(cluster(None, "n2"), Some("n1"), Some("n2"), None);
    let d = run(Some(&c), &local(replica(1000)), &policy("n2"));
    assert_eq!(
        d.actions,
        vec![
            Action::AcquireLeader,
            Action::ClearFailover(9),
            Action::Promote
        ]
    );
}

#[test]
fn a_replica_that_is_not_the_candidate_lets_the_candidate_win() {
    let c = with_failover(cluster(None, "n3"), Some("n1"), Some("n2"), None);
    let mut l = local(replica(5000));
    l.peers = Peers::Queried(vec![peer("n2", false, 1000)]);
    let d = run(Some(&c), &l, &policy("n3"));
    assert!(d.actions.is_empty());
    assert!(
        matches!(&d.reasons[0], Reason::NotHealthiest(w) if w.to_string().contains("manual failover to n2"))
    );
}

// ---------------------------------------------------------------- tags

#[test]
fn replicatefrom_streams_from_the_named_member() {
    let c = cluster(Some("n1"), "n3");
    let mut p = policy("n3");
    p.replicatefrom = Some("n2".into());
    let mut l = local(replica(1000));
    l.upstream = Some(Target::Member("n1".into()));
    let d = run(Some(&c), &l, &p);
    assert_eq!(d.actions, vec![Action::Follow(Target::Member("n2".into()))]);
    assert_eq!(d.reasons, vec![Reason::ReplicatingFrom("n2".into())]);
}

#[test]
fn replicatefrom_a_member_that_is_down_falls_back_to_the_leader() {
    let mut c = cluster(Some("n1"), "n3");
    c.members[1].data.state = "stopped".into();
    let mut p = policy("n3");
    p.replicatefrom = Some("n2".into());
    let d = run(Some(&c), &local(Pg::Stopped), &p);
    assert_eq!(
        d.actions,
        vec![Action::StartReplica(Target::Member("n1".into()))]
    );
}

#[test]
fn clonefrom_member_is_the_copy_source_unless_from_leader() {
    let mut c = cluster(Some("n1"), "n3");
    c.members[1]
        .data
        .tags
        .insert("clonefrom".into(), serde_json::Value::Bool(true));
    c.members.retain(|m| m.name != "n3");
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Empty;
    assert_eq!(
        run(Some(&c), &l, &policy("n3")).actions,
        vec![Action::StartClone(Target::Member("n2".into()))]
    );
    l.clone_from_leader = true;
    assert_eq!(
        run(Some(&c), &l, &policy("n3")).actions,
        vec![Action::StartClone(Target::Member("n1".into()))]
    );
}

// ---------------------------------------------------------------- synchronous mode

fn with_sync(mut c: Cluster, leader: &str, standbys: Option<&str>) -> Cluster {
    c.sync = Some(Versioned {
        value: crate::dcs::SyncState {
            leader: Some(leader.into()),
            quorum: 0,
            sync_standby: standbys.map(str::to_string),
        },
        version: 4,
    });
    c
}

#[test]
fn only_the_synchronous_standby_may_be_promoted() {
    let c = with_sync(cluster(None, "n3"), "n1", Some("n2"));
    let mut p = policy("n3");
    p.synchronous = true;
    // n3 is ahead of everyone but not synchronous: it must not promote.
    let d = run(Some(&c), &local(replica(9000)), &p);
    assert!(d.actions.is_empty(), "{d:?}");
    assert!(
        matches!(&d.reasons[0], Reason::NotHealthiest(w) if w.to_string().contains("not a synchronous standby"))
    );
    // n2 is, and an asynchronous peer ahead of it does not count.
    let mut p2 = policy("n2");
    p2.synchronous = true;
    let mut l = local(replica(1000));
    l.peers = Peers::Queried(vec![peer("n3", false, 9000)]);
    let d = run(Some(&c), &l, &p2);
    assert_eq!(d.actions, vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn without_synchronous_mode_the_sync_key_is_ignored() {
    let c = with_sync(cluster(None, "n3"), "n1", Some("n2"));
    let d = run(Some(&c), &local(replica(9000)), &policy("n3"));
    assert_eq!(d.actions, vec![Action::AcquireLeader, Action::Promote]);
}

#[test]
fn sync_key_with_no_standby_blocks_every_automatic_promotion() {
    let c = with_sync(cluster(None, "n2"), "n1", None);
    let mut p = policy("n2");
    p.synchronous = true;
    assert!(run(Some(&c), &local(replica(1000)), &p).actions.is_empty());
}

#[test]
fn a_stopped_former_primary_waits_for_the_named_candidate_instead_of_racing() {
    let c = with_failover(cluster(None, "n1"), Some("n1"), Some("n2"), None);
    let mut l = local(Pg::Stopped);
    l.needs_rewind = true;
    let d = run(Some(&c), &l, &policy("n1"));
    assert!(d.actions.is_empty(), "{d:?}");
    assert!(
        matches!(&d.reasons[0], Reason::NotHealthiest(w) if w.to_string().contains("waiting for n2"))
    );
}

#[test]
fn quorum_mode_needs_enough_voters_confirming_the_candidate() {
    let mut c = with_sync(cluster(None, "n2"), "n1", Some("n2,n3"));
    c.sync.as_mut().unwrap().value.quorum = 1;
    let mut p = policy("n2");
    p.synchronous = true;
    p.quorum = true;
    // n3 unreachable: no vote.
    let mut l = local(replica(1000));
    let mut dead = peer("n3", false, 900);
    dead.reachable = false;
    l.peers = Peers::Queried(vec![dead]);
    let d = run(Some(&c), &l, &p);
    assert!(d.actions.is_empty(), "{d:?}");
    assert!(matches!(&d.reasons[0], Reason::NotHealthiest(w) if w.to_string().contains("quorum")));
    // n3 answers and is not ahead: one vote, enough.
    l.peers = Peers::Queried(vec![peer("n3", false, 900)]);
    assert_eq!(
        run(Some(&c), &l, &p).actions,
        vec![Action::AcquireLeader, Action::Promote]
    );
}

#[test]
fn paused_cluster_promotes_only_the_named_failover_candidate() {
    let c = with_failover(cluster(None, "n2"), None, Some("n2"), None);
    let mut p = policy("n2");
    p.paused = true;
    let d = run(Some(&c), &local(replica(1000)), &p);
    assert_eq!(
        d.actions,
        vec![
            Action::AcquireLeader,
            Action::ClearFailover(9),
            Action::Promote
        ]
    );
    let mut p3 = policy("n3");
    p3.paused = true;
    assert!(run(Some(&c), &local(replica(5000)), &p3).actions.is_empty());
}

// ---------------------------------------------------------------- hooks in the leader race

/// n1's leader key expired; n2 (me) at `mine`, n3 at `theirs`.
fn race(mine: u64, theirs: u64) -> (Cluster, LocalView) {
    let c = cluster(None, "n2");
    let mut l = local(replica(mine));
    l.peers = Peers::Queried(vec![
        PeerStatus::unreachable("n1"),
        peer("n3", false, theirs),
    ]);
    (c, l)
}

const PROMOTE: [Action; 2] = [Action::AcquireLeader, Action::Promote];

#[test]
fn a_before_promote_veto_keeps_the_healthiest_node_from_promoting() {
    let (c, mut l) = race(1000, 900);
    l.promotion_gate = PromotionGate::Vetoed("before_promote: backup site".into());
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(
        d.reasons,
        vec![Reason::PromotionVetoed(
            "before_promote: backup site".into()
        )]
    );
}

#[test]
fn an_unanswered_before_promote_hook_holds_the_promotion() {
    let (c, mut l) = race(1000, 900);
    l.promotion_gate = PromotionGate::Pending;
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
    assert_eq!(d.reasons, vec![Reason::WaitingForHook("before_promote")]);
}

#[test]
fn peers_not_queried_never_read_as_no_rivals() {
    // The same race, but nobody asked the peers: no promotion, and the reason says why.
    let (c, mut l) = race(1000, 900);
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(d.actions, PROMOTE.to_vec(), "asked, n2 is the healthiest");
    l.peers = Peers::NotQueried;
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty(), "{d:?}");
    assert!(
        matches!(&d.reasons[..], [Reason::NotHealthiest(why)] if why.to_string().contains("not asked")),
        "{d:?}"
    );
    // And the planner asks for them in exactly this situation.
    assert!(peers_needed(Some(&c), &l.pg, "n2", false));
    assert!(
        !peers_needed(Some(&c), &l.pg, "n2", true),
        "not while a job runs"
    );
}

#[test]
fn a_leader_asked_to_hand_over_waits_for_the_candidates_state_rather_than_clearing() {
    let mut c = cluster(Some("n1"), "n1");
    c.failover = Some(switchover("n1", "n2", 7));
    let mut l = local(primary(1000));
    assert!(peers_needed(Some(&c), &l.pg, "n1", false));
    l.peers = Peers::NotQueried;
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::LeaderHousekeeping], "{d:?}");
    assert!(d.reasons.contains(&Reason::PeersNotQueried), "{d:?}");
    // Asked, with n2 healthy: hand over.
    l.peers = Peers::Queried(vec![peer("n2", false, 1000)]);
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(
        d.actions,
        vec![Action::Demote(DemoteMode::Graceful)],
        "{d:?}"
    );
}

#[test]
fn a_peer_whose_hook_vetoed_is_skipped_even_when_ahead() {
    let (c, mut l) = race(900, 1000);
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty(), "n3 is ahead: n2 waits");
    if let Peers::Queried(p) = &mut l.peers {
        p[1].promotion_veto = Some("before_promote: no".into());
    }
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(d.actions, PROMOTE.to_vec());
    assert_eq!(d.reasons, vec![Reason::HealthiestAfterLeaderExpired]);
}

#[test]
fn choose_failover_candidate_can_pick_a_node_that_is_not_the_furthest_ahead() {
    let (c, mut l) = race(900, 1000);
    l.candidate_choice = CandidateChoice::Member("n2".into());
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(d.actions, PROMOTE.to_vec());
    assert_eq!(d.reasons, vec![Reason::ChosenByHook("n2".into())]);
}

#[test]
fn a_node_defers_to_the_candidate_the_hook_picked() {
    let (c, mut l) = race(1000, 900);
    l.candidate_choice = CandidateChoice::Member("n3".into());
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
    assert_eq!(
        d.reasons,
        vec![Reason::NotHealthiest(NotHealthiest::HookPicked(
            "n3".into()
        ))]
    );
}

#[test]
fn the_hook_cannot_pick_an_unhealthy_or_barred_candidate() {
    // n3 is a nofailover node: not a candidate, so the pick is ignored and n2, the
    // healthiest, promotes.
    let (c, mut l) = race(1000, 900);
    if let Peers::Queried(p) = &mut l.peers {
        p[1].nofailover = true;
    }
    l.candidate_choice = CandidateChoice::Member("n3".into());
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(d.actions, PROMOTE.to_vec());
    assert_eq!(d.reasons, vec![Reason::HealthiestAfterLeaderExpired]);
    // Nor can it pick me when I lag beyond maximum_lag_on_failover (optime 1000 + 2 MiB).
    let (mut c, mut l) = race(1000, 3_000_000);
    c.status = Some(Status {
        optime: Some(3_000_000),
        ..Status::default()
    });
    l.candidate_choice = CandidateChoice::Member("n2".into());
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(
        matches!(
            &d.reasons[..],
            [Reason::NotHealthiest(NotHealthiest::Lagging { .. })]
        ),
        "{:?}",
        d.reasons
    );
}

#[test]
fn a_denied_choice_or_a_pending_one_promotes_nobody() {
    let (c, mut l) = race(1000, 900);
    l.candidate_choice = CandidateChoice::Nobody("hook failed".into());
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
    assert_eq!(
        d.reasons,
        vec![Reason::NoCandidateChosen("hook failed".into())]
    );
    l.candidate_choice = CandidateChoice::Pending;
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
    assert_eq!(
        d.reasons,
        vec![Reason::WaitingForHook("choose_failover_candidate")]
    );
}

#[test]
fn a_failover_request_naming_me_ignores_the_choice_but_not_the_veto() {
    let (mut c, mut l) = race(900, 1000);
    c.failover = Some(Versioned {
        value: Failover {
            member: Some("n2".into()),
            ..Failover::default()
        },
        version: 3,
    });
    l.candidate_choice = CandidateChoice::Member("n3".into());
    let d = run(Some(&c), &l, &policy("n2"));
    assert_eq!(
        d.actions,
        vec![
            Action::AcquireLeader,
            Action::ClearFailover(3),
            Action::Promote
        ]
    );
    l.promotion_gate = PromotionGate::Vetoed("before_promote: no".into());
    let d = run(Some(&c), &l, &policy("n2"));
    assert!(d.actions.is_empty());
}

#[test]
fn failover_candidates_are_ordered_and_filtered() {
    let c = cluster(None, "n2");
    let mut l = local(replica(900));
    let mut n4 = peer("n4", false, 1000);
    n4.failover_priority = 2;
    let mut n5 = peer("n5", false, 5000);
    n5.promotion_veto = Some("no".into());
    let mut n6 = peer("n6", false, 800);
    n6.nofailover = true;
    l.peers = Peers::Queried(vec![
        PeerStatus::unreachable("n1"),
        peer("n3", false, 1000),
        n4,
        n5,
        n6,
        peer("n7", true, 2000),
    ]);
    assert_eq!(
        failover_candidates(&c, &policy("n2"), &l),
        vec!["n4", "n3", "n2"],
        "by position, then priority; vetoed, nofailover, unreachable and primaries excluded"
    );
    l.promotion_gate = PromotionGate::Vetoed("x".into());
    assert_eq!(failover_candidates(&c, &policy("n2"), &l), vec!["n4", "n3"]);
}

#[test]
fn a_switchover_to_a_vetoing_candidate_is_cleared() {
    let mut c = cluster(Some("n1"), "n1");
    c.failover = Some(Versioned {
        value: Failover {
            leader: Some("n1".into()),
            member: Some("n2".into()),
            ..Failover::default()
        },
        version: 4,
    });
    let mut l = local(primary(1000));
    let mut n2 = peer("n2", false, 1000);
    n2.promotion_veto = Some("before_promote: no".into());
    l.peers = Peers::Queried(vec![n2]);
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(
        d.actions,
        vec![Action::ClearFailover(4), Action::LeaderHousekeeping]
    );
}

/// A standby cluster's policy for `name`.
fn standby(name: &str) -> Policy {
    Policy {
        standby_cluster: true,
        ..policy(name)
    }
}

#[test]
fn a_new_standby_cluster_copies_the_other_cluster_instead_of_running_initdb() {
    let mut c = cluster(None, "n1");
    c.initialize = None;
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Empty;
    let d = run(Some(&c), &l, &standby("n1"));
    assert_eq!(
        d.actions,
        vec![
            Action::AcquireLeader,
            Action::StartClone(Target::StandbySource)
        ]
    );
    assert!(d.reasons.contains(&Reason::StandbyLeader), "{d:?}");
    // Holding the key after a copy that failed: copy again, never initdb.
    let c = {
        let mut c = cluster(Some("n1"), "n1");
        c.initialize = None;
        c
    };
    let d = run(Some(&c), &l, &standby("n1"));
    assert_eq!(d.actions, vec![Action::StartClone(Target::StandbySource)]);
    // Its replicas copy the standby leader, as in any cluster.
    let d = run(Some(&cluster(Some("n1"), "n2")), &l, &standby("n2"));
    assert_eq!(
        d.actions,
        vec![Action::StartClone(Target::Member("n1".into()))]
    );
}

#[test]
fn the_standby_leader_follows_the_source_and_never_promotes() {
    let c = cluster(Some("n1"), "n1");
    let mut l = local(replica(100));
    let d = run(Some(&c), &l, &standby("n1"));
    assert_eq!(
        d.actions,
        vec![
            Action::Follow(Target::StandbySource),
            Action::LeaderHousekeeping
        ]
    );
    assert_eq!(d.reasons, vec![Reason::StandbyLeader]);
    l.upstream = Some(Target::StandbySource);
    let d = run(Some(&c), &l, &standby("n1"));
    assert_eq!(d.actions, vec![Action::LeaderHousekeeping]);
    // Stopped: started following the source again.
    let mut stopped = local(Pg::Stopped);
    stopped.upstream = None;
    let d = run(Some(&c), &stopped, &standby("n1"));
    assert_eq!(d.actions, vec![Action::StartReplica(Target::StandbySource)]);
    // The section removed: the same node promotes (the standby cluster becomes a primary
    // cluster).
    let d = run(Some(&c), &l, &policy("n1"));
    assert_eq!(d.actions, vec![Action::Promote]);
    assert_eq!(d.reasons, vec![Reason::PromotionPending]);
    // Maintenance mode: the key stays, PostgreSQL is left alone.
    let paused = Policy {
        paused: true,
        ..standby("n1")
    };
    let mut l2 = local(replica(100));
    l2.upstream = Some(Target::Nobody);
    let d = run(Some(&c), &l2, &paused);
    assert_eq!(d.actions, vec![Action::LeaderHousekeeping]);
}

#[test]
fn a_standby_cluster_that_lost_its_leader_elects_a_new_standby_leader() {
    let c = cluster(None, "n2");
    let mut l = local(replica(200));
    l.peers = Peers::Queried(vec![peer("n3", false, 100)]);
    // A promotion hook that vetoes is not asked: nothing is promoted.
    l.promotion_gate = PromotionGate::Vetoed("no".into());
    let d = run(Some(&c), &l, &standby("n2"));
    assert_eq!(
        d.actions,
        vec![
            Action::AcquireLeader,
            Action::Follow(Target::StandbySource),
            Action::LeaderHousekeeping
        ]
    );
    assert!(!d.actions.contains(&Action::Promote));
    // Behind a peer: waits, as in any race.
    l.peers = Peers::Queried(vec![peer("n3", false, 300)]);
    let d = run(Some(&c), &l, &standby("n2"));
    assert!(d.actions.is_empty(), "{d:?}");
}

#[test]
fn a_primary_is_not_demoted_into_a_standby_cluster() {
    let c = cluster(Some("n1"), "n1");
    let d = run(Some(&c), &local(primary(100)), &standby("n1"));
    assert_eq!(d.actions, vec![Action::LeaderHousekeeping]);
    assert!(
        d.reasons.contains(&Reason::StandbyClusterOnPrimary),
        "{d:?}"
    );
}

#[test]
fn without_a_leader_an_empty_node_restores_the_newest_backup_when_allowed() {
    let c = cluster(None, "n3");
    let mut l = local(Pg::Stopped);
    l.data = DataDir::Empty;
    let d = run(Some(&c), &l, &policy("n3"));
    assert_eq!(d.reasons, vec![Reason::WaitingForBootstrap]);
    assert!(d.actions.is_empty());
    let p = Policy {
        restore_without_leader: true,
        ..policy("n3")
    };
    let d = run(Some(&c), &l, &p);
    assert_eq!(d.actions, vec![Action::StartClone(Target::Nobody)]);
    assert_eq!(d.reasons, vec![Reason::RestoreWithoutLeader]);
    // A cluster nobody initialized yet is bootstrapped, never restored.
    let mut fresh = cluster(None, "n3");
    fresh.initialize = None;
    let d = run(Some(&fresh), &l, &p);
    assert_eq!(
        d.actions,
        vec![Action::AcquireLeader, Action::StartBootstrap]
    );
    // Paused: nothing.
    let paused = Policy { paused: true, ..p };
    assert!(run(Some(&c), &l, &paused).actions.is_empty());
}

#[test]
fn a_switchover_inside_a_standby_cluster_releases_the_key_to_the_candidate() {
    let mut c = cluster(Some("n1"), "n1");
    c.failover = Some(switchover("n1", "n2", 3));
    let mut l = local(replica(500));
    l.upstream = Some(Target::StandbySource);
    // The standby leader asks its peers, as a primary would.
    assert!(peers_needed(Some(&c), &l.pg, "n1", false));
    l.peers = Peers::NotQueried;
    let d = run(Some(&c), &l, &standby("n1"));
    assert_eq!(d.actions, vec![Action::LeaderHousekeeping]);
    assert!(d.reasons.contains(&Reason::PeersNotQueried), "{d:?}");
    l.peers = Peers::Queried(vec![peer("n2", false, 500)]);
    let d = run(Some(&c), &l, &standby("n1"));
    assert_eq!(d.actions, vec![Action::ReleaseLeader]);
    // The candidate then takes the key and follows the other cluster.
    let mut c2 = cluster(None, "n2");
    c2.failover = c.failover.clone();
    let d = run(Some(&c2), &local(replica(500)), &standby("n2"));
    assert_eq!(
        d.actions,
        vec![
            Action::AcquireLeader,
            Action::ClearFailover(3),
            Action::Follow(Target::StandbySource),
            Action::LeaderHousekeeping
        ]
    );
    // A candidate that is not a member: the request is cleared, the leader stays.
    c.failover = Some(switchover("n1", "n9", 4));
    let d = run(Some(&c), &l, &standby("n1"));
    assert_eq!(
        d.actions,
        vec![Action::ClearFailover(4), Action::LeaderHousekeeping]
    );
}
