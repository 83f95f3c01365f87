//! Storage conformance: one set of tests, generic over a [`StorageBackend`], run against the
//! filesystem backend in-process (`plugins/storage-fs`) and the same backend built as a plugin
//! and loaded through spilo's loader and adapter (`libspilo_storage_fs_plugin.so`).

use async_trait::async_trait;
use spilo_core::plugin::loader;
use spilo_core::plugin::storage::PluginStorage;
use spilo_sdk::storage::{get_all, put_all, PutMode, Storage, StorageError};
use spilo_tests::bins::plugin_lib;
use std::time::Duration;

/// One storage backend under test: a fresh, empty store per test.
#[async_trait]
pub trait StorageBackend: Sized + Send + Sync + 'static {
    /// Name used in messages.
    const NAME: &'static str;
    /// Makes an empty store in `dir`.
    async fn open(dir: &std::path::Path) -> Box<dyn Storage>;
}

/// `plugins/storage-fs`, in-process.
pub struct FsInProcess;

#[async_trait]
impl StorageBackend for FsInProcess {
    const NAME: &'static str = "storage-fs in-process";
    async fn open(dir: &std::path::Path) -> Box<dyn Storage> {
        Box::new(spilo_storage_fs::FsStorage::open(dir).expect("open the store"))
    }
}

/// `plugins/storage-fs` built as a plugin, through the loader and the adapter.
pub struct FsThroughPlugin;

#[async_trait]
impl StorageBackend for FsThroughPlugin {
    const NAME: &'static str = "storage-fs as a plugin";
    async fn open(dir: &std::path::Path) -> Box<dyn Storage> {
        let path = plugin_lib("libspilo_storage_fs_plugin.so");
        let p = loader::load(&path, "fs", "storage").unwrap_or_else(|e| panic!("{e}"));
        let settings = serde_json::json!({ "path": dir.display().to_string() });
        Box::new(
            PluginStorage::connect(&p, settings, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("connect: {e}")),
        )
    }
}

async fn store<B: StorageBackend>() -> (tempfile::TempDir, Box<dyn Storage>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = B::open(dir.path()).await;
    (dir, s)
}

/// Bytes that differ at every offset, so a misplaced chunk is caught.
fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// A put streamed in chunks reads back byte for byte, in chunks of another size; head gives
/// its size.
pub async fn streamed_put_and_get_round_trip<B: StorageBackend>() {
    let (_dir, s) = store::<B>().await;
    let data = body(1_000_003, 7);
    let mut up = s
        .put_open("base/b1/data.tar", PutMode::Overwrite)
        .await
        .expect("put_open");
    for chunk in data.chunks(64 * 1024) {
        up.write(chunk).await.expect("write");
    }
    up.finish().await.expect("finish");
    assert_eq!(s.head("base/b1/data.tar").await.expect("head"), 1_000_003);
    let mut down = s.get_open("base/b1/data.tar").await.expect("get_open");
    assert_eq!(down.size(), 1_000_003);
    let mut back = Vec::new();
    loop {
        let c = down.read(100_000).await.expect("read");
        assert!(c.len() <= 100_000, "[{}] read more than asked", B::NAME);
        if c.is_empty() {
            break;
        }
        back.extend_from_slice(&c);
    }
    assert!(back == data, "[{}] the object read back differs", B::NAME);
}

