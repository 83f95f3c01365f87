//! Background jobs that own the data directory for a while (bootstrap, rewind, start, promote;
//! the replica copy and the clone's recovery are in `copy.rs`), and how their outcome is
//! collected.

use std::sync::Arc;
use std::time::Duration;

use crate::dcs::{self, Cas, Cluster};
use crate::ha::decide::{DataDir, JobKind, LocalView, Target};
use crate::ha::plan::{plan_promotion, plan_rejoin, PromotionPrep, RejoinPlan, RewindEvent};
use crate::ha::state::PgState;
use crate::ha::sync;
use crate::postgres::{BootstrapRoles, PgError, StopMode};

use super::{Job, JobDone, Node};

impl Node {
    pub(super) fn spawn_job<F>(&mut self, kind: JobKind, label: PgState, fut: F)
    where
        F: std::future::Future<Output = Result<JobDone, PgError>> + Send + 'static,
    {
        let wake = self.wake.clone();
        self.pg_label = Some(label);
        let handle = tokio::spawn(async move {
            let r = fut.await;
            // Success wakes the loop at once; a failure is retried on the next regular cycle.
            if r.is_ok() {
                wake.notify_one();
            }
            r
        });
        self.job = Some(Job { kind, handle });
    }

    pub(super) async fn reap_job(&mut self) {
        let finished = self
            .job
            .as_ref()
            .map(|j| j.handle.is_finished())
            .unwrap_or(false);
        if !finished {
            return;
        }
        let Some(job) = self.job.take() else { return };
        self.pg_label = None;
        // A new copy or a rewind may move the data directory to another timeline.
        if matches!(job.kind, JobKind::Clone | JobKind::Rewind) {
            self.known_timeline = None;
        }
        match job.handle.await {
            Ok(Ok(done)) => {
                tracing::info!("{} finished", job.kind);
                if job.kind == JobKind::Restart {
                    self.fire(crate::hooks::Event::OnRestart, None);
                }
                if done.upstream.is_some() {
                    self.upstream = done.upstream;
                }
                if done.built.is_some() {
                    self.built = done.built;
                }
                if job.kind == JobKind::Rewind {
                    self.rewind_event(RewindEvent::RewindDone);
                }
                if job.kind == JobKind::Clone {
                    self.clone_from_leader = false;
                }
            }
            Ok(Err(e)) => {
                tracing::error!("{} failed: {}", job.kind, crate::error_chain(&e));
                if job.kind == JobKind::Bootstrap {
                    self.bootstrap_failed = Some(crate::error_chain(&e));
                }
                if job.kind == JobKind::Rewind {
                    let event = if matches!(e, PgError::SourceUnreachable { .. }) {
                        RewindEvent::RewindSourceUnreachable
                    } else {
                        RewindEvent::RewindFailed {
                            recopy_allowed: self
                                .cfg
                                .postgresql
                                .remove_data_directory_on_rewind_failure,
                        }
                    };
                    if let Some(reason) = self.rewind_event(event) {
                        tracing::warn!("removing the data directory: {reason}");
                        if let Err(e) = self.pg.remove_data_dir() {
                            tracing::error!(error = %e, "could not remove the data directory");
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!("{} job ended abnormally: {e}", job.kind);
                if job.kind == JobKind::Bootstrap {
                    self.bootstrap_failed =
                        Some(format!("the bootstrap job ended abnormally: {e}"));
                }
            }
        }
    }

    /// Undo a failed bootstrap (see [`Action::AbandonBootstrap`]). The data directory was
    /// empty when the job started (checked before it was spawned) and only the job wrote to it,
    /// so removing it removes only what the bootstrap made.
    pub(super) async fn abandon_bootstrap(&mut self, cluster: Option<&Cluster>, local: &LocalView) {
        if self.pg.postmaster_pid().is_some() {
            tracing::info!("stopping the PostgreSQL the failed bootstrap started");
            if let Err(e) = self.pg.stop(StopMode::Immediate).await {
                tracing::warn!(error = %e, "immediate stop failed; killing the postmaster");
                self.pg.kill_postmaster();
            }
        }
        if self.bootstrap_made_data_dir {
            match self.pg.remove_data_dir() {
                Ok(()) => tracing::info!(
                    "removed the data directory the failed bootstrap made ({})",
                    self.cfg.postgresql.data_dir.display()
                ),
                Err(e) => tracing::error!(error = %e, "could not remove the data directory"),
            }
        }
        self.lease_renewed_at = None;
        self.state
            .send_modify(|s| Arc::make_mut(s).leader_renewed_at = None);
        match self.dcs.release_leader().await {
            Ok(true) => {
                tracing::info!("released the leader lock so that another node can bootstrap")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not release the leader lock (it expires with the session)")
            }
        }
        // spilo writes `initialize` only after a bootstrap succeeded; an empty one (a Patroni
        // node's race marker) or one holding this data directory's id is this attempt's.
        let ours = match &local.data {
            DataDir::Initialized {
                sysid: Some(id), ..
            } => Some(id.as_str()),
            _ => None,
        };
        if let Some(init) = cluster.and_then(|c| c.initialize.as_deref()) {
            if init.is_empty() || Some(init) == ours {
                match self.dcs.delete("initialize", Cas::Any).await {
                    Ok(_) => tracing::info!("removed the initialize key"),
                    Err(e) => tracing::warn!(error = %e, "could not remove the initialize key"),
                }
            }
        }
        // The member key goes with the session, at once rather than after ttl.
        if let Err(e) = self.dcs.close().await {
            tracing::debug!(error = %e, "could not close the DCS session");
        }
    }

    pub(super) fn spawn_bootstrap(&mut self) {
        let pg = self.pg.clone();
        self.bootstrap_made_data_dir = false;
        let args = match crate::postgres::conf::initdb_args(&self.cfg.bootstrap.initdb) {
            Ok(a) => a,
            Err(e) => {
                self.bootstrap_failed = Some(e.to_string());
                self.wake.notify_one();
                return;
            }
        };
        if !pg.data_dir_empty() {
            self.bootstrap_failed = Some(format!(
                "the data directory {} is not empty",
                self.cfg.postgresql.data_dir.display()
            ));
            self.wake.notify_one();
            return;
        }
        self.bootstrap_made_data_dir = true;
        let params = self.dynamic.postgresql.parameters.clone();
        let hba = self.hba();
        let auth = &self.cfg.postgresql.authentication;
        let roles = BootstrapRoles {
            replication: auth.replication.clone(),
            rewind: auth
                .rewind
                .clone()
                .filter(|r| r.username != auth.superuser.username),
            superuser: self.cloner.as_ref().map(|_| auth.superuser.clone()),
        };
        let timeout = self.retry() * 3;
        let cloner = self.cloner.clone();
        self.spawn_job(
            JobKind::Bootstrap,
            PgState::InitializingNewCluster,
            async move {
                match &cloner {
                    Some(cl) => super::copy::clone_cluster(&*pg, &**cl, &params, &hba).await?,
                    None => {
                        pg.initdb(&args).await?;
                        pg.write_config(&params, &hba, false, None)?;
                        pg.start().await?;
                    }
                }
                pg.create_bootstrap_roles(&roles, timeout).await?;
                // The SQL extension, when this PostgreSQL has it; it replicates to every replica.
                match pg.create_spilo_extension(timeout).await {
                    Ok(()) => tracing::info!("created the spilo extension (SELECT spilo.role())"),
                    Err(e) => tracing::warn!(
                        "the spilo extension is not available in this PostgreSQL, so spilo.* SQL \
                     functions are missing (install it with cargo pgrx install): {e}"
                    ),
                }
                Ok(JobDone {
                    upstream: Some(Target::Nobody),
                    built: None,
                })
            },
        );
    }

    pub(super) fn spawn_rewind(
        &mut self,
        cluster: Option<&Cluster>,
        leader: &str,
        local: &LocalView,
    ) -> bool {
        let Some(up) = self.upstream_for(cluster, leader) else {
            tracing::warn!("cannot rewind from {leader}: its connection address is unknown");
            return false;
        };
        let crashed = matches!(local.data, DataDir::Initialized { crashed: true, .. });
        let plan = plan_rejoin(
            self.dynamic.postgresql.use_pg_rewind,
            self.cfg.postgresql.remove_data_directory_on_rewind_failure,
            crashed,
        );
        let pg = self.pg.clone();
        let params = self.dynamic.postgresql.parameters.clone();
        let hba = self.hba();
        let leader = leader.to_string();
        let state_file_busy = self.state_file_busy.clone();
        self.spawn_job(JobKind::Rewind, PgState::Starting, async move {
            state_file_settled(&state_file_busy, || {
                pg.remove_state_file_leftover(crate::ha::state_file::FILE_NAME)
            })
            .await;
            match plan {
                RejoinPlan::Rewind {
                    crash_recovery_first,
                } => {
                    pg.write_config(&params, &hba, false, None)?;
                    if crash_recovery_first {
                        tracing::info!(
                            "running crash recovery in single-user mode before pg_rewind"
                        );
                        pg.single_user_recovery().await?;
                    }
                    let out = pg.rewind(&up.host, up.port).await?;
                    tracing::info!("pg_rewind: {}", out.lines().last().unwrap_or("done"));
                }
                RejoinPlan::Recopy => {
                    tracing::warn!("use_pg_rewind is off: copying the data directory again");
                    pg.basebackup(&up.host, up.port).await?;
                }
                RejoinPlan::StartWithoutRewind => {
                    tracing::warn!("use_pg_rewind is off: starting as a replica without rewinding");
                }
            }
            pg.write_config(&params, &hba, true, Some(&up))?;
            pg.start().await?;
            Ok(JobDone {
                upstream: Some(Target::Member(leader)),
                built: None,
            })
        });
        true
    }

    /// Start PostgreSQL: as primary (`replica_of` None), or as a replica following the target.
    /// Fails when a member's address is unknown in `cluster` rather than start a replica that
    /// follows nobody by mistake.
    pub(super) fn spawn_start(
        &mut self,
        cluster: Option<&Cluster>,
        replica_of: Option<Target>,
    ) -> bool {
        let standby = replica_of.is_some();
        let up = match &replica_of {
            Some(t) => match self.resolve(cluster, t) {
                Ok(up) => up,
                Err(e) => {
                    tracing::warn!("cannot start as a replica of {t}: {e}");
                    return false;
                }
            },
            None => None,
        };
        if let Err(e) = self.write_conf(standby, replica_of.as_ref(), up.as_ref()) {
            tracing::error!("cannot write the PostgreSQL configuration: {e}");
            return false;
        }
        let pg = self.pg.clone();
        self.spawn_job(JobKind::Start, PgState::Starting, async move {
            pg.start().await?;
            Ok(JobDone {
                upstream: replica_of.or(Some(Target::Nobody)),
                built: None,
            })
        });
        true
    }

    pub(super) async fn spawn_promote(&mut self, cluster: Option<&Cluster>) -> bool {
        let prep = plan_promotion(
            sync::sync_mode(&self.dynamic) != sync::SyncMode::Off,
            sync::strict(&self.dynamic),
        );
        match prep {
            PromotionPrep::ClaimSyncKey { ssn } => {
                let version = cluster.and_then(|c| c.sync.as_ref()).map(|v| v.version);
                let value = dcs::codec::to_compact_json(&sync::key_value(&self.cfg.name, &[]));
                let cas = version.map(Cas::Version).unwrap_or(Cas::Absent);
                match self.dcs.put("sync", &value, cas).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!("the sync key changed under us; postponing the promotion");
                        return false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not write the sync key; postponing the promotion");
                        return false;
                    }
                }
                self.ssn = Some(ssn);
                self.ssn_since = None;
                if let Err(e) = self.write_conf(true, None, None) {
                    tracing::warn!("could not write the configuration before promoting: {e}");
                }
            }
            PromotionPrep::Nothing => {
                self.ssn = None;
                self.ssn_since = None;
            }
        }
        // A new term: the slots this node made as an earlier leader may be gone (pg_rewind
        // and pg_basebackup do not copy them).
        self.bookkeeping.slots_for.clear();
        let pg = self.pg.clone();
        let params = self.conf_params(false, None);
        let hba = self.hba();
        let timeout = self.pg.ctl_timeout();
        let wake = self.wake.clone();
        self.spawn_job(JobKind::Promote, PgState::Running, async move {
            pg.promote().await?;
            tracing::info!("promoted: PostgreSQL takes writes");
            // PostgreSQL takes writes now: a cycle publishes the role (and the load balancers
            // and proxies follow) without waiting for the checkpoint below.
            wake.notify_one();
            // Until this checkpoint, pg_control still names the old timeline, and a former
            // primary rewinding from us would find nothing to rewind.
            pg.checkpoint(timeout).await?;
            // Drop primary_conninfo from the files so a later restart comes up as primary.
            pg.write_config(&params, &hba, false, None)?;
            Ok(JobDone {
                upstream: Some(Target::Nobody),
                built: None,
            })
        });
        true
    }
}

/// Waits (at most 10 s) for a state-file write spawned by an earlier cycle, then removes a
/// temporary file an interrupted write left: pg_rewind and pg_basebackup must not see the data
/// directory change under them (no new write starts while their job runs).
pub(super) async fn state_file_settled(
    busy: &std::sync::atomic::AtomicBool,
    remove_leftover: impl FnOnce(),
) {
    let since = crate::clock::now();
    while busy.load(std::sync::atomic::Ordering::SeqCst)
        && since.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remove_leftover();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::state_file_settled;
    use crate::ha::state_file::FILE_NAME;

    /// Seen in the chaos suite: pg_rewind failed with "could not remove file
    /// spilo.state.tmp" because a state-file write renamed it away under pg_rewind's file list.
    /// The rewind now waits for the write in flight and starts from a directory without it.
    #[tokio::test]
    async fn pg_rewind_waits_for_the_state_file_write_in_flight_and_its_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join(format!("{FILE_NAME}.tmp"));
        std::fs::write(&tmp, b"{}").expect("write tmp");
        let busy = Arc::new(AtomicBool::new(true));
        let writer = busy.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.store(false, Ordering::SeqCst);
        });
        state_file_settled(&busy, || {
            let _ = std::fs::remove_file(&tmp);
        })
        .await;
        // Had it not waited, the write would still be in flight.
        assert!(
            !busy.load(Ordering::SeqCst),
            "returned while the write was in flight"
        );
        assert!(!tmp.exists(), "the temporary file is still there");
    }
}
