//! The simulated world the real executor runs in: one in-memory DCS with sessions (leases that
//! expire on tokio's paused clock), simulated PostgreSQL servers with WAL positions and
//! timeline histories, and the links between them that faults cut.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// How many nodes a world has.
pub const NODES: usize = 3;
/// The system identifier of the simulated cluster.
pub const SYSID: &str = "7000000000000000001";
/// The first simulated PostgreSQL port; node `i` listens on `PG_PORT0 + i`.
pub const PG_PORT0: u16 = 15000;

/// A data directory's WAL: the timelines it went through (timeline, start position) and how far
/// it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    /// (timeline, position it started at), oldest first.
    pub lineage: Vec<(u64, u64)>,
    /// The last position written or received.
    pub wal: u64,
}

impl Data {
    /// A fresh cluster (what initdb makes).
    pub fn new() -> Data {
        Data {
            lineage: vec![(1, 0)],
            wal: 100,
        }
    }

    /// The current timeline.
    pub fn timeline(&self) -> u64 {
        self.lineage.last().map(|l| l.0).unwrap_or(1)
    }

    /// True when `self` is a prefix of `other`'s history (it can stream from `other`).
    pub fn is_prefix_of(&self, other: &Data) -> bool {
        for (i, &(tl, start)) in self.lineage.iter().enumerate() {
            match other.lineage.get(i) {
                Some(&(otl, ostart)) if otl == tl && ostart == start => {}
                _ => return false,
            }
        }
        match other.lineage.get(self.lineage.len()) {
            Some(&(_, branch)) => branch >= self.wal,
            None => other.wal >= self.wal,
        }
    }
}

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

/// A simulated PostgreSQL's process state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proc {
    /// No postmaster.
    Stopped,
    /// Running as primary.
    Primary,
    /// Running in recovery.
    Replica,
}

/// One simulated PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgState {
    /// The process.
    pub proc: Proc,
    /// A cluster exists in the data directory.
    pub initialized: bool,
    /// Its WAL.
    pub data: Data,
    /// `standby.signal` is written.
    pub standby: bool,
    /// `primary_conninfo` points at this node (its index).
    pub upstream: Option<usize>,
    /// Streaming from the upstream right now.
    pub streaming: bool,
    /// pg_control: last ran as primary.
    pub ctl_primary: bool,
    /// pg_control: did not shut down cleanly.
    pub crashed: bool,
    /// `synchronous_standby_names` as last written.
    pub ssn: String,
}

impl PgState {
    fn new(initialized: bool) -> PgState {
        PgState {
            proc: Proc::Stopped,
            initialized,
            data: Data::new(),
            standby: false,
            upstream: None,
            streaming: false,
            ctl_primary: false,
            crashed: false,
            ssn: String::new(),
        }
    }
}

/// How `synchronous_standby_names` asks for acknowledgements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRule {
    /// `ANY k (…)`: quorum commit; otherwise priority.
    pub quorum: bool,
    /// How many standbys must confirm.
    pub k: usize,
    /// The standbys named (Patroni's strict placeholder among them names nobody real).
    pub names: Vec<String>,
}

/// Parses `synchronous_standby_names` as spilo writes it (`"n1"`, `2 (n1,n2)`,
/// `ANY 1 (n1,n2)`); None when empty (asynchronous).
pub fn parse_ssn(ssn: &str) -> Option<SyncRule> {
    let s = ssn.trim();
    if s.is_empty() {
        return None;
    }
    let (quorum, rest) = match s.strip_prefix("ANY ") {
        Some(r) => (true, r),
        None => (false, s.strip_prefix("FIRST ").unwrap_or(s)),
    };
    let (k, list) = match rest.split_once('(') {
        Some((k, list)) => (
            k.trim().parse().unwrap_or(1),
            list.trim_end_matches(')').to_string(),
        ),
        None => (1, rest.to_string()),
    };
    let names = list
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect();
    Some(SyncRule { quorum, k, names })
}

/// A lease of the simulated DCS.
#[derive(Clone, Debug)]
pub struct Lease {
    pub ttl: Duration,
    pub expires: Instant,
}

/// The simulated DCS's keys and sessions.
#[derive(Debug, Default)]
pub struct DcsState {
    /// key → (value, version, lease bound to, created revision).
    pub keys: BTreeMap<String, (Vec<u8>, i64, Option<u64>, i64)>,
    pub revision: i64,
    pub leases: BTreeMap<u64, Lease>,
    pub next_lease: u64,
}

impl DcsState {
    /// Drops leases that expired by `now`, and the keys bound to them; true when the leader,
    /// config, failover or initialize key went with them.
    pub fn expire(&mut self, now: Instant) -> bool {
        let dead: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut watched = false;
        for id in dead {
            self.leases.remove(&id);
            watched |= self.drop_keys_of(id);
        }
        watched
    }

