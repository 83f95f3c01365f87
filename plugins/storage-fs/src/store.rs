//! The blocking core of the filesystem store.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use spilo_sdk::storage::{ListPage, PutMode};

/// The directory under the root that holds uploads in progress (never listed).
const TMP_DIR: &str = ".tmp";

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No object at the key.
    #[error("no such object")]
    NotFound,
    /// A put-if-absent found different content.
    #[error("the key exists with different content")]
    Exists,
    /// The call's deadline passed.
    #[error("deadline passed")]
    Timeout,
    /// The key is not a plain relative path.
    #[error("bad key {0:?}: keys are relative paths of [A-Za-z0-9._-] components, no '.' or '..'")]
    BadKey(String),
    /// The upload or download was already ended.
    #[error("upload already ended")]
    Ended,
    /// A filesystem call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The call.
        what: &'static str,
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FsError {
    let path = path.display().to_string();
    move |source| FsError::Io { what, path, source }
}

/// A store rooted at a directory.
#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
    /// The store directory's owner (uid, gid), read once at open.
    owner: Option<(u32, u32)>,
    next_tmp: AtomicU64,
}

/// An upload: a temporary file and where it goes.
#[derive(Debug)]
pub struct FsUpload {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    mode: PutMode,
}

/// A download: an open file.
#[derive(Debug)]
pub struct FsDownload {
    file: File,
}

/// Checks that `key` is a plain relative path.
fn check_key(key: &str) -> Result<(), FsError> {
    let ok = spilo_sdk::storage::valid_key(key) && !key.starts_with(TMP_DIR);
    if ok {
        Ok(())
    } else {
        Err(FsError::BadKey(key.to_string()))
    }
}

fn in_time(deadline: Instant) -> Result<(), FsError> {
    if Instant::now() > deadline {
        Err(FsError::Timeout)
    } else {
        Ok(())
    }
}

/// `fsync` of a directory, so that a name created or removed in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// True when the two files hold the same bytes.
fn same_content(a: &Path, b: &Path) -> Result<bool, FsError> {
    let (ma, mb) = (
        fs::metadata(a).map_err(io_err("stat", a))?,
        fs::metadata(b).map_err(io_err("stat", b))?,
    );
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let mut fa = File::open(a).map_err(io_err("open", a))?;
    let mut fb = File::open(b).map_err(io_err("open", b))?;
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba).map_err(io_err("read", a))?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n]).map_err(io_err("read", b))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

