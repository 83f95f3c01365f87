//! The real executor in a simulated world: three `Node`s — the runner the daemon runs, with
//! `decide()`, the planners, the jobs, the hooks, the lease guard — over a simulated DCS,
//! simulated PostgreSQL servers and a simulated network (`world.rs`, `parts.rs`), on tokio's
//! paused clock, under random faults from a seed: DCS cuts, lost DCS answers, DCS requests that
//! land after their sender gave up, isolated nodes, one-way and two-way node↔node cuts,
//! PostgreSQL crashes, daemon restarts, frozen daemons, maintenance windows; asynchronous,
//! synchronous (strict or not) and quorum clusters; a Lua hook vetoing one node's promotions.
//!
//! Checked: at every tick (100 ms of virtual time) at most one node acknowledges commits (its
//! PostgreSQL runs as primary and the extension's fence, as it reads the state file, is open),
//! at most one PostgreSQL runs as primary among nodes whose daemon is not frozen, and no writer
//! lacks an acknowledged commit; after the faults heal, the cluster converges: one primary
//! holding the leader key, every other node a replica streaming from it; a vetoing node was never
//! promoted. Planted bugs, in the executor and in the decision, must be caught.
//!
//! `cargo test -p spilo-core --test executor_sim` runs the CI seeds (500); `SPILO_EXEC_SIM_SEEDS=N`
//! runs more, `SPILO_EXEC_SIM_SEED=S` one, `SPILO_EXEC_SIM_LOG=1` prints the daemons' logs.

mod parts;
mod world;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use spilo_core::dcs::Cluster;
use spilo_core::ha::decide::{decide, Action, Decision, LocalView, Policy};
use spilo_core::ha::plan::{
    next_rewind_state, Decider, RemovalReason, RewindEvent, RewindPlanner, RewindState,
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

    fn yaml(self, strict: bool) -> &'static str {
        match (self, strict) {
            (Mode::Async, _) => "",
            (Mode::Sync, false) => ", synchronous_mode: true",
            (Mode::Sync, true) => ", synchronous_mode: true, synchronous_mode_strict: true",
            (Mode::Quorum, _) => ", synchronous_mode: quorum",
        }
    }
}

/// What a seed's world holds besides faults.
#[derive(Clone, Debug)]
struct Setup {
    mode: Mode,
    /// `synchronous_mode_strict` (in synchronous mode).
    strict: bool,
    /// The node whose `before_promote` hook vetoes every promotion, with the script's path.
    veto: Option<(usize, std::path::PathBuf)>,
}

impl Setup {
    fn of(seed: u64) -> Setup {
        let mode = Mode::of(seed);
        let strict = mode == Mode::Sync && (seed / 3) % 2 == 1;
        let veto = (seed % 4 == 3).then(|| {
            let path = std::env::temp_dir().join(format!(
                "spilo-exec-sim-veto-{}.lua",
                std::process::id()
            ));
            // Written once per process; every vetoing seed uses the same script.
            if !path.exists() {
                std::fs::write(
                    &path,
                    "spilo.on('before_promote', function(ctx) return false, 'the simulation forbids it' end)\n",
                )
                .expect("write the veto script");
            }
            (2, path)
        });
        Setup { mode, strict, veto }
    }
}

fn config(i: usize, setup: &Setup) -> spilo_core::config::Config {
    let hooks = match &setup.veto {
        // `on_error: deny`: the Lua handler runs on a real thread while the world's clock is
        // paused and advances on its own when nothing else runs, so on a loaded machine the
        // hook's deadline can pass before it answers; what it means then must be a veto too.
        Some((n, path)) if *n == i => format!(
            "hooks: {{script: '{}', events: {{before_promote: {{on_error: deny}}}}}}\n",
            path.display()
        ),
        _ => String::new(),
    };
    let yaml = format!(
        "scope: sim\nname: n{i}\nrestapi: {{listen: '127.0.0.1:{api}', connect_address: '127.0.0.1:{api}'}}\n\
         etcd3: {{hosts: '127.0.0.1:2379'}}\n\
         bootstrap:\n  dcs: {{ttl: {TTL}, loop_wait: {LOOP_WAIT}, retry_timeout: {RETRY}{sync}, postgresql: {{use_pg_rewind: true}}}}\n\
         postgresql:\n  listen: '127.0.0.1:{pg}'\n  connect_address: '127.0.0.1:{pg}'\n  data_dir: /nonexistent/sim/n{i}\n\
         \x20 authentication: {{superuser: {{username: postgres, password: x}}, replication: {{username: replicator, password: y}}}}\n{hooks}",
        api = 18000 + i,
        pg = PG_PORT0 as usize + i,
        sync = setup.mode.yaml(setup.strict),
    );
    spilo_core::config::load_str(&yaml, "sim.yml", &[])
        .expect("the simulation's config loads")
        .config
}

