//! Synchronous replication: with `synchronous_mode: on` and a writer running, SIGKILL of the
//! primary's daemon and postmaster promotes only the synchronous standby and loses no
//! acknowledged write; with `synchronous_mode_strict` and no standby left, writes block rather
//! than acknowledge.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::ops::{call, expect};
use crate::{BOOTSTRAP, REJOIN};

/// The `sync` key's standby list, once it names exactly one member.
fn wait_for_sync_standby(c: &TestCluster, leader: &str) -> String {
    wait_for(
        &format!("a synchronous standby of {leader} in the sync key"),
        Duration::from_secs(60),
        || match c.dcs_json("sync") {
            Ok(Some(v)) if v["leader"] == leader && v["sync_standby"].is_string() => {
                Ok(v["sync_standby"].as_str().unwrap_or_default().to_string())
            }
            other => Err(format!("{other:?}")),
        },
    )
}

#[test]
fn only_the_sync_standby_is_promoted_and_no_acknowledged_write_is_lost() {
    let mut c = TestCluster::start(3, ClusterOpts::named("syncmode"));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = call(
        c.node(&primary),
        "PATCH",
        "/config",
        Some(&json!({"synchronous_mode": "on"})),
    );
    expect("PATCH synchronous_mode on", r, 200, None);
    let sync = wait_for_sync_standby(&c, &primary);
    note(format!("{sync} is the synchronous standby of {primary}"));
    // SSN on the primary names it, and PostgreSQL reports it synchronous.
    let ssn = c
        .node(&primary)
        .sql_value("SHOW synchronous_standby_names")
        .unwrap();
    assert!(ssn.unwrap_or_default().contains(&sync));
    // The standbys see the key at their next cycle.
    wait_for(
        "/sync 200 on the synchronous standby",
        Duration::from_secs(20),
        || match c.node(&sync).api_get("/sync") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let other = c.others(&primary).into_iter().find(|n| n != &sync).unwrap();
    assert_eq!(c.node(&other).api_get("/sync").unwrap().0, 503);
    assert_eq!(c.node(&other).api_get("/async").unwrap().0, 200);

    // A writer inserting unique ids into the primary; it records what was acknowledged.
    c.node(&primary)
        .write_value("sync_ids", "setup")
        .expect("create table");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let target = c.node(&primary).pg_target();
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let q = format!("INSERT INTO sync_ids (v) VALUES ('id-{i}')");
                if spilo_tests::pg::simple_query(&target, &q, Duration::from_secs(2)).is_ok() {
                    acked.lock().unwrap().insert(i);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let n = c.node_mut(&primary);
    n.kill_daemon(libc::SIGKILL);
    n.kill_postmaster(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked: Vec<u64> = acked.lock().unwrap().iter().copied().collect();
    assert!(
        acked.len() > 10,
        "the writer got only {} acknowledgements",
        acked.len()
    );

    let new = c.wait_for_primary_except(&[primary.as_str()], REJOIN);
    assert_eq!(
        new, sync,
        "the asynchronous {other} was promoted instead of the sync standby {sync}"
    );
    let rows = c
        .node(&new)
        .sql("SELECT v FROM sync_ids")
        .expect("read ids on the new primary");
    let present: BTreeSet<String> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|i| !present.contains(&format!("id-{i}")))
        .collect();
    note(format!(
        "{} acknowledged writes, {} lost",
        acked.len(),
        lost.len()
    ));
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

#[test]
fn strict_mode_without_a_standby_blocks_writes() {
    let c = TestCluster::start(2, ClusterOpts::named("syncstrict"));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = call(
        c.node(&primary),
        "PATCH",
        "/config",
        Some(&json!({"synchronous_mode": "on", "synchronous_mode_strict": true})),
    );
    expect("PATCH strict synchronous mode", r, 200, None);
    let standby = wait_for_sync_standby(&c, &primary);
    c.node(&primary)
        .write_value("strict_rows", "with a standby")
        .expect("write with a sync standby");

    // Stop the standby's PostgreSQL for good: its daemon first, then the postmaster.
    let mut c = c;
    let s = c.node_mut(&standby);
    s.kill_daemon(libc::SIGKILL);
    s.kill_postmaster(libc::SIGKILL);
    // The primary moves SSN to the placeholder; a commit now waits instead of acknowledging.
    wait_for(
        "SSN at the strict placeholder",
        Duration::from_secs(60),
        || match c.node(&primary).sql_value("SHOW synchronous_standby_names") {
            Ok(Some(v)) if v.contains("__patroni_strict_sync_replica_placeholder__") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let r = c.node(&primary).write_value_within(
        "strict_rows",
        "without a standby",
        Duration::from_secs(4),
    );
    assert!(
        r.is_err(),
        "a write was acknowledged with no synchronous standby in strict mode"
    );
    note(format!(
        "strict mode: write without a standby did not complete: {}",
        r.unwrap_err()
    ));
}

#[test]
fn quorum_mode_lists_every_voter_and_promotes_one_of_them() {
    let mut c = TestCluster::start(3, ClusterOpts::named("syncquorum"));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = call(
        c.node(&primary),
        "PATCH",
        "/config",
        Some(&json!({"synchronous_mode": "quorum"})),
    );
    expect("PATCH synchronous_mode quorum", r, 200, None);
    let replicas = c.others(&primary);
    let key = wait_for(
        "both replicas as voters with quorum 1",
        Duration::from_secs(60),
        || match c.dcs_json("sync") {
            Ok(Some(v))
                if v["leader"] == primary.as_str()
                    && v["quorum"] == 1
                    && v["sync_standby"]
                        .as_str()
                        .is_some_and(|s| s.split(',').count() == 2) =>
            {
                Ok(v)
            }
            other => Err(format!("{other:?}")),
        },
    );
    note(format!("sync key {key}"));
    let ssn = c
        .node(&primary)
        .sql_value("SHOW synchronous_standby_names")
        .unwrap()
        .unwrap_or_default();
    assert!(ssn.starts_with("ANY 1 ("), "SSN is {ssn:?}");
    for r in &replicas {
        wait_for(
            &format!("/quorum 200 on {r}"),
            Duration::from_secs(20),
            || match c.node(r).api_get("/quorum") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    c.node(&primary)
        .write_value("quorum_rows", "acknowledged by a quorum")
        .expect("write");
    let n = c.node_mut(&primary);
    n.kill_daemon(libc::SIGKILL);
    n.kill_postmaster(libc::SIGKILL);
    let new = c.wait_for_primary_except(&[primary.as_str()], REJOIN);
    assert!(replicas.contains(&new));
    assert!(c
        .node(&new)
        .has_value("quorum_rows", "acknowledged by a quorum")
        .unwrap());
}
