//! WAL fetching for PostgreSQL's `restore_command` (`spilo wal-fetch %f %p`, a thin client of
//! the daemon's archive socket): the daemon reads the object, opens it (decryption, zstd, the
//! trailer's length and digest checked) and writes the file where PostgreSQL asked. After each
//! segment it has restored it **prefetches** the next ones of the same timeline in parallel into
//! a bounded cache (`pg_wal/.spilo-prefetch/`, on the same filesystem, so handing a cached
//! segment over is a rename), so that replay is not one round trip per segment. A file the
//! archive does not hold is answered "missing" at once (PostgreSQL takes that as the end of the
//! archive); every fetch is bounded by a timeout.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spilo_sdk::storage::{get_all, Storage, StorageError};
use tokio::sync::{Notify, Semaphore};

use super::archiver::ArchiveStats;
use super::layout::{self, WalFile};
use super::object::{self, ReadError};

/// What the fetcher needs.
#[derive(Clone)]
pub struct FetchSettings {
    /// The cluster's key prefix.
    pub base: String,
    /// `pg_wal` of the local data directory (files are restored only into it).
    pub pg_wal: PathBuf,
    /// Per-file limit.
    pub timeout: Duration,
    /// Segments fetched ahead of the one asked for (0: none).
    pub prefetch: usize,
    /// Downloads at once for the prefetch.
    pub concurrency: usize,
    /// The `backup.encryption` key.
    pub key: Option<super::crypt::SecretKey>,
}

/// The outcome of a fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The file is where PostgreSQL asked for it.
    Restored,
    /// The archive does not hold it.
    Missing,
}

/// Why a fetch failed (PostgreSQL then tries again, or streams).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not a WAL file name.
    #[error("'{0}' is not a WAL file name")]
    BadName(String),
    /// The destination is not in this node's `pg_wal`.
    #[error("{0}: not a file in this node's pg_wal")]
    BadDest(String),
    /// The store failed.
    #[error("{name}: {source}")]
    Storage {
        /// The file.
        name: String,
        /// Why.
        #[source]
        source: StorageError,
    },
    /// The object does not open (wrong key, corrupted, truncated).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A segment is missing while a later one of its timeline is archived: a hole in the
    /// archive, not its end.
    #[error("{name} is missing from the archive, yet {later} is there: the archive has a hole")]
    Gap {
        /// The missing segment.
        name: String,
        /// The later segment found.
        later: String,
    },
    /// The fetch did not finish in time.
    #[error("{name}: not fetched within {after:?}")]
    Timeout {
        /// The file.
        name: String,
        /// The limit.
        after: Duration,
    },
}

/// Segments fetched ahead of the one PostgreSQL asked for.
pub const PREFETCH: usize = 8;

/// How long to wait before a missing segment with a later one archived counts as a hole.
const HOLE_RECHECK: Duration = Duration::from_secs(2);

/// The longest a history file's fetch may take.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(3);

/// The prefetch cache's directory under `pg_wal`.
pub const CACHE_DIR: &str = ".spilo-prefetch";

#[derive(Default)]
struct Table {
    /// Prefetches in flight.
    inflight: HashSet<String>,
    /// Segment size, learnt from the first segment restored.
    seg_size: Option<u64>,
}

/// Another cluster's archive to read instead of this one's (a clone's recovery).
#[derive(Clone)]
pub struct Source {
    /// Its store.
    pub storage: Arc<dyn Storage>,
    /// Its key prefix.
    pub base: String,
}

struct Shared {
    storage: Arc<dyn Storage>,
    /// While set, files are read from here (and nothing is prefetched from this cluster's own).
    source: std::sync::RwLock<Option<Source>>,
    stats: Arc<ArchiveStats>,
    s: FetchSettings,
    cache: PathBuf,
    table: Mutex<Table>,
    /// The prefetch cache directory may exist.
    has_cache: std::sync::atomic::AtomicBool,
    /// The last failure, in words (a clone's bootstrap reports it).
    last_failure: Mutex<Option<String>>,
    /// Signalled whenever a prefetch ends.
    ended: Notify,
    permits: Semaphore,
}

/// Fetches WAL for `restore_command`; cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    sh: Arc<Shared>,
}

const CHUNK: usize = 1 << 20;

