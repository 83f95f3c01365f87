//! Standby clusters (`standby_cluster`): a second cluster that follows another one — through
//! its archive, then by streaming from its primary — with a standby leader its replicas cascade
//! from, promoted by removing the section; on real PostgreSQL 15 and a directory store.

use std::time::Duration;

use serde_json::json;
use spilo_tests::{note, wait_for, TestCluster};

use crate::archive::{fill_and_switch, wait_archived, Store};
use crate::ops::{call, expect};
use crate::restore::{backup_create, store_opts};
use crate::BOOTSTRAP;

/// The number of rows of `standby_rows` on `n` with `phase`, as text ("" when unreadable).
fn rows(n: &spilo_tests::Node, phase: &str) -> String {
    n.sql_value(&format!(
        "SELECT count(*)::text FROM standby_rows WHERE phase = '{phase}'"
    ))
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Waits until `n` has `want` rows of `phase`.
fn wait_rows(n: &spilo_tests::Node, phase: &str, want: &str) {
    wait_for(
        &format!("{} has the '{phase}' rows", n.name),
        Duration::from_secs(180),
        || match rows(n, phase) {
            v if v == want => Ok(()),
            v => Err(format!("{v:?} of {want}")),
        },
    );
}

/// The status of `n`'s WAL receiver (None: no receiver).
fn receiver(n: &spilo_tests::Node) -> Option<String> {
    n.sql_value("SELECT status FROM pg_stat_wal_receiver")
        .ok()
        .flatten()
}

/// Waits until one node of `c` answers `GET /standby-leader` with 200; returns its name.
fn wait_standby_leader(c: &TestCluster, timeout: Duration) -> String {
    let mut found = String::new();
    wait_for("a standby leader", timeout, || {
        for name in c.others("") {
            if let Ok((200, _)) = c.node(&name).api_get("/standby-leader") {
                found = name;
                return Ok(());
            }
        }
        Err(c.describe())
    });
    found
}

/// A standby cluster made from the source's archive alone (its newest backup, then WAL as it
/// is archived), its replica cascading from the standby leader; then streaming from the
/// source's primary once `standby_cluster.host` is set; then promoted by removing the section:
/// it takes writes on a new timeline and archives into its own prefix, never its source's.
#[test]
fn a_standby_cluster_follows_through_the_archive_then_streaming_and_is_promoted() {
    let store = Store::new();
    let src = TestCluster::start(1, store_opts("standby-src", &store));
    let sp = src.wait_for_primary(BOOTSTRAP);
    let p = src.node(&sp);
    p.sql("CREATE TABLE standby_rows(id serial, phase text); INSERT INTO standby_rows(phase) SELECT 'before backup' FROM generate_series(1, 100)")
        .expect("rows before the backup");
    backup_create(&src);
    p.sql("INSERT INTO standby_rows(phase) SELECT 'after backup' FROM generate_series(1, 50)")
        .expect("rows after the backup");
    let last = fill_and_switch(p, 1_000);
    wait_archived(p, &last, Duration::from_secs(120));

    // Two nodes that follow the source through its archive only (Spilo's STANDBY_SCOPE: the
    // source's archive in this cluster's own store).
    let mut opts = store_opts("standby-dst", &store);
    // Its standby leader archives into its own prefix too (`archive_mode = always`).
    opts.node.extra_yaml.push_str("    standby_leader: true\n");
    opts.node.env = vec![("STANDBY_SCOPE".into(), src.scope.clone())];
    let dst = TestCluster::start(2, opts);
    let leader = wait_standby_leader(&dst, Duration::from_secs(240));
    let replica = dst.others(&leader)[0].clone();
    let sl = dst.node(&leader);
    wait_rows(sl, "after backup", "50");
    assert_eq!(
        sl.role().as_deref(),
        Some("standby_leader"),
        "{}",
        dst.describe()
    );
    assert_eq!(
        receiver(sl),
        None,
        "the standby leader streams with no host"
    );
    expect(
        "a standby leader is not a primary",
        call(sl, "GET", "/primary", None),
        503,
        None,
    );
    assert!(
        sl.log_text()
            .contains("building this replica from backup base_"),
        "the standby leader was not restored from the source's backup: {}",
        sl.log_tail(30)
    );
    // Its replica cascades from it.
    let r = dst.node(&replica);
    wait_rows(r, "after backup", "50");
    wait_for(
        "the replica streams from the standby leader",
        Duration::from_secs(120),
        || match receiver(r) {
            Some(s) if s == "streaming" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // spiloctl names it (Patroni's "Standby Leader").
    let out = dst.spiloctl(&["list"]).expect("spiloctl list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Standby Leader"),
        "spiloctl list: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // New rows reach it through the archive.
    p.sql("INSERT INTO standby_rows(phase) SELECT 'via archive' FROM generate_series(1, 30)")
        .expect("rows");
    let last = fill_and_switch(p, 1_000);
    wait_archived(p, &last, Duration::from_secs(120));
    wait_rows(sl, "via archive", "30");
    wait_rows(r, "via archive", "30");
    // The standby leader archived what it replayed into this cluster's own prefix; its
    // replica uploaded nothing, and answered PostgreSQL once the archive held the same bytes.
    wait_for(
        &format!("{last} in the standby cluster's own prefix"),
        Duration::from_secs(120),
        || {
            if store.names(&dst.scope).contains(&last) {
                Ok(())
            } else {
                Err(format!("{:?}", store.names(&dst.scope)))
            }
        },
    );
    let done = r
        .data_dir
        .join("pg_wal/archive_status")
        .join(format!("{last}.done"));
    wait_for(
        &format!("{last} marked archived on the replica"),
        Duration::from_secs(180),
        || {
            if done.exists() {
                Ok(())
            } else {
                Err(format!("no {}", done.display()))
            }
        },
    );

    // Streaming from the source's primary: `standby_cluster.host` added.
    let src_port = p.pg_port;
    expect(
        "set standby_cluster.host",
        call(
            sl,
            "PATCH",
            "/config",
            Some(&json!({"standby_cluster": {"host": "127.0.0.1", "port": src_port}})),
        ),
        200,
        None,
    );
    wait_for(
        "the standby leader streams from the source",
        Duration::from_secs(120),
        || match receiver(sl) {
            Some(s) if s == "streaming" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // A row with no WAL switch: only streaming brings it.
    p.sql("INSERT INTO standby_rows(phase) VALUES ('via streaming')")
        .expect("row");
    wait_rows(sl, "via streaming", "1");
    wait_rows(r, "via streaming", "1");

    // A switchover inside the standby cluster: the replica becomes the standby leader and
    // streams from the source; the old standby leader follows it.
    expect(
        "switchover inside the standby cluster",
        call(
            sl,
            "POST",
            "/switchover",
            Some(&json!({"leader": leader, "candidate": replica})),
        ),
        200,
        Some(&format!("Successfully switched over to \"{replica}\"")),
    );
    let (leader, replica) = (replica, leader);
    wait_for(
        "the new standby leader",
        Duration::from_secs(60),
        || match dst.node(&leader).api_get("/standby-leader") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let sl = dst.node(&leader);
    let r = dst.node(&replica);
    for (n, what) in [(sl, "the source"), (r, "the new standby leader")] {
        wait_for(
            &format!("{} streams from {what}", n.name),
            Duration::from_secs(120),
            || match receiver(n) {
                Some(s) if s == "streaming" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    let upstream_port = r
        .sql_value("SELECT sender_port::text FROM pg_stat_wal_receiver")
        .ok()
        .flatten();
    assert_eq!(
        upstream_port,
        Some(sl.pg_port.to_string()),
        "the old standby leader does not stream from the new one"
    );
    p.sql("INSERT INTO standby_rows(phase) VALUES ('after the switchover')")
        .expect("row");
    wait_rows(sl, "after the switchover", "1");
    wait_rows(r, "after the switchover", "1");
    let src_names = store.names(&src.scope);

    // Promoted: the section removed.
    expect(
        "remove standby_cluster",
        call(
            sl,
            "PATCH",
            "/config",
            Some(&json!({"standby_cluster": null})),
        ),
        200,
        None,
    );
    let primary = dst.wait_for_primary(Duration::from_secs(120));
    assert_eq!(primary, leader, "another node was promoted");
    let np = dst.node(&primary);
    np.sql("INSERT INTO standby_rows(phase) VALUES ('promoted')")
        .expect("the promoted standby cluster takes writes");
    wait_rows(r, "promoted", "1");
    wait_for(
        "the promoted cluster archives its new timeline into its own prefix",
        Duration::from_secs(60),
        || {
            let names = store.names(&dst.scope);
            if names.iter().any(|f| f.ends_with(".history")) {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        },
    );
    let after: Vec<String> = store
        .names(&src.scope)
        .difference(&src_names)
        .cloned()
        .collect();
    assert!(
        after.iter().all(|f| !f.ends_with(".history")),
        "a timeline history appeared in the source's prefix: {after:?}"
    );
    // The source is untouched by all this: still primary on timeline 1.
    assert_eq!(p.timeline(), Some(1), "{}", src.describe());
    note(format!(
        "standby cluster {}: restored from {}'s backup, followed its archive then its primary, promoted on timeline {:?}",
        dst.scope,
        src.scope,
        np.timeline()
    ));
}
