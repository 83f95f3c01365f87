//! `spilo CONFIG.yml`: the daemon. `spilo --validate CONFIG.yml`: check a config (exit 0 or 2).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "spilo",
    version,
    about = "High-availability PostgreSQL daemon (Patroni-compatible)"
)]
struct Args {
    /// Check the configuration file and exit: 0 when valid, 2 otherwise.
    #[arg(long)]
    validate: bool,
    /// The node configuration (Patroni's YAML schema).
    config: PathBuf,
}

fn main() -> ExitCode {
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
        println!("{}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPILO_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,zookeeper_client=warn")
            }),
        )
        .with_target(false)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    for w in &loaded.warnings {
        tracing::warn!("{w}");
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