impl Fetcher {
    /// A fetcher reading from `storage`; empties the prefetch cache (what an earlier run left
    /// may be from another timeline's history).
    pub fn new(storage: Arc<dyn Storage>, s: FetchSettings, stats: Arc<ArchiveStats>) -> Fetcher {
        let cache = s.pg_wal.join(CACHE_DIR);
        let _ = std::fs::remove_dir_all(&cache);
        let permits = Semaphore::new(s.concurrency.max(1));
        Fetcher {
            sh: Arc::new(Shared {
                storage,
                source: std::sync::RwLock::new(None),
                last_failure: Mutex::new(None),
                has_cache: std::sync::atomic::AtomicBool::new(false),
                stats,
                s,
                cache,
                table: Mutex::new(Table::default()),
                ended: Notify::new(),
                permits,
            }),
        }
    }

    /// Reads from `source` instead of this cluster's archive until called with `None` (a
    /// clone replays its source's WAL, and only that); empties the prefetch cache.
    pub fn set_source(&self, source: Option<Source>) {
        if let Ok(mut s) = self.sh.source.write() {
            *s = source;
        }
        let _ = std::fs::remove_dir_all(&self.sh.cache);
    }

    /// Removes the prefetch cache (what a replica fetched ahead is of no use once it has been
    /// promoted: called when PostgreSQL archives, which only a primary does).
    pub async fn drop_cache(&self) {
        if self.sh.has_cache.swap(false, Relaxed) {
            let _ = tokio::fs::remove_dir_all(&self.sh.cache).await;
        }
    }

    /// The last failed fetch, in words.
    pub fn last_failure(&self) -> Option<String> {
        self.sh.last_failure.lock().ok().and_then(|l| l.clone())
    }

