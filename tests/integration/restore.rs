//! Restoring from the archive (`restore_command = 'spilo wal-fetch %f %p'`, set by spilo on
//! every node with a `storage:` section), on real PostgreSQL 15 and a directory store.

use std::time::Duration;

use serde_json::json;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::archive::{fill_and_switch, gauge, wait_archived, Store};
use crate::metrics::metrics;
use crate::ops::{call, expect};
use crate::BOOTSTRAP;

/// A replica that was down while the primary recycled the WAL it needs catches up from the
/// archive: PostgreSQL runs `spilo wal-fetch` for each segment, the daemon restores it (the
/// following ones prefetched in parallel), and the replica then streams again with every row.
#[test]
fn a_replica_catches_up_from_the_archive() {
    let store = Store::new();
    let mut opts = ClusterOpts::named("fetch");
    opts.node.extra_yaml = store.yaml();
    // Small pg_wal, so that segments are recycled soon after a checkpoint.
    opts.node.pg_parameters = vec![
        ("min_wal_size".into(), "32MB".into()),
        ("max_wal_size".into(), "64MB".into()),
    ];
    let mut c = TestCluster::start(2, opts);
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replica = c.others(&primary)[0].clone();
    let p = c.node(&primary);
    // No WAL kept for replicas beyond what the archive holds: no slots, no wal_keep_size.
    expect(
        "no slots, no kept WAL",
        call(
            p,
            "PATCH",
            "/config",
            Some(&json!({"postgresql": {"use_slots": false, "parameters": {"wal_keep_size": 0}}})),
        ),
        200,
        None,
    );
    wait_for(
        "wal_keep_size 0 on the primary",
        Duration::from_secs(60),
        || match p.sql_value("SHOW wal_keep_size") {
            Ok(Some(v)) if v == "0" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    fill_and_switch(p, 1_000);

    // The replica goes down; the primary writes on and recycles the segments it would need.
    {
        let r = c.node_mut(&replica);
        r.kill_daemon_now();
        r.stop_postgres_immediate();
    }
    let p = c.node(&primary);
    wait_for(
        "the replica's slot dropped",
        Duration::from_secs(60),
        || {
            p.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
            .map_err(|e| e.to_string())?;
            match p.sql_value("SELECT count(*)::text FROM pg_replication_slots") {
                Ok(Some(n)) if n == "0" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    let first = fill_and_switch(p, 20_000);
    let mut last = first.clone();
    for _ in 0..7 {
        last = fill_and_switch(p, 20_000);
    }
    wait_archived(p, &last, Duration::from_secs(120));
    wait_for(
        &format!("{first} recycled on the primary"),
        Duration::from_secs(60),
        || {
            p.sql("CHECKPOINT").map_err(|e| e.to_string())?;
            if p.data_dir.join("pg_wal").join(&first).exists() {
                fill_and_switch(p, 1_000);
                Err(format!("{first} still in pg_wal"))
            } else {
                Ok(())
            }
        },
    );
    let rows = p
        .sql_value("SELECT count(*)::text FROM archive_fill")
        .expect("count")
        .expect("a count");

    c.node_mut(&replica).start();
    let r = c.node(&replica);
    wait_for(
        "the replica has every row",
        Duration::from_secs(180),
        || match r.sql_value("SELECT count(*)::text FROM archive_fill") {
            Ok(Some(n)) if n == rows => Ok(()),
            other => Err(format!("{other:?} of {rows}")),
        },
    );
    c.wait_for_replicas_streaming(Duration::from_secs(120));
    let m = metrics(r);
    let fetched = gauge(&m, "spilo_wal_fetched_total");
    let prefetched = gauge(&m, "spilo_wal_fetch_prefetched_total");
    let failures = gauge(&m, "spilo_wal_fetch_failures_total");
    note(format!(
        "replica restored {fetched} files from the archive ({prefetched} prefetched, {failures} failures), then streamed; {rows} rows"
    ));
    assert!(
        fetched >= 2.0,
        "the replica restored {fetched} files from the archive; it needed {first}..{last}"
    );
    assert!(prefetched >= 1.0, "no segment came from the prefetch");
    assert_eq!(failures, 0.0, "restore_command failures");
    assert!(
        !r.data_dir
            .join("pg_wal")
            .join(".spilo-prefetch")
            .join(&first)
            .exists(),
        "a restored segment stays in the prefetch cache"
    );
}
