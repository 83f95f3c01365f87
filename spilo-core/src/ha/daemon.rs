//! Start-up of the daemon: connect to the DCS (with logged back-off), refuse a duplicate name,
//! serve the REST API, run the loop, hand over on SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::backup::ArchiveMethod;
use crate::config::{self, Config};
use crate::dcs::{self, registry, Dcs};
use crate::ha::runner::{Exit, Node};
use crate::ha::state::NodeState;
use crate::postgres::archive_module::ModuleCheck;
use crate::postgres::conf::{
    local_socket_dir, local_tcp_host, split_host_port, Archiving, LocalAddress,
};
use crate::postgres::{PgSettings, Postgres};

/// A start-up failure.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another daemon with this name runs.
    #[error("Can't start; there is already a node named '{0}' running")]
    DuplicateName(String),
    /// The REST API could not listen.
    #[error("restapi.listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The loop stopped on a fatal condition.
    #[error("{0}")]
    Fatal(String),
}

/// Directory of the PostgreSQL binaries: configured, else Debian's for PostgreSQL 15, else
/// the directory of `pg_ctl` on PATH.
pub fn bin_dir(cfg: &Config) -> PathBuf {
    if let Some(d) = &cfg.postgresql.bin_dir {
        return d.clone();
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("pg_ctl").exists() {
        return debian;
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in path.split(':') {
            let p = PathBuf::from(dir);
            if p.join("pg_ctl").exists() {
                return p;
            }
        }
    }
    debian
}

/// The local PostgreSQL handle from the config.
pub fn postgres_from(cfg: &Config) -> Result<Postgres, StartError> {
    let (host, port) = split_host_port(&cfg.postgresql.listen).ok_or_else(|| {
        StartError::Config(format!(
            "postgresql.listen: invalid address '{}'",
            cfg.postgresql.listen
        ))
    })?;
    let socket_dirs = cfg
        .postgresql
        .parameters
        .get("unix_socket_directories")
        .and_then(|v| v.as_str());
    let socket_dir = socket_dirs
        .and_then(local_socket_dir)
        .unwrap_or_else(|| "/tmp".into());
    // As Patroni: TCP to the listen address unless use_unix_socket (and then TCP anyway when
    // unix_socket_directories names no usable directory).
    let local = match socket_dirs {
        Some(dirs) if cfg.postgresql.use_unix_socket => match local_socket_dir(dirs) {
            Some(d) => LocalAddress::Socket(d),
            None => LocalAddress::Tcp(local_tcp_host(&host)),
        },
        None if cfg.postgresql.use_unix_socket => LocalAddress::Socket(socket_dir.clone()),
        _ => LocalAddress::Tcp(local_tcp_host(&host)),
    };
    let a = &cfg.postgresql.authentication;
    Ok(Postgres::new(PgSettings {
        name: cfg.name.clone(),
        scope: cfg.scope.clone(),
        data_dir: cfg.postgresql.data_dir.clone(),
        bin_dir: bin_dir(cfg),
        listen_addresses: host,
        port,
        socket_dir,
        local,
        pgpass: cfg.pgpass_path(),
        superuser: (a.superuser.username.clone(), a.superuser.password.clone()),
        replication: (
            a.replication.username.clone(),
            a.replication.password.clone(),
        ),
        rewind: a
            .rewind
            .as_ref()
            .map(|r| (r.username.clone(), r.password.clone())),
        ctl_timeout: Duration::from_secs(cfg.postgresql.pg_ctl_timeout.unwrap_or(60)),
        archive: archiving(cfg).map_err(StartError::Config)?,
        restore_command: restore_command(cfg),
    }))
}

/// The archive socket of this node (with a `storage:` section).
pub fn archive_socket(cfg: &Config) -> Option<PathBuf> {
    let b = cfg.backup_settings()?;
    Some(
        b.archive
            .socket
            .clone()
            .unwrap_or_else(|| crate::backup::socket::default_path(&cfg.postgresql.data_dir)),
    )
}

/// How PostgreSQL hands WAL to this daemon when spilo archives (`backup.archive.method`): the
/// spilo extension's archive module, or `archive_command` = this binary's `wal-push` through
/// the daemon's socket; either waits a little longer than one upload may take. An error names
/// the setting when `module` is asked for and PostgreSQL cannot load it.
pub fn archiving(cfg: &Config) -> Result<Option<Archiving>, String> {
    let (Some(b), Some(socket)) = (cfg.backup_settings(), archive_socket(cfg)) else {
        return Ok(None);
    };
    let module = || Archiving::Module {
        socket: socket.display().to_string(),
        timeout: b.archive.timeout.saturating_add(5),
    };
    let command = || socket_client_command(cfg, "wal-push", "%p").map(Archiving::Command);
    let method = b.archive.method;
    if method == ArchiveMethod::Command {
        return Ok(command());
    }
    let check = crate::postgres::archive_module::check(&bin_dir(cfg), &cfg.postgresql.data_dir);
    Ok(match check {
        ModuleCheck::Ready => {
            tracing::info!("archiving through the spilo extension's archive module");
            Some(module())
        }
        ModuleCheck::Unavailable(why) if method == ArchiveMethod::Module => {
            return Err(format!("backup.archive.method: module, but {why}"))
        }
        ModuleCheck::Unavailable(why) => {
            tracing::info!("archiving through `spilo wal-push` (archive_command): {why}");
            command()
        }
        ModuleCheck::NotYet(why) => {
            tracing::warn!(
                "archiving through `spilo wal-push` (archive_command) until PostgreSQL \
                 restarts: {why}"
            );
            command()
        }
    })
}

/// `<this binary> SUBCOMMAND --socket <archive socket> --timeout <archive timeout + 5> ARGS`.
fn socket_client_command(cfg: &Config, sub: &str, args: &str) -> Option<String> {
    let b = cfg.backup_settings()?;
    let socket = archive_socket(cfg)?;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("spilo"));
    Some(format!(
        "{} {sub} --socket {} --timeout {} {args}",
        sh_quote(&exe.display().to_string()),
        sh_quote(&socket.display().to_string()),
        b.archive.timeout.saturating_add(5)
    ))
}

