//! SIGTERM of the leader's daemon: it hands over, another node is primary well before ttl.

use std::time::{Duration, Instant};

use spilo_tests::{note, poll, ClusterOpts, TestCluster};

use crate::{BOOTSTRAP, REPLICATION};

#[test]
fn sigterm_on_leader_hands_over_well_under_ttl() {
    let ttl = 30;
    let mut c = TestCluster::start(3, ClusterOpts::named("handover").timing(ttl, 2, 3));
    let old = c.wait_for_replicas_streaming(BOOTSTRAP);
    c.node(&old)
        .write_value("handover_rows", "before the handover")
        .expect("INSERT on the primary");
    for r in c.others(&old) {
        c.wait_for_value(&r, "handover_rows", "before the handover", REPLICATION);
    }

    let t0 = Instant::now();
    c.node_mut(&old).kill_daemon(libc::SIGTERM);
    let bound = Duration::from_secs(10);
    let r = poll(bound, Duration::from_millis(200), || {
        for name in c.others(&old) {
            if c.node(&name).try_write("handover_rows") {
                return Ok(name);
            }
        }
        Err(c.describe())
    });
    let new = match r {
        Ok((name, _)) => name,
        Err(last) => panic!(
            "no other node accepted writes within {bound:?} of SIGTERM to {old}'s daemon (ttl {ttl}); last states: {last}"
        ),
    };
    let took = t0.elapsed();
    note(format!(
        "handover: {new} accepts writes {took:?} after SIGTERM (ttl {ttl} s)"
    ));
    assert!(
        took < Duration::from_secs(ttl),
        "took {took:?}, not under ttl"
    );

    assert!(c
        .node(&new)
        .has_value("handover_rows", "before the handover")
        .expect("read on the new primary"));
    let status = c.node_mut(&old).wait_daemon_exit(Duration::from_secs(60));
    assert!(
        status.is_some(),
        "{old}'s daemon still runs 60 s after SIGTERM"
    );
    assert!(
        !c.node(&old).try_write("handover_rows"),
        "{old} still accepts writes after its daemon stopped"
    );
    let (leader, _) = poll(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || match c.leader_from_dcs() {
            Ok(Some(l)) if l == new => Ok(l),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap_or_else(|last| panic!("leader key does not name {new}: {last}"));
    assert_eq!(leader, new);
}
