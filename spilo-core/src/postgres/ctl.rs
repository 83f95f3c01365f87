//! Processes: initdb, pg_ctl start/stop/promote, pg_basebackup, pg_rewind, pg_controldata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::Mutex;

use super::conf::{self, ConfInput, Upstream};

/// An error from the local PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A command could not run or failed.
    #[error("{cmd} failed: {message}")]
    Command {
        /// The program.
        cmd: String,
        /// Exit status and the tail of its output.
        message: String,
    },
    /// A command did not finish in time.
    #[error("{cmd} did not finish within {after:?}")]
    Timeout {
        /// The program.
        cmd: String,
        /// The deadline.
        after: Duration,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A query failed.
    #[error("query failed: {0}")]
    Query(String),
    /// A tool could not reach the server it copies from (pg_rewind, pg_basebackup): a network
    /// problem to retry, not a verdict on the data.
    #[error("{cmd} could not reach the source server: {message}")]
    SourceUnreachable {
        /// The program.
        cmd: String,
        /// What it said.
        message: String,
    },
}

/// Whether a tool's error output says it could not connect to the server it reads from
/// (libpq's messages, PostgreSQL 12 to 16).
pub fn says_unreachable(output: &str) -> bool {
    const SIGNS: &[&str] = &[
        "could not connect to server",
        "could not connect to the source server",
        "connection to server at",
        "could not translate host name",
        "Connection refused",
        "timeout expired",
    ];
    SIGNS.iter().any(|s| output.contains(s))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PgError + '_ {
    move |source| PgError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to stop PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// `-m fast`: a shutdown checkpoint; connected standbys receive it before the stop ends.
    Fast,
    /// `-m immediate`: no checkpoint; crash recovery at the next start.
    Immediate,
}

/// Static settings of the local PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// Member name.
    pub name: String,
    /// Cluster name.
    pub scope: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Directory holding the binaries.
    pub bin_dir: PathBuf,
    /// `listen_addresses`.
    pub listen_addresses: String,
    /// Port.
    pub port: u16,
    /// The unix socket directory PostgreSQL creates its socket in (`unix_socket_directories`).
    pub socket_dir: String,
    /// How the daemon connects to this PostgreSQL (TCP unless `use_unix_socket`).
    pub local: conf::LocalAddress,
    /// The passfile.
    pub pgpass: PathBuf,
    /// Superuser name and password.
    pub superuser: (String, Option<String>),
    /// Replication role name and password.
    pub replication: (String, Option<String>),
    /// Rewind role (None: the superuser).
    pub rewind: Option<(String, Option<String>)>,
    /// Deadline for pg_ctl start/stop/promote.
    pub ctl_timeout: Duration,
    /// How PostgreSQL hands WAL to spilo when spilo archives it itself.
    pub archive: Option<conf::Archiving>,
    /// The `restore_command` spilo sets when it archives (unless the parameters set one).
    pub restore_command: Option<String>,
}

/// The major version of the PostgreSQL server in `bin_dir` (`postgres --version`).
pub fn server_major(bin_dir: &Path) -> Result<u32, PgError> {
    let exe = bin_dir.join("postgres");
    let cmd = exe.display().to_string();
    #[allow(clippy::disallowed_methods)] // PostgreSQL's own binary, once at start-up
    let out = std::process::Command::new(&exe)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(&exe))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_major(&text).ok_or(PgError::Command {
        cmd,
        message: format!("cannot read a version in '{}'", text.trim()),
    })
}

/// `postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` → 15.
fn parse_major(text: &str) -> Option<u32> {
    let v = text.split(')').nth(1)?.split_whitespace().next()?;
    v.split(['.', 'b', 'r']).next()?.parse().ok()
}

/// The local PostgreSQL.
pub struct Postgres {
    /// Settings.
    pub s: PgSettings,
    pub(crate) client: Mutex<Option<tokio_postgres::Client>>,
}

