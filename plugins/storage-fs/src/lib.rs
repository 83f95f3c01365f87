//! Storage in a local directory: the embedded default, and the backend the storage conformance
//! suite runs against (in-process and built as a plugin).
//!
//! Layout: an object `wal/000000010000000000000001` is the file `<root>/wal/000000010000000000000001`;
//! uploads are written to `<root>/.tmp/` (never listed) first.
//!
//! Promises (see `spilo_sdk::storage`):
//! - **atomic and durable**: an upload is written to a temporary file, `fsync`ed, then moved
//!   into place — `rename(2)` for an overwrite, `link(2)` for a put-if-absent (which fails if
//!   the name exists, so two writers can never both "create" it) — and the directory that got
//!   the new name is `fsync`ed;
//! - **put-if-absent**: when the name exists, the contents are compared: equal is success (a
//!   retried upload), different is `Exists`;
//! - keys are relative paths of plain components (`[A-Za-z0-9._-]`, no `.`/`..`, no empty
//!   component); anything else is refused before touching the disk.
//!
//! [`FsStore`] is the blocking core. [`FsStorage`] wraps it in the async [`Storage`] trait (each
//! call on tokio's blocking pool); [`FsPlugin`] is the same core as a
//! [`StoragePlugin`], which `plugin/` (crate `spilo-storage-fs-plugin`, a `cdylib`) exports
//! through the C ABI, configured with `{"path": "/dir"}`. (The export lives in its own crate so
//! that linking this library never adds a `spilo_plugin_descriptor` symbol to a binary.)

mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use spilo_sdk::plugin::{PluginError, StoragePlugin};
use spilo_sdk::storage::{Download, ListPage, PutMode, Storage, StorageError, Upload};

pub use store::{FsDownload, FsError, FsStore, FsUpload};

/// Deadline of each call of the in-process backend.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The in-process backend: [`FsStore`] behind the async [`Storage`] trait.
#[derive(Clone)]
pub struct FsStorage {
    store: Arc<FsStore>,
}

impl FsStorage {
    /// A store rooted at `root` (created if missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<FsStorage, StorageError> {
        let store = FsStore::open(root.into()).map_err(|e| to_storage("open", "", e))?;
        Ok(FsStorage {
            store: Arc::new(store),
        })
    }
}

fn to_storage(op: &'static str, key: &str, e: FsError) -> StorageError {
    match e {
        FsError::NotFound => StorageError::NotFound { key: key.into() },
        FsError::Exists => StorageError::Exists { key: key.into() },
        FsError::Timeout => StorageError::Timeout {
            op,
            after: CALL_TIMEOUT,
        },
        other => StorageError::Refused {
            op,
            message: other.to_string(),
        },
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    key: &str,
    f: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| to_storage(op, key, e)),
        Err(e) => Err(StorageError::Refused {
            op,
            message: format!("storage task failed: {e}"),
        }),
    }
}

fn deadline() -> Instant {
    Instant::now() + CALL_TIMEOUT
}

#[async_trait]
impl Storage for FsStorage {
    fn backend(&self) -> &str {
        "fs"
    }

    async fn put_open(&self, key: &str, mode: PutMode) -> Result<Box<dyn Upload>, StorageError> {
        let (s, k) = (self.store.clone(), key.to_string());
        let up = blocking("put_open", key, move || s.put_open(&k, mode, deadline())).await?;
        Ok(Box::new(AsyncUpload {
            store: self.store.clone(),
            key: key.to_string(),
            up: Some(up),
        }))
    }

    async fn get_open(&self, key: &str) -> Result<Box<dyn Download>, StorageError> {
        let (s, k) = (self.store.clone(), key.to_string());
        let (down, size) = blocking("get_open", key, move || s.get_open(&k, deadline())).await?;
        Ok(Box::new(AsyncDownload {
            store: self.store.clone(),
            key: key.to_string(),
            down: Some(down),
            size,
        }))
    }

