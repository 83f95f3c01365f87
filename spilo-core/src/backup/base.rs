//! Taking a base backup: `pg_basebackup`'s tar → zstd (with the digest trailer of
//! [`super::object`]) → the store, streamed in chunks (never staged on local disk), then the
//! manifest. A backup is complete only when its manifest (`…_backup_stop_sentinel.json`, as
//! WAL-G names it) exists, and the manifest is written last: a backup cut short (daemon killed,
//! failover, store down) never shows as complete.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spilo_sdk::storage::{put_all, PutMode, Storage, StorageError};

use super::layout::BACKUP_DIR;
use super::object;
use super::tarscan::TarScan;
use crate::dcs::codec::format_lsn;
use crate::postgres::basebackup::{self, Said, Source};
use crate::postgres::PgError;

/// What a complete backup records (its manifest).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// `base_<start segment>`.
    pub name: String,
    /// When it started (RFC 3339, UTC).
    pub start_time: String,
    /// When it finished.
    pub finish_time: String,
    /// WAL position of the backup's start (`0/2000028`).
    pub start_lsn: String,
    /// WAL position of its end: the earliest point it can be restored to.
    pub stop_lsn: String,
    /// The timeline it was taken on.
    pub timeline: u32,
    /// The cluster's system identifier (from the DCS `initialize` key), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// PostgreSQL major version.
    pub pg_version: u32,
    /// Bytes of the tar.
    pub size: u64,
    /// Bytes stored.
    pub compressed_size: u64,
    /// Seconds it took.
    pub duration_secs: f64,
    /// The member it was taken from.
    pub member: String,
    /// Taken from a replica.
    pub from_replica: bool,
    /// SHA-256 of the tar (backups taken before 2026-12; newer ones record `xxh3_128` or
    /// `blake3` and leave this empty, but write it: older spilo requires the field).
    #[serde(default)]
    pub sha256: String,
    /// BLAKE3 of the tar (backups taken from 2026-12 to 2026-12-06).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3: String,
    /// XXH3-128 of the tar (32 hex digits, as `xxhsum -H2` prints it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub xxh3_128: String,
    /// The objects holding the data, relative to the cluster's base prefix.
    pub objects: Vec<String>,
    /// `tar.zst`, or `tar.zst.sealed` when encrypted.
    pub format: String,
    /// The spilo that wrote it.
    pub spilo_version: String,
}

impl Manifest {
    /// The tar's recorded digest and its kind (the newest kind when several are there), if
    /// any.
    pub fn digest(&self) -> Option<(object::Algo, &str)> {
        if !self.xxh3_128.is_empty() {
            Some((object::Algo::Xxh3, &self.xxh3_128))
        } else if !self.blake3.is_empty() {
            Some((object::Algo::Blake3, &self.blake3))
        } else if !self.sha256.is_empty() {
            Some((object::Algo::Sha256, &self.sha256))
        } else {
            None
        }
    }

    /// The start position as a number.
    pub fn start(&self) -> u64 {
        crate::dcs::codec::parse_lsn(&self.start_lsn).unwrap_or(0)
    }

    /// The stop position as a number.
    pub fn stop(&self) -> u64 {
        crate::dcs::codec::parse_lsn(&self.stop_lsn).unwrap_or(0)
    }

