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
use crate::config::{Config, KeyProblem};
use crate::dcs::Dcs;
use crate::ha::state::NodeState;

/// The schedules the daemon follows: read at start and replaced by a reload (SIGHUP,
/// `POST /reload`), so a new `backup.schedule` applies without a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedules {
    /// `backup.schedule` (none: empty, no scheduled backups).
    pub backup: Option<Schedule>,
    /// `backup.verify_schedule` (none: no restore drills).
    pub verify: Option<Schedule>,
    /// `backup.from_replica`.
    pub from_replica: bool,
}

impl Schedules {
    /// The schedules of a configuration (none without a `storage:` section). The error names
    /// the key.
    pub fn from_config(cfg: &Config) -> Result<Schedules, KeyProblem> {
        let Some(b) = cfg.backup_settings() else {
            return Ok(Schedules::default());
        };
        let parse = |key: &str, text: &str| -> Result<Option<Schedule>, KeyProblem> {
            if text.trim().is_empty() {
                return Ok(None);
            }
            Schedule::parse(text)
                .map(Some)
                .map_err(|e| KeyProblem::new(key, e.to_string()))
        };
        Ok(Schedules {
            backup: parse("backup.schedule", &b.schedule)?,
            verify: parse("backup.verify_schedule", &b.verify_schedule)?,
            from_replica: b.from_replica,
        })
    }
}

/// Waits until the schedule `pick` chooses next fires (true), or the schedules change (false).
/// A schedule that never fires (or none) waits for a change; once the sender is gone the
/// current schedule is kept.
async fn next_firing(
    schedules: &mut watch::Receiver<Schedules>,
    pick: fn(&Schedules) -> Option<&Schedule>,
    what: &str,
) -> bool {
    wait_or_change(schedules, pick, what, |s| async move {
        sleep_until_next(&s).await
    })
    .await
}

