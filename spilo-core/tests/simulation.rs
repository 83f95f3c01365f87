//! A deterministic simulation of the HA decision: the real `decide()` driven by a simulated
//! world, on random schedules from a seed.
//!
//! The world:
//! - an in-memory DCS with sessions (leases), lease expiry, create-if-absent and
//!   compare-and-set on key versions (`leader`, `members/*`, `status`, `history`, `sync`);
//! - a virtual clock;
//! - three PostgreSQL nodes with WAL positions, timeline histories and `pg_control`, that crash,
//!   promote, demote, rewind, and stream from their upstream with a random delay;
//! - the daemon around `decide()`, as the runner does it: keep-alive, linearizable read,
//!   `GET /patroni` of the peers, the actions, the member key, the lease guard (stops a primary
//!   at `renewal + ttl - retry_timeout`) and the extension's fence (refuses commits past
//!   `renewal + ttl - 1 s`, `spilo.fence = on`); in synchronous mode the `sync` key written
//!   before a promotion and `synchronous_standby_names` moved by the real `ha::sync::next_step`;
//! - a network that delays and drops: a DCS request may be dropped, applied with its answer
//!   lost, or land up to 3 s later after its sender gave up on it; a node's DCS link may be cut
//!   both ways or one way (requests arrive, answers do not); node↔node links are cut per
//!   direction (A reaches B while B does not reach A, for `GET /patroni`, streaming and
//!   pg_rewind); peers answer `GET /patroni` with the state of their last cycle, or not at all;
//!   a cycle may be slow, so a node acts on a view of the DCS and its peers taken seconds (or,
//!   when it freezes in between, much longer) before; whole nodes freeze.
//!
//! After every step it checks:
//! - **one writer**: at most one node can acknowledge writes (PostgreSQL runs as primary, the
//!   node is not frozen, and the fence lets commits through: the latest lease deadline a
//!   backend may have read has not passed; a primary that never published a lease counts as a
//!   writer);
//! - **no forked follower**: a former primary only ever streams from a node whose history
//!   contains its own (it rewinds first);
//! - in synchronous mode, **no acknowledged write lost**: a commit is acknowledged once the
//!   standby PostgreSQL picks from its `synchronous_standby_names` has flushed it (at once when
//!   that is empty); every acknowledged position must be in the history of every node that can
//!   write, and no node without it may be promoted.
//!
//! Two deliberately broken decisions (promote without the leader key; a leader race that
//! ignores the `sync` key) must be caught, or the checks prove nothing.
//!
//! A failure prints its seed, the first failing step and a shrunk trace. The run checks after
//! every step and is deterministic, so the shortest failing prefix is the run up to its first
//! violation; from it, fault events and then the other steps are left out, chunk by chunk,
//! while the same kind of violation still happens (each step draws from its own generator, so
//! leaving one out changes no other step's draws). The trace lists fault events, DCS mishaps
//! and decisions, then the state of every node.
//!
//! The simulation found two bugs, fixed with regression tests: a former primary stopped with no
//! leader came up read-only without being marked for a rewind, and followed a winner that was a
//! few records behind it (`decide_tests.rs`); a standby reported `sync` went into the `sync`
//! key before it had the commits acknowledged while it was not yet named, and was promoted
//! without them (`ha::sync::confirmed`).
//!
//! This target has its own `main` (`harness = false` in `Cargo.toml`):
//!
//! ```text
//! cargo test -p spilo-core --test simulation            # CI: 500 async + 300 sync seeds x 10,000 steps
//! cargo test -p spilo-core --test simulation -- --seed N [--sync on|off]    # replay one seed
//! cargo test -p spilo-core --test simulation -- --long  # 1,000,000 seeds per mode, every core
//! ```
//!
//! Other flags: `--seeds N`, `--steps N`, `--first-seed N`, `--sync on|off` (which modes),
//! `--threads N`, `--list`, test-name filters (`--exact`, `--skip`); libtest's other flags are
//! accepted and ignored. `SPILO_SIM_SEED`, `SPILO_SIM_SEEDS`, `SPILO_SIM_STEPS` and
//! `SPILO_SIM_FIRST_SEED` work as before.

// The simulation times its own run on the wall clock (progress lines); the world's clock is
// virtual and never reads it.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spilo_core::api::client::PeerStatus;
use spilo_core::config::DynamicConfig;
use spilo_core::dcs::{
    Cluster, HistoryLine, Leader, Member, MemberData, Status, SyncState, Versioned,
};
use spilo_core::ha::decide::{
    self, Action, CandidateChoice, DataDir, Decision, DemoteMode, LocalView, Peers, Pg, Policy,
    PromotionGate,
};
use spilo_core::ha::plan::{next_rewind_state, RemovalReason, RewindEvent, RewindState};

/// The executor's rewind planner (`ha::plan::next_rewind_state`).
type RewindFn = fn(RewindState, RewindEvent) -> (RewindState, Option<RemovalReason>);
use spilo_core::ha::state::ReplicationRow;
use spilo_core::ha::sync;

const SYSID: &str = "7300000000000000001";
const NODES: usize = 3;
const TTL: u64 = 10_000;
const LOOP_WAIT: u64 = 2_000;
const RETRY: u64 = 3_000;
/// The fence engages this long before the lease can expire (`state_file::FENCE_MARGIN`).
const MARGIN: u64 = 1_000;
/// The longest a DCS request travels before it lands, after its sender gave up on it.
const MAX_DCS_DELAY: u64 = 3_000;
/// Percent of cycles that are slow: the node acts on its view at a later step.
const SLOW_CYCLE: u64 = 10;
/// Percent of DCS requests and peer queries that fail on a flaky node.
const FLAKY: u64 = 20;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The generator of one step: independent of every other step's, so that dropping a step
    /// leaves the others as they were.
    fn for_step(seed: u64, step: usize) -> Rng {
        Rng::new(splitmix(
            splitmix(seed) ^ (step as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93),
        ))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL data

/// What a node's data directory holds: the timelines it went through, as `(timeline, wal
/// position where it started)`, and how far it got.
#[derive(Clone, Debug, PartialEq)]
struct Data {
    lineage: Vec<(u64, u64)>,
    wal: u64,
}

impl Data {
    fn timeline(&self) -> u64 {
        self.lineage.last().map(|l| l.0).unwrap_or(1)
    }

    /// True when `self` is a prefix of `other`'s history (it can stream from `other`).
    fn is_prefix_of(&self, other: &Data) -> bool {
        for (i, &(tl, start)) in self.lineage.iter().enumerate() {
            match other.lineage.get(i) {
                Some(&(otl, ostart)) if otl == tl && ostart == start => {}
                _ => return false,
            }
        }
        // On our last timeline, the other must have continued at least as far, or branched
        // off later than our position.
        match other.lineage.get(self.lineage.len()) {
            Some(&(_, branch)) => branch >= self.wal,
            None => other.wal >= self.wal,
        }
    }

    /// `self` up to `pos` (a replica that has received that much of it).
    fn truncated(&self, pos: u64) -> Data {
        Data {
            lineage: self
                .lineage
                .iter()
                .filter(|l| l.1 <= pos)
                .copied()
                .collect(),
            wal: pos,
        }
    }

    /// The timeline history file, as the leader publishes it in the `history` key.
    fn history(&self) -> Vec<HistoryLine> {
        self.lineage
            .windows(2)
            .map(|w| HistoryLine {
                timeline: w[0].0,
                lsn: w[1].1,
                reason: "promote".into(),
                timestamp: None,
                new_leader: None,
            })
            .collect()
    }
}

/// `timeline@start, …, timeline@start: position` (the last few timelines).
impl std::fmt::Display for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = self.lineage.len().saturating_sub(3);
        if from > 0 {
            write!(f, "… ")?;
        }
        for (tl, start) in &self.lineage[from..] {
            write!(f, "tl{tl}@{start} ")?;
        }
        write!(f, "→ {}", self.wal)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum PgState {
    Stopped,
    Primary,
    /// Streaming from that node (None: following nobody).
    Replica(Option<usize>),
}

// ---------------------------------------------------------------------------------------------
// The network

/// A node's link to the DCS.
#[derive(Clone, Copy, Debug, PartialEq)]
enum DcsLink {
    Up,
    /// Requests do not arrive.
    Down,
    /// Requests arrive and are applied; the answers are lost (the node sees timeouts).
    Deaf,
}

/// A DCS request.
#[derive(Clone, Debug)]
enum Op {
    /// Renew this session (0: none), or make a new one.
    KeepAlive(u64),
    /// Create the leader key bound to this session if it is absent.
    Acquire(u64),
    /// Bind the leader key holding our name to this session (create it if absent).
    Reattach(u64),
    /// Delete the leader key if it holds our name.
    Release,
    PutMember(Box<MemberData>, u64),
    PutStatus(u64),
    PutHistory(Vec<HistoryLine>),
    /// Write the `sync` key if its version is this one (None: if absent).
    PutSync(SyncState, Option<i64>),
}

impl Op {
    fn label(&self) -> &'static str {
        match self {
            Op::KeepAlive(_) => "keep-alive",
            Op::Acquire(_) => "acquire leader",
            Op::Reattach(_) => "re-attach leader",
            Op::Release => "release leader",
            Op::PutMember(..) => "member key",
            Op::PutStatus(_) => "status key",
            Op::PutHistory(_) => "history key",
            Op::PutSync(..) => "sync key",
        }
    }
}

