//! Data directories built from elsewhere: a replica's copy of a member (or, for a standby
//! cluster's first node, of the other cluster), and the clone bootstrap's recovery to its
//! target (`bootstrap.method: clone`, started from `jobs.rs`).

use std::time::Duration;

use crate::config::model::{METHOD_BASEBACKUP, METHOD_RESTORE};
use crate::dcs::Cluster;
use crate::ha::decide::{JobKind, Target};
use crate::ha::replica::{plan_replica, ReplicaInput, ReplicaStep};
use crate::ha::state::PgState;
use crate::postgres::PgError;

use super::jobs::state_file_settled;
use super::{JobDone, Node};

impl Node {
    /// Builds this node's data directory as a copy of `target` — a member (the leader or a
    /// `clonefrom` replica), or for a standby cluster's first node the other cluster (its
    /// archive's newest backup, or `pg_basebackup` from `standby_cluster.host`) — and starts it
    /// following that target.
    pub(super) fn spawn_clone(&mut self, cluster: Option<&Cluster>, target: &Target) -> bool {
        let up = match self.resolve(cluster, target) {
            Ok(up) => up,
            Err(e) => {
                tracing::warn!("cannot copy {target}: {e}");
                return false;
            }
        };
        let source = *target == Target::StandbySource;
        // Nothing to compare a backup with: the standby cluster's source, or no leader at all.
        let no_leader = source || *target == Target::Nobody;
        let pg = self.pg.clone();
        let params = self.conf_params(true, Some(target));
        let hba = self.hba();
        let from = target.clone();
        let state_file_busy = self.state_file_busy.clone();
        let methods = match (&self.standby, source) {
            (Some(Ok(sc)), true) => sc.methods(),
            _ => self
                .cfg
                .postgresql
                .replica_methods(self.cfg.storage.is_some()),
        };
        let limits = self.cfg.postgresql.spilo_restore.clone();
        // A standby leader's copy comes from the other cluster's archive (when it names one),
        // never from this cluster's own.
        let backups = if source {
            match (&self.archive_in_use, self.standby_archive()) {
                (Some((Some(a), b)), Some(want)) if *a == want => Some(b.clone()),
                _ => None,
            }
        } else {
            self.backups.clone()
        };
        let (leader_lsn, sysid, leader_timeline, history) = if source {
            (None, None, None, Vec::new())
        } else if no_leader {
            (
                None,
                cluster.and_then(|c| c.initialize.clone()),
                None,
                Vec::new(),
            )
        } else {
            (
                cluster.and_then(|c| {
                    c.leader_member()
                        .and_then(|m| m.data.xlog_location)
                        .or_else(|| c.optime())
                }),
                cluster.and_then(|c| c.initialize.clone()),
                cluster.and_then(|c| c.leader_member().and_then(|m| m.data.timeline)),
                cluster
                    .and_then(|c| c.history.as_ref())
                    .map(|h| h.iter().map(|l| (l.timeline, l.lsn)).collect())
                    .unwrap_or_default(),
            )
        };
        self.spawn_job(JobKind::Clone, PgState::CreatingReplica, async move {
            state_file_settled(&state_file_busy, || {
                pg.remove_state_file_leftover(crate::ha::state_file::FILE_NAME)
            })
            .await;
            let wants_backup = methods.iter().any(|m| m == METHOD_RESTORE);
            let newest = match (&backups, wants_backup) {
                (Some(b), true) => b.newest().await.unwrap_or_else(|e| {
                    tracing::warn!("cannot list the backups in the store: {e}");
                    None
                }),
                _ => None,
            };
            let (steps, skipped) = plan_replica(&ReplicaInput {
                methods: &methods,
                has_store: backups.is_some(),
                newest: newest.as_ref(),
                leader_lsn,
                leader_timeline,
                history: &history,
                system_identifier: sysid.as_deref().filter(|s| !s.is_empty()),
                limits: &limits,
                no_leader,
                can_basebackup: up.is_some(),
            });
            for s in &skipped {
                tracing::info!("replica method skipped: {s}");
            }
            let mut built = None;
            let mut last_error: Option<PgError> = None;
            for step in &steps {
                match step {
                    ReplicaStep::Restore { backup, reason } => {
                        let Some(b) = &backups else { continue };
                        tracing::info!(
                            "building this replica from backup {backup} ({METHOD_RESTORE}): {reason}"
                        );
                        match b.restore(backup, pg.data_dir()).await {
                            Ok(what) => {
                                tracing::info!("backup {backup}: {what}; replaying WAL from the archive, then streaming from {from}");
                                built = Some(format!("{METHOD_RESTORE} {backup}"));
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "restoring backup {backup} failed: {e}; trying the next method"
                                );
                                pg.remove_data_dir()?;
                            }
                        }
                    }
                    ReplicaStep::BaseBackup => {
                        let Some(up) = &up else { continue };
                        tracing::info!(
                            "building this replica with pg_basebackup from {from} ({METHOD_BASEBACKUP})"
                        );
                        match pg.basebackup(&up.host, up.port).await {
                            Ok(()) => {
                                built = Some(format!("{METHOD_BASEBACKUP} from {from}"));
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "pg_basebackup from {from} failed: {}; trying the next method",
                                    crate::error_chain(&e)
                                );
                                last_error = Some(e);
                                pg.remove_data_dir()?;
                            }
                        }
                    }
                }
            }
            if built.is_none() {
                if let Some(e) = last_error {
                    return Err(e);
                }
                return Err(PgError::Command {
                    cmd: "create_replica_methods".into(),
                    message: format!(
                        "no method built this replica ({})",
                        if skipped.is_empty() {
                            "every method failed".to_string()
                        } else {
                            skipped.join("; ")
                        }
                    ),
                });
            }
            pg.write_config(&params, &hba, true, up.as_ref())?;
            pg.start().await?;
            // What built it, and why the methods before it did not (for `spiloctl list`).
            let mut how = built.unwrap_or_default();
            if !skipped.is_empty() {
                how.push_str(&format!(" ({})", skipped.join("; ")));
            }
            Ok(JobDone {
                upstream: Some(from),
                built: Some(how),
            })
        });
        true
    }
}

