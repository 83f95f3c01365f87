//! The real executor in a simulated world: three `Node`s — the runner the daemon runs, with
//! `decide()`, the planners, the jobs, the lease guard — over a simulated DCS, simulated
//! PostgreSQL servers and a simulated network (`world.rs`, `parts.rs`), on tokio's paused
//! clock, under random faults from a seed: DCS cuts, isolated nodes, cut replication links,
//! PostgreSQL crashes, daemon restarts.
//!
//! Checked: at every tick (100 ms of virtual time) at most one PostgreSQL runs as primary; and
//! after the faults heal, the cluster converges: one primary holding the leader key, every other
//! node a replica streaming from it.
//!
//! `cargo test -p spilo-core --test executor_sim` runs the CI seeds; `SPILO_EXEC_SIM_SEEDS=N`
//! runs more, `SPILO_EXEC_SIM_SEED=S` one.

mod parts;
mod world;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use spilo_core::ha::plan::{
    next_rewind_state, RemovalReason, RewindEvent, RewindPlanner, RewindState,
};
use spilo_core::ha::runner::Node;
use spilo_core::ha::state::NodeState;
use tokio::task::JoinHandle;

use parts::{SimDcs, SimPeers, SimPg};
use world::{Proc, World, NODES, PG_PORT0};

const TTL: u64 = 10;
const LOOP_WAIT: u64 = 2;
const RETRY: u64 = 3;

/// A small deterministic random source.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The replication mode of a seed's cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Async,
    Sync,
    Quorum,
}

impl Mode {
    fn of(seed: u64) -> Mode {
        match seed % 3 {
            0 => Mode::Async,
            1 => Mode::Sync,
            _ => Mode::Quorum,
        }
    }

    fn yaml(self) -> &'static str {
        match self {
            Mode::Async => "",
            Mode::Sync => ", synchronous_mode: true",
            Mode::Quorum => ", synchronous_mode: quorum",
        }
    }
}

fn config(i: usize, mode: Mode) -> spilo_core::config::Config {
    let yaml = format!(
        "scope: sim\nname: n{i}\nrestapi: {{listen: '127.0.0.1:{api}', connect_address: '127.0.0.1:{api}'}}\n\
         etcd3: {{hosts: '127.0.0.1:2379'}}\n\
         bootstrap:\n  dcs: {{ttl: {TTL}, loop_wait: {LOOP_WAIT}, retry_timeout: {RETRY}{sync}, postgresql: {{use_pg_rewind: true}}}}\n\
         postgresql:\n  listen: '127.0.0.1:{pg}'\n  connect_address: '127.0.0.1:{pg}'\n  data_dir: /nonexistent/sim/n{i}\n\
         \x20 authentication: {{superuser: {{username: postgres, password: x}}, replication: {{username: replicator, password: y}}}}\n",
        api = 18000 + i,
        pg = PG_PORT0 as usize + i,
        sync = mode.yaml(),
    );
    spilo_core::config::load_str(&yaml, "sim.yml", &[])
        .expect("the simulation's config loads")
        .config
}

/// One node's running daemon: the loop and its lease guard.
struct Daemon {
    run: JoinHandle<()>,
    guard: JoinHandle<()>,
}

impl Daemon {
    fn stop(self) {
        self.run.abort();
        self.guard.abort();
    }
}

type States = Arc<std::sync::Mutex<BTreeMap<String, (usize, spilo_core::ha::state::StateRx)>>>;

fn start_daemon(
    world: &World,
    states: &States,
    i: usize,
    mode: Mode,
    planner: RewindPlanner,
) -> Daemon {
    let cfg = config(i, mode);
    let (dynamic, _) = spilo_core::config::effective_dynamic(None, &cfg);
    let dcs = Arc::new(SimDcs::new(
        world.clone(),
        i,
        &cfg.name,
        Duration::from_secs(TTL),
        Duration::from_secs(RETRY),
    ));
    let pg = Arc::new(SimPg {
        world: world.clone(),
        node: i,
        data_dir: cfg.postgresql.data_dir.clone(),
    });
    let mut initial = NodeState::new(&cfg.name, &cfg.scope, &cfg.api_url());
    initial.dynamic = dynamic.clone();
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(initial));
    states
        .lock()
        .unwrap()
        .insert(cfg.name.clone(), (i, rx.clone()));
    let peers = Arc::new(SimPeers {
        world: world.clone(),
        node: i,
        states: states.clone(),
    });
    let guard = tokio::spawn(spilo_core::ha::fence::guard(rx, pg.clone()));
    let node = Node::new(cfg, dcs, pg, tx, dynamic)
        .with_peer_source(peers)
        .with_rewind_planner(planner);
    let run = tokio::spawn(async move {
        node.run(std::future::pending()).await;
    });
    Daemon { run, guard }
}

/// What one seed did.
#[derive(Debug, Default)]
struct Outcome {
    faults: u64,
    promotions: u64,
    rewinds: u64,
    acks: u64,
}