#[derive(Clone, Debug)]
struct LeaderKey {
    name: String,
    version: i64,
    session: u64,
}

/// The DCS: sessions with expiry, and the keys the HA loop reads.
#[derive(Default)]
struct Dcs {
    revision: i64,
    leader: Option<LeaderKey>,
    /// session id → expiry (virtual ms).
    sessions: BTreeMap<u64, u64>,
    /// name → (member data, owning session).
    members: BTreeMap<String, (MemberData, u64)>,
    optime: Option<u64>,
    history: Vec<HistoryLine>,
    sync: Option<(SyncState, i64)>,
    next_session: u64,
}

impl Dcs {
    fn expire(&mut self, now: u64) {
        if !self.sessions.values().any(|&exp| exp <= now) {
            return;
        }
        let dead: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, &exp)| exp <= now)
            .map(|(&s, _)| s)
            .collect();
        for s in dead {
            self.sessions.remove(&s);
            if self.leader.as_ref().map(|l| l.session) == Some(s) {
                self.leader = None;
            }
            self.members.retain(|_, (_, owner)| *owner != s);
        }
    }

    fn alive(&self, session: u64) -> bool {
        session != 0 && self.sessions.contains_key(&session)
    }

    fn bump(&mut self) -> i64 {
        self.revision += 1;
        self.revision
    }

    /// Apply one request from `name` at `now`: (succeeded, session id for a keep-alive).
    fn apply(&mut self, name: &str, op: &Op, now: u64) -> (bool, u64) {
        self.expire(now);
        match op {
            Op::KeepAlive(s) => {
                let id = if self.alive(*s) {
                    *s
                } else {
                    self.next_session += 1;
                    self.next_session
                };
                self.sessions.insert(id, now + TTL);
                (true, id)
            }
            Op::Acquire(s) => {
                if self.leader.is_some() || !self.alive(*s) {
                    return (false, 0);
                }
                let version = self.bump();
                self.leader = Some(LeaderKey {
                    name: name.into(),
                    version,
                    session: *s,
                });
                (true, 0)
            }
            Op::Reattach(s) => {
                if !self.alive(*s) {
                    return (false, 0);
                }
                match &self.leader {
                    Some(l) if l.name != name => (false, 0),
                    _ => {
                        let version = self.bump();
                        self.leader = Some(LeaderKey {
                            name: name.into(),
                            version,
                            session: *s,
                        });
                        (true, 0)
                    }
                }
            }
            Op::Release => {
                if self.leader.as_ref().map(|l| l.name == name) == Some(true) {
                    self.leader = None;
                    self.bump();
                    (true, 0)
                } else {
                    (false, 0)
                }
            }
            Op::PutMember(data, s) => {
                if !self.alive(*s) {
                    return (false, 0);
                }
                self.bump();
                self.members.insert(name.into(), ((**data).clone(), *s));
                (true, 0)
            }
            Op::PutStatus(o) => {
                self.bump();
                self.optime = Some(*o);
                (true, 0)
            }
            Op::PutHistory(h) => {
                self.bump();
                self.history = h.clone();
                (true, 0)
            }
            Op::PutSync(value, cas) => {
                if self.sync.as_ref().map(|s| s.1) != *cas {
                    return (false, 0);
                }
                let v = self.bump();
                self.sync = Some((value.clone(), v));
                (true, 0)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// What `GET /patroni` of a node answers: its PostgreSQL as of the end of its last cycle.
#[derive(Clone, Copy, Debug)]
struct Api {
    primary: bool,
    wal: u64,
    timeline: u64,
}

/// One cycle's observations, taken at `at` (the keep-alive's send time).
struct Obs {
    at: u64,
    session_ok: bool,
    cluster: Option<Cluster>,
    pg: Pg,
    data: DataDir,
    peers: Peers,
    /// `pg_stat_replication` and the flush position, for the leader's housekeeping.
    rows: Vec<ReplicationRow>,
    wal_flush: Option<u64>,
    timeline: u64,
}

struct Node {
    name: String,
    policy: Policy,
    data: Data,
    pg: PgState,
    /// `pg_control`: PostgreSQL last ran as a primary (`in production` / `shut down`).
    ctl_primary: bool,
    /// Ran as primary since its last rewind or copy (for the forked-follower check).
    former_primary: bool,
    // The daemon's state.
    /// The runner's rewind state machine (`ha::plan::next_rewind_state`, the real one).
    rewind: RewindState,
    /// The data directory was removed (after a failed rewind, with
    /// `remove_data_directory_on_rewind_failure`): empty until copied again.
    empty: bool,
    upstream: Option<Option<String>>,
    /// `synchronous_standby_names` the daemon manages (None: not known).
    ssn: Option<String>,
    /// The primary's flush position measured after `ssn` last changed (None: not yet).
    ssn_since: Option<u64>,
    /// This daemon's session id (0: none).
    session: u64,
    /// `lease_renewed_at`: the keep-alive send time of the cycle that found the key ours.
    renewed: Option<u64>,
    /// What the state channel and the state file say (the lease guard and the fence read it).
    published: Option<u64>,
    /// A cycle observed but not acted on yet.
    obs: Option<Box<Obs>>,
    api: Option<Api>,
    // PostgreSQL's state.
    /// `synchronous_standby_names` PostgreSQL runs with (a primary).
    pg_ssn: String,
    /// Commits written but waiting for the synchronous standby.
    pending: Vec<u64>,
    /// The latest fence deadline a backend may have cached in this run as primary.
    fence_until: u64,
    /// As a replica: its walsender reached `streaming` (caught up once since it connected).
    caught_up: bool,
    // The world around it.
    /// Replication to this node lags.
    slow: bool,
    paused: bool,
    dcs: DcsLink,
    flaky: bool,
}

/// The decision function under test (the real one, or a broken one to prove the checker).
type DecideFn = fn(Option<&Cluster>, &LocalView, &Policy, Duration) -> Decision;

/// What kind of violation: shrinking keeps the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    TwoWriters,
    ForkedFollower,
    LostWrite,
}

#[derive(Clone, Debug)]
struct Failure {
    kind: Kind,
    step: usize,
    now: u64,
    message: String,
    /// The world when it failed.
    state: String,
    trace: Vec<String>,
}

/// What happened in a run, to show the schedules exercise failovers at all.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    promotions: u64,
    demotions: u64,
    rewinds: u64,
    writes: u64,
    acked: u64,
    sync_standbys_named: u64,
    slow_cycles: u64,
    requests_failed: u64,
    requests_delayed: u64,
    guard_stops: u64,
    rewinds_failed: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.promotions += o.promotions;
        self.demotions += o.demotions;
        self.rewinds += o.rewinds;
        self.writes += o.writes;
        self.acked += o.acked;
        self.sync_standbys_named += o.sync_standbys_named;
        self.slow_cycles += o.slow_cycles;
        self.requests_failed += o.requests_failed;
        self.requests_delayed += o.requests_delayed;
        self.guard_stops += o.guard_stops;
        self.rewinds_failed += o.rewinds_failed;
    }
}

fn policy(name: &str, synchronous: bool) -> Policy {
    Policy {
        name: name.into(),
        ttl: Duration::from_millis(TTL),
        loop_wait: Duration::from_millis(LOOP_WAIT),
        retry_timeout: Duration::from_millis(RETRY),
        maximum_lag_on_failover: 1 << 20,
        primary_start_timeout: Duration::from_secs(300),
        check_timeline: false,
        use_pg_rewind: true,
        remove_data_directory_on_rewind_failure: false,
        failover_priority: 1,
        paused: false,
        replicatefrom: None,
        synchronous,
        quorum: false,
    }
}

struct World {
    now: u64,
    sync: bool,
    nodes: Vec<Node>,
    dcs: Dcs,
    /// `cut[a][b]`: a cannot open connections to b.
    cut: [[bool; NODES]; NODES],
    /// Requests in flight: (lands at, from node, request).
    inflight: Vec<(u64, usize, Op)>,
    /// The latest acknowledged write (sync mode): the acknowledging primary's history up to it.
    acked: Option<Data>,
    violation: Option<(Kind, String)>,
    decide: DecideFn,
    tracing: bool,
    trace: Vec<String>,
    stats: Stats,
    config: Versioned<DynamicConfig>,
    /// How often (percent) a pg_rewind fails in this world (0 in most worlds).
    rewind_failure_percent: u64,
    /// `remove_data_directory_on_rewind_failure` in this world.
    recopy_on_rewind_failure: bool,
    /// The executor's rewind state machine (the real one, or a broken one the checks must
    /// catch).
    rewind_plan: RewindFn,
}