/// The clone bootstrap: the source's backup restored, a targeted recovery from the source's
/// archive, promotion at the target, then the configuration without the recovery settings and
/// `restore_command` back on this cluster's archive — on every path once the restore pointed it
/// at the source.
pub(super) async fn clone_cluster(
    pg: &dyn crate::postgres::LocalPostgres,
    cl: &dyn crate::ha::replica::ClusterClone,
    params: &std::collections::BTreeMap<String, serde_json::Value>,
    hba: &[String],
) -> Result<(), PgError> {
    let (recovery, said) = cl
        .restore(pg.data_dir())
        .await
        .map_err(|e| clone_failed(e.to_string()))?;
    tracing::info!("{said}");
    let recovered = recover_clone(pg, cl, recovery, params, hba).await;
    cl.done(recovered.is_ok());
    recovered?;
    tracing::info!("the clone reached its target and was promoted");
    // The targets must not apply to a later recovery (this node as a replica).
    pg.write_config(params, hba, false, None)?;
    Ok(())
}

fn clone_failed(message: String) -> PgError {
    PgError::Command {
        cmd: "bootstrap.method clone".into(),
        message,
    }
}

async fn recover_clone(
    pg: &dyn crate::postgres::LocalPostgres,
    cl: &dyn crate::ha::replica::ClusterClone,
    recovery: std::collections::BTreeMap<String, serde_json::Value>,
    params: &std::collections::BTreeMap<String, serde_json::Value>,
    hba: &[String],
) -> Result<(), PgError> {
    let mut with_target = params.clone();
    with_target.extend(recovery);
    pg.write_config(&with_target, hba, false, None)?;
    pg.write_recovery_signal()?;
    if let Err(e) = pg.start().await {
        // pg_ctl stops waiting after its timeout while a long replay goes on (or, without
        // hot_standby, until the promotion): only a postmaster that is gone has failed.
        if pg.postmaster_pid().is_none() {
            // A recovery that ends short of its target stops PostgreSQL before pg_ctl sees it
            // ready: the archive's failure, when there was one, is the cause.
            return Err(clone_failed(match cl.problem() {
                Some(p) => format!(
                    "PostgreSQL stopped during the clone's recovery ({}): reading the source's \
                     archive failed: {p}",
                    crate::error_chain(&e)
                ),
                None => format!(
                    "PostgreSQL did not start for the clone's recovery: {}",
                    crate::error_chain(&e)
                ),
            }));
        }
        tracing::info!("the clone's recovery goes on after pg_ctl stopped waiting: {e}");
    }
    wait_until_promoted(pg).await.map_err(|e| {
        clone_failed(match cl.problem() {
            Some(p) => format!(
                "the clone's recovery did not reach its target and promote ({}): reading the \
                 source's archive failed: {p}",
                crate::error_chain(&e)
            ),
            None => format!(
                "the clone's recovery did not reach its target and promote ({}); PostgreSQL's \
                 log says why (a target past the end of the source's archive ends recovery \
                 with an error)",
                crate::error_chain(&e)
            ),
        })
    })
}

/// Waits until the control file says the cluster is in production and `recovery.signal` is
/// gone (recovery ended with `recovery_target_action = promote`); read without logging in, so a
/// source's passwords do not matter. An error once the postmaster is gone.
async fn wait_until_promoted(pg: &dyn crate::postgres::LocalPostgres) -> Result<(), PgError> {
    loop {
        if let Ok(c) = pg.controldata().await {
            // A restored pg_control already says "in production" (the source was running):
            // the signal file PostgreSQL removes at the end of recovery tells the two apart.
            if c.get("Database cluster state").map(String::as_str) == Some("in production")
                && !pg.recovery_pending()
            {
                return Ok(());
            }
        }
        if pg.postmaster_pid().is_none() {
            return Err(PgError::Query(
                "the postmaster stopped during the recovery".into(),
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
