//! `spilo-bench`: starts etcd and a 3-node spilo cluster and prints figures (not a test):
//! unplanned failover over N rounds, SIGTERM hand-over, daemon RSS, idle CPU per daemon and
//! `wrk` requests/s on `GET /primary`; then DCS requests per daemon on etcd and ZooKeeper
//! (`dcs_load`).
//!
//! Run it through `scripts/bench.sh` (release build; `SPILO_BIN_DIR` points the harness at it).
//! Options: `--rounds N` (default 5), `--ttl S` (default 5, the lowest the config accepts),
//! `--loop-wait S` (default 2), `--idle-secs S` (default 20), `--wrk-secs S` (default 10),
//! `--switchover-rounds N` (default 10), `--no-patroni` (skip the Patroni side-by-side run),
//! `--dcs-load-secs N` (default 30; 0 skips it), `--dcs-load-backend etcd|zookeeper|both`
//! (default both), `--only all|ha|dcs-load|archive|restore|lb` (default all).
//!
//! The front-door part (`lb.rs`): `--lb-secs N`, `--lb-clients N`, `--lb-scale N`,
//! `--lb-rounds N`.
//!
//! The archive part (`archive.rs`): `--archive-segments N` (default 128 WAL segments),
//! `--archive-scale N` (pgbench scale, default 50), `--archive-level N` (zstd, default 3),
//! `--archive-parallel N` (default 4, spilo's own default), `--archive-readahead N` (default 8,
//! spilo's own default), `--archive-method auto|module|command` (how PostgreSQL hands WAL to
//! spilo: `backup.archive.method`, default auto), `--archive-quick` (only the rows the targets
//! compare: no pgBackRest with gzip, no barman-cloud), `--archive-rounds N` (default 5: the
//! spilo and pgBackRest drains, S3 and directory, N times alternately; with more than one the
//! 2× targets are judged on the median of the rounds' ratios, a single drain moving with the
//! machine's speed at that moment). The restore part (`archive/restore.rs`) uses `--archive-scale`,
//! `--archive-level` and `--archive-parallel` too.

use std::process::Command;
use std::time::{Duration, Instant};

use spilo_tests::{ClusterOpts, DcsKind, NodeOpts, TestCluster};

mod archive;
mod dcs_counters;
mod dcs_keys;
mod dcs_load;
mod lb;
mod switchover;