    /// Deletes the keys bound to `lease`; true when a watched key went.
    pub fn drop_keys_of(&mut self, lease: u64) -> bool {
        let gone: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, v)| v.2 == Some(lease))
            .map(|(k, _)| k.clone())
            .collect();
        let mut watched = false;
        for k in gone {
            watched |= is_watched(&k);
            self.keys.remove(&k);
        }
        watched
    }

    /// Writes `key` (a new version).
    pub fn set(&mut self, key: &str, value: &[u8], lease: Option<u64>) {
        self.revision += 1;
        let created = match self.keys.get(key) {
            Some(k) => k.3,
            None => self.revision,
        };
        self.keys.insert(
            key.to_string(),
            (value.to_vec(), self.revision, lease, created),
        );
    }
}

/// The keys whose change wakes the HA loop.
pub fn is_watched(key: &str) -> bool {
    matches!(key, "leader" | "config" | "failover" | "initialize")
}

/// The links a fault can cut.
#[derive(Clone, Debug)]
pub struct Links {
    /// Node ↔ DCS.
    pub dcs: [bool; NODES],
    /// DCS → node answers (a one-way cut: requests arrive and are applied, their answers are
    /// lost and the caller times out).
    pub dcs_answers: [bool; NODES],
    /// Requests from the node are held up in the network: they land on the DCS after the
    /// caller gave up on them.
    pub dcs_late: [bool; NODES],
    /// Node ↔ node (PostgreSQL replication and the REST API), symmetric.
    pub peer: [[bool; NODES]; NODES],
}

impl Default for Links {
    fn default() -> Links {
        Links {
            dcs: [true; NODES],
            dcs_answers: [true; NODES],
            dcs_late: [false; NODES],
            peer: [[true; NODES]; NODES],
        }
    }
}

/// What a node's PostgreSQL last read from its state file: the extension's fence (with
/// `spilo.fence = on`) lets commits through only while the file is current, says this node is
/// the leader, and its lease deadline has not passed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fence {
    /// The leader's lease deadline, on the simulated clock; None when the file says this node
    /// is not the leader.
    pub deadline: Option<Instant>,
    /// The file's own validity.
    pub valid_until: Option<Instant>,
}

impl Fence {
    /// Commits are acknowledged at `now`.
    pub fn open(&self, now: Instant) -> bool {
        matches!((self.deadline, self.valid_until), (Some(d), Some(v)) if now < d && now < v)
    }
}

/// Everything the simulated components share.
#[derive(Debug)]
pub struct Inner {
    /// A node's daemon is frozen (SIGSTOP: its loop and its lease guard make no progress; its
    /// PostgreSQL keeps running).
    pub frozen: [bool; NODES],
    /// When each node last thawed.
    pub thawed_at: [Option<Instant>; NODES],
    /// Each node's fence, from the state file its daemon wrote last.
    pub fence: [Fence; NODES],
    /// Promotions per node.
    pub promoted: [u64; NODES],
    pub dcs: DcsState,
    pub pg: Vec<PgState>,
    pub links: Links,
    /// Violations seen by the checker.
    pub violations: Vec<String>,
    /// Promotions carried out.
    pub promotions: u64,
    /// Rewinds and copies carried out.
    pub rewinds: u64,
    /// Synchronous replication is on: acknowledged writes are tracked and checked.
    pub sync_mode: bool,
    /// The acknowledged history: every write a client was told is committed.
    pub acked: Option<Data>,
    /// Writes acknowledged.
    pub acks: u64,
    /// Ticks so far.
    pub ticks: u64,
}

/// The world: shared, locked for each step (never across an await).
#[derive(Clone, Debug)]
pub struct World {
    inner: Arc<Mutex<Inner>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Inner {
    /// Node `i` acknowledges commits now: PostgreSQL runs as primary and its fence is open.
    pub fn writer(&self, i: usize, now: Instant) -> bool {
        self.pg[i].proc == Proc::Primary && self.fence[i].open(now)
    }
}

impl World {
    /// A world whose nodes have no data yet.
    pub fn new() -> World {
        World {
            inner: Arc::new(Mutex::new(Inner {
                frozen: [false; NODES],
                thawed_at: [None; NODES],
                fence: [Fence::default(); NODES],
                promoted: [0; NODES],
                dcs: DcsState::default(),
                pg: (0..NODES).map(|_| PgState::new(false)).collect(),
                links: Links::default(),
                violations: Vec::new(),
                promotions: 0,
                rewinds: 0,
                sync_mode: false,
                acked: None,
                acks: 0,
                ticks: 0,
            })),
            changes: tokio::sync::watch::channel(0).0,
        }
    }

