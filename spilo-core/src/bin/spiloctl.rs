//! `spiloctl`: the command-line client.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "spiloctl",
    version,
    about = "Control a spilo (or Patroni) cluster"
)]
struct Args {
    /// The node configuration file (for the DCS section and scope).
    #[arg(short = 'c', long = "config-file", env = "PATRONICTL_CONFIG_FILE")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Pretty,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List the members of the cluster.
    List {
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let loaded = match spilo_core::config::load_file(&args.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("spiloctl: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = loaded.config;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spiloctl: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let dcs = match spilo_core::dcs::registry::connect(
            &cfg,
            Duration::from_secs(30),
            Duration::from_secs(5),
            spilo_core::dcs::registry::Role::Cli,
        )
        .await
        {
            Ok(d) => d,
            Err(e) => {
                eprintln!("spiloctl: cannot reach the DCS: {e}");
                return ExitCode::from(1);
            }
        };
        match args.cmd {
            Cmd::List { format } => {
                let snap = match dcs.snapshot().await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("spiloctl: cannot read the cluster: {e}");
                        return ExitCode::from(1);
                    }
                };
                let c = spilo_core::dcs::decode_cluster(&snap);
                match format {
                    Format::Json => {
                        let rows = spilo_core::ctl::list::rows(&cfg.scope, &c);
                        println!("{}", serde_json::Value::Array(rows));
                    }
                    Format::Pretty => print!("{}", spilo_core::ctl::list::table(&cfg.scope, &c)),
                }
                ExitCode::SUCCESS
            }
        }
    })
}
