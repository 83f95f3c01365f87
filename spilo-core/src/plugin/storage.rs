//! A storage plugin behind the async [`Storage`] trait, through the generic blocking-call
//! [`Instance`]. Uploads and downloads hold the instance, so it outlives them; an upload
//! dropped without `finish` or `abort` is aborted on a blocking thread.

use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spilo_sdk::abi::{self, Buf, Bytes, ListPage, StorageVTable};
use spilo_sdk::storage::{Download, PutMode, Storage, StorageError, Upload};

use crate::plugin::adapter::{null_entry, Class, Failure, Instance, RawHandle};
use crate::plugin::loader::LoadedPlugin;

/// A [`Storage`] backed by a loaded plugin.
pub struct PluginStorage {
    inner: Arc<Instance>,
    vt: &'static StorageVTable,
    name: String,
}

fn storage_error(op: &'static str, key: &str, f: Failure) -> StorageError {
    match f {
        Failure::Status { code, .. } if code == abi::STATUS_NOT_FOUND => StorageError::NotFound {
            key: key.to_string(),
        },
        Failure::Status { code, .. } if code == abi::STATUS_EXISTS => StorageError::Exists {
            key: key.to_string(),
        },
        other => match other.class() {
            Class::Unreachable(message) => StorageError::Unreachable { op, message },
            Class::Timeout(after) => StorageError::Timeout { op, after },
            Class::Refused(message) => StorageError::Refused { op, message },
        },
    }
}

/// Turns a status and its message buffer into a result.
fn check(i: &Instance, status: u32, err: Buf) -> Result<(), Failure> {
    if status == abi::STATUS_OK {
        i.take(err);
        Ok(())
    } else {
        Err(i.status(status, err))
    }
}

impl PluginStorage {
    /// Creates an instance of `plugin` with its settings; each call gets `timeout`.
    pub async fn connect(
        plugin: &LoadedPlugin,
        settings: serde_json::Value,
        timeout: Duration,
    ) -> Result<PluginStorage, StorageError> {
        let vt = plugin.storage.ok_or_else(|| StorageError::Refused {
            op: "connect",
            message: format!(
                "plugin {} ({}) is a {} plugin, not a storage plugin",
                plugin.name,
                plugin.path.display(),
                plugin.kind
            ),
        })?;
        let (Some(create), Some(destroy), Some(free)) = (vt.create, vt.destroy, vt.free_buf) else {
            return Err(StorageError::Refused {
                op: "connect",
                message: format!("plugin {}: NULL entry points", plugin.name),
            });
        };
        let config = serde_json::json!({ "config": settings }).to_string();
        let inner = Instance::create(plugin, create, destroy, free, config, timeout)
            .await
            .map_err(|f| storage_error("connect", "", f))?;
        Ok(PluginStorage {
            inner,
            vt,
            name: plugin.name.clone(),
        })
    }
}

#[async_trait]
impl Storage for PluginStorage {
    fn backend(&self) -> &str {
        &self.name
    }

    async fn put_open(&self, key: &str, mode: PutMode) -> Result<Box<dyn Upload>, StorageError> {
        let vt = self.vt;
        let k = key.to_string();
        let handle = self
            .inner
            .run(move |i, ms| {
                let f = vt.put_open.ok_or_else(|| null_entry(i, "put_open"))?;
                let (mut up, mut err): (*mut c_void, Buf) = (std::ptr::null_mut(), Buf::empty());
                // SAFETY: per the ABI; `k` outlives the call, out-pointers to locals.
                let status = unsafe {
                    f(
                        i.handle.0,
                        Bytes::of(k.as_bytes()),
                        mode.code(),
                        ms,
                        &mut up,
                        &mut err,
                    )
                };
                check(i, status, err)?;
                if up.is_null() {
                    return Err(Failure::Crashed {
                        message: format!("{}: put_open returned a NULL upload", i.label),
                    });
                }
                Ok(RawHandle(up))
            })
            .await
            .map_err(|f| storage_error("put_open", key, f))?;
        Ok(Box::new(PluginUpload {
            inner: self.inner.clone(),
            vt,
            key: key.to_string(),
            handle: Some(handle),
        }))
    }

