//! Uploads: chunks are buffered up to one part; an object of at most one part is a single
//! PutObject at `finish`, a larger one a multipart upload with up to `upload_concurrency`
//! parts in flight. Nothing is visible before `finish`: a single put is sent then, and a
//! multipart upload becomes an object only at CompleteMultipartUpload.
//!
//! Put-if-absent: PutObject and CompleteMultipartUpload carry `If-None-Match: *`, so S3 itself
//! refuses to replace an object (412), atomically. After a refusal the object that is there is
//! read and its SHA-256 compared with the SHA-256 of what this upload sent: the same bytes are
//! success (a retried upload), different bytes `Exists`. With `conditional_writes: false` a
//! HEAD (and the same comparison) before the put stands in for the condition: a writer that
//! puts between that HEAD and this put is overwritten — only for servers that ignore
//! `If-None-Match`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use spilo_sdk::storage::{PutMode, StorageError, Upload};
use tokio::task::JoinSet;

use crate::client::{precondition, Inner, Precondition};

/// Attempts of a conditional write answered 409 `ConditionalRequestConflict`.
const CONFLICT_ATTEMPTS: u32 = 4;

/// A multipart upload in progress.
struct Multipart {
    upload_id: String,
    next_part: i32,
    running: JoinSet<Result<CompletedPart, StorageError>>,
    done: Vec<CompletedPart>,
}

/// An upload to S3.
pub struct S3Upload {
    inner: Arc<Inner>,
    key: String,
    object: String,
    mode: PutMode,
    buf: Vec<u8>,
    /// BLAKE3 of the bytes sent, to tell an object already at the key with the same bytes
    /// (a retried upload) from another one.
    digest: Box<blake3::Hasher>,
    size: u64,
    multipart: Option<Multipart>,
    /// Why the upload can no longer finish (a failed or interrupted write).
    broken: Option<String>,
}

impl S3Upload {
    pub(crate) fn new(inner: Arc<Inner>, key: &str, mode: PutMode) -> S3Upload {
        let object = inner.object(key);
        S3Upload {
            inner,
            key: key.to_string(),
            object,
            mode,
            buf: Vec::new(),
            digest: Box::new(blake3::Hasher::new()),
            size: 0,
            multipart: None,
            broken: None,
        }
    }

    fn part_size(&self) -> usize {
        self.inner.cfg.part_size
    }

