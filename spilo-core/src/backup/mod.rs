//! Backups and WAL on object storage: the stored form of WAL files ([`object`]), key layout
//! ([`layout`]), the daemon's archiver ([`archiver`]) and its socket ([`socket`]), cron
//! schedules ([`schedule`]), and opening the configured store ([`open_storage`]).

pub mod archiver;
pub mod base;
pub mod catalog;
pub mod layout;
pub mod object;
pub mod run;
pub mod schedule;
pub mod scheduler;
pub mod socket;

use std::sync::Arc;
use std::time::Duration;

use spilo_sdk::storage::{Storage, StorageError};

use crate::config::backup::StorageConfig;

/// Opens the store `storage:` names: `fs` in-process, or a loaded storage plugin (the `s3`
/// backend is a plugin of its own crate).
pub async fn open_storage(cfg: &StorageConfig) -> Result<Arc<dyn Storage>, StorageError> {
    match cfg.kind.as_str() {
        "fs" => {
            let path = cfg.path.clone().ok_or_else(|| StorageError::Refused {
                op: "open",
                message: "storage.path is required for type fs".into(),
            })?;
            Ok(Arc::new(spilo_storage_fs::FsStorage::open(path)?))
        }
        name => {
            let plugin = crate::plugin::get(name).ok_or_else(|| StorageError::Refused {
                op: "open",
                message: format!(
                    "storage type '{name}': no storage plugin of that name is loaded (list it under plugins:)"
                ),
            })?;
            let s = crate::plugin::storage::PluginStorage::connect(
                &plugin,
                cfg.backend_settings(),
                Duration::from_secs(60),
            )
            .await?;
            Ok(Arc::new(s))
        }
    }
}