    async fn get_open(&self, key: &str) -> Result<Box<dyn Download>, StorageError> {
        let vt = self.vt;
        let k = key.to_string();
        let (handle, size) = self
            .inner
            .run(move |i, ms| {
                let f = vt.get_open.ok_or_else(|| null_entry(i, "get_open"))?;
                let (mut down, mut size, mut err) = (std::ptr::null_mut(), 0u64, Buf::empty());
                // SAFETY: per the ABI; out-pointers to locals.
                let status = unsafe {
                    f(
                        i.handle.0,
                        Bytes::of(k.as_bytes()),
                        ms,
                        &mut down,
                        &mut size,
                        &mut err,
                    )
                };
                check(i, status, err)?;
                if down.is_null() {
                    return Err(Failure::Crashed {
                        message: format!("{}: get_open returned a NULL download", i.label),
                    });
                }
                Ok((RawHandle(down), size))
            })
            .await
            .map_err(|f| storage_error("get_open", key, f))?;
        Ok(Box::new(PluginDownload {
            inner: self.inner.clone(),
            vt,
            key: key.to_string(),
            handle: Some(handle),
            size,
        }))
    }

    async fn head(&self, key: &str) -> Result<u64, StorageError> {
        let vt = self.vt;
        let k = key.to_string();
        self.inner
            .run(move |i, ms| {
                let f = vt.head.ok_or_else(|| null_entry(i, "head"))?;
                let (mut size, mut err) = (0u64, Buf::empty());
                // SAFETY: per the ABI.
                let status =
                    unsafe { f(i.handle.0, Bytes::of(k.as_bytes()), ms, &mut size, &mut err) };
                check(i, status, err).map(|()| size)
            })
            .await
            .map_err(|f| storage_error("head", key, f))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<ListPage, StorageError> {
        let vt = self.vt;
        let (p, a) = (prefix.to_string(), start_after.unwrap_or("").to_string());
        self.inner
            .run(move |i, ms| {
                let f = vt.list.ok_or_else(|| null_entry(i, "list"))?;
                let (mut out, mut err) = (Buf::empty(), Buf::empty());
                // SAFETY: per the ABI.
                let status = unsafe {
                    f(
                        i.handle.0,
                        Bytes::of(p.as_bytes()),
                        Bytes::of(a.as_bytes()),
                        limit,
                        ms,
                        &mut out,
                        &mut err,
                    )
                };
                let out = i.take(out);
                check(i, status, err)?;
                let page = abi::decode_list_page(&out).map_err(|e| Failure::Crashed {
                    message: format!("{}: unreadable list page: {e}", i.label),
                })?;
                if page.objects.len() > limit as usize {
                    return Err(Failure::Crashed {
                        message: format!(
                            "{}: list returned {} keys, more than the limit {limit}",
                            i.label,
                            page.objects.len()
                        ),
                    });
                }
                Ok(page)
            })
            .await
            .map_err(|f| storage_error("list", prefix, f))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let vt = self.vt;
        let k = key.to_string();
        self.inner
            .run(move |i, ms| {
                let f = vt.delete.ok_or_else(|| null_entry(i, "delete"))?;
                let mut err = Buf::empty();
                // SAFETY: per the ABI.
                let status = unsafe { f(i.handle.0, Bytes::of(k.as_bytes()), ms, &mut err) };
                check(i, status, err)
            })
            .await
            .map_err(|f| storage_error("delete", key, f))
    }
}

/// An upload through a plugin.
struct PluginUpload {
    inner: Arc<Instance>,
    vt: &'static StorageVTable,
    key: String,
    /// `None` once finished or aborted.
    handle: Option<RawHandle>,
}

impl Drop for PluginUpload {
    fn drop(&mut self) {
        if let (Some(up), Some(abort)) = (self.handle.take(), self.vt.put_abort) {
            let inner = self.inner.clone();
            // Abort off the async threads: the plugin may block.
            let _ = std::thread::Builder::new()
                .name("spilo-plugin-abort".into())
                // SAFETY: per the ABI; the upload handle is ended once.
                .spawn(move || unsafe { abort(inner.handle.ptr(), up.ptr()) });
        }
    }
}

#[async_trait]
impl Upload for PluginUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.write_owned(chunk.to_vec()).await
    }

    async fn write_owned(&mut self, chunk: Vec<u8>) -> Result<(), StorageError> {
        let Some(up) = self.handle else {
            return Err(StorageError::Refused {
                op: "put_write",
                message: "upload already ended".into(),
            });
        };
        let vt = self.vt;
        self.inner
            .run(move |i, ms| {
                let f = vt.put_write.ok_or_else(|| null_entry(i, "put_write"))?;
                let mut err = Buf::empty();
                // SAFETY: per the ABI; `chunk` outlives the call.
                let status = unsafe { f(i.handle.0, up.ptr(), Bytes::of(&chunk), ms, &mut err) };
                check(i, status, err)
            })
            .await
            .map_err(|f| storage_error("put_write", &self.key, f))
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        let Some(up) = self.handle.take() else {
            return Err(StorageError::Refused {
                op: "put_finish",
                message: "upload already ended".into(),
            });
        };
        let vt = self.vt;
        self.inner
            .run(move |i, ms| {
                let f = vt.put_finish.ok_or_else(|| null_entry(i, "put_finish"))?;
                let mut err = Buf::empty();
                // SAFETY: per the ABI; the upload handle ends here.
                let status = unsafe { f(i.handle.0, up.ptr(), ms, &mut err) };
                check(i, status, err)
            })
            .await
            .map_err(|f| storage_error("put_finish", &self.key, f))
    }

    async fn abort(self: Box<Self>) {
        // Drop aborts.
    }
}

