//! `plugins/storage-s3` as a storage plugin: `libspilo_storage_s3_plugin.so`, named `s3`,
//! configured with the settings of `spilo_storage_s3::S3Settings` (`{"bucket": "b", ...}`).
//! The plugin runs the async backend on a small tokio runtime of its own.

spilo_sdk::export_storage_plugin!(
    spilo_storage_s3::S3Plugin,
    name = "s3",
    version = env!("CARGO_PKG_VERSION")
);