    /// The shared state.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bumps the DCS change counter.
    pub fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver of the DCS change counter.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// One tick of the world: the primary takes writes, replicas stream from their upstream.
    pub fn tick(&self) {
        let mut w = self.lock();
        let now = Instant::now();
        w.ticks += 1;
        for i in 0..NODES {
            if w.writer(i, now) {
                w.pg[i].data.wal += 10;
            }
        }
        for i in 0..NODES {
            if w.pg[i].proc != Proc::Replica {
                w.pg[i].streaming = false;
                continue;
            }
            let Some(j) = w.pg[i].upstream else {
                w.pg[i].streaming = false;
                continue;
            };
            let up = &w.pg[j];
            // Replicas its synchronous_standby_names does not name apply WAL in bursts (every
            // half second), so an asynchronous standby is usually a little behind.
            let named = parse_ssn(&up.ssn)
                .map(|r| r.names.contains(&format!("n{i}")))
                .unwrap_or(false);
            let applies = named || (w.ticks + i as u64).is_multiple_of(5);
            let ok = j != i
                && up.proc != Proc::Stopped
                && w.links.peer[i][j]
                && w.pg[i].data.is_prefix_of(&up.data);
            if ok {
                if applies {
                    let data = up.data.clone();
                    w.pg[i].data = data;
                }
                w.pg[i].streaming = true;
            } else {
                w.pg[i].streaming = false;
            }
        }
        // A commit on the primary is acknowledged once the standbys its
        // synchronous_standby_names asks for have it (at once when it asks for none).
        if !w.sync_mode {
            return;
        }
        for p in 0..NODES {
            if !w.writer(p, now) {
                continue;
            }
            let wal = w.pg[p].data.wal;
            let upto = match parse_ssn(&w.pg[p].ssn) {
                None => Some(wal),
                Some(rule) => {
                    let mut confirmed: Vec<u64> = (0..NODES)
                        .filter(|&s| {
                            let r = &w.pg[s];
                            r.proc == Proc::Replica
                                && r.streaming
                                && r.upstream == Some(p)
                                && rule.names.contains(&format!("n{s}"))
                        })
                        .map(|s| w.pg[s].data.wal)
                        .collect();
                    confirmed.sort_unstable_by(|a, b| b.cmp(a));
                    confirmed.get(rule.k.max(1) - 1).map(|&x| x.min(wal))
                }
            };
            if let Some(pos) = upto {
                let more = match &w.acked {
                    Some(a) => pos > a.wal && a.is_prefix_of(&w.pg[p].data),
                    None => true,
                };
                if more {
                    let mut acked = w.pg[p].data.clone();
                    acked.lineage.retain(|l| l.1 <= pos);
                    acked.wal = pos;
                    w.acked = Some(acked);
                    w.acks += 1;
                }
            }
        }
    }

    /// The checker: at most one node acknowledges commits; at most one PostgreSQL runs as
    /// primary among the nodes whose daemon runs (a frozen daemon cannot stop its PostgreSQL,
    /// only its fence keeps it from acknowledging; once thawed, its lease guard stops it within
    /// a second); no writer lacks an acknowledged commit.
    pub fn check(&self, at: Duration) {
        let mut w = self.lock();
        let now = Instant::now();
        let writers: Vec<usize> = (0..NODES).filter(|&i| w.writer(i, now)).collect();
        if writers.len() > 1 {
            let states: Vec<String> = (0..NODES)
                .map(|i| format!("{:?} {:?} [{}]", w.pg[i].proc, w.fence[i], w.pg[i].data))
                .collect();
            let v = format!("t={at:?}: two nodes acknowledge commits {writers:?}: {states:?}");
            if w.violations.len() < 5 {
                w.violations.push(v);
            }
        }
        let primaries: Vec<usize> = (0..NODES)
            .filter(|&i| w.pg[i].proc == Proc::Primary)
            .filter(|&i| {
                !w.frozen[i]
                    && w.thawed_at[i]
                        .map(|t| now.duration_since(t) > Duration::from_secs(1))
                        .unwrap_or(true)
            })
            .collect();
        if let Some(a) = w.acked.clone() {
            for &p in &writers {
                if !a.is_prefix_of(&w.pg[p].data) {
                    let v = format!(
                        "t={at:?}: n{p} runs as primary without the acknowledged write [{a}] (its history [{}])",
                        w.pg[p].data
                    );
                    if w.violations.len() < 5 {
                        w.violations.push(v);
                    }
                }
            }
        }
        if primaries.len() > 1 {
            let states: Vec<String> =
                w.pg.iter()
                    .map(|p| format!("{:?} [{}]", p.proc, p.data))
                    .collect();
            let v = format!("t={at:?}: two primaries {primaries:?}: {states:?}");
            if w.violations.len() < 5 {
                w.violations.push(v);
            }
        }
    }
}
