//! Writing a storage plugin in Rust: implement [`StoragePlugin`] (blocking calls, each with a
//! deadline) and export it with [`export_storage_plugin!`](crate::export_storage_plugin).
//! Uploads and downloads are the plugin's own types; the shims box them into handles.
//!
//! ```ignore
//! spilo_sdk::export_storage_plugin!(MyStore, name = "mystore", version = "1.0");
//! ```

use std::time::Instant;

use super::{create_shim, deadline, destroy_shim, free_buf, give, guarded, quietly, text};
use super::{Instance, PluginError};
use crate::abi::{self, Buf, Bytes, Handle, ListPage, StorageVTable};
use crate::storage::PutMode;

/// A storage backend behind the C ABI: the contract of [`crate::storage`] as blocking calls.
pub trait StoragePlugin: Send + Sync + 'static {
    /// An upload in progress.
    type Upload: Send + 'static;
    /// A download in progress.
    type Download: Send + 'static;
    /// Builds the backend from the `config` section of the host's JSON.
    fn create(config: &serde_json::Value) -> Result<Self, PluginError>
    where
        Self: Sized;
    /// Starts an upload.
    fn put_open(
        &self,
        key: &str,
        mode: PutMode,
        deadline: Instant,
    ) -> Result<Self::Upload, PluginError>;
    /// Appends a chunk.
    fn put_write(
        &self,
        upload: &mut Self::Upload,
        chunk: &[u8],
        deadline: Instant,
    ) -> Result<(), PluginError>;
    /// Makes the object durable and visible ([`PluginError::exists`] for a put-if-absent that
    /// found different content).
    fn put_finish(&self, upload: Self::Upload, deadline: Instant) -> Result<(), PluginError>;
    /// Drops an upload.
    fn put_abort(&self, upload: Self::Upload);
    /// Opens an object: the download and the object's size ([`PluginError::not_found`]).
    fn get_open(&self, key: &str, deadline: Instant) -> Result<(Self::Download, u64), PluginError>;
    /// The next chunk of at most `max` bytes; empty at the end.
    fn get_read(
        &self,
        download: &mut Self::Download,
        max: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, PluginError>;
    /// Ends a download.
    fn get_close(&self, download: Self::Download);
    /// The size of an object.
    fn head(&self, key: &str, deadline: Instant) -> Result<u64, PluginError>;
    /// One page of keys under `prefix` after `start_after`.
    fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
        deadline: Instant,
    ) -> Result<ListPage, PluginError>;
    /// Deletes an object.
    fn delete(&self, key: &str, deadline: Instant) -> Result<(), PluginError>;
}

/// The instance behind a storage plugin's handle.
#[repr(transparent)]
pub struct StorageInstance<T>(T);

impl<T: StoragePlugin> Instance for StorageInstance<T> {
    fn from_json(json: &[u8]) -> Result<Self, PluginError> {
        let v: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| PluginError::invalid(format!("plugin configuration: {e}")))?;
        let config = v.get("config").cloned().unwrap_or(serde_json::Value::Null);
        Ok(StorageInstance(T::create(&config)?))
    }
}

/// # Safety
/// `h` must be a live handle of `StorageInstance<T>`.
unsafe fn plugin<'a, T: StoragePlugin>(h: Handle) -> &'a T {
    // SAFETY: per the caller.
    &unsafe { super::instance::<StorageInstance<T>>(h) }.0
}

fn out_handle<U>(out: *mut Handle, value: U) -> Result<(), PluginError> {
    if out.is_null() {
        return Err(PluginError::invalid("null output handle"));
    }
    // SAFETY: `out` is valid for the call.
    unsafe { *out = Box::into_raw(Box::new(value)) as Handle };
    Ok(())
}

/// # Safety
/// `h` must be a live sub-handle made by `out_handle::<U>`.
unsafe fn sub<'a, U>(h: Handle) -> Result<&'a mut U, PluginError> {
    if h.is_null() {
        return Err(PluginError::invalid("null upload or download handle"));
    }
    // SAFETY: per the caller.
    Ok(unsafe { &mut *(h as *mut U) })
}

/// # Safety
/// As [`sub`]; the handle is consumed.
unsafe fn take_sub<U>(h: Handle) -> Result<U, PluginError> {
    if h.is_null() {
        return Err(PluginError::invalid("null upload or download handle"));
    }
    // SAFETY: per the caller; the host ends each handle once.
    Ok(*unsafe { Box::from_raw(h as *mut U) })
}

unsafe extern "C" fn put_open_shim<T: StoragePlugin>(
    h: Handle,
    key: Bytes,
    mode: u32,
    timeout_ms: u64,
    upload: *mut Handle,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, key) = unsafe { (plugin::<T>(h), text(key, "key")?) };
        let mode = PutMode::from_code(mode)
            .ok_or_else(|| PluginError::invalid(format!("unknown put mode {mode}")))?;
        out_handle(upload, p.put_open(key, mode, deadline(timeout_ms))?)
    })
}

