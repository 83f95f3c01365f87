//! ZooKeeper-specific HA tests: a 3-server ensemble losing its quorum (the primary stops
//! taking writes; the cluster recovers when the quorum returns), and a node bootstrapping over
//! TLS (`zookeeper: {use_ssl: true, cacert, cert, key}` wired end to end).

use std::time::Duration;

use spilo_tests::util::chown_postgres;
use spilo_tests::zookeeper::ZooKeeper;
use spilo_tests::zookeeper_ensemble::ZkEnsemble;
use spilo_tests::{note, poll, ClusterOpts, DcsServer, TestCluster};

use crate::{BOOTSTRAP, REJOIN, REPLICATION};

#[test]
fn zookeeper_quorum_loss_stops_writes_and_cluster_recovers() {
    let mut c = TestCluster::start_with(2, ClusterOpts::named("zkquorum"), |_| {
        DcsServer::ZooKeeperEnsemble(ZkEnsemble::start(3))
    });
    let ttl = c.opts.node.ttl;
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replica = c.others(&primary).remove(0);
    c.node(&primary)
        .write_value("quorum_rows", "before the quorum loss")
        .expect("INSERT on the primary");
    c.wait_for_value(
        &replica,
        "quorum_rows",
        "before the quorum loss",
        REPLICATION,
    );

    // Two of three servers die: the survivor has no quorum and stops serving.
    let killed = c.dcs.ensemble().lose_quorum(0);
    note(format!(
        "ZooKeeper servers {killed:?} (0-based) killed; server 0 survives"
    ));
    let bound = Duration::from_secs(ttl + 15);
    let r = poll(bound, Duration::from_millis(250), || {
        if c.node(&primary).try_write("quorum_rows") {
            Err("the primary still accepts INSERTs".to_string())
        } else {
            Ok(())
        }
    });
    match r {
        Ok((_, took)) => note(format!(
            "{primary} refuses writes {took:?} after the quorum loss"
        )),
        Err(last) => panic!(
            "{primary} still accepted writes {bound:?} after the quorum loss (ttl {ttl}): {last}"
        ),
    }
    assert_eq!(
        c.dcs.ensemble().mode(0),
        None,
        "the surviving ZooKeeper server still serves without a quorum"
    );
    // No node takes writes while the quorum is gone, a few HA cycles later either.
    std::thread::sleep(Duration::from_secs(2 * c.opts.node.loop_wait + 2));
    for n in [&primary, &replica] {
        assert!(
            !c.node(n).try_write("quorum_rows"),
            "{n} accepts writes without a ZooKeeper quorum"
        );
    }

    c.dcs.ensemble().start_all();
    note("ZooKeeper quorum back");
    let (writer, took) = c.wait_for_writer(&[], REJOIN);
    note(format!(
        "{writer} accepts writes {took:?} after the quorum returned"
    ));
    let primary = c.wait_for_primary(REJOIN);
    assert_eq!(
        primary, writer,
        "the node taking writes is not the one /patroni calls primary"
    );
    let replica = c.others(&primary).remove(0);
    c.wait_for_streaming(&primary, &[replica.as_str()], REJOIN);
    let writers: Vec<&str> = [primary.as_str(), replica.as_str()]
        .into_iter()
        .filter(|n| c.node(n).try_write("quorum_rows"))
        .collect();
    assert_eq!(writers, [primary.as_str()], "exactly one node takes writes");
    c.node(&primary)
        .write_value("quorum_rows", "after the quorum loss")
        .expect("INSERT after the quorum returned");
    c.wait_for_value(
        &replica,
        "quorum_rows",
        "after the quorum loss",
        REPLICATION,
    );
    assert_eq!(
        c.leader_from_dcs().expect("read the leader key").as_deref(),
        Some(primary.as_str())
    );
}

#[test]
fn node_bootstraps_a_primary_over_zookeeper_tls() {
    let c = TestCluster::start_with(1, ClusterOpts::named("zktls"), |_| {
        let zk = ZooKeeper::start_tls();
        // The daemon runs as postgres and reads the client key.
        chown_postgres(&zk.tls.as_ref().expect("TLS files").client_key);
        DcsServer::ZooKeeper(zk)
    });
    let config = std::fs::read_to_string(&c.nodes[0].config_path).expect("read node config");
    assert!(config.contains("use_ssl: true"), "{config}");
    let primary = c.wait_for_primary(BOOTSTRAP);
    assert_eq!(primary, "node1");
    c.node(&primary)
        .write_value("tls_rows", "bootstrapped over TLS")
        .expect("INSERT on the primary");
    // spiloctl reads the leader key with the same TLS settings.
    assert_eq!(
        c.leader_from_dcs().expect("read the leader key").as_deref(),
        Some("node1")
    );
}
