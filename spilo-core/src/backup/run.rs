//! One backup for the cluster, start to end: choose the member to copy, hold the cluster's
//! backup lock (the DCS key `backup`, so that only one runs at a time), take it, then apply
//! retention. Used by the daemon's schedule and by `spiloctl backup create`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spilo_sdk::dcs::Cas;
use spilo_sdk::storage::{Storage, StorageError};

use super::base::{self, BackupError, Manifest, Progress, Request};
use super::catalog::{self, RetentionPlan};
use crate::config::Config;
use crate::dcs::{Cluster, Dcs};
use crate::postgres::basebackup::Source;

/// The DCS key that holds the cluster's backup lock.
pub const LOCK_KEY: &str = "backup";
/// A lock whose holder has not refreshed it for this long is taken over.
const STALE_SECS: i64 = 600;

/// Why there is no member to copy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoSource {
    /// No leader.
    #[error("the cluster has no leader")]
    NoLeader,
    /// The leader's member key has no connection URL.
    #[error("the leader {0} publishes no connection URL")]
    NoConnectionUrl(String),
}

/// Why retention could not be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum RetainError {
    /// Listing or deleting in the store failed.
    #[error("{}", crate::error_chain(.0))]
    Storage(#[source] StorageError),
    /// `backup.retain.pitr_window` is not a window.
    #[error("{0}")]
    Window(#[from] crate::config::backup::WindowError),
}

/// The member to copy: the leader, or with `from_replica` the first streaming replica by
/// name (the leader when there is none). `(name, host, port, is_replica)`.
pub fn choose_source(
    c: &Cluster,
    from_replica: bool,
) -> Result<(String, String, u16, bool), NoSource> {
    let leader = c
        .leader
        .as_ref()
        .map(|l| l.name.clone())
        .ok_or(NoSource::NoLeader)?;
    let pick = |name: &str| {
        c.member(name)
            .and_then(|m| m.host_port())
            .map(|(h, p)| (name.to_string(), h, p))
    };
    if from_replica {
        let mut replicas: Vec<&crate::dcs::Member> = c
            .members
            .iter()
            .filter(|m| {
                m.name != leader
                    && m.data.state == "running"
                    && m.data.replication_state.as_deref() == Some("streaming")
                    && !m.tag_bool("nofailover")
            })
            .collect();
        replicas.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some((n, h, p)) = replicas.first().and_then(|m| pick(&m.name)) {
            return Ok((n, h, p, true));
        }
    }
    let (n, h, p) = pick(&leader).ok_or_else(|| NoSource::NoConnectionUrl(leader.clone()))?;
    Ok((n, h, p, false))
}

/// The lock key's value: who holds it, since when, and a heartbeat (now).
fn lock_value(who: &str, started: i64) -> Vec<u8> {
    json!({"member": who, "started": started, "heartbeat": chrono::Utc::now().timestamp()})
        .to_string()
        .into_bytes()
}

/// Holds the backup lock; refreshes it while alive, deletes it when dropped.
pub struct Lock {
    refresh: tokio::task::JoinHandle<()>,
    dcs: Arc<dyn Dcs>,
}

impl Lock {
    /// Takes the lock for `who`, taking over one left stale.
    pub async fn acquire(dcs: Arc<dyn Dcs>, who: &str) -> Result<Lock, BackupError> {
        let value = |started: i64| lock_value(who, started);
        let started = chrono::Utc::now().timestamp();
        let busy = |m: String| BackupError::Busy(m);
        let got = dcs
            .put(LOCK_KEY, &value(started), Cas::Absent)
            .await
            .map_err(|e| busy(format!("cannot write the backup lock: {e}")))?;
        if !got {
            let snap = dcs
                .snapshot()
                .await
                .map_err(|e| busy(format!("cannot read the backup lock: {e}")))?;
            let Some(e) = snap.get(LOCK_KEY) else {
                return Err(busy("the backup lock changed meanwhile; try again".into()));
            };
            let held: serde_json::Value = serde_json::from_slice(&e.value).unwrap_or_default();
            let beat = held["heartbeat"].as_i64().unwrap_or(0);
            if chrono::Utc::now().timestamp() - beat < STALE_SECS {
                return Err(busy(format!(
                    "{} holds the backup lock (started {})",
                    held["member"].as_str().unwrap_or("?"),
                    held["started"]
                )));
            }
            let took = dcs
                .put(LOCK_KEY, &value(started), Cas::Version(e.version))
                .await
                .map_err(|e| busy(format!("cannot take over the stale backup lock: {e}")))?;
            if !took {
                return Err(busy("another backup took the stale lock first".into()));
            }
            tracing::warn!(
                "took over a stale backup lock of {}",
                held["member"].as_str().unwrap_or("?")
            );
        }
        let d = dcs.clone();
        let who = who.to_string();
        let refresh = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let _ = d.put(LOCK_KEY, &lock_value(&who, started), Cas::Any).await;
            }
        });
        Ok(Lock { refresh, dcs })
    }

    /// Stops refreshing and deletes the lock.
    pub async fn release(self) {
        self.refresh.abort();
        let _ = self.dcs.delete(LOCK_KEY, Cas::Any).await;
    }
}

