//! Restoring from the archive (`restore_command = 'spilo wal-fetch %f %p'`, set by spilo on
//! every node with a `storage:` section), on real PostgreSQL 15 and a directory store.

use std::time::Duration;

use serde_json::json;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::archive::{fill_and_switch, gauge, wait_archived, Store};
use crate::metrics::metrics;
use crate::ops::{call, expect};
use crate::BOOTSTRAP;

/// Options of a cluster archiving to `store`.
pub(crate) fn store_opts(label: &str, store: &Store) -> ClusterOpts {
    let mut opts = ClusterOpts::named(label);
    opts.node.extra_yaml = store.yaml();
    opts
}

/// Options of a one-node clone of `scope` in `store`; `target` is YAML lines of
/// `bootstrap.clone` (indented by four spaces).
fn clone_opts(label: &str, store: &Store, scope: &str, target: &str) -> ClusterOpts {
    let mut opts = store_opts(label, store);
    opts.node.bootstrap_extra = format!("  method: clone\n  clone:\n    scope: {scope}\n{target}");
    opts
}

/// `spiloctl backup create` on `c`, which must succeed (within 5 minutes: a backup of tens
/// of megabytes through S3 on a busy machine takes longer than spiloctl's usual bound).
pub(crate) fn backup_create(c: &TestCluster) {
    let mut cmd = std::process::Command::new(&spilo_tests::bins::bins().spiloctl);
    cmd.arg("-c")
        .arg(&c.nodes[0].config_path)
        .args(["backup", "create"]);
    let out = spilo_tests::util::run_with_timeout(cmd, Duration::from_secs(300))
        .expect("spiloctl backup create");
    assert!(
        out.status.success(),
        "backup create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A replica that was down while the primary recycled the WAL it needs catches up from the
/// archive: PostgreSQL runs `spilo wal-fetch` for each segment, the daemon restores it (the
/// following ones prefetched in parallel), and the replica then streams again with every row.
#[test]
fn a_replica_catches_up_from_the_archive() {
    let store = Store::new();
    let mut opts = store_opts("fetch", &store);
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
    let rows = fill_rows(p);

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
    // The cache holds only segments ahead of replay, at most the prefetch depth.
    let cached: Vec<String> = std::fs::read_dir(r.data_dir.join("pg_wal").join(".spilo-prefetch"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        cached.len() <= spilo_core::backup::fetch::PREFETCH && !cached.contains(&first),
        "prefetch cache after catching up: {cached:?}"
    );
}

/// Wipes `name`'s data directory (daemon and PostgreSQL stopped) and starts its daemon again,
/// which then builds a new replica; returns the length of its log before the start.
fn rebuild(c: &mut TestCluster, name: &str) -> usize {
    let n = c.node_mut(name);
    n.kill_daemon_now();
    n.stop_postgres_immediate();
    std::fs::remove_dir_all(&n.data_dir).expect("remove the data directory");
    let before = n.log_text().len();
    n.start();
    before
}

/// What `primary` sent `replica` since its WAL receiver started (counted by the receiver), and
/// the size of `primary`'s databases (what a `pg_basebackup` copy would have read).
pub(crate) fn sent_to_replica(c: &TestCluster, replica: &str, primary: &str) -> (u64, u64) {
    let streamed: u64 = c
        .node(replica)
        .sql_value(
            "SELECT (latest_end_lsn - receive_start_lsn)::bigint::text FROM pg_stat_wal_receiver",
        )
        .expect("receiver")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let db_size: u64 = c
        .node(primary)
        .sql_value("SELECT sum(pg_database_size(oid))::bigint::text FROM pg_database")
        .expect("size")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (streamed, db_size)
}

/// The rows of `archive_fill` on `n`, as text.
fn fill_rows(n: &spilo_tests::Node) -> String {
    n.sql_value("SELECT count(*)::text FROM archive_fill")
        .expect("count")
        .expect("a count")
}

/// Rebuilds `name` (see [`rebuild`]), waits until it has `rows` rows, and returns what its log
/// said since.
fn rebuilt(c: &mut TestCluster, name: &str, rows: &str) -> String {
    let before = rebuild(c, name);
    wait_rows(c, name, rows);
    let log = c.node(name).log_text();
    log[before.min(log.len())..].to_string()
}

/// Waits until `name` has `rows` rows in `archive_fill`.
fn wait_rows(c: &TestCluster, name: &str, rows: &str) {
    let n = c.node(name);
    wait_for(
        &format!("{name} has every row"),
        Duration::from_secs(180),
        || match n.sql_value("SELECT count(*)::text FROM archive_fill") {
            Ok(Some(v)) if v == rows => Ok(()),
            other => Err(format!("{other:?} of {rows}")),
        },
    );
}

/// A new replica is built from the newest backup (`spilo_restore`, the default first method
/// with a store), replays the WAL written since from the archive and then streams; with a
/// threshold the backup does not meet, the same node is built by `pg_basebackup` instead, and
/// the log says why.
#[test]
fn a_new_replica_is_restored_from_the_newest_backup() {
    let store = Store::new();
    let mut opts = store_opts("replica-backup", &store);
    // A test database is tiny and each pg_switch_wal() skips to the next 16 MiB: the default
    // 30 % of the backup's size would always send this node to pg_basebackup.
    opts.node.extra_postgresql = "  spilo_restore: {threshold_percentage: 10000}\n".into();
    // The primary logs every replication command: a BASE_BACKUP is a copy it served.
    opts.node.pg_parameters = vec![("log_replication_commands".into(), "on".into())];
    let mut c = TestCluster::start(2, opts);
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replica = c.others(&primary)[0].clone();
    fill_and_switch(c.node(&primary), 20_000);
    backup_create(&c);
    let copies_served = |c: &TestCluster| {
        std::fs::read_to_string(c.node(&primary).data_dir.join("spilo-postgres.log"))
            .unwrap_or_default()
            .matches("replication command: BASE_BACKUP")
            .count()
    };
    // WAL written after the backup: the restored replica must replay it from the archive.
    let mut last = String::new();
    for _ in 0..3 {
        last = fill_and_switch(c.node(&primary), 20_000);
    }
    wait_archived(c.node(&primary), &last, Duration::from_secs(120));
    let rows = fill_rows(c.node(&primary));
    let copies_before = copies_served(&c);
    let said = rebuilt(&mut c, &replica, &rows);
    c.wait_for_replicas_streaming(Duration::from_secs(120));
    // What the primary sent for the new replica: no copy, only the WAL streamed after what
    // the archive held (counted by the replica's WAL receiver).
    let (streamed, db_size) = sent_to_replica(&c, &replica, &primary);
    assert_eq!(
        copies_served(&c),
        copies_before,
        "the primary served a base backup for a replica restored from the store"
    );
    assert!(
        streamed <= 16 << 20,
        "the primary streamed {streamed} bytes to the restored replica"
    );
    note(format!(
        "the primary sent {streamed} bytes of WAL for {replica} (database {db_size} bytes), no copy"
    ));
    assert!(
        said.contains("building this replica from backup base_"),
        "the replica was not restored from the backup: {}",
        c.node(&replica).log_tail(40)
    );
    assert!(
        !said.contains("with pg_basebackup"),
        "pg_basebackup ran as well"
    );
    let fetched = gauge(&metrics(c.node(&replica)), "spilo_wal_fetched_total");
    assert!(
        fetched >= 1.0,
        "nothing replayed from the archive ({fetched})"
    );
    note(format!(
        "{replica} restored from the backup, {fetched} WAL files from the archive, {rows} rows"
    ));
    let built = wait_built(&c, &replica);
    assert!(built.starts_with("spilo_restore base_"), "{built}");

    // The same node with a threshold the backup does not meet: pg_basebackup, with the reason.
    c.node_mut(&replica).rewrite_config(|o| {
        o.extra_postgresql =
            "  spilo_restore: {threshold_megabytes: 0, threshold_percentage: 10000}\n".into()
    });
    fill_and_switch(c.node(&primary), 1_000);
    let rows = fill_rows(c.node(&primary));
    let copies_before = copies_served(&c);
    let said = rebuilt(&mut c, &replica, &rows);
    assert_eq!(
        copies_served(&c),
        copies_before + 1,
        "the primary's log does not show the base backup it served"
    );
    assert!(
        said.contains("replica method skipped: spilo_restore")
            && said.contains("threshold_megabytes 0")
            && said.contains("with pg_basebackup"),
        "no fallback to pg_basebackup with its reason: {}",
        c.node(&replica).log_tail(40)
    );
    let built = wait_built(&c, &replica);
    assert!(
        built.starts_with(&format!("basebackup from {primary}"))
            && built.contains("threshold_megabytes 0"),
        "{built}"
    );
}

/// The `Built` column of `spiloctl list` for `name`, once its member key has it.
fn wait_built(c: &TestCluster, name: &str) -> String {
    let mut built = String::new();
    wait_for(
        &format!("spiloctl list shows how {name} was built"),
        Duration::from_secs(60),
        || {
            let rows = c.spiloctl_list_json()?;
            let row = rows
                .as_array()
                .and_then(|a| a.iter().find(|r| r["Member"] == name))
                .ok_or_else(|| format!("{name} not listed: {rows}"))?;
            match row["Built"].as_str() {
                Some(b) => {
                    built = b.to_string();
                    Ok(())
                }
                None => Err(format!("no Built column: {row}")),
            }
        },
    );
    built
}

/// The same restore from S3 (`type: s3` through the S3 plugin, on s3s-fs) with client-side
/// encryption: a backup of several parts, sealed, and the WAL after it; a wiped replica is
/// rebuilt from it (parts downloaded together, opened with the key), replays the archive and
/// streams with every row.
#[test]
fn a_replica_is_restored_from_an_encrypted_backup_in_s3() {
    use spilo_tests::s3::{S3Kind, S3Server};
    let s3 = S3Server::start(S3Kind::S3sFs);
    std::fs::create_dir_all(s3.dir().join("data").join("spilo-restore")).expect("bucket");
    spilo_tests::bins::plugin_lib(spilo_core::backup::S3_PLUGIN_FILE);
    let key_dir = Store::new();
    let key_file = key_dir.path().join("backup.key");
    std::fs::write(&key_file, "33".repeat(32)).expect("key file");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let mut opts = ClusterOpts::named("restore-s3");
    opts.node.extra_yaml = format!(
        "storage:\n  type: s3\n  bucket: spilo-restore\n  endpoint: {}\n  region: us-east-1\n  access_key_id: {}\n  secret_access_key: {}\nbackup:\n  schedule: ''\n  archive:\n    timeout: 10\n  encryption:\n    key_file: {}\n",
        s3.endpoint(),
        s3.access_key,
        s3.secret_key,
        key_file.display()
    );
    opts.node.extra_postgresql = "  spilo_restore: {threshold_percentage: 10000}\n".into();
    let mut c = TestCluster::start(2, opts);
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replica = c.others(&primary)[0].clone();
    // Some 22 MB of random bytes (no compression, no TOAST compression): the backup is stored
    // in several parts.
    c.node(&primary)
        .sql("CREATE TABLE noise(t bytea); ALTER TABLE noise ALTER t SET STORAGE EXTERNAL; INSERT INTO noise SELECT string_agg(decode(md5(random()::text), 'hex'), ''::bytea) FROM generate_series(1, 1400000) g GROUP BY g % 2000")
        .expect("noise");
    fill_and_switch(c.node(&primary), 20_000);
    backup_create(&c);
    let last = fill_and_switch(c.node(&primary), 20_000);
    wait_archived(c.node(&primary), &last, Duration::from_secs(120));
    let listed = c
        .spiloctl(&["backup", "list", "--format", "json"])
        .expect("spiloctl");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let b = &listed["backups"][0];
    assert_eq!(b["format"], "tar.zst.sealed", "{b}");
    assert!(
        b["objects"].as_array().map(Vec::len).unwrap_or(0) >= 2,
        "the backup is not in parts: {b}"
    );
    let rows = fill_rows(c.node(&primary));
    let said = rebuilt(&mut c, &replica, &rows);
    assert!(
        said.contains("building this replica from backup base_"),
        "the replica was not restored from the S3 backup: {}",
        c.node(&replica).log_tail(40)
    );
    c.wait_for_replicas_streaming(Duration::from_secs(120));
    let noise = c
        .node(&replica)
        .sql_value("SELECT count(*)::text FROM noise")
        .expect("count");
    assert_eq!(noise.as_deref(), Some("2000"));
    let fetched = gauge(&metrics(c.node(&replica)), "spilo_wal_fetched_total");
    assert!(fetched >= 1.0, "nothing replayed from the S3 archive");
    note(format!(
        "{replica} restored from a sealed backup of {} parts in S3, {fetched} WAL files from the archive",
        b["objects"].as_array().map(Vec::len).unwrap_or(0)
    ));
}

/// Node replacement with no leader at all (`no_leader`): the primary is gone, the only other
/// node (which may not promote) loses its disk and restores the newest backup and the archive
/// instead of waiting for a leader to copy, comes up read-only following nobody with every
/// archived row, and streams from the old primary once that is back and leads again.
#[test]
fn with_no_leader_a_wiped_node_restores_the_newest_backup_and_joins_later() {
    let store = Store::new();
    let mut opts = store_opts("no-leader", &store);
    opts.node.extra_postgresql = "  spilo_restore: {threshold_percentage: 10000}\n".into();
    let mut c = TestCluster::start(2, opts);
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replica = c.others(&primary)[0].clone();
    fill_and_switch(c.node(&primary), 20_000);
    backup_create(&c);
    let last = fill_and_switch(c.node(&primary), 20_000);
    wait_archived(c.node(&primary), &last, Duration::from_secs(120));
    let rows = fill_rows(c.node(&primary));

    // The primary goes away, and its lease with it.
    {
        let p = c.node_mut(&primary);
        p.kill_daemon_now();
        p.stop_postgres_immediate();
    }
    // The replica may not promote: without a leader only a restore brings it back.
    c.node_mut(&replica)
        .rewrite_config(|o| o.tags.push(("nofailover".into(), "true".into())));
    {
        let r = c.node_mut(&replica);
        r.kill_daemon_now();
        r.stop_postgres_immediate();
    }
    wait_for(
        "the leader key expired",
        Duration::from_secs(60),
        || match c.leader_from_dcs() {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let said = rebuilt(&mut c, &replica, &rows);
    assert!(
        said.contains("no leader to copy from")
            && said.contains("building this replica from backup base_"),
        "the node did not restore without a leader: {}",
        c.node(&replica).log_tail(40)
    );
    let r = c.node(&replica);
    assert_eq!(
        r.in_recovery(),
        Ok(true),
        "the restored node is not read-only"
    );
    assert_eq!(c.leader_from_dcs(), Ok(None), "a leader appeared");

    // The old primary returns and leads; the restored node follows it.
    c.node_mut(&primary).start();
    let leader = c.wait_for_primary(Duration::from_secs(180));
    assert_eq!(leader, primary);
    c.node(&primary)
        .sql("INSERT INTO archive_fill SELECT g FROM generate_series(1, 10) g")
        .expect("the returned primary takes writes");
    let rows = fill_rows(c.node(&primary));
    wait_rows(&c, &replica, &rows);
    c.wait_for_streaming(&primary, &[&replica], Duration::from_secs(120));
    note(format!(
        "{replica} restored without a leader and streams from {primary} again ({rows} rows)"
    ));
}

/// The restore drill: `spiloctl backup verify` restores the newest backup into a scratch
/// directory, replays it to its consistent point, starts PostgreSQL there and reads every
/// relation with pg_amcheck, then removes the directory; a damaged backup fails it with the
/// cause and a non-zero exit; as root it refuses to start PostgreSQL.
#[test]
fn the_restore_drill_verifies_a_backup_and_names_a_damaged_one() {
    let store = Store::new();
    let mut opts = store_opts("drill", &store);
    // The scheduled drill every minute, too.
    opts.node.extra_yaml = opts.node.extra_yaml.replace(
        "  schedule: ''\n",
        "  schedule: ''\n  verify_schedule: '* * * * *'\n",
    );
    assert!(opts.node.extra_yaml.contains("verify_schedule"));
    let c = TestCluster::start(1, opts);
    let primary = c.wait_for_primary(BOOTSTRAP);
    let p = c.node(&primary);
    p.sql("CREATE TABLE drill(id int PRIMARY KEY, t text); INSERT INTO drill SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        .expect("rows");
    // Some 22 MB of random bytes (uncompressed storage for the column), so the backup is
    // stored in several parts and restored downloading them together.
    p.sql("CREATE TABLE noise(t bytea); ALTER TABLE noise ALTER t SET STORAGE EXTERNAL; INSERT INTO noise SELECT string_agg(decode(md5(random()::text), 'hex'), ''::bytea) FROM generate_series(1, 1400000) g GROUP BY g % 2000")
        .expect("noise");
    backup_create(&c);
    let shown = c
        .spiloctl(&["backup", "list", "--format", "json"])
        .expect("spiloctl");
    let listed: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    let parts = listed["backups"][0]["objects"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert!(parts >= 2, "the backup is not in parts: {listed}");
    // A scratch root the postgres user owns, to see that nothing is left in it.
    let scratch = tempfile::Builder::new()
        .prefix("spilo-it-drill-")
        .tempdir_in("/tmp")
        .expect("scratch root");
    let (uid, gid) = spilo_tests::util::postgres_ids();
    std::os::unix::fs::chown(scratch.path(), Some(uid), Some(gid)).expect("chown");
    let dir = scratch.path().display().to_string();
    let run = |args: &[&str]| {
        let out = c
            .spiloctl_as_postgres(args, Duration::from_secs(300))
            .expect("spiloctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["backup", "verify", "--dir", &dir, "--format", "json"]);
    assert!(ok, "backup verify failed: {out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["check"], "pg_amcheck", "{r}");
    assert!(r["wal_files"].as_u64().unwrap_or(0) >= 1, "{r}");
    assert!(r["restored_bytes"].as_u64().unwrap_or(0) > 1 << 20, "{r}");
    let backup = r["backup"].as_str().unwrap_or_default().to_string();
    assert!(backup.starts_with("base_"), "{r}");
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("scratch root")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the drill left {left:?}");

    // The daemon's scheduled drill passes too, and says so in /metrics.
    wait_for(
        "a scheduled restore drill passed",
        Duration::from_secs(150),
        || {
            let m = metrics(c.node(&primary));
            match (
                gauge(&m, "spilo_backup_verify_last_timestamp_seconds"),
                gauge(&m, "spilo_backup_verify_last_success"),
            ) {
                (t, ok) if t > 0.0 && ok == 1.0 => Ok(()),
                (t, ok) => Err(format!("last drill at {t}, success {ok}")),
            }
        },
    );
    assert!(
        c.node(&primary).log_text().contains("restore drill passed"),
        "{}",
        c.node(&primary).log_tail(20)
    );

    // As root: refused before anything starts.
    let out = c
        .spiloctl(&["backup", "verify", "--dir", &dir])
        .expect("spiloctl");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refuses to run as root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One byte of the backup's data object changed: the drill fails, naming the cause.
    let data = store
        .base(&c.scope)
        .join("basebackups_005")
        .join(&backup)
        .join("tar_partitions/part_1.tar.zst");
    let mut bytes = std::fs::read(&data).expect("the backup's object");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&data, &bytes).expect("damage it");
    let (ok, out, err) = run(&["backup", "verify", &backup, "--dir", &dir]);
    assert!(!ok, "a damaged backup passed the drill: {out}");
    assert!(
        err.contains(&format!("backup {backup} failed the drill")) && out.contains("FAILED"),
        "{out}{err}"
    );
    note(format!(
        "drill of {backup}: {} s, then the damaged copy: {}",
        r["seconds"],
        err.trim()
    ));
    let left = std::fs::read_dir(scratch.path())
        .expect("scratch root")
        .count();
    assert_eq!(left, 0, "the failed drill left its directory");
}

/// Every file under `dir`, with its size, relative to it.
fn listing(dir: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(m) = e.metadata() {
                let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                out.insert(rel, m.len());
            }
        }
    }
    out
}

/// A point-in-time clone (`bootstrap.method: clone`): a new cluster made from another
/// cluster's backup and archived WAL stops at the target time — it has every row committed
/// before it and none after — is promoted on a new timeline, takes writes, archives into its
/// own prefix, and leaves its source's prefix exactly as it was.
#[test]
fn a_clone_recovers_to_a_point_in_time_and_never_writes_into_its_source() {
    let store = Store::new();
    let src = TestCluster::start(1, store_opts("clone-src", &store));
    let sp = src.wait_for_primary(BOOTSTRAP);
    let p = src.node(&sp);
    p.sql("CREATE TABLE pitr(id int, phase text); INSERT INTO pitr SELECT g, 'before backup' FROM generate_series(1, 100) g")
        .expect("rows before the backup");
    backup_create(&src);
    p.sql("INSERT INTO pitr SELECT g, 'before target' FROM generate_series(101, 200) g")
        .expect("rows before the target");
    let target = p
        .sql_value("SELECT clock_timestamp()::text")
        .expect("time")
        .expect("a time");
    std::thread::sleep(Duration::from_millis(300));
    p.sql("INSERT INTO pitr SELECT g, 'after target' FROM generate_series(201, 300) g")
        .expect("rows after the target");
    let last = fill_and_switch(p, 1_000);
    wait_archived(p, &last, Duration::from_secs(120));
    let src_scope = src.scope.clone();
    let src_base = store.base(&src_scope);
    drop(src);
    let before = listing(&src_base);
    assert!(!before.is_empty(), "nothing under the source's prefix");

    let c = TestCluster::start(
        1,
        clone_opts(
            "clone-dst",
            &store,
            &src_scope,
            &format!("    target_time: '{target}'\n"),
        ),
    );
    // `spiloctl clone --follow`: the plan, then the daemon's progress until it is promoted.
    let mut cmd = std::process::Command::new(&spilo_tests::bins::bins().spiloctl);
    cmd.arg("-c")
        .arg(&c.nodes[0].config_path)
        .args(["clone", "--follow"]);
    let followed = spilo_tests::util::run_with_timeout(cmd, Duration::from_secs(240))
        .expect("spiloctl clone --follow");
    let said = String::from_utf8_lossy(&followed.stderr).into_owned();
    assert!(
        followed.status.success() && said.contains("runs as primary"),
        "spiloctl clone --follow: {said}{}",
        String::from_utf8_lossy(&followed.stdout)
    );
    let primary = c.wait_for_primary(Duration::from_secs(240));
    let (_, status) = c.node(&primary).api_get("/patroni").expect("/patroni");
    assert_eq!(
        status["archive"]["restore"]["phase"], "done",
        "{}",
        status["archive"]
    );
    let n = c.node(&primary);
    let phases = n
        .sql_value(
            "SELECT string_agg(DISTINCT phase, ',' ORDER BY phase) || ' ' || count(*) FROM pitr",
        )
        .expect("query")
        .expect("a row");
    assert_eq!(
        phases, "before backup,before target 200",
        "the clone did not stop at {target}"
    );
    n.sql("INSERT INTO pitr VALUES (1000, 'the clone writes')")
        .expect("the clone takes writes");
    let tl = n
        .sql_value("SELECT timeline_id::text FROM pg_control_checkpoint()")
        .expect("timeline")
        .expect("a timeline");
    wait_for(
        "the clone archives its timeline's history into its own prefix",
        Duration::from_secs(60),
        || {
            let names = store.names(&c.scope);
            if names.iter().any(|f| f.ends_with(".history")) {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        },
    );
    let log = n.log_text();
    assert!(
        log.contains(&format!("cloning {src_scope}")) && log.contains("promoted"),
        "the clone's log does not say what it restored: {}",
        n.log_tail(30)
    );
    assert_eq!(
        listing(&src_base),
        before,
        "the clone changed its source's prefix"
    );
    // `spiloctl clone` prints the plan the daemon followed.
    let out = c
        .spiloctl(&["clone", "--format", "json"])
        .expect("spiloctl clone");
    assert!(
        out.status.success(),
        "spiloctl clone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    let backup = plan["backup"]["name"].as_str().unwrap_or_default();
    assert!(
        backup.starts_with("base_") && log.contains(&format!("backup {backup} ")),
        "the plan's backup {backup} is not the one restored: {plan}"
    );
    assert!(plan["wal"]["files"].as_u64().unwrap_or(0) >= 1, "{plan}");
    assert!(
        plan["download_bytes_at_most"].as_u64() > plan["backup"]["compressed_size"].as_u64(),
        "{plan}"
    );
    note(format!(
        "clone of {src_scope} at {target}: {phases}, timeline {tl}, its own prefix has {} WAL files",
        store.names(&c.scope).len()
    ));
}

/// Starts a one-node clone of `src_scope` with `target` (YAML lines of `bootstrap.clone`) and
/// returns the ids it holds, in order.
fn clone_ids(store: &Store, src_scope: &str, target: &str) -> Vec<i64> {
    let c = TestCluster::start(1, clone_opts("pitr-clone", store, src_scope, target));
    let p = c.wait_for_primary(Duration::from_secs(240));
    let ids = c
        .node(&p)
        .sql_value("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM pitr")
        .expect("query")
        .unwrap_or_default();
    ids.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("id"))
        .collect()
}

/// PITR to the row, for every target kind: rows committed one per transaction with their
/// timestamps, positions, restore points and transaction ids recorded; a switchover in the
/// middle (timeline 2). Each clone holds exactly the rows up to its target (inclusive and
/// exclusive), before and after the timeline switch; a target before every backup is refused
/// before anything is downloaded.
#[test]
fn clones_stop_exactly_at_every_kind_of_target() {
    let store = Store::new();
    let src = TestCluster::start(2, store_opts("pitr-src", &store));
    let first = src.wait_for_replicas_streaming(BOOTSTRAP);
    let p = src.node(&first);
    p.sql("CREATE TABLE pitr(id int PRIMARY KEY)")
        .expect("table");
    let before_backup = p
        .sql_value("SELECT clock_timestamp()::text")
        .expect("time")
        .expect("a time");
    backup_create(&src);
    // Rows 1..15, one transaction each: a restore point and the transaction id at row 5, a
    // timestamp and a WAL position right after row 13.
    let mut xid5 = String::new();
    let mut marks = std::collections::BTreeMap::new();
    for id in 1..=15 {
        let xid = p
            .sql_value(&format!(
                "INSERT INTO pitr VALUES ({id}) RETURNING txid_current()::text"
            ))
            .expect("insert")
            .expect("xid");
        if id == 5 {
            xid5 = xid;
            p.sql("SELECT pg_create_restore_point('after_5')")
                .expect("restore point");
        }
        if id == 13 {
            let t = p
                .sql_value("SELECT clock_timestamp()::text")
                .expect("t")
                .expect("t");
            let l = p
                .sql_value("SELECT pg_current_wal_lsn()::text")
                .expect("l")
                .expect("l");
            marks.insert("time13", t);
            marks.insert("lsn13", l);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // A switchover: the rest is on timeline 2.
    let replica = src.others(&first)[0].clone();
    expect(
        "switchover",
        call(
            p,
            "POST",
            "/switchover",
            Some(&json!({"leader": first, "candidate": replica})),
        ),
        200,
        None,
    );
    let second = src.wait_for_primary_except(&[first.as_str()], Duration::from_secs(60));
    let q = src.node(&second);
    wait_for(
        "the new primary takes writes",
        Duration::from_secs(60),
        || {
            q.sql("INSERT INTO pitr VALUES (16)")
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
    for id in 17..=20 {
        q.sql(&format!("INSERT INTO pitr VALUES ({id})"))
            .expect("insert");
        if id == 18 {
            let t = q
                .sql_value("SELECT clock_timestamp()::text")
                .expect("t")
                .expect("t");
            marks.insert("time18", t);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The segment holding rows 16..20, then one more, so that it has a successor archived.
    let tl2_rows = fill_and_switch(q, 10);
    let last = fill_and_switch(q, 10);
    wait_archived(q, &last, Duration::from_secs(120));
    let scope = src.scope.clone();
    drop(src);

    let upto = |n: i64| (1..=n).collect::<Vec<i64>>();
    let cases: Vec<(String, Vec<i64>)> = vec![
        ("    target_name: after_5\n".to_string(), upto(5)),
        (format!("    target_xid: {xid5}\n"), upto(5)),
        (
            format!("    target_xid: {xid5}\n    inclusive: false\n"),
            upto(4),
        ),
        (
            format!("    target_time: '{}'\n", marks["time13"]),
            upto(13),
        ),
        (format!("    target_lsn: '{}'\n", marks["lsn13"]), upto(13)),
        (
            format!("    target_time: '{}'\n", marks["time18"]),
            upto(18),
        ),
        ("    target_immediate: true\n".to_string(), Vec::new()),
    ];
    for (target, want) in &cases {
        let got = clone_ids(&store, &scope, target);
        assert_eq!(&got, want, "clone with {}", target.trim());
        note(format!(
            "clone with {}: rows {:?}",
            target.trim(),
            got.last()
        ));
    }

    // A target before every backup finished: refused, nothing restored.
    let c = TestCluster::start(
        1,
        clone_opts(
            "pitr-early",
            &store,
            &scope,
            &format!("    target_time: '{before_backup}'\n"),
        ),
    );
    let n = &c.nodes[0];
    wait_for("the early target refused", Duration::from_secs(60), || {
        let log = n.log_text();
        if log.contains("no backup of the source finished before") {
            Ok(())
        } else {
            Err(n.log_tail(5))
        }
    });
    assert!(
        !n.data_dir.join("PG_VERSION").exists(),
        "something was restored for a target before every backup"
    );
    drop(c);

    // A hole in the source's archive (the segment with rows 16..20 gone, the next one there):
    // the clone's bootstrap fails naming the missing segment, not "recovery ended early".
    let obj = store.wal_dir(&scope).join(format!("{tl2_rows}.zst"));
    std::fs::rename(&obj, obj.with_extension("moved")).expect("move the segment away");
    let c = TestCluster::start(
        1,
        clone_opts(
            "pitr-hole",
            &store,
            &scope,
            &format!("    target_time: '{}'\n", marks["time18"]),
        ),
    );
    let n = &c.nodes[0];
    wait_for("the hole named", Duration::from_secs(120), || {
        let log = n.log_text();
        match log
            .lines()
            .find(|l| l.contains("bootstrap.method clone failed") && l.contains(&tl2_rows))
        {
            Some(l) if l.contains("hole") => Ok(()),
            _ => Err(n.log_tail(5)),
        }
    });
    let log = n.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("bootstrap.method clone failed"))
        .unwrap_or_default();
    note(format!("a hole in the source's archive: {line}"));
    drop(c);

    // The same segment back, but damaged (bytes in its middle changed): the bootstrap fails
    // naming it and why, not "recovery ended early".
    let mut bytes = std::fs::read(obj.with_extension("moved")).expect("the segment");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xa5;
    }
    std::fs::write(&obj, &bytes).expect("put the damaged segment back");
    let c = TestCluster::start(
        1,
        clone_opts(
            "pitr-damaged",
            &store,
            &scope,
            &format!("    target_time: '{}'\n", marks["time18"]),
        ),
    );
    let n = &c.nodes[0];
    wait_for(
        "the damaged segment named",
        Duration::from_secs(120),
        || {
            let log = n.log_text();
            match log
                .lines()
                .find(|l| l.contains("bootstrap.method clone failed") && l.contains(&tl2_rows))
            {
                Some(_) => Ok(()),
                None => Err(n.log_tail(5)),
            }
        },
    );
    let log = n.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("bootstrap.method clone failed"))
        .unwrap_or_default();
    assert!(
        !line.contains("hole"),
        "a damaged segment called a hole: {line}"
    );
    note(format!("a damaged segment in the source's archive: {line}"));
}
