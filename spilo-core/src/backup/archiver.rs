//! The WAL archiver: one long-lived uploader in the daemon instead of a process per segment.
//!
//! PostgreSQL's `archive_command` is `spilo wal-push`, a thin client of the daemon's archive
//! socket ([`super::socket`]). For each request the daemon answers from what it already
//! uploaded ahead, waits for an upload in flight, or uploads now; and it starts uploading the
//! next `.ready` files (up to `readahead`, at most `upload_concurrency` at once) so that the
//! following requests find their segment already stored. Throughput therefore does not hang on
//! one round trip per segment.
//!
//! Promises:
//! - "archived" is answered only after the object is durably stored (the backend's `finish`);
//!   nothing is ever skipped or dropped: a failure is an error to PostgreSQL, which keeps the
//!   segment and asks again;
//! - put-if-absent: an object already at the key with the same original bytes (its trailer's
//!   digest) is success; different bytes are refused, naming the file and its timeline;
//! - every upload is bounded by `backup.archive.timeout` (with retries inside it);
//! - only the node holding the leader lease as a running primary archives: a node that lost it
//!   refuses at once and forgets what it uploaded ahead.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spilo_sdk::storage::{get_all, PutMode, Storage, StorageError};
use tokio::sync::{watch, Semaphore};

use super::layout::{self, WalFile};
use super::object::{self, Trailer};
use crate::ha::state::NodeState;

/// Why a WAL file was not archived.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Not a WAL file name PostgreSQL archives.
    #[error("'{0}' is not a WAL segment, partial segment, history or backup label file name")]
    BadName(String),
    /// This node does not hold the leader lease as a running primary.
    #[error("{0}: not archived: this node is not the primary holding the leader lease")]
    NotPrimary(String),
    /// Reading the file failed.
    #[error("{name}: cannot read it")]
    Read {
        /// The file.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store failed.
    #[error("{name}: upload failed")]
    Storage {
        /// The file.
        name: String,
        /// The store's error.
        #[source]
        source: StorageError,
    },
    /// Another object is already stored for this file: two primaries wrote it differently.
    #[error("{name} (timeline {timeline}): a different object is already archived at {key} (stored {stored}, this file's {ours}); refusing to overwrite it")]
    Conflict {
        /// The file.
        name: String,
        /// Its timeline.
        timeline: u32,
        /// The key.
        key: String,
        /// The stored object's digest (or what was found instead).
        stored: String,
        /// This file's digest.
        ours: String,
    },
    /// The upload did not finish in time.
    #[error("{name}: upload timed out after {after:?}")]
    Timeout {
        /// The file.
        name: String,
        /// The limit.
        after: Duration,
    },
}

impl ArchiveError {
    /// The cause's label in `/metrics`.
    pub fn cause(&self) -> Cause {
        match self {
            ArchiveError::BadName(_) => Cause::BadName,
            ArchiveError::NotPrimary(_) => Cause::NotPrimary,
            ArchiveError::Read { .. } => Cause::Read,
            ArchiveError::Storage { source, .. } => match source {
                StorageError::Timeout { .. } => Cause::Timeout,
                StorageError::Unreachable { .. } => Cause::Unreachable,
                _ => Cause::Storage,
            },
            ArchiveError::Conflict { .. } => Cause::Conflict,
            ArchiveError::Timeout { .. } => Cause::Timeout,
        }
    }
}

/// Failure causes, as `/metrics` labels them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Not a WAL file name.
    BadName,
    /// Not the primary.
    NotPrimary,
    /// The file could not be read.
    Read,
    /// The store did not answer in time.
    Timeout,
    /// The store could not be reached.
    Unreachable,
    /// The store refused.
    Storage,
    /// Different content already stored.
    Conflict,
}

impl Cause {
    /// Every cause, in label order.
    pub const ALL: [Cause; 7] = [
        Cause::BadName,
        Cause::NotPrimary,
        Cause::Read,
        Cause::Timeout,
        Cause::Unreachable,
        Cause::Storage,
        Cause::Conflict,
    ];

    /// The label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::BadName => "bad_name",
            Cause::NotPrimary => "not_primary",
            Cause::Read => "read",
            Cause::Timeout => "timeout",
            Cause::Unreachable => "unreachable",
            Cause::Storage => "storage",
            Cause::Conflict => "conflict",
        }
    }
}

