//! A deterministic simulation of the HA decision: the real `decide()` driven by a simulated
//! world (an in-memory DCS with sessions and leases, a virtual clock, simulated PostgreSQL
//! nodes with WAL positions and timelines, a network that cuts node↔DCS and node↔node links,
//! and pauses of whole nodes), on random schedules from a seed.
//!
//! After every step it checks:
//! - **one writer**: at most one node can acknowledge writes (PostgreSQL runs as primary and
//!   the node is not frozen, unless its lease deadline, `renewal + ttl - 1 s`, has passed: the
//!   lease guard and the extension's fence stop a primary there);
//! - **no forked follower**: a replica only ever streams from a node whose history contains its
//!   own (a former primary rewinds first).
//!
//! A failure prints the seed and the trace; `SPILO_SIM_SEED=N cargo test -p spilo-core --test
//! simulation replay` replays one seed; `SPILO_SIM_SEEDS` / `SPILO_SIM_STEPS` run more.

use std::collections::BTreeMap;
use std::time::Duration;

use spilo_core::api::client::PeerStatus;
use spilo_core::config::DynamicConfig;
use spilo_core::dcs::{Cluster, HistoryLine, Leader, Member, MemberData, Status, Versioned};
use spilo_core::ha::decide::{
    self, Action, CandidateChoice, DataDir, Decision, DemoteMode, LocalView, Pg, Policy,
    PromotionGate,
};

const SYSID: &str = "7300000000000000001";
const TTL: u64 = 10_000;
const LOOP_WAIT: u64 = 2_000;
const MARGIN: u64 = 1_000;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
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
}

#[derive(Clone, Debug, PartialEq)]
enum PgState {
    Stopped,
    Primary,
    Replica(Option<usize>),
}

#[derive(Clone, Debug)]
struct Node {
    name: String,
    data: Data,
    pg: PgState,
    was_primary: bool,
    needs_rewind: bool,
    upstream: Option<Option<String>>,
    paused: bool,
    /// This daemon's session id (0: none).
    session: u64,
    /// When the daemon last renewed the lease while holding the key (virtual ms).
    renewed: Option<u64>,
    /// Up from the DCS (else its requests fail).
    dcs_link: bool,
}

#[derive(Clone, Debug)]
struct LeaderKey {
    name: String,
    term: i64,
    session: u64,
}

#[derive(Default)]
struct Dcs {
    leader: Option<LeaderKey>,
    /// session id → expiry (virtual ms).
    sessions: BTreeMap<u64, u64>,
    /// name → (member data, owning session).
    members: BTreeMap<String, (MemberData, u64)>,
    optime: Option<u64>,
    history: Vec<HistoryLine>,
    next_session: u64,
    next_term: i64,
}

impl Dcs {
    fn expire(&mut self, now: u64) {
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
}

/// The decision function under test (the real one, or a broken one to prove the checker).
type DecideFn = fn(Option<&Cluster>, &LocalView, &Policy, Duration) -> Decision;

struct World {
    now: u64,
    nodes: Vec<Node>,
    dcs: Dcs,
    /// node↔node links that are cut: (a, b) with a < b.
    cut: Vec<(usize, usize)>,
    decide: DecideFn,
    trace: Vec<String>,
    stats: Stats,
}

/// What happened in a run, to show the schedules exercise failovers at all.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    promotions: u64,
    demotions: u64,
    rewinds: u64,
    writes: u64,
}

fn policy(name: &str) -> Policy {
    Policy {
        name: name.into(),
        ttl: Duration::from_millis(TTL),
        loop_wait: Duration::from_millis(LOOP_WAIT),
        retry_timeout: Duration::from_secs(3),
        maximum_lag_on_failover: 1 << 20,
        primary_start_timeout: Duration::from_secs(300),
        check_timeline: false,
        use_pg_rewind: true,
        remove_data_directory_on_rewind_failure: false,
        failover_priority: 1,
        paused: false,
        replicatefrom: None,
        synchronous: false,
        quorum: false,
    }
}