/// One seed: faults for `fault_secs` of virtual time, then healing and the convergence check.
fn run_seed(seed: u64, fault_secs: u64, planner: RewindPlanner) -> Result<Outcome, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let world = World::new();
        let mode = Mode::of(seed);
        world.lock().sync_mode = mode != Mode::Async;
        let states: States = Arc::default();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut daemons: Vec<Option<Daemon>> =
            (0..NODES).map(|i| Some(start_daemon(&world, &states, i, mode, planner))).collect();
        let start = tokio::time::Instant::now();
        let ticker = {
            let world = world.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(100));
                loop {
                    every.tick().await;
                    world.tick();
                    world.check(start.elapsed());
                }
            })
        };
        // Bootstrap.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let mut out = Outcome::default();
        // Faults.
        let until = tokio::time::Instant::now() + Duration::from_secs(fault_secs);
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1000 + rng.below(6000))).await;
            let i = rng.below(NODES as u64) as usize;
            let j = (i + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
            let hold = Duration::from_millis(500 + rng.below(20_000));
            out.faults += 1;
            match rng.below(5) {
                0 => {
                    world.lock().links.dcs[i] = false;
                    tokio::time::sleep(hold).await;
                    world.lock().links.dcs[i] = true;
                }
                1 => {
                    {
                        let mut w = world.lock();
                        w.links.dcs[i] = false;
                        for k in 0..NODES {
                            if k != i {
                                w.links.peer[i][k] = false;
                                w.links.peer[k][i] = false;
                            }
                        }
                    }
                    tokio::time::sleep(hold).await;
                    let mut w = world.lock();
                    w.links = world::Links::default();
                }
                2 => {
                    {
                        let mut w = world.lock();
                        w.links.peer[i][j] = false;
                        w.links.peer[j][i] = false;
                    }
                    tokio::time::sleep(hold).await;
                    let mut w = world.lock();
                    w.links.peer[i][j] = true;
                    w.links.peer[j][i] = true;
                }
                3 => {
                    // The postmaster dies (kill -9).
                    let mut w = world.lock();
                    let p = &mut w.pg[i];
                    if p.proc != Proc::Stopped {
                        p.crashed = true;
                        p.ctl_primary = p.proc == Proc::Primary;
                        p.proc = Proc::Stopped;
                        p.streaming = false;
                    }
                }
                _ => {
                    // The daemon restarts (PostgreSQL keeps running), back within 3 s.
                    if let Some(d) = daemons[i].take() {
                        d.stop();
                    }
                    tokio::time::sleep(Duration::from_millis(rng.below(3000))).await;
                    daemons[i] = Some(start_daemon(&world, &states, i, mode, planner));
                }
            }
        }
        // Heal and converge.
        world.lock().links = world::Links::default();
        tokio::time::sleep(Duration::from_secs(120)).await;
        let result = {
            let w = world.lock();
            out.promotions = w.promotions;
            out.rewinds = w.rewinds;
            out.acks = w.acks;
            if let Some(v) = w.violations.first() {
                Err(format!("seed {seed}: {v}"))
            } else {
                let primaries: Vec<usize> =
                    (0..NODES).filter(|&i| w.pg[i].proc == Proc::Primary).collect();
                let leader = w
                    .dcs
                    .keys
                    .get("leader")
                    .map(|k| String::from_utf8_lossy(&k.0).into_owned());
                let summary = || {
                    w.pg.iter()
                        .enumerate()
                        .map(|(i, p)| {
                            format!(
                                "n{i}: {:?} up {:?} streaming {} [{}]",
                                p.proc, p.upstream, p.streaming, p.data
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                match primaries.as_slice() {
                    [p] if leader.as_deref() == Some(format!("n{p}").as_str()) => {
                        let lagging: Vec<usize> = (0..NODES)
                            .filter(|&i| i != *p)
                            .filter(|&i| !(w.pg[i].proc == Proc::Replica && w.pg[i].streaming))
                            .collect();
                        if lagging.is_empty() {
                            Ok(())
                        } else {
                            Err(format!(
                                "seed {seed}: after healing, {lagging:?} do not stream from n{p}: {}",
                                summary()
                            ))
                        }
                    }
                    _ => Err(format!(
                        "seed {seed}: after healing, primaries {primaries:?} with leader key {leader:?}: {}",
                        summary()
                    )),
                }
            }
        };
        ticker.abort();
        for d in daemons.into_iter().flatten() {
            d.stop();
        }
        result.map(|()| out)
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn the_real_executor_keeps_one_primary_and_converges_under_random_faults() {
    if std::env::var_os("SPILO_EXEC_SIM_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::stderr)
            .init();
    }
    let seeds: Vec<u64> = match env_u64("SPILO_EXEC_SIM_SEED") {
        Some(s) => vec![s],
        None => (1..=env_u64("SPILO_EXEC_SIM_SEEDS").unwrap_or(40)).collect(),
    };
    let mut total = Outcome::default();
    let mut failures = Vec::new();
    for seed in &seeds {
        match run_seed(*seed, 240, next_rewind_state) {
            Ok(o) => {
                total.faults += o.faults;
                total.promotions += o.promotions;
                total.rewinds += o.rewinds;
                total.acks += o.acks;
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!(
        "executor simulation: {} seeds, {} faults, {} promotions, {} rewinds or copies, {} synchronous acknowledgements, {} failed",
        seeds.len(),
        total.faults,
        total.promotions,
        total.rewinds,
        total.acks,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The faults must actually move leadership around, or the checks prove little.
    assert!(
        total.promotions >= seeds.len() as u64,
        "too few promotions: {total:?}"
    );
}

/// A deliberately broken executor rule: a primary that stops forgets it may have diverged, so
/// it is started as a replica without a rewind. PostgreSQL cannot stream a forked history: the
/// convergence check must see a node that never streams again.
fn forget_divergence(
    state: RewindState,
    event: RewindEvent,
) -> (RewindState, Option<RemovalReason>) {
    match event {
        RewindEvent::StoppedAsPrimary => (RewindState::NotNeeded, None),
        other => next_rewind_state(state, other),
    }
}

#[test]
fn a_broken_executor_rule_is_caught() {
    let caught = (1..=40).find_map(|seed| run_seed(seed, 240, forget_divergence).err());
    let why = caught.expect("40 seeds let an executor that forgets divergence pass");
    assert!(why.contains("do not stream"), "{why}");
    eprintln!("caught: {why}");
}
