//! The front-door benchmark (`--only lb`): one 3-node cluster, reached three ways — directly
//! (the primary's port), through spilo's built-in proxy (`spilo proxy`, on its own) and through
//! HAProxy with `examples/haproxy.cfg` — and measured the same way:
//! - pgbench throughput and mean latency, select-only (`-S`) and TPC-B, each front in turn,
//!   with every process on every CPU and then (2 CPUs or more) with PostgreSQL and pgbench on
//!   CPU 0 and the fronts on CPU 1;
//! - switchovers (`POST /switchover`): request → the candidate out of recovery (read directly),
//!   and promotion → the first write through each front acknowledged by the new primary;
//! - a SIGKILL of the primary's daemon and postmaster → the same, per front.
//!
//! Options: `--lb-secs N` (pgbench duration per run, default 15), `--lb-clients N` (default 8),
//! `--lb-scale N` (default 10), `--lb-rounds N` (switchovers, default 5).

use std::collections::BTreeMap;
use std::fs;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use spilo_tests::bins::bins;
use spilo_tests::pg::{self, PgTarget};
use spilo_tests::util::free_port;
use spilo_tests::{note, ClusterOpts, TestCluster, SUPERUSER_PASSWORD};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// What to run.
pub struct Opts {
    /// Seconds per pgbench run.
    pub secs: u64,
    /// pgbench clients.
    pub clients: u32,
    /// pgbench scale.
    pub scale: u32,
    /// Switchover rounds.
    pub rounds: usize,
    /// `ttl` and `loop_wait` of the cluster.
    pub ttl: u64,
    /// `loop_wait`.
    pub loop_wait: u64,
}

fn target(port: u16) -> PgTarget {
    pg::superuser(port)
}

fn where_am_i(port: u16, timeout: Duration) -> Result<(bool, u16), String> {
    pg::where_am_i(port, timeout)
}

