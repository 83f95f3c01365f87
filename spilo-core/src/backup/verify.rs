//! The restore drill (`spiloctl backup verify`): a backup is only as good as a restore of it.
//! The drill restores one backup into a scratch directory (streamed, checked against its
//! manifest), adds the archived WAL from its start to its stop segment, starts PostgreSQL there
//! on a free port reachable only through a socket in the scratch directory (crash recovery from
//! the backup label replays to the consistent point), reads every relation
//! (`pg_amcheck --all`, else `pg_dumpall` to nowhere), stops it and removes the directory,
//! whatever happened.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use spilo_sdk::storage::Storage;

use super::base::{segment_name, Manifest};
use super::crypt::SecretKey;
use crate::postgres::conf::LocalAddress;
use crate::postgres::{PgError, PgSettings, Postgres, StopMode};

/// What the drill needs.
pub struct Drill {
    /// The store.
    pub storage: Arc<dyn Storage>,
    /// The cluster's key prefix.
    pub base: String,
    /// The `backup.encryption` key.
    pub key: Option<SecretKey>,
    /// PostgreSQL's binaries.
    pub bin_dir: PathBuf,
    /// The superuser of the backed-up cluster (the check connects as it, over the socket).
    pub superuser: String,
    /// Where the scratch directory is made.
    pub scratch_root: PathBuf,
    /// Bound of PostgreSQL's start and of the check.
    pub timeout: Duration,
}

/// What a drill found.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// The backup.
    pub backup: String,
    /// It restored, replayed to its consistent point, started and passed the check.
    pub ok: bool,
    /// Bytes of tar unpacked.
    pub restored_bytes: u64,
    /// Bytes read from the store for the backup.
    pub stored_bytes: u64,
    /// WAL segments added from the archive.
    pub wal_files: usize,
    /// The check run (`pg_amcheck` or `pg_dumpall`).
    pub check: String,
    /// What went wrong, or what the check said.
    pub detail: String,
    /// Seconds it took.
    pub seconds: f64,
}

/// The segment names from `start` to `stop` (both included) on `timeline` (16 MiB segments).
pub fn segments(timeline: u32, start: u64, stop: u64) -> Vec<String> {
    const SEG: u64 = 16 << 20;
    let mut out = Vec::new();
    let mut at = start - start % SEG;
    // A stop exactly on a segment boundary still needs the segment holding the record that
    // ends there.
    let last = if stop > 0 && stop.is_multiple_of(SEG) {
        stop - 1
    } else {
        stop
    };
    while at <= last && out.len() < 1 << 20 {
        out.push(segment_name(timeline, at));
        at += SEG;
    }
    out
}