/// The executor's pluggable rules: the real ones, or a planted bug.
#[derive(Clone, Copy)]
struct Rules {
    rewind: RewindPlanner,
    decide: Decider,
}

const REAL: Rules = Rules {
    rewind: next_rewind_state,
    decide,
};

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

fn start_daemon(world: &World, states: &States, i: usize, setup: &Setup, rules: Rules) -> Daemon {
    let cfg = config(i, setup);
    let hooks = spilo_core::hooks::Hooks::start(&cfg).expect("the simulation's hooks load");
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
        .with_hooks(hooks)
        .with_peer_source(peers)
        .with_rewind_planner(rules.rewind)
        .with_decider(rules.decide);
    let run = tokio::spawn(async move {
        node.run(std::future::pending()).await;
    });
    Daemon { run, guard }
}

/// Sets or clears `pause` in the cluster's `config` key, as `spiloctl pause` does.
fn set_pause(world: &World, on: bool) {
    let mut w = world.lock();
    let Some((value, ..)) = w.dcs.keys.get("config").cloned() else {
        return;
    };
    let mut v: serde_json::Value = serde_json::from_slice(&value).unwrap_or_default();
    if !v.is_object() {
        return;
    }
    if v.get("pause")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
        == on
    {
        return;
    }
    v["pause"] = serde_json::Value::Bool(on);
    let body = serde_json::to_vec(&v).expect("JSON");
    w.dcs.set("config", &body, None);
    drop(w);
    world.bump();
}

/// What one seed did.
#[derive(Debug, Default)]
struct Outcome {
    pauses: u64,
    faults: u64,
    promotions: u64,
    rewinds: u64,
    acks: u64,
}

/// One seed: faults for `fault_secs` of virtual time, then healing and the convergence check.
fn run_seed(seed: u64, fault_secs: u64, rules: Rules) -> Result<Outcome, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let world = World::new();
        let setup = Setup::of(seed);
        let mode = setup.mode;
        world.lock().sync_mode = mode != Mode::Async;
        let states: States = Arc::default();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut daemons: Vec<Option<Daemon>> =
            (0..NODES).map(|i| Some(start_daemon(&world, &states, i, &setup, rules))).collect();
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
            match rng.below(8) {
                0 => {
                    world.lock().links.dcs[i] = false;
                    tokio::time::sleep(hold).await;
                    world.lock().links.dcs[i] = true;
                }
                1 => {
                    // The node is cut off; half the time the other two lose sight of each
                    // other as well (each then races for the leader key on its own view).
                    let split = rng.below(2) == 0;
                    {
                        let mut w = world.lock();
                        w.links.dcs[i] = false;
                        for k in 0..NODES {
                            if k != i {
                                w.links.peer[i][k] = false;
                                w.links.peer[k][i] = false;
                            }
                        }
                        if split {
                            let k = (0..NODES).find(|&k| k != i && k != j).unwrap_or(j);
                            w.links.peer[j][k] = false;
                            w.links.peer[k][j] = false;
                        }
                    }
                    tokio::time::sleep(hold).await;
                    let mut w = world.lock();
                    w.links = world::Links::default();
                }
                2 => {
                    // A node↔node cut, both ways or one way (i no longer reaches j: neither
                    // its REST API nor its WAL, while j still reaches i).
                    let both = rng.below(2) == 0;
                    {
                        let mut w = world.lock();
                        w.links.peer[i][j] = false;
                        if both {
                            w.links.peer[j][i] = false;
                        }
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
                5 => {
                    // The DCS applies the node's requests but its answers are lost; or its
                    // requests are held up and land after the node gave up on them.
                    let late = rng.below(2) == 0;
                    {
                        let mut w = world.lock();
                        if late {
                            w.links.dcs_late[i] = true;
                        } else {
                            w.links.dcs_answers[i] = false;
                        }
                    }
                    tokio::time::sleep(hold).await;
                    let mut w = world.lock();
                    w.links.dcs_answers[i] = true;
                    w.links.dcs_late[i] = false;
                }
                6 => {
                    // The daemon freezes (SIGSTOP), its PostgreSQL keeps running, for up to
                    // twice the ttl; then it resumes on what it saw before.
                    world.lock().frozen[i] = true;
                    tokio::time::sleep(hold).await;
                    let mut w = world.lock();
                    w.frozen[i] = false;
                    w.thawed_at[i] = Some(tokio::time::Instant::now());
                }
                7 => {
                    // Maintenance mode for a while (faults go on meanwhile), then resumed.
                    set_pause(&world, true);
                    out.pauses += 1;
                    tokio::time::sleep(hold).await;
                    set_pause(&world, false);
                }
                _ => {
                    // The daemon restarts (PostgreSQL keeps running), back within 3 s.
                    if let Some(d) = daemons[i].take() {
                        d.stop();
                    }
                    tokio::time::sleep(Duration::from_millis(rng.below(3000))).await;
                    daemons[i] = Some(start_daemon(&world, &states, i, &setup, rules));
                }
            }
        }
        // Heal and converge.
        world.lock().links = world::Links::default();
        set_pause(&world, false);
        tokio::time::sleep(Duration::from_secs(120)).await;
        let result = {
            let w = world.lock();
            out.promotions = w.promotions;
            out.rewinds = w.rewinds;
            out.acks = w.acks;
            let vetoed = setup.veto.as_ref().map(|(n, _)| *n);
            if let Some(v) = w.violations.first() {
                Err(format!("seed {seed}: {v}"))
            } else if let Some(n) = vetoed.filter(|&n| w.promoted[n] > 0) {
                Err(format!(
                    "seed {seed}: n{n} was promoted {} times though its before_promote hook vetoes",
                    w.promoted[n]
                ))
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

/// Runs `seeds` on every core, each seed on its own paused runtime.
fn run_seeds(seeds: &[u64], rules: Rules) -> (Outcome, Vec<String>) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(seeds.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new((Outcome::default(), Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&seed) = seeds.get(k) else {
                    break;
                };
                let r = run_seed(seed, 240, rules);
                let mut g = results.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(o) => {
                        g.0.faults += o.faults;
                        g.0.pauses += o.pauses;
                        g.0.promotions += o.promotions;
                        g.0.rewinds += o.rewinds;
                        g.0.acks += o.acks;
                    }
                    Err(e) => g.1.push(e),
                }
            });
        }
    });
    let (total, mut failures) = results.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort();
    (total, failures)
}

