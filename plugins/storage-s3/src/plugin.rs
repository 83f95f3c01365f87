//! [`S3Storage`] behind the blocking plugin calls: each call runs on the plugin's own tokio
//! runtime (two worker threads) until its deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use spilo_sdk::plugin::runtime::PluginRuntime;
use spilo_sdk::plugin::{PluginError, StoragePlugin};
use spilo_sdk::storage::{Download, ListPage, PutMode, Storage, StorageError, Upload};

use crate::{S3Settings, S3Storage};

/// How long `create` may take (building the client makes no request when the region and
/// credentials are in the settings; otherwise the AWS chain may ask the instance metadata).
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an abort may take.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The plugin: the S3 backend on a runtime of its own.
pub struct S3Plugin {
    // Dropped first: the runtime shuts down before the client goes.
    rt: PluginRuntime,
    storage: S3Storage,
}

fn to_plugin(e: StorageError) -> PluginError {
    match e {
        StorageError::NotFound { key } => PluginError::not_found(format!("no object {key}")),
        StorageError::Exists { key } => {
            PluginError::exists(format!("{key} exists with different content"))
        }
        StorageError::Timeout { op, after } => {
            PluginError::timeout(format!("{op} timed out after {after:?}"))
        }
        StorageError::Unreachable { op, message } => {
            PluginError::unavailable(format!("{op}: {message}"))
        }
        StorageError::Refused { op, message } => PluginError::refused(format!("{op}: {message}")),
    }
}

impl S3Plugin {
    /// Runs `f` on the runtime until `deadline`.
    fn call<T>(
        &self,
        deadline: Instant,
        f: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, PluginError> {
        self.rt.call(deadline, async { f.await.map_err(to_plugin) })
    }
}

impl StoragePlugin for S3Plugin {
    type Upload = Box<dyn Upload>;
    type Download = Box<dyn Download>;

    fn create(config: &serde_json::Value) -> Result<Self, PluginError> {
        let settings =
            S3Settings::from_json(config).map_err(|e| PluginError::invalid(e.to_string()))?;
        let rt = PluginRuntime::new("spilo-s3", 2)?;
        let storage = match rt.run_for(CREATE_TIMEOUT, S3Storage::new(&settings))? {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Err(PluginError::invalid(e.to_string())),
            None => {
                return Err(PluginError::timeout(format!(
                    "building the S3 client took more than {CREATE_TIMEOUT:?}"
                )))
            }
        };
        Ok(S3Plugin { rt, storage })
    }

    fn put_open(
        &self,
        key: &str,
        mode: PutMode,
        d: Instant,
    ) -> Result<Box<dyn Upload>, PluginError> {
        self.call(d, self.storage.put_open(key, mode))
    }

    fn put_write(
        &self,
        up: &mut Box<dyn Upload>,
        chunk: &[u8],
        d: Instant,
    ) -> Result<(), PluginError> {
        self.call(d, up.write(chunk))
    }

    fn put_finish(&self, up: Box<dyn Upload>, d: Instant) -> Result<(), PluginError> {
        self.call(d, up.finish())
    }

    fn put_abort(&self, up: Box<dyn Upload>) {
        let _ = self.call(Instant::now() + ABORT_TIMEOUT, async {
            up.abort().await;
            Ok(())
        });
    }

    fn get_open(&self, key: &str, d: Instant) -> Result<(Box<dyn Download>, u64), PluginError> {
        let down = self.call(d, self.storage.get_open(key))?;
        let size = down.size();
        Ok((down, size))
    }

    fn get_read(
        &self,
        down: &mut Box<dyn Download>,
        max: usize,
        d: Instant,
    ) -> Result<Vec<u8>, PluginError> {
        self.call(d, down.read(max))
    }

    fn get_close(&self, down: Box<dyn Download>) {
        // Dropped inside the runtime: the body's connection is released there.
        if let Ok(rt) = self.rt.get() {
            let _guard = rt.enter();
            drop(down);
        }
    }

    fn head(&self, key: &str, d: Instant) -> Result<u64, PluginError> {
        self.call(d, self.storage.head(key))
    }

    fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: u32,
        d: Instant,
    ) -> Result<ListPage, PluginError> {
        let after = (!after.is_empty()).then_some(after);
        self.call(d, self.storage.list(prefix, after, limit))
    }

    fn delete(&self, key: &str, d: Instant) -> Result<(), PluginError> {
        self.call(d, self.storage.delete(key))
    }
}
