//! A spilo cluster on a 3-member etcd: killing the raft leader member, which is also the member
//! the daemons talk to, keeps quorum, so nothing happens to PostgreSQL: the primary is not
//! demoted or restarted, no failover starts, and writes go on throughout.

use std::time::{Duration, Instant};

use spilo_tests::etcd_cluster::EtcdCluster;
use spilo_tests::{note, wait_for, ClusterOpts, DcsServer, TestCluster};

use crate::{BOOTSTRAP, REPLICATION};

/// What must not change while etcd loses a member.
#[derive(Debug, PartialEq)]
struct PrimaryFacts {
    name: String,
    timeline: Option<u64>,
    postmaster_start: Option<String>,
}

fn facts(c: &TestCluster, name: &str) -> PrimaryFacts {
    let n = c.node(name);
    PrimaryFacts {
        name: name.to_string(),
        timeline: n.timeline(),
        postmaster_start: n.postmaster_start_time(),
    }
}

#[test]
fn killing_the_etcd_raft_leader_member_neither_demotes_nor_fails_over() {
    let mut c = TestCluster::start_with(2, ClusterOpts::named("etcdleader"), |_| {
        DcsServer::etcd_cluster(EtcdCluster::start(3))
    });
    let ttl = c.opts.node.ttl;
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replica = c.others(&primary).remove(0);
    let before = facts(&c, &primary);
    assert!(
        before.timeline.is_some() && before.postmaster_start.is_some(),
        "{before:?}"
    );

    // The daemons use the first endpoint of `hosts`: make member 0 the raft leader too, so
    // the kill takes both the leader and the daemons' connection.
    let DcsServer::EtcdCluster(etcd) = &mut c.dcs else {
        unreachable!("started on an etcd cluster")
    };
    etcd.move_leader_to(0)
        .expect("move the raft leader to member 0");
    etcd.kill_member(0);
    note("killed etcd member 0, the raft leader");

    // For three TTLs: every write succeeds, the roles stay, the primary's postmaster is the
    // same process on the same timeline.
    let window = Duration::from_secs(3 * ttl);
    let started = Instant::now();
    let mut writes = 0;
    while started.elapsed() < window {
        let value = format!("write {writes}");
        if let Err(e) = c.node(&primary).write_value("etcd_member_rows", &value) {
            c.dump_logs(40);
            panic!(
                "{primary} refused a write {:?} after the etcd leader died: {e}",
                started.elapsed()
            );
        }
        writes += 1;
        assert_eq!(
            c.node(&primary).role().as_deref(),
            Some("primary"),
            "{primary} left the primary role {:?} after the kill",
            started.elapsed()
        );
        assert_eq!(
            c.node(&replica).role().as_deref(),
            Some("replica"),
            "{replica} left the replica role {:?} after the kill",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        facts(&c, &primary),
        before,
        "the primary was restarted, demoted or promoted again"
    );
    assert_eq!(
        c.leader_from_dcs().expect("read the leader key").as_deref(),
        Some(primary.as_str()),
        "the leader key moved"
    );
    note(format!("{writes} writes in {window:?}, none refused"));
    // Both daemons did lose their endpoint and moved on (else the kill proved nothing).
    for n in [&primary, &replica] {
        let log = c.node(n).log_text();
        assert!(
            log.contains("etcd endpoint failed, switching"),
            "{n} never switched etcd endpoints; log tail:\n{}",
            c.node(n).log_tail(30)
        );
    }
    c.wait_for_value(
        &replica,
        "etcd_member_rows",
        &format!("write {}", writes - 1),
        REPLICATION,
    );

    // The member comes back and rejoins; still nothing changes.
    let DcsServer::EtcdCluster(etcd) = &mut c.dcs else {
        unreachable!("started on an etcd cluster")
    };
    etcd.start_member(0);
    wait_for(
        "a leader key renewed after member 0 returned",
        Duration::from_secs(2 * ttl),
        || match c.leader_from_dcs() {
            Ok(Some(l)) if l == primary => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(
        facts(&c, &primary),
        before,
        "the primary changed after member 0 returned"
    );
}
