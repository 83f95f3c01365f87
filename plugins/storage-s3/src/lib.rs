//! Storage on S3 and S3-compatible servers, through the AWS SDK for Rust.
//!
//! Settings ([`S3Settings`], unknown keys refused): `bucket` (required), `prefix`, `region`,
//! `endpoint`, `force_path_style` (default true with `endpoint`), `sse` (`AES256` or
//! `aws:kms`), `sse_kms_key_id`, `storage_class`, `part_size` (default 8 MiB), `upload_concurrency`
//! (default 4), `timeout` (seconds per request, default 30), `max_attempts` (default 3),
//! `conditional_writes` (default true), `access_key_id`/`secret_access_key`/`session_token`
//! (default: the standard AWS credentials chain).
//!
//! Promises (see `spilo_sdk::storage`):
//! - **atomic**: an object appears whole at `finish` (PutObject, or CompleteMultipartUpload);
//!   an aborted or dropped upload aborts its multipart upload;
//! - **put-if-absent** by S3 conditional writes (`If-None-Match: *`), then a comparison by
//!   SHA-256 with the object found (see [`upload`]);
//! - **bounded**: every request has a timeout and a bounded number of attempts with
//!   exponential back-off; a body read waits at most `timeout` for its next bytes;
//! - **errors say what S3 said**: its error code and message (`NoSuchBucket: The specified
//!   bucket does not exist`, `AccessDenied: ...`), the HTTP status, the bucket and endpoint;
//! - keys are plain relative paths (as on the filesystem backend), listed sorted with the
//!   prefix stripped.
//!
//! Known limits: S3 answers HEAD without a body, so `head` of a key in a bucket that does not
//! exist is `NotFound` like a missing key (every other call names `NoSuchBucket`). S3's
//! DeleteObject succeeds on a missing key, so `delete` asks with a HEAD first to report
//! `NotFound`.
//!
//! [`S3Storage`] is the async backend; [`S3Plugin`] runs it on a small tokio runtime of its
//! own behind the blocking [`spilo_sdk::plugin::StoragePlugin`] calls, which `plugin/` (crate
//! `spilo-storage-s3-plugin`, a `cdylib` named `s3`) exports through the C ABI.

mod client;
pub mod keys;
mod plugin;
pub mod settings;
pub mod upload;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use spilo_sdk::storage::{Download, ListPage, PutMode, Storage, StorageError, Upload};

use client::Inner;
pub use plugin::S3Plugin;
pub use settings::{S3Settings, SettingsError};
pub use upload::S3Upload;

/// ListObjectsV2's largest page.
const S3_MAX_KEYS: u32 = 1000;

/// The S3 backend.
#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

fn refused(op: &'static str, e: impl ToString) -> StorageError {
    StorageError::Refused {
        op,
        message: e.to_string(),
    }
}

impl S3Storage {
    /// A backend from the settings as JSON (refused, naming the setting, when they are bad).
    /// Makes no request: a missing bucket or bad credentials show at the first call.
    pub async fn connect(settings: &serde_json::Value) -> Result<S3Storage, StorageError> {
        let s = S3Settings::from_json(settings).map_err(|e| refused("connect", e))?;
        S3Storage::new(&s).await
    }

