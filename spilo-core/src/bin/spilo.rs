//! `spilo CONFIG.yml`: the daemon. `spilo --validate CONFIG.yml`: check a config, that its
//! DCS answers and that its load balancers do (exit 0; 2 for an invalid config; 3 when the DCS
//! cannot be reached; 4 when a load balancer refuses or cannot be reached).
//! `spilo proxy CONFIG.yml`: the built-in proxy on its own.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "spilo",
    version,
    about = "High-availability PostgreSQL daemon (Patroni-compatible)"
)]
struct Args {
    /// Check the configuration file, that the DCS it names answers and that its load balancers
    /// do, then exit: 0 when all hold, 2 for an invalid configuration, 3 when the DCS cannot be
    /// reached, 4 when a load balancer refuses or cannot be reached.
    #[arg(long)]
    validate: bool,
    /// With --validate: check only the file, do not contact the DCS.
    #[arg(long, requires = "validate")]
    offline: bool,
    /// With --validate: how long to wait for the DCS, in seconds.
    #[arg(
        long,
        default_value_t = 10,
        requires = "validate",
        value_name = "SECONDS"
    )]
    dcs_timeout: u64,
    /// The node configuration (Patroni's YAML schema).
    config: PathBuf,
}

/// `spilo wal-push`: PostgreSQL's `archive_command` when spilo archives (it sets it itself).
#[derive(Parser, Debug)]
#[command(
    name = "spilo wal-push",
    about = "Hand one WAL file to the spilo daemon's archiver; exits 0 once it is stored"
)]
struct WalPush {
    #[command(flatten)]
    daemon: DaemonSocket,
    /// The file, as PostgreSQL passes it (%p: pg_wal/NAME).
    path: String,
}

/// How `wal-push` and `wal-fetch` reach the daemon.
#[derive(clap::Args, Debug)]
struct DaemonSocket {
    /// The daemon's archive socket.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// How long to wait for the daemon's answer, in seconds.
    #[arg(long, default_value_t = 65, value_name = "SECONDS")]
    timeout: u64,
}

impl DaemonSocket {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.clamp(1, 86_400))
    }
}

fn wal_push() -> ExitCode {
    let args = WalPush::parse_from(std::env::args().skip(1));
    match spilo_core::backup::socket::push(&args.daemon.socket, &args.path, args.daemon.timeout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "spilo wal-push {}: {}",
                args.path,
                spilo_core::error_chain(&e)
            );
            ExitCode::from(1)
        }
    }
}

/// `spilo wal-fetch`: PostgreSQL's `restore_command` when spilo archives (it sets it itself).
#[derive(Parser, Debug)]
#[command(
    name = "spilo wal-fetch",
    about = "Ask the spilo daemon to restore one WAL file from the archive; exits 0 once it is in place, 1 when the archive does not hold it or on an error"
)]
struct WalFetch {
    #[command(flatten)]
    daemon: DaemonSocket,
    /// The file's name, as PostgreSQL passes it (%f).
    name: String,
    /// Where to put it, as PostgreSQL passes it (%p, relative to the data directory).
    path: String,
}

fn wal_fetch() -> ExitCode {
    // PostgreSQL takes an exit status above 125 as fatal: every failure is 1.
    let args = match WalFetch::try_parse_from(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(1);
        }
    };
    match spilo_core::backup::socket::fetch(
        &args.daemon.socket,
        &args.name,
        &args.path,
        args.daemon.timeout(),
    ) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!(
                "spilo wal-fetch {}: {}",
                args.name,
                spilo_core::error_chain(&e)
            );
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("wal-push") => return wal_push(),
        Some("wal-fetch") => return wal_fetch(),
        Some("proxy") => return proxy_main(),
        _ => {}
    }
    let args = Args::parse();
    let loaded = match spilo_core::config::load_file(&args.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("spilo: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.validate {
        for w in &loaded.warnings {
            eprintln!("spilo: warning: {w}");
        }
        if let Err(e) = spilo_core::hooks::Hooks::start(&loaded.config) {
            eprintln!("spilo: invalid configuration: {e}");
            return ExitCode::from(2);
        }
        if let Err(e) = spilo_core::plugin::load_configured(&loaded.config) {
            eprintln!("spilo: invalid configuration: {e}");
            return ExitCode::from(2);
        }
        if let Err(e) = spilo_core::ha::daemon::archiving(&loaded.config) {
            eprintln!("spilo: invalid configuration: {e}");
            return ExitCode::from(2);
        }
        println!("{}: configuration is valid", args.config.display());
        if args.offline {
            return ExitCode::SUCCESS;
        }
        return check_dcs(&loaded.config, Duration::from_secs(args.dcs_timeout.max(1)));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!(
            "spilo: refusing to run as root: PostgreSQL cannot run as root. Run spilo as the \
             PostgreSQL OS user (for example: setpriv --reuid=postgres --regid=postgres --init-groups spilo {}).",
            args.config.display()
        );
        return ExitCode::from(1);
    }
    init_logging();
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    // The archiver compresses and uploads on blocking-pool threads; glibc would give each of
    // them an arena of its own (up to 8 per core) and keep freed segment buffers in each, so
    // the resident set would grow with the number of threads that ever ran an upload. Two
    // arenas keep it bounded by the work in flight. A fixed mmap threshold gives buffers of
    // 256 KiB and more (read buffers, compressor windows, upload parts) back to the system
    // when they are freed, instead of glibc raising the threshold and keeping them.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    // Plugins load before the async runtime exists, and stay loaded.
    if let Err(e) = spilo_core::plugin::load_configured(&loaded.config) {
        tracing::error!("CRITICAL: {e}");
        eprintln!("spilo: {e}");
        return ExitCode::from(1);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spilo: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(spilo_core::ha::daemon::run(
        loaded.config,
        args.config.clone(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("CRITICAL: {e}");
            eprintln!("spilo: {e}");
            ExitCode::from(1)
        }
    }
}

/// Logging to standard output; `SPILO_LOG` sets the filter.
fn init_logging() {
    // SPILO_LOG takes `level` and `target=level` directives separated by commas (no span or
    // field filters: those need a regex engine, which would add its tables to every daemon's
    // resident text for a feature nobody uses on a daemon).
    const DEFAULT_LOG: &str = "info,zookeeper_client=warn";
    let (targets, log_error) = match std::env::var("SPILO_LOG") {
        Ok(v) => match v.parse::<tracing_subscriber::filter::Targets>() {
            Ok(t) => (t, None),
            Err(e) => (
                DEFAULT_LOG.parse().expect("the default log filter parses"),
                Some(format!(
                    "SPILO_LOG={v:?} is not a list of `level` or `target=level` directives ({e}); logging at the default ({DEFAULT_LOG})"
                )),
            ),
        },
        Err(_) => (DEFAULT_LOG.parse().expect("the default log filter parses"), None),
    };
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(
                        std::io::IsTerminal::is_terminal(&std::io::stdout())
                            && std::env::var_os("NO_COLOR").is_none(),
                    ),
            )
            .with(targets)
            .init();
    }
    if let Some(e) = log_error {
        tracing::warn!("{e}");
    }
}