    /// When it finished, parsed.
    pub fn finished(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.finish_time)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// When it started, parsed.
    pub fn started(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.start_time)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// The key of a backup's manifest.
pub fn sentinel_key(base: &str, name: &str) -> String {
    format!("{base}/{BACKUP_DIR}/{name}_backup_stop_sentinel.json")
}

/// Removes the parts a failed backup stored before the failure (best effort: the catalog lists
/// only backups with a manifest, so what is left is only wasted space).
async fn remove_parts(storage: &dyn Storage, base: &str, objects: &[String]) {
    for rel in objects {
        let _ = storage.delete(&format!("{base}/{rel}")).await;
    }
}

/// The WAL segment name of `lsn` on `timeline` (16 MiB segments).
pub fn segment_name(timeline: u32, lsn: u64) -> String {
    format!(
        "{timeline:08X}{:08X}{:08X}",
        lsn >> 32,
        (lsn & 0xffff_ffff) >> 24
    )
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// `pg_basebackup` could not start or failed.
    #[error("pg_basebackup failed")]
    Tool(#[source] PgError),
    /// `pg_basebackup` did not report its start point.
    #[error("pg_basebackup did not start a backup: {0}")]
    NoStart(String),
    /// The store failed.
    #[error("uploading the backup failed")]
    Storage(#[source] StorageError),
    /// Reading the tar failed.
    #[error("reading pg_basebackup's output failed")]
    Read(#[source] std::io::Error),
    /// The backup could not be set up (no leader to copy, an unreadable encryption key).
    #[error("cannot take a backup: {0}")]
    Setup(String),
    /// Another backup holds the cluster's backup lock.
    #[error("another backup is running: {0}")]
    Busy(String),
}

/// What to back up and how.
#[derive(Clone, Debug)]
pub struct Request {
    /// The cluster's key prefix.
    pub base: String,
    /// The server to copy.
    pub source: Source,
    /// The member's name.
    pub member: String,
    /// It is a replica.
    pub from_replica: bool,
    /// PostgreSQL binaries.
    pub bin_dir: std::path::PathBuf,
    /// zstd level.
    pub level: i32,
    /// The cluster's system identifier.
    pub system_identifier: Option<String>,
    /// PostgreSQL major version.
    pub pg_version: u32,
    /// Seal the backup with this key.
    pub key: Option<super::crypt::SecretKey>,
}

/// Progress of a running backup.
#[derive(Debug, Default)]
pub struct Progress {
    /// Tar bytes read so far.
    pub done: AtomicU64,
    /// `pg_basebackup`'s estimate of the total (0: not yet known).
    pub total: AtomicU64,
}

const CHUNK: usize = 1 << 20;
/// A backup's stored stream is cut into objects of this size (the last one smaller), so that
/// a restore can download several at once.
pub const PART_BYTES: u64 = 16 << 20;

/// The key (relative to the cluster's prefix) of part `n` (from 1) of backup `name`.
pub fn part_key(name: &str, n: usize) -> String {
    format!("{BACKUP_DIR}/{name}/tar_partitions/part_{n}.tar.zst")
}

/// A reader counting what passes through it and showing it to the tar scanner.
struct Scanning<R> {
    inner: R,
    scan: Arc<Mutex<TarScan>>,
    progress: Arc<Progress>,
}

impl<R: std::io::Read> std::io::Read for Scanning<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.done.fetch_add(n as u64, Ordering::Relaxed);
        self.scan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .feed(&buf[..n]);
        Ok(n)
    }
}

/// Takes a backup into `storage`; returns its manifest once the manifest is stored.
pub async fn take(
    storage: Arc<dyn Storage>,
    req: &Request,
    progress: Arc<Progress>,
) -> Result<Manifest, BackupError> {
    let t0 = crate::clock::now();
    let started = chrono::Utc::now();
    let label = format!("spilo {}", started.format("%Y-%m-%dT%H:%M:%SZ"));
    let basebackup::TarStream {
        child,
        stdout,
        stderr,
    } = basebackup::spawn_tar(&req.bin_dir, &req.source, &label).map_err(BackupError::Tool)?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    let child = Arc::new(Mutex::new(child));
    let kill = {
        let child = child.clone();
        move || {
            let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
            let _ = c.kill();
        }
    };
    let said = Arc::new(Mutex::new(Said::default()));
    let reader = {
        let said = said.clone();
        let progress = progress.clone();
        std::thread::spawn(move || {
            basebackup::read_messages(stderr, |line| {
                let mut s = said.lock().unwrap_or_else(|p| p.into_inner());
                s.line(line);
                if let Some(t) = s.total_bytes {
                    progress.total.store(t, Ordering::Relaxed);
                }
                // The server waits for ever for WAL that is not being archived: give up at its
                // first complaint (after a minute) rather than hang.
                if line.contains("still waiting for all required WAL segments to be archived")
                    && pid > 0
                {
                    s.tail.push(
                        "the WAL this backup needs is not being archived (see the archiver's errors and spilo_wal_archive_failures_total)".into(),
                    );
                    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
            });
        })
    };
    let tail = |said: &Mutex<Said>| {
        said.lock()
            .unwrap_or_else(|p| p.into_inner())
            .tail
            .join(" / ")
    };
    // Waits for the process and the message reader; the exit status.
    let finish_child = {
        let child = child.clone();
        move || async move {
            tokio::task::spawn_blocking(move || {
                let status = child.lock().unwrap_or_else(|p| p.into_inner()).wait();
                let _ = reader.join();
                status
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
        }
    };
    // The tar's first member, backup_label, names the start: read up to it (the checkpoint
    // comes first; -c fast), keeping what was read.
    let scan = Arc::new(Mutex::new(TarScan::default()));
    let mut scanning = Scanning {
        inner: stdout,
        scan: scan.clone(),
        progress: progress.clone(),
    };
    let head = tokio::task::spawn_blocking(move || {
        let mut prefix = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let found = {
                let s = scanning.scan.lock().unwrap_or_else(|p| p.into_inner());
                s.label.is_some() || s.broken.is_some()
            };
            if found || prefix.len() > 64 << 20 {
                return (prefix, scanning);
            }
            match std::io::Read::read(&mut scanning, &mut buf) {
                Ok(0) | Err(_) => return (prefix, scanning),
                Ok(n) => prefix.extend_from_slice(&buf[..n]),
            }
        }
    });
    let (prefix, scanning) = match tokio::time::timeout(Duration::from_secs(600), head).await {
        Ok(Ok(v)) => v,
        _ => {
            kill();
            let _ = finish_child().await;
            return Err(BackupError::NoStart(tail(&said)));
        }
    };
    let start = scan.lock().unwrap_or_else(|p| p.into_inner()).start();
    let Some((start_lsn, timeline)) = start else {
        kill();
        drop(scanning);
        let _ = finish_child().await;
        let why = scan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .broken
            .clone()
            .unwrap_or_else(|| "no backup_label at the start of the tar".into());
        return Err(BackupError::NoStart(format!("{why}: {}", tail(&said))));
    };
    let mut name = format!("base_{}", segment_name(timeline, start_lsn));
    if storage.head(&sentinel_key(&req.base, &name)).await.is_ok() {
        name = format!("{name}_{}", started.timestamp());
    }
    let mut objects = vec![part_key(&name, 1)];
    let data_key = format!("{}/{}", req.base, objects[0]);
    let mut up = match storage.put_open(&data_key, PutMode::Overwrite).await {
        Ok(u) => u,
        Err(e) => {
            kill();
            drop(scanning);
            let _ = finish_child().await;
            return Err(BackupError::Storage(e));
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let level = req.level;
    let key = req.key.clone();
    let encoder = tokio::task::spawn_blocking(move || {
        let input = std::io::Read::chain(std::io::Cursor::new(prefix), scanning);
        object::encode_sealed(input, level, CHUNK, key.as_ref(), |c| {
            tx.blocking_send(c.to_vec())
                .map_err(|_| std::io::Error::other("the upload stopped"))
        })
    });
    let mut stored = 0u64;
    let mut in_part = 0u64;
    let mut failed = None;
    while let Some(c) = rx.recv().await {
        if in_part >= PART_BYTES {
            // This part is full: store it and go on in the next one.
            let next_rel = part_key(&name, objects.len() + 1);
            let next = match storage
                .put_open(&format!("{}/{next_rel}", req.base), PutMode::Overwrite)
                .await
            {
                Ok(u) => u,
                Err(e) => {
                    failed = Some(BackupError::Storage(e));
                    break;
                }
            };
            let full = std::mem::replace(&mut up, next);
            if let Err(e) = full.finish().await {
                failed = Some(BackupError::Storage(e));
                break;
            }
            objects.push(next_rel);
            in_part = 0;
        }
        stored += c.len() as u64;
        in_part += c.len() as u64;
        if let Err(e) = up.write(&c).await {
            failed = Some(BackupError::Storage(e));
            break;
        }
    }
    drop(rx);
    if failed.is_some() {
        kill();
    }
    let encoded = encoder.await;
    let status = finish_child().await;
    let trailer = match (failed, encoded, status) {
        (Some(e), _, _) => {
            up.abort().await;
            remove_parts(&*storage, &req.base, &objects).await;
            return Err(e);
        }
        (None, Ok(Ok(t)), Ok(st)) if st.success() => t,
        (None, Ok(Ok(_)), Ok(st)) => {
            up.abort().await;
            remove_parts(&*storage, &req.base, &objects).await;
            return Err(BackupError::Tool(PgError::Command {
                cmd: "pg_basebackup".into(),
                message: format!("{st}: {}", tail(&said)),
            }));
        }
        (None, Ok(Err(e)), _) | (None, _, Err(e)) => {
            up.abort().await;
            remove_parts(&*storage, &req.base, &objects).await;
            return Err(BackupError::Read(e));
        }
        (None, Err(e), _) => {
            up.abort().await;
            remove_parts(&*storage, &req.base, &objects).await;
            return Err(BackupError::Read(std::io::Error::other(e)));
        }
    };
    let Some(stop) = scan.lock().unwrap_or_else(|p| p.into_inner()).stop() else {
        up.abort().await;
        remove_parts(&*storage, &req.base, &objects).await;
        return Err(BackupError::NoStart(format!(
            "no backup_manifest with WAL-Ranges at the end of the tar: {}",
            tail(&said)
        )));
    };
    if let Err(e) = up.finish().await {
        remove_parts(&*storage, &req.base, &objects).await;
        return Err(BackupError::Storage(e));
    }
    // The field of the trailer's digest kind holds it; the others are empty.
    let digest_of = |algo| {
        if trailer.algo == algo {
            trailer.digest_hex()
        } else {
            String::new()
        }
    };
    let manifest = Manifest {
        name: name.clone(),
        start_time: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finish_time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        start_lsn: format_lsn(start_lsn),
        stop_lsn: format_lsn(stop),
        timeline,
        system_identifier: req.system_identifier.clone(),
        pg_version: req.pg_version,
        size: trailer.size,
        compressed_size: stored,
        duration_secs: crate::clock::now()
            .saturating_duration_since(t0)
            .as_secs_f64(),
        member: req.member.clone(),
        from_replica: req.from_replica,
        sha256: digest_of(object::Algo::Sha256),
        blake3: digest_of(object::Algo::Blake3),
        xxh3_128: digest_of(object::Algo::Xxh3),
        objects,
        format: if req.key.is_some() {
            "tar.zst.sealed".into()
        } else {
            "tar.zst".into()
        },
        spilo_version: env!("CARGO_PKG_VERSION").into(),
    };
    let body = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    put_all(
        &*storage,
        &sentinel_key(&req.base, &name),
        PutMode::Overwrite,
        &body,
    )
    .await
    .map_err(BackupError::Storage)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(1, 0x200_0028), "000000010000000000000002");
        assert_eq!(segment_name(3, 0x1_0A00_0000), "00000003000000010000000A");
    }
}
