//! The storage contract: a flat namespace of objects (WAL segments, backup pieces) under keys
//! such as `wal/000000010000000000000001`.
//!
//! Invariants every implementation keeps:
//! - a put is invisible until it finishes, then visible whole (never a torn object);
//! - a finished put is durable: it survives a crash of the host or the store;
//! - [`PutMode::IfAbsent`] never replaces an object: the same content at the key is success
//!   (a retried upload), different content is [`StorageError::Exists`] — two primaries never
//!   overwrite each other's WAL;
//! - every call returns by its deadline with an error rather than hang;
//! - listing is sorted bytewise by key and paginated: a page holds at most `limit` keys after
//!   `start_after`, and says whether more follow.

use std::time::Duration;

#[cfg(feature = "host")]
use async_trait::async_trait;

pub use crate::abi::ListPage;

/// The key rule every backend applies, so that a key valid on one is valid on all: `/`-separated
/// components of `[A-Za-z0-9._-]`, none empty, `.` or `..` (nothing like `../x` or `a//b`
/// reaches a directory or a bucket).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// How a put treats an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it.
    Overwrite,
    /// Keep it: same content is success, different content is [`StorageError::Exists`].
    IfAbsent,
}

impl PutMode {
    /// The ABI code ([`crate::abi::PUT_OVERWRITE`], [`crate::abi::PUT_IF_ABSENT`]).
    pub fn code(self) -> u32 {
        match self {
            PutMode::Overwrite => crate::abi::PUT_OVERWRITE,
            PutMode::IfAbsent => crate::abi::PUT_IF_ABSENT,
        }
    }

    /// The mode of an ABI code, `None` when unknown.
    pub fn from_code(code: u32) -> Option<PutMode> {
        match code {
            crate::abi::PUT_OVERWRITE => Some(PutMode::Overwrite),
            crate::abi::PUT_IF_ABSENT => Some(PutMode::IfAbsent),
            _ => None,
        }
    }
}

/// A failed storage operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object at the key.
    #[error("storage: no object {key}")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A put-if-absent found different content at the key.
    #[error("storage: {key} exists with different content")]
    Exists {
        /// The key.
        key: String,
    },
    /// The store could not be reached.
    #[error("storage unreachable during {op}: {message}")]
    Unreachable {
        /// The operation.
        op: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The operation did not finish within its deadline.
    #[error("storage {op} timed out after {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The store (or the plugin) refused.
    #[error("storage refused {op}: {message}")]
    Refused {
        /// The operation.
        op: &'static str,
        /// What it said.
        message: String,
    },
}

/// An object store. Calls may run concurrently.
#[cfg(feature = "host")]
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The backend's name (`fs`, a plugin's name).
    fn backend(&self) -> &str;
    /// Starts an upload to `key`.
    async fn put_open(&self, key: &str, mode: PutMode) -> Result<Box<dyn Upload>, StorageError>;
    /// Opens `key` for reading.
    async fn get_open(&self, key: &str) -> Result<Box<dyn Download>, StorageError>;
    /// The size of `key` in bytes.
    async fn head(&self, key: &str) -> Result<u64, StorageError>;
    /// One page of the keys under `prefix` after `start_after`, at most `limit`.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<ListPage, StorageError>;
    /// Deletes `key`.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
}

/// An upload in progress; nothing is visible before [`Upload::finish`].
#[cfg(feature = "host")]
#[async_trait]
pub trait Upload: Send {
    /// Appends a chunk.
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError>;
    /// Appends a chunk the caller gives away: an upload that must keep its bytes past the
    /// call (a plugin's, run on another thread) takes them without a copy.
    async fn write_owned(&mut self, chunk: Vec<u8>) -> Result<(), StorageError> {
        self.write(&chunk).await
    }
    /// Makes the object durable and visible, atomically.
    async fn finish(self: Box<Self>) -> Result<(), StorageError>;
    /// Drops the upload; nothing becomes visible.
    async fn abort(self: Box<Self>);
}

/// A download in progress.
#[cfg(feature = "host")]
#[async_trait]
pub trait Download: Send {
    /// The object's size in bytes.
    fn size(&self) -> u64;
    /// The next chunk of at most `max` bytes; empty at the end.
    async fn read(&mut self, max: usize) -> Result<Vec<u8>, StorageError>;
}

/// Convenience: puts `body` at `key` in one chunk.
#[cfg(feature = "host")]
pub async fn put_all(
    s: &dyn Storage,
    key: &str,
    mode: PutMode,
    body: &[u8],
) -> Result<(), StorageError> {
    let mut up = s.put_open(key, mode).await?;
    if let Err(e) = up.write(body).await {
        up.abort().await;
        return Err(e);
    }
    up.finish().await
}

/// Convenience: reads all of `key`, `chunk` bytes at a time.
#[cfg(feature = "host")]
pub async fn get_all(s: &dyn Storage, key: &str, chunk: usize) -> Result<Vec<u8>, StorageError> {
    let mut down = s.get_open(key).await?;
    let mut out = Vec::with_capacity(usize::try_from(down.size()).unwrap_or(0).min(1 << 26));
    loop {
        let c = down.read(chunk).await?;
        if c.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&c);
    }
}