    async fn head(&self, key: &str) -> Result<u64, StorageError> {
        let (s, k) = (self.store.clone(), key.to_string());
        blocking("head", key, move || s.head(&k, deadline())).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<ListPage, StorageError> {
        let (s, p, a) = (
            self.store.clone(),
            prefix.to_string(),
            start_after.unwrap_or("").to_string(),
        );
        blocking("list", prefix, move || s.list(&p, &a, limit, deadline())).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let (s, k) = (self.store.clone(), key.to_string());
        blocking("delete", key, move || s.delete(&k, deadline())).await
    }
}

struct AsyncUpload {
    store: Arc<FsStore>,
    key: String,
    up: Option<FsUpload>,
}

#[async_trait]
impl Upload for AsyncUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        let Some(mut up) = self.up.take() else {
            return Err(to_storage("put_write", &self.key, FsError::Ended));
        };
        let (s, chunk) = (self.store.clone(), chunk.to_vec());
        let (up, r) = match tokio::task::spawn_blocking(move || {
            let r = s.put_write(&mut up, &chunk, deadline());
            (up, r)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                return Err(StorageError::Refused {
                    op: "put_write",
                    message: format!("storage task failed: {e}"),
                })
            }
        };
        self.up = Some(up);
        r.map_err(|e| to_storage("put_write", &self.key, e))
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        let Some(up) = self.up.take() else {
            return Err(to_storage("put_finish", &self.key, FsError::Ended));
        };
        let s = self.store.clone();
        blocking("put_finish", &self.key, move || {
            s.put_finish(up, deadline())
        })
        .await
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(up) = self.up.take() {
            let s = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || s.put_abort(up)).await;
        }
    }
}

impl Drop for AsyncUpload {
    fn drop(&mut self) {
        if let Some(up) = self.up.take() {
            // Dropped without finish or abort: remove the temporary file.
            self.store.put_abort(up);
        }
    }
}

struct AsyncDownload {
    store: Arc<FsStore>,
    key: String,
    down: Option<FsDownload>,
    size: u64,
}

#[async_trait]
impl Download for AsyncDownload {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&mut self, max: usize) -> Result<Vec<u8>, StorageError> {
        let Some(mut down) = self.down.take() else {
            return Ok(Vec::new());
        };
        let s = self.store.clone();
        let (down, r) = match tokio::task::spawn_blocking(move || {
            let r = s.get_read(&mut down, max, deadline());
            (down, r)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                return Err(StorageError::Refused {
                    op: "get_read",
                    message: format!("storage task failed: {e}"),
                })
            }
        };
        self.down = Some(down);
        r.map_err(|e| to_storage("get_read", &self.key, e))
    }
}

/// The plugin: [`FsStore`] behind the C ABI, configured with `{"path": "/dir"}`.
pub struct FsPlugin(FsStore);

fn to_plugin(e: FsError) -> PluginError {
    match e {
        FsError::NotFound => PluginError::not_found("no such object"),
        FsError::Exists => PluginError::exists("the key exists with different content"),
        FsError::Timeout => PluginError::timeout("deadline passed"),
        FsError::BadKey(_) => PluginError::invalid(e.to_string()),
        other => PluginError::refused(other.to_string()),
    }
}

impl StoragePlugin for FsPlugin {
    type Upload = FsUpload;
    type Download = FsDownload;

    fn create(config: &serde_json::Value) -> Result<Self, PluginError> {
        let path = config["path"]
            .as_str()
            .ok_or_else(|| PluginError::invalid("path: missing (the storage directory)"))?;
        FsStore::open(PathBuf::from(path))
            .map(FsPlugin)
            .map_err(to_plugin)
    }

    fn put_open(&self, key: &str, mode: PutMode, d: Instant) -> Result<FsUpload, PluginError> {
        self.0.put_open(key, mode, d).map_err(to_plugin)
    }

    fn put_write(&self, up: &mut FsUpload, chunk: &[u8], d: Instant) -> Result<(), PluginError> {
        self.0.put_write(up, chunk, d).map_err(to_plugin)
    }

    fn put_finish(&self, up: FsUpload, d: Instant) -> Result<(), PluginError> {
        self.0.put_finish(up, d).map_err(to_plugin)
    }

    fn put_abort(&self, up: FsUpload) {
        self.0.put_abort(up)
    }

    fn get_open(&self, key: &str, d: Instant) -> Result<(FsDownload, u64), PluginError> {
        self.0.get_open(key, d).map_err(to_plugin)
    }

    fn get_read(
        &self,
        down: &mut FsDownload,
        max: usize,
        d: Instant,
    ) -> Result<Vec<u8>, PluginError> {
        self.0.get_read(down, max, d).map_err(to_plugin)
    }

    fn get_close(&self, down: FsDownload) {
        drop(down)
    }

    fn head(&self, key: &str, d: Instant) -> Result<u64, PluginError> {
        self.0.head(key, d).map_err(to_plugin)
    }

    fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: u32,
        d: Instant,
    ) -> Result<ListPage, PluginError> {
        self.0.list(prefix, after, limit, d).map_err(to_plugin)
    }

    fn delete(&self, key: &str, d: Instant) -> Result<(), PluginError> {
        self.0.delete(key, d).map_err(to_plugin)
    }
}