    /// Appends `bytes` (which fit in the part) to the buffer, growing it at most to one part.
    fn buffer(&mut self, bytes: &[u8]) {
        let need = self.buf.len() + bytes.len();
        if need > self.buf.capacity() {
            let cap = need.max(self.buf.capacity() * 2).min(self.part_size());
            self.buf.reserve_exact(cap - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    async fn write_inner(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.digest.update(chunk);
        self.size += chunk.len() as u64;
        let mut rest = chunk;
        while !rest.is_empty() {
            // A full buffer is sent only when more bytes follow: an object of exactly one part
            // stays a single PutObject.
            if self.buf.len() == self.part_size() {
                let part = std::mem::take(&mut self.buf);
                self.send_part(part).await?;
            }
            let take = (self.part_size() - self.buf.len()).min(rest.len());
            self.buffer(&rest[..take]);
            rest = &rest[take..];
        }
        Ok(())
    }

    /// Starts the multipart upload if needed, waits for a free slot, and starts the part.
    async fn send_part(&mut self, part: Vec<u8>) -> Result<(), StorageError> {
        if self.multipart.is_none() {
            let c = &self.inner.cfg;
            let out = self
                .inner
                .client
                .create_multipart_upload()
                .bucket(&c.bucket)
                .key(&self.object)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .set_server_side_encryption(c.sse.clone())
                .set_ssekms_key_id(c.sse_kms_key_id.clone())
                .set_storage_class(c.storage_class.clone())
                .send()
                .await
                .map_err(|e| self.inner.error("put_write", &self.key, e))?;
            let upload_id = out.upload_id().ok_or_else(|| StorageError::Refused {
                op: "put_write",
                message: "CreateMultipartUpload answered without an upload id".into(),
            })?;
            self.multipart = Some(Multipart {
                upload_id: upload_id.to_string(),
                next_part: 1,
                running: JoinSet::new(),
                done: Vec::new(),
            });
        }
        let concurrency = self.inner.cfg.upload_concurrency;
        let Some(mp) = self.multipart.as_mut() else {
            return Err(StorageError::Refused {
                op: "put_write",
                message: "no multipart upload".into(),
            });
        };
        while mp.running.len() >= concurrency {
            collect_one(mp).await?;
        }
        let number = mp.next_part;
        mp.next_part += 1;
        let (inner, object, key, id) = (
            self.inner.clone(),
            self.object.clone(),
            self.key.clone(),
            mp.upload_id.clone(),
        );
        mp.running.spawn(async move {
            let out = inner
                .client
                .upload_part()
                .bucket(&inner.cfg.bucket)
                .key(&object)
                .upload_id(id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(|e| inner.error("put_write", &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                .build())
        });
        Ok(())
    }

    async fn finish_inner(&mut self) -> Result<(), StorageError> {
        if let Some(why) = &self.broken {
            return Err(StorageError::Refused {
                op: "put_finish",
                message: format!("the upload failed earlier: {why}"),
            });
        }
        let if_absent = self.mode == PutMode::IfAbsent;
        let conditional = if_absent && self.inner.cfg.conditional_writes;
        if if_absent && !conditional {
            // The fallback: look first (racy, see the module's documentation).
            match self.compare_existing("put_finish").await {
                Err(StorageError::NotFound { .. }) => {}
                other => return other,
            }
        }
        if self.multipart.is_none() {
            return self.put_single(conditional).await;
        }
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.send_part(last).await?;
        }
        self.complete(conditional).await
    }

    async fn put_single(&mut self, conditional: bool) -> Result<(), StorageError> {
        // Shared, not copied, by each attempt.
        let body = bytes::Bytes::from(std::mem::take(&mut self.buf));
        let c = &self.inner.cfg;
        for attempt in 1..=CONFLICT_ATTEMPTS {
            let mut req = self
                .inner
                .client
                .put_object()
                .bucket(&c.bucket)
                .key(&self.object)
                .body(ByteStream::from(body.clone()))
                .set_server_side_encryption(c.sse.clone())
                .set_ssekms_key_id(c.sse_kms_key_id.clone())
                .set_storage_class(c.storage_class.clone());
            if conditional {
                req = req.if_none_match("*");
            }
            match req.send().await {
                Ok(_) => return Ok(()),
                Err(e) => match precondition(&e) {
                    Some(Precondition::Exists) => return self.compare_existing("put_finish").await,
                    Some(Precondition::Conflict) if attempt < CONFLICT_ATTEMPTS => {
                        tokio::time::sleep(conflict_pause(attempt)).await;
                    }
                    _ => return Err(self.inner.error("put_finish", &self.key, e)),
                },
            }
        }
        self.compare_existing("put_finish").await
    }

    async fn complete(&mut self, conditional: bool) -> Result<(), StorageError> {
        let Some(mut mp) = self.multipart.take() else {
            return Err(StorageError::Refused {
                op: "put_finish",
                message: "no multipart upload".into(),
            });
        };
        let r = self.complete_inner(&mut mp, conditional).await;
        if !mp.upload_id.is_empty() {
            // Not completed (an error, or the object existed): `finish` aborts it.
            self.multipart = Some(mp);
        }
        r
    }

    /// Waits for the parts and completes; clears `upload_id` once the upload became the object.
    async fn complete_inner(
        &mut self,
        mp: &mut Multipart,
        conditional: bool,
    ) -> Result<(), StorageError> {
        while !mp.running.is_empty() {
            collect_one(mp).await?;
        }
        let mut parts = std::mem::take(&mut mp.done);
        parts.sort_by_key(|p| p.part_number());
        let done = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        for attempt in 1..=CONFLICT_ATTEMPTS {
            let mut req = self
                .inner
                .client
                .complete_multipart_upload()
                .bucket(&self.inner.cfg.bucket)
                .key(&self.object)
                .upload_id(&mp.upload_id)
                .multipart_upload(done.clone());
            if conditional {
                req = req.if_none_match("*");
            }
            match req.send().await {
                Ok(_) => {
                    mp.upload_id.clear();
                    return Ok(());
                }
                Err(e) => match precondition(&e) {
                    Some(Precondition::Exists) => return self.compare_existing("put_finish").await,
                    Some(Precondition::Conflict) if attempt < CONFLICT_ATTEMPTS => {
                        tokio::time::sleep(conflict_pause(attempt)).await;
                    }
                    _ => return Err(self.inner.error("put_finish", &self.key, e)),
                },
            }
        }
        self.compare_existing("put_finish").await
    }

    /// Compares the object at the key with what this upload sent: `Ok` when the bytes are
    /// the same, `Exists` when not, `NotFound` when there is no object.
    async fn compare_existing(&self, op: &'static str) -> Result<(), StorageError> {
        let exists = || StorageError::Exists {
            key: self.key.clone(),
        };
        let out = self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.cfg.bucket)
            .key(&self.object)
            .send()
            .await
            .map_err(|e| self.inner.error(op, &self.key, e))?;
        if let Some(n) = out.content_length().and_then(|n| u64::try_from(n).ok()) {
            if n != self.size {
                return Err(exists());
            }
        }
        let mut body = out.body;
        let mut digest = blake3::Hasher::new();
        let mut read = 0u64;
        loop {
            let next = tokio::time::timeout(self.inner.cfg.timeout, body.next())
                .await
                .map_err(|_| StorageError::Timeout {
                    op,
                    after: self.inner.cfg.timeout,
                })?;
            match next {
                None => break,
                Some(Ok(b)) => {
                    read += b.len() as u64;
                    digest.update(&b);
                }
                Some(Err(e)) => {
                    return Err(StorageError::Unreachable {
                        op,
                        message: format!(
                            "reading the existing object to compare: {}",
                            aws_sdk_s3::error::DisplayErrorContext(&e)
                        ),
                    })
                }
            }
        }
        if read == self.size && digest.finalize() == self.digest.finalize() {
            Ok(())
        } else {
            Err(exists())
        }
    }

    async fn abort_multipart(&mut self) {
        if let Some(mut mp) = self.multipart.take() {
            mp.running.abort_all();
            while mp.running.join_next().await.is_some() {}
            abort_upload(&self.inner, &self.object, &mp.upload_id).await;
        }
    }
}

/// Pause before retrying a conditional write that met a concurrent one.
fn conflict_pause(attempt: u32) -> Duration {
    Duration::from_millis(100 * u64::from(attempt))
}

/// Waits for one running part and records it.
async fn collect_one(mp: &mut Multipart) -> Result<(), StorageError> {
    match mp.running.join_next().await {
        None => Ok(()),
        Some(Ok(Ok(part))) => {
            mp.done.push(part);
            Ok(())
        }
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(StorageError::Refused {
            op: "put_write",
            message: format!("a part upload task failed: {e}"),
        }),
    }
}

/// AbortMultipartUpload, best effort (a bucket lifecycle rule should clean up what a crash
/// leaves).
async fn abort_upload(inner: &Inner, object: &str, upload_id: &str) {
    if upload_id.is_empty() {
        return;
    }
    // A few tries: an upload left open costs storage until a lifecycle rule removes it.
    for attempt in 1..=3u64 {
        let r = inner
            .client
            .abort_multipart_upload()
            .bucket(&inner.cfg.bucket)
            .key(object)
            .upload_id(upload_id)
            .send()
            .await;
        match r {
            Ok(_) => return,
            Err(e) => {
                let text = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
                if text.contains("NoSuchUpload") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        if let Some(why) = &self.broken {
            return Err(StorageError::Refused {
                op: "put_write",
                message: format!("the upload failed earlier: {why}"),
            });
        }
        // Marked broken until the write returns: a write cancelled half-way (a deadline) leaves
        // an upload that can only be aborted.
        self.broken = Some("a write was interrupted".into());
        let r = self.write_inner(chunk).await;
        self.broken = r.as_ref().err().map(|e| e.to_string());
        r
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        let r = self.finish_inner().await;
        // A multipart upload that did not become the object (an error, or an equal object
        // was there already): its parts go.
        self.abort_multipart().await;
        r
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_multipart().await;
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Dropped without finish or abort (or a finish that was cancelled): abort the multipart
        // upload in the background, if there is a runtime to do it on.
        let Some(mut mp) = self.multipart.take() else {
            return;
        };
        mp.running.abort_all();
        if mp.upload_id.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (inner, object) = (self.inner.clone(), self.object.clone());
            rt.spawn(async move { abort_upload(&inner, &object, &mp.upload_id).await });
        }
    }
}