#[test]
fn the_real_executor_keeps_one_primary_and_converges_under_random_faults() {
    if std::env::var_os("SPILO_EXEC_SIM_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::stderr)
            .init();
    }
    let seeds: Vec<u64> = match env_u64("SPILO_EXEC_SIM_SEED") {
        Some(s) => vec![s],
        None => (1..=env_u64("SPILO_EXEC_SIM_SEEDS").unwrap_or(500)).collect(),
    };
    let (total, failures) = run_seeds(&seeds, REAL);
    eprintln!(
        "executor simulation: {} seeds, {} faults ({} maintenance windows), {} promotions, {} rewinds or copies, {} synchronous acknowledgements, {} failed",
        seeds.len(),
        total.faults,
        total.pauses,
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

/// The first seed of 1..=60 whose run fails with these rules.
fn first_caught(rules: Rules) -> Option<String> {
    (1..=60u64)
        .collect::<Vec<_>>()
        .chunks(6)
        .find_map(|chunk| run_seeds(chunk, rules).1.into_iter().next())
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
    let why = first_caught(Rules {
        rewind: forget_divergence,
        decide,
    })
    .expect("60 seeds let an executor that forgets divergence pass");
    assert!(why.contains("do not stream"), "{why}");
    eprintln!("caught: {why}");
}

/// A broken decision: a node that wins the leader race promotes without taking the leader key.
fn promote_without_the_key(
    c: Option<&Cluster>,
    l: &LocalView,
    p: &Policy,
    now: Duration,
) -> Decision {
    let mut d = decide(c, l, p, now);
    if d.actions.contains(&Action::Promote) {
        d.actions.retain(|a| *a != Action::AcquireLeader);
    }
    d
}

#[test]
fn promoting_without_the_leader_key_is_caught() {
    let why = first_caught(Rules {
        rewind: next_rewind_state,
        decide: promote_without_the_key,
    })
    .expect("60 seeds let nodes promote without the leader key");
    eprintln!("caught: {why}");
}

/// A broken decision: the leader race ignores the `sync` key, so a standby that never
/// confirmed the last commits may win it.
fn ignore_the_sync_key(c: Option<&Cluster>, l: &LocalView, p: &Policy, now: Duration) -> Decision {
    let mut p = p.clone();
    p.synchronous = false;
    p.quorum = false;
    decide(c, l, &p, now)
}

#[test]
fn a_leader_race_that_ignores_the_sync_key_is_caught() {
    let why = first_caught(Rules {
        rewind: next_rewind_state,
        decide: ignore_the_sync_key,
    })
    .expect("60 seeds let a leader race that ignores the sync key pass");
    assert!(why.contains("without the acknowledged write"), "{why}");
    eprintln!("caught: {why}");
}