struct Opts {
    rounds: usize,
    ttl: u64,
    loop_wait: u64,
    idle_secs: u64,
    wrk_secs: u64,
    switchover_rounds: usize,
    patroni: bool,
    dcs_load_secs: u64,
    dcs_load_backends: Vec<DcsKind>,
    /// Which parts run: (HA, DCS load, archive, restore, front doors).
    parts: (bool, bool, bool, bool, bool),
    archive: archive::Opts,
    lb: lb::Opts,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        rounds: 5,
        ttl: 5,
        loop_wait: 2,
        idle_secs: 20,
        wrk_secs: 10,
        switchover_rounds: 10,
        patroni: true,
        dcs_load_secs: 30,
        dcs_load_backends: vec![DcsKind::Etcd, DcsKind::ZooKeeper],
        parts: (true, true, true, true, true),
        archive: archive::Opts {
            segments: 128,
            scale: 50,
            level: 3,
            parallel: 4,
            readahead: 8,
            method: "auto",
            quick: false,
            rounds: 5,
        },
        lb: lb::Opts {
            secs: 15,
            clients: 8,
            scale: 10,
            rounds: 5,
            ttl: 5,
            loop_wait: 2,
        },
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        // Flags without a value first, so that one may come last.
        match args[i].as_str() {
            "--bench" => {
                i += 1;
                continue;
            }
            "--no-patroni" => {
                o.patroni = false;
                i += 1;
                continue;
            }
            "--archive-quick" => {
                o.archive.quick = true;
                i += 1;
                continue;
            }
            _ => {}
        }
        let val = args
            .get(i + 1)
            .ok_or_else(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--only" => {
                o.parts = match val.as_str() {
                    "all" => (true, true, true, true, true),
                    "ha" => (true, false, false, false, false),
                    "dcs-load" => (false, true, false, false, false),
                    "archive" => (false, false, true, false, false),
                    "restore" => (false, false, false, true, false),
                    "lb" => (false, false, false, false, true),
                    other => {
                        return Err(format!(
                            "--only: '{other}' is not all, ha, dcs-load, archive, restore or lb"
                        ))
                    }
                };
                i += 2;
                continue;
            }
            "--archive-method" => {
                o.archive.method = match val.as_str() {
                    "auto" => "auto",
                    "module" => "module",
                    "command" => "command",
                    other => {
                        return Err(format!(
                            "--archive-method: '{other}' is not auto, module or command"
                        ))
                    }
                };
                i += 2;
                continue;
            }
            "--dcs-load-backend" => {
                o.dcs_load_backends = match val.as_str() {
                    "etcd" => vec![DcsKind::Etcd],
                    "zookeeper" => vec![DcsKind::ZooKeeper],
                    "both" => vec![DcsKind::Etcd, DcsKind::ZooKeeper],
                    other => {
                        return Err(format!(
                            "--dcs-load-backend: '{other}' is not etcd, zookeeper or both"
                        ))
                    }
                };
                i += 2;
                continue;
            }
            _ => {}
        }
        let num: u64 = val
            .parse()
            .map_err(|_| format!("{}: '{val}' is not a number", args[i]))?;
        match args[i].as_str() {
            "--rounds" => o.rounds = num as usize,
            "--ttl" => o.ttl = num,
            "--loop-wait" => o.loop_wait = num,
            "--idle-secs" => o.idle_secs = num,
            "--wrk-secs" => o.wrk_secs = num,
            "--switchover-rounds" => o.switchover_rounds = num as usize,
            "--dcs-load-secs" => o.dcs_load_secs = num,
            "--archive-segments" if (8..=4096).contains(&num) => o.archive.segments = num as usize,
            "--archive-scale" if (1..=10_000).contains(&num) => o.archive.scale = num as u32,
            "--archive-level" if (1..=19).contains(&num) => o.archive.level = num as i32,
            "--archive-parallel" if (1..=64).contains(&num) => o.archive.parallel = num as usize,
            "--archive-readahead" if num <= 256 => o.archive.readahead = num as usize,
            "--archive-rounds" if (1..=20).contains(&num) => o.archive.rounds = num as usize,
            "--lb-secs" if (1..=3600).contains(&num) => o.lb.secs = num,
            "--lb-clients" if (1..=500).contains(&num) => o.lb.clients = num as u32,
            "--lb-scale" if (1..=10_000).contains(&num) => o.lb.scale = num as u32,
            "--lb-rounds" if (1..=100).contains(&num) => o.lb.rounds = num as usize,
            a @ ("--lb-secs" | "--lb-clients" | "--lb-scale" | "--lb-rounds") => {
                return Err(format!("{a}: {num} is out of range"))
            }
            a @ ("--archive-segments"
            | "--archive-scale"
            | "--archive-level"
            | "--archive-parallel"
            | "--archive-readahead"
            | "--archive-rounds") => return Err(format!("{a}: {num} is out of range")),
            other => return Err(format!("unknown option {other}")),
        }
        i += 2;
    }
    Ok(o)
}

