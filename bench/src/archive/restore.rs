//! The restore benchmark (`--only restore`): one database (the archive benchmark's template:
//! pgbench at `--archive-scale`), backed up and archived to the same S3 server (s3s-fs) by
//! spilo and by pgBackRest 2.45, then more pgbench WAL archived after the backup; then
//!
//! - spilo builds a new replica from the backup (`spilo_restore`: the backup streamed from S3,
//!   the WAL since replayed through `wal-fetch` with its prefetch, then streaming), timed until
//!   it has replayed to the primary's position, with the bytes it streamed from the primary;
//! - spilo builds a new replica with `pg_basebackup` from the primary, timed the same way;
//! - pgBackRest restores its backup (`restore`, then PostgreSQL recovering to the end of the
//!   archive through `archive-get`, asynchronous), timed until it accepts writes.
//!
//! MB/s counts the database's size plus the WAL written after the backup, the same bytes for
//! each.

use super::*;

/// The rows.
const SPILO_RESTORE: &str = "spilo: new replica from the backup (spilo_restore)";
const SPILO_BASEBACKUP: &str = "spilo: new replica by pg_basebackup";
const PGBR_RESTORE: &str = "pgBackRest 2.45 restore + recovery, S3 (TLS)";

/// Waits until `sql` answers `t` on `what`, within `limit`; the seconds since `t0`.
fn until_true(
    what: &str,
    t0: Instant,
    limit: Duration,
    mut sql: impl FnMut() -> Result<String, String>,
) -> Result<f64, String> {
    let mut last = String::new();
    while t0.elapsed() < limit {
        match sql() {
            Ok(v) if v == "t" => return Ok(t0.elapsed().as_secs_f64()),
            Ok(v) => last = v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what}: not done after {limit:?} ({last})"))
}

/// pgbench against the node at 127.0.0.1:`port` for `secs` seconds (WAL after the backup).
fn pgbench_tcp(port: u16, secs: u32) -> Result<(), String> {
    let mut cmd = Command::new(format!("{PG_BIN}/pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "postgres",
        ])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .env("PGOPTIONS", "-c synchronous_commit=off");
    run_ok(cmd, "pgbench").map(|_| ())
}

/// The figures of the spilo side: restore row, pg_basebackup row, the WAL bytes after the
/// backup.
fn spilo_side(
    o: &Opts,
    s3: &S3Server,
    template: &Path,
    wal_secs: u32,
) -> Result<(Figure, Figure, u64), String> {
    let mut opts = ClusterOpts::named("bench-restore");
    opts.node.extra_yaml = storage_yaml(&s3_store(s3, "bench-spilo", &s3.endpoint()), o);
    opts.node.pg_parameters = vec![("max_wal_size".into(), "4GB".into())];
    // The benchmark's WAL since the backup is large against a small database: restore anyway.
    opts.node.extra_postgresql = "  spilo_restore: {threshold_percentage: 100000}\n".into();
    let mut c = TestCluster::start(0, opts.clone());
    let idx = c.add_node("node1", "node1", opts.node.clone());
    copy_dir(template, &c.nodes[idx].data_dir)?;
    c.nodes[idx].start();
    let primary = c.wait_for_primary(Duration::from_secs(180));
    let data = c.node(&primary).data_dir.clone();
    drain(&data, Instant::now(), None)?;
    let out = c.spiloctl(&["backup", "create"])?;
    if !out.status.success() {
        return Err(format!(
            "spiloctl backup create: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let p = c.node(&primary);
    let start: String = p
        .sql_value("SELECT pg_current_wal_lsn()::text")?
        .unwrap_or_default();
    pgbench_tcp(p.pg_port, wal_secs)?;
    p.sql("SELECT pg_switch_wal()")?;
    drain(&data, Instant::now(), None)?;
    let target: String = p
        .sql_value("SELECT pg_current_wal_lsn()::text")?
        .unwrap_or_default();
    let wal_bytes: u64 = p
        .sql_value(&format!(
            "SELECT ('{target}'::pg_lsn - '{start}'::pg_lsn)::bigint::text"
        ))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let db_size: u64 = p
        .sql_value("SELECT sum(pg_database_size(oid))::bigint::text FROM pg_database")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    note(format!(
        "restore bench: database {:.0} MB, {:.0} MB of WAL after the backup",
        db_size as f64 / 1_048_576.0,
        wal_bytes as f64 / 1_048_576.0
    ));
    let mut rows = Vec::new();
    for (name, what, extra) in [
        ("node2", SPILO_RESTORE, ""),
        (
            "node3",
            SPILO_BASEBACKUP,
            "  create_replica_methods: [basebackup]\n",
        ),
    ] {
        let mut node_opts = opts.node.clone();
        node_opts.extra_postgresql.push_str(extra);
        let i = c.add_node(name, name, node_opts);
        let t0 = Instant::now();
        c.nodes[i].start();
        let n = &c.nodes[i];
        let secs = until_true(what, t0, Duration::from_secs(1800), || {
            n.sql_value(&format!(
                "SELECT (pg_last_wal_replay_lsn() >= '{target}'::pg_lsn)::text"
            ))
            .map(|v| match v.as_deref() {
                Some("true") => "t".to_string(),
                other => format!("{other:?}"),
            })
        })?;
        let streamed: u64 = n
            .sql_value("SELECT (latest_end_lsn - receive_start_lsn)::bigint::text FROM pg_stat_wal_receiver")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let copied = n.log_text().contains("with pg_basebackup from");
        let from_primary = streamed + if copied { db_size } else { 0 };
        rows.push(Figure {
            what: what.into(),
            secs: Some(secs),
            bytes: db_size + wal_bytes,
            segments: 0,
            stored: None,
            note: format!(
                "read from the primary: {:.1} MB ({:.1} % of the database){}",
                from_primary as f64 / 1_048_576.0,
                100.0 * from_primary as f64 / db_size.max(1) as f64,
                if copied {
                    ", the copy plus the WAL it streamed"
                } else {
                    ", the WAL it streamed after the archive"
                }
            ),
        });
    }
    drop(c);
    let bb = rows.pop().ok_or("no pg_basebackup row")?;
    let restore = rows.pop().ok_or("no restore row")?;
    Ok((restore, bb, wal_bytes))
}

/// pgBackRest: the same template archived and backed up, WAL after it, then `restore` and
/// recovery to the end of the archive.
fn pgbackrest_side(
    o: &Opts,
    work: &Path,
    template: &Path,
    repo: &str,
    wal_secs: u32,
) -> Result<Figure, String> {
    let pg = PlainPg::start(template, work, &[])?;
    let r = (|| {
        let conf = pgbackrest_conf(o, work, &pg, repo, true);
        let pgbr = |args: &[&str]| pgbackrest(&conf, args);
        pgbr(&["stanza-create"])?;
        let t0 = pg.archive_with(&format!(
            "/usr/bin/pgbackrest --config={} --stanza=bench archive-push %p",
            conf.display()
        ))?;
        drain(&pg.data, t0, None)?;
        pgbr(&["backup", "--type=full"])?;
        let start = pg.sql("SELECT pg_current_wal_lsn()")?;
        // pgbench over the socket.
        let mut cmd = as_postgres(&format!("{PG_BIN}/pgbench"));
        cmd.arg("-h")
            .arg(&pg.sock)
            .args(["-p", &pg.port.to_string(), "-U", "postgres"])
            .args([
                "-n",
                "-c",
                "4",
                "-j",
                "2",
                "-T",
                &wal_secs.to_string(),
                "postgres",
            ])
            .env("PGOPTIONS", "-c synchronous_commit=off");
        run_ok(cmd, "pgbench")?;
        pg.sql("SELECT pg_switch_wal()")?;
        drain(&pg.data, Instant::now(), None)?;
        let end = pg.sql("SELECT pg_current_wal_lsn()")?;
        let wal: u64 = pg
            .sql(&format!(
                "SELECT ('{end}'::pg_lsn - '{start}'::pg_lsn)::bigint"
            ))?
            .parse()
            .unwrap_or(0);
        let db_size: u64 = pg
            .sql("SELECT sum(pg_database_size(oid))::bigint FROM pg_database")?
            .parse()
            .unwrap_or(0);
        pg.stop();
        // The restore into a new directory, then PostgreSQL recovering from the archive.
        let dest = mkdir_pg(&work.join("restored"));
        let t0 = Instant::now();
        pgbr(&[
            "restore",
            &format!("--pg1-path={}", dest.display()),
            "--archive-mode=off",
        ])?;
        let restored_at = t0.elapsed().as_secs_f64();
        let sock = mkdir_pg(&work.join("sock2"));
        let port = free_port();
        let mut cmd = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        cmd.args(["start", "-t", "1800", "-D"])
            .arg(&dest)
            .arg("-l")
            .arg(work.join("restored.log"))
            .arg("-o")
            .arg(format!(
                "-c port={port} -c listen_addresses='' -c unix_socket_directories='{}' -c hba_file='{}'",
                sock.display(),
                work.join("hba.conf").display()
            ));
        run_ok(cmd, "pg_ctl start (restored)")?;
        let restored = PlainPg {
            data: dest.clone(),
            sock,
            port,
            log: work.join("restored.log"),
        };
        let secs = until_true(PGBR_RESTORE, t0, Duration::from_secs(1800), || {
            restored
                .sql("SELECT NOT pg_is_in_recovery()")
                .map(|v| v.trim().to_string())
        });
        restored.stop();
        let secs = secs?;
        Ok(Figure {
            what: PGBR_RESTORE.into(),
            secs: Some(secs),
            bytes: db_size + wal,
            segments: 0,
            stored: None,
            note: format!(
                "process-max {}, zst {}, archive-get asynchronous; restore alone {restored_at:.2} s; {:.0} MB of WAL after the backup",
                o.parallel.max(4),
                o.level,
                wal as f64 / 1_048_576.0
            ),
        })
    })();
    if r.is_err() {
        note(format!(
            "restore bench: postgres log:\n{}",
            spilo_tests::util::tail(&pg.log, 30)
        ));
        // A run that failed before it stopped the source PostgreSQL itself.
        if pg.data.join("postmaster.pid").exists() {
            pg.stop();
        }
    }
    r
}

/// Runs the restore benchmark and prints its table.
pub fn run(o: &Opts) {
    let root = TempRoot::new("spilo-bench-restore-");
    let work = root.path();
    spilo_tests::bins::plugin_lib(S3_PLUGIN_FILE);
    let template = work.join("template");
    // A short backlog: the template is the database; the WAL that matters comes after the
    // backup.
    let short = Opts {
        segments: 8,
        scale: o.scale,
        level: o.level,
        parallel: o.parallel,
        readahead: o.readahead,
        method: o.method,
        quick: o.quick,
        rounds: 1,
    };
    if let Err(e) = make_template(&short, &template) {
        println!("restore benchmark: the database could not be made: {e}");
        return;
    }
    let wal_secs = 20;
    let mut s3 = S3Server::start(S3Kind::S3sFs);
    for b in ["bench-spilo", "bench-pgbackrest"] {
        fs::create_dir_all(s3.dir().join("data").join(b)).expect("bucket dir");
    }
    let (_haproxy, tls_port) = tls_front(work, &s3);
    let mut rows = Vec::new();
    match spilo_side(&short, &s3, &template, wal_secs) {
        Ok((restore, bb, _)) => {
            rows.push(restore);
            rows.push(bb);
        }
        Err(e) => {
            rows.push(failed(SPILO_RESTORE, e));
        }
    }
    let repo = pgbr_s3_repo(&s3, tls_port);
    let w = mkdir_pg(&work.join("pgbr-restore"));
    rows.push(
        pgbackrest_side(&short, &w, &template, &repo, wal_secs)
            .unwrap_or_else(|e| failed(PGBR_RESTORE, e)),
    );
    drop(_haproxy);
    s3.stop();
    print_table(
        &format!(
            "Restore: a base backup plus the WAL written after it (MB/s of database + WAL, scale {}; 'vs ref' against pgBackRest)",
            o.scale
        ),
        &rows,
        Some("pgBackRest"),
    );
    let mbps = |w: &str| rows.iter().find(|f| f.what == w).and_then(Figure::mbps);
    if let (Some(a), Some(b)) = (mbps(SPILO_RESTORE), mbps(PGBR_RESTORE)) {
        println!(
            "\n  spilo restore vs pgBackRest restore (target ≥ 1×): {:.2}×",
            a / b
        );
    }
    if let Some(f) = rows.iter().find(|f| f.what == SPILO_RESTORE) {
        println!("  spilo replica from the backup: {} (target ≤ 5 %)", f.note);
    }
}
