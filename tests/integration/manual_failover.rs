//! `POST /failover {"candidate": X}`: with a healthy primary, and again on the leader chosen by
//! an automatic failover after the first primary was killed.

use std::time::Duration;

use serde_json::json;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::ops::{call, expect, wait_replica_of};
use crate::{BOOTSTRAP, REJOIN, REPLICATION};

#[test]
fn manual_failover_to_a_candidate_then_again_after_an_automatic_failover() {
    let mut c = TestCluster::start(3, ClusterOpts::named("manual-failover"));
    let ttl = c.opts.node.ttl;
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let cand = c.others(&p)[0].clone();
    c.node(&p)
        .write_value("manual_failover_rows", "first")
        .expect("INSERT on the primary");
    for r in c.others(&p) {
        c.wait_for_value(&r, "manual_failover_rows", "first", REPLICATION);
    }

    // 1. A manual failover with the primary healthy.
    let r = call(
        c.node(&p),
        "POST",
        "/failover",
        Some(&json!({"candidate": cand})),
    );
    expect(
        "POST /failover to a healthy primary",
        r,
        200,
        Some(&format!("Successfully failed over to \"{cand}\"")),
    );
    let now = c.wait_for_primary(Duration::from_secs(60));
    assert_eq!(now, cand, "the candidate is not the primary");
    assert!(c
        .node(&cand)
        .has_value("manual_failover_rows", "first")
        .expect("read on the new primary"));
    wait_replica_of(&c, &p, &cand, REJOIN);

    // 2. Kill the new primary (daemon first, then postmaster): another node takes over by
    //    itself; then ask that leader for a manual failover to the remaining node.
    let killed = cand.clone();
    {
        let n = c.node_mut(&killed);
        n.kill_daemon(libc::SIGKILL);
        n.wait_daemon_exit(Duration::from_secs(10))
            .expect("SIGKILLed daemon exits");
        n.kill_postmaster(libc::SIGKILL);
    }
    let (auto, took) = c.wait_for_writer(&[killed.as_str()], Duration::from_secs(ttl + 30));
    note(format!(
        "automatic failover: {auto} writes {took:?} after the kill"
    ));
    let x = c
        .others(&killed)
        .into_iter()
        .find(|n| *n != auto)
        .expect("a third node");
    // X must follow the automatic leader before it can be a good candidate.
    c.wait_for_streaming(&auto, &[x.as_str()], REJOIN);
    c.node(&auto)
        .write_value("manual_failover_rows", "after the automatic failover")
        .expect("INSERT on the automatic leader");
    c.wait_for_value(
        &x,
        "manual_failover_rows",
        "after the automatic failover",
        REPLICATION,
    );
    let r = call(
        c.node(&auto),
        "POST",
        "/failover",
        Some(&json!({"candidate": x})),
    );
    expect(
        "POST /failover on the automatic leader",
        r,
        200,
        Some(&format!("Successfully failed over to \"{x}\"")),
    );
    let now = c.wait_for_primary_except(&[killed.as_str()], Duration::from_secs(60));
    assert_eq!(
        now, x,
        "the candidate of the second failover is not the primary"
    );
    wait_for(
        &format!("the leader key to name {x}"),
        Duration::from_secs(30),
        || match c.leader_from_dcs() {
            Ok(Some(l)) if l == x => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(c
        .node(&x)
        .has_value("manual_failover_rows", "after the automatic failover")
        .expect("read on the final primary"));
    wait_replica_of(&c, &auto, &x, REJOIN);

    // The killed node, restarted, rejoins the final primary.
    c.node_mut(&killed).restart_daemon();
    wait_replica_of(&c, &killed, &x, REJOIN);
    c.node(&x)
        .write_value("manual_failover_rows", "last")
        .expect("INSERT on the final primary");
    for r in c.others(&x) {
        c.wait_for_value(&r, "manual_failover_rows", "last", REPLICATION);
    }
}

/// Failover to a named candidate while the cluster has no live leader: the primary is killed
/// and, before its lease expires, `POST /failover` names the replica that would *not* win the
/// race on its own (the other has a higher `failover_priority`). The named one is promoted.
#[test]
fn failover_to_a_named_candidate_when_the_leader_is_dead() {
    let mut c = TestCluster::start(3, ClusterOpts::named("deadleaderfo"));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let others = c.others(&primary);
    let (named, favoured) = (others[0].clone(), others[1].clone());
    // The favoured replica would win an ordinary race at equal positions.
    c.node_mut(&favoured)
        .rewrite_config(|o| o.tags.push(("failover_priority".into(), "5".into())));
    let r = call(c.node(&favoured), "POST", "/reload", None);
    expect("POST /reload", r, 202, None);
    wait_for(
        "the favoured replica's new priority",
        Duration::from_secs(20),
        || match c.node(&favoured).patroni() {
            Ok(v)
                if v["tags"]["failover_priority"] == 5 || v["tags"]["failover_priority"] == "5" =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    );

    let n = c.node_mut(&primary);
    n.kill_daemon(libc::SIGKILL);
    n.kill_postmaster(libc::SIGKILL);
    let body = json!({"candidate": named});
    let r = call(c.node(&named), "POST", "/failover", Some(&body));
    expect(
        "POST /failover to the named candidate",
        r,
        200,
        Some(&named),
    );
    let new = c.wait_for_primary_except(&[primary.as_str()], REJOIN);
    assert_eq!(
        new, named,
        "{favoured} won instead of the named candidate {named}"
    );
}