/// Where a restore of a base backup on this node stands (a replica built from a backup, a
/// clone's bootstrap), for `GET /patroni` and `spiloctl clone --follow`.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// The backup.
    pub backup: Mutex<String>,
    /// 0 none yet, 1 downloading, 2 replaying WAL (a clone, to its target), 3 done, 4 failed.
    pub phase: AtomicU64,
    /// Bytes to download (the backup's stored size).
    pub total: AtomicU64,
    /// Bytes downloaded so far.
    pub done: AtomicU64,
    /// WAL files fetched before the restore began (the replay's count starts there).
    pub fetched_before: AtomicU64,
    /// What failed, when it failed.
    pub error: Mutex<String>,
}

impl RestoreProgress {
    /// A restore of `backup` (`total` bytes stored) begins.
    pub fn begin(&self, backup: &str, total: u64, fetched: u64) {
        if let Ok(mut b) = self.backup.lock() {
            *b = backup.to_string();
        }
        if let Ok(mut e) = self.error.lock() {
            e.clear();
        }
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.fetched_before.store(fetched, Ordering::Relaxed);
        self.phase.store(1, Ordering::Relaxed);
    }

    /// The next phase (2 replaying, 3 done).
    pub fn enter(&self, phase: u64) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// It failed, with this cause.
    pub fn fail(&self, why: &str) {
        if let Ok(mut e) = self.error.lock() {
            *e = why.to_string();
        }
        self.phase.store(4, Ordering::Relaxed);
    }

    /// `GET /patroni`'s `restore` object (None before any restore).
    pub fn json(&self, fetched_now: u64) -> Option<serde_json::Value> {
        let phase = match self.phase.load(Ordering::Relaxed) {
            1 => "downloading",
            2 => "replaying",
            3 => "done",
            4 => "failed",
            _ => return None,
        };
        let text = |m: &Mutex<String>| m.lock().map(|g| g.clone()).unwrap_or_default();
        Some(serde_json::json!({
            "backup": text(&self.backup),
            "phase": phase,
            "downloaded_bytes": self.done.load(Ordering::Relaxed),
            "total_bytes": self.total.load(Ordering::Relaxed),
            "wal_fetched": fetched_now.saturating_sub(self.fetched_before.load(Ordering::Relaxed)),
            "error": Some(text(&self.error)).filter(|e| !e.is_empty()),
        }))
    }
}

/// Counters for `/metrics` and `/patroni`.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Files PostgreSQL was told are archived.
    pub archived: AtomicU64,
    /// Of those, files uploaded ahead of PostgreSQL's request.
    pub ahead_hits: AtomicU64,
    /// Files found already stored with the same content (retries).
    pub duplicates: AtomicU64,
    /// Original bytes uploaded.
    pub bytes_in: AtomicU64,
    /// Stored (compressed) bytes uploaded.
    pub bytes_out: AtomicU64,
    /// Failures by [`Cause`] (index in [`Cause::ALL`]).
    pub failures: [AtomicU64; 7],
    /// Unix time of the last file archived (0: never).
    pub last_success_unix: AtomicI64,
    /// Unix time of the last failure (0: never).
    pub last_failure_unix: AtomicI64,
    /// `.ready` files waiting at the last look.
    pub ready: AtomicU64,
    /// Bytes in `pg_wal` at the last look.
    pub pg_wal_bytes: AtomicU64,
    /// `pg_wal` is past `backup.archive.pg_wal_warning_mb`.
    pub pg_wal_over: AtomicBool,
    /// Unix time the last base backup this node took finished (0: none).
    pub backup_last_unix: AtomicI64,
    /// Its size in bytes (before compression).
    pub backup_last_bytes: AtomicU64,
    /// Its stored size.
    pub backup_last_stored_bytes: AtomicU64,
    /// Its duration in milliseconds.
    pub backup_last_millis: AtomicU64,
    /// Base backups this node took.
    pub backups: AtomicU64,
    /// Base backups that failed on this node.
    pub backup_failures: AtomicU64,
    /// The cause of the last failure (index in [`Cause::ALL`] + 1; 0: none).
    pub last_failure_cause: std::sync::atomic::AtomicUsize,
    /// WAL files restored for `restore_command`.
    pub fetched: AtomicU64,
    /// Of those, files the prefetch had ready.
    pub fetch_prefetched: AtomicU64,
    /// Requests for files the archive does not hold.
    pub fetch_missing: AtomicU64,
    /// Requests that failed (store, object, timeout).
    pub fetch_failures: AtomicU64,
    /// Bytes of WAL restored.
    pub fetch_bytes: AtomicU64,
    /// Unix time the last restore drill on this node ended (0: none).
    pub verify_last_unix: AtomicI64,
    /// Its result: 1 passed, 0 failed (meaningful once `verify_last_unix` is set).
    pub verify_last_ok: AtomicU64,
    /// Its duration in milliseconds.
    pub verify_last_millis: AtomicU64,
    /// Restore drills that failed on this node.
    pub verify_failures: AtomicU64,
    /// The last restore of a base backup on this node.
    pub restore: RestoreProgress,
}