impl World {
    fn new(n: usize, decide: DecideFn) -> World {
        let mut w = World {
            now: 0,
            nodes: Vec::new(),
            dcs: Dcs::default(),
            cut: Vec::new(),
            decide,
            trace: Vec::new(),
            stats: Stats::default(),
        };
        w.dcs.next_session = 1;
        w.dcs.next_term = 1;
        for i in 0..n {
            w.nodes.push(Node {
                name: format!("n{i}"),
                data: Data {
                    lineage: vec![(1, 0)],
                    wal: 1000,
                },
                pg: if i == 0 {
                    PgState::Primary
                } else {
                    PgState::Replica(Some(0))
                },
                was_primary: i == 0,
                needs_rewind: false,
                upstream: Some(if i == 0 { None } else { Some("n0".into()) }),
                paused: false,
                session: 0,
                renewed: None,
                dcs_link: true,
            });
        }
        // n0 holds the key from a first cycle.
        w.cycle(0);
        w
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        let k = (a.min(b), a.max(b));
        !self.cut.contains(&k)
    }

    /// Whether node `i` can acknowledge a write now: PostgreSQL runs as primary and the node
    /// is not frozen, unless the lease guard (and the extension's fence) has stopped it because
    /// its last renewal is overdue. A primary that never held the lease acknowledges writes, as
    /// a real one would, until its daemon demotes it.
    fn can_ack(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.pg == PgState::Primary
            && !n.paused
            && n.renewed
                .map(|r| self.now < r + TTL - MARGIN)
                .unwrap_or(true)
    }

