//! `spilo-chaos`: the chaos suite on real processes.
//!
//! Three spilo nodes (daemon + PostgreSQL 15, with the extension's fence on) and a 3-server
//! DCS (etcd or ZooKeeper), each in its own network namespace on a private bridge. Faults
//! picked from a seed (kill -9 of a daemon, a postmaster or a whole node; a frozen daemon;
//! partitions node↔DCS, node↔everyone and asymmetric ones; the DCS leader killed; DCS quorum
//! lost; a switchover during a fault) are applied and healed in turn while the checkers, in
//! the root namespace, try a write on every node every 20 ms and insert unique ids through the
//! primary at 50/s. At the end everything is healed and the report printed: overlapping write
//! windows (must be none), lost acknowledged ids (must be none in synchronous mode),
//! convergence, failover time, fence latency and false failovers. Exit 0 when it passes, 1
//! when a check fails, 2 on bad arguments or when the lab cannot be set up.
//!
//! `scripts/chaos.sh --minutes N --seed S [--dcs etcd|zookeeper] [--sync on|off]` runs it.

mod checkers;
mod dcs;
mod nemesis;
mod net;
mod nodes;
mod report;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use checkers::{now_us, Record, Shared};
use nemesis::Rng;
use nodes::{Node, Settings};
use report::{Event, Expect};

const USAGE: &str = "usage: spilo-chaos [--minutes N] [--seed S] [--dcs etcd|zookeeper] \
[--sync on|off] [--ttl S] [--loop-wait S] [--retry-timeout S] [--events N] [--report FILE] [--keep] \
[--lab N] [--faults KIND,…] [--target primary|any] [--hold S] [--fence on|off] [--expect-split-brain]";

/// Command-line options.
#[derive(Clone, Debug)]
struct Opts {
    minutes: f64,
    seed: u64,
    dcs: dcs::Kind,
    sync: bool,
    ttl: u64,
    loop_wait: u64,
    retry_timeout: u64,
    max_events: Option<usize>,
    report: Option<PathBuf>,
    keep: bool,
    lab: u8,
    menu: nemesis::Menu,
    fence: bool,
    expect_split_brain: bool,
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        minutes: 3.0,
        seed: 1,
        dcs: dcs::Kind::Etcd,
        sync: true,
        ttl: 10,
        loop_wait: 2,
        retry_timeout: 3,
        max_events: None,
        report: None,
        keep: false,
        lab: 0,
        menu: nemesis::Menu::default(),
        fence: true,
        expect_split_brain: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let num = |name: &str, v: String| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: expected a whole number, got {v:?}"))
        };
        match a.as_str() {
            "--minutes" => {
                let v = value(a)?;
                o.minutes = v
                    .parse::<f64>()
                    .ok()
                    .filter(|m| *m > 0.0 && m.is_finite())
                    .ok_or_else(|| format!("--minutes: expected a positive number, got {v:?}"))?;
            }
            "--seed" => o.seed = num(a, value(a)?)?,
            "--dcs" => {
                o.dcs = match value(a)?.as_str() {
                    "etcd" => dcs::Kind::Etcd,
                    "zookeeper" => dcs::Kind::ZooKeeper,
                    other => {
                        return Err(format!("--dcs: expected etcd or zookeeper, got {other:?}"))
                    }
                }
            }
            "--sync" => {
                o.sync = match value(a)?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--sync: expected on or off, got {other:?}")),
                }
            }
            "--ttl" => o.ttl = num(a, value(a)?)?,
            "--loop-wait" => o.loop_wait = num(a, value(a)?)?,
            "--retry-timeout" => o.retry_timeout = num(a, value(a)?)?,
            "--events" => o.max_events = Some(num(a, value(a)?)? as usize),
            "--report" => o.report = Some(PathBuf::from(value(a)?)),
            "--keep" => o.keep = true,
            "--expect-split-brain" => o.expect_split_brain = true,
            "--faults" => o.menu.kinds = nemesis::Menu::parse_kinds(&value(a)?)?,
            "--target" => {
                o.menu.primary_only = match value(a)?.as_str() {
                    "primary" => true,
                    "any" => false,
                    other => {
                        return Err(format!("--target: expected primary or any, got {other:?}"))
                    }
                }
            }
            "--hold" => o.menu.hold = Some(Duration::from_secs(num(a, value(a)?)?)),
            "--fence" => {
                o.fence = match value(a)?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--fence: expected on or off, got {other:?}")),
                }
            }
            "--lab" => {
                o.lab = u8::try_from(num(a, value(a)?)?)
                    .ok()
                    .filter(|n| *n < 100)
                    .ok_or("--lab: expected 0 to 99")?
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.ttl < o.loop_wait + 2 * o.retry_timeout {
        return Err(format!(
            "--ttl {} must be at least loop_wait + 2 × retry_timeout ({})",
            o.ttl,
            o.loop_wait + 2 * o.retry_timeout
        ));
    }
    Ok(o)
}