impl ArchiveStats {
    fn fail(&self, e: &ArchiveError) {
        let i = Cause::ALL.iter().position(|c| *c == e.cause()).unwrap_or(0);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
        self.last_failure_cause.store(i + 1, Ordering::Relaxed);
        self.last_failure_unix
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }

    /// One word on the archive for the member key and `spiloctl list` (changes rarely, so the
    /// member key is not rewritten every cycle): `ok`, `behind (N waiting)`, or `failing:
    /// <cause>` when the last attempt failed; `None` before anything was archived or tried.
    pub fn summary(&self) -> Option<String> {
        let ok = self.last_success_unix.load(Ordering::Relaxed);
        let bad = self.last_failure_unix.load(Ordering::Relaxed);
        if ok == 0 && bad == 0 {
            return None;
        }
        if bad > ok {
            let i = self.last_failure_cause.load(Ordering::Relaxed);
            let cause = i
                .checked_sub(1)
                .and_then(|i| Cause::ALL.get(i))
                .map_or("unknown", |c| c.label());
            return Some(format!("failing: {cause}"));
        }
        let waiting = self.ready.load(Ordering::Relaxed);
        if waiting > 2 {
            return Some(format!("behind ({waiting} waiting)"));
        }
        Some("ok".into())
    }

    /// The archive's figures for `GET /patroni`.
    pub fn status_json(&self) -> serde_json::Value {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut failures = serde_json::Map::new();
        for c in Cause::ALL {
            let n = self.failures_of(c);
            if n > 0 {
                failures.insert(c.label().into(), n.into());
            }
        }
        serde_json::json!({
            "state": self.summary(),
            "archived": l(&self.archived),
            "waiting": l(&self.ready),
            "failures": failures,
            "last_archived_at": self.last_success_unix.load(Ordering::Relaxed),
            "pg_wal_bytes": l(&self.pg_wal_bytes),
            "last_backup_at": self.backup_last_unix.load(Ordering::Relaxed),
            "last_backup_bytes": l(&self.backup_last_bytes),
            "restore": self.restore.json(l(&self.fetched)),
        })
    }

    /// Failures of `cause` so far.
    pub fn failures_of(&self, cause: Cause) -> u64 {
        let i = Cause::ALL.iter().position(|c| *c == cause).unwrap_or(0);
        self.failures[i].load(Ordering::Relaxed)
    }
}

/// The archiver's settings.
#[derive(Clone, Debug)]
pub struct ArchiverSettings {
    /// The cluster's key prefix (see [`crate::config::backup::StorageConfig::base_prefix`]).
    pub base: String,
    /// `pg_wal` of the local data directory.
    pub pg_wal: PathBuf,
    /// zstd level.
    pub level: i32,
    /// Per-file limit.
    pub timeout: Duration,
    /// Files uploaded ahead of requests.
    pub readahead: usize,
    /// Uploads at once.
    pub concurrency: usize,
    /// Warn when `pg_wal` exceeds this many bytes (0: never).
    pub pg_wal_warning_bytes: u64,
    /// Seal objects with this key (`backup.encryption`).
    pub key: Option<super::crypt::SecretKey>,
    /// A standby cluster's leader archives too (`backup.archive.standby_leader`).
    pub standby_leader: bool,
}

type Outcome = Option<Result<(), Arc<ArchiveError>>>;

#[derive(Default)]
struct Table {
    /// Uploaded ahead, not yet asked for.
    done: HashSet<String>,
    /// Uploads in flight; each publishes its outcome once.
    inflight: HashMap<String, watch::Receiver<Outcome>>,
    /// Answered as stored to PostgreSQL, whose `.ready` file may still be there until it
    /// renames it: never uploaded ahead again (a second upload would cost a compression and
    /// a comparison). Dropped once a listing taken after the answer shows the `.ready` file
    /// gone.
    answered: HashMap<String, std::time::Instant>,
}