    /// Restores `name` to `dest` (an absolute path in `pg_wal`), within the timeout.
    pub async fn fetch(&self, name: &str, dest: &Path) -> Result<Fetched, FetchError> {
        let kind = layout::classify(name).ok_or_else(|| FetchError::BadName(name.into()))?;
        // Compared resolved: the client's path comes from getcwd (symlinks resolved), the
        // configured data directory may go through a symlink, pg_wal may be one (--waldir).
        let real = |p: &Path| std::fs::canonicalize(p).ok();
        let in_pg_wal = dest
            .parent()
            .and_then(real)
            .is_some_and(|d| Some(d) == real(&self.sh.s.pg_wal));
        if !matches!(kind, WalFile::Segment | WalFile::History | WalFile::Partial)
            || !in_pg_wal
            || dest.file_name().is_none_or(|f| f == CACHE_DIR)
        {
            return Err(FetchError::BadDest(dest.display().to_string()));
        }
        // PostgreSQL probes history files while it promotes (to choose a timeline no one has
        // used): a store that hangs must not hold a failover for the whole timeout.
        let after = match kind {
            WalFile::History => self.sh.s.timeout.min(HISTORY_TIMEOUT),
            _ => self.sh.s.timeout,
        };
        let r = match tokio::time::timeout(after, self.fetch_inner(name, kind, dest)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout {
                name: name.into(),
                after,
            }),
        };
        let st = &self.sh.stats;
        match &r {
            Ok(Fetched::Restored) => {
                st.fetched.fetch_add(1, Relaxed);
                if let Ok(m) = tokio::fs::metadata(dest).await {
                    st.fetch_bytes.fetch_add(m.len(), Relaxed);
                }
            }
            Ok(Fetched::Missing) => {
                st.fetch_missing.fetch_add(1, Relaxed);
            }
            Err(e) => {
                st.fetch_failures.fetch_add(1, Relaxed);
                let said = crate::error_chain(e);
                tracing::warn!("restore_command: {said}");
                if let Ok(mut l) = self.sh.last_failure.lock() {
                    *l = Some(said);
                }
            }
        }
        r
    }

    async fn fetch_inner(
        &self,
        name: &str,
        kind: WalFile,
        dest: &Path,
    ) -> Result<Fetched, FetchError> {
        // A prefetch of this very file in flight: wait for it rather than download twice.
        loop {
            let ended = self.sh.ended.notified();
            if !self.lock().inflight.contains(name) {
                break;
            }
            ended.await;
        }
        let cached = self.sh.cache.join(name);
        let got = match tokio::fs::rename(&cached, dest).await {
            Ok(()) => {
                self.sh.stats.fetch_prefetched.fetch_add(1, Relaxed);
                Fetched::Restored
            }
            Err(_) => {
                let mut got = self.download(name).await?;
                if got.is_none() && kind == WalFile::Segment {
                    got = self.hole_check(name).await?;
                }
                match got {
                    None => Fetched::Missing,
                    Some(bytes) => {
                        write_file(dest, &bytes).await?;
                        if kind == WalFile::Segment {
                            self.lock().seg_size.get_or_insert(bytes.len() as u64);
                        }
                        Fetched::Restored
                    }
                }
            }
        };
        if got == Fetched::Restored && kind == WalFile::Segment {
            self.prefetch_after(name).await;
        }
        Ok(got)
    }

    /// While replaying another cluster's archive (a clone), a missing segment with the next
    /// one archived is a hole, reported as such instead of PostgreSQL's "end of archive"
    /// (which would end the recovery short of its target). The next one may merely have been
    /// uploaded first: look again once after a moment.
    async fn hole_check(&self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let Some(src) = self.sh.source.read().ok().and_then(|s| s.clone()) else {
            return Ok(None);
        };
        let seg_size = self.lock().seg_size.unwrap_or(16 << 20);
        let Some(next) = following(name, seg_size, 1).pop() else {
            return Ok(None);
        };
        if src
            .storage
            .head(&layout::wal_key(&src.base, &next))
            .await
            .is_err()
        {
            return Ok(None);
        }
        tokio::time::sleep(HOLE_RECHECK).await;
        match self.download(name).await? {
            Some(bytes) => Ok(Some(bytes)),
            None => Err(FetchError::Gap {
                name: name.into(),
                later: next,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.sh.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object of `name`, opened; `None` when the archive does not hold it.
    async fn download(&self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let (storage, base) = match self.sh.source.read().ok().and_then(|s| s.clone()) {
            Some(src) => (src.storage, src.base),
            None => (self.sh.storage.clone(), self.sh.s.base.clone()),
        };
        read_archived(&*storage, &base, name, self.sh.s.key.as_ref()).await
    }

    /// Starts fetching the segments after `name` that are neither cached nor in flight, and
    /// drops cached segments before it.
    async fn prefetch_after(&self, name: &str) {
        let n = self.sh.s.prefetch;
        if n == 0 {
            return;
        }
        let seg_size = self.lock().seg_size.unwrap_or(16 << 20);
        let wanted = following(name, seg_size, n);
        // Never recreate a removed data directory (a replica being rebuilt): the cache is made
        // only inside an existing pg_wal.
        let _ = tokio::fs::create_dir(&self.sh.cache).await;
        if !self.sh.cache.is_dir() {
            return;
        }
        self.sh.has_cache.store(true, Relaxed);
        if let Ok(mut rd) = tokio::fs::read_dir(&self.sh.cache).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let f = e.file_name().to_string_lossy().into_owned();
                // A prefetch in flight writes NAME.spilo-tmp first: leave it be.
                let stem = f.strip_suffix(".spilo-tmp").unwrap_or(&f);
                if !wanted.iter().any(|w| w == stem) {
                    let _ = tokio::fs::remove_file(e.path()).await;
                }
            }
        }
        for next in wanted {
            if self.sh.cache.join(&next).exists() || !self.lock().inflight.insert(next.clone()) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(me.sh.s.timeout, me.prefetch_one(&next)).await;
                me.lock().inflight.remove(&next);
                me.sh.ended.notify_waiters();
            });
        }
    }

    async fn prefetch_one(&self, name: &str) {
        let Ok(_permit) = self.sh.permits.acquire().await else {
            return;
        };
        match self.download(name).await {
            Ok(Some(bytes)) => {
                let path = self.sh.cache.join(name);
                if let Err(e) = write_file(&path, &bytes).await {
                    tracing::debug!("prefetch of {name}: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("prefetch of {name}: {e}"),
        }
    }
}

/// The archived file `name` under `base`, opened (decrypted, decompressed, its trailer
/// checked); `None` when the archive does not hold it.
pub async fn read_archived(
    storage: &dyn Storage,
    base: &str,
    name: &str,
    key: Option<&super::crypt::SecretKey>,
) -> Result<Option<Vec<u8>>, FetchError> {
    let obj = match get_all(storage, &layout::wal_key(base, name), CHUNK).await {
        Ok(o) => o,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(source) => {
            return Err(FetchError::Storage {
                name: name.into(),
                source,
            })
        }
    };
    let key = key.cloned();
    let name = name.to_string();
    // zstd and the digest of a 16 MiB segment: off the runtime's threads.
    let plain = tokio::task::spawn_blocking(move || object::read(key.as_ref(), &name, &obj))
        .await
        .map_err(|e| FetchError::Io {
            path: "decode".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    Ok(Some(plain))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so PostgreSQL or the cache
/// never sees half a file.
async fn write_file(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let tmp = path.with_extension("spilo-tmp");
    let io = |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    };
    tokio::fs::write(&tmp, bytes).await.map_err(io)?;
    tokio::fs::rename(&tmp, path).await.map_err(io)
}

/// The `n` segment names after `name` on its timeline, for segments of `seg_size` bytes.
pub fn following(name: &str, seg_size: u64, n: usize) -> Vec<String> {
    let parse = |r: std::ops::Range<usize>| u64::from_str_radix(name.get(r)?, 16).ok();
    let (Some(tli), Some(log), Some(seg)) = (parse(0..8), parse(8..16), parse(16..24)) else {
        return Vec::new();
    };
    let per_log = (1u64 << 32) / seg_size.clamp(1 << 20, 1 << 30);
    let mut at = log.saturating_mul(per_log).saturating_add(seg);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        at = match at.checked_add(1) {
            Some(a) => a,
            None => break,
        };
        let (l, s) = (at / per_log, at % per_log);
        if l > u64::from(u32::MAX) {
            break;
        }
        out.push(format!("{tli:08X}{l:08X}{s:08X}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store under `dir/store` holding `names` (each segment 1 MiB of its own bytes), and a
    /// fetcher restoring into `dir/pg_wal`.
    async fn world(
        dir: &Path,
        names: &[&str],
        key: Option<crate::backup::crypt::SecretKey>,
    ) -> (Fetcher, Arc<ArchiveStats>) {
        let storage: Arc<dyn Storage> =
            Arc::new(spilo_storage_fs::FsStorage::open(dir.join("store")).expect("store"));
        for (i, n) in names.iter().enumerate() {
            let body = vec![i as u8 + 1; 1 << 20];
            let mut obj = Vec::new();
            object::encode_sealed(&body[..], 1, 1 << 16, key.as_ref(), |c| {
                obj.extend_from_slice(c);
                Ok(())
            })
            .expect("encode");
            spilo_sdk::storage::put_all(
                &*storage,
                &layout::wal_key("c", n),
                spilo_sdk::storage::PutMode::IfAbsent,
                &obj,
            )
            .await
            .expect("put");
        }
        std::fs::create_dir_all(dir.join("pg_wal")).expect("pg_wal");
        let stats = Arc::new(ArchiveStats::default());
        let f = Fetcher::new(
            storage,
            FetchSettings {
                base: "c".into(),
                pg_wal: dir.join("pg_wal"),
                timeout: Duration::from_secs(10),
                prefetch: 2,
                concurrency: 2,
                key,
            },
            stats.clone(),
        );
        (f, stats)
    }

    #[tokio::test]
    async fn restores_prefetches_and_says_missing() {
        let dir = tempfile::tempdir().expect("dir");
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
        ];
        let key = crate::backup::crypt::SecretKey::parse(&"ab".repeat(32), "k").expect("key");
        let (f, stats) = world(dir.path(), &names, Some(key)).await;
        let dest = dir.path().join("pg_wal").join("RECOVERYXLOG");
        assert_eq!(
            f.fetch(names[0], &dest).await.expect("fetch"),
            Fetched::Restored
        );
        assert_eq!(std::fs::read(&dest).expect("restored"), vec![1u8; 1 << 20]);
        // The next two were prefetched; the second request is served from the cache.
        for _ in 0..100 {
            if f.lock().inflight.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            f.fetch(names[1], &dest).await.expect("fetch"),
            Fetched::Restored
        );
        assert_eq!(std::fs::read(&dest).expect("restored"), vec![2u8; 1 << 20]);
        assert_eq!(stats.fetch_prefetched.load(Relaxed), 1);
        // Not in the archive: missing at once, not an error.
        assert_eq!(
            f.fetch("00000002.history", &dest).await.expect("fetch"),
            Fetched::Missing
        );
        assert_eq!(
            f.fetch("000000010000000000000009", &dest)
                .await
                .expect("fetch"),
            Fetched::Missing
        );
        assert_eq!(stats.fetched.load(Relaxed), 2);
        assert_eq!(stats.fetch_missing.load(Relaxed), 2);
        // The same pg_wal reached through a symlink (as getcwd would not show it).
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        let via = link.join("pg_wal").join("RECOVERYXLOG");
        assert_eq!(
            f.fetch(names[2], &via).await.expect("fetch"),
            Fetched::Restored
        );
        // Once this node archives (it was promoted), the cache goes.
        assert!(dir.path().join("pg_wal").join(CACHE_DIR).is_dir());
        f.drop_cache().await;
        assert!(!dir.path().join("pg_wal").join(CACHE_DIR).exists());
        // Only into pg_wal, only WAL names.
        for (name, to) in [
            (names[2], dir.path().join("elsewhere")),
            (names[2], dir.path().join("pg_wal").join(CACHE_DIR)),
            ("../../etc/passwd", dest.clone()),
            ("000000010000000000000001.00000028.backup", dest.clone()),
        ] {
            assert!(
                f.fetch(name, &to).await.is_err(),
                "{name} -> {}",
                to.display()
            );
        }
    }

    #[tokio::test]
    async fn a_hole_in_a_clones_source_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let (f, stats) = world(
            dir.path(),
            &["000000010000000000000001", "000000010000000000000003"],
            None,
        )
        .await;
        let dest = dir.path().join("pg_wal").join("RECOVERYXLOG");
        // Its own archive: a missing segment is the end of the archive, whatever follows.
        assert_eq!(
            f.fetch("000000010000000000000002", &dest)
                .await
                .expect("fetch"),
            Fetched::Missing
        );
        // The same store as a clone's source: a hole, named.
        let src: Arc<dyn Storage> =
            Arc::new(spilo_storage_fs::FsStorage::open(dir.path().join("store")).expect("store"));
        f.set_source(Some(Source {
            storage: src,
            base: "c".into(),
        }));
        let e = f
            .fetch("000000010000000000000002", &dest)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("000000010000000000000002 is missing")
                && e.to_string().contains("000000010000000000000003"),
            "{e}"
        );
        assert!(f.last_failure().is_some_and(|l| l.contains("hole")));
        // The end of the source's archive is still just the end.
        assert_eq!(
            f.fetch("000000010000000000000004", &dest)
                .await
                .expect("fetch"),
            Fetched::Missing
        );
        assert_eq!(stats.fetch_failures.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_wrong_key_or_a_corrupt_object_is_an_error_not_a_file() {
        let dir = tempfile::tempdir().expect("dir");
        let name = "000000010000000000000001";
        let k1 = crate::backup::crypt::SecretKey::parse(&"11".repeat(32), "k").expect("key");
        let (_, _) = world(dir.path(), &[name], Some(k1)).await;
        let k2 = crate::backup::crypt::SecretKey::parse(&"22".repeat(32), "k").expect("key");
        let storage: Arc<dyn Storage> =
            Arc::new(spilo_storage_fs::FsStorage::open(dir.path().join("store")).expect("store"));
        let stats = Arc::new(ArchiveStats::default());
        let f = Fetcher::new(
            storage,
            FetchSettings {
                base: "c".into(),
                pg_wal: dir.path().join("pg_wal"),
                timeout: Duration::from_secs(10),
                prefetch: 0,
                concurrency: 1,
                key: Some(k2),
            },
            stats.clone(),
        );
        let dest = dir.path().join("pg_wal").join("RECOVERYXLOG");
        let e = f.fetch(name, &dest).await.unwrap_err();
        assert!(e.to_string().contains("key id"), "{e}");
        assert!(!dest.exists());
        assert_eq!(stats.fetch_failures.load(Relaxed), 1);

        // A stored object with one byte changed: an error naming it, no file.
        let (f2, stats2) = world(dir.path().join("plain").as_path(), &[name], None).await;
        let obj = dir
            .path()
            .join("plain/store")
            .join(layout::wal_key("c", name));
        let mut bytes = std::fs::read(&obj).expect("object");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&obj, &bytes).expect("write");
        let dest2 = dir.path().join("plain/pg_wal/RECOVERYXLOG");
        let e = f2.fetch(name, &dest2).await.unwrap_err();
        assert!(e.to_string().contains(name), "{e}");
        assert!(!dest2.exists());
        assert_eq!(stats2.fetch_failures.load(Relaxed), 1);
    }

    #[test]
    fn following_segments_cross_log_boundaries() {
        let n = following("0000000200000001000000FE", 16 << 20, 3);
        assert_eq!(
            n,
            [
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
        // 64 MiB segments: 64 per log file.
        let n = following("00000001000000000000003F", 64 << 20, 1);
        assert_eq!(n, ["000000010000000100000000"]);
        assert!(following("00000001.history", 16 << 20, 2).is_empty());
        assert!(following("00000001FFFFFFFF000000FF", 16 << 20, 2).is_empty());
    }
}