/// `spilo proxy CONFIG`: the built-in proxy on its own.
#[derive(Parser, Debug)]
#[command(
    name = "spilo proxy",
    about = "Run the built-in proxy (the type: proxy entries of CONFIG's load_balancers) on its own: read-write to the primary the DCS names, read-only to the healthy replicas"
)]
struct ProxyArgs {
    /// A node configuration with the cluster's DCS section and one or more `type: proxy`
    /// entries under `load_balancers:` (a copy of a node's file will do).
    config: PathBuf,
}

fn proxy_main() -> ExitCode {
    let args = ProxyArgs::parse_from(std::env::args().skip(1));
    let loaded = match spilo_core::config::load_file(&args.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("spilo proxy: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = loaded.config;
    if !cfg.load_balancers.iter().any(|l| l.kind == "proxy") {
        eprintln!(
            "spilo proxy: {}: load_balancers has no type: proxy entry (with listen_rw) to run",
            args.config.display()
        );
        return ExitCode::from(2);
    }
    init_logging();
    if let Err(e) = spilo_core::plugin::load_configured(&cfg) {
        eprintln!("spilo proxy: {e}");
        return ExitCode::from(1);
    }
    // Its own process: every core forwards.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spilo proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        // The DCS credentials may be aws:kms: values, as for the daemon.
        let cfg = match spilo_core::secret::open_config(cfg).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("spilo proxy: {e}");
                return ExitCode::from(2);
            }
        };
        let (dynamic, _) = spilo_core::config::effective_dynamic(None, &cfg);
        let proxies = match spilo_core::ha::daemon::start_proxies(
            &cfg,
            dynamic.maximum_lag_on_failover,
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                eprintln!("spilo proxy: {e}");
                return ExitCode::from(1);
            }
        };
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("spilo proxy: stopping");
        drop(proxies);
        ExitCode::SUCCESS
    })
}

/// The DCS half of `--validate`: read the cluster's keys once.
fn check_dcs(cfg: &spilo_core::config::Config, within: Duration) -> ExitCode {
    use spilo_core::dcs::registry;
    let target = registry::describe(cfg);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spilo: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The DCS and load-balancer credentials may be aws:kms: values, as for the daemon.
    let opened = match rt.block_on(spilo_core::secret::open_config(cfg.clone())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spilo: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = &opened;
    match rt.block_on(registry::probe(cfg, within)) {
        Ok(keys) => {
            println!(
                "{target} answers ({keys} keys under /{}/{}/)",
                cfg.namespace.trim_matches('/'),
                cfg.scope
            );
            check_load_balancers(cfg, &rt)
        }
        Err(e) => {
            eprintln!(
                "spilo: the configuration is valid but the DCS cannot be reached: {target}: {e} \
                 (a running daemon keeps retrying; --offline skips this check)"
            );
            ExitCode::from(3)
        }
    }
}

/// The load-balancer half of `--validate`: each `load_balancers:` backend (not the built-in
/// proxy, whose ports a running daemon holds) opens and answers `describe`; exit 4 otherwise.
fn check_load_balancers(
    cfg: &spilo_core::config::Config,
    rt: &tokio::runtime::Runtime,
) -> ExitCode {
    let labels = spilo_core::config::lb::labels(&cfg.load_balancers);
    for (i, (l, label)) in cfg.load_balancers.iter().zip(labels).enumerate() {
        if l.kind == "proxy" {
            continue;
        }
        let r = rt.block_on(async {
            let lb = spilo_core::lb::open(l).await?;
            tokio::time::timeout(l.call_timeout(), lb.describe())
                .await
                .unwrap_or(Err(spilo_sdk::LbError::Timeout {
                    op: "describe",
                    after: l.call_timeout(),
                }))
        });
        match r {
            Ok(s) => println!(
                "load balancer {label} ({}) answers: read-write to {}, read-only to [{}]",
                l.kind,
                s.primary.as_deref().unwrap_or("nobody"),
                s.replicas.join(", ")
            ),
            Err(e) => {
                eprintln!(
                    "spilo: load_balancers[{i}] ({label}): {}",
                    spilo_core::error_chain(&e)
                );
                return ExitCode::from(4);
            }
        }
    }
    ExitCode::SUCCESS
}
