//! WAL archiving to object storage through the daemon's archiver (`storage: {type: fs}`), on
//! real PostgreSQL 15: every file PostgreSQL archived is in the store and decodes to the same
//! bytes as the file in `pg_wal`; a store that refuses writes holds archiving back (PostgreSQL
//! keeps the WAL and retries; the metrics show the backlog and the cause) and nothing is lost
//! once it accepts them again; a different object already at a segment's key is refused and
//! reported, never overwritten; after a switchover the new primary archives its timeline's
//! history file and the old one archives nothing. The S3 backend is tested on s3s-fs (killed
//! and restarted, encrypted) and on moto (read back through the S3 API).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use spilo_core::backup::layout;
use spilo_core::backup::object;
use spilo_tests::{note, wait_for, ClusterOpts, Node, TestCluster};

use crate::metrics::{assert_promtool_accepts, metrics};
use crate::ops::{call, expect};
use crate::BOOTSTRAP;

/// A store directory the `postgres` user can write, removed at the end.
pub(crate) struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    pub(crate) fn new() -> Store {
        let dir = tempfile::Builder::new()
            .prefix("spilo-it-store-")
            .tempdir_in("/tmp")
            .expect("store dir");
        // Owned by the daemons' OS user, as a real store directory is.
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown store");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod store");
        Store { dir }
    }

    pub(crate) fn yaml(&self) -> String {
        format!(
            "storage:\n  type: fs\n  path: {}\nbackup:\n  schedule: ''\n  archive:\n    timeout: 10\n    readahead: 4\n",
            self.dir.path().display()
        )
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's base prefix (PostgreSQL 15, the default layout).
    pub(crate) fn base(&self, scope: &str) -> PathBuf {
        self.dir.path().join(format!("spilo/{scope}/wal/15"))
    }

    /// `wal_005` of the cluster.
    pub(crate) fn wal_dir(&self, scope: &str) -> PathBuf {
        self.base(scope).join(layout::WAL_DIR)
    }

    /// The WAL file names stored for `scope`.
    pub(crate) fn names(&self, scope: &str) -> BTreeSet<String> {
        let Ok(rd) = std::fs::read_dir(self.wal_dir(scope)) else {
            return BTreeSet::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                layout::wal_name(&n).map(str::to_string)
            })
            .collect()
    }
}

/// The `postgres` user's uid and gid.
fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").expect("name");
    // SAFETY: getpwnam with a valid C string; the result is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no postgres OS user");
    // SAFETY: non-null pointer from getpwnam.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn archiver_stats(n: &Node) -> (u64, u64, Option<String>) {
    let row = n
        .sql("SELECT archived_count::text, failed_count::text, coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        .unwrap_or_default();
    let get = |i: usize| row.first().and_then(|r| r.get(i).cloned()).flatten();
    (
        get(0).and_then(|v| v.parse().ok()).unwrap_or(0),
        get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
        get(2).filter(|s| !s.is_empty()),
    )
}

/// Writes some WAL and switches to a new segment; returns the name of the segment closed.
pub(crate) fn fill_and_switch(n: &Node, rows: u32) -> String {
    n.sql(&format!(
        "CREATE TABLE IF NOT EXISTS archive_fill(x int, pad text); \
         INSERT INTO archive_fill SELECT g, repeat('x', 200) FROM generate_series(1, {rows}) g"
    ))
    .unwrap_or_else(|e| panic!("fill: {e}"));
    n.sql_value("SELECT pg_walfile_name(pg_switch_wal())")
        .unwrap_or_else(|e| panic!("pg_switch_wal: {e}"))
        .expect("a segment name")
}

/// Waits until PostgreSQL reports `name` (or a later file) archived.
pub(crate) fn wait_archived(n: &Node, name: &str, timeout: Duration) {
    wait_for(
        &format!("{name} archived on {}", n.name),
        timeout,
        || match archiver_stats(n) {
            (_, _, Some(last)) if last.as_str() >= name && !last.ends_with(".history") => Ok(()),
            s => Err(format!("pg_stat_archiver {s:?}")),
        },
    );
}

