//! `spiloctl`: the command-line client. Argument parsing and dispatch only; the commands live
//! in `spilo_core::ctl`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use spilo_core::ctl::common::{
    default_config_path, load_config, read_raw, rest_auth, Console, CtlResult, Ctx, RoleFilter,
};
use spilo_core::ctl::output::Format;
use spilo_core::ctl::{
    backup, edit_config, failover, flush, history, list, pause, reinit, reload, restart,
    show_config, switchover, topology, version,
};

#[derive(Parser, Debug)]
#[command(
    name = "spiloctl",
    version,
    about = "Control a spilo (or Patroni) cluster",
    after_help = "Confirmations are asked only on a terminal; elsewhere give --force."
)]
struct Args {
    /// A node's configuration file, or a client-only one (scope, namespace, etcd3, ctl) as
    /// patronictl takes. Default: ~/.config/patroni/patronictl.yaml.
    #[arg(short = 'c', long = "config-file", env = "PATRONICTL_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `-W` / `-w N`.
#[derive(clap::Args, Debug)]
struct Watch {
    /// Refresh every 2 seconds until interrupted.
    #[arg(short = 'W')]
    watch: bool,
    /// Refresh every SECS seconds until interrupted.
    #[arg(short = 'w', long = "watch", value_name = "SECS")]
    every: Option<f64>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List the members of the cluster.
    List {
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
        #[command(flatten)]
        watch: Watch,
    },
    /// List the members as a replication tree (by the `replicatefrom` tag).
    Topology {
        #[command(flatten)]
        watch: Watch,
    },
    /// Show the timeline history.
    History {
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Show the cluster-wide (dynamic) configuration as YAML.
    ShowConfig,
    /// Change the cluster-wide configuration (opens $EDITOR on a terminal without changes).
    EditConfig {
        /// Set KEY.PATH to VALUE (YAML; `null` deletes). Repeatable.
        #[arg(short = 's', long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        /// Set the PostgreSQL parameter GUC (postgresql.parameters.GUC). Repeatable.
        #[arg(short = 'p', long = "pg", value_name = "GUC=VALUE")]
        pg: Vec<String>,
        /// Merge a YAML file (`-` for stdin) into the configuration.
        #[arg(long = "apply", value_name = "FILE")]
        apply: Option<String>,
        /// Replace the configuration with a YAML file (`-` for stdin).
        #[arg(long = "replace", value_name = "FILE")]
        replace: Option<String>,
        /// Apply without asking.
        #[arg(long)]
        force: bool,
    },
    /// Put the cluster in maintenance mode (no automatic failover).
    Pause {
        /// Wait until every member has noticed.
        #[arg(long)]
        wait: bool,
    },
    /// Leave maintenance mode.
    Resume {
        /// Wait until every member has noticed.
        #[arg(long)]
        wait: bool,
    },
    /// Hand the leader role over to another member.
    Switchover {
        /// The current leader (asked when not given).
        #[arg(long = "leader", visible_alias = "primary", value_name = "NAME")]
        leader: Option<String>,
        /// The member to promote (any healthy one when not given).
        #[arg(long, value_name = "NAME")]
        candidate: Option<String>,
        /// When: ISO-8601 time (local time without an offset), or `now`.
        #[arg(long, value_name = "TIME")]
        scheduled: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Promote a member now, whether or not the leader is healthy.
    Failover {
        /// The member to promote.
        #[arg(long, value_name = "NAME")]
        candidate: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Restart PostgreSQL on members (all by default).
    Restart {
        /// Members to restart.
        #[arg(value_name = "MEMBER")]
        members: Vec<String>,
        /// Only members with this role.
        #[arg(long, value_enum, default_value = "any")]
        role: RoleFilter,
        /// When: ISO-8601 time (local time without an offset), or `now`.
        #[arg(long, value_name = "TIME")]
        scheduled: Option<String>,
        /// Only if the running PostgreSQL version is lower than this (e.g. 16.4).
        #[arg(long = "pg-version", value_name = "VERSION")]
        pg_version: Option<String>,
        /// Only members with a pending restart.
        #[arg(long)]
        pending: bool,
        /// Seconds PostgreSQL may take to start again.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Do not ask; replace an existing scheduled restart.
        #[arg(long)]
        force: bool,
    },
    /// Rebuild replicas from scratch (a new base backup).
    Reinit {
        /// Members to reinitialize.
        #[arg(value_name = "MEMBER", required = true)]
        members: Vec<String>,
        /// Take the base backup from the leader.
        #[arg(long = "from-leader")]
        from_leader: bool,
        /// Wait until PostgreSQL runs again on each.
        #[arg(long)]
        wait: bool,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Make members re-read their configuration file (all by default).
    Reload {
        /// Members to reload.
        #[arg(value_name = "MEMBER")]
        members: Vec<String>,
        /// Only members with this role.
        #[arg(long, value_enum, default_value = "any")]
        role: RoleFilter,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Cancel scheduled restarts or a scheduled switchover.
    Flush {
        /// Members (optional), then what to flush: `restart` or `switchover`.
        #[arg(value_name = "[MEMBER]... restart|switchover", required = true)]
        args: Vec<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Show spiloctl's version and the members' (all by default).
    Version {
        /// Members to ask.
        #[arg(value_name = "MEMBER")]
        members: Vec<String>,
    },
    /// Inspect third-party plugins.
    Plugin {
        #[command(subcommand)]
        action: PluginCmd,
    },
    /// Base backups in the configured storage.
    Backup {
        #[command(subcommand)]
        action: BackupCmd,
    },
    /// Archived WAL in the configured storage.
    Wal {
        #[command(subcommand)]
        action: WalCmd,
    },
    /// The plan of the configuration's point-in-time clone (bootstrap.method: clone): which
    /// backup of the source, which archived WAL, how much to download. The daemon runs it when
    /// it bootstraps.
    Clone {
        /// Output format (json: every field).
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
        /// Then follow the daemon running it (this configuration's node) with a progress bar
        /// until the clone is promoted or fails.
        #[arg(long)]
        follow: bool,
    },
    /// AWS helpers that need no cluster.
    Aws {
        #[command(subcommand)]
        action: AwsCmd,
    },
}

#[derive(Subcommand, Debug)]
enum AwsCmd {
    /// KMS secrets, written aws:kms:<base64> (backup.encryption keys).
    Kms {
        #[command(subcommand)]
        action: KmsCmd,
    },
    /// Write the cluster's CloudFormation template to standard output (Auto Scaling Group,
    /// ELBs, Route 53 records, security groups, S3 bucket, KMS key, IAM role).
    Template {
        /// Output format.
        #[arg(long = "format", value_enum, default_value = "yaml")]
        format: spilo_core::ctl::aws_template::TemplateFormat,
        #[command(flatten)]
        args: Box<spilo_core::ctl::aws_template::TemplateArgs>,
    },
    /// Complete an Auto Scaling lifecycle action (what the daemon runs after handing over on
    /// a termination notice, so the group goes on without waiting for the hook's timeout).
    CompleteLifecycleAction {
        /// The Auto Scaling Group.
        #[arg(long)]
        group: String,
        /// The lifecycle hook.
        #[arg(long)]
        hook: String,
        /// The instance.
        #[arg(long)]
        instance_id: String,
        /// CONTINUE or ABANDON.
        #[arg(long, default_value = "CONTINUE")]
        result: String,
        #[command(flatten)]
        at: AwsAt,
    },
    /// Check a CloudFormation template (JSON or YAML) for what cfn-lint does not: classic ELB
    /// health checks and idle timeouts, the group's health-check type, IMDSv2.
    CheckTemplate {
        /// The template file.
        file: PathBuf,
    },
}

/// Where the AWS service is.
#[derive(clap::Args, Debug)]
struct AwsAt {
    /// The AWS region (default: AWS_REGION, the profile's, the instance's).
    #[arg(long)]
    region: Option<String>,
    /// The service's endpoint URL (default: AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL,
    /// else AWS's).
    #[arg(long)]
    endpoint: Option<String>,
    /// The longest one call may take, retries included, in seconds (1-300).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=300))]
    timeout: u64,
}

#[derive(Subcommand, Debug)]
enum KmsCmd {
    /// Seal standard input (1-4096 bytes; one final newline is dropped) under a KMS key and
    /// print it as aws:kms:<base64>.
    Encrypt {
        /// The KMS key: id, ARN or alias/NAME.
        #[arg(long)]
        key_id: String,
        #[command(flatten)]
        at: AwsAt,
    },
    /// A new random 256-bit key for backup.encryption, sealed under a KMS key, printed as
    /// aws:kms:<base64>; its plaintext never leaves KMS.
    GenerateKey {
        /// The KMS key: id, ARN or alias/NAME.
        #[arg(long)]
        key_id: String,
        #[command(flatten)]
        at: AwsAt,
    },
    /// Open the aws:kms:<base64> secret on standard input and write its plaintext to standard
    /// output (what the daemon runs at start).
    Decrypt {
        #[command(flatten)]
        at: AwsAt,
    },
}

impl AwsAt {
    fn options(&self) -> spilo_aws::kms::Options {
        spilo_aws::kms::Options {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            timeout: Duration::from_secs(self.timeout),
        }
    }
}

/// `spiloctl aws …` (needs no configuration and no DCS).
fn aws(cmd: AwsCmd) -> ExitCode {
    use spilo_core::ctl::aws::{run, KmsAction};
    let action = match cmd {
        AwsCmd::Kms { action } => action,
        AwsCmd::Template { format, args } => {
            return spilo_core::ctl::aws_template::run_template(&args, format)
        }
        AwsCmd::CheckTemplate { file } => return spilo_core::ctl::aws_template::run_check(&file),
        AwsCmd::CompleteLifecycleAction {
            group,
            hook,
            instance_id,
            result,
            at,
        } => {
            let o = at.options();
            return spilo_core::ctl::aws::run_lifecycle(spilo_aws::autoscaling::Completion {
                group,
                hook,
                instance_id,
                result,
                region: o.region,
                endpoint: o.endpoint,
                timeout: o.timeout,
            });
        }
    };
    match action {
        KmsCmd::Encrypt { key_id, at } => run(KmsAction::Encrypt { key_id }, at.options()),
        KmsCmd::GenerateKey { key_id, at } => run(KmsAction::GenerateKey { key_id }, at.options()),
        KmsCmd::Decrypt { at } => run(KmsAction::Decrypt, at.options()),
    }
}

#[derive(Subcommand, Debug)]
enum BackupCmd {
    /// Take a base backup now (from the leader, or a streaming replica with --from-replica),
    /// then apply retention.
    Create {
        /// Copy a streaming replica instead of the leader.
        #[arg(long, conflicts_with = "from_leader")]
        from_replica: bool,
        /// Copy the leader even when backup.from_replica is set.
        #[arg(long)]
        from_leader: bool,
    },
    /// The complete backups and the point-in-time window.
    List {
        /// Output format (json: every manifest field and the window).
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
    /// One backup's manifest.
    Show {
        /// The backup's name (base_…).
        name: String,
    },
    /// Delete one backup.
    Delete {
        /// The backup's name (base_…).
        name: String,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Apply the retention rules of backup.retain (the newest backup and the WAL kept backups
    /// need always stay).
    Prune {
        /// Print what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The restore drill: restore a backup (default: the newest) into a scratch directory,
    /// replay it to its consistent point, start PostgreSQL there, read every relation
    /// (pg_amcheck), report, remove the directory. Run it as the PostgreSQL OS user.
    Verify {
        /// The backup's name (base_…); default: the newest.
        name: Option<String>,
        /// Where the scratch directory is made (default: the temporary directory).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Output format (json: the whole report).
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
enum WalCmd {
    /// The archived WAL files.
    List {
        /// Output format.
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCmd {
    /// Print what a plugin library declares and whether this spilo accepts it (exit 0) or
    /// refuses it (exit 1, saying why).
    Check {
        /// The shared library.
        path: PathBuf,
    },
}

/// `spiloctl plugin check PATH` (needs no configuration and no DCS).
fn plugin_check(path: &std::path::Path) -> ExitCode {
    match spilo_core::plugin::loader::inspect(path) {
        Ok(p) => {
            println!("plugin:   {} {}", p.name, p.version);
            println!("kind:     {}", p.kind);
            println!(
                "abi:      {}.{} (this spilo: {}.{})",
                p.abi.0,
                p.abi.1,
                spilo_sdk::abi::ABI_MAJOR,
                spilo_sdk::abi::ABI_MINOR
            );
            for (label, text) in p.describe_kind() {
                println!("{:<10}{text}", format!("{label}:"));
            }
            println!("file:     {}", p.path.display());
            println!("accepted: yes");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("accepted: no");
            eprintln!("spiloctl: refused: {e}");
            ExitCode::from(1)
        }
    }
}

fn interval(w: &Watch) -> CtlResult<Option<Duration>> {
    list::watch_interval(w.watch, w.every)
}

async fn dispatch(ctx: &Ctx, cmd: Cmd) -> CtlResult {
    match cmd {
        Cmd::List { format, watch } => list::run(ctx, format, interval(&watch)?).await,
        Cmd::Topology { watch } => topology::run(ctx, interval(&watch)?).await,
        Cmd::History { format } => history::run(ctx, format).await,
        Cmd::ShowConfig => show_config::run(ctx).await,
        Cmd::EditConfig {
            set,
            pg,
            apply,
            replace,
            force,
        } => {
            let args = edit_config::EditArgs {
                set,
                pg,
                apply,
                replace,
                force,
            };
            edit_config::run(ctx, &args).await
        }
        Cmd::Pause { wait } => pause::run(ctx, true, wait).await,
        Cmd::Resume { wait } => pause::run(ctx, false, wait).await,
        Cmd::Switchover {
            leader,
            candidate,
            scheduled,
            force,
        } => {
            let args = switchover::SwitchoverArgs {
                leader,
                candidate,
                scheduled,
                force,
            };
            switchover::run(ctx, &args).await
        }
        Cmd::Failover { candidate, force } => failover::run(ctx, candidate.as_deref(), force).await,
        Cmd::Restart {
            members,
            role,
            scheduled,
            pg_version,
            pending,
            timeout,
            force,
        } => {
            let args = restart::RestartArgs {
                members,
                role,
                scheduled,
                pg_version,
                pending,
                timeout,
                force,
            };
            restart::run(ctx, &args).await
        }
        Cmd::Reinit {
            members,
            from_leader,
            wait,
            force,
        } => reinit::run(ctx, &members, from_leader, wait, force).await,
        Cmd::Reload {
            members,
            role,
            force,
        } => reload::run(ctx, &members, role, force).await,
        Cmd::Flush { args, force } => flush::run(ctx, &args, force).await,
        Cmd::Version { members } => version::run(ctx, &members).await,
        Cmd::Plugin { .. } | Cmd::Aws { .. } => Ok(()),
        Cmd::Clone { format, follow } => {
            spilo_core::ctl::clone::plan(ctx, format).await?;
            if follow {
                spilo_core::ctl::clone::follow(ctx).await
            } else {
                Ok(())
            }
        }
        Cmd::Backup { action } => match action {
            BackupCmd::Create {
                from_replica,
                from_leader,
            } => {
                let choice = match (from_replica, from_leader) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                };
                backup::create(ctx, choice).await
            }
            BackupCmd::List { format } => backup::list(ctx, format).await,
            BackupCmd::Show { name } => backup::show(ctx, &name).await,
            BackupCmd::Delete { name, force } => backup::delete(ctx, &name, force).await,
            BackupCmd::Prune { dry_run } => backup::prune(ctx, dry_run).await,
            BackupCmd::Verify { name, dir, format } => {
                backup::verify(ctx, name.as_deref(), dir, format).await
            }
        },
        Cmd::Wal {
            action: WalCmd::List { format },
        } => backup::wal_list(ctx, format).await,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Cmd::Plugin {
        action: PluginCmd::Check { path },
    } = &args.cmd
    {
        return plugin_check(path);
    }
    let args = match args.cmd {
        Cmd::Aws { action } => return aws(action),
        cmd => Args { cmd, ..args },
    };
    let path = args.config.clone().unwrap_or_else(default_config_path);
    let cfg = match load_config(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spiloctl: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // Plugins load before the runtime starts.
    if let Err(e) = spilo_core::plugin::load_configured(&cfg) {
        eprintln!("spiloctl: {e}");
        return ExitCode::from(2);
    }
    let raw = read_raw(&path);
    if matches!(args.cmd, Cmd::Version { .. }) {
        println!("{}", version::own_version());
    }
    let rt = match spilo_core::ctl::common::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        // aws:kms: values spiloctl uses (the DCS's and the REST API's credentials) are opened
        // as the daemon opens them; the others (PostgreSQL passwords…) need no KMS here.
        let uses = |k: &str| {
            ["etcd3.", "zookeeper.", "dcs.", "restapi.authentication."]
                .iter()
                .any(|p| k.starts_with(p))
        };
        let cfg = match spilo_core::secret::open_config_where(cfg, uses).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("spiloctl: {e}");
                return ExitCode::from(2);
            }
        };
        // ctl.authentication (a sealed one is opened here), else restapi.authentication.
        let auth = match rest_auth(&raw, &cfg) {
            Some(mut a) if spilo_core::secret::is_secret(&a.password) => {
                match spilo_core::secret::open_value(
                    &a.password,
                    "ctl.authentication.password",
                    &cfg,
                )
                .await
                {
                    Ok(p) => {
                        a.password = p;
                        Some(a)
                    }
                    Err(e) => {
                        eprintln!("spiloctl: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            other => other,
        };
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
        let ctx = Ctx {
            cfg,
            dcs,
            auth,
            console: Console::detect(),
        };
        match dispatch(&ctx, args.cmd).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("spiloctl: {e}");
                ExitCode::from(1)
            }
        }
    })
}