impl World {
    fn new(sync: bool, decide: DecideFn, tracing: bool) -> World {
        let mut w = World {
            now: 0,
            sync,
            nodes: Vec::new(),
            dcs: Dcs::default(),
            cut: [[false; NODES]; NODES],
            inflight: Vec::new(),
            acked: None,
            violation: None,
            decide,
            tracing,
            trace: Vec::new(),
            stats: Stats::default(),
            config: Versioned {
                value: DynamicConfig::default(),
                version: 1,
            },
            rewind_failure_percent: 0,
            recopy_on_rewind_failure: false,
            rewind_plan: next_rewind_state,
        };
        for i in 0..NODES {
            let name = format!("n{i}");
            w.nodes.push(Node {
                policy: policy(&name, sync),
                name,
                data: Data {
                    lineage: vec![(1, 0)],
                    wal: 1000,
                },
                pg: if i == 0 {
                    PgState::Primary
                } else {
                    PgState::Replica(Some(0))
                },
                ctl_primary: i == 0,
                former_primary: i == 0,
                rewind: RewindState::NotNeeded,
                empty: false,
                upstream: Some(if i == 0 { None } else { Some("n0".into()) }),
                ssn: (i == 0 && sync).then(String::new),
                ssn_since: None,
                session: 0,
                renewed: None,
                published: None,
                obs: None,
                api: None,
                pg_ssn: String::new(),
                pending: Vec::new(),
                fence_until: 0,
                caught_up: i != 0,
                slow: false,
                paused: false,
                dcs: DcsLink::Up,
                flaky: false,
            });
        }
        if sync {
            // Synchronous mode from the start: n0 named itself in the `sync` key.
            w.dcs.sync = Some((
                SyncState {
                    leader: Some("n0".into()),
                    quorum: 0,
                    sync_standby: None,
                },
                1,
            ));
        }
        w.dcs.revision = 1;
        w.dcs.leader = Some(LeaderKey {
            name: "n0".into(),
            version: 1,
            session: 0,
        });
        // A first cycle of every node: n0 makes a session and re-attaches the key.
        let mut rng = Rng::new(0);
        for i in 0..NODES {
            let obs = w.observe(i, &mut rng);
            w.act_on(i, obs, &mut rng);
        }
        w
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if self.tracing {
            let l = line();
            self.trace.push(format!("t={:>8} {l}", self.now));
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Whether node `i` can acknowledge a write now: PostgreSQL runs as primary, the node is
    /// not frozen, and the fence lets commits through (a backend may still hold the latest
    /// deadline published while it ran as primary). A primary that never published a lease
    /// counts as a writer.
    fn can_ack(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.pg == PgState::Primary && !n.paused && self.fence_open(i)
    }

    fn fence_open(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        match n.published {
            None if n.fence_until == 0 => true,
            _ => self.now < n.fence_until,
        }
    }

    /// The daemon's state goes to the state channel and the state file.
    fn publish(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.published = n.renewed;
        if n.pg == PgState::Primary {
            if let Some(r) = n.published {
                n.fence_until = n.fence_until.max(r + TTL - MARGIN);
            }
        }
    }

    /// PostgreSQL becomes a primary (a new run as primary: backends read the state file anew).
    fn became_primary(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.pg = PgState::Primary;
        n.ctl_primary = true;
        n.former_primary = true;
        n.caught_up = false;
        n.pending.clear();
        n.fence_until = n.published.map(|r| r + TTL - MARGIN).unwrap_or(0);
    }

    /// PostgreSQL stops (any mode); waiting commits fail.
    fn stop_pg(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.pg != PgState::Stopped {
            n.ctl_primary = n.pg == PgState::Primary;
        }
        n.pg = PgState::Stopped;
        n.pending.clear();
        n.caught_up = false;
        n.fence_until = 0;
    }

    fn reaches(&self, a: usize, b: usize) -> bool {
        !self.cut[a][b]
    }

    // -----------------------------------------------------------------------------------------
    // DCS requests

    /// One DCS request from node `i`: its answer, or None when it failed or timed out (it may
    /// still have been applied, or land later).
    fn request(&mut self, i: usize, op: Op, rng: &mut Rng) -> Option<(bool, u64)> {
        let link = self.nodes[i].dcs;
        if link == DcsLink::Down {
            self.stats.requests_failed += 1;
            return None;
        }
        if self.nodes[i].flaky && rng.chance(FLAKY) {
            self.stats.requests_failed += 1;
            let name = self.nodes[i].name.clone();
            match rng.below(3) {
                0 => {
                    self.note(|| format!("{name}: {} request dropped", op.label()));
                }
                1 => {
                    self.note(|| format!("{name}: {} applied, answer lost", op.label()));
                    let now = self.now;
                    self.dcs.apply(&name, &op, now);
                }
                _ => {
                    let at = self.now + 1 + rng.below(MAX_DCS_DELAY);
                    self.note(|| format!("{name}: {} delayed until t={at}", op.label()));
                    self.stats.requests_delayed += 1;
                    self.inflight.push((at, i, op));
                }
            }
            return None;
        }
        let now = self.now;
        let name = &self.nodes[i].name;
        let answer = self.dcs.apply(name, &op, now);
        if link == DcsLink::Deaf {
            self.stats.requests_failed += 1;
            return None;
        }
        Some(answer)
    }

    /// A linearizable read of every key, or None.
    fn read(&mut self, i: usize, rng: &mut Rng) -> Option<Cluster> {
        if self.nodes[i].dcs != DcsLink::Up || (self.nodes[i].flaky && rng.chance(FLAKY)) {
            self.stats.requests_failed += 1;
            return None;
        }
        self.dcs.expire(self.now);
        Some(self.cluster_for(i))
    }

    fn cluster_for(&self, i: usize) -> Cluster {
        let me = &self.nodes[i];
        let ours = |s: u64| s == me.session && me.session != 0;
        Cluster {
            revision: self.dcs.revision,
            initialize: Some(SYSID.into()),
            config: Some(self.config.clone()),
            config_raw: None,
            leader: self.dcs.leader.as_ref().map(|l| Leader {
                name: l.name.clone(),
                version: l.version,
                owned_by_us: ours(l.session),
                // The simulated key is re-created by every acquire and re-attach, at a new
                // revision: that revision is its creation counter.
                term: spilo_sdk::Term::from_created(Some(l.version)),
            }),
            members: self
                .dcs
                .members
                .iter()
                .map(|(name, (data, owner))| Member {
                    name: name.clone(),
                    data: data.clone(),
                    version: 1,
                    owned_by_us: ours(*owner),
                })
                .collect(),
            status: self.dcs.optime.map(|o| Status {
                optime: Some(o),
                ..Status::default()
            }),
            failover: None,
            sync: self.dcs.sync.as_ref().map(|(v, version)| Versioned {
                value: v.clone(),
                version: *version,
            }),
            history: Some(self.dcs.history.clone()),
            warnings: Vec::new(),
        }
    }

    fn member_data(&self, i: usize) -> MemberData {
        let n = &self.nodes[i];
        let running = n.pg != PgState::Stopped;
        MemberData {
            conn_url: format!("postgres://10.0.0.{i}:5432/postgres"),
            api_url: format!("http://10.0.0.{i}:8008/patroni"),
            state: if running { "running" } else { "stopped" }.into(),
            role: match n.pg {
                PgState::Primary => "primary",
                PgState::Stopped if n.ctl_primary => "demoted",
                _ => "replica",
            }
            .into(),
            xlog_location: Some(n.data.wal),
            timeline: Some(n.data.timeline()),
            replication_state: matches!(n.pg, PgState::Replica(Some(_)))
                .then(|| "streaming".to_string()),
            ..MemberData::default()
        }
    }

    // -----------------------------------------------------------------------------------------
    // PostgreSQL observed

    /// Whether replica `r` streams from `u` now: it follows `u`, reaches it, `u` runs, and its
    /// history is a prefix of `u`'s (PostgreSQL refuses to stream across a fork).
    fn connected(&self, r: usize, u: usize) -> bool {
        let (rn, un) = (&self.nodes[r], &self.nodes[u]);
        rn.pg == PgState::Replica(Some(u))
            && un.pg != PgState::Stopped
            && self.reaches(r, u)
            && rn.data.is_prefix_of(&un.data)
    }

    /// The synchronous standbys of primary `p` now, as PostgreSQL picks them from its
    /// `synchronous_standby_names` (priority order, streaming walsenders only).
    fn sync_standbys(&self, p: usize) -> Vec<usize> {
        let ssn = sync::parse_ssn(&self.nodes[p].pg_ssn);
        let mut out = Vec::new();
        for name in &ssn.names {
            if out.len() >= ssn.count {
                break;
            }
            if let Some(r) = self.index(name) {
                if r != p && self.connected(r, p) && self.nodes[r].caught_up {
                    out.push(r);
                }
            }
        }
        out
    }

    /// `pg_stat_replication` on primary `p`.
    fn rows(&self, p: usize) -> Vec<ReplicationRow> {
        let ssn = sync::parse_ssn(&self.nodes[p].pg_ssn);
        let standbys = self.sync_standbys(p);
        (0..NODES)
            .filter(|&r| r != p && self.connected(r, p))
            .map(|r| {
                let n = &self.nodes[r];
                let sync_state = if standbys.contains(&r) {
                    "sync"
                } else if sync::listed(&ssn.names, &n.name) {
                    "potential"
                } else {
                    "async"
                };
                ReplicationRow {
                    application_name: n.name.clone(),
                    state: if n.caught_up { "streaming" } else { "catchup" }.into(),
                    sync_state: sync_state.into(),
                    flush_lsn: Some(n.data.wal),
                    ..ReplicationRow::default()
                }
            })
            .collect()
    }

    fn peers_for(&self, i: usize, rng: &mut Rng) -> Vec<PeerStatus> {
        let flaky = self.nodes[i].flaky;
        (0..NODES)
            .filter(|&j| j != i)
            .map(|j| {
                let p = &self.nodes[j];
                let answer = match p.api {
                    Some(a) if self.reaches(i, j) && !p.paused => Some(a),
                    _ => None,
                };
                let Some(a) = answer.filter(|_| !(flaky && rng.chance(FLAKY))) else {
                    return PeerStatus::unreachable(&p.name);
                };
                PeerStatus {
                    name: p.name.clone(),
                    reachable: true,
                    role: Some(if a.primary { "primary" } else { "replica" }.into()),
                    in_recovery: !a.primary,
                    wal_position: Some(a.wal),
                    timeline: Some(a.timeline),
                    nofailover: false,
                    failover_priority: 1,
                    promotion_veto: None,
                }
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // The daemon's cycle

    /// One step of node `i`'s daemon: a whole cycle, or half of a slow one.
    fn cycle(&mut self, i: usize, rng: &mut Rng) {
        if self.nodes[i].paused {
            return;
        }
        if let Some(obs) = self.nodes[i].obs.take() {
            self.act_on(i, *obs, rng);
            return;
        }
        let obs = self.observe(i, rng);
        if rng.chance(SLOW_CYCLE) {
            self.stats.slow_cycles += 1;
            let name = self.nodes[i].name.clone();
            self.note(|| format!("{name}: slow cycle, acts later on this view"));
            self.nodes[i].obs = Some(Box::new(obs));
        } else {
            self.act_on(i, obs, rng);
        }
    }

    /// The observing half of a cycle: keep-alive, read, PostgreSQL, peers.
    fn observe(&mut self, i: usize, rng: &mut Rng) -> Obs {
        let at = self.now;
        let session = self.nodes[i].session;
        let mut session_ok = match self.request(i, Op::KeepAlive(session), rng) {
            Some((_, id)) => {
                if id == session && self.nodes[i].renewed.is_some() {
                    // The same lease, renewed: the lease guard learns at once.
                    self.nodes[i].renewed = Some(at);
                    self.publish(i);
                }
                self.nodes[i].session = id;
                true
            }
            None => false,
        };
        let cluster = if session_ok { self.read(i, rng) } else { None };
        session_ok &= cluster.is_some();
        let holds = cluster
            .as_ref()
            .and_then(|c| c.leader.as_ref())
            .map(|l| l.name == self.nodes[i].name && l.owned_by_us)
            .unwrap_or(false);
        self.nodes[i].renewed = (session_ok && holds).then_some(at);
        let n = &self.nodes[i];
        let (pg, data) = match n.pg {
            PgState::Stopped if n.empty => (Pg::Stopped, DataDir::Empty),
            PgState::Stopped => (
                Pg::Stopped,
                DataDir::Initialized {
                    sysid: Some(SYSID.into()),
                    was_primary: n.ctl_primary,
                    crashed: false,
                    timeline: Some(n.data.timeline()),
                },
            ),
            state => (
                Pg::Running {
                    primary: state == PgState::Primary,
                    timeline: Some(n.data.timeline()),
                    wal_position: Some(n.data.wal),
                    streaming: matches!(state, PgState::Replica(Some(u)) if self.connected(i, u)),
                },
                DataDir::Initialized {
                    sysid: Some(SYSID.into()),
                    was_primary: state == PgState::Primary,
                    crashed: false,
                    timeline: Some(n.data.timeline()),
                },
            ),
        };
        // Peers are asked when the runner's planner says so (the same function).
        let peers = if decide::peers_needed(cluster.as_ref(), &pg, &self.nodes[i].name, false) {
            Peers::Queried(self.peers_for(i, rng))
        } else {
            Peers::NotQueried
        };
        let primary = n.pg == PgState::Primary;
        Obs {
            at,
            session_ok,
            cluster,
            pg,
            data,
            peers,
            rows: if primary { self.rows(i) } else { Vec::new() },
            wal_flush: primary.then_some(n.data.wal),
            timeline: n.data.timeline(),
        }
    }

    /// The acting half: decide on the observations, carry out the plan, publish.
    fn act_on(&mut self, i: usize, obs: Obs, rng: &mut Rng) {
        let n = &self.nodes[i];
        let local = LocalView {
            session_ok: obs.session_ok,
            data: obs.data.clone(),
            pg: obs.pg.clone(),
            job: None,
            upstream: n.upstream.clone(),
            needs_rewind: n.rewind.needed(),
            rewind_failed: n.rewind.failed(),
            down_since: None,
            peers: obs.peers.clone(),
            lease_renewed_at: n.renewed.map(Duration::from_millis),
            unix_now: 1_800_000_000 + (obs.at / 1000) as i64,
            clone_from_leader: false,
            promotion_gate: PromotionGate::Open,
            candidate_choice: CandidateChoice::Default,
            bootstrap_failed: None,
        };
        let d = (self.decide)(
            obs.cluster.as_ref(),
            &local,
            &n.policy,
            Duration::from_millis(obs.at),
        );
        // Steady leadership is left out of the trace.
        if !d.actions.is_empty() && d.actions != [Action::LeaderHousekeeping] {
            let name = n.name.clone();
            let (at, now) = (obs.at, self.now);
            self.note(|| {
                let seen = if at == now {
                    String::new()
                } else {
                    format!(" (on its view of t={at})")
                };
                format!("{name}{seen}: {}", d.summary())
            });
        }
        for a in &d.actions {
            if !self.act(i, a, &obs, rng) {
                let name = self.nodes[i].name.clone();
                self.note(|| format!("{name}: '{a}' failed; the rest of the plan is dropped"));
                break;
            }
        }
        if obs.session_ok {
            let md = Box::new(self.member_data(i));
            let s = self.nodes[i].session;
            self.request(i, Op::PutMember(md, s), rng);
        }
        let n = &mut self.nodes[i];
        n.api = (n.pg != PgState::Stopped).then(|| Api {
            primary: n.pg == PgState::Primary,
            wal: n.data.wal,
            timeline: n.data.timeline(),
        });
        self.publish(i);
    }

    /// Carries out one action as the runner does; false stops the plan.
    fn act(&mut self, i: usize, a: &Action, obs: &Obs, rng: &mut Rng) -> bool {
        let rewind_plan = self.rewind_plan;
        let known = |name: &str| {
            obs.cluster
                .as_ref()
                .map(|c| c.member(name).is_some())
                .unwrap_or(false)
        };
        match a {
            Action::AcquireLeader => {
                let s = self.nodes[i].session;
                match self.request(i, Op::Acquire(s), rng) {
                    Some((true, _)) => {
                        let n = &mut self.nodes[i];
                        n.renewed = Some(obs.at);
                        n.rewind = (rewind_plan)(n.rewind, RewindEvent::AcquiredLeader).0;
                        true
                    }
                    _ => false,
                }
            }
            Action::ReattachLeader => {
                let s = self.nodes[i].session;
                match self.request(i, Op::Reattach(s), rng) {
                    Some((true, _)) => {
                        self.nodes[i].renewed = Some(obs.at);
                        true
                    }
                    _ => false,
                }
            }
            Action::ReleaseLeader => {
                self.nodes[i].renewed = None;
                self.request(i, Op::Release, rng).is_some()
            }
            Action::Promote => self.promote(i, obs, rng),
            Action::Demote(mode) => {
                self.demote(i, *mode, rng);
                true
            }
            Action::StartPrimary => {
                if self.nodes[i].pg != PgState::Stopped {
                    return false;
                }
                self.became_primary(i);
                let n = &mut self.nodes[i];
                n.pg_ssn = n.ssn.clone().unwrap_or_default();
                true
            }
            Action::StartReplica(up) => {
                if self.nodes[i].pg != PgState::Stopped {
                    return false;
                }
                let j = match up {
                    Some(m) if !known(m) => return false,
                    Some(m) => self.index(m),
                    None => None,
                };
                let n = &mut self.nodes[i];
                n.pg = PgState::Replica(j);
                n.ctl_primary = false;
                n.caught_up = false;
                n.upstream = Some(up.clone());
                true
            }
            Action::Follow(up) => {
                if self.nodes[i].pg == PgState::Stopped {
                    return false;
                }
                let j = match up {
                    Some(m) if !known(m) => return false,
                    Some(m) => self.index(m),
                    None => None,
                };
                let n = &mut self.nodes[i];
                if n.pg != PgState::Primary {
                    n.pg = PgState::Replica(j);
                    n.caught_up = false;
                }
                n.upstream = Some(up.clone());
                true
            }
            Action::StartRewind(from) | Action::StartClone(from) => {
                let Some(j) = self.index(from) else {
                    return false;
                };
                if !known(from)
                    || self.nodes[i].pg != PgState::Stopped
                    || !self.reaches(i, j)
                    || self.nodes[j].paused
                    || self.nodes[j].pg == PgState::Stopped
                {
                    return false;
                }
                // Some worlds have pg_rewind fail now and then; the runner's state machine
                // decides what follows (remove the data directory and copy it again, or wait
                // for the operator).
                let is_rewind = matches!(a, Action::StartRewind(_));
                if is_rewind
                    && self.rewind_failure_percent > 0
                    && rng.chance(self.rewind_failure_percent)
                {
                    self.stats.rewinds_failed += 1;
                    let event = RewindEvent::RewindFailed {
                        recopy_allowed: self.recopy_on_rewind_failure,
                    };
                    let (state, removal) = (self.rewind_plan)(self.nodes[i].rewind, event);
                    let n = &mut self.nodes[i];
                    n.rewind = state;
                    if removal.is_some() {
                        n.empty = true;
                        n.data = Data {
                            lineage: vec![(1, 0)],
                            wal: 0,
                        };
                        n.ctl_primary = false;
                        n.former_primary = false;
                    }
                    let name = n.name.clone();
                    self.note(|| format!("{name}: pg_rewind from {from} failed ({removal:?})"));
                    return false;
                }
                // pg_rewind / pg_basebackup: our data becomes a prefix of the source's.
                self.stats.rewinds += 1;
                let src = self.nodes[j].data.clone();
                let n = &mut self.nodes[i];
                n.data = src;
                n.empty = false;
                if is_rewind {
                    n.rewind = (rewind_plan)(n.rewind, RewindEvent::RewindDone).0;
                }
                n.ctl_primary = false;
                n.former_primary = false;
                n.pg = PgState::Replica(Some(j));
                n.caught_up = false;
                n.upstream = Some(Some(from.clone()));
                true
            }
            Action::LeaderHousekeeping => {
                self.housekeeping(i, obs, rng);
                true
            }
            Action::WriteInitialize(_) | Action::ClearFailover(_) => true,
            Action::StartBootstrap | Action::AbandonBootstrap | Action::Fatal(_) => false,
        }
    }

    fn promote(&mut self, i: usize, obs: &Obs, rng: &mut Rng) -> bool {
        match self.nodes[i].pg {
            PgState::Stopped => return false,
            PgState::Primary => return true,
            PgState::Replica(_) => {}
        }
        if self.sync {
            // The runner names itself in the `sync` key with no standby first (compare-and-set
            // on the version it read), or postpones the promotion.
            let cas = obs
                .cluster
                .as_ref()
                .and_then(|c| c.sync.as_ref())
                .map(|s| s.version);
            let value = SyncState {
                leader: Some(self.nodes[i].name.clone()),
                quorum: 0,
                sync_standby: None,
            };
            if self.request(i, Op::PutSync(value, cas), rng) != Some((true, 0)) {
                return false;
            }
            self.nodes[i].ssn = Some(sync::ssn(&[], 1, false));
        } else {
            self.nodes[i].ssn = None;
        }
        self.nodes[i].ssn_since = None;
        if self.sync {
            if let Some(a) = &self.acked {
                if !a.is_prefix_of(&self.nodes[i].data) {
                    let msg = format!(
                        "{} is promoted at [{}] without the acknowledged write [{}]",
                        self.nodes[i].name, self.nodes[i].data, a
                    );
                    self.violation.get_or_insert((Kind::LostWrite, msg));
                }
            }
        }
        self.stats.promotions += 1;
        let n = &mut self.nodes[i];
        let tl = n.data.timeline();
        let at = n.data.wal;
        n.data.lineage.push((tl + 1, at));
        n.upstream = Some(None);
        // The standby configuration had no synchronous_standby_names.
        n.pg_ssn = String::new();
        self.became_primary(i);
        true
    }

    fn demote(&mut self, i: usize, mode: DemoteMode, rng: &mut Rng) {
        let rewind_plan = self.rewind_plan;
        self.stats.demotions += 1;
        if mode == DemoteMode::Graceful {
            // Fast stop: connected standbys receive everything first; then the status and the
            // key are handed over.
            for r in 0..NODES {
                if r != i && self.connected(r, i) {
                    self.nodes[r].data = self.nodes[i].data.clone();
                }
            }
            let was_held = self.nodes[i].renewed.take().is_some();
            self.stop_pg(i);
            let n = &mut self.nodes[i];
            n.rewind = (rewind_plan)(n.rewind, RewindEvent::StoppedAsPrimary).0;
            n.upstream = None;
            n.ssn = None;
            n.ssn_since = None;
            if was_held {
                let wal = self.nodes[i].data.wal;
                self.request(i, Op::PutStatus(wal), rng);
                self.request(i, Op::Release, rng);
            }
            return;
        }
        self.stop_pg(i);
        let n = &mut self.nodes[i];
        n.renewed = None;
        n.ssn = None;
        n.ssn_since = None;
        n.rewind = (rewind_plan)(n.rewind, RewindEvent::StoppedAsPrimary).0;
        n.upstream = None;
        if mode == DemoteMode::Offline {
            n.pg = PgState::Replica(None);
            n.ctl_primary = false;
            n.upstream = Some(None);
        }
    }

    /// The leader's bookkeeping: status, history, and in synchronous mode the `sync` key and
    /// `synchronous_standby_names`, one invariant-keeping step at a time (the runner's
    /// `sync_housekeeping`, on the real `sync::candidates` and `sync::next_step`).
    fn housekeeping(&mut self, i: usize, obs: &Obs, rng: &mut Rng) {
        let Some(c) = &obs.cluster else { return };
        if let Some(wal) = obs.wal_flush {
            self.request(i, Op::PutStatus(wal), rng);
        }
        if obs.timeline > 1 && c.timeline() != obs.timeline {
            let h = self.nodes[i].data.history();
            self.request(i, Op::PutHistory(h), rng);
        }
        if !self.sync {
            return;
        }
        let me = self.nodes[i].name.clone();
        let ours = sync::key_leader(c) == Some(me.as_str());
        let version = c.sync.as_ref().map(|v| v.version);
        let n = &mut self.nodes[i];
        if n.ssn.is_none() {
            n.ssn = Some(n.pg_ssn.clone());
            n.ssn_since = None;
        }
        if n.ssn_since.is_none() {
            n.ssn_since = obs.wal_flush;
        }
        let mut wanted = sync::candidates(c, &me, &obs.rows, obs.wal_flush, None);
        wanted.truncate(1);
        let confirmed = sync::confirmed(&obs.rows, self.nodes[i].ssn_since);
        let mut key: Option<Vec<String>> = ours.then(|| sync::key_standbys(c));
        let mut wrote = false;
        for _ in 0..3 {
            let current = self.nodes[i].ssn.clone().unwrap_or_default();
            match sync::next_step(key.as_deref(), &wanted, &current, &confirmed, 1, false) {
                sync::SyncStep::Steady => return,
                sync::SyncStep::WriteKey(list) => {
                    if wrote {
                        return;
                    }
                    let mut names = list.clone();
                    names.sort();
                    let value = SyncState {
                        leader: Some(me.clone()),
                        quorum: 0,
                        sync_standby: (!names.is_empty()).then(|| names.join(",")),
                    };
                    match self.request(i, Op::PutSync(value, version), rng) {
                        Some((true, _)) => {
                            if !list.is_empty() {
                                self.stats.sync_standbys_named += 1;
                            }
                            let l = list.clone();
                            self.note(|| format!("{me}: sync key names {l:?}"));
                            key = Some(list);
                            wrote = true;
                        }
                        _ => return,
                    }
                }
                sync::SyncStep::SetSsn(v) => {
                    self.nodes[i].ssn = Some(v.clone());
                    self.nodes[i].ssn_since = None;
                    if self.nodes[i].pg == PgState::Primary {
                        let vv = v.clone();
                        self.note(|| format!("{me}: synchronous_standby_names = '{vv}'"));
                        self.nodes[i].pg_ssn = v;
                        self.release_commits(i);
                    }
                    return;
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Time passing: delayed requests, the lease guard, writes, replication

    /// A commit at `pos` on primary `p` is acknowledged.
    fn ack(&mut self, p: usize, pos: u64) {
        self.stats.acked += 1;
        let d = self.nodes[p].data.truncated(pos);
        match &self.acked {
            Some(a) if !a.is_prefix_of(&d) => {
                let msg = format!(
                    "{} acknowledges [{}] on a history without the acknowledged write [{}]",
                    self.nodes[p].name, d, a
                );
                self.violation.get_or_insert((Kind::LostWrite, msg));
            }
            _ => self.acked = Some(d),
        }
    }

    /// Commits waiting on primary `p` that its synchronous standby has flushed (all of them
    /// when `synchronous_standby_names` is empty) are acknowledged.
    fn release_commits(&mut self, p: usize) {
        if self.nodes[p].pending.is_empty() || self.nodes[p].paused {
            return;
        }
        let upto = if sync::parse_ssn(&self.nodes[p].pg_ssn).names.is_empty() {
            u64::MAX
        } else {
            let standbys = self.sync_standbys(p);
            if standbys.is_empty() {
                return;
            }
            standbys
                .iter()
                .map(|&r| self.nodes[r].data.wal)
                .min()
                .unwrap_or(0)
        };
        let pending = std::mem::take(&mut self.nodes[p].pending);
        let (done, wait): (Vec<u64>, Vec<u64>) = pending.into_iter().partition(|&x| x <= upto);
        self.nodes[p].pending = wait;
        if let Some(&last) = done.last() {
            self.stats.acked += done.len() as u64 - 1;
            self.ack(p, last);
        }
    }

    fn advance(&mut self, ms: u64, rng: &mut Rng) {
        let end = self.now + ms;
        // Requests in flight land in order.
        if !self.inflight.is_empty() {
            self.inflight.sort_by_key(|x| x.0);
            while self.inflight.first().map(|x| x.0 <= end) == Some(true) {
                let (at, i, op) = self.inflight.remove(0);
                self.now = at;
                let name = self.nodes[i].name.clone();
                let (ok, _) = self.dcs.apply(&name, &op, at);
                self.note(|| {
                    format!(
                        "{name}'s delayed {} lands: {}",
                        op.label(),
                        if ok { "applied" } else { "refused" }
                    )
                });
            }
        }
        self.now = end;
        self.dcs.expire(end);
        // The lease guard stops a primary whose renewal is overdue.
        for i in 0..NODES {
            let n = &self.nodes[i];
            if let (PgState::Primary, false, Some(r)) = (n.pg, n.paused, n.published) {
                if end >= r + TTL - RETRY {
                    self.stats.guard_stops += 1;
                    let name = n.name.clone();
                    self.note(|| format!("{name}: the lease guard stops PostgreSQL"));
                    self.stop_pg(i);
                }
            }
        }
        // A client writes to every node that can acknowledge.
        for i in 0..NODES {
            if self.can_ack(i) && rng.chance(70) {
                self.stats.writes += 1;
                self.nodes[i].data.wal += 100;
                if self.sync {
                    let pos = self.nodes[i].data.wal;
                    self.nodes[i].pending.push(pos);
                }
            }
        }
        // Streaming replicas receive WAL, all of it or (when slow) part of it.
        for r in 0..NODES {
            let PgState::Replica(Some(u)) = self.nodes[r].pg else {
                continue;
            };
            if !self.connected(r, u) {
                self.nodes[r].caught_up = false;
                continue;
            }
            if self.nodes[r].paused || self.nodes[u].paused {
                continue;
            }
            let target = self.nodes[u].data.wal;
            let have = self.nodes[r].data.wal;
            let pos = if self.nodes[r].slow && rng.chance(60) {
                have + rng.below(target - have + 1)
            } else {
                target
            };
            self.nodes[r].data = self.nodes[u].data.truncated(pos);
            if pos == target {
                self.nodes[r].caught_up = true;
            }
        }
        if self.sync {
            for p in 0..NODES {
                if self.nodes[p].pg == PgState::Primary {
                    self.release_commits(p);
                }
            }
        }
    }

    /// The world in a few lines, for a failure report.
    fn describe(&self) -> String {
        let mut out = vec![format!(
            "state: leader key {:?}, sync key {:?}, acknowledged up to [{}]",
            self.dcs.leader.as_ref().map(|l| &l.name),
            self.dcs
                .sync
                .as_ref()
                .map(|s| (&s.0.leader, &s.0.sync_standby)),
            self.acked
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "-".into()),
        )];
        for (i, n) in self.nodes.iter().enumerate() {
            let cuts: Vec<String> = (0..NODES)
                .filter(|&j| self.cut[i][j])
                .map(|j| format!("-x->{}", self.nodes[j].name))
                .collect();
            out.push(format!(
                "  {}: {:?} [{}]{}, renewed {:?}, fence until {}, dcs {:?}{}{}{}{}",
                n.name,
                n.pg,
                n.data,
                if n.pg == PgState::Primary && self.sync {
                    format!(", ssn '{}'", n.pg_ssn)
                } else {
                    String::new()
                },
                n.published,
                n.fence_until,
                n.dcs,
                if n.paused { ", frozen" } else { "" },
                match n.rewind {
                    RewindState::NotNeeded => "",
                    RewindState::Needed => ", needs rewind",
                    RewindState::Failed => ", rewind failed",
                },
                if n.slow { ", slow replication" } else { "" },
                if cuts.is_empty() {
                    String::new()
                } else {
                    format!(", cut {}", cuts.join(" "))
                },
            ));
        }
        out.join("\n")
    }

    // -----------------------------------------------------------------------------------------
    // The invariants

    fn check(&mut self) -> Result<(), (Kind, String)> {
        if let Some(v) = self.violation.take() {
            return Err(v);
        }
        let writers: Vec<&str> = (0..NODES)
            .filter(|&i| self.can_ack(i))
            .map(|i| self.nodes[i].name.as_str())
            .collect();
        if writers.len() > 1 {
            return Err((
                Kind::TwoWriters,
                format!("two nodes acknowledge writes: {writers:?}"),
            ));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let PgState::Replica(Some(j)) = n.pg {
                if self.reaches(i, j)
                    && n.former_primary
                    && !n.rewind.needed()
                    && !n.data.is_prefix_of(&self.nodes[j].data)
                {
                    // Streaming is refused by PostgreSQL itself on a fork; the invariant is
                    // that spilo never points a forked former primary at it without a rewind.
                    return Err((
                        Kind::ForkedFollower,
                        format!(
                            "{} follows {} on a forked history without a rewind ([{}] vs [{}])",
                            n.name, self.nodes[j].name, n.data, self.nodes[j].data
                        ),
                    ));
                }
            }
        }
        if let Some(a) = &self.acked {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.pg == PgState::Primary && self.fence_open(i) && !a.is_prefix_of(&n.data) {
                    return Err((
                        Kind::LostWrite,
                        format!(
                            "{} can write at [{}] but lacks the acknowledged write [{}]",
                            n.name, n.data, a
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Schedules

/// One step of a schedule.
#[derive(Clone, Copy, Debug)]
enum Step {
    Cycle(usize),
    Advance(u64),
    /// Cut node↔DCS (both ways, or answers only), or restore it.
    DcsLink(usize, DcsLink),
    /// Toggle a→b, b→a or both.
    PeerLink(usize, usize, u8),
    Pause(usize),
    Crash(usize),
    Flaky(usize),
    SlowReplication(usize),
    Heal,
}

impl Step {
    /// Drawn from the step's own generator first, so it never depends on the world.
    fn draw(rng: &mut Rng) -> Step {
        let i = rng.below(NODES as u64) as usize;
        match rng.below(100) {
            0..=59 => Step::Cycle(i),
            60..=74 => Step::Advance(100 + rng.below(LOOP_WAIT)),
            75..=77 => Step::DcsLink(
                i,
                if rng.chance(50) {
                    DcsLink::Down
                } else {
                    DcsLink::Deaf
                },
            ),
            78..=80 => {
                let j = (i + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
                Step::PeerLink(i, j, rng.below(3) as u8)
            }
            81..=83 => Step::Pause(i),
            84..=85 => Step::Crash(i),
            86..=87 => Step::Flaky(i),
            88..=90 => Step::SlowReplication(i),
            _ => Step::Heal,
        }
    }

    fn is_fault(&self) -> bool {
        !matches!(self, Step::Cycle(_) | Step::Advance(_))
    }
}

/// How one run goes.
#[derive(Clone, Copy)]
struct RunCfg<'a> {
    sync: bool,
    decide: DecideFn,
    /// The executor's rewind planner.
    rewind: RewindFn,
    /// Steps to leave out (shrinking).
    skip: Option<&'a [bool]>,
    tracing: bool,
}

/// One random schedule: what happened, or the failure.
fn run(seed: u64, steps: usize, cfg: RunCfg<'_>) -> Result<Stats, Box<Failure>> {
    let mut w = World::new(cfg.sync, cfg.decide, cfg.tracing);
    w.rewind_plan = cfg.rewind;
    // One world in three has failing rewinds, half of those with re-copying allowed.
    match seed % 6 {
        1 => {
            w.rewind_failure_percent = 50;
            w.recopy_on_rewind_failure = true;
        }
        4 => w.rewind_failure_percent = 50,
        _ => {}
    }
    for k in 0..steps {
        let mut rng = Rng::for_step(seed, k);
        let step = Step::draw(&mut rng);
        let skipped = cfg.skip.and_then(|s| s.get(k)).copied().unwrap_or(false);
        if !skipped {
            w.step(k, step, &mut rng);
        }
        if let Err((kind, message)) = w.check() {
            return Err(Box::new(Failure {
                kind,
                step: k,
                now: w.now,
                message,
                state: w.describe(),
                trace: std::mem::take(&mut w.trace),
            }));
        }
    }
    Ok(w.stats)
}

impl World {
    fn step(&mut self, k: usize, step: Step, rng: &mut Rng) {
        let name = |i: usize| format!("n{i}");
        let what = match step {
            Step::Cycle(i) => return self.cycle(i, rng),
            Step::Advance(ms) => return self.advance(ms, rng),
            Step::DcsLink(i, link) => {
                let n = &mut self.nodes[i];
                n.dcs = if n.dcs == DcsLink::Up {
                    link
                } else {
                    DcsLink::Up
                };
                match n.dcs {
                    DcsLink::Up => format!("{}↔DCS restored", name(i)),
                    DcsLink::Down => format!("{}↔DCS cut", name(i)),
                    DcsLink::Deaf => format!("DCS→{} cut (its requests still arrive)", name(i)),
                }
            }
            Step::PeerLink(a, b, how) => {
                let both = !self.cut[a][b];
                match how {
                    0 => self.cut[a][b] = !self.cut[a][b],
                    1 => self.cut[b][a] = !self.cut[b][a],
                    _ => {
                        self.cut[a][b] = both;
                        self.cut[b][a] = both;
                    }
                }
                let link = |x: usize, y: usize| {
                    format!(
                        "{}→{} {}",
                        name(x),
                        name(y),
                        if self.cut[x][y] { "cut" } else { "up" }
                    )
                };
                format!("{}, {}", link(a, b), link(b, a))
            }
            Step::Pause(i) => {
                self.nodes[i].paused = !self.nodes[i].paused;
                format!(
                    "{} {}",
                    name(i),
                    if self.nodes[i].paused {
                        "freezes"
                    } else {
                        "resumes"
                    }
                )
            }
            Step::Crash(i) => {
                // PostgreSQL crashes (the daemon restarts it in place).
                if self.nodes[i].paused || self.nodes[i].pg == PgState::Stopped {
                    return;
                }
                self.stop_pg(i);
                format!("{}: PostgreSQL crashes", name(i))
            }
            Step::Flaky(i) => {
                self.nodes[i].flaky = !self.nodes[i].flaky;
                format!(
                    "{}: DCS requests and peer queries {}",
                    name(i),
                    if self.nodes[i].flaky {
                        "fail at times"
                    } else {
                        "reliable again"
                    }
                )
            }
            Step::SlowReplication(i) => {
                self.nodes[i].slow = !self.nodes[i].slow;
                format!(
                    "{}: replication to it {}",
                    name(i),
                    if self.nodes[i].slow {
                        "lags"
                    } else {
                        "keeps up"
                    }
                )
            }
            Step::Heal => {
                self.cut = [[false; NODES]; NODES];
                for n in &mut self.nodes {
                    n.dcs = DcsLink::Up;
                    n.paused = false;
                    n.flaky = false;
                }
                "heal: every link up, nobody frozen".into()
            }
        };
        self.note(|| format!("[step {k}] {what}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Shrinking and reporting

/// The shortest failing prefix is the run up to its first violation (the run is deterministic
/// and checks after every step, so no search is needed); from it, drop fault events, then the
/// other steps (cycles, time passing), in chunks of halving size, keeping every drop after
/// which the same kind of violation still happens, within `budget` re-runs. Returns the steps
/// left out and the failure of the shrunk run (with its trace).
fn shrink(seed: u64, cfg: RunCfg<'_>, first: &Failure, budget: usize) -> (Vec<bool>, Box<Failure>) {
    let mut limit = first.step + 1;
    let mut skip = vec![false; limit];
    let mut runs = 0;
    for faults in [true, false] {
        let mut cands: Vec<usize> = (0..limit)
            .filter(|&k| Step::draw(&mut Rng::for_step(seed, k)).is_fault() == faults)
            .collect();
        let mut chunk = cands.len().div_ceil(2).max(1);
        loop {
            let mut progress = false;
            let mut at = 0;
            while at < cands.len() && runs < budget {
                let end = (at + chunk).min(cands.len());
                let mut trial = skip.clone();
                for &k in &cands[at..end] {
                    trial[k] = true;
                }
                runs += 1;
                let c = RunCfg {
                    skip: Some(&trial),
                    tracing: false,
                    ..cfg
                };
                match run(seed, limit, c) {
                    Err(f) if f.kind == first.kind => {
                        limit = f.step + 1;
                        skip = trial;
                        skip.truncate(limit);
                        cands.drain(at..end);
                        cands.retain(|&k| k < limit);
                        progress = true;
                    }
                    _ => at = end,
                }
            }
            if runs >= budget || (chunk == 1 && !progress) {
                break;
            }
            if !progress {
                chunk = chunk.div_ceil(2);
            }
        }
    }
    let c = RunCfg {
        skip: Some(&skip),
        tracing: true,
        ..cfg
    };
    let shrunk = run(seed, limit, c)
        .err()
        .unwrap_or_else(|| Box::new(first.clone()));
    (skip, shrunk)
}

/// The report of a failing seed: the violation, the shrunk trace, how to replay.
fn report(seed: u64, steps: usize, cfg: RunCfg<'_>, first: &Failure, budget: usize) -> String {
    let (skip, f) = shrink(seed, cfg, first, budget);
    let is_fault = |k: usize| Step::draw(&mut Rng::for_step(seed, k)).is_fault();
    let dropped = (0..skip.len()).filter(|&k| skip[k] && is_fault(k)).count();
    let dropped_other = (0..skip.len()).filter(|&k| skip[k] && !is_fault(k)).count();
    let faults_before = (0..=first.step).filter(|&k| is_fault(k)).count();
    const SHOWN: usize = 150;
    let lines = &f.trace;
    let from = lines.len().saturating_sub(SHOWN);
    format!(
        "seed {seed} ({} mode, {steps} steps): at step {} (t={} ms): {}\n\
         shrunk: the shortest failing prefix is {} steps; with {dropped} of its {faults_before} \
         fault events and {dropped_other} other steps left out it fails the same way at step {} \
         (t={} ms): {}\n{}\n\
         trace of the shrunk run (fault events, DCS mishaps, decisions{}):\n{}\n\
         replay: cargo test -p spilo-core --test simulation -- --seed {seed} --sync {}",
        if cfg.sync {
            "synchronous"
        } else {
            "asynchronous"
        },
        first.step,
        first.now,
        first.message,
        first.step + 1,
        f.step,
        f.now,
        f.message,
        f.state,
        if from > 0 {
            format!("; the last {SHOWN} of {} lines", lines.len())
        } else {
            String::new()
        },
        lines[from..].join("\n"),
        if cfg.sync { "on" } else { "off" },
    )
}

// ---------------------------------------------------------------------------------------------
// Suites

struct Opts {
    seeds: Option<u64>,
    first: u64,
    steps: usize,
    threads: usize,
    /// Which modes: async, sync.
    modes: (bool, bool),
    seed: Option<u64>,
}

/// Runs `count` seeds from `first` on `threads` workers; stops at the first failing seed
/// (the lowest one, whatever the threads' timing).
fn run_seeds(
    first: u64,
    count: u64,
    steps: usize,
    threads: usize,
    cfg: RunCfg<'static>,
) -> Result<Stats, (u64, Box<Failure>)> {
    let next = AtomicU64::new(first);
    let lowest_failure = AtomicU64::new(u64::MAX);
    let failures: Mutex<BTreeMap<u64, Box<Failure>>> = Mutex::new(BTreeMap::new());
    let total = Mutex::new(Stats::default());
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut mine = Stats::default();
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= first + count || seed > lowest_failure.load(Ordering::SeqCst) {
                        break;
                    }
                    match run(seed, steps, cfg) {
                        Ok(st) => mine.add(&st),
                        Err(f) => {
                            lowest_failure.fetch_min(seed, Ordering::SeqCst);
                            failures.lock().unwrap().insert(seed, f);
                        }
                    }
                    let d = done.fetch_add(1, Ordering::SeqCst) + 1;
                    if count >= 20_000 && d.is_multiple_of(10_000) {
                        eprintln!(
                            "simulation: {d} of {count} seeds in {:.0} s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
                total.lock().unwrap().add(&mine);
            });
        }
    });
    if let Some((seed, f)) = failures.into_inner().unwrap().into_iter().next() {
        return Err((seed, f));
    }
    Ok(total.into_inner().unwrap())
}

fn random_suite(o: &Opts, sync: bool) -> Result<String, String> {
    let seeds = o.seeds.unwrap_or(if sync { 300 } else { 500 });
    let cfg = RunCfg {
        sync,
        decide: decide::decide,
        rewind: next_rewind_state,
        skip: None,
        tracing: false,
    };
    match run_seeds(o.first, seeds, o.steps, o.threads, cfg) {
        Ok(total) => {
            let line = format!(
                "simulation ({} mode): {seeds} seeds x {} steps: {total:?}",
                if sync { "synchronous" } else { "asynchronous" },
                o.steps
            );
            // The schedules must actually fail over, or the checks prove little.
            if total.promotions < seeds || total.rewinds < seeds / 2 {
                return Err(format!("{line}\nthe schedules exercised too few failovers"));
            }
            if sync && (total.sync_standbys_named < seeds || total.acked < seeds * 100) {
                return Err(format!(
                    "{line}\nthe schedules exercised synchronous replication too little"
                ));
            }
            Ok(line)
        }
        Err((seed, f)) => Err(report(seed, o.steps, cfg, &f, 400)),
    }
}

fn replay(o: &Opts) -> Result<String, String> {
    let Some(seed) = o.seed else {
        return Ok("no seed to replay (--seed N or SPILO_SIM_SEED)".into());
    };
    let mut out = Vec::new();
    for sync in [false, true] {
        if !(if sync { o.modes.1 } else { o.modes.0 }) {
            continue;
        }
        let cfg = RunCfg {
            sync,
            decide: decide::decide,
            rewind: next_rewind_state,
            skip: None,
            tracing: false,
        };
        match run(seed, o.steps, cfg) {
            Ok(st) => out.push(format!(
                "seed {seed} ({} mode), {} steps: no violation; {st:?}",
                if sync { "synchronous" } else { "asynchronous" },
                o.steps
            )),
            Err(f) => return Err(report(seed, o.steps, cfg, &f, 400)),
        }
    }
    Ok(out.join("\n"))
}

/// A deliberately broken rule: a replica whose stream from the leader broke promotes at once,
/// without the leader key. The checker must catch it, or it proves nothing.
fn promote_without_the_key(
    c: Option<&Cluster>,
    l: &LocalView,
    p: &Policy,
    now: Duration,
) -> Decision {
    let mut d = decide::decide(c, l, p, now);
    d.actions.retain(|a| *a != Action::AcquireLeader);
    if let (
        Some(c),
        Pg::Running {
            primary: false,
            streaming: false,
            ..
        },
    ) = (c, &l.pg)
    {
        if c.leader.is_some() && !d.actions.contains(&Action::Promote) {
            d.actions.push(Action::Promote);
        }
    }
    d
}

/// A deliberately broken synchronous rule: the leader race ignores the `sync` key, so a replica
/// that is not the synchronous standby may win it.
fn ignore_the_sync_key(c: Option<&Cluster>, l: &LocalView, p: &Policy, now: Duration) -> Decision {
    let p = Policy {
        synchronous: false,
        ..p.clone()
    };
    decide::decide(c, l, &p, now)
}

/// A deliberately broken rule of the *executor* (not of `decide()`): after a failed rewind
/// that may not re-copy, it forgets that the node diverged, so the node follows the leader on a
/// forked history. The checker must catch it.
fn forget_failed_rewinds(
    state: RewindState,
    event: RewindEvent,
) -> (RewindState, Option<RemovalReason>) {
    match event {
        RewindEvent::RewindFailed {
            recopy_allowed: false,
        } => (RewindState::NotNeeded, None),
        other => next_rewind_state(state, other),
    }
}

/// Some seed of `1..=200` must fail with `kind`; its shrunk run must fail the same way, no
/// later than the original.
fn caught(
    sync: bool,
    decide: DecideFn,
    rewind: RewindFn,
    kind: Kind,
    o: &Opts,
) -> Result<String, String> {
    let cfg = RunCfg {
        sync,
        decide,
        rewind,
        skip: None,
        tracing: false,
    };
    let (seed, f) = match run_seeds(1, 200, 5_000, o.threads, cfg) {
        Ok(_) => return Err("the checker let a broken rule pass 200 seeds".into()),
        Err(x) => x,
    };
    if f.kind != kind {
        return Err(format!(
            "seed {seed}: expected a {kind:?} violation, got {:?}: {}",
            f.kind, f.message
        ));
    }
    let (skip, shrunk) = shrink(seed, cfg, &f, 60);
    if shrunk.kind != kind || shrunk.step > f.step {
        return Err(format!("shrinking seed {seed} lost the violation"));
    }
    Ok(format!(
        "caught at seed {seed} step {} ({}); shrunk to step {} with {} steps left out",
        f.step,
        f.message,
        shrunk.step,
        skip.iter().filter(|&&s| s).count()
    ))
}

// ---------------------------------------------------------------------------------------------
// The harness (this target has `harness = false`)

type TestFn = fn(&Opts) -> Result<String, String>;

const TESTS: &[(&str, TestFn)] = &[
    (
        "random_schedules_keep_one_writer_and_no_forked_follower",
        |o| {
            if o.modes.0 {
                random_suite(o, false)
            } else {
                Ok("skipped (--sync on)".into())
            }
        },
    ),
    (
        "sync_mode_random_schedules_lose_no_acknowledged_write",
        |o| {
            if o.modes.1 {
                random_suite(o, true)
            } else {
                Ok("skipped (--sync off)".into())
            }
        },
    ),
    ("a_broken_decision_is_caught", |o| {
        caught(
            false,
            promote_without_the_key,
            next_rewind_state,
            Kind::TwoWriters,
            o,
        )
    }),
    ("a_broken_sync_rule_is_caught", |o| {
        caught(
            true,
            ignore_the_sync_key,
            next_rewind_state,
            Kind::LostWrite,
            o,
        )
    }),
    ("a_broken_executor_rule_is_caught", |o| {
        caught(
            false,
            decide::decide,
            forget_failed_rewinds,
            Kind::ForkedFollower,
            o,
        )
    }),
    ("replay", replay),
];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn usage() -> &'static str {
    "simulation [FILTER...] [--seed N] [--seeds N | --long] [--first-seed N] [--steps N] \
     [--sync on|off] [--threads N] [--list] [--exact]"
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters: Vec<String> = Vec::new();
    let mut exact = false;
    let mut list = false;
    let mut skips: Vec<String> = Vec::new();
    let mut o = Opts {
        seeds: env_u64("SPILO_SIM_SEEDS"),
        first: env_u64("SPILO_SIM_FIRST_SEED").unwrap_or(1),
        steps: env_u64("SPILO_SIM_STEPS").unwrap_or(10_000) as usize,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(2),
        modes: (true, true),
        seed: env_u64("SPILO_SIM_SEED"),
    };
    let mut threads_set = false;
    args.reverse();
    while let Some(a) = args.pop() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if a.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |what: &str| -> String {
            inline.clone().or_else(|| args.pop()).unwrap_or_else(|| {
                eprintln!("{what} needs a value\nusage: {}", usage());
                std::process::exit(2)
            })
        };
        let number = |what: &str, v: String| -> u64 {
            v.parse().unwrap_or_else(|_| {
                eprintln!("{what}: '{v}' is not a number");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--seed" => o.seed = Some(number("--seed", value("--seed"))),
            "--seeds" => o.seeds = Some(number("--seeds", value("--seeds"))),
            "--long" => o.seeds = Some(1_000_000),
            "--first-seed" => o.first = number("--first-seed", value("--first-seed")),
            "--steps" => o.steps = number("--steps", value("--steps")) as usize,
            "--threads" => {
                o.threads = number("--threads", value("--threads")).max(1) as usize;
                threads_set = true;
            }
            "--sync" => {
                o.modes = match value("--sync").as_str() {
                    "on" | "true" | "yes" => (false, true),
                    "off" | "false" | "no" => (true, false),
                    "both" => (true, true),
                    v => {
                        eprintln!("--sync: '{v}' is not on, off or both");
                        std::process::exit(2)
                    }
                }
            }
            "--exact" => exact = true,
            "--list" => list = true,
            "--skip" => skips.push(value("--skip")),
            "-h" | "--help" => {
                println!("usage: {}", usage());
                return;
            }
            // libtest's flags: accepted, no meaning here.
            "--test-threads" | "--color" | "--format" | "-Z" | "--logfile" | "--shuffle-seed" => {
                if inline.is_none() {
                    args.pop();
                }
            }
            "--report-time" | "--shuffle" => {}
            "--nocapture"
            | "--no-capture"
            | "--show-output"
            | "-q"
            | "--quiet"
            | "--ignored"
            | "--include-ignored"
            | "--test"
            | "--bench"
            | "--ensure-time"
            | "--force-run-in-process" => {}
            f if f.starts_with('-') => eprintln!("simulation: ignoring the unknown flag {f}"),
            _ => filters.push(a),
        }
    }
    if o.seeds.is_some_and(|n| n >= 20_000) && !threads_set {
        o.threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
    }
    let selected: Vec<&(&str, TestFn)> = TESTS
        .iter()
        .filter(|(name, _)| {
            // `--seed N` replays that seed and nothing else.
            if std::env::args().any(|a| a == "--seed" || a.starts_with("--seed=")) {
                return *name == "replay";
            }
            let hit = |f: &String| {
                if exact {
                    name == f
                } else {
                    name.contains(f.as_str())
                }
            };
            (filters.is_empty() || filters.iter().any(hit))
                && !skips.iter().any(|s| name.contains(s.as_str()))
        })
        .collect();
    if list {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        println!("\n{} tests, 0 benchmarks", selected.len());
        return;
    }
    let filtered_out = TESTS.len() - selected.len();
    let started = Instant::now();
    println!(
        "\nrunning {} test{}",
        selected.len(),
        if selected.len() == 1 { "" } else { "s" }
    );
    let mut failed: Vec<(&str, String)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for (name, f) in &selected {
        let t = Instant::now();
        let r = std::panic::catch_unwind(|| f(&o))
            .unwrap_or_else(|_| Err("the test panicked".to_string()));
        match r {
            Ok(note) => {
                println!("test {name} ... ok ({:.1} s)", t.elapsed().as_secs_f64());
                notes.push(note);
            }
            Err(e) => {
                println!("test {name} ... FAILED");
                failed.push((name, e));
            }
        }
    }
    for n in notes.iter().filter(|n| !n.is_empty()) {
        println!("{n}");
    }
    if !failed.is_empty() {
        println!("\nfailures:\n");
        for (name, e) in &failed {
            println!("---- {name} ----\n{e}\n");
        }
        println!("failures:");
        for (name, _) in &failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len(),
        filtered_out,
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}