struct Shared {
    storage: Arc<dyn Storage>,
    s: ArchiverSettings,
    permits: Semaphore,
    node: watch::Receiver<Arc<NodeState>>,
    stats: Arc<ArchiveStats>,
    table: Mutex<Table>,
    /// Compression workspaces between uploads (at most one per upload slot), with when each
    /// was last put back; [`Archiver::tick`] frees those idle for [`WORKSPACE_IDLE`].
    workspaces: Mutex<Vec<(std::time::Instant, object::Workspace)>>,
}

/// The archiver (cheap to clone).
#[derive(Clone)]
pub struct Archiver {
    sh: Arc<Shared>,
}

const CHUNK: usize = 1 << 20;
/// Bytes of an object handed to the store at once (more when one piece is larger).
const BATCH: usize = 1 << 20;
/// How long an unused compression workspace (some 4.5 MB) is kept for the next upload.
const WORKSPACE_IDLE: Duration = Duration::from_secs(10);
/// How long a request waits for this node to become the archiving primary before it is
/// refused (`not_primary`).
const PROMOTION_GRACE: Duration = Duration::from_secs(3);

impl Archiver {
    /// An archiver uploading to `storage`, archiving while `node` says this node holds the
    /// lease as a running primary, counting into `stats`.
    pub fn new(
        storage: Arc<dyn Storage>,
        s: ArchiverSettings,
        node: watch::Receiver<Arc<NodeState>>,
        stats: Arc<ArchiveStats>,
    ) -> Archiver {
        let permits = Semaphore::new(s.concurrency.max(1));
        Archiver {
            sh: Arc::new(Shared {
                storage,
                s,
                permits,
                node,
                stats,
                table: Mutex::new(Table::default()),
                workspaces: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ArchiveStats> {
        self.sh.stats.clone()
    }

    fn allowed(&self) -> bool {
        let n = self.sh.node.borrow();
        let archiving_role = n.pg.role.is_primary()
            || (self.sh.s.standby_leader && n.pg.role == crate::ha::state::Role::StandbyLeader);
        archiving_role && n.holds_lock(crate::clock::now())
    }

    /// A replica asked to archive (`archive_mode = always`, set in a standby cluster whose
    /// leader archives): it uploads nothing, and answers success once the archive holds the
    /// same bytes (its standby leader archived them), so that its `pg_wal` does not keep
    /// what is already safe.
    fn replica_of_archiving_leader(&self) -> bool {
        self.sh.s.standby_leader && self.sh.node.borrow().pg.role == crate::ha::state::Role::Replica
    }

    /// The trailer, with `algo`'s digest, of `pg_wal/<name>` (what an object of its bytes holds).
    async fn local_trailer(&self, name: &str, algo: object::Algo) -> Result<Trailer, ArchiveError> {
        let path = self.sh.s.pg_wal.join(name);
        tokio::task::spawn_blocking(move || {
            Trailer::of_reader(std::fs::File::open(path)?, algo, CHUNK)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| ArchiveError::Read {
            name: name.to_string(),
            source,
        })
    }

    /// Whether the archive holds `name` with the bytes of the local file.
    async fn held_by_archive(&self, name: &str) -> Result<(), ArchiveError> {
        let trailer = self.local_trailer(name, object::Algo::WRITE).await?;
        let key = layout::wal_key(&self.sh.s.base, name);
        self.compare(name, &key, &trailer).await
    }

    /// Whether this node becomes the archiving primary within a short grace. Just after a
    /// promotion PostgreSQL archives before the daemon has published its new role; a refusal
    /// then would cost a second of PostgreSQL's retry sleep. Nothing is uploaded meanwhile.
    async fn becomes_allowed(&self) -> bool {
        let grace = PROMOTION_GRACE.min(self.sh.s.timeout);
        let mut node = self.sh.node.clone();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if self.allowed() {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            // A changed node state, or a fresh look at the lease's clock.
            let step = left.min(Duration::from_millis(100));
            if let Ok(Err(_)) = tokio::time::timeout(step, node.changed()).await {
                // The daemon is going away: no state will change any more.
                tokio::time::sleep(step).await;
            }
        }
    }

    /// Archives `name` (a file in `pg_wal`) for PostgreSQL: `Ok` only once it is stored.
    pub async fn push(&self, name: &str) -> Result<(), Arc<ArchiveError>> {
        let r = self.push_inner(name).await;
        match &r {
            Ok(()) => {
                self.sh.stats.archived.fetch_add(1, Ordering::Relaxed);
                self.sh
                    .stats
                    .last_success_unix
                    .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
            }
            Err(e) if self.replica_of_archiving_leader() => {
                // Waiting for the standby leader to archive it: PostgreSQL asks again.
                tracing::debug!(file = name, "{}", crate::error_chain(&**e));
            }
            Err(e) => {
                self.sh.stats.fail(e);
                tracing::warn!(
                    file = name,
                    "WAL archiving failed: {}",
                    crate::error_chain(&**e)
                );
            }
        }
        r
    }

    async fn push_inner(&self, name: &str) -> Result<(), Arc<ArchiveError>> {
        if layout::classify(name).is_none() {
            return Err(Arc::new(ArchiveError::BadName(name.to_string())));
        }
        if !self.allowed() && self.replica_of_archiving_leader() {
            self.forget();
            return match self.held_by_archive(name).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::debug!(file = name, "not in the archive yet: {e}");
                    Err(Arc::new(ArchiveError::NotPrimary(name.to_string())))
                }
            };
        }
        if !self.allowed() && !self.becomes_allowed().await {
            self.forget();
            return Err(Arc::new(ArchiveError::NotPrimary(name.to_string())));
        }
        let waiting = {
            let mut t = self.sh.table.lock().unwrap_or_else(|p| p.into_inner());
            if t.done.remove(name) {
                self.sh.stats.ahead_hits.fetch_add(1, Ordering::Relaxed);
                t.answered.insert(name.to_string(), crate::clock::now());
                None
            } else {
                Some(match t.inflight.get(name) {
                    Some(rx) => rx.clone(),
                    None => self.start(&mut t, name),
                })
            }
        };
        self.kick();
        let Some(mut rx) = waiting else {
            return Ok(());
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        // Taken by this request: it is not "ahead" any more.
        {
            let mut t = self.sh.table.lock().unwrap_or_else(|p| p.into_inner());
            t.done.remove(name);
            if matches!(outcome, Some(Ok(()))) {
                t.answered.insert(name.to_string(), crate::clock::now());
            }
        }
        outcome.unwrap_or_else(|| {
            Err(Arc::new(ArchiveError::Timeout {
                name: name.to_string(),
                after: self.sh.s.timeout,
            }))
        })
    }

    /// Starts the upload of `name` (the table is locked by the caller).
    fn start(&self, t: &mut Table, name: &str) -> watch::Receiver<Outcome> {
        let (tx, rx) = watch::channel(None);
        t.inflight.insert(name.to_string(), rx.clone());
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let r = me.upload_bounded(&name).await.map_err(Arc::new);
            {
                let mut t = me.sh.table.lock().unwrap_or_else(|p| p.into_inner());
                t.inflight.remove(&name);
                if r.is_ok() {
                    t.done.insert(name.clone());
                }
            }
            let ok = r.is_ok();
            let _ = tx.send(Some(r));
            // A slot is free: keep the read-ahead full instead of waiting for PostgreSQL's
            // next request (it may be waiting on a slower upload).
            if ok {
                me.kick();
            }
        });
        rx
    }

    /// Forgets uploads made ahead (the node is no longer the primary).
    fn forget(&self) {
        let mut t = self.sh.table.lock().unwrap_or_else(|p| p.into_inner());
        t.done.clear();
        t.answered.clear();
    }

    /// Starts uploads of the next `.ready` files, up to `readahead` ahead.
    pub fn kick(&self) {
        if self.sh.s.readahead == 0 || !self.allowed() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let dir = me.sh.s.pg_wal.join("archive_status");
            let listed_at = crate::clock::now();
            let Ok(Ok(ready)) = tokio::task::spawn_blocking(move || ready_files(&dir)).await else {
                return;
            };
            me.sh
                .stats
                .ready
                .store(ready.len() as u64, Ordering::Relaxed);
            if !me.allowed() {
                return;
            }
            let mut t = me.sh.table.lock().unwrap_or_else(|p| p.into_inner());
            let still: HashSet<&str> = ready.iter().map(String::as_str).collect();
            // An answer newer than the listing may be missing from it only because the
            // listing is old: keep it.
            t.answered
                .retain(|n, at| *at >= listed_at || still.contains(n.as_str()));
            for name in &ready {
                if t.done.len() + t.inflight.len() >= me.sh.s.readahead {
                    break;
                }
                if t.done.contains(name)
                    || t.inflight.contains_key(name)
                    || t.answered.contains_key(name)
                {
                    continue;
                }
                me.start(&mut t, name);
            }
        });
    }

