//! etcd stops: the primary stops accepting writes, replicas keep serving reads; etcd returns:
//! some node accepts writes again and the two others stream from it.

use std::time::Duration;

use spilo_tests::{note, poll, wait_for, ClusterOpts, TestCluster};

use crate::{BOOTSTRAP, REJOIN, REPLICATION};

#[test]
fn dcs_loss_demotes_primary_replicas_serve_reads_and_cluster_recovers() {
    let mut c = TestCluster::start(3, ClusterOpts::named("dcsloss"));
    let ttl = c.opts.node.ttl;
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replicas = c.others(&primary);
    c.node(&primary)
        .write_value("dcs_rows", "before the outage")
        .expect("INSERT on the primary");
    for r in &replicas {
        c.wait_for_value(r, "dcs_rows", "before the outage", REPLICATION);
    }

    c.dcs.stop();
    note("etcd stopped");
    let bound = Duration::from_secs(ttl + 5);
    let r = poll(bound, Duration::from_millis(250), || {
        if c.node(&primary).try_write("dcs_rows") {
            Err("the primary still accepts INSERTs".to_string())
        } else {
            Ok(())
        }
    });
    match r {
        Ok((_, took)) => note(format!(
            "{primary} refuses writes {took:?} after etcd stopped"
        )),
        Err(last) => panic!(
            "{primary} still accepted writes {bound:?} after etcd stopped (ttl {ttl}): {last}"
        ),
    }

    // The replicas keep answering reads, now and a few HA cycles later.
    let read_check = |when: &str| {
        for r in &replicas {
            wait_for(
                &format!("a read on replica {r} {when}"),
                Duration::from_secs(10),
                || match c.node(r).has_value("dcs_rows", "before the outage") {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("row missing".into()),
                    Err(e) => Err(e),
                },
            );
        }
    };
    read_check("right after the primary stopped taking writes");
    std::thread::sleep(Duration::from_secs(2 * c.opts.node.loop_wait + 2));
    read_check("several HA cycles into the outage");

    c.dcs.start_again();
    note("etcd started again");
    let (writer, took) = c.wait_for_writer(&[], REJOIN);
    note(format!(
        "{writer} accepts writes {took:?} after etcd returned"
    ));
    let primary = c.wait_for_primary(REJOIN);
    assert_eq!(
        primary, writer,
        "the node taking writes is not the one /patroni calls primary"
    );
    let others = c.others(&primary);
    let refs: Vec<&str> = others.iter().map(String::as_str).collect();
    c.wait_for_streaming(&primary, &refs, REJOIN);
    c.node(&primary)
        .write_value("dcs_rows", "after the outage")
        .expect("INSERT after the outage");
    for r in &others {
        c.wait_for_value(r, "dcs_rows", "after the outage", REPLICATION);
    }
}