impl FsStore {
    /// Opens (creating) the store at `root`.
    pub fn open(root: PathBuf) -> Result<FsStore, FsError> {
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(io_err("create directory", &tmp))?;
        let owner = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&root).ok().map(|m| (m.uid(), m.gid()))
        };
        let store = FsStore {
            root,
            owner,
            next_tmp: AtomicU64::new(0),
        };
        store.give_to_owner(&tmp);
        Ok(store)
    }

    /// Files and directories created by another user than the store's owner (root running
    /// `spiloctl backup create` on the daemon's store) are handed to the owner, so that the
    /// daemon can still write next to them. Best effort: only root can, and only root needs to.
    fn give_to_owner(&self, path: &Path) {
        use std::os::unix::fs::MetadataExt;
        let Some((uid, gid)) = self.owner else { return };
        let Ok(this) = fs::symlink_metadata(path) else {
            return;
        };
        if this.uid() != uid || this.gid() != gid {
            let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, FsError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// Starts an upload to `key`.
    pub fn put_open(
        &self,
        key: &str,
        mode: PutMode,
        deadline: Instant,
    ) -> Result<FsUpload, FsError> {
        let dest = self.path(key)?;
        in_time(deadline)?;
        let n = self.next_tmp.fetch_add(1, Ordering::SeqCst);
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}-{n}-{}",
            std::process::id(),
            key.replace('/', "_")
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        self.give_to_owner(&tmp);
        Ok(FsUpload {
            file,
            tmp,
            dest,
            mode,
        })
    }

    /// Appends a chunk.
    pub fn put_write(
        &self,
        up: &mut FsUpload,
        chunk: &[u8],
        deadline: Instant,
    ) -> Result<(), FsError> {
        in_time(deadline)?;
        up.file.write_all(chunk).map_err(io_err("write", &up.tmp))
    }

    /// Makes the upload durable and visible: fsync, then rename (overwrite) or link
    /// (if absent), then fsync of the directory. The temporary file is gone either way.
    pub fn put_finish(&self, up: FsUpload, deadline: Instant) -> Result<(), FsError> {
        let r = self.finish_inner(&up, deadline);
        let _ = fs::remove_file(&up.tmp);
        r
    }

    fn finish_inner(&self, up: &FsUpload, deadline: Instant) -> Result<(), FsError> {
        in_time(deadline)?;
        up.file.sync_all().map_err(io_err("fsync", &up.tmp))?;
        let parent = up.dest.parent().unwrap_or(&self.root).to_path_buf();
        if !parent.is_dir() {
            fs::create_dir_all(&parent).map_err(io_err("create directory", &parent))?;
            // The new directories' names must survive a crash too.
            let mut d = parent.as_path();
            self.give_to_owner(d);
            while let Some(up_dir) = d.parent() {
                if up_dir != self.root {
                    self.give_to_owner(up_dir);
                }
                sync_dir(up_dir)?;
                if up_dir == self.root {
                    break;
                }
                d = up_dir;
            }
        }
        match up.mode {
            PutMode::Overwrite => {
                fs::rename(&up.tmp, &up.dest).map_err(io_err("rename", &up.dest))?;
            }
            PutMode::IfAbsent => match fs::hard_link(&up.tmp, &up.dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return if same_content(&up.tmp, &up.dest)? {
                        Ok(())
                    } else {
                        Err(FsError::Exists)
                    };
                }
                Err(e) => return Err(io_err("link", &up.dest)(e)),
            },
        }
        sync_dir(&parent)
    }

    /// Drops an upload: its temporary file goes.
    pub fn put_abort(&self, up: FsUpload) {
        let _ = fs::remove_file(&up.tmp);
    }

    /// Opens `key`; the download and its size.
    pub fn get_open(&self, key: &str, deadline: Instant) -> Result<(FsDownload, u64), FsError> {
        let path = self.path(key)?;
        in_time(deadline)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FsError::NotFound),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let meta = file.metadata().map_err(io_err("stat", &path))?;
        if !meta.is_file() {
            return Err(FsError::NotFound);
        }
        Ok((FsDownload { file }, meta.len()))
    }

    /// The next chunk of at most `max` bytes; empty at the end.
    pub fn get_read(
        &self,
        down: &mut FsDownload,
        max: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, FsError> {
        in_time(deadline)?;
        let mut buf = vec![0u8; max.clamp(1, 8 << 20)];
        let mut got = 0;
        while got < buf.len() {
            let n = down
                .file
                .read(&mut buf[got..])
                .map_err(io_err("read", Path::new("download")))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// The size of `key`.
    pub fn head(&self, key: &str, deadline: Instant) -> Result<u64, FsError> {
        let path = self.path(key)?;
        in_time(deadline)?;
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(FsError::NotFound),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(FsError::NotFound),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    /// One page of the keys under `prefix` after `start_after`, sorted bytewise.
    pub fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
        deadline: Instant,
    ) -> Result<ListPage, FsError> {
        in_time(deadline)?;
        let mut all = Vec::new();
        self.walk(&self.root, "", prefix, &mut all, deadline)?;
        all.retain(|(k, _)| k.as_str() > start_after);
        all.sort();
        let limit = limit as usize;
        let more = all.len() > limit;
        all.truncate(limit);
        Ok(ListPage { objects: all, more })
    }

    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        prefix: &str,
        out: &mut Vec<(String, u64)>,
        deadline: Instant,
    ) -> Result<(), FsError> {
        in_time(deadline)?;
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read directory", dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && name == TMP_DIR {
                continue;
            }
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
            if meta.is_dir() {
                // Only descend where keys under the prefix can be.
                let as_dir = format!("{key}/");
                if prefix.starts_with(&as_dir) || as_dir.starts_with(prefix) {
                    self.walk(&entry.path(), &key, prefix, out, deadline)?;
                }
            } else if key.starts_with(prefix) {
                out.push((key, meta.len()));
            }
        }
        Ok(())
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str, deadline: Instant) -> Result<(), FsError> {
        let path = self.path(key)?;
        in_time(deadline)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(FsError::NotFound),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn keys_are_plain_relative_paths() {
        for good in ["a", "wal/000000010000000000000001", "base/b-1_x.tar.zst"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/abs", "a//b", "../x", "a/./b", "a/..", "sp ace", ".tmp/x", "a\0b",
        ] {
            assert!(matches!(check_key(bad), Err(FsError::BadKey(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_passed_deadline_is_a_timeout_before_any_io() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStore::open(dir.path().to_path_buf()).expect("open");
        let past = Instant::now() - Duration::from_millis(1);
        assert!(matches!(s.head("a", past), Err(FsError::Timeout)));
        assert!(matches!(
            s.put_open("a", PutMode::Overwrite, past),
            Err(FsError::Timeout)
        ));
        // Nothing was created for the refused upload.
        assert_eq!(
            fs::read_dir(dir.path().join(TMP_DIR)).expect("tmp").count(),
            0
        );
        assert!(matches!(s.head("a", later()), Err(FsError::NotFound)));
    }
}
