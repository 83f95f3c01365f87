//! The WAL archive and base backup benchmark (`--only archive`): one backlog of pgbench WAL,
//! archived by spilo, pgBackRest 2.45 and barman-cloud-wal-archive to the same S3 server
//! (s3s-fs), and by spilo and pgBackRest to a directory on the same disk; the raw parallel PUT
//! of the same segments to the same server as the limit; base backups by spilo, pgBackRest and
//! `pg_basebackup` to local disk.
//!
//! The same WAL for everyone: a 1-node spilo cluster whose store is unreachable writes pgbench
//! WAL until `--archive-segments` segments wait in `pg_wal` (`.ready`); its data directory is
//! copied once (the template). Each run starts from a fresh copy of the template and the clock
//! runs from the moment PostgreSQL may archive (spilo: the node answers `/primary` after
//! taking over the copy; the others: `archive_command` set and the configuration reloaded on a
//! running server) until no `.ready` file is left. pgBackRest's S3 repository speaks only
//! HTTPS, so it reaches s3s-fs through HAProxy terminating TLS (a hop the others do not pay;
//! its posix run has no such hop).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spilo_tests::node::{REPLICATION_PASSWORD, SUPERUSER_PASSWORD};
use spilo_tests::s3::{S3Kind, S3Server};
use spilo_tests::tools::HaProxy;
use spilo_tests::util::{chown_postgres, free_port, note, postgres_command, TempRoot};
use spilo_tests::{ClusterOpts, TestCluster};

pub mod restore;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const SEGMENT: u64 = 16 * 1024 * 1024;
const S3_PLUGIN_FILE: &str = "libspilo_storage_s3_plugin.so";
/// The rows of the archive table (also the names the ratios look up).
const RAW: &str = "raw parallel PUT (the limit)";
const SPILO_S3: &str = "spilo, S3";
const PGBR_S3: &str = "pgBackRest 2.45, S3 (TLS)";
const PGBR_S3_GZ: &str = "pgBackRest 2.45, S3 (TLS), default gz";
const BARMAN: &str = "barman-cloud-wal-archive, S3";
const SPILO_FS: &str = "spilo, directory";
const PGBR_POSIX: &str = "pgBackRest 2.45, posix";
/// The limit on one drain; a run past it is reported as failed.
const DRAIN_LIMIT: Duration = Duration::from_secs(1800);

/// Options of the archive benchmark.
pub struct Opts {
    /// WAL segments in the backlog.
    pub segments: usize,
    /// pgbench scale of the database (also what the base backups copy).
    pub scale: u32,
    /// zstd level for spilo and pgBackRest.
    pub level: i32,
    /// Parts/segments in flight for spilo, pgBackRest's process-max and the raw PUT.
    pub parallel: usize,
    /// spilo's read-ahead (segments uploaded before PostgreSQL asks).
    pub readahead: usize,
    /// spilo's `backup.archive.method`.
    pub method: &'static str,
    /// Only the rows the targets compare (spilo and pgBackRest at the same level, the raw
    /// PUT): no pgBackRest with gzip, no barman-cloud (two of the run's four minutes).
    pub quick: bool,
    /// Times the four compared drains run, alternately (the first with the base backups).
    pub rounds: usize,
}

/// What one tool's run gave: its archive figure, its base backup figures and the daemon's
/// peak RSS (kB, spilo only).
type Run = (Figure, Vec<Figure>, Option<u64>);

/// The figures of every run.
#[derive(Default)]
struct Results {
    archive: Vec<Figure>,
    base: Vec<Figure>,
    peak_rss: Option<u64>,
}

impl Results {
    fn record(&mut self, what: &str, r: Result<Run, String>) {
        match r {
            Ok((f, base, peak)) => {
                self.archive.push(f);
                self.base.extend(base);
                self.peak_rss = self.peak_rss.max(peak);
            }
            Err(e) => self.archive.push(failed(what, e)),
        }
    }

    /// MB/s of the row named `what`.
    fn mbps(&self, what: &str) -> Option<f64> {
        self.archive
            .iter()
            .find(|f| f.what == what)
            .and_then(Figure::mbps)
    }
}

/// spilo's rate over pgBackRest's in the rows named `num` and `den`.
fn ratio(r: &Results, num: &str, den: &str) -> Option<f64> {
    Some(r.mbps(num)? / r.mbps(den)?)
}

/// A further round's ratio, printed as it comes (a failed drain is printed and left out).
fn round_ratio(
    round: usize,
    store: &str,
    spilo: Result<Run, String>,
    pgbr: Result<Run, String>,
) -> Option<f64> {
    match (spilo, pgbr) {
        (Ok((a, ..)), Ok((b, ..))) => {
            let x = a.mbps()? / b.mbps()?;
            println!(
                "round {round}, {store}: spilo {:.2} s, pgBackRest {:.2} s: {x:.2}× ({}; {})",
                a.secs?, b.secs?, a.note, b.note
            );
            Some(x)
        }
        (a, b) => {
            for e in [a.err(), b.err()].into_iter().flatten() {
                println!("round {round}, {store}: failed: {e}");
            }
            None
        }
    }
}

