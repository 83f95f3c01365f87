//! `pg_basebackup` streaming a tar of the data directory to its standard output, for base
//! backups to object storage: `-D - -Ft -X none -c fast -v -P` (with its manifest, whose
//! `WAL-Ranges` give the stop position; see `backup::tarscan`). WAL is not included: the
//! archive holds it (the server waits for the backup's last segment to be archived before it
//! ends the backup), and the manifest records the start and stop positions.
//!
//! The child runs with `LC_ALL=C` so that its messages (the start and end points) parse.

use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};

use super::ctl::PgError;

/// A running `pg_basebackup`.
pub struct TarStream {
    /// The process (killed by [`TarStream::kill`] when the backup is abandoned).
    pub child: Child,
    /// The tar.
    pub stdout: ChildStdout,
    /// Its messages.
    pub stderr: ChildStderr,
}

impl TarStream {
    /// Stops the process (the backup is abandoned) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where and as whom `pg_basebackup` connects.
#[derive(Clone, Debug)]
pub struct Source {
    /// Host name, address or socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
    /// A role with the REPLICATION attribute.
    pub user: String,
    /// Its password (given through `PGPASSWORD`, never on the command line).
    pub password: Option<String>,
}

/// Starts `pg_basebackup` from `bin_dir` against `src`.
pub fn spawn_tar(bin_dir: &Path, src: &Source, label: &str) -> Result<TarStream, PgError> {
    let exe = bin_dir.join("pg_basebackup");
    #[allow(clippy::disallowed_methods)] // PostgreSQL's own tool
    let mut cmd = Command::new(&exe);
    cmd.args([
        "-D", "-", "-F", "t", "-X", "none", "-c", "fast", "-v", "-P", "-w",
    ])
    .arg(format!("--label={label}"))
    .args([
        "-h",
        &src.host,
        "-p",
        &src.port.to_string(),
        "-U",
        &src.user,
    ])
    .env("LC_ALL", "C")
    .env("LANG", "C")
    .env("PGAPPNAME", "spilo_backup")
    .env("PGCONNECT_TIMEOUT", "10")
    .env_remove("PGPASSWORD")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(p) = &src.password {
        cmd.env("PGPASSWORD", p);
    }
    let mut child = cmd.spawn().map_err(|e| PgError::Command {
        cmd: exe.display().to_string(),
        message: format!("cannot start: {e}"),
    })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(PgError::Command {
            cmd: exe.display().to_string(),
            message: "no pipes".into(),
        });
    };
    Ok(TarStream {
        child,
        stdout,
        stderr,
    })
}

/// What `pg_basebackup -v -P` says, line by line (`\n` or `\r` separated). (With `-D -` it
/// prints neither its start nor its end point: those come from the tar, `backup::tarscan`.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Said {
    /// The estimated total from the progress line, in bytes.
    pub total_bytes: Option<u64>,
    /// The last lines (for error messages).
    pub tail: Vec<String>,
}

impl Said {
    /// Takes one line into account.
    pub fn line(&mut self, line: &str) {
        let l = line.trim();
        if l.is_empty() {
            return;
        }
        if let Some((done, rest)) = l.split_once(" kB (") {
            // "12345/67890 kB (18%), 0/1 tablespace"
            let total = done
                .rsplit('/')
                .next()
                .and_then(|t| t.trim().parse::<u64>().ok());
            if let Some(t) = total.filter(|_| rest.contains('%')) {
                self.total_bytes = Some(t.saturating_mul(1024));
            }
            return;
        }
        if self.tail.len() >= 20 {
            self.tail.remove(0);
        }
        self.tail.push(l.to_string());
    }
}

/// Reads `stderr` to its end, calling `update` after each line.
pub fn read_messages(mut stderr: impl Read, mut update: impl FnMut(&str)) {
    let mut buf = [0u8; 4096];
    let mut line = Vec::new();
    loop {
        let n = match stderr.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                update(&String::from_utf8_lossy(&line));
                line.clear();
            } else if line.len() < 4096 {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        update(&String::from_utf8_lossy(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_pg_basebackup_says() {
        let text = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                    pg_basebackup: checkpoint completed\n\
                    pg_basebackup: write-ahead log start point: 0/2000028 on timeline 3\n\
                    0/31042 kB (0%), 0/1 tablespace\r31050/31050 kB (100%), 1/1 tablespace\n\
                    pg_basebackup: write-ahead log end point: 0/2000100\n\
                    pg_basebackup: base backup completed\n";
        let mut s = Said::default();
        read_messages(text.as_bytes(), |l| s.line(l));
        assert_eq!(s.total_bytes, Some(31050 * 1024));
        assert_eq!(
            s.tail.last().map(String::as_str),
            Some("pg_basebackup: base backup completed")
        );
        let mut e = Said::default();
        e.line("pg_basebackup: error: connection to server failed: FATAL:  no pg_hba.conf entry");
        assert!(e.tail[0].contains("pg_hba"));
    }
}
