//! Commands from the REST API and SIGHUP, executed by the loop between cycles: restart (now
//! or scheduled), reinitialize, reload.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::oneshot;

use super::{JobDone, Node};
use crate::config;
use crate::ha::command::{Command, CommandReply, RestartRequest};
use crate::ha::decide::JobKind;
use crate::ha::plan::{
    plan_reinitialize, plan_restart, restart_arrival, ReinitPlan, RestartArrival, RestartPlan,
    RestartView, RewindEvent,
};
use crate::postgres::StopMode;

/// A reload that cannot apply: logged, answered 400, the running configuration kept.
fn refuse_reload(reply: Option<oneshot::Sender<CommandReply>>, e: &dyn std::fmt::Display) {
    tracing::error!("reload refused, keeping the running configuration: {e}");
    if let Some(r) = reply {
        send(
            r,
            400,
            format!("reload failed: {e}; the running configuration is kept"),
        );
    }
}

fn send(reply: oneshot::Sender<CommandReply>, status: u16, msg: impl Into<String>) {
    let _ = reply.send(CommandReply::new(status, msg));
}

impl Node {
    /// Execute one command.
    pub(super) async fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Restart { request, reply } => self.restart_command(request, reply),
            Command::CancelRestart { reply } => {
                if self.scheduled_restart.take().is_some() {
                    self.publish_scheduled_restart();
                    send(reply, 200, "scheduled restart deleted");
                } else {
                    send(reply, 404, "no restarts are scheduled");
                }
            }
            Command::Reinitialize {
                force,
                from_leader,
                reply,
            } => self.reinitialize(force, from_leader, reply).await,
            Command::Reload { reply } => self.reload(reply).await,
        }
    }

    fn restart_command(&mut self, request: RestartRequest, reply: oneshot::Sender<CommandReply>) {
        match restart_arrival(
            &request,
            self.dynamic.pause,
            self.scheduled_restart.is_some(),
        ) {
            RestartArrival::Refuse(status, msg) => send(reply, status, msg),
            RestartArrival::Schedule => {
                if let Some(at) = request.schedule {
                    tracing::info!("restart scheduled at {at}");
                }
                self.scheduled_restart = Some(request);
                self.publish_scheduled_restart();
                send(reply, 202, "Restart scheduled");
            }
            RestartArrival::Now => self.start_restart(request, Some(reply)),
        }
    }

    /// Restart now if the request's conditions hold; answer on `reply` when done.
    pub(super) fn start_restart(
        &mut self,
        request: RestartRequest,
        reply: Option<oneshot::Sender<CommandReply>>,
    ) {
        let answer = |reply: Option<oneshot::Sender<CommandReply>>, status: u16, msg: String| {
            if let Some(r) = reply {
                send(r, status, msg);
            } else {
                tracing::warn!("scheduled restart not done: {msg}");
            }
        };
        let view = {
            let pg = &self.state.borrow().pg;
            RestartView {
                job: self.job.as_ref().map(|j| j.kind),
                primary: pg.role.is_primary(),
                server_version: pg.server_version,
                pending_restart: pg.pending_restart,
            }
        };
        let standby = match plan_restart(&request, &view) {
            RestartPlan::Refuse(status, msg) => return answer(reply, status, msg),
            RestartPlan::Run { standby } => standby,
        };
        let cluster = self.state.borrow().cluster.clone();
        if let Err(e) = self.write_conf_as_is(cluster.as_deref(), standby) {
            return answer(reply, 503, format!("restart failed: {e}"));
        }
        let pg = self.pg.clone();
        let timeout = request.timeout;
        tracing::info!("restarting PostgreSQL on request");
        self.spawn_job(
            JobKind::Restart,
            crate::ha::state::PgState::Restarting,
            async move {
                let run = async {
                    pg.stop(StopMode::Fast).await?;
                    pg.start().await
                };
                let res = match timeout {
                    Some(t) => tokio::time::timeout(std::time::Duration::from_secs(t), run)
                        .await
                        .unwrap_or_else(|_| {
                            Err(crate::postgres::PgError::Query(format!(
                                "PostgreSQL did not come back within {t} s"
                            )))
                        }),
                    None => run.await,
                };
                match res {
                    Ok(()) => {
                        if let Some(r) = reply {
                            send(r, 200, "restarted successfully");
                        }
                        Ok(JobDone {
                            upstream: None,
                            built: None,
                        })
                    }
                    Err(e) => {
                        if let Some(r) = reply {
                            send(
                                r,
                                503,
                                format!("restart failed: {}", crate::error_chain(&e)),
                            );
                        }
                        Err(e)
                    }
                }
            },
        );
    }

    /// Run a scheduled restart once it is due.
    pub(super) fn scheduled_restart_due(&mut self) {
        let due = self
            .scheduled_restart
            .as_ref()
            .and_then(|r| r.schedule)
            .map(|at| at.timestamp() <= chrono::Utc::now().timestamp())
            .unwrap_or(false);
        if due && self.job.is_none() {
            if let Some(req) = self.scheduled_restart.take() {
                tracing::info!("running the scheduled restart");
                self.publish_scheduled_restart();
                self.start_restart(req, None);
            }
        }
    }

    pub(super) fn publish_scheduled_restart(&mut self) {
        let v = self.scheduled_restart.as_ref().map(|r| {
            let mut o = json!({
                "schedule": r.schedule.map(|t| t.to_rfc3339()),
                "postmaster_start_time": self.state.borrow().pg.postmaster_start_time.clone(),
            });
            if let Some(role) = &r.role {
                o["role"] = json!(role);
            }
            if let Some(v) = r.postgres_version {
                o["postgres_version"] = json!(v);
            }
            if let Some(t) = r.timeout {
                o["timeout"] = json!(t);
            }
            if r.restart_pending {
                o["restart_pending"] = json!(true);
            }
            o
        });
        self.state
            .send_modify(|s| Arc::make_mut(s).scheduled_restart = v);
        self.last_member = None;
    }

    async fn reinitialize(
        &mut self,
        force: bool,
        from_leader: bool,
        reply: oneshot::Sender<CommandReply>,
    ) {
        let leader = {
            let state = self.state.borrow();
            state
                .cluster
                .as_ref()
                .and_then(|c| c.leader.as_ref())
                .map(|l| l.name.clone())
        };
        let job = self.job.as_ref().map(|j| j.kind);
        match plan_reinitialize(leader.as_deref(), &self.cfg.name, job, force) {
            ReinitPlan::Refuse(msg) => return send(reply, 503, msg),
            ReinitPlan::Run { cancel: Some(kind) } => {
                tracing::warn!("reinitialize: cancelling the running {kind}");
                self.abort_job();
            }
            ReinitPlan::Run { cancel: None } => {}
        }
        if let Err(e) = self.pg.stop(StopMode::Immediate).await {
            tracing::warn!(error = %e, "immediate stop failed; killing the postmaster");
            self.pg.kill_postmaster();
        }
        if let Some(reason) = self.rewind_event(RewindEvent::Reinitialized) {
            if let Err(e) = self.pg.remove_data_dir() {
                return send(reply, 503, format!("reinitialize failed: {e}"));
            }
            tracing::info!(from_leader, "data directory removed: {reason}");
        }
        self.clone_from_leader = from_leader;
        self.upstream = None;
        self.wake.notify_one();
        send(reply, 200, "reinitialize started");
    }

    /// Re-read the configuration file; apply what changed. Settings that cannot change while
    /// running (name, scope, namespace, data directory, listen addresses) keep their old value
    /// with a warning; PostgreSQL parameters that need a restart show up as `pending_restart`.
    pub(super) async fn reload(&mut self, reply: Option<oneshot::Sender<CommandReply>>) {
        let Some(path) = self.config_path.clone() else {
            if let Some(r) = reply {
                send(r, 503, "no configuration file to reload");
            }
            return;
        };
        let loaded = match config::load_file(&path) {
            Ok(l) => l,
            Err(e) => return refuse_reload(reply, &e),
        };
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        // Values opened before are not asked again; new ones may take KMS only so long,
        // since the HA loop waits for the reload.
        let budget = self.retry();
        let mut new =
            match tokio::time::timeout(budget, crate::secret::open_config(loaded.config)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return refuse_reload(reply, &e),
                Err(_) => {
                    let e = format!(
                        "KMS did not open the configuration's new aws:kms: values within \
                         retry_timeout ({} s)",
                        budget.as_secs()
                    );
                    return refuse_reload(reply, &e);
                }
            };
        let old = &self.cfg;
        // Where WAL and backups go is opened once, at start, like the addresses.
        let fixed: [(&str, bool); 7] = [
            ("name", new.name != old.name),
            ("scope", new.scope != old.scope),
            ("namespace", new.namespace != old.namespace),
            (
                "postgresql.data_dir",
                new.postgresql.data_dir != old.postgresql.data_dir,
            ),
            (
                "postgresql.listen",
                new.postgresql.listen != old.postgresql.listen,
            ),
            ("restapi.listen", new.restapi.listen != old.restapi.listen),
            ("storage", new.storage != old.storage),
        ];
        for (key, changed) in fixed {
            if changed {
                tracing::warn!(
                    "reload: {key} cannot change while running; restart the daemon to apply it"
                );
            }
        }
        new.storage = old.storage.clone();
        // Of backup:, the schedules and from_replica follow the reload; the rest (compression,
        // encryption, archiving) keeps its running value, as the archiver does.
        let settings = |c: &crate::config::Config| c.backup.clone().unwrap_or_default();
        let new_b = settings(&new);
        let mut kept = settings(old);
        kept.schedule = new_b.schedule.clone();
        kept.verify_schedule = new_b.verify_schedule.clone();
        kept.from_replica = new_b.from_replica;
        if old.storage.is_some() && kept != new_b {
            tracing::warn!(
                "reload: of backup:, only schedule, verify_schedule and from_replica change while \
                 running; restart the daemon to apply the rest"
            );
        }
        if new.backup.is_some() || old.backup.is_some() {
            new.backup = Some(kept);
        }
        if let Some(tx) = &self.backup_schedules {
            match crate::backup::scheduler::Schedules::from_config(&new) {
                Ok(s) => {
                    if tx.send_if_modified(|cur| {
                        let changed = *cur != s;
                        *cur = s.clone();
                        changed
                    }) {
                        tracing::info!(
                            schedule = %new_b.schedule,
                            verify_schedule = %new_b.verify_schedule,
                            from_replica = s.from_replica,
                            "reload: the backup schedules changed"
                        );
                    }
                }
                Err(e) => tracing::warn!("reload: keeping the backup schedules: {e}"),
            }
        }
        new.name = old.name.clone();
        new.scope = old.scope.clone();
        new.namespace = old.namespace.clone();
        new.postgresql.data_dir = old.postgresql.data_dir.clone();
        new.postgresql.listen = old.postgresql.listen.clone();
        new.restapi.listen = old.restapi.listen.clone();
        if let Some(live) = &self.restapi {
            live.replace(new.restapi.clone());
        }
        self.cfg = new;
        let cluster = self.state.borrow().cluster.clone();
        let (dynamic, _) = config::effective_dynamic(
            cluster
                .as_ref()
                .and_then(|c| c.config.as_ref())
                .map(|v| &v.value),
            &self.cfg,
        );
        self.dynamic = dynamic;
        let tags = self.cfg.tags.clone();
        self.state.send_modify(|s| Arc::make_mut(s).tags = tags);
        self.last_member = None;
        if self.pg.postmaster_pid().is_some() && self.job.is_none() {
            self.reload_postgres(cluster.as_deref()).await;
        }
        tracing::info!("configuration reloaded from {}", path.display());
        // The hook script is loaded on the hook thread, off this task; a broken one is refused
        // there and the old one kept.
        let hooks = self.hooks.clone();
        let cfg = self.cfg.clone();
        tokio::spawn(async move {
            if let Err(e) = hooks.reload(&cfg).await {
                tracing::error!("hooks not reloaded, keeping the running ones: {e}");
            }
        });
        self.fire(crate::hooks::Event::OnReload, None);
        if let Some(r) = reply {
            send(r, 202, "reload scheduled");
        }
        self.wake.notify_one();
    }
}
