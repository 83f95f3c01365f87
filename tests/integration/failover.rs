//! SIGKILL of the primary's daemon and postmaster: another node takes over; the old node,
//! restarted, rejoins as a replica on the new timeline.

use std::time::Duration;

use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::{BOOTSTRAP, REJOIN, REPLICATION};

#[test]
fn killed_primary_fails_over_and_rejoins_as_replica_on_new_timeline() {
    let mut c = TestCluster::start(3, ClusterOpts::named("failover"));
    let ttl = c.opts.node.ttl;
    let old = c.wait_for_replicas_streaming(BOOTSTRAP);
    let old_tl = c
        .node(&old)
        .timeline()
        .expect("primary's timeline on /patroni");

    // A row every replica has before the crash.
    c.node(&old)
        .write_value("failover_rows", "before the crash")
        .expect("INSERT on the primary");
    for r in c.others(&old) {
        c.wait_for_value(&r, "failover_rows", "before the crash", REPLICATION);
    }

    // Daemon first (so nothing restarts PostgreSQL), then the postmaster.
    let n = c.node_mut(&old);
    n.kill_daemon(libc::SIGKILL);
    n.wait_daemon_exit(Duration::from_secs(10))
        .expect("SIGKILLed daemon exits");
    n.kill_postmaster(libc::SIGKILL);

    let bound = Duration::from_secs(ttl + 15);
    let (new, took) = c.wait_for_writer(&[old.as_str()], bound);
    assert_ne!(new, old);
    note(format!(
        "failover: {new} accepts writes {took:?} after the kill (bound {bound:?})"
    ));

    let new_tl = wait_for(
        &format!("{new} on a timeline after {old_tl}"),
        Duration::from_secs(30),
        || match c.node(&new).patroni() {
            Ok(v)
                if v["role"] == "primary" && v["timeline"].as_u64().is_some_and(|t| t > old_tl) =>
            {
                Ok(v["timeline"].as_u64().unwrap_or_default())
            }
            Ok(v) => Err(format!(
                "{new}: role {} timeline {}",
                v["role"], v["timeline"]
            )),
            Err(e) => Err(e),
        },
    );
    assert!(c
        .node(&new)
        .has_value("failover_rows", "before the crash")
        .expect("read on the new primary"));
    c.node(&new)
        .write_value("failover_rows", "after the failover")
        .expect("INSERT on the new primary");
    wait_for(
        "the leader key to name the new primary",
        Duration::from_secs(30),
        || match c.leader_from_dcs() {
            Ok(Some(l)) if l == new => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // The old node comes back as a replica of the new primary, on the new timeline.
    c.node_mut(&old).restart_daemon();
    wait_for(
        &format!("{old} back as a replica on timeline {new_tl}"),
        REJOIN,
        || {
            let v = c.node(&old).patroni()?;
            if v["role"] == "replica"
                && v["state"] == "running"
                && v["timeline"].as_u64() == Some(new_tl)
            {
                Ok(())
            } else {
                Err(format!(
                    "{old}: role {} state {} timeline {}",
                    v["role"], v["state"], v["timeline"]
                ))
            }
        },
    );
    assert_eq!(
        c.node(&new).timeline(),
        Some(new_tl),
        "the new primary's timeline moved"
    );
    c.wait_for_value(&old, "failover_rows", "after the failover", REJOIN);
    c.node(&new)
        .write_value("failover_rows", "after the rejoin")
        .expect("INSERT on the new primary");
    c.wait_for_value(&old, "failover_rows", "after the rejoin", REPLICATION);
    let others = c.others(&new);
    let refs: Vec<&str> = others.iter().map(String::as_str).collect();
    c.wait_for_streaming(&new, &refs, REJOIN);
    assert!(
        !c.node(&old).try_write("failover_rows"),
        "{old} accepts writes as a replica"
    );
}