/// The metric names the example Grafana dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana-dashboard.json"),
    )
    .expect("examples/grafana-dashboard.json");
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("spilo_") || word.starts_with("patroni_") {
                    out.insert(word.to_string());
                }
            }
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

/// The count of `spilo_wal_archive_failures_total{cause="…"}`.
fn failures(text: &str, cause: &str) -> u64 {
    let want = format!("cause=\"{cause}\"");
    text.lines()
        .filter(|l| l.starts_with("spilo_wal_archive_failures_total{") && l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0)
}

pub(crate) fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(-1.0)
}

/// Every stored object of `names` that is still in `pg_wal` decodes to its bytes; returns how
/// many were compared.
fn compare_with_pg_wal(
    store: &Store,
    scope: &str,
    data_dir: &Path,
    names: &BTreeSet<String>,
) -> usize {
    let mut compared = 0;
    for name in names {
        let obj = std::fs::read(store.wal_dir(scope).join(format!("{name}.zst")))
            .unwrap_or_else(|e| panic!("read the object of {name}: {e}"));
        let decoded = object::decode(name, &obj).unwrap_or_else(|e| panic!("{e}"));
        if let Ok(orig) = std::fs::read(data_dir.join("pg_wal").join(name)) {
            assert!(
                decoded == orig,
                "{name}: the stored object decodes to {} bytes that differ from pg_wal's {} bytes",
                decoded.len(),
                orig.len()
            );
            compared += 1;
        }
    }
    compared
}