/// Removes the scratch directory when dropped (stopping a PostgreSQL still running in it).
struct Scratch {
    dir: PathBuf,
    pg: Option<Postgres>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(pg) = &self.pg {
            if pg.postmaster_pid().is_some() {
                pg.kill_postmaster();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the drill on backup `m`; an error is a report with `ok: false` and the cause.
pub async fn verify(d: &Drill, m: &Manifest) -> Report {
    let t0 = crate::clock::now();
    let mut report = Report {
        backup: m.name.clone(),
        ok: false,
        restored_bytes: 0,
        stored_bytes: 0,
        wal_files: 0,
        check: String::new(),
        detail: String::new(),
        seconds: 0.0,
    };
    let result = run(d, m, &mut report).await;
    match result {
        Ok(()) => report.ok = true,
        Err(e) => report.detail = e.to_string(),
    }
    report.seconds = t0.elapsed().as_secs_f64();
    report
}

/// Why a restore drill failed (the report's detail).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// No scratch directory.
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    /// The backup did not restore.
    #[error("restoring {backup}: {}", crate::error_chain(source))]
    Restore {
        /// The backup.
        backup: String,
        /// Why.
        #[source]
        source: super::restore::RestoreError,
    },
    /// An archived file could not be read.
    #[error("{}", crate::error_chain(.0))]
    Fetch(#[source] super::fetch::FetchError),
    /// A segment the backup needs is not archived.
    #[error(
        "WAL segment {segment}, needed to make {backup} consistent, is missing from the archive"
    )]
    MissingSegment {
        /// The segment.
        segment: String,
        /// The backup.
        backup: String,
    },
    /// A segment could not be written into the scratch data directory.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No port for the scratch PostgreSQL.
    #[error("no free port: {0}")]
    NoPort(#[source] std::io::Error),
    /// Its configuration could not be written.
    #[error("{}", crate::error_chain(.0))]
    Config(#[source] PgError),
    /// The scratch PostgreSQL is gone (not expected).
    #[error("no PostgreSQL")]
    NoPostgres,
    /// PostgreSQL did not start on the restored backup.
    #[error(
        "PostgreSQL did not start on the restored backup: {}; its log: {log}",
        crate::error_chain(source)
    )]
    Start {
        /// Why.
        #[source]
        source: PgError,
        /// The end of its log.
        log: String,
    },
    /// Reading every relation failed.
    #[error("the check of the restored backup failed: {}", crate::error_chain(.0))]
    Check(#[source] PgError),
}

/// Why no scratch directory could be made.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// Creating it failed.
    #[error("cannot make a scratch directory in {}: {source}", root.display())]
    Create {
        /// The directory it goes into.
        root: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Every name tried exists.
    #[error("cannot make a scratch directory in {}", .0.display())]
    Taken(PathBuf),
}

async fn run(d: &Drill, m: &Manifest, report: &mut Report) -> Result<(), DrillError> {
    let dir = make_scratch(&d.scratch_root, &m.name)?;
    let mut scratch = Scratch {
        dir: dir.clone(),
        pg: None,
    };
    let data = dir.join("data");
    let restored =
        super::restore::restore_base(d.storage.clone(), &d.base, m, d.key.as_ref(), &data)
            .await
            .map_err(|source| DrillError::Restore {
                backup: m.name.clone(),
                source,
            })?;
    report.restored_bytes = restored.bytes;
    report.stored_bytes = restored.stored;
    // The WAL from the backup's start to its stop: with it, crash recovery from the backup
    // label reaches the consistent point without an archive.
    let tl = m.timeline.max(1);
    for name in segments(tl, m.start(), m.stop()) {
        let plain = fetch(d, &name)
            .await?
            .ok_or_else(|| DrillError::MissingSegment {
                segment: name.clone(),
                backup: m.name.clone(),
            })?;
        let path = data.join("pg_wal").join(&name);
        if let Err(source) = tokio::fs::write(&path, &plain).await {
            return Err(DrillError::Write { path, source });
        }
        report.wal_files += 1;
    }
    if tl > 1 {
        let h = format!("{tl:08X}.history");
        if let Some(plain) = fetch(d, &h).await? {
            let _ = tokio::fs::write(data.join("pg_wal").join(&h), &plain).await;
        }
    }
    // ALTER SYSTEM settings of the source (synchronous_standby_names, …) stay out of the drill.
    let _ = tokio::fs::write(data.join("postgresql.auto.conf"), b"").await;
    let port = free_port()?;
    let pg = Postgres::new(PgSettings {
        name: "spilo-verify".into(),
        scope: format!("verify-{}", m.name),
        data_dir: data.clone(),
        bin_dir: d.bin_dir.clone(),
        listen_addresses: String::new(),
        port,
        socket_dir: dir.display().to_string(),
        local: LocalAddress::Socket(dir.display().to_string()),
        pgpass: dir.join("pgpass"),
        superuser: (d.superuser.clone(), None),
        replication: ("replicator".into(), None),
        rewind: None,
        ctl_timeout: d.timeout,
        archive: None,
        restore_command: None,
    });
    let mut params = std::collections::BTreeMap::new();
    params.insert("archive_mode".to_string(), serde_json::json!("off"));
    params.insert("max_wal_senders".to_string(), serde_json::json!(0));
    pg.write_config(&params, &["local all all trust".to_string()], false, None)
        .map_err(DrillError::Config)?;
    let start = pg.start().await;
    scratch.pg = Some(pg);
    let pg = scratch.pg.as_ref().ok_or(DrillError::NoPostgres)?;
    if let Err(source) = start {
        return Err(DrillError::Start {
            source,
            log: pg.log_tail(5),
        });
    }
    let checked = pg.check_relations(d.timeout).await;
    let _ = pg.stop(StopMode::Immediate).await;
    match checked {
        Ok((tool, said)) => {
            report.check = tool;
            report.detail = if said.is_empty() {
                "no problem found".into()
            } else {
                said
            };
            Ok(())
        }
        Err(e) => Err(DrillError::Check(e)),
    }
}

/// The archived file `name`, opened; `None` when the archive does not hold it.
async fn fetch(d: &Drill, name: &str) -> Result<Option<Vec<u8>>, DrillError> {
    super::fetch::read_archived(&*d.storage, &d.base, name, d.key.as_ref())
        .await
        .map_err(DrillError::Fetch)
}

/// A fresh private directory under `root`.
fn make_scratch(root: &Path, backup: &str) -> Result<PathBuf, ScratchError> {
    use std::os::unix::fs::DirBuilderExt;
    for i in 0..100u32 {
        let dir = root.join(format!("spilo-verify-{backup}-{}-{i}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(ScratchError::Create {
                    root: root.to_path_buf(),
                    source,
                })
            }
        }
    }
    Err(ScratchError::Taken(root.to_path_buf()))
}

/// A port nothing listens on now.
fn free_port() -> Result<u16, DrillError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(DrillError::NoPort)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segments_from_start_to_stop() {
        let seg = 16u64 << 20;
        assert_eq!(
            segments(1, 2 * seg + 0x28, 2 * seg + 0x138),
            vec!["000000010000000000000002"]
        );
        assert_eq!(
            segments(2, 2 * seg + 0x28, 4 * seg + 0x100),
            vec![
                "000000020000000000000002",
                "000000020000000000000003",
                "000000020000000000000004"
            ]
        );
        // A stop on a boundary: the segment before it.
        assert_eq!(segments(1, seg, 2 * seg), vec!["000000010000000000000001"]);
        // Across the 4 GiB boundary of the name's middle part.
        let high = (1u64 << 32) - seg;
        assert_eq!(
            segments(1, high, high + seg + 1),
            vec!["0000000100000000000000FF", "000000010000000100000000"]
        );
    }

    #[test]
    fn scratch_directories_are_removed_when_dropped() {
        let root = std::env::temp_dir();
        let dir = make_scratch(&root, "base_x").expect("scratch");
        std::fs::write(dir.join("f"), b"x").expect("write");
        drop(Scratch {
            dir: dir.clone(),
            pg: None,
        });
        assert!(!dir.exists());
    }
}
