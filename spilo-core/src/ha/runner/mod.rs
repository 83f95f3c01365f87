//! The HA loop: snapshot → decide → act → wait on one `select!`.
//!
//! The loop records the phase it is in (visible in logs when a phase is slow). Long actions
//! (bootstrap, replica creation, rewind, start, promote) run as a background job so that the
//! loop keeps renewing the lease while they run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::api::client::{HttpPeers, PeerSource};
use crate::config::{Config, DynamicConfig};
use crate::dcs::{self, Cluster, Dcs};
use crate::ha::decide::{JobKind, Policy, Target};
use crate::ha::phase::Phase;
use crate::ha::plan::{
    next_rewind_state, BookkeepingMemo, RemovalReason, RewindEvent, RewindPlanner, RewindState,
};
use crate::ha::state::StateTx;
use crate::ha::sync;
use crate::postgres::conf::Upstream;
use crate::postgres::{LocalPostgres, PgError};

mod balance;
mod commands;
mod copy;
mod cycle;
mod execute;
mod hooks;
mod jobs;
mod leader;
mod observe;
mod publish;
mod standby;
mod sync_keeping;

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
    handle: JoinHandle<Result<JobDone, PgError>>,
}

/// What a finished job leaves behind.
#[derive(Debug)]
struct JobDone {
    upstream: Option<Target>,
    /// A replica copy: the method that built it, and why earlier methods were skipped.
    built: Option<String>,
}

/// A member to stream from whose connection address is not known (no or a bad `conn_url`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the connection address of {0} is unknown")]
pub struct UnknownAddress(pub String);

/// The loop's state between cycles.
pub struct Node {
    cfg: Config,
    dcs: Arc<dyn Dcs>,
    pg: Arc<dyn LocalPostgres>,
    /// Where peers' state comes from in a leader race (their REST APIs).
    peers: Arc<dyn PeerSource>,
    state: StateTx,
    started: Instant,
    dynamic: DynamicConfig,
    job: Option<Job>,
    wake: Arc<Notify>,
    upstream: Option<Target>,
    /// Where a former primary stands on its way back (a planner's state machine).
    rewind: RewindState,
    /// The planner that moves it ([`next_rewind_state`]).
    rewind_planner: RewindPlanner,
    /// What decides each cycle ([`crate::ha::decide::decide`]).
    decider: crate::ha::plan::Decider,
    down_since: Option<Duration>,
    lease_renewed_at: Option<Instant>,
    /// The session TTL the DCS last reported granting.
    granted_ttl: Option<Duration>,
    last_member: Option<Vec<u8>>,
    /// What the leader's bookkeeping wrote in earlier cycles.
    bookkeeping: BookkeepingMemo,
    pg_label: Option<crate::ha::state::PgState>,
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
    /// The store new replicas may be restored from (with a `storage:` section).
    backups: Option<Arc<dyn crate::ha::replica::ReplicaBackups>>,
    /// A new cluster is a clone of this source (`bootstrap.method: clone`).
    cloner: Option<Arc<dyn crate::ha::replica::ClusterClone>>,
    /// The dynamic configuration's `standby_cluster` (an error: the section is malformed, and
    /// the cluster stays a standby cluster following nobody until it is mended).
    standby: Option<
        Result<crate::config::standby::StandbyCluster, crate::config::standby::StandbyError>,
    >,
    /// Switches where `restore_command` reads WAL from (with a `storage:` section).
    archive_switch: Option<Arc<dyn crate::ha::replica::ArchiveSwitch>>,
    /// The backup and drill schedules the scheduler tasks follow (replaced on reload).
    backup_schedules: Option<tokio::sync::watch::Sender<crate::backup::scheduler::Schedules>>,
    /// How this node's data directory was last built by a replica copy (published in the
    /// member key as `built`, shown by `spiloctl list`).
    built: Option<String>,
    /// The load balancers that follow the primary (`load_balancers:`).
    lbs: Option<crate::lb::LoadBalancers>,
    /// The archive `restore_command` reads from now (`None` inside: this cluster's own), and
    /// that archive's backups; `None`: not switched yet.
    archive_in_use: Option<(
        Option<crate::config::standby::ArchiveSource>,
        Arc<dyn crate::ha::replica::ReplicaBackups>,
    )>,
}

impl Node {
    /// A node ready to run.
    pub fn new(
        cfg: Config,
        dcs: Arc<dyn Dcs>,
        pg: Arc<dyn LocalPostgres>,
        state: StateTx,
        dynamic: DynamicConfig,
    ) -> Node {
        Node {
            cfg,
            dcs,
            pg,
            peers: Arc::new(HttpPeers),
            state,
            started: crate::clock::now(),
            dynamic,
            job: None,
            wake: Arc::new(Notify::new()),
            upstream: None,
            rewind: RewindState::NotNeeded,
            rewind_planner: next_rewind_state,
            decider: crate::ha::decide::decide,
            down_since: None,
            lease_renewed_at: None,
            granted_ttl: None,
            last_member: None,
            bookkeeping: BookkeepingMemo::default(),
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
            backups: None,
            cloner: None,
            standby: None,
            archive_switch: None,
            backup_schedules: None,
            archive_in_use: None,
            built: None,
            lbs: None,
        }
    }

    /// Route traffic through these load balancers while this node leads.
    pub fn with_load_balancers(mut self, lbs: crate::lb::LoadBalancers) -> Node {
        let stats = lbs.stats();
        self.state
            .send_modify(|s| Arc::make_mut(s).load_balancers = stats);
        self.lbs = Some(lbs);
        self
    }