#[test]
fn wal_is_archived_whole_refused_when_different_and_caught_up_after_an_outage() {
    let store = Store::new();
    let mut opts = ClusterOpts::named("archive");
    opts.node.extra_yaml = store.yaml();
    let c = TestCluster::start(2, opts);
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replica = c.others(&primary)[0].clone();
    let scope = c.scope.clone();

    // 1. Under load: every archived file is stored and byte-identical. PostgreSQL hands the
    //    files over through the spilo extension's archive module (backup.archive.method: auto,
    //    and scripts/test.sh installs the extension); wal_is_archived_to_moto… runs the command.
    let p = c.node(&primary);
    assert_eq!(
        p.sql_value("SHOW archive_library").expect("SHOW"),
        Some("spilo".to_string()),
        "archive_library"
    );
    assert_eq!(
        p.sql_value("SHOW archive_command").expect("SHOW"),
        Some(String::new()),
        "archive_command next to the module"
    );
    let mut last = String::new();
    for _ in 0..6 {
        last = fill_and_switch(p, 40_000);
    }
    wait_archived(p, &last, Duration::from_secs(120));
    let names = store.names(&scope);
    assert!(names.contains(&last), "{last} not in the store: {names:?}");
    let (archived, failed, _) = archiver_stats(p);
    let segments = names.iter().filter(|n| n.len() == 24).count() as u64;
    assert!(
        segments >= 6 && segments >= archived.saturating_sub(2),
        "PostgreSQL archived {archived} files, the store holds {segments} segments: {names:?}"
    );
    let compared = compare_with_pg_wal(&store, &scope, &p.data_dir, &names);
    assert!(
        compared >= 4,
        "only {compared} stored segments were still in pg_wal to compare"
    );
    note(format!(
        "archived {archived} files ({failed} failures), {compared} compared byte for byte"
    ));
    let m = metrics(p);
    assert_promtool_accepts(&primary, &m);
    assert!(gauge(&m, "spilo_wal_archived_total") >= 6.0, "{m}");
    // Nothing was uploaded twice: a segment answered to PostgreSQL is not uploaded ahead again
    // while its `.ready` file waits to be renamed.
    assert_eq!(
        gauge(&m, "spilo_wal_archive_duplicates_total"),
        0.0,
        "uploads found their object already stored: {m}"
    );
    // Every series the example Grafana dashboard draws exists (on the primary or the replica).
    let both = format!("{m}\n{}", metrics(c.node(&replica)));
    for name in dashboard_metrics() {
        assert!(
            both.contains(&format!("\n{name}{{")),
            "examples/grafana-dashboard.json uses {name}, which /metrics does not have"
        );
    }
    // GET /patroni and spiloctl list say how the archive is doing.
    let st = p.patroni().expect("/patroni");
    assert_eq!(st["archive"]["state"], "ok", "{st}");
    assert!(st["archive"]["archived"].as_u64().unwrap_or(0) >= 6, "{st}");
    wait_for(
        "the Archive column in spiloctl list",
        Duration::from_secs(30),
        || {
            let l = c.spiloctl_list_json()?;
            let row = l
                .as_array()
                .and_then(|a| a.iter().find(|r| r["Member"] == primary.as_str()))
                .cloned()
                .unwrap_or_default();
            if row["Archive"] == "ok" {
                Ok(())
            } else {
                Err(format!("{row}"))
            }
        },
    );

    // 2. The store refuses writes: nothing is reported archived, the backlog and the cause
    //    show; then it accepts again and archiving catches up without a gap.
    let wal_dir = store.wal_dir(&scope);
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let (before, failed_before, last_before) = archiver_stats(p);
    let mut blocked = Vec::new();
    for _ in 0..3 {
        blocked.push(fill_and_switch(p, 20_000));
    }
    wait_for("archive failures to show", Duration::from_secs(60), || {
        let (a, f, l) = archiver_stats(p);
        let m = metrics(p);
        let storage_failures = failures(&m, "storage");
        let waiting = gauge(&m, "spilo_wal_archive_waiting");
        if f > failed_before && storage_failures > 0 && waiting >= 1.0 {
            Ok((a, l))
        } else {
            Err(format!(
                "pg_stat_archiver archived {a} failed {f}; metrics storage failures {storage_failures}, waiting {waiting}"
            ))
        }
    });
    let (during, _, last_during) = archiver_stats(p);
    assert_eq!(
        (during, last_during.clone()),
        (before, last_before),
        "files were reported archived while the store refused writes"
    );
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let last_blocked = blocked.last().expect("blocked").clone();
    wait_archived(p, &last_blocked, Duration::from_secs(120));
    let names = store.names(&scope);
    for b in &blocked {
        assert!(names.contains(b), "{b} lost after the outage: {names:?}");
    }
    compare_with_pg_wal(&store, &scope, &p.data_dir, &names);

    // 3. A different object at the next segment's key (another primary's WAL): refused and
    //    reported, the object left as it was; archiving resumes once it is gone.
    // (Some WAL first: at a segment boundary pg_walfile_name names the previous segment.)
    p.sql("INSERT INTO archive_fill VALUES (0, 'x')")
        .expect("insert");
    let next = p
        .sql_value("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
        .expect("current segment")
        .expect("a name");
    let key = wal_dir.join(format!("{next}.zst"));
    assert!(
        !key.exists(),
        "{next} is already stored before it was closed"
    );
    let mut bogus = Vec::new();
    object::encode_stream(&b"not this cluster's WAL"[..], 3, 4096, |c| {
        bogus.extend_from_slice(c);
        Ok(())
    })
    .expect("encode");
    std::fs::write(&key, &bogus).expect("plant an object");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    fill_and_switch(p, 1_000);
    wait_for(
        "the conflict to be reported",
        Duration::from_secs(60),
        || {
            let m = metrics(p);
            let conflicts = failures(&m, "conflict");
            if conflicts > 0 && p.log_text().contains("refusing to overwrite") {
                Ok(())
            } else {
                Err(format!("conflict failures {conflicts}"))
            }
        },
    );
    assert_eq!(
        std::fs::read(&key).expect("planted object"),
        bogus,
        "the planted object was overwritten"
    );
    let (_, _, last_now) = archiver_stats(p);
    assert!(
        last_now.as_deref().is_none_or(|l| l < next.as_str()),
        "{next} reported archived over a conflicting object ({last_now:?})"
    );
    std::fs::remove_file(&key).expect("remove the planted object");
    wait_archived(p, &next, Duration::from_secs(60));

    // 3b. The same segment stored by an older spilo (trailer version 1: SHA-256, not XXH3)
    //     and archived again (its status set back to `.ready`, as after a crash before
    //     PostgreSQL renamed it): the archiver compares by the stored object's digest, counts
    //     it as already archived and leaves the object as it was.
    let stored = std::fs::read(&key).expect("archived object");
    let original = object::decode(&next, &stored).expect("decode");
    let v1 =
        object::Trailer::of_reader(&original[..], object::Algo::Sha256, 1 << 16).expect("sha256");
    let mut older = stored[..stored.len() - object::TRAILER_LEN].to_vec();
    older.extend_from_slice(&v1.encode());
    assert_eq!(
        object::decode(&next, &older).expect("a v1 object"),
        original
    );
    std::fs::write(&key, &older).expect("write the v1 object");
    let status = p.data_dir.join("pg_wal/archive_status");
    let duplicates_before = gauge(&metrics(p), "spilo_wal_archive_duplicates_total");
    std::fs::rename(
        status.join(format!("{next}.done")),
        status.join(format!("{next}.ready")),
    )
    .expect("mark the segment ready again");
    // Marked ready, a segment is kept by the checkpointer until archived again.
    assert!(
        p.data_dir.join("pg_wal").join(&next).is_file(),
        "{next} left pg_wal before the check"
    );
    fill_and_switch(p, 1_000);
    wait_for(
        "the segment archived again over its version-1 object",
        Duration::from_secs(60),
        || {
            let d = gauge(&metrics(p), "spilo_wal_archive_duplicates_total");
            if status.join(format!("{next}.done")).exists() && d > duplicates_before {
                Ok(())
            } else {
                Err(format!("duplicates {d} (before {duplicates_before})"))
            }
        },
    );
    assert_eq!(
        std::fs::read(&key).expect("v1 object"),
        older,
        "the version-1 object was replaced"
    );

    // 4. The replica archives nothing (archive_mode = on archives on the primary only); after
    //    a switchover the new primary archives its history file.
    assert!(
        metrics(c.node(&replica)).contains("spilo_wal_archived_total{"),
        "the replica exposes the archiver's series too"
    );
    assert_eq!(
        gauge(&metrics(c.node(&replica)), "spilo_wal_archived_total"),
        0.0
    );
    let r = call(
        c.node(&primary),
        "POST",
        "/switchover",
        Some(&json!({"leader": primary, "candidate": replica})),
    );
    expect("POST /switchover", r, 200, None);
    c.wait_for_primary_except(&[primary.as_str()], Duration::from_secs(60));
    let tl = c
        .node(&replica)
        .timeline()
        .expect("the new primary's timeline");
    let history = format!("{tl:08X}.history");
    wait_for(
        &format!("{history} in the store"),
        Duration::from_secs(60),
        || {
            let names = store.names(&scope);
            if names.contains(&history) {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        },
    );
    let new_primary = c.node(&replica);
    let segment = fill_and_switch(new_primary, 1_000);
    wait_archived(new_primary, &segment, Duration::from_secs(60));
    assert!(store.names(&scope).contains(&segment));
    // Its first requests came right after the promotion: none was refused for a role the
    // daemon had not published yet.
    let m = metrics(new_primary);
    assert_eq!(failures(&m, "not_primary"), 0, "{m}");
}

/// The same archiver into S3 (`type: s3`, through the S3 plugin) on s3s-fs, with client-side
/// encryption: segments land in the bucket sealed (not readable as zstd, nor with another key)
/// and open to the same bytes as `pg_wal`'s; the S3 server killed → failures, nothing reported
/// archived meanwhile; restarted over the same files → the archiver catches up, no gap.
#[test]
fn wal_is_archived_to_s3_and_survives_the_server_restarting() {
    use spilo_tests::s3::{S3Kind, S3Server};
    let mut s3 = S3Server::start(S3Kind::S3sFs);
    // s3s-fs keeps a bucket as a directory of its data dir.
    let bucket_dir = s3.dir().join("data").join("spilo-wal");
    std::fs::create_dir_all(&bucket_dir).expect("bucket");
    // The plugin next to the copied binaries, where spilo looks for it.
    spilo_tests::bins::plugin_lib(spilo_core::backup::S3_PLUGIN_FILE);
    let key_dir = Store::new();
    let key_file = key_dir.path().join("wal.key");
    std::fs::write(&key_file, "11".repeat(32)).expect("key file");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let key = spilo_core::backup::crypt::SecretKey::parse(&"11".repeat(32), "k").expect("key");
    let other = spilo_core::backup::crypt::SecretKey::parse(&"22".repeat(32), "k").expect("key");
    let mut opts = ClusterOpts::named("archive-s3");
    opts.node.extra_yaml = format!(
        "storage:\n  type: s3\n  bucket: spilo-wal\n  endpoint: {}\n  region: us-east-1\n  access_key_id: {}\n  secret_access_key: {}\n  timeout: 3\n  max_attempts: 1\nbackup:\n  schedule: ''\n  archive:\n    timeout: 8\n  encryption:\n    key_file: {}\n",
        s3.endpoint(),
        s3.access_key,
        s3.secret_key,
        key_file.display()
    );
    let c = TestCluster::start(1, opts);
    let primary = c.wait_for_primary(BOOTSTRAP);
    let scope = c.scope.clone();
    let p = c.node(&primary);
    let wal_dir = bucket_dir.join(format!("spilo/{scope}/wal/15/{}", layout::WAL_DIR));
    let stored = || -> BTreeSet<String> {
        std::fs::read_dir(&wal_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let n = e.file_name().into_string().ok()?;
                        layout::wal_name(&n).map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let compare = |names: &BTreeSet<String>| {
        for name in names {
            let obj = std::fs::read(wal_dir.join(format!("{name}.zst"))).expect("object");
            assert!(
                object::decode(name, &obj).is_err() && zstd::stream::decode_all(&obj[..]).is_err(),
                "{name} is stored in the clear"
            );
            let wrong = object::read(Some(&other), name, &obj).unwrap_err();
            assert!(wrong.to_string().contains("key id"), "{wrong}");
            let decoded = object::read(Some(&key), name, &obj).unwrap_or_else(|e| panic!("{e}"));
            if let Ok(orig) = std::fs::read(p.data_dir.join("pg_wal").join(name)) {
                assert!(decoded == orig, "{name} differs from pg_wal");
            }
        }
    };

    let mut last = String::new();
    for _ in 0..3 {
        last = fill_and_switch(p, 20_000);
    }
    wait_archived(p, &last, Duration::from_secs(120));
    let names = stored();
    assert!(names.contains(&last), "{last} not in the bucket: {names:?}");
    compare(&names);

    s3.stop();
    let (before, _, last_before) = archiver_stats(p);
    let mut during = Vec::new();
    for _ in 0..2 {
        during.push(fill_and_switch(p, 20_000));
    }
    wait_for("failures while S3 is down", Duration::from_secs(90), || {
        let m = metrics(p);
        let down = failures(&m, "unreachable") + failures(&m, "timeout") + failures(&m, "storage");
        let waiting = gauge(&m, "spilo_wal_archive_waiting");
        if down > 0 && waiting >= 1.0 {
            Ok(())
        } else {
            Err(format!("failures {down}, waiting {waiting}"))
        }
    });
    let (now, _, last_now) = archiver_stats(p);
    assert_eq!(
        (now, last_now),
        (before, last_before),
        "archived while S3 was down"
    );

    s3.restart();
    let last_during = during.last().expect("segments").clone();
    wait_archived(p, &last_during, Duration::from_secs(180));
    let names = stored();
    for d in &during {
        assert!(
            names.contains(d),
            "{d} lost across the S3 restart: {names:?}"
        );
    }
    compare(&names);
    note(format!(
        "{} WAL files in the bucket after the restart",
        names.len()
    ));
}

/// The encryption key as a KMS secret (moto's KMS; the store a directory): the key file holds
/// `aws:kms:<base64>` made by `spiloctl aws kms generate-key`, the daemon opens it at start
/// through `spiloctl aws kms decrypt`, and every segment is sealed with the data key KMS
/// generated; a secret KMS refuses stops the daemon at start with KMS's error code and the
/// key file's name, and archives nothing.
#[test]
fn the_encryption_key_is_opened_with_kms() {
    use aws_sdk_kms::config::{Credentials, Region};
    use spilo_core::backup::crypt::SecretKey;
    use spilo_tests::s3::{S3Kind, S3Server};
    let moto = S3Server::start(S3Kind::Moto);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let kms = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(Region::new("eu-central-1"))
            .endpoint_url(moto.endpoint())
            .credentials_provider(Credentials::new(
                &moto.access_key,
                &moto.secret_key,
                None,
                None,
                "spilo-tests",
            ))
            .build(),
    );
    let key_id = rt
        .block_on(kms.create_key().send())
        .unwrap_or_else(|e| {
            panic!(
                "create key: {}",
                aws_sdk_kms::error::DisplayErrorContext(&e)
            )
        })
        .key_metadata
        .expect("key metadata")
        .key_id;
    let env: Vec<(String, String)> = vec![
        ("AWS_ACCESS_KEY_ID".into(), moto.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), moto.secret_key.clone()),
        ("AWS_REGION".into(), "eu-central-1".into()),
        ("AWS_ENDPOINT_URL_KMS".into(), moto.endpoint()),
    ];
    let spiloctl = |args: &[&str], input: &[u8]| -> Vec<u8> {
        use std::io::Write as _;
        let mut child = std::process::Command::new(&spilo_tests::bins::bins().spiloctl)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spiloctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        let out = child.wait_with_output().expect("spiloctl output");
        assert!(
            out.status.success(),
            "spiloctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let secret = String::from_utf8(spiloctl(
        &["aws", "kms", "generate-key", "--key-id", &key_id],
        b"",
    ))
    .expect("text");
    assert!(secret.starts_with("aws:kms:"), "{secret}");
    // What the daemon will get: the 32-byte data key.
    let plain = spiloctl(&["aws", "kms", "decrypt"], secret.as_bytes());
    assert_eq!(plain.len(), 32, "a 256-bit data key");
    let key = SecretKey::from_opened(&plain, "kms").expect("key");

    let store = Store::new();
    let key_file = store.path().join("wal.key");
    std::fs::write(&key_file, &secret).expect("key file");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut opts = ClusterOpts::named("archive-kms");
    opts.node.extra_yaml = format!(
        "{}  encryption:\n    key_file: {}\n",
        store.yaml(),
        key_file.display()
    );
    opts.node.env = env.clone();
    let mut c = TestCluster::start(1, opts);
    let primary = c.wait_for_primary(BOOTSTRAP);
    let scope = c.scope.clone();
    let p = c.node(&primary);
    let mut last = String::new();
    for _ in 0..2 {
        last = fill_and_switch(p, 20_000);
    }
    wait_archived(p, &last, Duration::from_secs(120));
    let names = store.names(&scope);
    assert!(names.contains(&last), "{last} not stored: {names:?}");
    let mut compared = 0;
    for name in &names {
        let obj = std::fs::read(store.wal_dir(&scope).join(format!("{name}.zst"))).expect("object");
        assert!(
            object::decode(name, &obj).is_err(),
            "{name} is stored in the clear"
        );
        let opened = object::read(Some(&key), name, &obj).unwrap_or_else(|e| panic!("{e}"));
        if let Ok(orig) = std::fs::read(p.data_dir.join("pg_wal").join(name)) {
            assert!(opened == orig, "{name} differs from pg_wal");
            compared += 1;
        }
    }
    assert!(compared > 0, "no stored segment left in pg_wal to compare");

    // A sealed key KMS cannot open (one byte of the ciphertext changed): the daemon refuses
    // to start, naming the key file and KMS's error code.
    let mut blob = spilo_aws::kms::parse_secret(&secret).expect("blob");
    let n = blob.len();
    blob[n - 5] ^= 0x5a;
    std::fs::write(&key_file, spilo_aws::kms::format_secret(&blob)).expect("key file");
    let node = c.node_mut(&primary);
    let log_before = node.log_text().len();
    node.restart_daemon();
    let status = node
        .wait_daemon_exit(Duration::from_secs(90))
        .expect("the daemon still runs with a key KMS refuses");
    assert!(!status.success(), "exit status {status}");
    let log = node.log_text();
    let said = &log[log_before.min(log.len())..];
    assert!(
        said.contains("InvalidCiphertextException")
            && said.contains(&key_file.display().to_string()),
        "the refusal does not name KMS's error and the key file: {said}"
    );
    let line = said
        .lines()
        .find(|l| l.contains("InvalidCiphertextException"))
        .unwrap_or_default();
    note(format!(
        "{compared} segments opened with the KMS data key; a bad secret refused: {line}"
    ));
}

/// The archive end to end on moto (the S3 server closest to AWS's behaviour), read back
/// through the S3 API: every archived segment is an object under Spilo's layout, and each one
/// still in `pg_wal` decodes to the same bytes.
#[test]
fn wal_is_archived_to_moto_under_spilos_layout() {
    use aws_sdk_s3::config::{Credentials, Region};
    use spilo_tests::s3::{S3Kind, S3Server};
    let s3 = S3Server::start(S3Kind::Moto);
    spilo_tests::bins::plugin_lib(spilo_core::backup::S3_PLUGIN_FILE);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(s3.endpoint())
            .credentials_provider(Credentials::new(
                &s3.access_key,
                &s3.secret_key,
                None,
                None,
                "spilo-tests",
            ))
            .force_path_style(true)
            .build(),
    );
    rt.block_on(client.create_bucket().bucket("spilo-moto").send())
        .unwrap_or_else(|e| {
            panic!(
                "create bucket: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
    let mut opts = ClusterOpts::named("archive-moto");
    opts.node.extra_yaml = format!(
        "storage:\n  type: s3\n  bucket: spilo-moto\n  endpoint: {}\n  region: us-east-1\n  access_key_id: {}\n  secret_access_key: {}\nbackup:\n  schedule: ''\n  archive:\n    timeout: 30\n    method: command\n",
        s3.endpoint(),
        s3.access_key,
        s3.secret_key
    );
    let c = TestCluster::start(1, opts);
    let primary = c.wait_for_primary(BOOTSTRAP);
    let p = c.node(&primary);
    // backup.archive.method: command: a `spilo wal-push` process per file, no module.
    let cmd = p
        .sql_value("SHOW archive_command")
        .expect("SHOW")
        .unwrap_or_default();
    assert!(
        cmd.contains(" wal-push --socket "),
        "archive_command: {cmd}"
    );
    assert_eq!(
        p.sql_value("SHOW archive_library").expect("SHOW"),
        Some(String::new()),
        "archive_library"
    );
    let mut written = Vec::new();
    for _ in 0..3 {
        written.push(fill_and_switch(p, 20_000));
    }
    let last = written.last().expect("segments").clone();
    wait_archived(p, &last, Duration::from_secs(120));
    let prefix = format!("spilo/{}/wal/15/{}/", c.scope, layout::WAL_DIR);
    let listed = rt
        .block_on(
            client
                .list_objects_v2()
                .bucket("spilo-moto")
                .prefix(&prefix)
                .send(),
        )
        .unwrap_or_else(|e| panic!("list: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    for name in &written {
        assert!(
            keys.contains(&format!("{prefix}{name}.zst")),
            "{name} is not in moto under {prefix}: {keys:?}"
        );
    }
    let mut compared = 0;
    for key in &keys {
        let Some(name) = key
            .strip_prefix(&prefix)
            .and_then(|k| k.strip_suffix(".zst"))
        else {
            continue;
        };
        let Ok(orig) = std::fs::read(p.data_dir.join("pg_wal").join(name)) else {
            continue;
        };
        let body = rt
            .block_on(async {
                let o = client
                    .get_object()
                    .bucket("spilo-moto")
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())?;
                o.body
                    .collect()
                    .await
                    .map(|b| b.into_bytes().to_vec())
                    .map_err(|e| e.to_string())
            })
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        let decoded = object::read(None, name, &body).unwrap_or_else(|e| panic!("{e}"));
        assert!(decoded == orig, "{name} from moto differs from pg_wal");
        compared += 1;
    }
    assert!(
        compared >= 1,
        "no stored segment was still in pg_wal: {keys:?}"
    );
    note(format!(
        "{} objects in moto, {compared} compared byte for byte",
        keys.len()
    ));
}

/// A store that accepts connections and never answers: every archive attempt ends within its
/// timeout with a failure PostgreSQL sees (and retries), the backlog shows, nothing is reported
/// archived, and the node stays healthy: its REST API answers and the primary takes writes.
#[test]
fn a_silent_store_times_out_without_hanging_the_node() {
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accept and hold every connection, answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    spilo_tests::bins::plugin_lib(spilo_core::backup::S3_PLUGIN_FILE);
    let mut opts = ClusterOpts::named("archive-silent");
    opts.node.extra_yaml = format!(
        "storage:\n  type: s3\n  bucket: silent\n  endpoint: http://127.0.0.1:{port}\n  region: us-east-1\n  access_key_id: k\n  secret_access_key: s\n  timeout: 2\n  max_attempts: 1\nbackup:\n  schedule: ''\n  archive:\n    timeout: 5\n"
    );
    let c = TestCluster::start(1, opts);
    let primary = c.wait_for_primary(BOOTSTRAP);
    let p = c.node(&primary);
    let (archived_before, failed_before, _) = archiver_stats(p);
    fill_and_switch(p, 5_000);
    wait_for("archive failures", Duration::from_secs(60), || {
        let (a, f, _) = archiver_stats(p);
        let m = metrics(p);
        let timeouts = failures(&m, "timeout") + failures(&m, "unreachable");
        if f >= failed_before + 2 && timeouts >= 2 {
            Ok((a, f))
        } else {
            Err(format!(
                "pg_stat_archiver archived {a} failed {f}; timeouts {timeouts}"
            ))
        }
    });
    let (archived, _, _) = archiver_stats(p);
    assert_eq!(
        archived, archived_before,
        "reported archived into a silent store"
    );
    // The node is fine: quick answers, writes accepted, still the primary.
    let t0 = std::time::Instant::now();
    let st = p.patroni().expect("/patroni answers");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "/patroni took {:?}",
        t0.elapsed()
    );
    assert_eq!(st["role"], "primary", "{st}");
    assert!(
        st["archive"]["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("failing")),
        "{st}"
    );
    p.sql("CREATE TABLE still_writable(x int); INSERT INTO still_writable VALUES (1)")
        .expect("the primary takes writes while archiving fails");
    let waiting = gauge(&metrics(p), "spilo_wal_archive_waiting");
    assert!(waiting >= 1.0, "backlog not shown: {waiting}");
    note(format!("silent store: backlog {waiting}, the node healthy"));
}