    /// A backend from parsed settings.
    pub async fn new(settings: &S3Settings) -> Result<S3Storage, StorageError> {
        let cfg = settings.resolve().map_err(|e| refused("connect", e))?;
        Ok(S3Storage {
            inner: Arc::new(Inner::build(cfg).await?),
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.cfg.bucket
    }

    /// The object key (prefix included) of `key`.
    pub fn object_key(&self, key: &str) -> String {
        self.inner.object(key)
    }

    fn check(op: &'static str, key: &str) -> Result<(), StorageError> {
        keys::check_key(key).map_err(|e| refused(op, e))
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn backend(&self) -> &str {
        "s3"
    }

    async fn put_open(&self, key: &str, mode: PutMode) -> Result<Box<dyn Upload>, StorageError> {
        S3Storage::check("put_open", key)?;
        Ok(Box::new(S3Upload::new(self.inner.clone(), key, mode)))
    }

    async fn get_open(&self, key: &str) -> Result<Box<dyn Download>, StorageError> {
        S3Storage::check("get_open", key)?;
        let out = self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.cfg.bucket)
            .key(self.inner.object(key))
            .send()
            .await
            .map_err(|e| self.inner.error("get_open", key, e))?;
        let size = out
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| refused("get_open", "GetObject answered without a Content-Length"))?;
        Ok(Box::new(S3Download {
            inner: self.inner.clone(),
            body: out.body,
            pending: Bytes::new(),
            size,
            read: 0,
        }))
    }

    async fn head(&self, key: &str) -> Result<u64, StorageError> {
        S3Storage::check("head", key)?;
        let out = self
            .inner
            .client
            .head_object()
            .bucket(&self.inner.cfg.bucket)
            .key(self.inner.object(key))
            .send()
            .await
            .map_err(|e| self.inner.error("head", key, e))?;
        out.content_length()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| refused("head", "HeadObject answered without a Content-Length"))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<ListPage, StorageError> {
        let c = &self.inner.cfg;
        let base = if c.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", c.prefix)
        };
        let want = limit as usize;
        let mut objects: Vec<(String, u64)> = Vec::new();
        let mut token: Option<String> = None;
        let mut more = false;
        loop {
            // One key more than the page holds tells whether more follow.
            let ask = (want - objects.len() + 1).min(S3_MAX_KEYS as usize);
            let mut req = self
                .inner
                .client
                .list_objects_v2()
                .bucket(&c.bucket)
                .prefix(format!("{base}{prefix}"))
                .max_keys(ask as i32);
            match (&token, start_after) {
                (Some(t), _) => req = req.continuation_token(t),
                (None, Some(a)) if !a.is_empty() => req = req.start_after(format!("{base}{a}")),
                _ => {}
            }
            let out = req
                .send()
                .await
                .map_err(|e| self.inner.error("list", prefix, e))?;
            for o in out.contents() {
                let Some(k) = o.key().and_then(|k| k.strip_prefix(base.as_str())) else {
                    continue;
                };
                if objects.len() == want {
                    more = true;
                    break;
                }
                let size = o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                objects.push((k.to_string(), size));
            }
            match out.next_continuation_token() {
                Some(t) if !more && out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        objects.sort();
        Ok(ListPage { objects, more })
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        // DeleteObject succeeds on a missing key: ask first, to say NotFound.
        self.head(key).await?;
        self.inner
            .client
            .delete_object()
            .bucket(&self.inner.cfg.bucket)
            .key(self.inner.object(key))
            .send()
            .await
            .map_err(|e| self.inner.error("delete", key, e))?;
        Ok(())
    }
}

/// A GetObject body, read in chunks.
struct S3Download {
    inner: Arc<Inner>,
    body: aws_sdk_s3::primitives::ByteStream,
    pending: Bytes,
    size: u64,
    read: u64,
}

#[async_trait]
impl Download for S3Download {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&mut self, max: usize) -> Result<Vec<u8>, StorageError> {
        let timeout = self.inner.cfg.timeout;
        while self.pending.is_empty() {
            let next = tokio::time::timeout(timeout, self.body.next())
                .await
                .map_err(|_| StorageError::Timeout {
                    op: "get_read",
                    after: timeout,
                })?;
            match next {
                None if self.read == self.size => return Ok(Vec::new()),
                None => {
                    return Err(StorageError::Unreachable {
                        op: "get_read",
                        message: format!(
                            "the object ended after {} of {} bytes",
                            self.read, self.size
                        ),
                    })
                }
                Some(Ok(b)) => self.pending = b,
                Some(Err(e)) => {
                    return Err(StorageError::Unreachable {
                        op: "get_read",
                        message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                    })
                }
            }
        }
        let n = max.max(1).min(self.pending.len());
        let chunk = self.pending.split_to(n);
        self.read += n as u64;
        Ok(chunk.to_vec())
    }
}