/// Set by SIGINT or SIGTERM: the run stops applying faults, heals, reports and tears down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Sleeps `d`, or less when interrupted.
fn nap(d: Duration) {
    let until = Instant::now() + d;
    while !INTERRUPTED.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

fn say(msg: impl std::fmt::Display) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[chaos +{t:8.2}s] {msg}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("spilo-chaos: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = net::Topology::preflight().and_then(|_| extension_installed()) {
        eprintln!("spilo-chaos: {e}");
        std::process::exit(2);
    }
    let handler = on_signal as extern "C" fn(libc::c_int);
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    net::set_lab(o.lab);
    let dir = PathBuf::from(format!("/tmp/spilo-chaos-{}", std::process::id()));
    let code = match run(&o, &dir) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("spilo-chaos: {e}");
            2
        }
    };
    if code == 0 && !o.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("spilo-chaos: logs and data kept in {}", dir.display());
    }
    std::process::exit(code);
}

/// The fence needs the extension in PostgreSQL 15.
fn extension_installed() -> Result<(), String> {
    let lib = "/usr/lib/postgresql/15/lib/spilo.so";
    if std::path::Path::new(lib).exists() {
        Ok(())
    } else {
        Err(format!(
            "{lib} is missing: the suite arms the extension's fence; run scripts/install-pgext.sh"
        ))
    }
}

/// The cluster as the nodes' REST APIs describe it.
struct View {
    /// Per node: `/patroni`, when it answered.
    status: Vec<Option<Value>>,
}

