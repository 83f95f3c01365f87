//! The HA loop: snapshot → decide → act → wait on one `select!`.
//!
//! The loop records the phase it is in (visible in logs when a phase is slow). Long actions
//! (bootstrap, replica creation, rewind, start, promote) run as a background job so that the
//! loop keeps renewing the lease while they run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::api::client;
use crate::config::{self, Config, DynamicConfig};
use crate::dcs::{self, decode_cluster, Cas, Cluster, Dcs, DcsError, HistoryLine, Status};
use crate::ha::decide::{
    self, Action, CandidateChoice, DataDir, Decision, DemoteMode, JobKind, LocalView, Pg, Policy,
    PromotionGate,
};
use crate::ha::member;
use crate::ha::phase::Phase;
use crate::ha::state::{DecisionReport, PgStatus, StateTx};
use crate::ha::sync;
use crate::postgres::conf::Upstream;
use crate::postgres::query::{quote_ident, quote_literal};
use crate::postgres::{Postgres, StopMode};

#[path = "runner_commands.rs"]
mod commands;
#[path = "runner_hooks.rs"]
mod hooks;

/// Why the loop ended.
#[derive(Debug)]
pub enum Exit {
    /// Shut down on a signal.
    Shutdown,
    /// A condition that must stop the daemon.
    Fatal(String),
}

struct Job {
    kind: JobKind,
    handle: JoinHandle<Result<JobDone, String>>,
}

/// What a finished job leaves behind.
#[derive(Debug)]
struct JobDone {
    upstream: Option<Option<String>>,
}

/// The loop's state between cycles.
pub struct Node {
    cfg: Config,
    dcs: Arc<dyn Dcs>,
    pg: Arc<Postgres>,
    state: StateTx,
    started: Instant,
    dynamic: DynamicConfig,
    job: Option<Job>,
    wake: Arc<Notify>,
    upstream: Option<Option<String>>,
    needs_rewind: bool,
    rewind_failed: bool,
    down_since: Option<Duration>,
    lease_renewed_at: Option<Instant>,
    last_member: Option<Vec<u8>>,
    last_status: Option<Vec<u8>>,
    slots_done_for: Vec<String>,
    history_written_for: Option<u64>,
    pg_label: Option<&'static str>,
    clone_from_leader: bool,
    known_timeline: Option<u64>,
    /// The dynamic PostgreSQL settings changed: rewrite the configuration and reload.
    conf_dirty: bool,
    /// The `synchronous_standby_names` this primary runs with (None: not managed yet).
    ssn: Option<String>,
    /// The primary's flush position measured at the first cycle after `ssn` last changed (None:
    /// not yet): a standby is confirmed synchronous only once it has flushed that far.
    ssn_since: Option<u64>,
    commands: Option<crate::ha::command::CommandRx>,
    config_path: Option<std::path::PathBuf>,
    /// The REST API's access settings, replaced on reload.
    pub(crate) restapi: Option<crate::api::LiveRestApi>,
    /// Lua hooks and shell callbacks.
    hooks: crate::hooks::Hooks,
    gate: hooks::Asked<crate::hooks::Gate>,
    choice: hooks::Asked<crate::hooks::Choice>,
    observed: hooks::Observed,
    /// A state-file write is still running on the blocking pool.
    state_file_busy: Arc<std::sync::atomic::AtomicBool>,
    scheduled_restart: Option<crate::ha::command::RestartRequest>,
    last_summary: String,
    /// The DCS warnings logged last (logged again only when they change, not every cycle).
    last_dcs_warnings: Vec<(String, String)>,
    /// The bootstrap job failed, with its cause: the next decision gives the bootstrap up.
    bootstrap_failed: Option<String>,
    /// The running or last bootstrap job started on an empty data directory: what is there now
    /// is its own, and may be removed when it fails.
    bootstrap_made_data_dir: bool,
}

impl Node {
    /// A node ready to run.
    pub fn new(
        cfg: Config,
        dcs: Arc<dyn Dcs>,
        pg: Arc<Postgres>,
        state: StateTx,
        dynamic: DynamicConfig,
    ) -> Node {
        Node {
            cfg,
            dcs,
            pg,
            state,
            started: Instant::now(),
            dynamic,
            job: None,
            wake: Arc::new(Notify::new()),
            upstream: None,
            needs_rewind: false,
            rewind_failed: false,
            down_since: None,
            lease_renewed_at: None,
            last_member: None,
            last_status: None,
            slots_done_for: Vec::new(),
            history_written_for: None,
            pg_label: None,
            clone_from_leader: false,
            known_timeline: None,
            conf_dirty: false,
            ssn: None,
            ssn_since: None,
            commands: None,
            config_path: None,
            restapi: None,
            hooks: crate::hooks::Hooks::none(),
            gate: hooks::Asked::new(),
            choice: hooks::Asked::new(),
            observed: hooks::Observed::default(),
            state_file_busy: Arc::default(),
            scheduled_restart: None,
            last_summary: String::new(),
            last_dcs_warnings: Vec::new(),
            bootstrap_failed: None,
            bootstrap_made_data_dir: false,
        }
    }

    /// Take commands from the REST API on this channel, and reload this file on SIGHUP and
    /// `POST /reload`.
    pub fn with_commands(
        mut self,
        rx: crate::ha::command::CommandRx,
        config_path: std::path::PathBuf,
    ) -> Node {
        self.commands = Some(rx);
        self.config_path = Some(config_path);
        self
    }

    /// Replace the REST API's access settings (authentication, allowlist, allowed command
    /// parameters) here when the config file is reloaded.
    pub fn with_live_restapi(mut self, restapi: crate::api::LiveRestApi) -> Node {
        self.restapi = Some(restapi);
        self
    }

    /// Report events to, and ask decisions of, these hooks.
    pub fn with_hooks(mut self, hooks: crate::hooks::Hooks) -> Node {
        self.hooks = hooks;
        self
    }

    /// A handle that wakes the loop early (REST actions use it).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Records the phase the loop enters (read by `/patroni`, `/metrics` and the lease guard).
    fn enter(&self, phase: Phase) {
        self.state.borrow().phase.enter(phase, Instant::now());
    }

    fn retry(&self) -> Duration {
        Duration::from_secs(self.dynamic.retry_timeout.max(1))
    }

