//! The archive socket: a UNIX socket on which the daemon takes `push NAME` requests from
//! `spilo wal-push` (PostgreSQL's `archive_command`) and answers `ok` once the file is stored,
//! or `err MESSAGE`. One request per connection, one line each way.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::archiver::Archiver;

/// The default socket of a data directory: `/tmp/.spilo-archive-<hash>.sock` (short enough for
/// `sun_path` whatever the data directory's length).
pub fn default_path(data_dir: &Path) -> PathBuf {
    // FNV-1a, 64 bits: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    PathBuf::from(format!("/tmp/.spilo-archive-{h:016x}.sock"))
}

/// Binds the socket (replacing a stale one; mode 0600, so only this OS user can ask).
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = tokio::net::UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves requests until the listener fails.
pub async fn serve(listener: tokio::net::UnixListener, archiver: Archiver) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("archive socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let a = archiver.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r.take(512));
            let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
            let answer = match (read, line.trim().split_once(' ')) {
                (Ok(Ok(_)), Some(("push", name))) => match a.push(name.trim()).await {
                    Ok(()) => "ok\n".to_string(),
                    Err(e) => format!("err {}\n", one_line(&crate::error_chain(&*e))),
                },
                (Ok(Ok(_)), _) => format!("err unknown request '{}'\n", one_line(line.trim())),
                _ => return,
            };
            let _ = w.write_all(answer.as_bytes()).await;
        });
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(2000)
        .collect()
}

/// Why `spilo wal-push` failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The argument is not a WAL file.
    #[error("'{0}' is not a WAL file path")]
    BadPath(String),
    /// The daemon's socket could not be reached.
    #[error("cannot reach the spilo daemon's archive socket {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed or timed out.
    #[error("no answer from the spilo daemon within {after:?}")]
    NoAnswer {
        /// The limit.
        after: Duration,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon refused or failed.
    #[error("{0}")]
    Refused(String),
}

/// The client side: asks the daemon at `socket` to archive `path` (as PostgreSQL passes it,
/// `pg_wal/NAME`), waiting at most `timeout`. Blocking.
pub fn push(socket: &Path, path: &str, timeout: Duration) -> Result<(), PushError> {
    let name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| super::layout::classify(n).is_some())
        .ok_or_else(|| PushError::BadPath(path.to_string()))?;
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|source| PushError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let no_answer = |source| PushError::NoAnswer {
        after: timeout,
        source,
    };
    s.set_read_timeout(Some(timeout)).map_err(no_answer)?;
    s.set_write_timeout(Some(timeout)).map_err(no_answer)?;
    s.write_all(format!("push {name}\n").as_bytes())
        .map_err(no_answer)?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(s, 4096))
        .read_line(&mut line)
        .map_err(no_answer)?;
    match line.trim_end() {
        "ok" => Ok(()),
        "" => Err(no_answer(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection",
        ))),
        other => Err(PushError::Refused(
            other.strip_prefix("err ").unwrap_or(other).to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_socket_is_short_and_stable() {
        let a = default_path(Path::new("/var/lib/postgresql/15/main"));
        assert_eq!(a, default_path(Path::new("/var/lib/postgresql/15/main")));
        assert_ne!(a, default_path(Path::new("/var/lib/postgresql/15/other")));
        assert!(a.as_os_str().len() < 100);
    }

    #[test]
    fn client_refuses_what_is_not_wal_and_names_a_missing_socket() {
        let e = push(
            Path::new("/nonexistent.sock"),
            "pg_wal/../x",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, PushError::BadPath(_)), "{e}");
        let e = push(
            Path::new("/nonexistent/spilo.sock"),
            "pg_wal/000000010000000000000001",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/spilo.sock"), "{e}");
    }
}
