//! `plugins/storage-fs` as a storage plugin: `libspilo_storage_fs_plugin.so`, named `fs`,
//! configured with `{"path": "/dir"}`.

spilo_sdk::export_storage_plugin!(
    spilo_storage_fs::FsPlugin,
    name = "fs",
    version = env!("CARGO_PKG_VERSION")
);