/// A download through a plugin.
struct PluginDownload {
    inner: Arc<Instance>,
    vt: &'static StorageVTable,
    key: String,
    handle: Option<RawHandle>,
    size: u64,
}

impl Drop for PluginDownload {
    fn drop(&mut self) {
        if let (Some(d), Some(close)) = (self.handle.take(), self.vt.get_close) {
            let inner = self.inner.clone();
            let _ = std::thread::Builder::new()
                .name("spilo-plugin-close".into())
                // SAFETY: per the ABI; the download handle is ended once.
                .spawn(move || unsafe { close(inner.handle.ptr(), d.ptr()) });
        }
    }
}

#[async_trait]
impl Download for PluginDownload {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&mut self, max: usize) -> Result<Vec<u8>, StorageError> {
        let Some(d) = self.handle else {
            return Ok(Vec::new());
        };
        let vt = self.vt;
        self.inner
            .run(move |i, ms| {
                let f = vt.get_read.ok_or_else(|| null_entry(i, "get_read"))?;
                let (mut out, mut err) = (Buf::empty(), Buf::empty());
                // SAFETY: per the ABI; out-pointers to locals.
                let status = unsafe { f(i.handle.0, d.ptr(), max as u64, ms, &mut out, &mut err) };
                let out = i.take(out);
                check(i, status, err)?;
                if out.len() > max {
                    return Err(Failure::Crashed {
                        message: format!(
                            "{}: get_read returned {} bytes, more than the {max} asked for",
                            i.label,
                            out.len()
                        ),
                    });
                }
                Ok(out)
            })
            .await
            .map_err(|f| storage_error("get_read", &self.key, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u32) -> Failure {
        Failure::Status {
            code,
            message: "plugin s (/s.so): said so".into(),
        }
    }

    #[test]
    fn plugin_statuses_map_to_storage_errors() {
        assert!(matches!(
            storage_error("head", "k", status(abi::STATUS_NOT_FOUND)),
            StorageError::NotFound { key } if key == "k"
        ));
        assert!(matches!(
            storage_error("put_finish", "k", status(abi::STATUS_EXISTS)),
            StorageError::Exists { .. }
        ));
        assert!(matches!(
            storage_error("list", "", status(abi::STATUS_UNAVAILABLE)),
            StorageError::Unreachable { .. }
        ));
        let odd = storage_error("get_read", "k", status(99)).to_string();
        assert!(
            odd.contains("/s.so") && odd.contains("unknown status 99"),
            "{odd}"
        );
        let busy = Failure::Busy {
            message: "plugin s (/s.so): earlier calls are still hanging inside the plugin".into(),
        };
        assert!(matches!(
            storage_error("head", "k", busy),
            StorageError::Unreachable { .. }
        ));
    }
}