    fn policy(&self) -> Policy {
        Policy {
            name: self.cfg.name.clone(),
            ttl: Duration::from_secs(self.dynamic.ttl),
            loop_wait: Duration::from_secs(self.dynamic.loop_wait),
            retry_timeout: self.retry(),
            maximum_lag_on_failover: self.dynamic.maximum_lag_on_failover,
            primary_start_timeout: Duration::from_secs(self.dynamic.primary_start_timeout),
            check_timeline: self.dynamic.check_timeline,
            use_pg_rewind: self.dynamic.postgresql.use_pg_rewind,
            remove_data_directory_on_rewind_failure: self
                .cfg
                .postgresql
                .remove_data_directory_on_rewind_failure,
            failover_priority: dcs::tags::failover_priority(&self.cfg.tags),
            paused: self.dynamic.pause,
            synchronous: sync::sync_mode(&self.dynamic) != sync::SyncMode::Off,
            quorum: sync::sync_mode(&self.dynamic) == sync::SyncMode::Quorum,
            replicatefrom: self
                .cfg
                .tags
                .get("replicatefrom")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }
    }

    /// Run until shutdown. `shutdown` resolves on SIGTERM/SIGINT.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Exit {
        tokio::pin!(shutdown);
        let mut changes = self.dcs.changes();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut commands = self.commands.take();
        loop {
            let cycle_start = Instant::now();
            self.scheduled_restart_due();
            let exit = self.cycle().await;
            let took = cycle_start.elapsed().as_secs_f64();
            self.state
                .send_modify(|s| Arc::make_mut(s).stats.observe(took));
            if let Some(exit) = exit {
                self.abort_job();
                return exit;
            }
            self.enter(Phase::Wait);
            let wait =
                Duration::from_secs(self.dynamic.loop_wait).saturating_sub(cycle_start.elapsed());
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutdown requested");
                    return self.shutdown().await;
                }
                _ = tokio::time::sleep(wait) => {}
                r = changes.changed() => {
                    if r.is_err() {
                        // The watch task ended; fall back to the timer.
                        changes = self.dcs.changes();
                        tokio::time::sleep(wait).await;
                    }
                }
                // A finished job notifies too.
                _ = self.wake.notified() => {}
                cmd = recv_command(&mut commands) => {
                    match cmd {
                        Some(cmd) => self.handle_command(cmd).await,
                        None => commands = None,
                    }
                }
                _ = recv_hup(&mut hup) => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    self.reload(None).await;
                }
            }
        }
    }

    fn abort_job(&mut self) {
        if let Some(j) = self.job.take() {
            j.handle.abort();
        }
    }

    /// One cycle. Returns Some when the loop must end.
    async fn cycle(&mut self) -> Option<Exit> {
        let now = self.started.elapsed();
        // ---- observe
        self.enter(Phase::Keepalive);
        let keep_sent = Instant::now();
        let mut dcs_failed = false;
        let session = self.dcs.keepalive().await;
        // The store answered but refused to renew (e.g. a lease TTL it does not accept): the
        // cure may be a config written meanwhile, so the config is re-read after acting.
        let refused = matches!(&session, Err(DcsError::Refused { .. }));
        let mut session_ok = match &session {
            Ok(info) => {
                if info.new_session {
                    self.last_member = None;
                    tracing::info!(session = info.id, "new DCS session");
                } else if self.lease_renewed_at.is_some() {
                    // The same lease, renewed: the leader key bound to it stands. Tell the
                    // lease guard now rather than at the end of the cycle.
                    self.lease_renewed_at = Some(keep_sent);
                    self.state
                        .send_modify(|s| Arc::make_mut(s).leader_renewed_at = Some(keep_sent));
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "DCS keep-alive failed");
                dcs_failed = true;
                false
            }
        };
        self.enter(Phase::ReadDcs);
        let cluster = if session_ok {
            match self.dcs.snapshot().await {
                Ok(s) => {
                    let c = decode_cluster(&s);
                    self.log_dcs_warnings(&c);
                    Some(c)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DCS read failed");
                    session_ok = false;
                    dcs_failed = true;
                    None
                }
            }
        } else {
            None
        };
        let rtt = keep_sent.elapsed().as_secs_f64();
        self.state.send_modify(|s| {
            let st = &mut Arc::make_mut(s).stats;
            st.dcs_rtt_secs = Some(rtt);
            st.dcs_errors += u64::from(dcs_failed);
        });
        if let Some(c) = &cluster {
            self.apply_dynamic(c);
        }
        let holds = cluster
            .as_ref()
            .and_then(|c| c.leader.as_ref())
            .map(|l| l.name == self.cfg.name && l.owned_by_us)
            .unwrap_or(false);
        // The lock is held only while this cycle renewed the session and the key is bound to it.
        self.lease_renewed_at = (session_ok && holds).then_some(keep_sent);

        self.enter(Phase::ReapJob);
        self.reap_job().await;

        self.enter(Phase::ObservePostgres);
        let (pg_view, mut pgstat, data) = self.observe_pg().await;
        if matches!(pg_view, Pg::Stopped) && holds {
            self.down_since.get_or_insert(now);
        } else {
            self.down_since = None;
        }

        self.enter(Phase::QueryPeers);
        // Peers matter only in a leader race, or to a leader asked to hand over.
        let me = self.cfg.name.as_str();
        let peers = match (&cluster, &pg_view) {
            (Some(c), Pg::Running { primary, .. })
                if self.job.is_none()
                    && ((!primary
                        && c.leader.is_none()
                        && c.failover.as_ref().and_then(|f| f.value.member.as_deref())
                            != Some(me))
                        || (*primary
                            && c.failover.is_some()
                            && c.leader.as_ref().map(|l| l.name == me).unwrap_or(false))) =>
            {
                let others: Vec<(String, String)> = c
                    .members
                    .iter()
                    .filter(|m| m.name != self.cfg.name && !m.data.api_url.is_empty())
                    .map(|m| (m.name.clone(), m.data.api_url.clone()))
                    .collect();
                client::fetch_peers(&others, self.retry().min(Duration::from_secs(2))).await
            }
            _ => Vec::new(),
        };

        // ---- decide
        let local = LocalView {
            session_ok,
            data,
            pg: pg_view,
            job: self.job.as_ref().map(|j| j.kind),
            upstream: self.upstream.clone(),
            needs_rewind: self.needs_rewind,
            rewind_failed: self.rewind_failed,
            down_since: self.down_since,
            peers,
            lease_renewed_at: self
                .lease_renewed_at
                .map(|t| t.duration_since(self.started)),
            unix_now: chrono::Utc::now().timestamp(),
            clone_from_leader: self.clone_from_leader,
            promotion_gate: PromotionGate::Open,
            candidate_choice: CandidateChoice::Default,
            bootstrap_failed: self.bootstrap_failed.clone(),
        };
        self.enter(Phase::Hooks);
        let (gate, choice) = self.hook_inputs(cluster.as_ref(), &local);
        let local = LocalView {
            promotion_gate: gate,
            candidate_choice: choice,
            ..local
        };
        self.enter(Phase::Decide);
        let decision = decide::decide(cluster.as_ref(), &local, &self.policy(), now);
        let summary = decision.summary();
        if summary != self.last_summary {
            tracing::info!(
                "{}{summary}",
                if self.dynamic.pause { "PAUSE: " } else { "" }
            );
            self.last_summary = summary;
        } else {
            tracing::debug!("{summary}");
        }

        // ---- act
        self.enter(Phase::Act);
        let fatal = self
            .execute(&decision, cluster.as_ref(), &local, &pgstat, keep_sent)
            .await;

        if self.conf_dirty && self.job.is_none() && self.pg.postmaster_pid().is_some() {
            self.conf_dirty = false;
            self.reload_postgres(cluster.as_ref()).await;
        }

        // Refresh PostgreSQL's view if the actions changed it, so the member key is current.
        if !decision.actions.is_empty() {
            let (_, st, _) = self.observe_pg().await;
            pgstat = st;
        }

        // ---- publish
        self.enter(Phase::Publish);
        // A daemon about to exit publishes nothing more to the DCS (a failed bootstrap has
        // just closed its session: a member key written now would make a new one).
        if session_ok && fatal.is_none() {
            let promoting = self
                .job
                .as_ref()
                .map(|j| j.kind == JobKind::Promote)
                .unwrap_or(false);
            let mut m = member::member_data(&self.cfg, &pgstat, self.dynamic.pause, promoting);
            {
                let st = self.state.borrow();
                if let Some(v) = st.scheduled_restart.clone() {
                    m.extra.insert("scheduled_restart".into(), v);
                }
                if let Some(v) = &st.promotion_veto {
                    m.extra.insert("promotion_veto".into(), v.clone().into());
                }
                if let Some(p) = &st.hook_choice {
                    m.extra.insert("hook_choice".into(), p.clone().into());
                }
                if pgstat.fence_armed {
                    m.extra.insert("fence".into(), "armed".into());
                }
            }
            let bytes = member::encode(&m);
            if self.last_member.as_deref() != Some(&bytes[..]) {
                match self.dcs.put_member(&bytes).await {
                    Ok(()) => self.last_member = Some(bytes),
                    Err(e) => tracing::warn!(error = %e, "could not write the member key"),
                }
            }
        }
        let cluster_arc = cluster.map(Arc::new);
        let dynamic = self.dynamic.clone();
        let leader_renewed_at = self.lease_renewed_at;
        let report = DecisionReport {
            actions: decision.actions.iter().map(ToString::to_string).collect(),
            reasons: decision.reasons.iter().map(ToString::to_string).collect(),
            at: chrono::Utc::now().to_rfc3339(),
        };
        let tags = self.cfg.tags.clone();
        let hook_stats = self.hooks.stats.snapshot();
        let observed_pg = pgstat.clone();
        self.state.send_modify(|s| {
            let s = Arc::make_mut(s);
            s.hook_stats = hook_stats;
            s.pg = pgstat;
            s.leader_renewed_at = leader_renewed_at;
            if let Some(c) = cluster_arc {
                s.cluster = Some(c);
                s.dcs_last_seen = Some(chrono::Utc::now().timestamp());
            }
            s.last_cycle = Instant::now();
            s.dynamic = dynamic;
            s.decision = report;
            s.tags = tags;
        });
        self.report_transitions(&observed_pg);
        self.publish_state_file(&observed_pg);
        if refused && fatal.is_none() {
            self.reread_config_after_refusal().await;
        }
        fatal.map(Exit::Fatal)
    }

    /// Logs the DCS values that were ignored, clamped or dropped, once per change.
    fn log_dcs_warnings(&mut self, c: &Cluster) {
        if c.warnings != self.last_dcs_warnings {
            for (k, w) in &c.warnings {
                tracing::warn!(key = %k, "DCS value not used as written: {w}");
            }
            self.last_dcs_warnings = c.warnings.clone();
        }
    }

    /// After the store refused the keep-alive: read the cluster again and apply its dynamic
    /// configuration, so that a repaired `ttl` reaches the backend before the next keep-alive
    /// (which then makes a session with it). Nothing else of this read is used: the decision of
    /// this cycle was taken without a session.
    async fn reread_config_after_refusal(&mut self) {
        match self.dcs.snapshot().await {
            Ok(s) => {
                let c = decode_cluster(&s);
                self.log_dcs_warnings(&c);
                self.apply_dynamic(&c);
            }
            Err(e) => tracing::debug!(error = %e, "DCS read after a refused keep-alive failed"),
        }
    }

    /// Writes `spilo.state` for the extension, off the loop's task (an fsync can stall); skips
    /// a cycle while the previous write still runs.
    fn publish_state_file(&self, pg: &PgStatus) {
        use std::sync::atomic::Ordering;
        // pg_rewind and pg_basebackup own the data directory while they run: a write (its
        // temporary file renamed away under pg_rewind's file list) made a rewind fail.
        let job_owns_data = matches!(
            self.job.as_ref().map(|j| &j.kind),
            Some(JobKind::Rewind | JobKind::Clone | JobKind::Bootstrap)
        );
        if job_owns_data
            || !self.pg.data_dir_initialized()
            || self.state_file_busy.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let s = self.state.borrow().clone();
        let fence = self
            .conf_params(false)
            .get("spilo.fence")
            .and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.eq_ignore_ascii_case("on")),
                serde_json::Value::Bool(b) => Some(*b),
                _ => None,
            })
            .unwrap_or(false);
        let state = crate::ha::state_file::render(&crate::ha::state_file::StateInputs {
            scope: &self.cfg.scope,
            member: &self.cfg.name,
            cluster: s.cluster.as_deref(),
            pg,
            lease_renewed_at: self.lease_renewed_at,
            ttl: Duration::from_secs(self.dynamic.ttl),
            decision: &s.decision,
            fence,
        });
        let dir = self.cfg.postgresql.data_dir.clone();
        let busy = self.state_file_busy.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::ha::state_file::write(&dir, &state) {
                tracing::warn!(error = %e, "could not write {}", crate::ha::state_file::FILE_NAME);
            }
            busy.store(false, Ordering::SeqCst);
        });
    }

    fn apply_dynamic(&mut self, c: &Cluster) {
        let (dynamic, warnings) =
            config::effective_dynamic(c.config.as_ref().map(|v| &v.value), &self.cfg);
        if dynamic != self.dynamic {
            for w in warnings {
                tracing::warn!("{w}");
            }
            if dynamic.ttl != self.dynamic.ttl {
                self.dcs.set_ttl(Duration::from_secs(dynamic.ttl));
            }
            // PostgreSQL settings changed (PATCH /config, edit-config): rewrite the files and
            // reload at the end of this cycle.
            if dynamic.postgresql.parameters != self.dynamic.postgresql.parameters
                || dynamic.postgresql.pg_hba != self.dynamic.postgresql.pg_hba
            {
                self.conf_dirty = true;
            }
            self.dynamic = dynamic;
        }
    }

    async fn reap_job(&mut self) {
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
                if job.kind == JobKind::Rewind {
                    self.needs_rewind = false;
                }
                if job.kind == JobKind::Clone {
                    self.clone_from_leader = false;
                }
            }
            Ok(Err(e)) => {
                tracing::error!("{} failed: {e}", job.kind);
                if job.kind == JobKind::Bootstrap {
                    self.bootstrap_failed = Some(e.clone());
                }
                if job.kind == JobKind::Rewind {
                    if self.cfg.postgresql.remove_data_directory_on_rewind_failure {
                        tracing::warn!("removing the data directory to copy it again (remove_data_directory_on_rewind_failure)");
                        if let Err(e) = self.pg.remove_data_dir() {
                            tracing::error!(error = %e, "could not remove the data directory");
                        }
                        self.needs_rewind = false;
                    } else {
                        self.rewind_failed = true;
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

    /// Observe the local PostgreSQL: the decision's view, the published status, the data dir.
    async fn observe_pg(&mut self) -> (Pg, PgStatus, DataDir) {
        let running = self.pg.postmaster_pid().is_some();
        let initialized = self.pg.data_dir_initialized();
        let mut st = PgStatus::default();
        let mut view = Pg::Stopped;
        let mut data = if initialized {
            DataDir::Initialized {
                sysid: None,
                was_primary: false,
                crashed: false,
                timeline: None,
            }
        } else {
            DataDir::Empty
        };
        if running {
            match self.pg.query_status(self.retry()).await {
                Ok(mut q) => {
                    // Without a WAL receiver a replica only knows the timeline of its last
                    // restartpoint, which lags; the timeline it streamed last is better.
                    if q.role == "primary" || q.replication_state.as_deref() == Some("streaming") {
                        self.known_timeline = q.timeline;
                    } else if let (Some(t), Some(k)) = (q.timeline, self.known_timeline) {
                        q.timeline = Some(t.max(k));
                    }
                    view = Pg::Running {
                        primary: q.role == "primary",
                        timeline: q.timeline,
                        wal_position: q.wal_position(),
                        streaming: q.replication_state.as_deref() == Some("streaming"),
                    };
                    data = DataDir::Initialized {
                        sysid: q.sysid.clone(),
                        was_primary: q.role == "primary",
                        crashed: false,
                        timeline: q.timeline,
                    };
                    st = q;
                    st.state = "running".into();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "PostgreSQL does not answer");
                    view = Pg::Unresponsive;
                    st.state = "starting".into();
                    st.role = "replica".into();
                }
            }
        } else if initialized && self.job.is_none() {
            match self.pg.controldata().await {
                Ok(cd) => {
                    let state = cd
                        .get("Database cluster state")
                        .cloned()
                        .unwrap_or_default();
                    data = DataDir::Initialized {
                        sysid: cd.get("Database system identifier").cloned(),
                        was_primary: state == "in production" || state == "shut down",
                        crashed: state == "in production" || state.contains("crash"),
                        timeline: cd
                            .get("Latest checkpoint's TimeLineID")
                            .and_then(|t| t.parse().ok()),
                    };
                }
                Err(e) => tracing::warn!(error = %e, "pg_controldata failed"),
            }
            st.state = "stopped".into();
        } else {
            st.state = "stopped".into();
        }
        if let Some(label) = self.pg_label {
            st.state = label.into();
        }
        if st.role.is_empty() {
            st.role = match &data {
                DataDir::Empty => "uninitialized".into(),
                DataDir::Initialized {
                    was_primary: true, ..
                } if !running => "demoted".into(),
                _ => "replica".into(),
            };
        }
        (view, st, data)
    }

    /// Execute the plan. Returns a fatal message when the daemon must stop.
    async fn execute(
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
                        self.needs_rewind = false;
                        self.rewind_failed = false;
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
                Action::StartPrimary => self.spawn_start(cluster, None, false),
                Action::StartReplica(up) => self.spawn_start(cluster, Some(up.clone()), true),
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

    fn upstream_for(&self, cluster: Option<&Cluster>, name: &Option<String>) -> Option<Upstream> {
        let name = name.as_ref()?;
        let m = cluster?.member(name)?;
        let (host, port) = m.host_port()?;
        Some(Upstream {
            host,
            port,
            user: self
                .cfg
                .postgresql
                .authentication
                .replication
                .username
                .clone(),
            slot: self
                .dynamic
                .postgresql
                .use_slots
                .then(|| dcs::codec::slot_name(&self.cfg.name)),
        })
    }

    fn hba(&self) -> Vec<String> {
        let mut lines = self.cfg.bootstrap.pg_hba.clone();
        let extra = if self.cfg.postgresql.pg_hba.is_empty() {
            &self.dynamic.postgresql.pg_hba
        } else {
            &self.cfg.postgresql.pg_hba
        };
        if !extra.is_empty() {
            lines = extra.clone();
        }
        lines
    }

    /// The parameters to write: a primary in synchronous mode also gets the SSN it runs with.
    fn conf_params(&self, standby: bool) -> std::collections::BTreeMap<String, serde_json::Value> {
        let ssn = if standby { None } else { self.ssn.as_deref() };
        sync::with_ssn(&self.dynamic.postgresql.parameters, ssn)
    }

    fn write_conf(&self, standby: bool, upstream: Option<&Upstream>) -> Result<(), String> {
        self.pg
            .write_config(&self.conf_params(standby), &self.hba(), standby, upstream)
            .map_err(|e| e.to_string())
    }

    fn spawn_job<F>(&mut self, kind: JobKind, label: &'static str, fut: F)
    where
        F: std::future::Future<Output = Result<JobDone, String>> + Send + 'static,
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

    /// Undo a failed bootstrap (see [`Action::AbandonBootstrap`]). The data directory was
    /// empty when the job started (checked before it was spawned) and only the job wrote to it,
    /// so removing it removes only what the bootstrap made.
    async fn abandon_bootstrap(&mut self, cluster: Option<&Cluster>, local: &LocalView) {
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

    fn spawn_bootstrap(&mut self) {
        let pg = self.pg.clone();
        self.bootstrap_made_data_dir = false;
        let args = match crate::postgres::conf::initdb_args(&self.cfg.bootstrap.initdb) {
            Ok(a) => a,
            Err(e) => {
                self.bootstrap_failed = Some(e);
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
        let repl = self.cfg.postgresql.authentication.replication.clone();
        let rewind = self.cfg.postgresql.authentication.rewind.clone();
        let su = self
            .cfg
            .postgresql
            .authentication
            .superuser
            .username
            .clone();
        let timeout = self.retry() * 3;
        self.spawn_job(JobKind::Bootstrap, "initializing new cluster", async move {
            pg.initdb(&args).await.map_err(|e| e.to_string())?;
            pg.write_config(&params, &hba, false, None).map_err(|e| e.to_string())?;
            pg.start().await.map_err(|e| e.to_string())?;
            // The fence (spilo.fence) would refuse these writes: no state file exists yet.
            let mut sql = format!(
                "BEGIN; SET LOCAL spilo.fence = off; SET LOCAL synchronous_commit = 'local'; \
                 CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {};",
                quote_ident(&repl.username),
                quote_literal(repl.password.as_deref().unwrap_or(""))
            );
            if let Some(r) = rewind.filter(|r| r.username != su) {
                sql.push_str(&format!(
                    "CREATE ROLE {u} WITH LOGIN PASSWORD {p}; \
                     GRANT EXECUTE ON function pg_catalog.pg_ls_dir(text, boolean, boolean) TO {u}; \
                     GRANT EXECUTE ON function pg_catalog.pg_stat_file(text, boolean) TO {u}; \
                     GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text) TO {u}; \
                     GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {u};",
                    u = quote_ident(&r.username),
                    p = quote_literal(r.password.as_deref().unwrap_or(""))
                ));
            }
            sql.push_str("COMMIT;");
            pg.execute(&sql, timeout).await.map_err(|e| e.to_string())?;
            // The SQL extension, when this PostgreSQL has it; it replicates to every replica.
            match pg
                .execute(
                    "BEGIN; SET LOCAL spilo.fence = off; CREATE EXTENSION IF NOT EXISTS spilo; COMMIT;",
                    timeout,
                )
                .await
            {
                Ok(()) => tracing::info!("created the spilo extension (SELECT spilo.role())"),
                Err(e) => tracing::warn!(
                    "the spilo extension is not available in this PostgreSQL, so spilo.* SQL \
                     functions are missing (install it with cargo pgrx install): {e}"
                ),
            }
            Ok(JobDone { upstream: Some(None) })
        });
    }

    fn spawn_clone(&mut self, cluster: Option<&Cluster>, from: &str) -> bool {
        let Some(up) = self.upstream_for(cluster, &Some(from.to_string())) else {
            tracing::warn!("cannot clone from {from}: its connection address is unknown");
            return false;
        };
        let pg = self.pg.clone();
        let params = self.dynamic.postgresql.parameters.clone();
        let hba = self.hba();
        let from = from.to_string();
        let state_file = (
            self.state_file_busy.clone(),
            self.cfg.postgresql.data_dir.clone(),
        );
        self.spawn_job(JobKind::Clone, "creating replica", async move {
            state_file_settled(&state_file.0, &state_file.1).await;
            pg.basebackup(&up.host, up.port)
                .await
                .map_err(|e| e.to_string())?;
            pg.write_config(&params, &hba, true, Some(&up))
                .map_err(|e| e.to_string())?;
            pg.start().await.map_err(|e| e.to_string())?;
            Ok(JobDone {
                upstream: Some(Some(from)),
            })
        });
        true
    }

    fn spawn_rewind(&mut self, cluster: Option<&Cluster>, leader: &str, local: &LocalView) -> bool {
        let Some(up) = self.upstream_for(cluster, &Some(leader.to_string())) else {
            tracing::warn!("cannot rewind from {leader}: its connection address is unknown");
            return false;
        };
        let crashed = matches!(local.data, DataDir::Initialized { crashed: true, .. });
        let use_rewind = self.dynamic.postgresql.use_pg_rewind;
        let recopy = self.cfg.postgresql.remove_data_directory_on_rewind_failure;
        let pg = self.pg.clone();
        let params = self.dynamic.postgresql.parameters.clone();
        let hba = self.hba();
        let leader = leader.to_string();
        let state_file = (
            self.state_file_busy.clone(),
            self.cfg.postgresql.data_dir.clone(),
        );
        self.spawn_job(JobKind::Rewind, "starting", async move {
            state_file_settled(&state_file.0, &state_file.1).await;
            if use_rewind {
                pg.write_config(&params, &hba, false, None)
                    .map_err(|e| e.to_string())?;
                if crashed {
                    tracing::info!("running crash recovery in single-user mode before pg_rewind");
                    pg.single_user_recovery().await.map_err(|e| e.to_string())?;
                }
                let out = pg
                    .rewind(&up.host, up.port)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!("pg_rewind: {}", out.lines().last().unwrap_or("done"));
            } else if recopy {
                tracing::warn!("use_pg_rewind is off: copying the data directory again");
                pg.basebackup(&up.host, up.port)
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                tracing::warn!("use_pg_rewind is off: starting as a replica without rewinding");
            }
            pg.write_config(&params, &hba, true, Some(&up))
                .map_err(|e| e.to_string())?;
            pg.start().await.map_err(|e| e.to_string())?;
            Ok(JobDone {
                upstream: Some(Some(leader)),
            })
        });
        true
    }

    /// Start PostgreSQL: as primary (`replica_of` None), or as a replica following the named
    /// member (`Some(Some(m))`) or nobody (`Some(None)`). Fails when the member's address is
    /// unknown in `cluster` rather than start a replica that follows nobody by mistake.
    fn spawn_start(
        &mut self,
        cluster: Option<&Cluster>,
        replica_of: Option<Option<String>>,
        standby: bool,
    ) -> bool {
        let up = match &replica_of {
            Some(Some(name)) => {
                match self.upstream_for(cluster, &Some(name.clone())) {
                    Some(up) => Some(up),
                    None => {
                        tracing::warn!("cannot start as a replica of {name}: its connection address is unknown");
                        return false;
                    }
                }
            }
            _ => None,
        };
        if let Err(e) = self.write_conf(standby, up.as_ref()) {
            tracing::error!("cannot write the PostgreSQL configuration: {e}");
            return false;
        }
        let pg = self.pg.clone();
        self.spawn_job(JobKind::Start, "starting", async move {
            pg.start().await.map_err(|e| e.to_string())?;
            Ok(JobDone {
                upstream: replica_of.or(Some(None)),
            })
        });
        true
    }

    async fn spawn_promote(&mut self, cluster: Option<&Cluster>) -> bool {
        if sync::sync_mode(&self.dynamic) != sync::SyncMode::Off {
            // Before promoting, name ourselves in the `sync` key with no standby yet, so no
            // stale standby there can be promoted after us; in strict mode, commits wait until
            // a standby is confirmed.
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
            self.ssn = Some(sync::ssn(&[], 1, sync::strict(&self.dynamic)));
            self.ssn_since = None;
            if let Err(e) = self.write_conf(true, None) {
                tracing::warn!("could not write the configuration before promoting: {e}");
            }
        } else {
            self.ssn = None;
            self.ssn_since = None;
        }
        // A new term: the slots this node made as an earlier leader may be gone (pg_rewind
        // and pg_basebackup do not copy them).
        self.slots_done_for.clear();
        let pg = self.pg.clone();
        let params = self.conf_params(false);
        let hba = self.hba();
        let timeout = self.pg.s.ctl_timeout;
        self.spawn_job(JobKind::Promote, "running", async move {
            pg.promote().await.map_err(|e| e.to_string())?;
            // Until this checkpoint, pg_control still names the old timeline, and a former
            // primary rewinding from us would find nothing to rewind.
            pg.execute("CHECKPOINT", timeout)
                .await
                .map_err(|e| e.to_string())?;
            // Drop primary_conninfo from the files so a later restart comes up as primary.
            pg.write_config(&params, &hba, false, None)
                .map_err(|e| e.to_string())?;
            Ok(JobDone {
                upstream: Some(None),
            })
        });
        true
    }

    async fn follow(&mut self, cluster: Option<&Cluster>, name: Option<String>) -> bool {
        let up = self.upstream_for(cluster, &name);
        if name.is_some() && up.is_none() {
            tracing::warn!("cannot follow {name:?}: its connection address is unknown");
            return false;
        }
        if let Err(e) = self.write_conf(true, up.as_ref()) {
            tracing::error!("cannot write the PostgreSQL configuration: {e}");
            return false;
        }
        match self
            .pg
            .execute("SELECT pg_reload_conf()", self.retry())
            .await
        {
            Ok(()) => {
                tracing::info!("following {}", name.as_deref().unwrap_or("nobody"));
                self.upstream = Some(name);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reload failed");
                false
            }
        }
    }

    async fn demote(&mut self, mode: DemoteMode) -> bool {
        if mode == DemoteMode::Graceful {
            tracing::info!("switchover: checkpoint, fast stop, then release the leader lock");
            self.hand_over(true).await;
            return true;
        }
        self.lease_renewed_at = None;
        self.ssn = None;
        self.ssn_since = None;
        self.slots_done_for.clear();
        tracing::warn!("demoting: stopping PostgreSQL immediately");
        if let Err(e) = self.pg.stop(StopMode::Immediate).await {
            tracing::error!(error = %e, "immediate stop failed; killing the postmaster");
            self.pg.kill_postmaster();
        }
        self.needs_rewind = true;
        self.upstream = None;
        if mode == DemoteMode::Offline {
            self.spawn_start(None, Some(None), true);
        }
        true
    }

    /// Stop a primary so that a replica can take over at once: optionally a CHECKPOINT while
    /// still primary (so the shutdown checkpoint has little to write), a fast stop (PostgreSQL
    /// sends the shutdown checkpoint to connected standbys before it exits), the checkpoint's
    /// position in `status.optime`, then the leader key released.
    async fn hand_over(&mut self, checkpoint_first: bool) {
        let streaming = self
            .state
            .borrow()
            .pg
            .replication
            .iter()
            .filter(|r| r.state == "streaming")
            .count();
        if checkpoint_first {
            if let Err(e) = self.pg.execute("CHECKPOINT", self.pg.s.ctl_timeout).await {
                tracing::warn!(error = %e, "CHECKPOINT before the switchover failed");
            }
        }
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            tracing::error!(error = %e, "fast stop failed; stopping immediately");
            let _ = self.pg.stop(StopMode::Immediate).await;
        }
        self.needs_rewind = true;
        self.upstream = None;
        self.ssn = None;
        self.ssn_since = None;
        self.slots_done_for.clear();
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

    async fn leader_housekeeping(&mut self, cluster: Option<&Cluster>, pgs: &PgStatus) {
        let Some(c) = cluster else { return };
        if c.config.is_none() && c.config_raw.is_none() {
            // `bootstrap.dcs` as written, with only the timeouts adjusted: local overrides
            // (postgresql.parameters of this node) stay local.
            let mut initial = self.cfg.bootstrap.dcs.clone();
            config::adjust_timeouts(&mut initial);
            let bytes = dcs::codec::to_compact_json(&initial);
            if let Err(e) = self.dcs.put("config", &bytes, Cas::Absent).await {
                tracing::warn!(error = %e, "could not write config");
            }
        }
        let status = Status {
            optime: pgs.wal_flush,
            ..Status::default()
        };
        let bytes = dcs::codec::to_compact_json(&status);
        if self.last_status.as_deref() != Some(&bytes[..]) && status.optime.is_some() {
            match self.dcs.put("status", &bytes, Cas::Any).await {
                Ok(_) => self.last_status = Some(bytes),
                Err(e) => tracing::warn!(error = %e, "could not write status"),
            }
        }
        if let Some(tl) = pgs.timeline {
            if tl > 1 && self.history_written_for != Some(tl) && c.timeline() != tl {
                match self.read_history(tl) {
                    Ok(mut h) => {
                        // Earlier lines keep the time and new leader recorded when they
                        // were written; the history file has neither.
                        if let Some(old) = &c.history {
                            for line in h.iter_mut() {
                                if let Some(prev) = old.iter().find(|o| o.timeline == line.timeline)
                                {
                                    if line.timestamp.is_none() {
                                        line.timestamp = prev.timestamp.clone();
                                    }
                                    if line.new_leader.is_none() {
                                        line.new_leader = prev.new_leader.clone();
                                    }
                                }
                            }
                        }
                        match self
                            .dcs
                            .put("history", &dcs::codec::encode_history(&h), Cas::Any)
                            .await
                        {
                            Ok(_) => self.history_written_for = Some(tl),
                            Err(e) => tracing::warn!(error = %e, "could not write history"),
                        }
                    }
                    Err(e) => tracing::warn!("could not read the timeline history: {e}"),
                }
            } else if c.timeline() == tl {
                self.history_written_for = Some(tl);
            }
        }
        self.sync_housekeeping(c, pgs).await;
        if self.dynamic.postgresql.use_slots {
            let wanted: Vec<String> = c
                .members
                .iter()
                .filter(|m| m.name != self.cfg.name)
                .map(|m| dcs::codec::slot_name(&m.name))
                .collect();
            // Re-check while some replica is not streaming: its slot may be what is missing.
            let lagging = c.members.iter().any(|m| {
                m.name != self.cfg.name && m.data.replication_state.as_deref() != Some("streaming")
            });
            if wanted != self.slots_done_for || lagging {
                match self.pg.physical_slots(self.retry()).await {
                    Ok(existing) => {
                        let mut ok = true;
                        for s in wanted.iter().filter(|s| !existing.contains(s)) {
                            let sql = format!(
                                "SELECT pg_create_physical_replication_slot({})",
                                quote_literal(s)
                            );
                            if let Err(e) = self.pg.execute(&sql, self.retry()).await {
                                tracing::warn!(error = %e, slot = %s, "could not create slot");
                                ok = false;
                            }
                        }
                        if ok {
                            self.slots_done_for = wanted;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not list slots"),
                }
            }
        }
    }

    /// Synchronous replication on the leader: move SSN and the `sync` key toward the best
    /// standbys, one invariant-keeping step at a time (see [`sync`]).
    async fn sync_housekeeping(&mut self, c: &Cluster, pgs: &PgStatus) {
        let me = self.cfg.name.clone();
        let ours = sync::key_leader(c) == Some(me.as_str());
        let version = c.sync.as_ref().map(|v| v.version);
        if sync::sync_mode(&self.dynamic) == sync::SyncMode::Off {
            if ours {
                // Leaving synchronous mode: the key first, then SSN.
                if let Some(v) = version {
                    let _ = self.dcs.delete("sync", Cas::Version(v)).await;
                }
            }
            if self.ssn.take().is_some_and(|s| !s.is_empty()) {
                self.apply_ssn().await;
            }
            return;
        }
        if self.ssn.is_none() {
            // After a restart of the daemon: learn what PostgreSQL runs with.
            self.ssn = Some(
                self.pg
                    .current_setting("synchronous_standby_names", self.retry())
                    .await
                    .unwrap_or_default(),
            );
            self.ssn_since = None;
        }
        let count = sync::node_count(&self.dynamic);
        let strict = sync::strict(&self.dynamic);
        if sync::sync_mode(&self.dynamic) == sync::SyncMode::Quorum {
            self.quorum_housekeeping(c, pgs, ours, version, count, strict)
                .await;
            return;
        }
        let mut wanted = sync::candidates(
            c,
            &me,
            &pgs.replication,
            pgs.wal_flush,
            sync::max_lag_on_syncnode(&self.dynamic),
        );
        wanted.truncate(count);
        // Commits acknowledged before SSN last changed waited for nobody (or another
        // standby): measure how far the primary had flushed after the change (this cycle's
        // observation is taken after it), and confirm a `sync` standby only once it has that.
        if self.ssn_since.is_none() {
            self.ssn_since = pgs.wal_flush;
        }
        let confirmed = sync::confirmed(&pgs.replication, self.ssn_since);
        let mut key: Option<Vec<String>> = ours.then(|| sync::key_standbys(c));
        let mut wrote_key = false;
        for _ in 0..3 {
            let current = self.ssn.clone().unwrap_or_default();
            match sync::next_step(key.as_deref(), &wanted, &current, &confirmed, count, strict) {
                sync::SyncStep::Steady => return,
                sync::SyncStep::WriteKey(list) => {
                    if wrote_key {
                        // A second write needs the key's new version: next cycle.
                        return;
                    }
                    let value = dcs::codec::to_compact_json(&sync::key_value(&me, &list));
                    let cas = version.map(Cas::Version).unwrap_or(Cas::Absent);
                    match self.dcs.put("sync", &value, cas).await {
                        Ok(true) => {
                            tracing::info!(standbys = ?list, "sync key updated");
                            key = Some(list);
                            wrote_key = true;
                        }
                        Ok(false) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not write the sync key");
                            return;
                        }
                    }
                }
                sync::SyncStep::SetSsn(v) => {
                    tracing::info!(synchronous_standby_names = %v, "changing synchronous standbys");
                    self.ssn = Some(v);
                    self.ssn_since = None;
                    self.apply_ssn().await;
                    return;
                }
            }
        }
    }

    /// Quorum commit on the leader: `ANY k (voters)` and the `sync` key's voters and quorum,
    /// moved by [`sync::quorum_step`], which keeps every promotable quorum overlapping every
    /// acknowledging set.
    async fn quorum_housekeeping(
        &mut self,
        c: &Cluster,
        pgs: &PgStatus,
        ours: bool,
        version: Option<i64>,
        count: usize,
        strict: bool,
    ) {
        let me = self.cfg.name.clone();
        let active = sync::candidates(
            c,
            &me,
            &pgs.replication,
            pgs.wal_flush,
            sync::max_lag_on_syncnode(&self.dynamic),
        );
        if active.is_empty() && strict {
            // No standby: commits wait. The key may stay as it is, since nothing more can
            // be acknowledged.
            let placeholder = sync::quorum_ssn(&[], 1, true);
            if self.ssn.as_deref() != Some(placeholder.as_str()) {
                tracing::warn!("synchronous_mode_strict with no standby: commits wait for one");
                self.ssn = Some(placeholder);
                self.ssn_since = None;
                self.apply_ssn().await;
            }
            return;
        }
        let mut key: Option<(Vec<String>, u64)> =
            ours.then(|| (sync::key_standbys(c), sync::key_quorum(c)));
        let mut wrote_key = false;
        for _ in 0..3 {
            let mut parsed = sync::parse_ssn(self.ssn.as_deref().unwrap_or(""));
            parsed.names.retain(|n| n != sync::STRICT_PLACEHOLDER);
            let step = sync::quorum_step(
                key.as_ref().map(|(v, q)| (v.as_slice(), *q)),
                &parsed,
                &active,
                count,
            );
            match step {
                sync::QuorumStep::Steady => return,
                sync::QuorumStep::WriteKey(voters, q) => {
                    if wrote_key {
                        return;
                    }
                    let value =
                        dcs::codec::to_compact_json(&sync::quorum_key_value(&me, &voters, q));
                    let cas = version.map(Cas::Version).unwrap_or(Cas::Absent);
                    match self.dcs.put("sync", &value, cas).await {
                        Ok(true) => {
                            tracing::info!(voters = ?voters, quorum = q, "sync key updated");
                            key = Some((voters, q));
                            wrote_key = true;
                        }
                        Ok(false) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not write the sync key");
                            return;
                        }
                    }
                }
                sync::QuorumStep::SetSsn(names, k) => {
                    let v = sync::quorum_ssn(&names, k, strict);
                    tracing::info!(synchronous_standby_names = %v, "changing the quorum");
                    self.ssn = Some(v);
                    self.ssn_since = None;
                    self.apply_ssn().await;
                    return;
                }
            }
        }
    }

    async fn apply_ssn(&mut self) {
        if let Err(e) = self.write_conf(false, None) {
            tracing::error!("cannot write the PostgreSQL configuration: {e}");
            return;
        }
        if let Err(e) = self
            .pg
            .execute("SELECT pg_reload_conf()", self.retry())
            .await
        {
            tracing::warn!(error = %e, "reload failed");
        }
    }

    /// Rewrite the configuration files for the role PostgreSQL runs in and reload it; settings
    /// that need a restart then show up as `pending_restart`.
    async fn reload_postgres(&mut self, cluster: Option<&Cluster>) {
        let standby = self.state.borrow().pg.role != "primary";
        let upstream = if standby {
            self.upstream
                .clone()
                .flatten()
                .and_then(|n| self.upstream_for(cluster, &Some(n)))
        } else {
            None
        };
        if let Err(e) = self.write_conf(standby, upstream.as_ref()) {
            tracing::error!("cannot write the PostgreSQL configuration: {e}");
            return;
        }
        match self
            .pg
            .execute("SELECT pg_reload_conf()", self.retry())
            .await
        {
            Ok(()) => tracing::info!("PostgreSQL configuration reloaded"),
            Err(e) => tracing::warn!(error = %e, "reload failed"),
        }
    }

    /// The `history` key from `pg_wal/<tl>.history`.
    fn read_history(&self, tl: u64) -> Result<Vec<HistoryLine>, String> {
        let path = self
            .pg
            .s
            .data_dir
            .join("pg_wal")
            .join(format!("{tl:08X}.history"));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(|t| chrono::DateTime::<chrono::Local>::from(t).to_rfc3339())
            .unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let mut parts = line.split('\t');
            let (Some(t), Some(lsn)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(t), Some(lsn)) = (t.trim().parse::<u64>(), dcs::codec::parse_lsn(lsn)) else {
                continue;
            };
            out.push(HistoryLine {
                timeline: t,
                lsn,
                reason: parts.next().unwrap_or("").trim().to_string(),
                timestamp: None,
                new_leader: None,
            });
        }
        if let Some(last) = out.last_mut() {
            last.timestamp = Some(mtime);
            last.new_leader = Some(self.cfg.name.clone());
        }
        Ok(out)
    }

    /// SIGTERM/SIGINT: a leader hands over (fast stop with a shutdown checkpoint, which
    /// PostgreSQL sends to connected standbys before it exits, then the session ends so both
    /// keys vanish at once); a replica stops cleanly. Paused: PostgreSQL is left alone.
    async fn shutdown(mut self) -> Exit {
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

async fn recv_command(
    rx: &mut Option<crate::ha::command::CommandRx>,
) -> Option<crate::ha::command::Command> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_hup(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Waits (at most 10 s) for a state-file write spawned by an earlier cycle, then removes a
/// temporary file an interrupted write left: pg_rewind and pg_basebackup must not see the data
/// directory change under them (no new write starts while their job runs).
async fn state_file_settled(busy: &std::sync::atomic::AtomicBool, data_dir: &std::path::Path) {
    let since = Instant::now();
    while busy.load(std::sync::atomic::Ordering::SeqCst)
        && since.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ =
        std::fs::remove_file(data_dir.join(format!("{}.tmp", crate::ha::state_file::FILE_NAME)));
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
        state_file_settled(&busy, dir.path()).await;
        // Had it not waited, the write would still be in flight.
        assert!(
            !busy.load(Ordering::SeqCst),
            "returned while the write was in flight"
        );
        assert!(!tmp.exists(), "the temporary file is still there");
    }
}