/// Nothing is visible before `finish`; an aborted or dropped upload leaves nothing.
pub async fn unfinished_uploads_are_invisible<B: StorageBackend>() {
    let (dir, s) = store::<B>().await;
    let mut up = s
        .put_open("wal/1", PutMode::IfAbsent)
        .await
        .expect("put_open");
    up.write(b"half").await.expect("write");
    assert!(matches!(
        s.head("wal/1").await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(s
        .list("", None, 100)
        .await
        .expect("list")
        .objects
        .is_empty());
    up.abort().await;
    let dropped = s
        .put_open("wal/2", PutMode::Overwrite)
        .await
        .expect("put_open");
    drop(dropped);
    // The abort of a dropped upload may run on another thread: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s
        .list("", None, 100)
        .await
        .expect("list")
        .objects
        .is_empty());
    let leftovers = std::fs::read_dir(dir.path().join(".tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "[{}] temporary files left behind", B::NAME);
}

/// Put-if-absent: the same content again is success, different content is `Exists` and
/// leaves the object as it was; an overwrite replaces it.
pub async fn put_if_absent_never_replaces<B: StorageBackend>() {
    let (_dir, s) = store::<B>().await;
    let key = "wal/000000010000000000000001";
    put_all(s.as_ref(), key, PutMode::IfAbsent, b"segment A")
        .await
        .expect("first put");
    put_all(s.as_ref(), key, PutMode::IfAbsent, b"segment A")
        .await
        .expect("the same content again is success");
    let other = put_all(s.as_ref(), key, PutMode::IfAbsent, b"segment B").await;
    assert!(
        matches!(other, Err(StorageError::Exists { .. })),
        "[{}] different content at an existing key: {other:?}",
        B::NAME
    );
    assert_eq!(
        get_all(s.as_ref(), key, 4).await.expect("get"),
        b"segment A"
    );
    put_all(s.as_ref(), key, PutMode::Overwrite, b"replaced")
        .await
        .expect("overwrite");
    assert_eq!(get_all(s.as_ref(), key, 4).await.expect("get"), b"replaced");
}

/// Missing objects are `NotFound` for get, head and delete; delete removes.
pub async fn missing_objects_are_not_found<B: StorageBackend>() {
    let (_dir, s) = store::<B>().await;
    assert!(matches!(
        s.get_open("nope").await.err(),
        Some(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        s.head("nope").await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete("nope").await,
        Err(StorageError::NotFound { .. })
    ));
    put_all(s.as_ref(), "x/y", PutMode::Overwrite, b"1")
        .await
        .expect("put");
    s.delete("x/y").await.expect("delete");
    assert!(matches!(
        s.head("x/y").await,
        Err(StorageError::NotFound { .. })
    ));
}

/// Listing is by prefix, sorted, and paginated: pages of `limit` after `start_after`, `more`
/// until the last.
pub async fn list_paginates_by_prefix_in_key_order<B: StorageBackend>() {
    let (_dir, s) = store::<B>().await;
    for i in (0..25).rev() {
        put_all(
            s.as_ref(),
            &format!("wal/{i:04}"),
            PutMode::IfAbsent,
            &vec![1u8; i],
        )
        .await
        .expect("put");
    }
    put_all(s.as_ref(), "base/b1", PutMode::IfAbsent, b"x")
        .await
        .expect("put");
    put_all(s.as_ref(), "walnut", PutMode::IfAbsent, b"x")
        .await
        .expect("put");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s.list("wal/", after.as_deref(), 10).await.expect("list");
        pages += 1;
        assert!(page.objects.len() <= 10);
        seen.extend(page.objects.iter().cloned());
        after = page.objects.last().map(|o| o.0.clone());
        if !page.more {
            break;
        }
        assert!(pages < 10, "[{}] pagination does not end", B::NAME);
    }
    assert_eq!(pages, 3, "[{}] 25 keys in pages of 10", B::NAME);
    let want: Vec<(String, u64)> = (0..25).map(|i| (format!("wal/{i:04}"), i as u64)).collect();
    assert_eq!(seen, want, "[{}] keys, sizes, order", B::NAME);
}

/// Keys that are not plain relative paths are refused before anything is written.
pub async fn bad_keys_are_refused<B: StorageBackend>() {
    let (dir, s) = store::<B>().await;
    for bad in ["../escape", "/abs", "a//b", ""] {
        let r = s.put_open(bad, PutMode::Overwrite).await;
        assert!(
            matches!(r, Err(StorageError::Refused { .. })),
            "[{}] key {bad:?} accepted",
            B::NAME
        );
    }
    assert!(!dir.path().parent().expect("parent").join("escape").exists());
}
