//! The backup schedule in the daemon: every node follows the cron schedule; when it fires, the
//! member [`super::run::choose_source`] picks (the leader, or the first streaming replica with
//! `from_replica`) takes the backup, under the cluster's backup lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::archiver::ArchiveStats;
use super::run::{backup_now, choose_source, Job};
use super::schedule::Schedule;
use crate::dcs::Dcs;
use crate::ha::state::NodeState;

/// Runs the schedule for ever.
pub async fn run(
    schedule: Schedule,
    dcs: Arc<dyn Dcs>,
    job: Job,
    node: watch::Receiver<Arc<NodeState>>,
    stats: Arc<ArchiveStats>,
) {
    let from_replica = job
        .cfg
        .backup_settings()
        .map(|b| b.from_replica)
        .unwrap_or(false);
    loop {
        if !sleep_until_next(&schedule).await {
            tracing::warn!("the backup schedule never fires; no scheduled backups");
            return;
        }
        let cluster = node.borrow().cluster.clone();
        let Some(cluster) = cluster else { continue };
        match choose_source(&cluster, from_replica) {
            Ok((name, ..)) if name == job.cfg.name => {}
            _ => continue,
        }
        match backup_now(
            dcs.clone(),
            &cluster,
            &job,
            from_replica,
            Arc::new(super::base::Progress::default()),
        )
        .await
        {
            Ok((m, retention)) => {
                record(&stats, &m);
                if let Err(e) = retention {
                    tracing::warn!("retention after the scheduled backup failed: {e}");
                }
            }
            Err(e) => {
                stats.backup_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("scheduled base backup failed: {}", crate::error_chain(&e));
            }
        }
    }
}

/// Runs the restore drill on its schedule for ever: when it fires, the member
/// [`choose_source`] picks with `from_replica` (the first streaming replica, else the leader)
/// restores the newest backup into a scratch directory beside its data directory, starts it
/// and reads every relation; the result goes into the counters (`/metrics`).
pub async fn run_drills(
    schedule: Schedule,
    job: Job,
    node: watch::Receiver<Arc<NodeState>>,
    stats: Arc<ArchiveStats>,
) {
    let scratch_root = job
        .cfg
        .postgresql
        .data_dir
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    loop {
        if !sleep_until_next(&schedule).await {
            tracing::warn!("backup.verify_schedule never fires; no restore drills");
            return;
        }
        let cluster = node.borrow().cluster.clone();
        let Some(cluster) = cluster else { continue };
        match choose_source(&cluster, true) {
            Ok((name, ..)) if name == job.cfg.name => {}
            _ => continue,
        }
        let newest = match super::catalog::backups(&*job.storage, &job.base).await {
            Ok((mut all, _)) => all.pop(),
            Err(e) => {
                tracing::warn!(
                    "restore drill: cannot list the backups: {}",
                    crate::error_chain(&e)
                );
                None
            }
        };
        let Some(m) = newest else {
            tracing::info!("restore drill: no complete backup to verify yet");
            continue;
        };
        let drill = super::verify::Drill {
            storage: job.storage.clone(),
            base: job.base.clone(),
            key: job.key.clone(),
            bin_dir: crate::ha::daemon::bin_dir(&job.cfg),
            superuser: job.cfg.postgresql.authentication.superuser.username.clone(),
            scratch_root: scratch_root.clone(),
            timeout: Duration::from_secs(job.cfg.postgresql.pg_ctl_timeout.unwrap_or(600).max(60)),
        };
        tracing::info!(backup = %m.name, "restore drill: restoring, starting and checking the newest backup");
        let r = super::verify::verify(&drill, &m).await;
        stats
            .verify_last_ok
            .store(u64::from(r.ok), Ordering::Relaxed);
        stats
            .verify_last_millis
            .store((r.seconds * 1000.0) as u64, Ordering::Relaxed);
        stats
            .verify_last_unix
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
        if r.ok {
            tracing::info!(
                backup = %r.backup,
                seconds = r.seconds,
                check = %r.check,
                "restore drill passed: {}",
                r.detail
            );
        } else {
            stats.verify_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(backup = %r.backup, "restore drill FAILED: {}", r.detail);
        }
    }
}

/// Sleeps until the schedule's next time (false: it never fires), in short steps so that a
/// clock that jumps is noticed.
async fn sleep_until_next(schedule: &Schedule) -> bool {
    let Some(next) = schedule.next_after(chrono::Utc::now()) else {
        return false;
    };
    loop {
        let left = (next - chrono::Utc::now()).num_milliseconds();
        if left <= 0 {
            return true;
        }
        let step = u64::try_from(left).unwrap_or(0).min(30_000);
        tokio::time::sleep(Duration::from_millis(step)).await;
    }
}

/// Records a finished backup in the counters.
pub fn record(stats: &ArchiveStats, m: &super::base::Manifest) {
    stats.backups.fetch_add(1, Ordering::Relaxed);
    stats
        .backup_last_unix
        .store(m.finished().map_or(0, |t| t.timestamp()), Ordering::Relaxed);
    stats.backup_last_bytes.store(m.size, Ordering::Relaxed);
    stats
        .backup_last_stored_bytes
        .store(m.compressed_size, Ordering::Relaxed);
    stats
        .backup_last_millis
        .store((m.duration_secs * 1000.0) as u64, Ordering::Relaxed);
}
