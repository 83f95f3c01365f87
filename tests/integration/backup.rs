//! Base backups on real PostgreSQL 15 into a directory store: `spiloctl backup create` from the
//! leader and from a replica, `backup list` (table and JSON with the point-in-time window),
//! `show`, `wal list`, a backup during a switchover (complete or absent, never half-listed),
//! the daemon's schedule firing after a reload changed it, and retention keeping exactly `retain.count` backups (with a
//! `prune --dry-run` that deletes nothing).

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use spilo_core::backup::object;
use spilo_tests::bins::bins;
use spilo_tests::util::run_with_timeout;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::archive::Store;
use crate::metrics::metrics;
use crate::ops::{call, expect};
use crate::BOOTSTRAP;

/// `spiloctl -c <node1's config> ARGS` as root (backups from an operator's shell).
fn spiloctl(c: &TestCluster, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(&bins().spiloctl);
    cmd.arg("-c").arg(&c.nodes[0].config_path).args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("spiloctl {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(c: &TestCluster, args: &[&str]) -> String {
    let (good, out, err) = spiloctl(c, args);
    assert!(good, "spiloctl {args:?} failed: {out}\n{err}");
    out
}

fn list_json(c: &TestCluster) -> Value {
    let out = ok(c, &["backup", "list", "--format", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("backup list JSON ({e}): {out}"))
}

fn names(v: &Value) -> Vec<String> {
    v["backups"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every listed backup's data object exists and decodes to a tar holding a data directory.
fn check_listed_backups_are_whole(store: &Store, scope: &str, v: &Value) {
    let base = store.base(scope);
    for b in v["backups"].as_array().expect("backups") {
        for rel in b["objects"].as_array().expect("objects") {
            let path = base.join(rel.as_str().expect("object key"));
            let obj = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("listed backup {}: {}: {e}", b["name"], path.display()));
            let tar =
                object::decode(&path.display().to_string(), &obj).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(tar.len() as u64, b["size"].as_u64().expect("size"));
            let text = String::from_utf8_lossy(&tar);
            for member in ["PG_VERSION", "backup_label", "global/pg_control"] {
                assert!(
                    text.contains(member),
                    "{}: no {member} in the tar",
                    b["name"]
                );
            }
        }
    }
}

#[test]
fn backups_are_listed_when_whole_scheduled_and_kept_by_count() {
    let store = Store::new();
    // The schedule starts out never firing in this test (Feb 30th); step 3 reloads a new one.
    let storage_yaml = |schedule: &str| {
        format!(
            "storage:\n  type: fs\n  path: {}\nbackup:\n  schedule: '{schedule}'\n  retain:\n    count: 2\n",
            store.path().display()
        )
    };
    let mut opts = ClusterOpts::named("backup");
    opts.node.extra_yaml = storage_yaml("0 1 30 2 *");
    let mut c = TestCluster::start(2, opts);
    let leader = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replica = c.others(&leader)[0].clone();
    let scope = c.scope.clone();

    // 1. From the leader, then from the replica.
    let out = ok(&c, &["backup", "create", "--from-leader"]);
    assert!(out.contains(&format!("from {leader}")), "{out}");
    c.node(&leader)
        .sql("CREATE TABLE b(x int); INSERT INTO b VALUES (1); SELECT pg_switch_wal()")
        .expect("write");
    let out = ok(&c, &["backup", "create", "--from-replica"]);
    assert!(out.contains(&format!("from {replica} (replica)")), "{out}");

    let v = list_json(&c);
    let first = names(&v);
    assert_eq!(first.len(), 2, "{v}");
    let b0 = &v["backups"][0];
    for field in [
        "name",
        "start_time",
        "finish_time",
        "start_lsn",
        "stop_lsn",
        "timeline",
        "system_identifier",
        "pg_version",
        "size",
        "compressed_size",
        "duration_secs",
        "member",
    ] {
        assert!(!b0[field].is_null(), "{field} missing: {b0}");
    }
    assert_eq!(b0["pg_version"], json!(15));
    // The tar's digest is XXH3-128; `sha256` is written empty (older spilo requires the
    // field) and `blake3` not at all.
    let digest = b0["xxh3_128"].as_str().unwrap_or_default();
    assert!(
        digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "xxh3_128 digest: {b0}"
    );
    assert_eq!(b0["sha256"], json!(""), "{b0}");
    assert!(b0.get("blake3").is_none(), "{b0}");
    assert!(
        v["pitr_window"]["from_backup"].is_string(),
        "no window: {v}"
    );
    check_listed_backups_are_whole(&store, &scope, &v);
    let shown = ok(&c, &["backup", "show", &first[0]]);
    assert!(
        shown.contains(&format!("\"name\": \"{}\"", first[0])),
        "{shown}"
    );
    let table = ok(&c, &["backup", "list"]);
    assert!(
        table.contains(&first[1]) && table.contains("Point-in-time window: from"),
        "{table}"
    );
    let wal = ok(&c, &["wal", "list"]);
    assert!(
        wal.contains("000000010000000000000001") || wal.contains("00000001"),
        "{wal}"
    );
    let (good, _, err) = spiloctl(&c, &["backup", "show", "base_nonexistent"]);
    assert!(
        !good && err.contains("no complete backup named base_nonexistent"),
        "{err}"
    );

    // 2. A backup while the leader switches over: it completes or it is not listed.
    let before = names(&list_json(&c));
    let mut bg = Command::new(&bins().spiloctl);
    bg.arg("-c")
        .arg(&c.nodes[0].config_path)
        .args(["backup", "create", "--from-leader"]);
    let child = bg
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spiloctl backup create");
    let r = call(
        c.node(&leader),
        "POST",
        "/switchover",
        Some(&json!({"leader": leader, "candidate": replica})),
    );
    expect("POST /switchover", r, 200, None);
    let out = child.wait_with_output().expect("wait");
    c.wait_for_primary_except(&[leader.as_str()], Duration::from_secs(60));
    let after = list_json(&c);
    let new: Vec<String> = names(&after)
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    note(format!(
        "backup during the switchover: exit {}, new backups {new:?}",
        out.status
    ));
    assert_eq!(
        out.status.success(),
        new.len() == 1,
        "spiloctl said {} but the list went from {before:?} to {:?}: {}",
        out.status,
        names(&after),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(names(&after).len() <= 2, "retention keeps two: {after}");
    check_listed_backups_are_whole(&store, &scope, &after);

    // 3. A reloaded schedule (the next whole minute at least 20 s away) fires on the (new)
    // leader; retention then keeps the newest two.
    let new_leader = c.wait_for_primary(Duration::from_secs(30));
    let at = chrono::Utc::now() + chrono::Duration::seconds(80);
    let schedule = format!(
        "{} {} * * *",
        chrono::Timelike::minute(&at),
        chrono::Timelike::hour(&at)
    );
    let names_now: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names_now {
        let yaml = storage_yaml(&schedule);
        c.node_mut(n).rewrite_config(|o| o.extra_yaml = yaml);
        let r = call(c.node(n), "POST", "/reload", Some(&json!({})));
        expect("POST /reload", r, 202, Some("reload scheduled"));
    }
    for n in &names_now {
        wait_for("the reloaded schedule", Duration::from_secs(20), || {
            if c.node(n)
                .log_text()
                .contains("reload: the backup schedules changed")
            {
                Ok(())
            } else {
                Err(format!("{n} has not logged the new schedule"))
            }
        });
    }
    let scheduled = |c: &TestCluster, n: &str| {
        metrics(c.node(n))
            .lines()
            .find(|l| l.starts_with("spilo_backups_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        scheduled(&c, &new_leader),
        0.0,
        "a scheduled backup before the schedule was reloaded"
    );
    wait_for("the scheduled backup", Duration::from_secs(300), || {
        let taken = scheduled(&c, &new_leader);
        if taken >= 1.0 {
            Ok(())
        } else {
            Err(format!("spilo_backups_total {taken} on {new_leader}"))
        }
    });
    let kept = list_json(&c);
    let kept_names = names(&kept);
    assert_eq!(
        kept_names.len(),
        2,
        "retain.count 2 after the scheduled backup: {kept}"
    );
    assert!(
        !kept_names.contains(&first[0]),
        "the oldest backup survived retention: {kept}"
    );
    check_listed_backups_are_whole(&store, &scope, &kept);
    // Nothing is left to prune; a dry run says so and deletes nothing.
    let dry = ok(&c, &["backup", "prune", "--dry-run"]);
    assert!(dry.contains("would delete 0 backup(s)"), "{dry}");
    assert_eq!(names(&list_json(&c)), kept_names);

    // The daemon's store stays writable after root's spiloctl wrote into it: an archived
    // segment after all this lands.
    let p = c.node(&new_leader);
    let seg = p
        .sql_value("SELECT pg_walfile_name(pg_switch_wal())")
        .expect("switch")
        .expect("segment");
    wait_for("the last segment archived", Duration::from_secs(60), || {
        if store.names(&scope).contains(&seg) {
            Ok(())
        } else {
            Err(format!("{seg} not stored"))
        }
    });
}