/// Everything one backup needs from the configuration.
#[derive(Clone)]
pub struct Job {
    /// The store.
    pub storage: Arc<dyn Storage>,
    /// The cluster's key prefix.
    pub base: String,
    /// The configuration (credentials, binaries, retention).
    pub cfg: Config,
    /// PostgreSQL major version.
    pub pg_version: u32,
    /// The `backup.encryption` key, read once when the job is made (a KMS secret is opened
    /// then, not at every backup).
    pub key: Option<crate::backup::crypt::SecretKey>,
}

/// Takes a backup of the cluster `c` under the lock, then applies retention (a failure there is
/// returned as the plan's error text, the backup stands).
pub async fn backup_now(
    dcs: Arc<dyn Dcs>,
    c: &Cluster,
    job: &Job,
    from_replica: bool,
    progress: Arc<Progress>,
) -> Result<(Manifest, Result<RetentionPlan, RetainError>), BackupError> {
    let (member, host, port, is_replica) =
        choose_source(c, from_replica).map_err(|e| BackupError::Setup(e.to_string()))?;
    let settings = job.cfg.backup_settings().unwrap_or_default();
    let rep = &job.cfg.postgresql.authentication.replication;
    let req = Request {
        base: job.base.clone(),
        source: Source {
            host,
            port,
            user: rep.username.clone(),
            password: rep.password.clone(),
        },
        member: member.clone(),
        from_replica: is_replica,
        bin_dir: crate::ha::daemon::bin_dir(&job.cfg),
        level: settings.compression_level,
        system_identifier: c.sysid().map(str::to_string),
        pg_version: job.pg_version,
        key: job.key.clone(),
    };
    let lock = Lock::acquire(dcs, &job.cfg.name).await?;
    tracing::info!(source = %member, from_replica = is_replica, "base backup started");
    let taken = base::take(job.storage.clone(), &req, progress).await;
    lock.release().await;
    let m = taken?;
    tracing::info!(
        backup = %m.name,
        bytes = m.size,
        stored = m.compressed_size,
        seconds = m.duration_secs,
        "base backup finished"
    );
    let retention = retain(job, &settings.retain, false).await;
    Ok((m, retention))
}

/// Plans retention and, unless `dry_run`, applies it.
pub async fn retain(
    job: &Job,
    rules: &crate::config::backup::Retain,
    dry_run: bool,
) -> Result<RetentionPlan, RetainError> {
    let s = &*job.storage;
    let (backups, _) = catalog::backups(s, &job.base)
        .await
        .map_err(RetainError::Storage)?;
    let wal = catalog::wal(s, &job.base)
        .await
        .map_err(RetainError::Storage)?;
    let plan = catalog::plan_retention(&backups, &wal, rules, chrono::Utc::now())?;
    if !dry_run && (!plan.delete.is_empty() || !plan.delete_wal.is_empty()) {
        catalog::prune(s, &job.base, &backups, &plan)
            .await
            .map_err(RetainError::Storage)?;
        tracing::info!(
            deleted_backups = plan.delete.len(),
            deleted_wal = plan.delete_wal.len(),
            "retention applied"
        );
    }
    Ok(plan)
}