unsafe extern "C" fn put_write_shim<T: StoragePlugin>(
    h: Handle,
    upload: Handle,
    chunk: Bytes,
    timeout_ms: u64,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, up, chunk) =
            unsafe { (plugin::<T>(h), sub::<T::Upload>(upload)?, chunk.as_slice()) };
        p.put_write(up, chunk, deadline(timeout_ms))
    })
}

unsafe extern "C" fn put_finish_shim<T: StoragePlugin>(
    h: Handle,
    upload: Handle,
    timeout_ms: u64,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, up) = unsafe { (plugin::<T>(h), take_sub::<T::Upload>(upload)?) };
        p.put_finish(up, deadline(timeout_ms))
    })
}

unsafe extern "C" fn put_abort_shim<T: StoragePlugin>(h: Handle, upload: Handle) {
    quietly(|| {
        // SAFETY: per the ABI contract.
        if let Ok(up) = unsafe { take_sub::<T::Upload>(upload) } {
            // SAFETY: as above.
            unsafe { plugin::<T>(h) }.put_abort(up);
        }
    });
}

unsafe extern "C" fn get_open_shim<T: StoragePlugin>(
    h: Handle,
    key: Bytes,
    timeout_ms: u64,
    download: *mut Handle,
    size: *mut u64,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, key) = unsafe { (plugin::<T>(h), text(key, "key")?) };
        let (d, n) = p.get_open(key, deadline(timeout_ms))?;
        if !size.is_null() {
            // SAFETY: valid for the call.
            unsafe { *size = n };
        }
        out_handle(download, d)
    })
}

unsafe extern "C" fn get_read_shim<T: StoragePlugin>(
    h: Handle,
    download: Handle,
    max: u64,
    timeout_ms: u64,
    out: *mut Buf,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, d) = unsafe { (plugin::<T>(h), sub::<T::Download>(download)?) };
        let max = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        let chunk = p.get_read(d, max, deadline(timeout_ms))?;
        give(out, chunk);
        Ok(())
    })
}

unsafe extern "C" fn get_close_shim<T: StoragePlugin>(h: Handle, download: Handle) {
    quietly(|| {
        // SAFETY: per the ABI contract.
        if let Ok(d) = unsafe { take_sub::<T::Download>(download) } {
            // SAFETY: as above.
            unsafe { plugin::<T>(h) }.get_close(d);
        }
    });
}

unsafe extern "C" fn head_shim<T: StoragePlugin>(
    h: Handle,
    key: Bytes,
    timeout_ms: u64,
    size: *mut u64,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, key) = unsafe { (plugin::<T>(h), text(key, "key")?) };
        let n = p.head(key, deadline(timeout_ms))?;
        if !size.is_null() {
            // SAFETY: valid for the call.
            unsafe { *size = n };
        }
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn list_shim<T: StoragePlugin>(
    h: Handle,
    prefix: Bytes,
    start_after: Bytes,
    limit: u32,
    timeout_ms: u64,
    out: *mut Buf,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, prefix, after) = unsafe {
            (
                plugin::<T>(h),
                text(prefix, "prefix")?,
                text(start_after, "start_after")?,
            )
        };
        let page = p.list(prefix, after, limit, deadline(timeout_ms))?;
        give(out, abi::encode_list_page(&page));
        Ok(())
    })
}

unsafe extern "C" fn delete_shim<T: StoragePlugin>(
    h: Handle,
    key: Bytes,
    timeout_ms: u64,
    err: *mut Buf,
) -> u32 {
    guarded(err, || {
        // SAFETY: per the ABI contract.
        let (p, key) = unsafe { (plugin::<T>(h), text(key, "key")?) };
        p.delete(key, deadline(timeout_ms))
    })
}

/// The vtable of `T` (used by [`export_storage_plugin!`](crate::export_storage_plugin)).
pub const fn storage_vtable<T: StoragePlugin>() -> StorageVTable {
    StorageVTable {
        header: abi::AbiHeader::of::<StorageVTable>(),
        create: Some(create_shim::<StorageInstance<T>>),
        destroy: Some(destroy_shim::<StorageInstance<T>>),
        put_open: Some(put_open_shim::<T>),
        put_write: Some(put_write_shim::<T>),
        put_finish: Some(put_finish_shim::<T>),
        put_abort: Some(put_abort_shim::<T>),
        get_open: Some(get_open_shim::<T>),
        get_read: Some(get_read_shim::<T>),
        get_close: Some(get_close_shim::<T>),
        head: Some(head_shim::<T>),
        list: Some(list_shim::<T>),
        delete: Some(delete_shim::<T>),
        free_buf: Some(free_buf),
    }
}

/// Exports `$ty` (a [`StoragePlugin`]) as this library's plugin:
/// `export_storage_plugin!(MyStore, name = "mystore", version = "1.0");`
#[macro_export]
macro_rules! export_storage_plugin {
    ($ty:ty, name = $name:expr, version = $version:expr) => {
        $crate::__export_descriptor!(
            $crate::abi::KIND_STORAGE,
            $crate::abi::StorageVTable,
            $crate::plugin::storage::storage_vtable::<$ty>(),
            $name,
            $version
        );
    };
}
