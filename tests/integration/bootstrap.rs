//! A 3-node cluster bootstraps to one primary and two streaming replicas.

use spilo_tests::{ClusterOpts, TestCluster};

use crate::{BOOTSTRAP, REPLICATION};

#[test]
fn three_nodes_bootstrap_to_one_primary_and_two_streaming_replicas() {
    let c = TestCluster::start(3, ClusterOpts::named("bootstrap"));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replicas = c.others(&primary);

    // /patroni: one primary, two replicas, each under its own name.
    for n in &c.nodes {
        let v = n.patroni().expect("/patroni answers");
        let want = if n.name == primary {
            "primary"
        } else {
            "replica"
        };
        assert_eq!(v["role"], want, "{}: /patroni = {v}", n.name);
        assert_eq!(
            v["patroni"]["name"],
            n.name.as_str(),
            "{}: /patroni = {v}",
            n.name
        );
        assert_eq!(v["state"], "running", "{}: /patroni = {v}", n.name);
    }

    // pg_stat_replication on the primary: two streaming walsenders.
    let p = c.node(&primary);
    let streaming = p
        .sql_value("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        .expect("query pg_stat_replication");
    assert_eq!(
        streaming.as_deref(),
        Some("2"),
        "{primary}: streaming walsenders"
    );

    // The leader key names the primary.
    assert_eq!(
        c.leader_from_dcs().expect("read the leader key").as_deref(),
        Some(primary.as_str())
    );

    // A row written on the primary is read on both replicas.
    p.write_value("bootstrap_rows", "written on the primary")
        .expect("INSERT on the primary");
    for r in &replicas {
        c.wait_for_value(r, "bootstrap_rows", "written on the primary", REPLICATION);
        assert!(
            c.node(r).in_recovery().expect("query the replica"),
            "{r} must be in recovery"
        );
    }
}