    async fn upload_bounded(&self, name: &str) -> Result<(), ArchiveError> {
        let limit = self.sh.s.timeout;
        let _permit = match tokio::time::timeout(limit, self.sh.permits.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(ArchiveError::Timeout {
                    name: name.into(),
                    after: limit,
                })
            }
        };
        let attempts = async {
            let mut backoff = Duration::from_millis(250);
            loop {
                if !self.allowed() {
                    return Err(ArchiveError::NotPrimary(name.to_string()));
                }
                match self.upload(name).await {
                    Err(ArchiveError::Storage { source, .. })
                        if matches!(
                            source,
                            StorageError::Unreachable { .. } | StorageError::Timeout { .. }
                        ) =>
                    {
                        tracing::info!(file = name, "retrying the upload in {backoff:?}: {source}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(limit, attempts).await {
            Ok(r) => r,
            Err(_) => Err(ArchiveError::Timeout {
                name: name.into(),
                after: limit,
            }),
        }
    }

    /// One attempt: compress the file into the store.
    async fn upload(&self, name: &str) -> Result<(), ArchiveError> {
        let key = layout::wal_key(&self.sh.s.base, name);
        let storage_err = |source| ArchiveError::Storage {
            name: name.to_string(),
            source,
        };
        let path = self.sh.s.pg_wal.join(name);
        let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(|e| ArchiveError::Read {
                name: name.to_string(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| ArchiveError::Read {
                name: name.to_string(),
                source,
            })?;
        let mut up = self
            .sh
            .storage
            .put_open(&key, PutMode::IfAbsent)
            .await
            .map_err(storage_err)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let level = self.sh.s.level;
        let seal_key = self.sh.s.key.clone();
        let me = self.clone();
        let encoder = tokio::task::spawn_blocking(move || {
            let send = |batch: Vec<u8>| {
                tx.blocking_send(batch)
                    .map_err(|_| std::io::Error::other("the upload stopped"))
            };
            let mut ws = me.take_workspace(level)?;
            // The pieces go to the store in batches of about BATCH bytes: a segment of
            // ordinary WAL is one write (each write is a hand-off between threads, and for a
            // plugin's store a call on the blocking pool too).
            let mut batch = Vec::new();
            let r = object::encode_sealed_in(&mut ws, file, seal_key.as_ref(), |c| {
                if batch.capacity() == 0 {
                    // Below BATCH plus the largest piece (a chunk's compression bound and
                    // sealing's tags are within 1/32 of it): no reallocation.
                    batch.reserve_exact(BATCH + c.len().max(CHUNK + CHUNK / 32));
                }
                batch.extend_from_slice(c);
                if batch.len() >= BATCH {
                    send(std::mem::take(&mut batch))?;
                }
                Ok(())
            });
            me.put_workspace(ws);
            let trailer = r?;
            if !batch.is_empty() {
                send(batch)?;
            }
            Ok(trailer)
        });
        let mut out = 0u64;
        while let Some(c) = rx.recv().await {
            out += c.len() as u64;
            if let Err(e) = up.write_owned(c).await {
                up.abort().await;
                return Err(storage_err(e));
            }
        }
        let trailer = match encoder.await {
            Ok(Ok(t)) => t,
            Ok(Err(source)) => {
                up.abort().await;
                return Err(ArchiveError::Read {
                    name: name.to_string(),
                    source,
                });
            }
            Err(e) => {
                up.abort().await;
                return Err(ArchiveError::Read {
                    name: name.to_string(),
                    source: std::io::Error::other(e),
                });
            }
        };
        match up.finish().await {
            Ok(()) => {
                self.sh
                    .stats
                    .bytes_in
                    .fetch_add(trailer.size, Ordering::Relaxed);
                self.sh.stats.bytes_out.fetch_add(out, Ordering::Relaxed);
                Ok(())
            }
            Err(StorageError::Exists { .. }) => self.compare(name, &key, &trailer).await,
            Err(e) => Err(storage_err(e)),
        }
    }

    /// A compression workspace from the pool, or a new one.
    fn take_workspace(&self, level: i32) -> std::io::Result<object::Workspace> {
        let kept = {
            let mut pool = self.sh.workspaces.lock().unwrap_or_else(|p| p.into_inner());
            pool.pop()
        };
        match kept {
            Some((_, ws)) if ws.fits(level, CHUNK) => Ok(ws),
            _ => object::Workspace::new(level, CHUNK),
        }
    }

    /// Puts a workspace back for the next upload.
    fn put_workspace(&self, ws: object::Workspace) {
        let mut pool = self.sh.workspaces.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.sh.s.concurrency.max(1) {
            pool.push((crate::clock::now(), ws));
        }
    }

    /// A put-if-absent found an object: the same original bytes are success.
    async fn compare(&self, name: &str, key: &str, ours: &Trailer) -> Result<(), ArchiveError> {
        let stored = get_all(&*self.sh.storage, key, CHUNK)
            .await
            .map_err(|source| ArchiveError::Storage {
                name: name.to_string(),
                source,
            })?;
        let plain;
        let stored = if super::crypt::is_sealed(&stored) {
            match self
                .sh
                .s
                .key
                .as_ref()
                .map(|k| super::crypt::open(k, key, &stored))
            {
                Some(Ok(p)) => {
                    plain = p;
                    &plain[..]
                }
                _ => &stored[..0],
            }
        } else {
            &stored[..]
        };
        let found = Trailer::find(stored);
        // An object written before the digest changed: this file's digest of its kind.
        let rehashed;
        let ours = match found {
            Some(t) if t.algo != ours.algo && t.size == ours.size => {
                rehashed = self.local_trailer(name, t.algo).await?;
                &rehashed
            }
            _ => ours,
        };
        match found {
            Some(t) if t == *ours => {
                self.sh.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::info!(file = name, "already archived with the same content");
                Ok(())
            }
            found => Err(ArchiveError::Conflict {
                name: name.to_string(),
                timeline: layout::timeline(name).unwrap_or(0),
                key: key.to_string(),
                stored: match (found, Trailer::version_of(stored)) {
                    (Some(t), _) => t.describe(),
                    (None, Some(v)) => {
                        format!("unknown: a spilo trailer of version {v}, newer than this spilo")
                    }
                    (None, None) => "unknown: the object has no spilo trailer".into(),
                },
                ours: ours.describe(),
            }),
        }
    }

    /// Looks at `pg_wal` (size, `.ready` files) for the gauges and the warning, and uploads
    /// ahead; the daemon calls it every few seconds.
    pub async fn tick(&self) {
        if !self.allowed() {
            self.forget();
        }
        self.sh
            .workspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(at, _)| crate::clock::now().saturating_duration_since(*at) < WORKSPACE_IDLE);
        let dir = self.sh.s.pg_wal.clone();
        let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || dir_bytes(&dir)).await else {
            return;
        };
        self.sh.stats.pg_wal_bytes.store(bytes, Ordering::Relaxed);
        let limit = self.sh.s.pg_wal_warning_bytes;
        let over = limit > 0 && bytes > limit;
        let was = self.sh.stats.pg_wal_over.swap(over, Ordering::Relaxed);
        if over && !was {
            tracing::warn!(
                pg_wal_bytes = bytes,
                limit,
                waiting = self.sh.stats.ready.load(Ordering::Relaxed),
                "pg_wal has grown past backup.archive.pg_wal_warning_mb: WAL is not being archived fast enough (nothing is dropped; PostgreSQL keeps it until it is stored)"
            );
        }
        self.kick();
    }
}

/// `.ready` WAL files in `archive_status`, history files first, then by name.
fn ready_files(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut out: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let base = n.strip_suffix(".ready")?;
            layout::classify(base).map(|_| base.to_string())
        })
        .collect();
    out.sort_by_key(|n| (layout::classify(n) != Some(WalFile::History), n.clone()));
    Ok(out)
}

fn dir_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    for e in std::fs::read_dir(dir)? {
        let Ok(e) = e else { continue };
        if let Ok(m) = e.metadata() {
            if m.is_file() {
                total = total.saturating_add(m.len());
            }
        }
    }
    Ok(total)
}