/// [`next_firing`] with the wait for a schedule's next time given (`sleep`: false when it never
/// comes).
async fn wait_or_change<F, Fut>(
    schedules: &mut watch::Receiver<Schedules>,
    pick: fn(&Schedules) -> Option<&Schedule>,
    what: &str,
    sleep: F,
) -> bool
where
    F: FnOnce(Schedule) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    // The value is read (and its borrow released) before anything else runs.
    let current = pick(&schedules.borrow_and_update()).cloned();
    let sleeping = current.map(sleep);
    let fire = async {
        match sleeping {
            Some(wait) => {
                if wait.await {
                    return;
                }
                tracing::warn!("{what} never fires; waiting for a reload to change it");
                std::future::pending::<()>().await
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(fire);
    // The firing first: a reload in the same instant must not cost a firing that is due.
    tokio::select! {
        biased;
        _ = &mut fire => true,
        changed = schedules.changed() => match changed {
            Ok(()) => false,
            Err(_) => {
                fire.await;
                true
            }
        },
    }
}

/// Runs the backup schedule for ever.
pub async fn run(
    mut schedules: watch::Receiver<Schedules>,
    dcs: Arc<dyn Dcs>,
    job: Job,
    node: watch::Receiver<Arc<NodeState>>,
    stats: Arc<ArchiveStats>,
) {
    loop {
        if !next_firing(&mut schedules, |s| s.backup.as_ref(), "backup.schedule").await {
            continue;
        }
        let from_replica = schedules.borrow().from_replica;
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
    mut schedules: watch::Receiver<Schedules>,
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
        if !next_firing(
            &mut schedules,
            |s| s.verify.as_ref(),
            "backup.verify_schedule",
        )
        .await
        {
            continue;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let yaml = format!(
            "scope: s\nname: n\nrestapi:\n  listen: 127.0.0.1:8008\n  connect_address: 127.0.0.1:8008\n\
             etcd3:\n  hosts: 127.0.0.1:2379\npostgresql:\n  listen: 127.0.0.1:5432\n  \
             connect_address: 127.0.0.1:5432\n  data_dir: /d\n  authentication:\n    \
             superuser: {{username: postgres, password: a}}\n    \
             replication: {{username: r, password: b}}\n{extra}"
        );
        crate::config::load_str(&yaml, "node.yml", &[])
            .expect("config")
            .config
    }

    #[test]
    fn schedules_come_from_the_backup_section_only_with_storage() {
        let with = config(
            "storage:\n  type: fs\n  path: /b\nbackup:\n  schedule: '5 4 * * *'\n  \
             verify_schedule: ''\n  from_replica: true\n",
        );
        let mut without = with.clone();
        without.storage = None;
        assert_eq!(
            Schedules::from_config(&without).unwrap(),
            Schedules::default()
        );
        let s = Schedules::from_config(&config(
            "storage:\n  type: fs\n  path: /b\nbackup:\n  schedule: '5 4 * * *'\n  \
             verify_schedule: ''\n  from_replica: true\n",
        ))
        .unwrap();
        assert_eq!(s.backup, Some(Schedule::parse("5 4 * * *").unwrap()));
        assert_eq!(s.verify, None);
        assert!(s.from_replica);
        // Spilo's default schedule without a backup: section.
        let d = Schedules::from_config(&config("storage:\n  type: fs\n  path: /b\n")).unwrap();
        assert_eq!(d.backup, Some(Schedule::parse("0 1 * * *").unwrap()));
    }

    #[tokio::test]
    async fn a_waiting_schedule_gives_way_to_a_reloaded_one() {
        // Never fires (February 30th): the wait ends only when the schedules change.
        let never = Schedules {
            backup: Some(Schedule::parse("0 1 30 2 *").unwrap()),
            ..Schedules::default()
        };
        let (tx, mut rx) = watch::channel(never);
        let waiting = tokio::spawn(async move {
            let fired = next_firing(&mut rx, |s| s.backup.as_ref(), "backup.schedule").await;
            (fired, rx.borrow().backup.clone())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a schedule that never fires fired");
        let every_minute = Schedule::parse("* * * * *").unwrap();
        tx.send_modify(|s| s.backup = Some(every_minute.clone()));
        let (fired, now) = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the change ends the wait")
            .expect("task");
        assert!(!fired, "a change is not a firing");
        assert_eq!(now, Some(every_minute));
    }

    fn every_minute() -> Schedules {
        Schedules {
            backup: Some(Schedule::parse("* * * * *").unwrap()),
            ..Schedules::default()
        }
    }

    #[tokio::test]
    async fn a_dropped_sender_keeps_the_schedule_firing() {
        let (tx, mut rx) = watch::channel(every_minute());
        drop(tx);
        let soon = |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            true
        };
        let fired = tokio::time::timeout(
            Duration::from_secs(10),
            wait_or_change(&mut rx, |s| s.backup.as_ref(), "backup.schedule", soon),
        )
        .await
        .expect("the schedule's time comes");
        assert!(fired, "with the sender gone the schedule still fires");
    }

    #[tokio::test]
    async fn a_firing_that_is_due_wins_over_a_reload_in_the_same_instant() {
        let (tx, mut rx) = watch::channel(every_minute());
        // Both ready at once: a change sent after the schedule was read (the channel stays
        // open), and its time come.
        let tx = Arc::new(tx);
        let sender = tx.clone();
        let now = move |_| {
            sender.send_modify(|s| s.from_replica = true);
            async { true }
        };
        let fired = wait_or_change(&mut rx, |s| s.backup.as_ref(), "backup.schedule", now).await;
        assert!(fired, "the due firing was dropped for the reload");
        drop(tx);
    }

    #[tokio::test]
    async fn no_schedule_waits_and_a_dropped_sender_never_fires() {
        let (tx, mut rx) = watch::channel(Schedules::default());
        drop(tx);
        let r = tokio::time::timeout(
            Duration::from_millis(100),
            next_firing(&mut rx, |s| s.verify.as_ref(), "backup.verify_schedule"),
        )
        .await;
        assert!(r.is_err(), "no schedule and no sender: it must wait");
    }
}