/// The first node (other than `exclude`) to acknowledge an INSERT, and when.
fn first_writer(
    c: &TestCluster,
    exclude: &str,
    start: Instant,
    limit: Duration,
) -> Option<(String, Duration)> {
    while start.elapsed() < limit {
        for n in c.nodes.iter().filter(|n| n.name != exclude) {
            if n.write_value_within("bench_probe", "x", Duration::from_millis(500))
                .is_ok()
            {
                return Some((n.name.clone(), start.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub(crate) fn rss_kb(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn cpu_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied()
}

/// Switchover, spilo then Patroni, on the same YAML (ttl 20: Patroni's floor).
fn switchover_section(o: &Opts) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let opts = ClusterOpts::named("benchsw").timing(20, 2, 3);
    let c = TestCluster::start(3, opts.clone());
    c.wait_for_replicas_streaming(Duration::from_secs(120));
    let eps: Vec<switchover::Endpoint> = c
        .nodes
        .iter()
        .map(|n| switchover::Endpoint {
            name: n.name.clone(),
            api: n.api_port,
            pg: n.pg_port,
        })
        .collect();
    let spilo = switchover::rounds(&eps, o.switchover_rounds, "spilo");
    drop(c);
    let (mut patroni, mut patroni_rss) = (Vec::new(), Vec::new());
    if o.patroni {
        let node_opts: NodeOpts = opts.node.clone();
        if let Some(p) = switchover::PatroniCluster::start(3, node_opts) {
            patroni = switchover::rounds(&p.nodes, o.switchover_rounds, "patroni");
            patroni_rss = p.rss_mb();
        }
    }
    (spilo, patroni, patroni_rss)
}

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "no data".into();
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    format!(
        "min {:.2} s, median {:.2} s, mean {:.2} s, max {:.2} s ({} rounds)",
        s[0],
        s[s.len() / 2],
        mean,
        s[s.len() - 1],
        s.len()
    )
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("spilo-bench: {e}");
            std::process::exit(2);
        }
    };
    let retry = ((o.ttl.saturating_sub(o.loop_wait)) / 2).max(1);
    if o.parts.0 {
        classic(&o, retry);
    }
    if o.parts.1 && o.dcs_load_secs > 0 {
        dcs_load_section(&o, retry);
    }
    if o.parts.2 {
        archive::run(&o.archive);
    }
    if o.parts.4 {
        lb::run(&lb::Opts {
            ttl: o.ttl,
            loop_wait: o.loop_wait,
            ..o.lb
        });
    }
    if o.parts.3 {
        archive::restore::run(&o.archive);
    }
}

/// DCS requests per daemon in steady state, on each backend asked for.
fn dcs_load_section(o: &Opts, retry: u64) {
    let lo = dcs_load::LoadOpts {
        secs: o.dcs_load_secs,
        ttl: o.ttl,
        loop_wait: o.loop_wait,
        retry,
    };
    let mut rows = Vec::new();
    for kind in &o.dcs_load_backends {
        match dcs_load::run(*kind, &lo) {
            Ok(r) => rows.extend(r),
            Err(e) => println!("dcs-load {kind:?}: could not measure: {e}"),
        }
    }
    dcs_load::print_summary(&rows, &lo);
}

/// Failover, hand-over, memory, idle CPU, REST throughput and the switchover comparison.
fn classic(o: &Opts, retry: u64) {
    println!(
        "spilo-bench: 3 nodes, ttl {} s, loop_wait {} s, retry_timeout {} s, {} failover rounds",
        o.ttl, o.loop_wait, retry, o.rounds
    );
    let mut c = TestCluster::start(
        3,
        ClusterOpts::named("bench").timing(o.ttl, o.loop_wait, retry),
    );
    let primary = c.wait_for_replicas_streaming(Duration::from_secs(120));
    println!("cluster up, primary {primary}");

    // Unplanned failover: SIGKILL daemon + postmaster of the primary.
    let mut failovers = Vec::new();
    for round in 1..=o.rounds {
        let primary = c.wait_for_replicas_streaming(Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(300 + 500 * (round as u64 % 3)));
        let start = Instant::now();
        c.node_mut(&primary).kill_daemon(libc::SIGKILL);
        c.node(&primary).kill_postmaster(libc::SIGKILL);
        match first_writer(&c, &primary, start, Duration::from_secs(o.ttl * 6 + 30)) {
            Some((who, took)) => {
                println!("failover round {round}: {primary} killed, {who} accepted a write after {:.2} s", took.as_secs_f64());
                failovers.push(took.as_secs_f64());
            }
            None => println!("failover round {round}: no node accepted a write"),
        }
        c.node_mut(&primary).restart_daemon();
    }

    // Hand-over: SIGTERM of the leader's daemon.
    let mut handovers = Vec::new();
    for round in 1..=3 {
        let primary = c.wait_for_replicas_streaming(Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(500));
        let start = Instant::now();
        c.node_mut(&primary).kill_daemon(libc::SIGTERM);
        match first_writer(&c, &primary, start, Duration::from_secs(o.ttl * 6 + 30)) {
            Some((who, took)) => {
                println!("hand-over round {round}: {primary} got SIGTERM, {who} accepted a write after {:.2} s", took.as_secs_f64());
                handovers.push(took.as_secs_f64());
            }
            None => println!("hand-over round {round}: no node accepted a write"),
        }
        c.node_mut(&primary)
            .wait_daemon_exit(Duration::from_secs(30));
        c.node_mut(&primary).restart_daemon();
    }

    let primary = c.wait_for_replicas_streaming(Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(3));
    // Memory and idle CPU.
    let pids: Vec<(String, i32)> = c
        .nodes
        .iter()
        .filter_map(|n| n.daemon_pid().map(|p| (n.name.clone(), p)))
        .collect();
    let before: Vec<Option<u64>> = pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    std::thread::sleep(Duration::from_secs(o.idle_secs));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut rss = Vec::new();
    for ((name, pid), b) in pids.iter().zip(before) {
        let r = rss_kb(*pid).unwrap_or(0);
        rss.push(r);
        let cpu = match (b, cpu_ticks(*pid)) {
            (Some(b), Some(a)) => {
                format!("{:.2} %", (a - b) as f64 / hz / o.idle_secs as f64 * 100.0)
            }
            _ => "unknown".into(),
        };
        println!(
            "daemon {name} (pid {pid}): RSS {:.1} MB, idle CPU {cpu} over {} s",
            r as f64 / 1024.0,
            o.idle_secs
        );
    }

    // REST throughput on the leader's GET /primary.
    let port = c.node(&primary).api_port;
    let wrk = Command::new("wrk")
        .args([
            "-t1",
            "-c16",
            &format!("-d{}s", o.wrk_secs),
            &format!("http://127.0.0.1:{port}/primary"),
        ])
        .output();
    let rps = match wrk {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("Requests/sec:"))
            .map(|l| l.trim_start_matches("Requests/sec:").trim().to_string())
            .unwrap_or_else(|| "unknown (no Requests/sec line)".into()),
        Err(e) => format!("unknown (wrk: {e})"),
    };

    drop(c);
    let (sw_spilo, sw_patroni, patroni_rss) = switchover_section(o);

    println!();
    println!(
        "== spilo-bench summary (ttl {} s, loop_wait {} s, retry_timeout {} s) ==",
        o.ttl, o.loop_wait, retry
    );
    println!(
        "unplanned failover (SIGKILL daemon+postmaster -> first write elsewhere): {}",
        stats(&failovers)
    );
    println!(
        "SIGTERM hand-over (-> first write elsewhere): {}",
        stats(&handovers)
    );
    println!(
        "daemon RSS: max {:.1} MB",
        rss.iter().copied().max().unwrap_or(0) as f64 / 1024.0
    );
    println!(
        "GET /primary on the leader (wrk -t1 -c16 -d{}s): {rps} requests/s",
        o.wrk_secs
    );
    println!("switchover, spilo (POST /switchover -> first write on the candidate, ttl 20, loop_wait 2): {}", stats(&sw_spilo));
    if o.patroni {
        println!(
            "switchover, Patroni 4 from PyPI, same etcd/PostgreSQL/YAML: {}",
            stats(&sw_patroni)
        );
        if let (Some(a), Some(b)) = (median(&sw_spilo), median(&sw_patroni)) {
            println!("switchover median ratio spilo/Patroni: {:.3}", a / b);
        }
        if !patroni_rss.is_empty() {
            println!(
                "Patroni daemon RSS: max {:.1} MB",
                patroni_rss.iter().copied().fold(0.0, f64::max)
            );
        }
    }
}