    /// Switch `restore_command`'s archive with this (a standby cluster reads its source's).
    pub fn with_archive_switch(
        mut self,
        switch: Arc<dyn crate::ha::replica::ArchiveSwitch>,
    ) -> Node {
        self.archive_switch = Some(switch);
        self
    }

    /// Send the schedules of a reloaded configuration here.
    pub fn with_backup_schedules(
        mut self,
        tx: tokio::sync::watch::Sender<crate::backup::scheduler::Schedules>,
    ) -> Node {
        self.backup_schedules = Some(tx);
        self
    }

    /// Bootstrap a new cluster as a clone of this source instead of with `initdb`.
    pub fn with_cloner(mut self, cloner: Arc<dyn crate::ha::replica::ClusterClone>) -> Node {
        self.cloner = Some(cloner);
        self
    }

    /// Restore new replicas from this store when `create_replica_methods` allows.
    pub fn with_backups(mut self, backups: Arc<dyn crate::ha::replica::ReplicaBackups>) -> Node {
        self.backups = Some(backups);
        self
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

    /// Ask peers through this source instead of their REST APIs (a simulated network).
    pub fn with_peer_source(mut self, peers: Arc<dyn PeerSource>) -> Node {
        self.peers = peers;
        self
    }

    /// Moves the rewind state with this planner instead of [`next_rewind_state`]: for
    /// simulations that plant a broken rule and must see their checks catch it.
    pub fn with_rewind_planner(mut self, planner: RewindPlanner) -> Node {
        self.rewind_planner = planner;
        self
    }

    /// Decides each cycle with this function instead of [`crate::ha::decide::decide`]: for
    /// simulations that plant a broken decision and must see their checks catch it.
    pub fn with_decider(mut self, decider: crate::ha::plan::Decider) -> Node {
        self.decider = decider;
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

    /// Moves the rewind state machine ([`crate::ha::plan::next_rewind_state`]); returns the
    /// data-directory removal it calls for, if any.
    fn rewind_event(&mut self, event: RewindEvent) -> Option<RemovalReason> {
        let (state, removal) = (self.rewind_planner)(self.rewind, event);
        self.rewind = state;
        removal
    }

    /// Records the phase the loop enters (read by `/patroni`, `/metrics` and the lease guard).
    fn enter(&self, phase: Phase) {
        self.state.borrow().phase.enter(phase, crate::clock::now());
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
            standby_cluster: self.standby.is_some(),
            // With a store (`backups`), the default methods include spilo_restore; read
            // without building the list each cycle.
            restore_without_leader: self.backups.is_some()
                && self.cfg.postgresql.spilo_restore.no_leader
                && self
                    .cfg
                    .postgresql
                    .create_replica_methods
                    .as_ref()
                    .is_none_or(|m| m.iter().any(|x| x == crate::config::model::METHOD_RESTORE)),
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
            let cycle_start = crate::clock::now();
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

    /// Where PostgreSQL streams from when following `target`: `Ok(None)` for nobody (or a
    /// standby cluster's source with no `host`: its archive only); an error when a member's
    /// address is unknown.
    fn resolve(
        &self,
        cluster: Option<&Cluster>,
        target: &Target,
    ) -> Result<Option<Upstream>, UnknownAddress> {
        match target {
            Target::Nobody => Ok(None),
            Target::Member(name) => self
                .upstream_for(cluster, name)
                .map(Some)
                .ok_or_else(|| UnknownAddress(name.clone())),
            Target::StandbySource => Ok(self.standby_upstream()),
        }
    }

    fn upstream_for(&self, cluster: Option<&Cluster>, name: &str) -> Option<Upstream> {
        let m = cluster?.member(name)?;
        let (host, port) = m.host_port()?;
        let slot = self
            .dynamic
            .postgresql
            .use_slots
            .then(|| dcs::codec::slot_name(&self.cfg.name));
        Some(self.replication_upstream(host, port, slot))
    }

    /// Streaming from `host:port` as the replication role, through `slot`.
    fn replication_upstream(&self, host: String, port: u16, slot: Option<String>) -> Upstream {
        Upstream {
            host,
            port,
            user: self
                .cfg
                .postgresql
                .authentication
                .replication
                .username
                .clone(),
            slot,
        }
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

    /// The parameters to write: a primary in synchronous mode also gets the SSN it runs with;
    /// a standby leader following the other cluster, `standby_cluster`'s recovery settings.
    fn conf_params(
        &self,
        standby: bool,
        target: Option<&Target>,
    ) -> std::collections::BTreeMap<String, serde_json::Value> {
        let ssn = if standby { None } else { self.ssn.as_deref() };
        let mut params = sync::with_ssn(&self.dynamic.postgresql.parameters, ssn);
        if target == Some(&Target::StandbySource) {
            self.standby_params(&mut params);
        }
        self.standby_archive_mode(&mut params);
        params
    }

    /// Rewrites the configuration files for the role PostgreSQL runs in (`standby`), following
    /// whom it follows now.
    fn write_conf_as_is(&self, cluster: Option<&Cluster>, standby: bool) -> Result<(), PgError> {
        let target = if standby {
            self.upstream.clone().unwrap_or(Target::Nobody)
        } else {
            Target::Nobody
        };
        let up = self.resolve(cluster, &target).unwrap_or(None);
        self.write_conf(standby, Some(&target), up.as_ref())
    }

    fn write_conf(
        &self,
        standby: bool,
        target: Option<&Target>,
        upstream: Option<&Upstream>,
    ) -> Result<(), PgError> {
        self.pg.write_config(
            &self.conf_params(standby, target),
            &self.hba(),
            standby,
            upstream,
        )
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
