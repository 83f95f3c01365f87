//! Restoring a base backup into an empty data directory, streamed: the objects are read from
//! the store chunk by chunk, opened (when sealed), decompressed and unpacked as they arrive —
//! never staged whole on local disk or in memory — and the tar's digest and length are checked
//! against the manifest before the directory counts as restored. What makes it a running
//! PostgreSQL (`standby.signal` or `recovery.signal`, `restore_command`) is the caller's.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use spilo_sdk::storage::{get_all, Storage, StorageError};

use super::base::Manifest;
use super::crypt::{CryptError, Opener, SecretKey};
use super::object::Hasher;
use crate::ha::replica::ArchiveError;

/// Chunks in flight between the download and the unpacking.
const QUEUE: usize = 8;
const CHUNK: usize = 1 << 20;

/// What a restore did.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    /// Bytes of tar unpacked.
    pub bytes: u64,
    /// Bytes read from the store.
    pub stored: u64,
}

/// Why a restore failed (the directory is then left for the caller to remove).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target is not an empty directory.
    #[error("{0}: not empty; a backup is restored only into an empty data directory")]
    NotEmpty(PathBuf),
    /// The backup is sealed and no key is configured.
    #[error("backup {0} is encrypted, and no backup.encryption key is configured")]
    NoKey(String),
    /// The manifest names no objects or an unknown format.
    #[error("backup {name}: {what}")]
    Manifest {
        /// The backup.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// Reading an object failed.
    #[error("backup {name}: reading {key}")]
    Storage {
        /// The backup.
        name: String,
        /// The object.
        key: String,
        /// Why.
        #[source]
        source: StorageError,
    },
    /// A sealed object does not open.
    #[error(transparent)]
    Crypt(#[from] CryptError),
    /// Decompressing or unpacking failed.
    #[error("backup {name}: unpacking into {dir}")]
    Unpack {
        /// The backup.
        name: String,
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The unpacked tar is not the one the backup recorded.
    #[error("backup {name}: the restored tar has {got} and {got_size} bytes; the manifest records {want} and {want_size} bytes")]
    Checksum {
        /// The backup.
        name: String,
        /// The manifest's digest.
        want: String,
        /// The manifest's length.
        want_size: u64,
        /// What was restored.
        got: String,
        /// Its length.
        got_size: u64,
    },
}

/// Reads chunks handed over from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
    cur: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => {
                    self.cur = c;
                    self.at = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.at);
        buf[..n].copy_from_slice(&self.cur[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Opens a sealed stream as it is read.
struct OpenReader<R> {
    inner: R,
    opener: Option<Opener>,
    out: Vec<u8>,
    at: usize,
    /// The error that stopped it (tar and zstd wrap the io errors they pass on).
    failed: Arc<std::sync::Mutex<Option<CryptError>>>,
}

impl<R> OpenReader<R> {
    fn fail(&self, e: CryptError) -> std::io::Error {
        let text = e.to_string();
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(e);
        }
        std::io::Error::other(text)
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut sealed = vec![0u8; CHUNK];
        while self.at == self.out.len() {
            let Some(o) = self.opener.as_mut() else {
                return Ok(0);
            };
            let n = self.inner.read(&mut sealed)?;
            let opened = if n == 0 {
                match self.opener.take() {
                    Some(o) => o.finish(),
                    None => Ok(Vec::new()),
                }
            } else {
                o.update(&sealed[..n])
            };
            self.out = opened.map_err(|e| self.fail(e))?;
            self.at = 0;
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Hashes and counts what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Hasher,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Whether `dir` is missing or an empty directory.
fn empty_or_missing(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => rd.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Restores backup `m` of the cluster at `base` into `dir` (missing or empty).
pub async fn restore_base(
    storage: Arc<dyn Storage>,
    base: &str,
    m: &Manifest,
    key: Option<&SecretKey>,
    dir: &Path,
) -> Result<Restored, RestoreError> {
    restore_base_counted(storage, base, m, key, dir, None).await
}

/// [`restore_base`], adding the bytes downloaded to `progress` as they arrive.
pub async fn restore_base_counted(
    storage: Arc<dyn Storage>,
    base: &str,
    m: &Manifest,
    key: Option<&SecretKey>,
    dir: &Path,
    progress: Option<&AtomicU64>,
) -> Result<Restored, RestoreError> {
    if !empty_or_missing(dir) {
        return Err(RestoreError::NotEmpty(dir.to_path_buf()));
    }
    let bad = |what: &str| RestoreError::Manifest {
        name: m.name.clone(),
        what: what.to_string(),
    };
    let sealed = match m.format.as_str() {
        "tar.zst" => false,
        "tar.zst.sealed" => true,
        other => return Err(bad(&format!("unknown format '{other}'"))),
    };
    if m.objects.is_empty() {
        return Err(bad("the manifest names no objects"));
    }
    let Some((algo, want)) = m.digest() else {
        return Err(bad(
            "the manifest records no digest of the tar (xxh3_128, blake3 or sha256)",
        ));
    };
    if m.objects
        .iter()
        .any(|o| o.split('/').any(|p| p == ".." || p.is_empty()))
    {
        return Err(bad("an object name leaves the cluster's prefix"));
    }
    let key = match (sealed, key) {
        (true, None) => return Err(RestoreError::NoKey(m.name.clone())),
        (true, Some(k)) => Some(k.clone()),
        (false, _) => None,
    };
    let unpack_err = |source| RestoreError::Unpack {
        name: m.name.clone(),
        dir: dir.to_path_buf(),
        source,
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(unpack_err)?;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let crypt_failed = Arc::new(std::sync::Mutex::new(None));
    let crypt_slot = crypt_failed.clone();
    let target = dir.to_path_buf();
    let name = m.name.clone();
    let unpack = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
        let input = ChannelReader {
            rx,
            cur: Vec::new(),
            at: 0,
        };
        let opened: Box<dyn Read + Send> = match key {
            Some(k) => Box::new(OpenReader {
                inner: input,
                opener: Some(Opener::new(&k, &name)),
                out: Vec::new(),
                at: 0,
                failed: crypt_slot,
            }),
            None => Box::new(input),
        };
        // zstd passes over the skippable frame holding spilo's trailer.
        let tar_stream = Hashing {
            inner: zstd::stream::read::Decoder::new(opened)?,
            hasher: Hasher::new(algo),
            size: 0,
        };
        let mut archive = tar::Archive::new(tar_stream);
        archive.set_preserve_permissions(true);
        archive.set_overwrite(false);
        archive.unpack(&target)?;
        // The tar's end-of-archive blocks and padding count in its digest.
        let mut rest = archive.into_inner();
        std::io::copy(&mut rest, &mut std::io::sink())?;
        Ok((rest.hasher.finalize_hex(), rest.size))
    });
    let (stored, failed) = if m.objects.len() == 1 {
        stream_one(&*storage, base, m, &tx, progress).await
    } else {
        download_parts(&storage, base, m, &tx, progress).await
    };
    drop(tx);
    let unpacked = unpack
        .await
        .map_err(|e| unpack_err(std::io::Error::other(e.to_string())))?;
    if let Some(e) = failed {
        return Err(e);
    }
    let crypt = crypt_failed.lock().ok().and_then(|mut f| f.take());
    let (got, got_size) = match (unpacked, crypt) {
        (Ok(r), _) => r,
        // A sealed object that does not open is reported as such.
        (Err(_), Some(c)) => return Err(RestoreError::Crypt(c)),
        (Err(e), None) => return Err(unpack_err(e)),
    };
    if got != want || got_size != m.size {
        return Err(RestoreError::Checksum {
            name: m.name.clone(),
            want: format!("{} {want}", algo.name()),
            want_size: m.size,
            got: format!("{} {got}", algo.name()),
            got_size,
        });
    }
    // pg_basebackup -X none leaves pg_wal out; PostgreSQL needs it and archive_status.
    std::fs::create_dir_all(dir.join("pg_wal").join("archive_status")).map_err(unpack_err)?;
    Ok(Restored {
        bytes: got_size,
        stored,
    })
}

/// [`restore_base_counted`] reporting to `stats`' restore progress: begun, the bytes as they
/// arrive, then phase `after` (2 replaying, 3 done) or failed (with the error's chain).
pub async fn restore_reported(
    stats: Option<&super::archiver::ArchiveStats>,
    storage: Arc<dyn Storage>,
    base: &str,
    m: &Manifest,
    key: Option<&SecretKey>,
    dir: &Path,
    after: u64,
) -> Result<Restored, RestoreError> {
    let progress = stats.map(|s| {
        s.restore.begin(
            &m.name,
            m.compressed_size,
            s.fetched.load(std::sync::atomic::Ordering::Relaxed),
        );
        &s.restore
    });
    let r = restore_base_counted(storage, base, m, key, dir, progress.map(|p| &p.done)).await;
    match (&r, progress) {
        (Ok(_), Some(p)) => p.enter(after),
        (Err(e), Some(p)) => p.fail(&crate::error_chain(e)),
        _ => {}
    }
    r
}

type Sender = tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>;

/// A backup of one object: streamed chunk by chunk (nothing held in memory). The bytes read and
/// the failure, if any.
async fn stream_one(
    storage: &dyn Storage,
    base: &str,
    m: &Manifest,
    tx: &Sender,
    progress: Option<&AtomicU64>,
) -> (u64, Option<RestoreError>) {
    let mut stored = 0u64;
    let key = format!("{base}/{}", m.objects[0]);
    let mut down = match storage.get_open(&key).await {
        Ok(d) => d,
        Err(source) => {
            return (
                0,
                Some(RestoreError::Storage {
                    name: m.name.clone(),
                    key,
                    source,
                }),
            )
        }
    };
    loop {
        match down.read(CHUNK).await {
            Ok(c) if c.is_empty() => return (stored, None),
            Ok(c) => {
                stored += c.len() as u64;
                if let Some(p) = progress {
                    p.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                if tx.send(Ok(c)).await.is_err() {
                    // The unpacking side stopped: its error says why.
                    return (stored, None);
                }
            }
            Err(source) => {
                let _ = tx
                    .send(Err(std::io::Error::other("the download failed")))
                    .await;
                return (
                    stored,
                    Some(RestoreError::Storage {
                        name: m.name.clone(),
                        key,
                        source,
                    }),
                );
            }
        }
    }
}

/// A backup of several parts: up to [`WINDOW`] parts downloaded at once (each at most
/// [`super::base::PART_BYTES`], so at most that many held in memory), fed to the unpacking in
/// order.
async fn download_parts(
    storage: &Arc<dyn Storage>,
    base: &str,
    m: &Manifest,
    tx: &Sender,
    progress: Option<&AtomicU64>,
) -> (u64, Option<RestoreError>) {
    let mut stored = 0u64;
    let mut queue = std::collections::VecDeque::new();
    let mut next = m.objects.iter();
    let fail = |key: String, source| RestoreError::Storage {
        name: m.name.clone(),
        key,
        source,
    };
    let result = 'parts: loop {
        while queue.len() < WINDOW {
            let Some(rel) = next.next() else { break };
            let key = format!("{base}/{rel}");
            let s = storage.clone();
            let k = key.clone();
            queue.push_back((
                key,
                tokio::spawn(async move { get_all(&*s, &k, CHUNK).await }),
            ));
        }
        let Some((key, handle)) = queue.pop_front() else {
            break None;
        };
        let bytes = match handle.await {
            Ok(Ok(b)) => b,
            Ok(Err(source)) => break Some(fail(key, source)),
            Err(e) => {
                break Some(fail(
                    key,
                    StorageError::Unreachable {
                        op: "get",
                        message: format!("the download task ended: {e}"),
                    },
                ))
            }
        };
        stored += bytes.len() as u64;
        if let Some(p) = progress {
            p.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        for c in bytes.chunks(CHUNK) {
            if tx.send(Ok(c.to_vec())).await.is_err() {
                // The unpacking side stopped: its error says why.
                break 'parts None;
            }
        }
    };
    for (_, h) in queue {
        h.abort();
    }
    if result.is_some() {
        let _ = tx
            .send(Err(std::io::Error::other("the download failed")))
            .await;
    }
    (stored, result)
}

/// Parts of a backup downloaded at once.
const WINDOW: usize = 4;

/// Where `restore_command` reads WAL from: this cluster's own archive, or while it is a standby
/// cluster the other cluster's (`standby_cluster.scope`/`storage`), through the daemon's
/// fetcher. The executor's [`crate::ha::replica::ArchiveSwitch`].
pub struct ArchiveSwitcher {
    /// This cluster's own store.
    pub storage: Arc<dyn Storage>,
    /// Its settings (a source without a `storage` of its own is in it).
    pub storage_cfg: crate::config::backup::StorageConfig,
    /// This cluster's key prefix.
    pub base: String,
    /// PostgreSQL's major version (part of the layout's prefix).
    pub major: u32,
    /// The `backup.encryption` key.
    pub key: Option<SecretKey>,
    /// The daemon's fetcher.
    pub fetcher: super::fetch::Fetcher,
    /// Where restores report their progress.
    pub stats: Option<Arc<super::archiver::ArchiveStats>>,
}

#[async_trait::async_trait]
impl crate::ha::replica::ArchiveSwitch for ArchiveSwitcher {
    async fn read_from(
        &self,
        source: Option<&crate::config::standby::ArchiveSource>,
    ) -> Result<Arc<dyn crate::ha::replica::ReplicaBackups>, ArchiveError> {
        let Some(a) = source else {
            self.fetcher.set_source(None);
            return Ok(Arc::new(StoreBackups {
                storage: self.storage.clone(),
                base: self.base.clone(),
                key: self.key.clone(),
                stats: self.stats.clone(),
            }));
        };
        let (storage, cfg) = match &a.storage {
            Some(cfg) => (
                super::open_storage(cfg).await.map_err(|e| {
                    ArchiveError::caused(
                        format!(
                            "standby_cluster.storage: cannot open the {} store",
                            cfg.kind
                        ),
                        e,
                    )
                })?,
                cfg,
            ),
            None => (self.storage.clone(), &self.storage_cfg),
        };
        let base = cfg.base_prefix(&a.scope, self.major);
        self.fetcher.set_source(Some(super::fetch::Source {
            storage: storage.clone(),
            base: base.clone(),
        }));
        Ok(Arc::new(StoreBackups {
            storage,
            base,
            key: self.key.clone(),
            stats: self.stats.clone(),
        }))
    }
}

/// The daemon's store as the executor's [`crate::ha::replica::ReplicaBackups`].
pub struct StoreBackups {
    /// The store.
    pub storage: Arc<dyn Storage>,
    /// The cluster's key prefix.
    pub base: String,
    /// The `backup.encryption` key.
    pub key: Option<SecretKey>,
    /// Where restores report their progress (`GET /patroni`).
    pub stats: Option<Arc<super::archiver::ArchiveStats>>,
}

impl StoreBackups {
    async fn manifest(&self, name: &str) -> Result<Option<Manifest>, ArchiveError> {
        let (all, _) = super::catalog::backups(&*self.storage, &self.base)
            .await
            .map_err(|e| ArchiveError::caused("", e))?;
        Ok(all.into_iter().find(|m| m.name == name))
    }
}

#[async_trait::async_trait]
impl crate::ha::replica::ReplicaBackups for StoreBackups {
    async fn newest(&self) -> Result<Option<crate::ha::replica::BackupFacts>, ArchiveError> {
        let (all, _) = super::catalog::backups(&*self.storage, &self.base)
            .await
            .map_err(|e| ArchiveError::caused("", e))?;
        Ok(all
            .into_iter()
            .max_by_key(|m| (m.stop(), m.finish_time.clone()))
            .map(|m| crate::ha::replica::BackupFacts {
                start_lsn: m.start(),
                size: m.size,
                timeline: u64::from(m.timeline),
                system_identifier: m.system_identifier.clone(),
                name: m.name,
            }))
    }

    async fn restore(&self, name: &str, dir: &Path) -> Result<String, ArchiveError> {
        let m = self
            .manifest(name)
            .await?
            .ok_or_else(|| ArchiveError::new(format!("backup {name} is no longer in the store")))?;
        let t0 = crate::clock::now();
        let r = restore_reported(
            self.stats.as_deref(),
            self.storage.clone(),
            &self.base,
            &m,
            self.key.as_ref(),
            dir,
            3,
        )
        .await
        .map_err(|e| ArchiveError::caused("", e))?;
        let secs = crate::clock::now()
            .saturating_duration_since(t0)
            .as_secs_f64();
        Ok(format!(
            "restored {} MiB ({} MiB stored) in {secs:.1} s, from {} at {}",
            r.bytes >> 20,
            r.stored >> 20,
            m.member,
            m.start_lsn
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spilo_sdk::storage::{put_all, PutMode};

    /// A tar of a tiny data directory, stored as backup `base_1` (sealed with `key` if given);
    /// returns the store and the manifest.
    async fn stored_backup(dir: &Path, key: Option<&SecretKey>) -> (Arc<dyn Storage>, Manifest) {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body, mode) in [
            ("PG_VERSION", &b"15\n"[..], 0o600),
            ("base/1/1259", &[7u8; 100_000][..], 0o600),
            (
                "backup_label",
                &b"START WAL LOCATION: 0/2000028\n"[..],
                0o600,
            ),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(mode);
            h.set_cksum();
            b.append_data(&mut h, path, body).expect("append");
        }
        let tar_bytes = b.into_inner().expect("tar");
        let storage: Arc<dyn Storage> =
            Arc::new(spilo_storage_fs::FsStorage::open(dir.join("store")).expect("store"));
        let mut obj = Vec::new();
        super::super::object::encode_sealed(&tar_bytes[..], 1, 1 << 16, key, |c| {
            obj.extend_from_slice(c);
            Ok(())
        })
        .expect("encode");
        put_all(
            &*storage,
            "c/basebackups_005/base_1/base.tar.zst",
            PutMode::IfAbsent,
            &obj,
        )
        .await
        .expect("put");
        let m = Manifest {
            name: "base_1".into(),
            start_time: "2026-12-04T00:00:00Z".into(),
            finish_time: "2026-12-04T00:00:01Z".into(),
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            timeline: 1,
            system_identifier: None,
            pg_version: 15,
            size: tar_bytes.len() as u64,
            compressed_size: obj.len() as u64,
            duration_secs: 1.0,
            member: "n1".into(),
            from_replica: false,
            sha256: String::new(),
            blake3: String::new(),
            xxh3_128: format!("{:032x}", twox_hash::XxHash3_128::oneshot(&tar_bytes)),
            objects: vec!["basebackups_005/base_1/base.tar.zst".into()],
            format: if key.is_some() {
                "tar.zst.sealed".into()
            } else {
                "tar.zst".into()
            },
            spilo_version: "test".into(),
        };
        (storage, m)
    }

    #[tokio::test]
    async fn restores_a_sealed_backup_and_checks_its_digest() {
        let dir = tempfile::tempdir().expect("dir");
        let k = SecretKey::parse(&"5a".repeat(32), "k").expect("key");
        let (storage, m) = stored_backup(dir.path(), Some(&k)).await;
        let target = dir.path().join("data");
        let r = restore_base(storage.clone(), "c", &m, Some(&k), &target)
            .await
            .expect("restore");
        assert_eq!(r.bytes, m.size);
        assert_eq!(
            std::fs::read(target.join("base/1/1259")).expect("file"),
            vec![7u8; 100_000]
        );
        assert!(target.join("pg_wal/archive_status").is_dir());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);

        // Not into a directory that has files.
        let e = restore_base(storage.clone(), "c", &m, Some(&k), &target)
            .await
            .unwrap_err();
        assert!(matches!(e, RestoreError::NotEmpty(_)), "{e}");
        // No key, a wrong key, a manifest that does not match.
        let e = restore_base(storage.clone(), "c", &m, None, &dir.path().join("d2"))
            .await
            .unwrap_err();
        assert!(matches!(e, RestoreError::NoKey(_)), "{e}");
        let other = SecretKey::parse(&"77".repeat(32), "k").expect("key");
        let e = restore_base(
            storage.clone(),
            "c",
            &m,
            Some(&other),
            &dir.path().join("d3"),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("key id"), "{e}");
        let mut wrong = m.clone();
        wrong.xxh3_128 = "00".repeat(16);
        let e = restore_base(
            storage.clone(),
            "c",
            &wrong,
            Some(&k),
            &dir.path().join("d4"),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RestoreError::Checksum { .. }), "{e}");
        assert!(e.to_string().contains("records xxh3-128 0000"), "{e}");
        let mut missing = m.clone();
        missing.objects = vec!["basebackups_005/base_9/base.tar.zst".into()];
        let e = restore_base(
            storage.clone(),
            "c",
            &missing,
            Some(&k),
            &dir.path().join("d5"),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RestoreError::Storage { .. }), "{e}");
        let mut escape = m.clone();
        escape.objects = vec!["../other/x".into()];
        let e = restore_base(storage, "c", &escape, Some(&k), &dir.path().join("d6"))
            .await
            .unwrap_err();
        assert!(matches!(e, RestoreError::Manifest { .. }), "{e}");
    }

    /// Manifests written before XXH3 record the tar's BLAKE3 (and before that its SHA-256),
    /// and are checked by it.
    #[tokio::test]
    async fn restores_a_backup_whose_manifest_records_an_older_digest() {
        use sha2::Digest;
        let dir = tempfile::tempdir().expect("dir");
        let (storage, mut m) = stored_backup(dir.path(), None).await;
        let tar_digest = std::mem::take(&mut m.xxh3_128);
        assert_eq!(tar_digest.len(), 32);
        // The tar itself, hashed again, is what older manifests hold.
        let tar = {
            let obj = get_all(&*storage, "c/basebackups_005/base_1/base.tar.zst", 1 << 16)
                .await
                .expect("object");
            super::super::object::decode("k", &obj).expect("decode")
        };
        let restore_to = |m: Manifest, to: &str| {
            let (storage, target) = (storage.clone(), dir.path().join(to));
            async move { restore_base(storage, "c", &m, None, &target).await }
        };
        let mut by_blake3 = m.clone();
        by_blake3.blake3 = "00".repeat(32);
        let e = restore_to(by_blake3.clone(), "b1").await.unwrap_err();
        assert!(e.to_string().contains("has blake3 "), "{e}");
        by_blake3.blake3 = blake3::hash(&tar).to_hex().to_string();
        restore_to(by_blake3, "b2")
            .await
            .expect("restore by blake3");
        assert!(dir.path().join("b2/PG_VERSION").is_file());
        let mut wrong = m.clone();
        wrong.sha256 = "00".repeat(32);
        let e = restore_base(storage.clone(), "c", &wrong, None, &dir.path().join("d1"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("has sha256 "), "{e}");
        let mut none = m.clone();
        none.sha256 = String::new();
        let e = restore_base(storage.clone(), "c", &none, None, &dir.path().join("d2"))
            .await
            .unwrap_err();
        assert!(matches!(e, RestoreError::Manifest { .. }), "{e}");
        assert!(e.to_string().contains("records no digest"), "{e}");
        assert!(
            !dir.path().join("d2").exists(),
            "unpacked without a digest to check"
        );
        m.sha256 = sha2::Sha256::digest(&tar)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        restore_base(storage, "c", &m, None, &dir.path().join("d3"))
            .await
            .expect("restore by sha256");
        assert!(dir.path().join("d3/PG_VERSION").is_file());
    }

    #[tokio::test]
    async fn restores_a_plain_backup() {
        let dir = tempfile::tempdir().expect("dir");
        let (storage, m) = stored_backup(dir.path(), None).await;
        let target = dir.path().join("data");
        restore_base(storage, "c", &m, None, &target)
            .await
            .expect("restore");
        assert_eq!(
            std::fs::read(target.join("PG_VERSION")).expect("file"),
            b"15\n"
        );
    }

    /// The stored object of `m` cut into `n` parts (as the backup writes them, at
    /// arbitrary offsets).
    async fn split(storage: &Arc<dyn Storage>, m: &Manifest, n: usize) -> Manifest {
        let whole = get_all(&**storage, &format!("c/{}", m.objects[0]), 1 << 16)
            .await
            .expect("object");
        let size = whole.len().div_ceil(n).max(1);
        let mut parts = m.clone();
        parts.objects = Vec::new();
        for (i, piece) in whole.chunks(size).enumerate() {
            let rel = crate::backup::base::part_key(&m.name, i + 1);
            put_all(&**storage, &format!("c/{rel}"), PutMode::Overwrite, piece)
                .await
                .expect("put");
            parts.objects.push(rel);
        }
        parts
    }

    #[tokio::test]
    async fn restores_a_backup_of_many_parts_downloaded_together() {
        let dir = tempfile::tempdir().expect("dir");
        let k = SecretKey::parse(&"5a".repeat(32), "k").expect("key");
        let (storage, m) = stored_backup(dir.path(), Some(&k)).await;
        // Many more parts than the window (cuts inside sealed chunks).
        let parts = split(&storage, &m, 3 * WINDOW).await;
        assert!(parts.objects.len() > 2 * WINDOW, "{}", parts.objects.len());
        let target = dir.path().join("data");
        let r = restore_base(storage.clone(), "c", &parts, Some(&k), &target)
            .await
            .expect("restore");
        assert_eq!(r.bytes, m.size);
        assert_eq!(r.stored, m.compressed_size);
        assert_eq!(
            std::fs::read(target.join("base/1/1259")).expect("file"),
            vec![7u8; 100_000]
        );
        // One part missing: named, and nothing half-restored passes.
        let mut holed = parts.clone();
        let gone = holed.objects[3].clone();
        storage.delete(&format!("c/{gone}")).await.expect("delete");
        holed.objects[3] = gone.clone();
        let e = restore_base(
            storage.clone(),
            "c",
            &holed,
            Some(&k),
            &dir.path().join("d2"),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, RestoreError::Storage { key, .. } if key.ends_with(&gone)),
            "{e}"
        );
        // Parts out of order: the digest (or the opener) refuses.
        let mut swapped = split(&storage, &m, 3 * WINDOW).await;
        swapped.objects.swap(1, 2);
        let e = restore_base(storage, "c", &swapped, Some(&k), &dir.path().join("d3"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                RestoreError::Crypt(_)
                    | RestoreError::Checksum { .. }
                    | RestoreError::Unpack { .. }
            ),
            "{e}"
        );
    }
}
