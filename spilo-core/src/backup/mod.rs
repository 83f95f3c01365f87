//! Backups and WAL on object storage: the stored form of WAL files ([`object`]), key layout
//! ([`layout`]), the daemon's archiver ([`archiver`]) and its socket ([`socket`]), cron
//! schedules ([`schedule`]), and opening the configured store ([`open_storage`]).

pub mod archiver;
pub mod base;
pub mod catalog;
pub mod clone;
pub mod crypt;
pub mod fetch;
pub mod layout;
pub mod object;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod scheduler;
pub mod socket;
pub mod tarscan;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use spilo_sdk::storage::{Storage, StorageError};

use crate::config::backup::StorageConfig;

/// The S3 backend's plugin file, looked for next to the running binary and in the usual
/// library directories when `type: s3` is used without a `plugins:` entry named `s3`. (S3
/// lives in a plugin so that nodes without it never map the AWS SDK.)
pub const S3_PLUGIN_FILE: &str = "libspilo_storage_s3_plugin.so";

/// Opens the store `storage:` names: `fs` in-process, `s3` through its plugin (found as
/// [`S3_PLUGIN_FILE`] unless `plugins:` names one `s3`), or any loaded storage plugin.
pub async fn open_storage(cfg: &StorageConfig) -> Result<Arc<dyn Storage>, StorageError> {
    match cfg.kind.as_str() {
        "fs" => {
            let path = cfg.path.clone().ok_or_else(|| StorageError::Refused {
                op: "open",
                message: "storage.path is required for type fs".into(),
            })?;
            Ok(Arc::new(spilo_storage_fs::FsStorage::open(path)?))
        }
        "s3" if crate::plugin::get("s3").is_none() => {
            let plugin = crate::plugin::load_bundled(
                S3_PLUGIN_FILE,
                "s3",
                "storage",
                "storage type s3: the S3 plugin",
            )
            .map_err(|e| StorageError::Refused {
                op: "open",
                message: e.to_string(),
            })?;
            connect(&plugin, cfg).await
        }
        name => {
            let plugin = crate::plugin::get(name).ok_or_else(|| StorageError::Refused {
                op: "open",
                message: format!(
                    "storage type '{name}': no storage plugin of that name is loaded (list it under plugins:)"
                ),
            })?;
            connect(&plugin, cfg).await
        }
    }
}

/// An instance of a storage plugin with the section's settings (each call bounded by 60 s;
/// the archiver and backups bound their own work more tightly).
async fn connect(
    plugin: &crate::plugin::LoadedPlugin,
    cfg: &StorageConfig,
) -> Result<Arc<dyn Storage>, StorageError> {
    let s = crate::plugin::storage::PluginStorage::connect(
        plugin,
        cfg.backend_settings(),
        Duration::from_secs(60),
    )
    .await?;
    Ok(Arc::new(s))
}