/// `restore_command` when spilo archives: this binary's `wal-fetch` through the same socket.
fn restore_command(cfg: &Config) -> Option<String> {
    socket_client_command(cfg, "wal-fetch", "%f %p")
}

/// Quotes a word for `sh -c` (how PostgreSQL runs `archive_command`).
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Starts the WAL archiver and its socket when the configuration has a `storage:` section.
async fn start_archiver(
    cfg: &Config,
    dcs: Arc<dyn Dcs>,
    node: tokio::sync::watch::Receiver<Arc<NodeState>>,
    stats: Arc<crate::backup::archiver::ArchiveStats>,
) -> Result<Option<Restores>, StartError> {
    let (Some(storage_cfg), Some(b), Some(socket)) =
        (&cfg.storage, cfg.backup_settings(), archive_socket(cfg))
    else {
        return Ok(None);
    };
    let storage = crate::backup::open_storage(storage_cfg)
        .await
        .map_err(|e| {
            StartError::Config(format!(
                "storage: cannot open the {} store: {}",
                storage_cfg.kind,
                crate::error_chain(&e)
            ))
        })?;
    let major = crate::postgres::ctl::server_major(&bin_dir(cfg))
        .map_err(|e| StartError::Fatal(crate::error_chain(&e)))?;
    let base = storage_cfg.base_prefix(&cfg.scope, major);
    let settings = crate::backup::archiver::ArchiverSettings {
        base: base.clone(),
        pg_wal: cfg.postgresql.data_dir.join("pg_wal"),
        level: b.compression_level,
        timeout: Duration::from_secs(b.archive.timeout),
        readahead: b.archive.readahead as usize,
        concurrency: b.upload_concurrency as usize,
        pg_wal_warning_bytes: b.archive.pg_wal_warning_mb.saturating_mul(1 << 20),
        standby_leader: b.archive.standby_leader,
        key: match &b.encryption {
            Some(e) => Some(
                e.load(cfg)
                    .await
                    .map_err(|e| StartError::Config(e.to_string()))?,
            ),
            None => None,
        },
    };
    let job = crate::backup::run::Job {
        storage: storage.clone(),
        base: base.clone(),
        cfg: cfg.clone(),
        pg_version: major,
        key: settings.key.clone(),
    };
    // Both schedules follow reloads: the tasks run from the start and wait while a schedule
    // is empty.
    let schedules = crate::backup::scheduler::Schedules::from_config(cfg)
        .map_err(|e| StartError::Config(e.to_string()))?;
    let (schedules, schedules_rx) = tokio::sync::watch::channel(schedules);
    tokio::spawn(crate::backup::scheduler::run_drills(
        schedules_rx.clone(),
        job.clone(),
        node.clone(),
        stats.clone(),
    ));
    tokio::spawn(crate::backup::scheduler::run(
        schedules_rx,
        dcs,
        job,
        node.clone(),
        stats.clone(),
    ));
    let fetcher = crate::backup::fetch::Fetcher::new(
        storage.clone(),
        crate::backup::fetch::FetchSettings {
            base: base.clone(),
            pg_wal: cfg.postgresql.data_dir.join("pg_wal"),
            timeout: Duration::from_secs(b.archive.timeout),
            prefetch: crate::backup::fetch::PREFETCH,
            concurrency: b.upload_concurrency as usize,
            key: settings.key.clone(),
        },
        stats.clone(),
    );
    let backups: Arc<dyn crate::ha::replica::ReplicaBackups> =
        Arc::new(crate::backup::restore::StoreBackups {
            storage: storage.clone(),
            base: base.clone(),
            key: settings.key.clone(),
            stats: Some(stats.clone()),
        });
    let cloner = cfg.bootstrap.clone_source().map(|c| {
        Arc::new(crate::backup::clone::Cloner {
            cfg: c.clone(),
            source: c.storage.clone().unwrap_or_else(|| storage_cfg.clone()),
            major,
            key: settings.key.clone(),
            fetcher: fetcher.clone(),
            stats: Some(stats.clone()),
        }) as Arc<dyn crate::ha::replica::ClusterClone>
    });
    let switch: Arc<dyn crate::ha::replica::ArchiveSwitch> =
        Arc::new(crate::backup::restore::ArchiveSwitcher {
            storage: storage.clone(),
            storage_cfg: storage_cfg.clone(),
            base: base.clone(),
            major,
            key: settings.key.clone(),
            fetcher: fetcher.clone(),
            stats: Some(stats.clone()),
        });
    let archiver = crate::backup::archiver::Archiver::new(storage, settings, node, stats);
    let listener = crate::backup::socket::bind(&socket).map_err(|e| {
        StartError::Fatal(format!(
            "cannot listen on the archive socket {}: {e}",
            socket.display()
        ))
    })?;
    tracing::info!(
        store = %storage_cfg.kind,
        prefix = %base,
        socket = %socket.display(),
        "WAL archiving to object storage is on"
    );
    tokio::spawn(crate::backup::socket::serve(
        listener,
        archiver.clone(),
        fetcher,
    ));
    tokio::spawn(async move {
        loop {
            archiver.tick().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    Ok(Some(Restores {
        backups,
        cloner,
        switch,
        schedules,
    }))
}

/// What the executor restores from (with a `storage:` section).
struct Restores {
    backups: Arc<dyn crate::ha::replica::ReplicaBackups>,
    cloner: Option<Arc<dyn crate::ha::replica::ClusterClone>>,
    switch: Arc<dyn crate::ha::replica::ArchiveSwitch>,
    /// Replaced on reload.
    schedules: tokio::sync::watch::Sender<crate::backup::scheduler::Schedules>,
}

/// Connect to the DCS, retrying with a logged, growing back-off until it answers.
async fn connect_dcs(cfg: &Config, ttl: Duration, retry: Duration) -> Arc<dyn Dcs> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match registry::connect(cfg, ttl, retry, registry::Role::Daemon).await {
            Ok(d) => match d.snapshot().await {
                Ok(_) => return d,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for the DCS; retrying in {backoff:?}")
                }
            },
            Err(e) => tracing::warn!(error = %e, "waiting for the DCS; retrying in {backoff:?}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// `true` when a daemon answers at the member's REST API.
async fn someone_answers(api_url: &str) -> bool {
    let url = match api_url.rsplit_once("/patroni") {
        Some((base, _)) => format!("{base}/liveness"),
        None => format!("{}/liveness", api_url.trim_end_matches('/')),
    };
    crate::api::client::get_json(&url, Duration::from_secs(3))
        .await
        .is_ok()
}

/// Run the daemon until SIGTERM/SIGINT or a fatal condition. `config_path` is re-read on
/// SIGHUP and `POST /reload`.
pub async fn run(cfg: Config, config_path: PathBuf) -> Result<(), StartError> {
    // `aws:kms:` values (passwords, credentials) are opened before anything uses them.
    let cfg = crate::secret::open_config(cfg)
        .await
        .map_err(|e| StartError::Config(e.to_string()))?;
    // A broken hook script stops the start before anything else happens.
    let hooks =
        crate::hooks::Hooks::start(&cfg).map_err(|e| StartError::Config(crate::error_chain(&e)))?;
    let (dynamic, warnings) = config::effective_dynamic(None, &cfg);
    for w in warnings {
        tracing::warn!("{w}");
    }
    let dcs = connect_dcs(
        &cfg,
        Duration::from_secs(dynamic.ttl),
        Duration::from_secs(dynamic.retry_timeout),
    )
    .await;

    // A second daemon with the same name must not start.
    if let Ok(snap) = dcs.snapshot().await {
        let c = dcs::decode_cluster(&snap);
        if let Some(m) = c.member(&cfg.name) {
            if !m.owned_by_us && someone_answers(&m.data.api_url).await {
                return Err(StartError::DuplicateName(cfg.name.clone()));
            }
        }
    }

    let listen = match cfg.restapi.listen.strip_prefix("*:") {
        Some(port) => format!("0.0.0.0:{port}"),
        None => cfg.restapi.listen.clone(),
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cfg.restapi.listen.clone(),
            source,
        })?;

    let pg = Arc::new(postgres_from(&cfg)?);
    let mut initial = NodeState::new(&cfg.name, &cfg.scope, &cfg.api_url());
    initial.tags = cfg.tags.clone();
    initial.dynamic = dynamic.clone();
    let archive_stats = cfg
        .storage
        .as_ref()
        .map(|_| Arc::new(crate::backup::archiver::ArchiveStats::default()));
    initial.archive = archive_stats.clone();
    initial.proxies = spawn_proxies(&cfg, dynamic.maximum_lag_on_failover)?;
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(initial));
    let backups = match archive_stats {
        Some(stats) => start_archiver(&cfg, dcs.clone(), tx.subscribe(), stats).await?,
        None => None,
    };

    // The lease guard runs on a thread of its own: nothing on this runtime can delay it.
    let guard_target: Arc<dyn crate::ha::fence::FenceTarget> = pg.clone();
    let _guard = crate::ha::fence::spawn_guard(tx.subscribe(), guard_target)
        .map_err(|e| StartError::Fatal(format!("cannot start the lease guard thread: {e}")))?;
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(16);
    let restapi = crate::api::LiveRestApi::new(cfg.restapi.clone());
    let node = Node::new(cfg.clone(), dcs.clone(), pg, tx, dynamic)
        .with_commands(cmd_rx, config_path)
        .with_live_restapi(restapi.clone())
        .with_hooks(hooks);
    let node = match open_load_balancers(&cfg).await? {
        Some(lbs) => node.with_load_balancers(lbs),
        None => node,
    };
    let node = match backups {
        Some(r) => {
            let node = node
                .with_backups(r.backups)
                .with_archive_switch(r.switch)
                .with_backup_schedules(r.schedules);
            match r.cloner {
                Some(c) => node.with_cloner(c),
                None => node,
            }
        }
        None => node,
    };

    let ctx = crate::api::ApiContext {
        state: rx,
        dcs: Some(dcs),
        commands: Some(cmd_tx),
        wake: node.waker(),
        restapi,
    };
    let (stop_api_tx, stop_api_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(crate::api::serve(listener, ctx, async move {
        let _ = stop_api_rx.await;
    }));

    // On an Auto Scaling termination notice the daemon leaves as on SIGTERM (hand over, stop
    // PostgreSQL), then completes the group's lifecycle action.
    // The watch runs as a task of its own (its metadata reads never wait on the HA loop).
    let lifecycle = crate::lifecycle::Watch::from_config(&cfg);
    let notice: Arc<std::sync::OnceLock<String>> = Arc::default();
    let watch = lifecycle
        .clone()
        .map(|w| tokio::spawn(async move { w.terminating().await }));
    let stop = {
        let notice = notice.clone();
        async move {
            match watch {
                Some(task) => tokio::select! {
                    _ = shutdown_signal() => {}
                    r = task => match r {
                        Ok(id) => {
                            let _ = notice.set(id);
                        }
                        Err(e) => {
                            tracing::error!("the lifecycle watch ended: {e}; SIGTERM still hands over");
                            shutdown_signal().await;
                        }
                    },
                },
                None => shutdown_signal().await,
            }
        }
    };
    let exit = node.run(stop).await;
    if let (Some(w), Some(id), Exit::Shutdown) = (&lifecycle, notice.get(), &exit) {
        match w.complete(id).await {
            Ok(()) => tracing::info!(
                "lifecycle action completed: the Auto Scaling Group {} may terminate {id} (hook {})",
                w.group,
                w.hook
            ),
            Err(e) => tracing::error!(
                "could not complete the lifecycle action of {id} (hook {} of {}): {}; the group \
                 goes on when the hook times out",
                w.hook,
                w.group,
                crate::error_chain(&e)
            ),
        }
    }
    let _ = stop_api_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
    // The guard's thread ends by itself once the state channel closes with the loop.
    match exit {
        Exit::Shutdown => Ok(()),
        Exit::Fatal(m) => Err(StartError::Fatal(m)),
    }
}

/// Opens the `load_balancers:` backends; a backend that cannot be opened (plugin missing,
/// settings refused, credentials unusable) stops the start with the entry named.
async fn open_load_balancers(cfg: &Config) -> Result<Option<crate::lb::LoadBalancers>, StartError> {
    if cfg.load_balancers.is_empty() {
        return Ok(None);
    }
    let labels = crate::config::lb::labels(&cfg.load_balancers);
    let mut backends = Vec::new();
    for (i, (l, label)) in cfg.load_balancers.iter().zip(labels).enumerate() {
        if l.kind == "proxy" {
            continue; // follows the DCS itself: started by start_proxies
        }
        let lb = crate::lb::open(l).await.map_err(|e| {
            StartError::Config(format!(
                "load_balancers[{i}] ({label}): {}",
                crate::error_chain(&e)
            ))
        })?;
        tracing::info!(lb = %label, "load balancer {} opened", l.kind);
        backends.push(crate::lb::BackendSpec {
            label,
            lb,
            timeout: l.call_timeout(),
            max_lag: l.max_lag,
        });
    }
    if backends.is_empty() {
        return Ok(None);
    }
    Ok(Some(crate::lb::LoadBalancers::start(backends)))
}

/// Starts the built-in proxies (`type: proxy` entries) on the current runtime, each with a
/// DCS client of its own; a port that cannot be bound stops the start with the entry named.
pub async fn start_proxies(
    cfg: &Config,
    default_max_lag: u64,
) -> Result<Vec<crate::proxy::Proxy>, StartError> {
    let labels = crate::config::lb::labels(&cfg.load_balancers);
    let mut out = Vec::new();
    for (i, (l, label)) in cfg.load_balancers.iter().zip(labels).enumerate() {
        if l.kind != "proxy" {
            continue;
        }
        let dcs: crate::proxy::DcsSource = Box::pin(crate::proxy::connect_watcher(cfg.clone()));
        let p = crate::proxy::Proxy::start(dcs, l, &label, default_max_lag)
            .await
            .map_err(|e| StartError::Config(format!("load_balancers[{i}] ({label}): {e}")))?;
        out.push(p);
    }
    Ok(out)
}

/// The daemon's proxies run on a thread and runtime of their own, so that forwarded traffic
/// never shares the HA loop's thread; their counters come back once the ports are bound.
fn spawn_proxies(
    cfg: &Config,
    default_max_lag: u64,
) -> Result<Vec<Arc<crate::proxy::stats::ProxyStats>>, StartError> {
    if !cfg.load_balancers.iter().any(|l| l.kind == "proxy") {
        return Ok(Vec::new());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("spilo-proxy".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(StartError::Fatal(format!(
                        "cannot start the proxy's runtime: {e}"
                    ))));
                    return;
                }
            };
            rt.block_on(async move {
                match start_proxies(&cfg, default_max_lag).await {
                    Ok(proxies) => {
                        let stats = proxies.iter().map(|p| p.stats.clone()).collect();
                        let _ = tx.send(Ok(stats));
                        // Serve until the process ends.
                        std::future::pending::<()>().await;
                        drop(proxies);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| StartError::Fatal(format!("cannot start the proxy thread: {e}")))?;
    rx.recv()
        .map_err(|_| StartError::Fatal("the proxy thread ended before it started".into()))?
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