fn wait_reaches(port: u16, want: u16, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if matches!(where_am_i(port, Duration::from_secs(1)), Ok((false, p)) if p == want) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `pid` and its descendants (from `/proc`'s parent links).
fn with_descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // After the command's closing parenthesis: state, then the parent's pid.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    all
}

/// Pins every thread of `pid` and of its descendants to `cpus` (a taskset list: `0`, `0-1`).
fn pin(pid: i32, cpus: &str) -> Result<(), String> {
    for p in with_descendants(pid) {
        let out = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &p.to_string()])
            .output()
            .map_err(|e| format!("taskset: {e}"))?;
        // A process that ended since the listing is no error.
        if !out.status.success() && std::path::Path::new(&format!("/proc/{p}")).exists() {
            return Err(format!(
                "taskset -a -p -c {cpus} {p}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// The CPU ids of a list such as `0-3,6` (empty for anything else).
fn cpu_list(list: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
            (Ok(a), Ok(b)) if a <= b && b - a < 4096 => ids.extend(a..=b),
            _ => return Vec::new(),
        }
    }
    ids
}

/// pgbench through `port`: (tps, mean latency ms); on `cpu` when given.
fn pgbench(port: u16, args: &[&str], cpu: Option<&str>) -> Result<(f64, f64), String> {
    let mut cmd = match cpu {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", c, &format!("{PG_BIN}/pgbench")]);
            t
        }
        None => Command::new(format!("{PG_BIN}/pgbench")),
    };
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", SUPERUSER_PASSWORD);
    let out = cmd.output().map_err(|e| format!("pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "pgbench {args:?} on {port}: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let num = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let tps = num("tps = ").ok_or_else(|| format!("no tps in {text}"))?;
    let lat = num("latency average = ").ok_or_else(|| format!("no latency in {text}"))?;
    Ok((tps, lat))
}

/// Probes each front with a new connection and an INSERT every few milliseconds until one is
/// acknowledged by the server on `want`; when, per front.
fn probe_fronts(
    fronts: &[(&'static str, u16)],
    want: u16,
    start: Instant,
    limit: Duration,
) -> Vec<thread::JoinHandle<(&'static str, Option<Duration>)>> {
    fronts
        .iter()
        .map(|&(name, port)| {
            thread::spawn(move || {
                while start.elapsed() < limit {
                    let r = pg::simple_query(
                        &target(port),
                        "INSERT INTO bench_lb (at) VALUES (now()) RETURNING inet_server_port()",
                        Duration::from_millis(1000),
                    );
                    if let Ok(rows) = r {
                        let p = rows
                            .first()
                            .and_then(|r| r.first().cloned().flatten())
                            .and_then(|p| p.parse::<u16>().ok());
                        if p == Some(want) {
                            return (name, Some(start.elapsed()));
                        }
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                (name, None)
            })
        })
        .collect()
}

/// When the server on `port` leaves recovery (read directly).
fn promoted_at(port: u16, start: Instant, limit: Duration) -> Option<Duration> {
    while start.elapsed() < limit {
        if matches!(where_am_i(port, Duration::from_millis(500)), Ok((false, _))) {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(5));
    }
    None
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "-".into())
}

fn med(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "min {:.0} / median {:.0} / max {:.0} ms",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

/// Runs the benchmark and prints its figures.
pub fn run(o: &Opts) {
    if let Err(e) = run_inner(o) {
        eprintln!("lb bench: {e}");
    }
}

fn run_inner(o: &Opts) -> Result<(), String> {
    let mut c = TestCluster::start(
        3,
        ClusterOpts::named("bench-lb").timing(o.ttl, o.loop_wait, 1),
    );
    let p = c.wait_for_primary(Duration::from_secs(180));
    c.wait_for_replicas_streaming(Duration::from_secs(120));
    let port_of: BTreeMap<String, u16> = c
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.pg_port))
        .collect();

    // spilo's proxy, on its own, with a copy of node1's file.
    let (prw, pro) = (free_port(), free_port());
    let base = fs::read_to_string(&c.node("node1").config_path).map_err(|e| e.to_string())?;
    let yml = c.root().join("proxy.yml");
    fs::write(
        &yml,
        format!(
            "{base}\nload_balancers:\n- type: proxy\n  listen_rw: 127.0.0.1:{prw}\n  listen_ro: 127.0.0.1:{pro}\n  hold: 30\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let log = fs::File::create(c.root().join("proxy.log")).map_err(|e| e.to_string())?;
    let proxy = Killed(
        Command::new(&bins().spilo)
            .arg("proxy")
            .arg(&yml)
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("spilo proxy: {e}"))?,
    );
    // HAProxy with the example configuration.
    let (haproxy, hrw, _hro) = spilo_tests::tools::haproxy_for(&c);
    for port in [prw, hrw] {
        if !wait_reaches(port, port_of[&p], Duration::from_secs(60)) {
            return Err(format!("front door {port} never reached the primary"));
        }
    }
    let direct = port_of[&p];
    let mut cmd = Command::new(format!("{PG_BIN}/pgbench"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &direct.to_string(),
        "-U",
        "postgres",
    ])
    .args(["-i", "-q", "-s", &o.scale.to_string(), "postgres"])
    .env("PGPASSWORD", SUPERUSER_PASSWORD);
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    pg::simple_query(
        &target(direct),
        "CREATE TABLE bench_lb (at timestamptz)",
        Duration::from_secs(10),
    )?;

    // Throughput and latency, each front in turn: first as the machine comes (every process on
    // every CPU), then with PostgreSQL and pgbench on one CPU and the fronts on another of their
    // own, as a front on its own host or cores runs.
    let secs = o.secs.to_string();
    let clients = o.clients.to_string();
    let proxy_pid = i32::try_from(proxy.0.id()).map_err(|e| e.to_string())?;
    let haproxy_pid = haproxy
        .pid()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or("HAProxy is not running")?;
    let postmaster = c
        .node(&p)
        .postmaster_pid()
        .ok_or("the primary's postmaster is not running")?;
    // The CPUs this process may use (a container or cpuset may allow fewer than the machine
    // has): PostgreSQL and pgbench go on the first, the fronts on the second.
    let allowed = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    let cpu_ids = cpu_list(&allowed);
    let pinned = match cpu_ids.as_slice() {
        [a, b, ..] => Some((a.to_string(), b.to_string())),
        _ => None,
    };
    let mut layouts: Vec<(&str, Option<(String, String)>)> = vec![("shared", None)];
    if pinned.is_some() {
        layouts.push(("pinned", pinned));
    }
    for (layout, pins) in layouts {
        println!();
        match &pins {
            None => println!(
                "front doors, every process on every CPU: pgbench, {} clients, {} s each, scale {} (tps / mean latency)",
                o.clients, o.secs, o.scale
            ),
            Some((db, front)) => println!(
                "front doors, PostgreSQL and pgbench on CPU {db}, the proxy and HAProxy on CPU {front}: pgbench, {} clients, {} s each, scale {}",
                o.clients, o.secs, o.scale
            ),
        }
        let measured = (|| -> Result<(), String> {
            if let Some((db, front)) = &pins {
                pin(postmaster, db)?;
                pin(proxy_pid, front)?;
                pin(haproxy_pid, front)?;
            }
            println!("| front | select-only tps | latency ms | TPC-B tps | latency ms |");
            println!("|---|---|---|---|---|");
            let mut select_tps = BTreeMap::new();
            let on = pins.as_ref().map(|(db, _)| db.as_str());
            for (name, port) in [("direct", direct), ("spilo proxy", prw), ("HAProxy", hrw)] {
                let s = pgbench(
                    port,
                    &["-n", "-S", "-c", &clients, "-j", "2", "-T", &secs],
                    on,
                )?;
                let t = pgbench(port, &["-n", "-c", &clients, "-j", "2", "-T", &secs], on)?;
                select_tps.insert(name, s.0);
                println!(
                    "| {name} | {:.0} | {:.2} | {:.0} | {:.2} |",
                    s.0, s.1, t.0, t.1
                );
            }
            for front in ["spilo proxy", "HAProxy"] {
                println!(
                    "{front} ({layout}): select-only throughput {:.1} % of direct",
                    100.0 * select_tps[front] / select_tps["direct"]
                );
            }
            Ok(())
        })();
        // Whatever happened, every process may use every allowed CPU again.
        if pins.is_some() {
            for pid in [postmaster, proxy_pid, haproxy_pid] {
                if let Err(e) = pin(pid, &allowed) {
                    note(format!("could not unpin {pid}: {e}"));
                }
            }
        }
        measured?;
    }

    // Switchovers.
    let fronts = [("spilo proxy", prw), ("HAProxy", hrw)];
    let mut promoted = Vec::new();
    let mut after: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut current = p.clone();
    for round in 0..o.rounds {
        let cand = c.others(&current)[0].clone();
        let want = port_of[&cand];
        let start = Instant::now();
        let limit = Duration::from_secs(60);
        let probes = probe_fronts(&fronts, want, start, limit);
        let promo = thread::spawn(move || promoted_at(want, start, limit));
        let r = c
            .node(&current)
            .api(
                "POST",
                "/switchover",
                Some(&json!({"leader": current, "candidate": cand}).to_string()),
            )
            .map_err(|e| format!("switchover: {e}"))?;
        if r.status != 200 {
            return Err(format!("switchover answered {}", r.status));
        }
        let t_promo = promo.join().map_err(|_| "probe panicked")?;
        let mut line = format!(
            "switchover {}: request → promoted {} ms",
            round + 1,
            ms(t_promo)
        );
        for h in probes {
            let (name, t) = h.join().map_err(|_| "probe panicked")?;
            let since = match (t, t_promo) {
                (Some(t), Some(p)) => Some(t.saturating_sub(p)),
                _ => None,
            };
            if let Some(d) = since {
                after
                    .entry(name)
                    .or_default()
                    .push(d.as_secs_f64() * 1000.0);
            }
            line.push_str(&format!(
                "; {name}: first write {} ms after the request, {} ms after the promotion",
                ms(t),
                ms(since)
            ));
        }
        if let Some(t) = t_promo {
            promoted.push(t.as_secs_f64() * 1000.0);
        }
        println!("{line}");
        current = cand;
        c.wait_for_replicas_streaming(Duration::from_secs(180));
    }
    println!("switchover request → promoted: {}", med(promoted));
    for (name, v) in &after {
        println!("promotion → first write through {name}: {}", med(v.clone()));
    }

    // A failover: SIGKILL of the primary's daemon and postmaster.
    let victim = current.clone();
    let start = Instant::now();
    let limit = Duration::from_secs(90);
    let candidates: Vec<u16> = c.others(&victim).iter().map(|n| port_of[n]).collect();
    let results = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Which replica wins is not known beforehand: probe for any server but the victim.
    let fronts_any: Vec<_> = fronts
        .iter()
        .map(|&(name, port)| {
            let (results, stop, cands) = (results.clone(), stop.clone(), candidates.clone());
            thread::spawn(move || {
                while start.elapsed() < limit && !stop.load(Ordering::SeqCst) {
                    if let Ok(rows) = pg::simple_query(
                        &target(port),
                        "INSERT INTO bench_lb (at) VALUES (now()) RETURNING inet_server_port()",
                        Duration::from_millis(1000),
                    ) {
                        let p = rows
                            .first()
                            .and_then(|r| r.first().cloned().flatten())
                            .and_then(|p| p.parse::<u16>().ok());
                        if p.is_some_and(|p| cands.contains(&p)) {
                            results
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((name, start.elapsed()));
                            return;
                        }
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    c.node_mut(&victim).kill_daemon_now();
    c.node(&victim).kill_postmaster(libc::SIGKILL);
    let next = c.wait_for_primary_except(&[&victim], limit);
    let t_new = start.elapsed();
    for h in fronts_any {
        let _ = h.join();
    }
    stop.store(true, Ordering::SeqCst);
    let mut line = format!(
        "failover (SIGKILL of {victim}'s daemon and postmaster, ttl {}): {next} primary after {:.0} ms",
        o.ttl,
        t_new.as_secs_f64() * 1000.0
    );
    for (name, t) in results.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        line.push_str(&format!(
            "; first write through {name} after {:.0} ms",
            t.as_secs_f64() * 1000.0
        ));
    }
    println!("{line}");
    note("lb bench: done".to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cpu_list;

    #[test]
    fn cpu_lists_read_as_the_kernel_writes_them() {
        assert_eq!(cpu_list("0-1"), [0, 1]);
        assert_eq!(cpu_list("0-2,5,7-8"), [0, 1, 2, 5, 7, 8]);
        assert_eq!(cpu_list("3"), [3]);
        assert!(cpu_list("").is_empty());
        assert!(cpu_list("2-1").is_empty());
        assert!(cpu_list("x").is_empty());
    }
}
