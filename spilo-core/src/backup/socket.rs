//! The archive socket: a UNIX socket on which the daemon takes `push NAME` requests from
//! `spilo wal-push` (PostgreSQL's `archive_command`) and answers `ok` once the file is stored,
//! or `err MESSAGE`; and `fetch NAME PATH` requests from `spilo wal-fetch` (its
//! `restore_command`), answered `ok` once the file is at PATH, `missing` when the archive does
//! not hold it, or `err MESSAGE`. One request per connection, one line each way.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::archiver::Archiver;
use super::fetch::{Fetched, Fetcher};

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
pub async fn serve(listener: tokio::net::UnixListener, archiver: Archiver, fetcher: Fetcher) {
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
        let f = fetcher.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r.take(MAX_REQUEST));
            let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
            let failed =
                |e: &dyn std::error::Error| format!("err {}\n", one_line(&crate::error_chain(e)));
            let answer = match (read, line.trim().split_once(' ')) {
                (Ok(Ok(_)), Some(("push", name))) => {
                    // Only a primary archives: what it fetched ahead as a replica is stale.
                    f.drop_cache().await;
                    match a.push(name.trim()).await {
                        Ok(()) => "ok\n".to_string(),
                        Err(e) => failed(&*e),
                    }
                }
                (Ok(Ok(_)), Some(("fetch", rest))) => match rest.split_once(' ') {
                    Some((name, path)) => match f.fetch(name, Path::new(path)).await {
                        Ok(Fetched::Restored) => "ok\n".to_string(),
                        Ok(Fetched::Missing) => "missing\n".to_string(),
                        Err(e) => failed(&e),
                    },
                    None => "err fetch needs a name and a path\n".to_string(),
                },
                (Ok(Ok(_)), _) => format!("err unknown request '{}'\n", one_line(line.trim())),
                _ => return,
            };
            let _ = w.write_all(answer.as_bytes()).await;
        });
    }
}

/// The longest request line (a name and an absolute path).
const MAX_REQUEST: u64 = 4096;

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(2000)
        .collect()
}

/// Why `spilo wal-push` or `spilo wal-fetch` failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
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

/// The WAL file name of `path` (as PostgreSQL passes `%p` or `%f`).
fn wal_file_name(path: &str) -> Result<&str, ClientError> {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| super::layout::classify(n).is_some())
        .ok_or_else(|| ClientError::BadPath(path.to_string()))
}

/// Sends one request line and returns the answer line (without its newline). Blocking.
fn exchange(socket: &Path, request: &str, timeout: Duration) -> Result<String, ClientError> {
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let no_answer = |source| ClientError::NoAnswer {
        after: timeout,
        source,
    };
    s.set_read_timeout(Some(timeout)).map_err(no_answer)?;
    s.set_write_timeout(Some(timeout)).map_err(no_answer)?;
    s.write_all(format!("{request}\n").as_bytes())
        .map_err(no_answer)?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(s, 4096))
        .read_line(&mut line)
        .map_err(no_answer)?;
    match line.trim_end() {
        "" => Err(no_answer(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection",
        ))),
        other => match other.strip_prefix("err ") {
            Some(e) => Err(ClientError::Refused(e.to_string())),
            None => Ok(other.to_string()),
        },
    }
}

/// The client side: asks the daemon at `socket` to archive `path` (as PostgreSQL passes it,
/// `pg_wal/NAME`), waiting at most `timeout`. Blocking.
pub fn push(socket: &Path, path: &str, timeout: Duration) -> Result<(), ClientError> {
    let name = wal_file_name(path)?;
    match exchange(socket, &format!("push {name}"), timeout)?.as_str() {
        "ok" => Ok(()),
        other => Err(ClientError::Refused(format!("unexpected answer '{other}'"))),
    }
}

/// The client side of `restore_command`: asks the daemon to restore `name` (`%f`) to `path`
/// (`%p`, relative to the current directory, PostgreSQL's data directory). `Ok(true)` once the
/// file is there, `Ok(false)` when the archive does not hold it. Blocking.
pub fn fetch(
    socket: &Path,
    name: &str,
    path: &str,
    timeout: Duration,
) -> Result<bool, ClientError> {
    let name = wal_file_name(name)?;
    let dest = std::env::current_dir()
        .map_err(|e| ClientError::BadPath(format!("{path}: the current directory: {e}")))?
        .join(path);
    let dest = dest
        .to_str()
        .filter(|d| !d.contains(['\n', '\r']))
        .ok_or_else(|| ClientError::BadPath(path.to_string()))?;
    match exchange(socket, &format!("fetch {name} {dest}"), timeout)?.as_str() {
        "ok" => Ok(true),
        "missing" => Ok(false),
        other => Err(ClientError::Refused(format!("unexpected answer '{other}'"))),
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
        assert!(matches!(e, ClientError::BadPath(_)), "{e}");
        let e = push(
            Path::new("/nonexistent/spilo.sock"),
            "pg_wal/000000010000000000000001",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/spilo.sock"), "{e}");
    }
}