impl Postgres {
    /// A handle; nothing is started.
    pub fn new(s: PgSettings) -> Postgres {
        Postgres {
            s,
            client: Mutex::new(None),
        }
    }

    fn bin(&self, prog: &str) -> PathBuf {
        self.s.bin_dir.join(prog)
    }

    /// True when the data directory holds a cluster (`PG_VERSION` exists).
    pub fn data_dir_initialized(&self) -> bool {
        self.s.data_dir.join("PG_VERSION").exists()
            && self.s.data_dir.join("global/pg_control").exists()
    }

    /// True when the data directory is missing or empty.
    pub fn data_dir_empty(&self) -> bool {
        match std::fs::read_dir(&self.s.data_dir) {
            Ok(mut it) => it.next().is_none(),
            Err(_) => true,
        }
    }

    /// The postmaster's pid if one runs on our data directory.
    /// The pid written in postmaster.pid, whether or not that process still runs.
    fn lock_file_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.s.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        (pid > 0).then_some(pid)
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        let pid = self.lock_file_pid()?;
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmdline);
        if cmd.contains("postgres") || cmd.contains("postmaster") {
            Some(pid)
        } else {
            None
        }
    }

    /// Run a program with a deadline, capturing its output.
    async fn run(
        &self,
        prog: &str,
        args: &[String],
        timeout: Duration,
        stdin_null: bool,
    ) -> Result<String, PgError> {
        #[allow(clippy::disallowed_methods)] // PostgreSQL's tools (pg_ctl, initdb, pg_rewind, …)
        let mut cmd = Command::new(self.bin(prog));
        cmd.args(args)
            .env("PGPASSFILE", &self.s.pgpass)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if stdin_null {
            cmd.stdin(Stdio::null());
        }
        let child = cmd.spawn().map_err(|e| PgError::Command {
            cmd: self.bin(prog).display().to_string(),
            message: e.to_string(),
        })?;
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return Err(PgError::Command {
                    cmd: prog.to_string(),
                    message: e.to_string(),
                })
            }
            Err(_) => {
                return Err(PgError::Timeout {
                    cmd: prog.to_string(),
                    after: timeout,
                })
            }
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            // The tools write their errors to stderr and chatter to stdout: the cause is in
            // the end of stderr when there is one.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let source = if stderr.trim().is_empty() {
                &text
            } else {
                stderr.as_ref()
            };
            let tail: Vec<&str> = source
                .lines()
                .filter(|l| !l.trim().is_empty())
                .rev()
                .take(6)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(PgError::Command {
                cmd: prog.to_string(),
                message: format!("{} — {}", out.status, tail.join(" | ")),
            })
        }
    }

    /// `pg_controldata` as key → value.
    pub async fn controldata(&self) -> Result<BTreeMap<String, String>, PgError> {
        let out = self
            .run(
                "pg_controldata",
                &["-D".into(), self.s.data_dir.display().to_string()],
                Duration::from_secs(10),
                true,
            )
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect())
    }

    /// Write the passfile (mode 0600).
    pub fn write_pgpass(&self) -> Result<(), PgError> {
        let mut roles = vec![
            (self.s.superuser.0.as_str(), self.s.superuser.1.as_deref()),
            (
                self.s.replication.0.as_str(),
                self.s.replication.1.as_deref(),
            ),
        ];
        if let Some(r) = &self.s.rewind {
            roles.push((r.0.as_str(), r.1.as_deref()));
        }
        write_private(&self.s.pgpass, conf::render_pgpass(&roles).as_bytes())
    }

    /// Write `postgresql.conf`, `pg_hba.conf` and `standby.signal` (present iff `standby`).
    pub fn write_config(
        &self,
        parameters: &BTreeMap<String, serde_json::Value>,
        hba: &[String],
        standby: bool,
        upstream: Option<&Upstream>,
    ) -> Result<(), PgError> {
        self.write_pgpass()?;
        let d = &self.s.data_dir;
        let base = d.join("postgresql.base.conf");
        let main = d.join("postgresql.conf");
        if !base.exists() && main.exists() {
            let text = std::fs::read_to_string(&main).map_err(io_err(&main))?;
            if !text.starts_with("# Written by spilo") {
                std::fs::rename(&main, &base).map_err(io_err(&main))?;
            }
        }
        let text = conf::render_postgresql_conf(&ConfInput {
            listen_addresses: &self.s.listen_addresses,
            port: self.s.port,
            cluster_name: &self.s.scope,
            parameters,
            upstream,
            passfile: &self.s.pgpass,
            member: &self.s.name,
            socket_dir: &self.s.socket_dir,
            archive: self.s.archive.as_ref(),
            restore_command: self.s.restore_command.as_deref(),
        });
        write_atomic(&main, text.as_bytes())?;
        let hba_path = d.join("pg_hba.conf");
        write_atomic(&hba_path, conf::render_pg_hba(hba).as_bytes())?;
        let sig = d.join("standby.signal");
        if standby {
            if !sig.exists() {
                std::fs::write(&sig, b"").map_err(io_err(&sig))?;
            }
        } else if sig.exists() {
            std::fs::remove_file(&sig).map_err(io_err(&sig))?;
        }
        // A recovery.signal left behind would start a targeted recovery; spilo never wants it.
        let _ = std::fs::remove_file(d.join("recovery.signal"));
        Ok(())
    }

    /// `initdb` with the superuser password from a temporary `--pwfile`.
    pub async fn initdb(&self, extra: &[String]) -> Result<(), PgError> {
        let pwfile = self.s.data_dir.with_extension("pwfile");
        write_private(
            &pwfile,
            self.s.superuser.1.clone().unwrap_or_default().as_bytes(),
        )?;
        let mut args = vec![
            "-D".to_string(),
            self.s.data_dir.display().to_string(),
            format!("--username={}", self.s.superuser.0),
            format!("--pwfile={}", pwfile.display()),
        ];
        args.extend_from_slice(extra);
        let res = self
            .run("initdb", &args, Duration::from_secs(300), true)
            .await;
        let _ = std::fs::remove_file(&pwfile);
        res.map(|_| ())
    }

    fn log_file(&self) -> PathBuf {
        self.s.data_dir.join("spilo-postgres.log")
    }

    /// Processes still working in the data directory (their current directory is it), other
    /// than a live postmaster: after a SIGKILL of the postmaster its backends, walsenders and
    /// background workers linger until they notice, and hold the shared memory segment, so a
    /// new postmaster refuses to start ("pre-existing shared memory block is still in use").
    pub fn orphaned_backends(&self) -> Vec<i32> {
        let Ok(dir) = self.s.data_dir.canonicalize() else {
            return Vec::new();
        };
        let live = self.postmaster_pid();
        let me = std::process::id() as i32;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me || Some(pid) == live {
                continue;
            }
            let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
                continue;
            };
            if cwd != dir {
                continue;
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end().starts_with("postgres") || comm.trim_end().starts_with("postmaster")
            {
                found.push(pid);
            }
        }
        found
    }

    /// Before a start with no live postmaster: wait for the processes a killed postmaster left
    /// behind to exit (they do once they notice the postmaster is gone), and kill the ones that
    /// are still there after `grace`, so the new postmaster can take the shared memory.
    async fn reap_orphans(&self, grace: Duration) {
        if self.postmaster_pid().is_some() {
            return;
        }
        // The killed postmaster itself counts until its pid is gone: PostgreSQL refuses to start
        // while the pid in postmaster.pid still exists ("lock file already exists"), and a
        // killed process keeps its pid until its parent reaps it.
        let leftovers = || {
            let mut l = self.orphaned_backends();
            if let Some(pid) = self.lock_file_pid() {
                // SAFETY: kill with signal 0 only checks that the process exists.
                if unsafe { libc::kill(pid, 0) } == 0 && !l.contains(&pid) {
                    l.push(pid);
                }
            }
            l
        };
        let mut left = leftovers();
        if left.is_empty() {
            return;
        }
        tracing::info!(
            pids = ?left,
            "waiting for processes of the previous postmaster to exit before starting"
        );
        let until = crate::clock::now() + grace;
        while !left.is_empty() && crate::clock::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = leftovers();
        }
        left = self.orphaned_backends();
        if left.is_empty() {
            return;
        }
        tracing::warn!(pids = ?left, "processes of the previous postmaster did not exit; killing them");
        for pid in &left {
            // SAFETY: signalling a pid whose current directory is our data directory and whose
            // name is postgres: a leftover of our own killed postmaster.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        let until = crate::clock::now() + Duration::from_secs(5);
        while !self.orphaned_backends().is_empty() && crate::clock::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `pg_ctl start`, waiting until it accepts connections (or the deadline).
    pub async fn start(&self) -> Result<(), PgError> {
        *self.client.lock().await = None;
        self.reap_orphans(self.s.ctl_timeout.min(Duration::from_secs(15)))
            .await;
        let args = vec![
            "start".into(),
            "-w".into(),
            "-t".into(),
            self.s.ctl_timeout.as_secs().max(1).to_string(),
            "-D".into(),
            self.s.data_dir.display().to_string(),
            "-l".into(),
            self.log_file().display().to_string(),
        ];
        self.run(
            "pg_ctl",
            &args,
            self.s.ctl_timeout + Duration::from_secs(5),
            true,
        )
        .await
        .map(|_| ())
    }

    /// `pg_ctl stop`.
    pub async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        *self.client.lock().await = None;
        if self.postmaster_pid().is_none() {
            return Ok(());
        }
        let m = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let args = vec![
            "stop".into(),
            "-w".into(),
            "-t".into(),
            self.s.ctl_timeout.as_secs().max(1).to_string(),
            "-m".into(),
            m.into(),
            "-D".into(),
            self.s.data_dir.display().to_string(),
        ];
        match self
            .run(
                "pg_ctl",
                &args,
                self.s.ctl_timeout + Duration::from_secs(5),
                true,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if self.postmaster_pid().is_none() => {
                tracing::debug!(error = %e, "pg_ctl stop reported an error but PostgreSQL is down");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Kill the postmaster with SIGKILL (last resort when an immediate stop hangs).
    pub fn kill_postmaster(&self) {
        if let Some(pid) = self.postmaster_pid() {
            // SAFETY: sending a signal to a pid we just read from postmaster.pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// `pg_ctl promote`, waiting for the end of recovery.
    pub async fn promote(&self) -> Result<(), PgError> {
        let args = vec![
            "promote".into(),
            "-w".into(),
            "-t".into(),
            self.s.ctl_timeout.as_secs().max(1).to_string(),
            "-D".into(),
            self.s.data_dir.display().to_string(),
        ];
        self.run(
            "pg_ctl",
            &args,
            self.s.ctl_timeout + Duration::from_secs(5),
            true,
        )
        .await
        .map(|_| ())
    }

    /// Remove the data directory (after moving nothing aside: callers decide).
    pub fn remove_data_dir(&self) -> Result<(), PgError> {
        let d = &self.s.data_dir;
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(io_err(d))?;
        }
        Ok(())
    }

    /// `pg_basebackup` from an upstream into the (empty) data directory.
    pub async fn basebackup(&self, host: &str, port: u16) -> Result<(), PgError> {
        if !self.data_dir_empty() {
            self.remove_data_dir()?;
        }
        let conninfo = conf::conninfo(
            host,
            port,
            &self.s.replication.0,
            None,
            &self.s.pgpass,
            &self.s.name,
        );
        self.write_pgpass()?;
        let args = vec![
            "-D".into(),
            self.s.data_dir.display().to_string(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "--no-password".into(),
            "-d".into(),
            conninfo,
        ];
        let res = self
            .run("pg_basebackup", &args, Duration::from_secs(3600), true)
            .await;
        if res.is_err() {
            let _ = self.remove_data_dir();
        }
        res.map(|_| ())
    }

    /// Crash recovery in single-user mode, so that pg_rewind finds a cleanly shut down target.
    pub async fn single_user_recovery(&self) -> Result<(), PgError> {
        let args = vec![
            "--single".into(),
            "-D".into(),
            self.s.data_dir.display().to_string(),
            "-c".into(),
            "archive_mode=off".into(),
            "-c".into(),
            "hot_standby=off".into(),
            "postgres".into(),
        ];
        self.run("postgres", &args, Duration::from_secs(600), true)
            .await
            .map(|_| ())
    }

    /// `pg_rewind` against the upstream.
    pub async fn rewind(&self, host: &str, port: u16) -> Result<String, PgError> {
        let (user, _) = self
            .s
            .rewind
            .clone()
            .unwrap_or_else(|| self.s.superuser.clone());
        self.write_pgpass()?;
        let conninfo = conf::conninfo(
            host,
            port,
            &user,
            Some("postgres"),
            &self.s.pgpass,
            &self.s.name,
        );
        let args = vec![
            "-D".into(),
            self.s.data_dir.display().to_string(),
            format!("--source-server={conninfo}"),
            "--no-sync".into(),
        ];
        match self
            .run("pg_rewind", &args, Duration::from_secs(3600), true)
            .await
        {
            Err(PgError::Command { cmd, message }) if says_unreachable(&message) => {
                Err(PgError::SourceUnreachable { cmd, message })
            }
            other => other,
        }
    }

    /// Reads every relation of every database of this (running) server, connecting over its
    /// socket as the superuser: `pg_amcheck --all --install-missing` when the binaries have it
    /// (heap and B-tree checks), else `pg_dumpall` to nowhere (every row read). Returns the
    /// tool's name and what it said; an error carries the tool's own message.
    pub async fn check_relations(&self, timeout: Duration) -> Result<(String, String), PgError> {
        let conn = vec![
            "-h".to_string(),
            self.s.socket_dir.clone(),
            "-p".to_string(),
            self.s.port.to_string(),
            "-U".to_string(),
            self.s.superuser.0.clone(),
        ];
        if self.bin("pg_amcheck").exists() {
            let mut args = conn;
            args.extend(["--all".into(), "--install-missing".into()]);
            let out = self.run("pg_amcheck", &args, timeout, true).await?;
            return Ok(("pg_amcheck".into(), out.trim().to_string()));
        }
        let mut args = conn;
        args.extend(["-f".into(), "/dev/null".into()]);
        let out = self.run("pg_dumpall", &args, timeout, true).await?;
        Ok(("pg_dumpall".into(), out.trim().to_string()))
    }

    /// The last `n` lines of PostgreSQL's log (what it said when it would not start).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Write a file with mode 0600 (created fresh).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), PgError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Write a file atomically (write, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), PgError> {
    write_private(path, data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn major_versions() {
        assert_eq!(
            super::parse_major("postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(
            super::parse_major("postgres (PostgreSQL) 17beta2"),
            Some(17)
        );
        assert_eq!(super::parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(super::parse_major("garbage"), None);
    }

    use super::says_unreachable;

    #[test]
    fn connection_failures_of_the_tools_are_told_apart_from_other_errors() {
        // PostgreSQL 15's pg_rewind and libpq, word for word.
        assert!(says_unreachable(
            "pg_rewind: error: could not connect to server: connection to server at \
             \"10.0.0.2\", port 5432 failed: Connection refused"
        ));
        assert!(says_unreachable(
            "pg_rewind: error: could not connect to server: could not translate host name \"db2\""
        ));
        assert!(!says_unreachable(
            "pg_rewind: error: could not find common ancestor of the source and target cluster's timelines"
        ));
        assert!(!says_unreachable(
            "pg_rewind: fatal: target server must be shut down cleanly"
        ));
    }
}