impl View {
    fn take(nodes: &[Node]) -> View {
        View {
            status: nodes.iter().map(|n| n.patroni().ok()).collect(),
        }
    }
    fn role(&self, i: usize) -> Option<&str> {
        self.status[i].as_ref().and_then(|v| v["role"].as_str())
    }
    fn primaries(&self) -> Vec<usize> {
        (0..self.status.len())
            .filter(|&i| {
                matches!(self.role(i), Some("primary" | "master"))
                    && self.status[i].as_ref().map(|v| v["state"] == "running") == Some(true)
            })
            .collect()
    }
    /// One primary, every node running, and every other node streaming from it on its
    /// timeline.
    fn healthy(&self, names: &[String]) -> Result<usize, String> {
        let p = self.primaries();
        if p.len() != 1 {
            return Err(format!("{} primaries", p.len()));
        }
        let p = p[0];
        let ps = self.status[p].as_ref().expect("primary answered");
        let streaming: Vec<&str> = ps["replication"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter(|r| r["state"] == "streaming")
                    .filter_map(|r| r["application_name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        for (i, name) in names.iter().enumerate() {
            if i == p {
                continue;
            }
            let Some(s) = self.status[i].as_ref() else {
                return Err(format!("{name}: no REST answer"));
            };
            if s["state"] != "running" {
                return Err(format!("{name}: state {}", s["state"]));
            }
            if !streaming.contains(&name.as_str()) {
                return Err(format!("{name}: not streaming from {}", names[p]));
            }
            if s["timeline"] != ps["timeline"] {
                return Err(format!(
                    "{name}: timeline {} vs the primary's {}",
                    s["timeline"], ps["timeline"]
                ));
            }
        }
        Ok(p)
    }
}

/// Waits until [`View::healthy`]; the primary, or the last reason.
fn wait_healthy(nodes: &[Node], timeout: Duration) -> Result<usize, String> {
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let deadline = Instant::now() + timeout;
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err("interrupted".into());
        }
        match View::take(nodes).healthy(&names) {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("not healthy after {timeout:?}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn run(o: &Opts, dir: &std::path::Path) -> Result<bool, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    spilo_tests::util::chmod(dir, 0o755);
    say(format!(
        "seed {}, {} minutes, DCS {}, synchronous mode {}, fence {}, ttl {} s, loop_wait {} s, retry_timeout {} s; directory {}",
        o.seed,
        o.minutes,
        o.dcs.name(),
        if o.sync { "on" } else { "off" },
        if o.fence { "on" } else { "off" },
        o.ttl,
        o.loop_wait,
        o.retry_timeout,
        dir.display()
    ));
    let mut topo = net::Topology::create(&["n1", "n2", "n3", "d1", "d2", "d3"])?;
    say(format!(
        "namespaces {p}n1 {p}n2 {p}n3 {p}d1 {p}d2 {p}d3 on bridge {} ({}.0/24)",
        net::bridge(),
        net::net(),
        p = net::prefix()
    ));
    let mut dcs = dcs::Dcs::start(o.dcs, &topo, &["d1", "d2", "d3"], dir)?;
    say(format!("{} serving on d1 d2 d3", o.dcs.name()));
    let settings = Settings {
        ttl: o.ttl,
        loop_wait: o.loop_wait,
        retry_timeout: o.retry_timeout,
        sync: o.sync,
        fence: o.fence,
        dcs_yaml: dcs.yaml(),
    };
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Node::create(topo.host(n), dir, &settings))
        .collect::<Result<_, _>>()?;
    for n in nodes.iter_mut() {
        n.start()?;
    }
    let primary = match wait_healthy(&nodes, Duration::from_secs(240)) {
        Ok(p) => p,
        Err(e) => {
            for n in &nodes {
                eprintln!("---- {} ----\n{}", n.name, n.log_tail(30));
            }
            return Err(format!("the cluster did not come up: {e}"));
        }
    };
    say(format!("cluster up: {} primary", nodes[primary].name));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let primary_ip = nodes[primary].ip();
    rt.block_on(async {
        let c = checkers::connect(primary_ip, Duration::from_secs(5)).await?;
        checkers::query(
            &c,
            "CREATE TABLE chaos_sb (node text NOT NULL, at timestamptz DEFAULT clock_timestamp()); \
             CREATE TABLE chaos_ids (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
    })
    .map_err(|e| format!("create the checkers' tables: {e}"))?;

    let rec: Shared = Arc::new(Mutex::new(Record {
        attempts: vec![Vec::new(); nodes.len()],
        claims: vec![Vec::new(); nodes.len()],
        ..Record::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        tasks.push(rt.spawn(checkers::probe(
            i,
            n.name.clone(),
            n.ip(),
            rec.clone(),
            stop.clone(),
        )));
    }
    let targets: Vec<_> = nodes.iter().map(|n| (n.name.clone(), n.ip())).collect();
    tasks.push(rt.spawn(checkers::writer(targets, rec.clone(), stop.clone())));

    // The fault loop.
    let mut rng = Rng::new(o.seed);
    let mut events: Vec<Event> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let run_start = Instant::now();
    let budget = Duration::from_secs_f64(o.minutes * 60.0);
    std::thread::sleep(Duration::from_secs(3));
    while run_start.elapsed() < budget
        && o.max_events.is_none_or(|m| events.len() < m)
        && !INTERRUPTED.load(Ordering::SeqCst)
    {
        let view = View::take(&nodes);
        let primary = view.primaries().first().copied();
        let plan = nemesis::pick(&mut rng, &o.menu, primary, nodes.len(), o.ttl);
        let (expect, fence) = nemesis::expectation(&plan, primary);
        let target = match plan.node {
            Some(i) => format!(
                "{}{}",
                nodes[i].name,
                if Some(i) == primary {
                    " (primary)"
                } else {
                    " (replica)"
                }
            ),
            None => format!(
                "cluster (primary {})",
                primary.map(|p| nodes[p].name.as_str()).unwrap_or("none")
            ),
        };
        let start = now_us();
        let applied = nemesis::apply(&plan, &mut topo, &mut dcs, &mut nodes, primary)?;
        say(format!(
            "event {}: {} on {target} for {:.1} s: {}",
            events.len() + 1,
            plan.kind.name(),
            plan.hold.as_secs_f64(),
            applied.detail
        ));
        nap(plan.hold);
        let heal = now_us();
        nemesis::heal(&applied, &mut topo, &mut dcs, &mut nodes)?;
        let recovered = match wait_healthy(&nodes, Duration::from_secs(150)) {
            Ok(p) => {
                say(format!(
                    "  healed; healthy again after {:.1} s, {} primary",
                    (now_us() - heal) as f64 / 1e6,
                    nodes[p].name
                ));
                Some(now_us())
            }
            Err(e) => {
                let msg = format!(
                    "event {} ({} on {target}): the cluster did not recover: {e}",
                    events.len() + 1,
                    plan.kind.name()
                );
                say(&msg);
                for n in &nodes {
                    eprintln!("---- {} ----\n{}", n.name, n.log_tail(25));
                }
                problems.push(msg);
                // Start whatever is down before the next fault.
                let _ = dcs.start_all();
                for n in nodes.iter_mut() {
                    n.signal_daemon(libc::SIGCONT);
                    let _ = n.start();
                }
                None
            }
        };
        events.push(Event {
            kind: plan.kind.name().to_string(),
            target,
            start,
            heal,
            recovered,
            expect,
            fence,
        });
        nap(Duration::from_millis(1000 + rng.below(2000)));
    }

    // Final heal and convergence.
    say("final heal: all cuts removed, every server and daemon running");
    topo.heal()?;
    dcs.start_all()?;
    for n in nodes.iter_mut() {
        n.signal_daemon(libc::SIGCONT);
        n.start()?;
    }
    let end_of_faults = now_us();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let converged = wait_healthy(&nodes, Duration::from_secs(240));
    let mut final_ids: BTreeSet<i64> = BTreeSet::new();
    let mut checksums: Vec<(String, String)> = Vec::new();
    match &converged {
        Ok(p) => {
            let p = *p;
            let ips: Vec<_> = nodes.iter().map(|n| (n.name.clone(), n.ip())).collect();
            match rt.block_on(converge(p, &ips)) {
                Ok((ids, sums)) => {
                    final_ids = ids;
                    checksums = sums;
                }
                Err(e) => problems.push(format!("convergence: {e}")),
            }
        }
        Err(e) => problems.push(format!("convergence: the cluster did not settle: {e}")),
    }

    let rec = rec.lock().expect("record lock");
    let ok = print_report(
        o,
        &events,
        &rec,
        &final_ids,
        &checksums,
        &mut problems,
        end_of_faults,
        converged.is_ok(),
    );
    if !ok {
        for n in &nodes {
            eprintln!("---- {} (last lines) ----\n{}", n.name, n.log_tail(15));
        }
    }
    drop(nodes);
    drop(dcs);
    drop(topo);
    Ok(ok)
}

/// After the final heal: waits until every replica has replayed the primary's WAL, then reads
/// the ids and each node's checksum of them.
async fn converge(
    primary: usize,
    nodes: &[(String, std::net::Ipv4Addr)],
) -> Result<(BTreeSet<i64>, Vec<(String, String)>), String> {
    let t = Duration::from_secs(10);
    let p = checkers::connect(nodes[primary].1, t).await?;
    let lsn = checkers::query(&p, "SELECT pg_current_wal_lsn()", t).await?;
    let lsn = lsn.first().cloned().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, (name, ip)) in nodes.iter().enumerate() {
        if i == primary {
            continue;
        }
        loop {
            let caught_up = async {
                let c = checkers::connect(*ip, t).await?;
                let rows = checkers::query(
                    &c,
                    &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
                    t,
                )
                .await?;
                Ok::<bool, String>(rows.first().map(String::as_str) == Some("t"))
            }
            .await;
            match caught_up {
                Ok(true) => break,
                Ok(false) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Ok(false) => return Err(format!("{name} did not replay up to {lsn}")),
                Err(e) => return Err(format!("{name}: {e}")),
            }
        }
    }
    let ids: BTreeSet<i64> = checkers::query(&p, "SELECT id FROM chaos_ids", t)
        .await?
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    let mut sums = Vec::new();
    for (name, ip) in nodes {
        let c = checkers::connect(*ip, t).await?;
        let s = checkers::query(
            &c,
            "SELECT count(*) || ' rows, md5 ' || md5(coalesce(string_agg(id::text, ',' ORDER BY id), '')) FROM chaos_ids",
            t,
        )
        .await?;
        sums.push((name.clone(), s.first().cloned().unwrap_or_default()));
    }
    Ok((ids, sums))
}

/// Prints the report (and writes it as JSON with `--report`); whether the run passed.
#[allow(clippy::too_many_arguments)]
fn print_report(
    o: &Opts,
    events: &[Event],
    rec: &Record,
    final_ids: &BTreeSet<i64>,
    checksums: &[(String, String)],
    problems: &mut Vec<String>,
    end_of_faults: i64,
    converged: bool,
) -> bool {
    let names = ["n1", "n2", "n3"];
    let windows: Vec<report::Window> = rec
        .attempts
        .iter()
        .enumerate()
        .flat_map(|(i, a)| report::windows(i, a))
        .collect();
    let overlaps = report::overlaps(&windows);
    let overlap_ms = report::total_ms(&overlaps);
    let claim_windows: Vec<report::Window> = rec
        .claims
        .iter()
        .enumerate()
        .flat_map(|(i, c)| report::claim_windows(i, c))
        .collect();
    let claim_overlaps = report::overlaps(&claim_windows);
    let claim_ms = report::total_ms(&claim_overlaps);
    let acks = report::acks(&rec.attempts);
    let mut failover_ms = Vec::new();
    let mut fence_ms = Vec::new();
    let mut false_failovers = Vec::new();
    let mut missed_failovers = 0usize;
    for (k, e) in events.iter().enumerate() {
        let until = events.get(k + 1).map(|n| n.start).unwrap_or(end_of_faults);
        let out = report::outcome(&acks, e.start, until);
        if let Some((_, t)) = out.new {
            failover_ms.push((t - e.start) as f64 / 1000.0);
            if e.expect == Expect::NoFailover {
                false_failovers.push(format!("event {} {} on {}", k + 1, e.kind, e.target));
            }
        } else if e.expect == Expect::Failover {
            missed_failovers += 1;
        }
        if e.fence && out.new.is_some() {
            let last = out.old_last.unwrap_or(e.start);
            fence_ms.push((last - e.start).max(0) as f64 / 1000.0);
        }
    }
    // Without the final read (no convergence) nothing can be said about lost ids.
    let final_read = !checksums.is_empty();
    let (lost, unexpected) = if final_read {
        report::lost_and_unexpected(&rec.attempted, &rec.acked, final_ids)
    } else {
        (Vec::new(), Vec::new())
    };
    let recovered: Vec<f64> = events
        .iter()
        .filter_map(|e| e.recovered.map(|r| (r - e.heal) as f64 / 1000.0))
        .collect();
    let by_kind = report::count_by(events.iter().map(|e| e.kind.as_str()));
    let sums_agree = !checksums.is_empty() && checksums.iter().all(|(_, s)| *s == checksums[0].1);

    println!();
    println!(
        "==== spilo chaos report: seed {}, {:.1} minutes, {} events, DCS {}, synchronous mode {} ====",
        o.seed,
        o.minutes,
        events.len(),
        o.dcs.name(),
        if o.sync { "on" } else { "off" }
    );
    println!("fault events by kind:");
    for (k, n) in &by_kind {
        println!("  {k:<26} {n}");
    }
    let probes: usize = rec.attempts.iter().map(Vec::len).sum();
    println!(
        "split brain: {} write windows, {} acknowledged probe writes of {probes} tried; overlapping windows: {} ({overlap_ms:.0} ms)",
        windows.len(),
        acks.len(),
        overlaps.len()
    );
    for x in overlaps.iter().take(10) {
        println!(
            "  OVERLAP {} and {}: {:.3} ms from {}",
            names[x.a],
            names[x.b],
            (x.end - x.start) as f64 / 1000.0,
            x.start
        );
    }
    println!(
        "claims-primary overlap (pg_is_in_recovery() = false on two nodes; reported, not a failure): {} ({claim_ms:.0} ms)",
        claim_overlaps.len()
    );
    if final_read {
        println!(
            "lost writes: {} ids sent, {} acknowledged, {} in the final table; lost {}, unexpected {}",
            rec.attempted.len(),
            rec.acked.len(),
            final_ids.len(),
            lost.len(),
            unexpected.len()
        );
    } else {
        println!(
            "lost writes: {} ids sent, {} acknowledged; not measured: the final read did not happen",
            rec.attempted.len(),
            rec.acked.len()
        );
    }
    // Lost writes in bursts, one per failover that lost something; a burst longer than ttl
    // breaks asynchronous mode's bound (what the old primary acknowledged in its last ttl).
    let bursts = report::loss_bursts(&rec.acked, &lost, 2_000_000);
    let bound_us = (o.ttl as i64) * 1_000_000;
    for (first, last, n) in &bursts {
        println!(
            "  lost burst: {n} ids acknowledged over {:.1} s from {first} (bound: ttl = {} s)",
            (last - first) as f64 / 1e6,
            o.ttl
        );
    }
    let over_bound: Vec<_> = bursts
        .iter()
        .filter(|(first, last, _)| last - first >= bound_us)
        .collect();
    println!(
        "convergence: {}; checksums: {}",
        if converged {
            "one primary, every replica streaming on its timeline"
        } else {
            "NOT converged"
        },
        checksums
            .iter()
            .map(|(n, s)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "failover (fault → first write acknowledged by another node): {}",
        report::percentiles(&failover_ms)
    );
    println!(
        "fence latency (fault → the cut or frozen primary's last acknowledged write): {}",
        report::percentiles(&fence_ms)
    );
    println!(
        "recovery after heal (→ one primary, every replica streaming): {}",
        report::percentiles(&recovered)
    );
    println!(
        "false failovers (leader changed though the primary was untouched): {}{}",
        false_failovers.len(),
        if false_failovers.is_empty() {
            String::new()
        } else {
            format!(" ({})", false_failovers.join("; "))
        }
    );
    println!("switchovers that did not happen: {missed_failovers} (reported, not a failure: a switchover may be refused)");

    if !overlaps.is_empty() {
        problems.push(format!(
            "{} overlapping write windows ({overlap_ms:.0} ms): two nodes acknowledged writes at once",
            overlaps.len()
        ));
    }
    if !over_bound.is_empty() {
        problems.push(format!(
            "{} bursts of lost writes span ttl ({} s) or more: more than a failover may lose",
            over_bound.len(),
            o.ttl
        ));
    }
    if o.sync && !lost.is_empty() {
        problems.push(format!(
            "{} acknowledged ids lost in synchronous mode",
            lost.len()
        ));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} ids in the table that were never sent",
            unexpected.len()
        ));
    }
    if converged && !sums_agree {
        problems.push("the nodes' checksums differ after convergence".into());
    }
    if events.is_empty() {
        problems.push("no fault was applied".into());
    }
    if acks.is_empty() || rec.acked.is_empty() {
        problems.push("no write was acknowledged: the checkers saw nothing".into());
    }
    if o.expect_split_brain {
        // The checker's own test: a setup that must produce two writers (e.g. the fence off and
        // the primary's daemon frozen past ttl). It passes only when the overlap was seen.
        println!(
            "expected a split brain: {}",
            if overlaps.is_empty() {
                "NOT seen: the checker missed it"
            } else {
                "seen, as it must be"
            }
        );
        // And the cluster must still come back together: the old primary and any replica that
        // streamed its writes past the new timeline's fork rewind.
        println!(
            "after the split brain: {}",
            if converged && sums_agree {
                "converged, checksums agree"
            } else {
                "NOT converged"
            }
        );
        return !overlaps.is_empty() && converged && sums_agree;
    }
    let passed = problems.is_empty();
    if passed {
        println!("result: PASSED");
    } else {
        println!("result: FAILED");
        for p in problems.iter() {
            println!("  - {p}");
        }
    }
    if let Some(path) = &o.report {
        let v = json!({
            "seed": o.seed,
            "minutes": o.minutes,
            "dcs": o.dcs.name(),
            "sync": o.sync,
            "ttl": o.ttl,
            "loop_wait": o.loop_wait,
            "events": events.len(),
            "events_by_kind": by_kind,
            "overlapping_windows": overlaps.len(),
            "overlap_ms": overlap_ms,
            "claims_primary_overlaps": claim_overlaps.len(),
            "claims_primary_overlap_ms": claim_ms,
            "ids_sent": rec.attempted.len(),
            "ids_acked": rec.acked.len(),
            "lost": lost.len(),
            "lost_bursts": bursts.len(),
            "unexpected": unexpected.len(),
            "failover_ms": failover_ms,
            "fence_ms": fence_ms,
            "false_failovers": false_failovers,
            "converged": converged,
            "problems": problems,
            "passed": passed,
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&v).unwrap_or_default()) {
            eprintln!("spilo-chaos: write {}: {e}", path.display());
        }
    }
    passed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn arguments_are_parsed_and_bad_ones_named() {
        let o = parse_args(&args("--minutes 2.5 --seed 9 --dcs zookeeper --sync off")).unwrap();
        assert_eq!(
            (o.minutes, o.seed, o.dcs, o.sync),
            (2.5, 9, dcs::Kind::ZooKeeper, false)
        );
        let e = parse_args(&args("--dcs consul")).unwrap_err();
        assert!(e.contains("--dcs") && e.contains("consul"), "{e}");
        let e = parse_args(&args("--minutes -1")).unwrap_err();
        assert!(e.contains("--minutes"), "{e}");
        let e = parse_args(&args("--ttl 5 --loop-wait 2 --retry-timeout 3")).unwrap_err();
        assert!(e.contains("--ttl 5"), "{e}");
        let e = parse_args(&args("--seed")).unwrap_err();
        assert!(e.contains("--seed needs a value"), "{e}");
        let o = parse_args(&args(
            "--faults freeze-daemon --target primary --hold 15 --fence off",
        ))
        .unwrap();
        assert_eq!(o.menu.kinds, vec![nemesis::Kind::FreezeDaemon]);
        assert!(o.menu.primary_only && !o.fence);
        assert_eq!(o.menu.hold, Some(Duration::from_secs(15)));
        let e = parse_args(&args("--target replica")).unwrap_err();
        assert!(e.contains("--target"), "{e}");
        let e = parse_args(&args("--lab 100")).unwrap_err();
        assert!(e.contains("--lab"), "{e}");
        assert_eq!(parse_args(&args("--lab 3")).unwrap().lab, 3);
        let e = parse_args(&args("--bogus")).unwrap_err();
        assert!(e.contains("--bogus"), "{e}");
    }
}