    fn cluster_for(&self, i: usize) -> Cluster {
        let me = &self.nodes[i];
        let mut members: Vec<Member> = self
            .dcs
            .members
            .iter()
            .map(|(name, (data, owner))| Member {
                name: name.clone(),
                data: data.clone(),
                version: 1,
                owned_by_us: *owner == me.session && me.session != 0,
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Cluster {
            revision: 1,
            initialize: Some(SYSID.into()),
            config: Some(Versioned {
                value: DynamicConfig::default(),
                version: 1,
            }),
            config_raw: None,
            leader: self.dcs.leader.as_ref().map(|l| Leader {
                name: l.name.clone(),
                version: l.term,
                owned_by_us: l.session == me.session && me.session != 0,
            }),
            members,
            status: self.dcs.optime.map(|o| Status {
                optime: Some(o),
                ..Status::default()
            }),
            failover: None,
            sync: None,
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
            role: if n.pg == PgState::Primary {
                "primary"
            } else {
                "replica"
            }
            .into(),
            xlog_location: Some(n.data.wal),
            timeline: Some(n.data.timeline()),
            ..MemberData::default()
        }
    }

    fn peers_for(&self, i: usize) -> Vec<PeerStatus> {
        (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| {
                let p = &self.nodes[j];
                if !self.linked(i, j) || p.paused || p.pg == PgState::Stopped {
                    return PeerStatus::unreachable(&p.name);
                }
                PeerStatus {
                    name: p.name.clone(),
                    reachable: true,
                    role: Some(
                        if p.pg == PgState::Primary {
                            "primary"
                        } else {
                            "replica"
                        }
                        .into(),
                    ),
                    in_recovery: p.pg != PgState::Primary,
                    wal_position: Some(p.data.wal),
                    timeline: Some(p.data.timeline()),
                    nofailover: false,
                    failover_priority: 1,
                    promotion_veto: None,
                }
            })
            .collect()
    }

    /// One HA cycle of node `i` with the real decision.
    fn cycle(&mut self, i: usize) {
        if self.nodes[i].paused {
            return;
        }
        self.dcs.expire(self.now);
        let now = self.now;
        // Keep-alive: renew or make the session.
        let session_ok = self.nodes[i].dcs_link;
        if session_ok {
            let s = self.nodes[i].session;
            if s == 0 || !self.dcs.sessions.contains_key(&s) {
                let id = self.dcs.next_session;
                self.dcs.next_session += 1;
                self.nodes[i].session = id;
            }
            let s = self.nodes[i].session;
            self.dcs.sessions.insert(s, now + TTL);
        }
        let holds = session_ok
            && self
                .dcs
                .leader
                .as_ref()
                .map(|l| l.name == self.nodes[i].name && l.session == self.nodes[i].session)
                .unwrap_or(false);
        self.nodes[i].renewed = if holds { Some(now) } else { None };
        let cluster = session_ok.then(|| self.cluster_for(i));
        let n = &self.nodes[i];
        let pg = match &n.pg {
            PgState::Stopped => Pg::Stopped,
            other => Pg::Running {
                primary: *other == PgState::Primary,
                timeline: Some(n.data.timeline()),
                wal_position: Some(n.data.wal),
                streaming: matches!(other, PgState::Replica(Some(_))),
            },
        };
        let local = LocalView {
            session_ok,
            data: DataDir::Initialized {
                sysid: Some(SYSID.into()),
                was_primary: n.was_primary,
                crashed: false,
                timeline: Some(n.data.timeline()),
            },
            pg,
            job: None,
            upstream: n.upstream.clone(),
            needs_rewind: n.needs_rewind,
            rewind_failed: false,
            down_since: None,
            peers: self.peers_for(i),
            lease_renewed_at: self.nodes[i].renewed.map(Duration::from_millis),
            unix_now: 1_800_000_000 + (now / 1000) as i64,
            clone_from_leader: false,
            promotion_gate: PromotionGate::Open,
            candidate_choice: CandidateChoice::Default,
        };
        let p = policy(&self.nodes[i].name);
        let d = (self.decide)(cluster.as_ref(), &local, &p, Duration::from_millis(now));
        for a in &d.actions {
            self.trace
                .push(format!("t={now} {}: {a}", self.nodes[i].name));
            if !self.act(i, a) {
                break;
            }
        }
        if session_ok {
            let md = self.member_data(i);
            let s = self.nodes[i].session;
            self.dcs.members.insert(self.nodes[i].name.clone(), (md, s));
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Applies one action; false stops the plan (as a failed step does in the runner).
    fn act(&mut self, i: usize, a: &Action) -> bool {
        let now = self.now;
        let name = self.nodes[i].name.clone();
        match a {
            Action::AcquireLeader => {
                if !self.nodes[i].dcs_link || self.dcs.leader.is_some() {
                    return false;
                }
                let term = self.dcs.next_term;
                self.dcs.next_term += 1;
                self.dcs.leader = Some(LeaderKey {
                    name,
                    term,
                    session: self.nodes[i].session,
                });
                self.nodes[i].renewed = Some(now);
                true
            }
            Action::ReattachLeader => match &mut self.dcs.leader {
                Some(l) if l.name == name && self.nodes[i].dcs_link => {
                    l.session = self.nodes[i].session;
                    self.nodes[i].renewed = Some(now);
                    true
                }
                _ => false,
            },
            Action::ReleaseLeader => {
                if self.nodes[i].dcs_link
                    && self
                        .dcs
                        .leader
                        .as_ref()
                        .map(|l| l.name == name)
                        .unwrap_or(false)
                {
                    self.dcs.leader = None;
                }
                self.nodes[i].renewed = None;
                true
            }
            Action::Promote => {
                let n = &mut self.nodes[i];
                if n.pg == PgState::Primary {
                    return true;
                }
                let old_tl = n.data.timeline();
                let at = n.data.wal;
                n.data.lineage.push((old_tl + 1, at));
                self.stats.promotions += 1;
                n.pg = PgState::Primary;
                n.was_primary = true;
                n.upstream = Some(None);
                self.dcs.history.push(HistoryLine {
                    timeline: old_tl,
                    lsn: at,
                    reason: "promote".into(),
                    timestamp: None,
                    new_leader: Some(name),
                });
                true
            }
            Action::Demote(mode) => {
                self.stats.demotions += 1;
                let n = &mut self.nodes[i];
                if n.pg == PgState::Primary {
                    n.needs_rewind = true;
                }
                n.renewed = None;
                match mode {
                    DemoteMode::Immediate => n.pg = PgState::Stopped,
                    DemoteMode::Offline => {
                        n.pg = PgState::Replica(None);
                        n.upstream = Some(None);
                    }
                    DemoteMode::Graceful => {
                        n.pg = PgState::Stopped;
                        n.needs_rewind = false;
                        if self
                            .dcs
                            .leader
                            .as_ref()
                            .map(|l| l.name == name)
                            .unwrap_or(false)
                        {
                            self.dcs.leader = None;
                        }
                    }
                }
                true
            }
            Action::StartPrimary => {
                self.nodes[i].pg = PgState::Primary;
                true
            }
            Action::StartReplica(up) | Action::Follow(up) => {
                let j = up.as_deref().and_then(|u| self.index(u));
                let n = &mut self.nodes[i];
                n.pg = PgState::Replica(j);
                n.upstream = Some(up.clone());
                true
            }
            Action::StartRewind(from) | Action::StartClone(from) => {
                let Some(j) = self.index(from) else {
                    return false;
                };
                if !self.linked(i, j) || self.nodes[j].paused {
                    return false;
                }
                // pg_rewind / pg_basebackup: our data becomes a prefix of the source's.
                self.stats.rewinds += 1;
                let src = self.nodes[j].data.clone();
                let n = &mut self.nodes[i];
                n.data = src;
                n.needs_rewind = false;
                n.was_primary = false;
                n.pg = PgState::Replica(Some(j));
                n.upstream = Some(Some(from.clone()));
                true
            }
            Action::LeaderHousekeeping => {
                if self.nodes[i].dcs_link {
                    self.dcs.optime = Some(self.nodes[i].data.wal);
                }
                true
            }
            Action::WriteInitialize(_) | Action::ClearFailover(_) => true,
            Action::StartBootstrap | Action::Fatal(_) => false,
        }
    }

    /// Replication and client writes for `ms` of virtual time.
    fn advance(&mut self, ms: u64, rng: &mut Rng) {
        self.now += ms;
        // A client writes to every node that can acknowledge.
        for i in 0..self.nodes.len() {
            if self.can_ack(i) && rng.chance(70) {
                self.nodes[i].data.wal += 100;
                self.stats.writes += 1;
            }
        }
        // Streaming replicas catch up with their upstream when linked.
        for i in 0..self.nodes.len() {
            if let PgState::Replica(Some(j)) = self.nodes[i].pg {
                if self.nodes[i].paused || self.nodes[j].paused || !self.linked(i, j) {
                    continue;
                }
                let up = self.nodes[j].data.clone();
                if self.nodes[i].data.is_prefix_of(&up) {
                    self.nodes[i].data = up;
                }
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        let writers: Vec<&str> = (0..self.nodes.len())
            .filter(|&i| self.can_ack(i))
            .map(|i| self.nodes[i].name.as_str())
            .collect();
        if writers.len() > 1 {
            return Err(format!(
                "t={}: two nodes acknowledge writes: {writers:?}",
                self.now
            ));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let PgState::Replica(Some(j)) = n.pg {
                if self.linked(i, j) && !n.data.is_prefix_of(&self.nodes[j].data) {
                    // Streaming is refused by PostgreSQL itself on a fork; the invariant is
                    // that spilo never points a forked node at it without a rewind.
                    if !n.needs_rewind && n.was_primary {
                        return Err(format!(
                            "t={}: {} follows {} on a forked history without a rewind ({:?} vs {:?})",
                            self.now, n.name, self.nodes[j].name, n.data, self.nodes[j].data
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One random schedule: what happened, or the trace of the failure.
fn run(seed: u64, steps: usize, decide: DecideFn) -> Result<Stats, String> {
    let mut rng = Rng::new(seed);
    let mut w = World::new(3, decide);
    for _ in 0..steps {
        let i = rng.below(3) as usize;
        match rng.below(100) {
            0..=59 => w.cycle(i),
            60..=74 => {
                let ms = 100 + rng.below(LOOP_WAIT);
                w.advance(ms, &mut rng);
            }
            75..=79 => {
                w.nodes[i].dcs_link = !w.nodes[i].dcs_link;
                w.trace.push(format!(
                    "t={} {} dcs link {}",
                    w.now, w.nodes[i].name, w.nodes[i].dcs_link
                ));
            }
            80..=84 => {
                let j = (i + 1 + rng.below(2) as usize) % 3;
                let k = (i.min(j), i.max(j));
                if let Some(pos) = w.cut.iter().position(|c| *c == k) {
                    w.cut.remove(pos);
                } else {
                    w.cut.push(k);
                }
                w.trace.push(format!("t={} link {:?} toggled", w.now, k));
            }
            85..=88 => {
                w.nodes[i].paused = !w.nodes[i].paused;
                w.trace.push(format!(
                    "t={} {} paused {}",
                    w.now, w.nodes[i].name, w.nodes[i].paused
                ));
            }
            89..=90 => {
                // PostgreSQL crashes (the daemon restarts it in place).
                if !w.nodes[i].paused {
                    w.nodes[i].pg = PgState::Stopped;
                    w.trace
                        .push(format!("t={} {} postgres crashed", w.now, w.nodes[i].name));
                }
            }
            _ => {
                // Heal everything for a while.
                w.cut.clear();
                for n in &mut w.nodes {
                    n.dcs_link = true;
                    n.paused = false;
                }
                w.trace.push(format!("t={} heal", w.now));
            }
        }
        if let Err(e) = w.check() {
            let tail: Vec<&String> = w.trace.iter().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().map(String::as_str).collect();
            return Err(format!(
                "seed {seed}: {e}\nlast events:\n{}",
                tail.join("\n")
            ));
        }
    }
    Ok(w.stats)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_schedules_keep_one_writer_and_no_forked_follower() {
    let seeds = env_u64("SPILO_SIM_SEEDS", 500);
    let steps = env_u64("SPILO_SIM_STEPS", 10_000) as usize;
    let first = env_u64("SPILO_SIM_FIRST_SEED", 1);
    let mut total = Stats::default();
    for seed in first..first + seeds {
        match run(seed, steps, decide::decide) {
            Ok(s) => {
                total.promotions += s.promotions;
                total.demotions += s.demotions;
                total.rewinds += s.rewinds;
                total.writes += s.writes;
            }
            Err(e) => panic!(
                "{e}\nreplay: SPILO_SIM_SEED={seed} cargo test -p spilo-core --test simulation replay"
            ),
        }
    }
    println!("simulation: {seeds} seeds x {steps} steps: {total:?}");
    // The schedules must actually fail over, or the checks above prove little.
    assert!(
        total.promotions >= seeds && total.rewinds >= seeds / 2,
        "the schedules exercised too few failovers: {total:?}"
    );
}

#[test]
fn replay() {
    if let Ok(seed) = std::env::var("SPILO_SIM_SEED") {
        let seed: u64 = seed.parse().expect("SPILO_SIM_SEED is a number");
        let steps = env_u64("SPILO_SIM_STEPS", 10_000) as usize;
        if let Err(e) = run(seed, steps, decide::decide) {
            panic!("{e}");
        }
    }
}

/// A deliberately broken rule: a replica that sees no leader promotes at once, without the
/// leader key. The checker must catch it, or it proves nothing.
fn promote_without_the_key(
    c: Option<&Cluster>,
    l: &LocalView,
    p: &Policy,
    now: Duration,
) -> Decision {
    let mut d = decide::decide(c, l, p, now);
    if d.actions.contains(&Action::AcquireLeader) {
        d.actions.retain(|a| *a != Action::AcquireLeader);
    }
    if let (Some(c), Pg::Running { primary: false, .. }) = (c, &l.pg) {
        if c.leader.is_some()
            && !d.actions.contains(&Action::Promote)
            && l.peers.iter().all(|p| !p.reachable)
        {
            d.actions.push(Action::Promote);
        }
    }
    d
}

#[test]
fn a_broken_decision_is_caught() {
    let caught = (1..=200).any(|seed| run(seed, 5_000, promote_without_the_key).is_err());
    assert!(
        caught,
        "the checker let a decide() that promotes without the key pass"
    );
}
