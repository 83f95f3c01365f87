//! A second daemon with the same member name refuses to run.

use std::time::Duration;

use spilo_tests::{ClusterOpts, TestCluster};

use crate::BOOTSTRAP;

#[test]
fn second_daemon_with_same_name_exits_nonzero() {
    let mut c = TestCluster::start(1, ClusterOpts::named("dupname"));
    let primary = c.wait_for_primary(BOOTSTRAP);
    assert_eq!(primary, "node1");

    // Same name and scope; its own ports and data dir.
    let opts = c.opts.node.clone();
    let i = c.add_node("node1-duplicate", "node1", opts);
    c.nodes[i].start();
    let status = c.nodes[i].wait_daemon_exit(Duration::from_secs(60));
    let log = c.nodes[i].log_text();
    let status = status
        .unwrap_or_else(|| panic!("the duplicate node1 still runs after 60 s; its log:\n{log}"));
    assert!(
        !status.success(),
        "the duplicate exited with {status}; its log:\n{log}"
    );
    let lower = log.to_lowercase();
    assert!(
        lower.contains("already") && lower.contains("node1"),
        "the duplicate's log does not say a node named node1 is already running:\n{log}"
    );
    assert!(
        !c.nodes[i].data_dir.join("PG_VERSION").exists(),
        "the duplicate initialised a data dir"
    );

    // The first one is untouched.
    let v = c.nodes[0].patroni().expect("/patroni on the first node1");
    assert_eq!(v["role"], "primary", "first node1: /patroni = {v}");
    assert_eq!(
        c.leader_from_dcs().expect("read the leader key").as_deref(),
        Some("node1")
    );
    assert!(
        c.nodes[0].try_write("dup_rows"),
        "the first node1 no longer accepts writes"
    );
}
