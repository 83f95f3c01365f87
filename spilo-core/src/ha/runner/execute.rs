//! Carrying out a decision's actions, and the demotion and hand-over paths.

use std::time::Instant;

use crate::dcs::{self, Cas, Cluster, Status};
use crate::ha::decide::{Action, Decision, DemoteMode, LocalView, Target};
use crate::ha::phase::Phase;
use crate::ha::plan::RewindEvent;
use crate::ha::state::PgStatus;
use crate::postgres::StopMode;

use super::{Exit, Node};

impl Node {
    /// Execute the plan. Returns a fatal message when the daemon must stop.
    pub(super) async fn execute(
        &mut self,
        d: &Decision,
        cluster: Option<&Cluster>,
        local: &LocalView,
        pgstat: &PgStatus,
        keep_sent: Instant,
    ) -> Option<String> {
        for a in &d.actions {
            let ok = match a {
                Action::AcquireLeader => match self.dcs.acquire_leader().await {
                    Ok(true) => {
                        tracing::info!("acquired the leader lock");
                        self.lease_renewed_at = Some(keep_sent);
                        self.rewind_event(RewindEvent::AcquiredLeader);
                        true
                    }
                    Ok(false) => {
                        tracing::info!("another member acquired the leader lock first");
                        false
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not acquire the leader lock");
                        false
                    }
                },
                Action::ReattachLeader => match self.dcs.reattach_leader().await {
                    Ok(true) => {
                        self.lease_renewed_at = Some(keep_sent);
                        true
                    }
                    Ok(false) => false,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not re-attach the leader lock");
                        false
                    }
                },
                Action::ReleaseLeader => {
                    self.lease_renewed_at = None;
                    match self.dcs.release_leader().await {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not release the leader lock");
                            false
                        }
                    }
                }
                Action::StartBootstrap => {
                    self.spawn_bootstrap();
                    true
                }
                Action::StartClone(m) => self.spawn_clone(cluster, m),
                Action::StartRewind(l) => self.spawn_rewind(cluster, l, local),
                Action::StartPrimary => self.spawn_start(cluster, None),
                Action::StartReplica(up) => self.spawn_start(cluster, Some(up.clone())),
                Action::Follow(up) => self.follow(cluster, up.clone()).await,
                Action::Promote => self.spawn_promote(cluster).await,
                Action::Demote(mode) => self.demote(*mode).await,
                Action::WriteInitialize(id) => {
                    match self.dcs.put("initialize", id.as_bytes(), Cas::Any).await {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not write initialize");
                            false
                        }
                    }
                }
                Action::LeaderHousekeeping => {
                    self.leader_housekeeping(cluster, pgstat).await;
                    true
                }
                Action::ClearFailover(version) => {
                    match self
                        .dcs
                        .put("failover", b"{}", Cas::Version(*version))
                        .await
                    {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not clear the failover key");
                            true
                        }
                    }
                }
                Action::AbandonBootstrap => {
                    self.abandon_bootstrap(cluster, local).await;
                    true
                }
                Action::Fatal(msg) => return Some(msg.clone()),
            };
            if !ok {
                break;
            }
        }
        None
    }

    pub(super) async fn follow(&mut self, cluster: Option<&Cluster>, target: Target) -> bool {
        let up = match self.resolve(cluster, &target) {
            Ok(up) => up,
            Err(e) => {
                tracing::warn!("cannot follow {target}: {e}");
                return false;
            }
        };
        if let Err(e) = self.write_conf(true, Some(&target), up.as_ref()) {
            tracing::error!("cannot write the PostgreSQL configuration: {e}");
            return false;
        }
        match self.pg.reload(self.retry()).await {
            Ok(()) => {
                tracing::info!("following {target}");
                self.upstream = Some(target);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reload failed");
                false
            }
        }
    }

    pub(super) async fn demote(&mut self, mode: DemoteMode) -> bool {
        if mode == DemoteMode::Graceful {
            tracing::info!("switchover: checkpoint, fast stop, then release the leader lock");
            self.hand_over(true).await;
            return true;
        }
        // The lease is lost or about to be: no waiting, the demotion goes first.
        self.withdraw_from_load_balancers(std::time::Duration::ZERO)
            .await;
        self.lease_renewed_at = None;
        self.ssn = None;
        self.ssn_since = None;
        self.bookkeeping.slots_for.clear();
        tracing::warn!("demoting: stopping PostgreSQL immediately");
        if let Err(e) = self.pg.stop(StopMode::Immediate).await {
            tracing::error!(error = %e, "immediate stop failed; killing the postmaster");
            self.pg.kill_postmaster();
        }
        self.rewind_event(RewindEvent::StoppedAsPrimary);
        self.upstream = None;
        if mode == DemoteMode::Offline {
            self.spawn_start(None, Some(Target::Nobody));
        }
        true
    }

    /// Stop a primary so that a replica can take over at once: optionally a CHECKPOINT while
    /// still primary (so the shutdown checkpoint has little to write), a fast stop (PostgreSQL
    /// sends the shutdown checkpoint to connected standbys before it exits), the checkpoint's
    /// position in `status.optime`, then the leader key released.
    pub(super) async fn hand_over(&mut self, checkpoint_first: bool) {
        let streaming = self
            .state
            .borrow()
            .pg
            .replication
            .iter()
            .filter(|r| r.state == "streaming")
            .count();
        // Read-write traffic leaves before PostgreSQL stops (bounded: never holds it up).
        let bound = self.withdraw_bound();
        self.withdraw_from_load_balancers(bound).await;
        if checkpoint_first {
            if let Err(e) = self.pg.checkpoint(self.pg.ctl_timeout()).await {
                tracing::warn!(error = %e, "CHECKPOINT before the switchover failed");
            }
        }
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            tracing::error!(error = %e, "fast stop failed; stopping immediately");
            let _ = self.pg.stop(StopMode::Immediate).await;
        }
        self.rewind_event(RewindEvent::StoppedAsPrimary);
        self.upstream = None;
        self.ssn = None;
        self.ssn_since = None;
        self.bookkeeping.slots_for.clear();
        if self.lease_renewed_at.take().is_none() {
            return;
        }
        if let Ok(cd) = self.pg.controldata().await {
            let lsn = cd
                .get("Latest checkpoint location")
                .and_then(|s| dcs::codec::parse_lsn(s));
            if let Some(lsn) = lsn {
                let status = Status {
                    optime: Some(lsn),
                    ..Status::default()
                };
                let _ = self
                    .dcs
                    .put("status", &dcs::codec::to_compact_json(&status), Cas::Any)
                    .await;
            }
        }
        tracing::info!(
            streaming_replicas = streaming,
            "releasing the leader lock after the shutdown checkpoint"
        );
        if let Err(e) = self.dcs.release_leader().await {
            tracing::warn!(error = %e, "could not release the leader lock");
        }
    }

    /// Rewrite the configuration files for the role PostgreSQL runs in and reload it; settings
    /// that need a restart then show up as `pending_restart`.
    pub(super) async fn reload_postgres(&mut self, cluster: Option<&Cluster>) {
        let standby = !self.state.borrow().pg.role.is_primary();
        if let Err(e) = self.write_conf_as_is(cluster, standby) {
            tracing::error!("cannot write the PostgreSQL configuration: {e}");
            return;
        }
        match self.pg.reload(self.retry()).await {
            Ok(()) => tracing::info!("PostgreSQL configuration reloaded"),
            Err(e) => tracing::warn!(error = %e, "reload failed"),
        }
    }

    /// SIGTERM/SIGINT: a leader hands over (fast stop with a shutdown checkpoint, which
    /// PostgreSQL sends to connected standbys before it exits, then the session ends so both
    /// keys vanish at once); a replica stops cleanly. Paused: PostgreSQL is left alone.
    pub(super) async fn shutdown(mut self) -> Exit {
        self.enter(Phase::Shutdown);
        self.abort_job();
        if self.dynamic.pause {
            tracing::info!("paused: leaving PostgreSQL running");
            return Exit::Shutdown;
        }
        self.hand_over(false).await;
        if let Err(e) = self.dcs.close().await {
            tracing::warn!(error = %e, "could not end the DCS session");
        }
        tracing::info!("stopped");
        Exit::Shutdown
    }
}