/// The median of `v` (sorted): the middle value, or the mean of the two middle ones.
fn median(v: &[f64]) -> Option<f64> {
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// `median M× (min–max, n rounds)` of ratios.
fn spread(ratios: &[f64]) -> String {
    let mut v = ratios.to_vec();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last(), median(&v)) {
        (Some(lo), Some(hi), Some(m)) => {
            format!("median {m:.2}× ({lo:.2}–{hi:.2}×, {} rounds)", v.len())
        }
        _ => "no round completed".into(),
    }
}

/// Removes what a directory holds, keeping it (an S3 server's bucket).
fn empty_dir(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

/// One line of the result table.
struct Figure {
    what: String,
    secs: Option<f64>,
    bytes: u64,
    segments: usize,
    stored: Option<u64>,
    note: String,
}

impl Figure {
    fn mbps(&self) -> Option<f64> {
        self.secs
            .map(|s| self.bytes as f64 / 1_048_576.0 / s.max(1e-6))
    }
}

fn run_ok(mut cmd: Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn as_postgres(program: &str) -> Command {
    postgres_command(Path::new(program))
}

/// `.ready` files in a data directory's archive_status.
fn ready(data: &Path) -> Vec<String> {
    fs::read_dir(data.join("pg_wal/archive_status"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".ready").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn du(path: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(path) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    if to.exists() {
        fs::remove_dir_all(to).map_err(|e| format!("remove {}: {e}", to.display()))?;
    }
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(from).arg(to);
    run_ok(cp, "cp -a").map(|_| ())
}

fn mkdir_pg(path: &Path) -> PathBuf {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    chown_postgres(path);
    path.to_path_buf()
}

/// A field of /proc/PID/status in kB.
fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The daemon's resident set now (kB).
fn rss_kb(pid: i32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// User plus system CPU seconds of `pid` so far (threads included).
fn cpu_secs(pid: i32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz.max(1.0))
}

/// CPU seconds the whole machine has spent busy so far (every CPU's user, nice, system, irq
/// and softirq time in /proc/stat): the drain's cost to everything on the machine (the tool,
/// PostgreSQL's archiver, the S3 server, a TLS front), which on two shared cores bounds the
/// drain's time.
fn machine_busy_secs() -> Option<f64> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
    let busy = [0usize, 1, 2, 5, 6]
        .iter()
        .filter_map(|&i| f.get(i))
        .sum::<f64>();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(busy / hz.max(1.0))
}

/// Waits until `data` has no `.ready` file left, sampling `pid`'s RSS.
fn drain(data: &Path, t0: Instant, pid: Option<i32>) -> Result<Drained, String> {
    let busy0 = machine_busy_secs();
    let mut peak = None;
    let mut peak_anon = 0;
    let start = ready(data).len();
    let mut first = None;
    loop {
        if let Some(kb) = pid.and_then(rss_kb) {
            peak = Some(peak.unwrap_or(0).max(kb));
            peak_anon = peak_anon.max(pid.and_then(|p| status_kb(p, "RssAnon:")).unwrap_or(0));
        }
        let left = ready(data).len();
        if first.is_none() && left < start {
            first = Some(t0.elapsed().as_secs_f64());
        }
        if left == 0 {
            return Ok(Drained {
                secs: t0.elapsed().as_secs_f64(),
                first: first.unwrap_or(0.0),
                peak,
                peak_anon,
                machine_cpu: match (machine_busy_secs(), busy0) {
                    (Some(b), Some(a)) => format!(", machine CPU {:.1} s", b - a),
                    _ => String::new(),
                },
            });
        }
        if t0.elapsed() > DRAIN_LIMIT {
            return Err(format!(
                "{left} segments still waiting after {DRAIN_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How a drain went: seconds to the end, seconds to the first archived segment, peak RSS (kB).
struct Drained {
    secs: f64,
    first: f64,
    peak: Option<u64>,
    /// Of which anonymous memory (heap, stacks), the rest being mapped files (the binary).
    peak_anon: u64,
    /// ", machine CPU N s" (busy CPU seconds of the whole machine during the drain), or empty.
    machine_cpu: String,
}

/// The spilo config lines of a store.
fn storage_yaml(store: &str, o: &Opts) -> String {
    format!(
        "{store}backup:\n  schedule: ''\n  compression_level: {}\n  upload_concurrency: {}\n  archive:\n    timeout: 60\n    readahead: {}\n    method: {}\n",
        o.level, o.parallel, o.readahead, o.method
    )
}

fn s3_store(s3: &S3Server, bucket: &str, endpoint: &str) -> String {
    format!(
        "storage:\n  type: s3\n  bucket: {bucket}\n  endpoint: {endpoint}\n  region: us-east-1\n  access_key_id: {}\n  secret_access_key: {}\n",
        s3.access_key, s3.secret_key
    )
}

/// Writes the backlog with spilo's archiving failing (an endpoint nobody listens on), stops
/// the node and copies its data directory to `template`; the segment names.
fn make_template(o: &Opts, template: &Path) -> Result<Vec<String>, String> {
    let dead = free_port();
    let mut opts = ClusterOpts::named("bench-archive-tpl");
    opts.node.extra_yaml = storage_yaml(
        &format!(
            "storage:\n  type: s3\n  bucket: nowhere\n  endpoint: http://127.0.0.1:{dead}\n  region: us-east-1\n  access_key_id: k\n  secret_access_key: s\n  timeout: 2\n  max_attempts: 1\n"
        ),
        o,
    );
    opts.node.pg_parameters = vec![("max_wal_size".into(), "4GB".into())];
    let mut c = TestCluster::start(1, opts);
    let p = c.wait_for_primary(Duration::from_secs(120));
    let n = c.node(&p);
    let data = n.data_dir.clone();
    let pgbench = |args: &[&str]| -> Result<String, String> {
        let mut cmd = Command::new(format!("{PG_BIN}/pgbench"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &n.pg_port.to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .env("PGOPTIONS", "-c synchronous_commit=off");
        run_ok(cmd, "pgbench")
    };
    note(format!("archive bench: pgbench -i -s {}", o.scale));
    pgbench(&["-i", "-q", "-s", &o.scale.to_string()])?;
    while ready(&data).len() < o.segments {
        // As fast as pgbench writes WAL: the transactions (commits not waiting for the disk),
        // then the tables loaded again.
        pgbench(&["-n", "-c", "4", "-j", "2", "-T", "5"])?;
        pgbench(&["-i", "-q", "-s", &o.scale.to_string()])?;
        note(format!(
            "archive bench: {} of {} segments waiting",
            ready(&data).len(),
            o.segments
        ));
    }
    let node = c.node_mut(&p);
    node.kill_daemon(libc::SIGTERM);
    node.wait_daemon_exit(Duration::from_secs(60))
        .ok_or("the template node's daemon did not stop")?;
    if node.postmaster_alive() {
        node.stop_postgres_immediate();
    }
    copy_dir(&data, template)?;
    let _ = fs::remove_file(template.join("postmaster.pid"));
    let mut names = ready(template);
    names.sort();
    drop(c);
    Ok(names)
}

/// A spilo node taking over a copy of the template and archiving it to `store`; the drain and
/// then a base backup (`spiloctl backup create`) and `pg_basebackup` to local disk.
fn run_spilo(
    o: &Opts,
    what: &str,
    store_yaml: String,
    stored_at: &Path,
    template: &Path,
    work: &Path,
    backups: bool,
) -> Result<Run, String> {
    let mut opts = ClusterOpts::named("bench-archive");
    opts.node.extra_yaml = storage_yaml(&store_yaml, o);
    opts.node.pg_parameters = vec![("max_wal_size".into(), "4GB".into())];
    let mut c = TestCluster::start(0, opts.clone());
    let idx = c.add_node("node1", "node1", opts.node.clone());
    let data = c.nodes[idx].data_dir.clone();
    copy_dir(template, &data)?;
    let segments = ready(&data).len();
    c.nodes[idx].start();
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = c.nodes[idx].api_get("/primary") {
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            c.dump_logs(40);
            return Err(format!("{what}: the node did not become primary"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    let pid = c.nodes[idx].daemon_pid();
    let cpu0 = pid.and_then(cpu_secs);
    // SPILO_BENCH_PERF=DIR: `perf record -g` of the daemon during the drain, into DIR (of
    // every process on the machine with SPILO_BENCH_PERF_ALL=1).
    let perf = std::env::var_os("SPILO_BENCH_PERF").and_then(|dir| {
        let out = Path::new(&dir).join(format!("{}.perf.data", what.replace([',', ' '], "")));
        let target = if std::env::var_os("SPILO_BENCH_PERF_ALL").is_some_and(|v| v == "1") {
            vec!["-a".to_string()]
        } else {
            vec!["-p".to_string(), pid?.to_string()]
        };
        Command::new("perf")
            .args(["record", "-g", "-q", "-o"])
            .arg(out)
            .args(target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    });
    let drained = drain(&data, t0, pid);
    if let Some(mut p) = perf {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
        let _ = p.wait();
    }
    let mut cpu = match (pid.and_then(cpu_secs), cpu0) {
        (Some(b), Some(a)) => format!(", daemon CPU {:.1} s", b - a),
        _ => String::new(),
    };
    if let Ok(r) = spilo_tests::http::call(
        c.nodes[idx].api_port,
        "GET",
        "/metrics",
        None,
        None,
        Duration::from_secs(5),
    ) {
        let failures: Vec<String> = r
            .text()
            .lines()
            .filter(|l| l.starts_with("spilo_wal_archive_failures_total{") && !l.ends_with(" 0"))
            .map(|l| {
                l.trim_start_matches("spilo_wal_archive_failures_total")
                    .to_string()
            })
            .collect();
        if !failures.is_empty() {
            cpu.push_str(&format!(", failures {}", failures.join(" ")));
        }
        // Uploads that found their object already stored (work done twice).
        let dup: f64 = r
            .text()
            .lines()
            .filter(|l| l.starts_with("spilo_wal_archive_duplicates_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if dup > 0.0 {
            cpu.push_str(&format!(", {dup} uploads found their object stored"));
        }
    }
    if let Ok(d) = &drained {
        cpu.push_str(&d.machine_cpu);
    }
    if let Ok(Drained {
        first,
        peak: Some(kb),
        peak_anon,
        ..
    }) = &drained
    {
        cpu.push_str(&format!(
            ", first segment after {first:.2} s, peak RSS {:.1} MB ({:.1} MB anonymous)",
            *kb as f64 / 1024.0,
            *peak_anon as f64 / 1024.0
        ));
    }
    let (secs, peak) = match drained {
        Ok(d) => (d.secs, d.peak),
        Err(e) => {
            c.dump_logs(40);
            return Err(format!("{what}: {e}"));
        }
    };
    let fig = Figure {
        what: what.into(),
        secs: Some(secs),
        bytes: segments as u64 * SEGMENT,
        segments,
        stored: Some(du(stored_at)),
        note: format!(
            "zstd {}, {} in flight, read-ahead {}, {}{cpu}",
            o.level,
            o.parallel,
            o.readahead,
            // What PostgreSQL archived with (backup.archive.method).
            match c.nodes[idx].sql_value("SHOW archive_library") {
                Ok(Some(l)) if l == "spilo" => "archive module",
                Ok(_) => "wal-push",
                Err(_) => "archive method unknown",
            }
        ),
    };
    let mut base = Vec::new();
    if backups {
        let size: u64 = c.nodes[idx]
            .sql_value("SELECT sum(pg_database_size(oid)) FROM pg_database")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let t = Instant::now();
        let out = c.spiloctl(&["backup", "create"])?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!(
                "spiloctl backup create: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        base.push(Figure {
            what: format!("spilo backup create ({what})"),
            secs: Some(secs),
            bytes: size,
            segments: 0,
            stored: None,
            note: format!("pg_basebackup tar → zstd {} → store", o.level),
        });
        let dest = mkdir_pg(&work.join("pg_basebackup"));
        let t = Instant::now();
        let mut cmd = as_postgres(&format!("{PG_BIN}/pg_basebackup"));
        cmd.args(["-h", "127.0.0.1", "-p", &c.nodes[idx].pg_port.to_string()])
            .args(["-U", "replicator", "-X", "none", "-c", "fast", "-D"])
            .arg(dest.join("data"))
            .env("PGPASSWORD", REPLICATION_PASSWORD);
        run_ok(cmd, "pg_basebackup")?;
        base.push(Figure {
            what: "pg_basebackup to local disk".into(),
            secs: Some(t.elapsed().as_secs_f64()),
            bytes: size,
            segments: 0,
            stored: Some(du(&dest)),
            note: "plain format, no compression, -X none".into(),
        });
        let _ = fs::remove_dir_all(&dest);
    }
    drop(c);
    Ok((fig, base, peak))
}

/// A plain PostgreSQL on a copy of the template, archiving with `archive_command`.
struct PlainPg {
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    log: PathBuf,
}

impl PlainPg {
    fn start(template: &Path, work: &Path, env: &[(String, String)]) -> Result<PlainPg, String> {
        let data = work.join("data");
        copy_dir(template, &data)?;
        for f in ["standby.signal", "recovery.signal", "postmaster.pid"] {
            let _ = fs::remove_file(data.join(f));
        }
        fs::write(
            data.join("postgresql.auto.conf"),
            // The template is a spilo node's: its postgresql.conf names spilo's archive module,
            // which PostgreSQL would use in place of any archive_command.
            "archive_mode = 'on'\narchive_command = ''\narchive_library = ''\n",
        )
        .map_err(|e| e.to_string())?;
        chown_postgres(&data.join("postgresql.auto.conf"));
        let hba = work.join("hba.conf");
        fs::write(&hba, "local all all trust\nlocal replication all trust\n")
            .map_err(|e| e.to_string())?;
        let sock = mkdir_pg(&work.join("sock"));
        let port = free_port();
        let log = work.join("postgres.log");
        let mut cmd = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        cmd.args(["start", "-w", "-t", "120", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-c port={port} -c listen_addresses='' -c unix_socket_directories='{}' -c hba_file='{}'",
                sock.display(),
                hba.display()
            ));
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_ok(cmd, "pg_ctl start")?;
        Ok(PlainPg {
            data,
            sock,
            port,
            log,
        })
    }

    fn sql(&self, q: &str) -> Result<String, String> {
        let mut cmd = as_postgres(&format!("{PG_BIN}/psql"));
        cmd.arg("-h")
            .arg(&self.sock)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", q]);
        run_ok(cmd, "psql").map(|s| s.trim().to_string())
    }

    fn archive_with(&self, command: &str) -> Result<Instant, String> {
        self.sql(&format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            command.replace('\'', "''")
        ))?;
        let t0 = Instant::now();
        self.sql("SELECT pg_reload_conf()")?;
        Ok(t0)
    }

    fn stop(&self) {
        let mut cmd = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        cmd.args(["stop", "-m", "immediate", "-D"]).arg(&self.data);
        if let Err(e) = run_ok(cmd, "pg_ctl stop") {
            note(format!("archive bench: {e}"));
        }
    }
}

/// pgBackRest's configuration for `repo` (`s3` through the TLS port, or `posix`).
fn pgbackrest_conf(o: &Opts, work: &Path, pg: &PlainPg, repo: &str, zst: bool) -> PathBuf {
    let mut s = String::from("[global]\n");
    s.push_str(repo);
    for (k, v) in [
        ("archive-async", "y".to_string()),
        (
            "spool-path",
            mkdir_pg(&work.join("spool")).display().to_string(),
        ),
        ("process-max", o.parallel.max(4).to_string()),
        // Without zst, pgBackRest's own default (gz, level 6).
        ("compress-type", if zst { "zst" } else { "gz" }.into()),
        ("compress-level", if zst { o.level } else { 6 }.to_string()),
        (
            "log-path",
            mkdir_pg(&work.join("log")).display().to_string(),
        ),
        (
            "lock-path",
            mkdir_pg(&work.join("lock")).display().to_string(),
        ),
        ("log-level-console", "warn".into()),
        ("log-level-file", "info".into()),
        ("start-fast", "y".into()),
        ("repo1-retention-full", "1".into()),
    ] {
        s.push_str(&format!("{k}={v}\n"));
    }
    s.push_str(&format!(
        "[bench]\npg1-path={}\npg1-port={}\npg1-socket-path={}\n",
        pg.data.display(),
        pg.port,
        pg.sock.display()
    ));
    let path = work.join("pgbackrest.conf");
    fs::write(&path, s).expect("write pgbackrest.conf");
    chown_postgres(&path);
    path
}

/// `pgbackrest --config=CONF --stanza=bench ARGS` as the postgres user.
fn pgbackrest(conf: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = as_postgres("/usr/bin/pgbackrest");
    cmd.arg(format!("--config={}", conf.display()))
        .arg("--stanza=bench")
        .args(args);
    run_ok(cmd, &format!("pgbackrest {}", args.join(" ")))
}

/// pgBackRest archiving a copy of the template (and then its full backup).
fn run_pgbackrest(
    o: &Opts,
    what: &str,
    (template, work, stored_at): (&Path, &Path, &Path),
    repo: &str,
    (backup, zst): (bool, bool),
) -> Result<Run, String> {
    let pg = PlainPg::start(template, work, &[])?;
    let r = (|| {
        let conf = pgbackrest_conf(o, work, &pg, repo, zst);
        let compress = if zst {
            format!("zst {}", o.level)
        } else {
            "gz 6, its default".to_string()
        };
        let pgbr = |args: &[&str]| pgbackrest(&conf, args);
        pgbr(&["stanza-create"])?;
        let segments = ready(&pg.data).len();
        let t0 = pg.archive_with(&format!(
            "/usr/bin/pgbackrest --config={} --stanza=bench archive-push %p",
            conf.display()
        ))?;
        let d = drain(&pg.data, t0, None)?;
        let secs = d.secs;
        let fig = Figure {
            what: what.into(),
            secs: Some(secs),
            bytes: segments as u64 * SEGMENT,
            segments,
            stored: Some(du(stored_at)),
            note: format!(
                "archive-async, process-max {}, {compress}, first segment after {:.2} s{}",
                o.parallel.max(4),
                d.first,
                d.machine_cpu
            ),
        };
        let mut base = Vec::new();
        if backup {
            let size: u64 = pg
                .sql("SELECT sum(pg_database_size(oid)) FROM pg_database")?
                .parse()
                .unwrap_or(0);
            let t = Instant::now();
            pgbr(&["backup", "--type=full"])?;
            base.push(Figure {
                what: format!("pgBackRest backup --type=full ({what})"),
                secs: Some(t.elapsed().as_secs_f64()),
                bytes: size,
                segments: 0,
                stored: None,
                note: format!("process-max {}, {compress}", o.parallel.max(4)),
            });
        }
        Ok((fig, base, None))
    })();
    if r.is_err() {
        note(format!(
            "archive bench: postgres log:\n{}",
            spilo_tests::util::tail(&pg.log, 30)
        ));
    }
    pg.stop();
    r
}

/// barman-cloud-wal-archive (one process per segment, as PostgreSQL calls it).
fn run_barman(s3: &S3Server, template: &Path, work: &Path) -> Result<Run, String> {
    let stored_at = s3.dir().join("data/bench-barman");
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), s3.secret_key.clone()),
        ("AWS_DEFAULT_REGION".to_string(), "us-east-1".to_string()),
    ];
    let pg = PlainPg::start(template, work, &env)?;
    let r = (|| {
        let segments = ready(&pg.data).len();
        let t0 = pg.archive_with(&format!(
            "/usr/bin/barman-cloud-wal-archive --endpoint-url {} s3://bench-barman/wal bench %p",
            s3.endpoint()
        ))?;
        let d = drain(&pg.data, t0, None)?;
        let secs = d.secs;
        let fig = Figure {
            what: BARMAN.into(),
            secs: Some(secs),
            bytes: segments as u64 * SEGMENT,
            segments,
            stored: Some(du(&stored_at)),
            note: format!("one process per segment, no compression{}", d.machine_cpu),
        };
        Ok((fig, Vec::new(), None))
    })();
    if r.is_err() {
        note(format!(
            "archive bench: postgres log:\n{}",
            spilo_tests::util::tail(&pg.log, 30)
        ));
    }
    pg.stop();
    r
}

/// The raw parallel PUT of the template's segments (uncompressed) to the same server.
fn raw_put(o: &Opts, s3: &S3Server, template: &Path, names: &[String]) -> Result<Run, String> {
    use spilo_sdk::storage::{put_all, PutMode, Storage};
    let settings = serde_json::json!({
        "bucket": "bench-raw",
        "endpoint": s3.endpoint(),
        "region": "us-east-1",
        "access_key_id": s3.access_key,
        "secret_access_key": s3.secret_key,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let wal = template.join("pg_wal");
    let count = names.len();
    let names = names.to_vec();
    let parallel = o.parallel;
    let secs = rt.block_on(async move {
        let store: Arc<dyn Storage> = Arc::new(
            spilo_storage_s3::S3Storage::connect(&settings)
                .await
                .map_err(|e| e.to_string())?,
        );
        let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for name in names {
            let permit = sem
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let store = store.clone();
            let path = wal.join(&name);
            tasks.spawn(async move {
                let _permit = permit;
                let body = tokio::fs::read(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                put_all(
                    store.as_ref(),
                    &format!("raw/{name}"),
                    PutMode::Overwrite,
                    &body,
                )
                .await
                .map_err(|e| format!("put {name}: {e}"))
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| e.to_string())??;
        }
        Ok::<f64, String>(t0.elapsed().as_secs_f64())
    })?;
    let fig = Figure {
        what: RAW.into(),
        secs: Some(secs),
        bytes: count as u64 * SEGMENT,
        segments: count,
        stored: None,
        note: format!("{parallel} uncompressed segments in flight"),
    };
    Ok((fig, Vec::new(), None))
}

fn self_signed(dir: &Path) -> Result<PathBuf, String> {
    let key = dir.join("tls.key");
    let crt = dir.join("tls.crt");
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
    ])
    .args(["-subj", "/CN=127.0.0.1", "-keyout"])
    .arg(&key)
    .arg("-out")
    .arg(&crt);
    run_ok(cmd, "openssl req")?;
    let pem = dir.join("tls.pem");
    let mut both = fs::read(&crt).map_err(|e| e.to_string())?;
    both.extend(fs::read(&key).map_err(|e| e.to_string())?);
    fs::write(&pem, both).map_err(|e| e.to_string())?;
    Ok(pem)
}

/// HAProxy terminating TLS in front of `s3` (pgBackRest's S3 repository speaks only HTTPS);
/// the proxy and its port.
fn tls_front(work: &Path, s3: &S3Server) -> (HaProxy, u16) {
    let tls_port = free_port();
    let pem = self_signed(work).unwrap_or_else(|e| panic!("{e}"));
    let proxy = HaProxy::start(
        work,
        &format!(
            "global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\nfrontend s3tls\n  bind 127.0.0.1:{tls_port} ssl crt {}\n  default_backend s3\nbackend s3\n  server s3s 127.0.0.1:{}\n",
            pem.display(),
            s3.port
        ),
        None,
        &[tls_port],
    );
    (proxy, tls_port)
}

/// pgBackRest's repository in the `bench-pgbackrest` bucket of `s3`, through the TLS port.
fn pgbr_s3_repo(s3: &S3Server, tls_port: u16) -> String {
    format!(
        "repo1-type=s3\nrepo1-path=/pgbackrest\nrepo1-s3-bucket=bench-pgbackrest\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={tls_port}\nrepo1-s3-region=us-east-1\nrepo1-s3-key={}\nrepo1-s3-key-secret={}\nrepo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\n",
        s3.access_key, s3.secret_key
    )
}

fn print_table(title: &str, figs: &[Figure], base_of: Option<&str>) {
    println!("\n{title}");
    println!(
        "  {:<48} {:>6} {:>9} {:>9} {:>8} {:>8}  notes",
        "", "segs", "seconds", "MB/s", "segs/s", "vs ref"
    );
    let reference = base_of.and_then(|r| figs.iter().find(|f| f.what.starts_with(r)));
    for f in figs {
        let vs = match (reference.and_then(Figure::mbps), f.mbps()) {
            (Some(r), Some(m)) if r > 0.0 => format!("{:.2}×", m / r),
            _ => "-".into(),
        };
        let segs_per_s = match f.secs {
            Some(s) if f.segments > 0 => format!("{:.1}", f.segments as f64 / s.max(1e-6)),
            _ => "-".into(),
        };
        let stored = f
            .stored
            .map(|b| format!(", {:.0} MB on disk", b as f64 / 1_048_576.0))
            .unwrap_or_default();
        println!(
            "  {:<48} {:>6} {:>9} {:>9} {:>8} {:>8}  {}{stored}",
            f.what,
            if f.segments > 0 {
                f.segments.to_string()
            } else {
                "-".into()
            },
            f.secs.map(|s| format!("{s:.2}")).unwrap_or("failed".into()),
            f.mbps().map(|m| format!("{m:.1}")).unwrap_or("-".into()),
            segs_per_s,
            vs,
            f.note
        );
    }
}

fn failed(what: &str, e: String) -> Figure {
    note(format!("archive bench: {what} failed: {e}"));
    Figure {
        what: what.into(),
        secs: None,
        bytes: 0,
        segments: 0,
        stored: None,
        note: format!("failed: {}", e.chars().take(120).collect::<String>()),
    }
}

/// Runs the whole archive benchmark and prints its tables.
pub fn run(o: &Opts) {
    let root = TempRoot::new("spilo-bench-archive-");
    let work = root.path();
    spilo_tests::bins::plugin_lib(S3_PLUGIN_FILE);
    let template = work.join("template");
    let names = match make_template(o, &template) {
        Ok(n) => n,
        Err(e) => {
            println!("archive benchmark: the backlog could not be written: {e}");
            return;
        }
    };
    let wal_mb = names.len() as u64 * SEGMENT / 1_048_576;
    println!(
        "\nWAL archive benchmark: {} segments ({wal_mb} MB) of pgbench WAL (scale {}), the same backlog for every tool",
        names.len(),
        o.scale
    );
    let mut s3 = S3Server::start(S3Kind::S3sFs);
    for b in [
        "bench-spilo",
        "bench-pgbackrest",
        "bench-barman",
        "bench-raw",
    ] {
        fs::create_dir_all(s3.dir().join("data").join(b)).expect("bucket dir");
    }
    let (_haproxy, tls_port) = tls_front(work, &s3);
    let mut r = Results::default();
    r.record(RAW, raw_put(o, &s3, &template, &names));
    let _ = fs::remove_dir_all(s3.dir().join("data/bench-raw/raw"));

    let pgbr_s3 = pgbr_s3_repo(&s3, tls_port);
    // One round of the two compared S3 drains, into emptied buckets (the first round also
    // takes the base backups).
    let s3_pair = |backups: bool| {
        let spilo_at = s3.dir().join("data/bench-spilo");
        let pgbr_at = s3.dir().join("data/bench-pgbackrest");
        empty_dir(&spilo_at);
        empty_dir(&pgbr_at);
        let spilo_s3 = s3_store(&s3, "bench-spilo", &s3.endpoint());
        let a = run_spilo(o, SPILO_S3, spilo_s3, &spilo_at, &template, work, backups);
        let w = mkdir_pg(&work.join("pgbr-s3"));
        let b = run_pgbackrest(
            o,
            PGBR_S3,
            (&template, &w, &pgbr_at),
            &pgbr_s3,
            (backups, true),
        );
        let _ = fs::remove_dir_all(&w);
        (a, b)
    };
    let (a, b) = s3_pair(true);
    r.record(SPILO_S3, a);
    r.record(PGBR_S3, b);
    if !o.quick {
        // pgBackRest as it comes (gz), in a repository of its own in the same bucket.
        let w = mkdir_pg(&work.join("pgbr-s3-gz"));
        let at = s3.dir().join("data/bench-pgbackrest/pgbackrest-gz");
        let gz_repo = pgbr_s3.replace("repo1-path=/pgbackrest\n", "repo1-path=/pgbackrest-gz\n");
        r.record(
            PGBR_S3_GZ,
            run_pgbackrest(
                o,
                PGBR_S3_GZ,
                (&template, &w, &at),
                &gz_repo,
                (false, false),
            ),
        );
        let _ = fs::remove_dir_all(&w);
        let w = mkdir_pg(&work.join("barman"));
        r.record(BARMAN, run_barman(&s3, &template, &w));
        let _ = fs::remove_dir_all(&w);
    }
    let mut s3_ratios: Vec<f64> = ratio(&r, SPILO_S3, PGBR_S3).into_iter().collect();
    for round in 2..=o.rounds {
        let (a, b) = s3_pair(false);
        s3_ratios.extend(round_ratio(round, "S3", a, b));
    }
    drop(_haproxy);
    s3.stop();

    // The same disk: spilo's directory store against pgBackRest's posix repository.
    let posix_pair = || {
        let fs_store = mkdir_pg(&work.join("spilo-fs-store"));
        let fs_yaml = format!("storage:\n  type: fs\n  path: {}\n", fs_store.display());
        let a = run_spilo(o, SPILO_FS, fs_yaml, &fs_store, &template, work, false);
        let _ = fs::remove_dir_all(&fs_store);
        let w = mkdir_pg(&work.join("pgbr-posix"));
        let repo = mkdir_pg(&w.join("repo"));
        let posix = format!("repo1-type=posix\nrepo1-path={}\n", repo.display());
        let b = run_pgbackrest(o, PGBR_POSIX, (&template, &w, &repo), &posix, (false, true));
        let _ = fs::remove_dir_all(&w);
        (a, b)
    };
    let (a, b) = posix_pair();
    r.record(SPILO_FS, a);
    r.record(PGBR_POSIX, b);
    let mut fs_ratios: Vec<f64> = ratio(&r, SPILO_FS, PGBR_POSIX).into_iter().collect();
    for round in 2..=o.rounds {
        let (a, b) = posix_pair();
        fs_ratios.extend(round_ratio(round, "directory", a, b));
    }

    print_table(
        &format!(
            "WAL archive throughput (MB/s of WAL, {wal_mb} MB backlog; 'vs ref' against the raw PUT)"
        ),
        &r.archive,
        Some(RAW),
    );
    let mut verdicts = Vec::new();
    // With several rounds the 2× targets are judged on the median of the rounds' ratios (a
    // single drain moves with the machine's speed at that moment), the first round's ratio
    // being one of them.
    let rounds = |ratios| (o.rounds > 1).then_some(ratios);
    for (label, num, den, percent, over_rounds) in [
        (
            "spilo vs pgBackRest, S3 (target ≥ 2×)",
            SPILO_S3,
            PGBR_S3,
            false,
            rounds(&s3_ratios),
        ),
        (
            "spilo vs pgBackRest with its default compression, S3",
            SPILO_S3,
            PGBR_S3_GZ,
            false,
            None,
        ),
        (
            "spilo vs pgBackRest, same disk (target ≥ 2×)",
            SPILO_FS,
            PGBR_POSIX,
            false,
            rounds(&fs_ratios),
        ),
        (
            "spilo vs the raw PUT limit (target ≥ 70 %)",
            SPILO_S3,
            RAW,
            true,
            None,
        ),
    ] {
        if let Some(ratios) = over_rounds {
            verdicts.push((label, spread(ratios)));
            continue;
        }
        if let (Some(a), Some(b)) = (r.mbps(num), r.mbps(den)) {
            let v = if percent {
                format!("{:.0} %", 100.0 * a / b)
            } else {
                format!("{:.2}×", a / b)
            };
            verdicts.push((label, v));
        }
    }
    if let Some(kb) = r.peak_rss {
        verdicts.push((
            "spilo daemon peak RSS while archiving (target ≤ 64 MB)",
            format!("{:.1} MB", kb as f64 / 1024.0),
        ));
    }
    print_table(
        &format!(
            "Base backup throughput (MB/s of database, scale {}; 'vs ref' against pgBackRest)",
            o.scale
        ),
        &r.base,
        Some("pgBackRest backup"),
    );
    println!();
    for (k, v) in verdicts {
        println!("  {k}: {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.5]), Some(1.5));
        assert_eq!(median(&[1.0, 2.0, 4.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 3.0, 10.0]), Some(2.5));
        assert_eq!(
            spread(&[2.5, 1.84, 2.15, 2.25, 1.85]),
            "median 2.15× (1.84–2.50×, 5 rounds)"
        );
        assert_eq!(spread(&[]), "no round completed");
    }
}
