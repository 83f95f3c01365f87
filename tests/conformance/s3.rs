//! The S3 storage backend (`plugins/storage-s3`) against real local S3 servers — moto in
//! server mode and s3s-fs — in-process and built as a plugin (`libspilo_storage_s3_plugin.so`
//! through spilo's loader and adapter): the storage conformance suite's backends, and the
//! S3-specific tests (multipart, put-if-absent over multipart, what the servers do with
//! `If-None-Match: *`, errors naming S3's code, a server that never answers, bad settings).
//!
//! Each test starts its own server (under a second) on a free port and makes a fresh bucket.
//! Parts are 64 KiB on moto (`allow_small_parts`; moto is started with
//! `S3_UPLOAD_PART_MIN_SIZE` lowered), so the suite's 1 MB object is a multipart upload there;
//! s3s-fs enforces S3's 5 MiB minimum, so its parts are 5 MiB.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use serde_json::{json, Value};
use spilo_core::plugin::loader;
use spilo_core::plugin::storage::PluginStorage;
use spilo_sdk::storage::{
    get_all, put_all, Download, ListPage, PutMode, Storage, StorageError, Upload,
};
use spilo_storage_s3::S3Storage;
use spilo_tests::bins::plugin_lib;
use spilo_tests::s3::{S3Kind, S3Server};

use crate::storage::StorageBackend;

/// The bucket every test makes.
const BUCKET: &str = "spilo-test";
/// The key prefix of the backends under test.
const PREFIX: &str = "cluster-a";
/// Part size of the backends under test: 64 KiB on moto (started with a lowered
/// `S3_UPLOAD_PART_MIN_SIZE`), S3's 5 MiB minimum on s3s-fs (which enforces it).
pub fn part(kind: S3Kind) -> usize {
    match kind {
        S3Kind::Moto => 64 * 1024,
        S3Kind::S3sFs => 5 << 20,
    }
}

/// A store and the server it talks to, which lives as long as the store.
pub struct Served {
    storage: Box<dyn Storage>,
    /// The server.
    pub server: S3Server,
}

#[async_trait]
impl Storage for Served {
    fn backend(&self) -> &str {
        self.storage.backend()
    }
    async fn put_open(&self, key: &str, mode: PutMode) -> Result<Box<dyn Upload>, StorageError> {
        self.storage.put_open(key, mode).await
    }
    async fn get_open(&self, key: &str) -> Result<Box<dyn Download>, StorageError> {
        self.storage.get_open(key).await
    }
    async fn head(&self, key: &str) -> Result<u64, StorageError> {
        self.storage.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<ListPage, StorageError> {
        self.storage.list(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.storage.delete(key).await
    }
}

/// A raw SDK client for the server: makes buckets, looks at what the backend left.
pub fn raw_client(server: &S3Server) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(server.endpoint())
        .credentials_provider(Credentials::new(
            &server.access_key,
            &server.secret_key,
            None,
            None,
            "spilo-tests",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Starts a server of `kind` with an empty bucket [`BUCKET`].
pub async fn server_with_bucket(kind: S3Kind) -> S3Server {
    let server = S3Server::start(kind);
    raw_client(&server)
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create bucket on {kind:?}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
    server
}

/// The backend's settings for `server` (bucket [`BUCKET`], prefix [`PREFIX`], [`part`]-sized
/// parts, three in flight, 10 s per request), with `extra` merged over them.
pub fn settings(server: &S3Server, extra: Value) -> Value {
    let mut v = json!({
        "bucket": BUCKET,
        "prefix": PREFIX,
        "endpoint": server.endpoint(),
        "region": "us-east-1",
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "part_size": part(server.kind),
        "allow_small_parts": true,
        "upload_concurrency": 3,
        "timeout": 10,
    });
    if let (Some(base), Value::Object(extra)) = (v.as_object_mut(), extra) {
        base.extend(extra);
    }
    v
}

/// The plugin, loaded through spilo's loader.
fn load_plugin() -> loader::LoadedPlugin {
    let path = plugin_lib("libspilo_storage_s3_plugin.so");
    loader::load(&path, "s3", "storage").unwrap_or_else(|e| panic!("{e}"))
}

/// The backend with `settings`, in-process or through the plugin.
pub async fn open_with(settings: Value, plugin: bool) -> Result<Box<dyn Storage>, StorageError> {
    if plugin {
        let p = load_plugin();
        let s = PluginStorage::connect(&p, settings, Duration::from_secs(20)).await?;
        Ok(Box::new(s))
    } else {
        Ok(Box::new(S3Storage::connect(&settings).await?))
    }
}

async fn open(kind: S3Kind, plugin: bool, extra: Value) -> Served {
    let server = server_with_bucket(kind).await;
    let storage = open_with(settings(&server, extra), plugin)
        .await
        .unwrap_or_else(|e| panic!("open the S3 backend on {kind:?}: {e}"));
    Served { storage, server }
}

/// The S3 backend in-process against moto.
pub struct S3MotoInProcess;
/// The S3 backend in-process against s3s-fs.
pub struct S3sFsInProcess;
/// The S3 backend as a plugin against moto.
pub struct S3MotoThroughPlugin;
/// The S3 backend as a plugin against s3s-fs.
pub struct S3sFsThroughPlugin;

#[async_trait]
impl StorageBackend for S3MotoInProcess {
    const NAME: &'static str = "storage-s3 in-process on moto";
    async fn open(_dir: &std::path::Path) -> Box<dyn Storage> {
        Box::new(open(S3Kind::Moto, false, json!({})).await)
    }
}

#[async_trait]
impl StorageBackend for S3sFsInProcess {
    const NAME: &'static str = "storage-s3 in-process on s3s-fs";
    async fn open(_dir: &std::path::Path) -> Box<dyn Storage> {
        Box::new(open(S3Kind::S3sFs, false, json!({})).await)
    }
}

#[async_trait]
impl StorageBackend for S3MotoThroughPlugin {
    const NAME: &'static str = "storage-s3 as a plugin on moto";
    async fn open(_dir: &std::path::Path) -> Box<dyn Storage> {
        Box::new(open(S3Kind::Moto, true, json!({})).await)
    }
}

#[async_trait]
impl StorageBackend for S3sFsThroughPlugin {
    const NAME: &'static str = "storage-s3 as a plugin on s3s-fs";
    async fn open(_dir: &std::path::Path) -> Box<dyn Storage> {
        Box::new(open(S3Kind::S3sFs, true, json!({})).await)
    }
}

/// Bytes that differ at every offset.
fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

async fn put_chunked(
    s: &dyn Storage,
    key: &str,
    mode: PutMode,
    data: &[u8],
    chunk: usize,
) -> Result<(), StorageError> {
    let mut up = s.put_open(key, mode).await?;
    for c in data.chunks(chunk) {
        if let Err(e) = up.write(c).await {
            up.abort().await;
            return Err(e);
        }
    }
    up.finish().await
}

/// The multipart uploads in progress (what an abort must leave empty): from
/// ListMultipartUploads on moto; s3s-fs does not implement that call, so from its files
/// (`.upload_id-<id>*` in its root while an upload is open).
async fn open_multipart_uploads(server: &S3Server) -> Vec<String> {
    if server.kind == S3Kind::S3sFs {
        let root = server.dir().join("data");
        let entries =
            std::fs::read_dir(&root).unwrap_or_else(|e| panic!("read {}: {e}", root.display()));
        // s3s-fs keeps an upload as `.upload-<id>.json` and a file per part,
        // `.upload_id-<id>.part-<n>`: one upload, however many of its parts have landed.
        let ids: BTreeSet<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter_map(|n| {
                let id = n
                    .strip_prefix(".upload_id-")
                    .and_then(|r| r.split_once(".part-").map(|(id, _)| id))
                    .or_else(|| n.strip_prefix(".upload-")?.strip_suffix(".json"))?;
                Some(id.to_string())
            })
            .collect();
        return ids.into_iter().collect();
    }
    let out = raw_client(server)
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "list multipart uploads: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
    out.uploads()
        .iter()
        .map(|u| u.key().unwrap_or("?").to_string())
        .collect()
}

/// The ETag of an object as the server reports it (`"<md5>-<parts>"` for a multipart one).
async fn etag(server: &S3Server, key: &str) -> String {
    let out = raw_client(server)
        .head_object()
        .bucket(BUCKET)
        .key(format!("{PREFIX}/{key}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("head {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
    out.e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// An object of four parts and 7 bytes, written in chunks that do not divide the part size,
/// is five parts uploaded three at a time; it reads back byte for byte, the server reports a
/// 5-part object at the prefixed key, and no multipart upload is left open.
pub async fn multipart_round_trip(kind: S3Kind, plugin: bool) {
    let s = open(kind, plugin, json!({})).await;
    let part = part(kind);
    let data = body(4 * part + 7, 3);
    put_chunked(&s, "base/b1/big", PutMode::Overwrite, &data, part / 6 + 1)
        .await
        .expect("multipart put");
    let tag = etag(&s.server, "base/b1/big").await;
    assert!(
        tag.ends_with("-5"),
        "[{kind:?}] ETag {tag:?}: not a 5-part upload"
    );
    assert_eq!(
        s.head("base/b1/big").await.expect("head"),
        data.len() as u64
    );
    let back = get_all(&s, "base/b1/big", 1 << 20).await.expect("get");
    assert!(
        back == data,
        "[{kind:?}] the multipart object read back differs"
    );
    assert_eq!(
        open_multipart_uploads(&s.server).await,
        Vec::<String>::new()
    );
    // An object of exactly one part is one PutObject (an ETag without a part count).
    put_chunked(&s, "one", PutMode::Overwrite, &data[..part], part / 3 + 1)
        .await
        .expect("one-part put");
    let tag = etag(&s.server, "one").await;
    assert!(
        !tag.contains('-'),
        "[{kind:?}] ETag {tag:?} of a single put"
    );
}

/// A multipart upload aborted after three parts, and another dropped without finish or abort,
/// leave no object and no open multipart upload.
pub async fn aborted_multipart_leaves_nothing(kind: S3Kind, plugin: bool) {
    let s = open(kind, plugin, json!({})).await;
    let part = part(kind);
    let data = body(3 * part + 5, 9);
    let mut up = s
        .put_open("base/aborted", PutMode::IfAbsent)
        .await
        .expect("put_open");
    for c in data.chunks(part / 2) {
        up.write(c).await.expect("write");
    }
    // Parts go up in the background: the upload shows once the first of them is under way.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let open = open_multipart_uploads(&s.server).await.len();
        if open == 1 {
            break;
        }
        assert!(
            Instant::now() < until,
            "[{kind:?}] {open} multipart uploads open after three parts, 1 expected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    up.abort().await;
    // (A part cut off by the abort may still be landing on a busy server: give it a moment.)
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = open_multipart_uploads(&s.server).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "[{kind:?}] an aborted upload left {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut up = s
        .put_open("base/dropped", PutMode::Overwrite)
        .await
        .expect("put_open");
    for c in data.chunks(part / 2) {
        up.write(c).await.expect("write");
    }
    drop(up);
    // The abort of a dropped upload runs in the background.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = open_multipart_uploads(&s.server).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "[{kind:?}] a dropped upload left {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = s.list("", None, 10).await.expect("list");
    assert!(page.objects.is_empty(), "[{kind:?}] {:?}", page.objects);
}

/// Put-if-absent of multipart objects: the same bytes again are success; different bytes of
/// the same length (one byte in the last part) are `Exists` and leave the object as it was;
/// a single put over a multipart object likewise; nothing is left open. With
/// `conditional_writes: false` (HEAD before the put) the same outcomes.
pub async fn put_if_absent_over_multipart(kind: S3Kind, plugin: bool, conditional: bool) {
    let s = open(kind, plugin, json!({ "conditional_writes": conditional })).await;
    let key = "wal/000000010000000000000001";
    let part = part(kind);
    let a = body(2 * part + 1000, 1);
    let mut b = a.clone();
    let last = b.len() - 1;
    b[last] ^= 0xff;
    put_chunked(&s, key, PutMode::IfAbsent, &a, part / 2)
        .await
        .expect("first put");
    put_chunked(&s, key, PutMode::IfAbsent, &a, part / 3 + 17)
        .await
        .expect("the same content again is success");
    let r = put_chunked(&s, key, PutMode::IfAbsent, &b, part / 2).await;
    assert!(
        matches!(r, Err(StorageError::Exists { .. })),
        "[{kind:?}] different content of the same length over multipart: {r:?}"
    );
    let r = put_all(&s, key, PutMode::IfAbsent, b"short").await;
    assert!(
        matches!(r, Err(StorageError::Exists { .. })),
        "[{kind:?}] a single put over a multipart object: {r:?}"
    );
    assert!(
        get_all(&s, key, 1 << 20).await.expect("get") == a,
        "[{kind:?}] replaced"
    );
    // A multipart put-if-absent over a single-put object.
    put_all(&s, "wal/2", PutMode::IfAbsent, b"small")
        .await
        .expect("small put");
    let r = put_chunked(&s, "wal/2", PutMode::IfAbsent, &a, part / 2).await;
    assert!(
        matches!(r, Err(StorageError::Exists { .. })),
        "[{kind:?}] {r:?}"
    );
    assert_eq!(get_all(&s, "wal/2", 100).await.expect("get"), b"small");
    assert_eq!(
        open_multipart_uploads(&s.server).await,
        Vec::<String>::new()
    );
}

/// What the server does with `If-None-Match: *` on PutObject and CompleteMultipartUpload of
/// an existing key, asked with the raw SDK: `true` when it refuses with 412.
pub async fn honours_if_none_match(kind: S3Kind) -> (bool, bool) {
    let server = server_with_bucket(kind).await;
    let c = raw_client(&server);
    let put = |data: &'static [u8]| {
        c.put_object()
            .bucket(BUCKET)
            .key("k")
            .body(data.to_vec().into())
            .if_none_match("*")
            .send()
    };
    put(b"first").await.expect("first conditional put");
    let second = put(b"second").await;
    let put_refused = match &second {
        Ok(_) => false,
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            assert_eq!(
                status,
                Some(412),
                "[{kind:?}] {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            );
            true
        }
    };
    let id = c
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("k")
        .send()
        .await
        .expect("create multipart upload")
        .upload_id()
        .expect("upload id")
        .to_string();
    let part = c
        .upload_part()
        .bucket(BUCKET)
        .key("k")
        .upload_id(&id)
        .part_number(1)
        .body(b"third".to_vec().into())
        .send()
        .await
        .expect("upload part");
    let done = aws_sdk_s3::types::CompletedMultipartUpload::builder()
        .parts(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(1)
                .set_e_tag(part.e_tag().map(str::to_string))
                .build(),
        )
        .build();
    let complete = c
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key("k")
        .upload_id(&id)
        .multipart_upload(done)
        .if_none_match("*")
        .send()
        .await;
    let complete_refused = match &complete {
        Ok(_) => false,
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            assert_eq!(
                status,
                Some(412),
                "[{kind:?}] {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            );
            true
        }
    };
    let now = c
        .get_object()
        .bucket(BUCKET)
        .key("k")
        .send()
        .await
        .expect("get")
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes();
    spilo_tests::note(format!(
        "{kind:?}: If-None-Match on PutObject refused: {put_refused}, on \
         CompleteMultipartUpload refused: {complete_refused}; object now {now:?}"
    ));
    let want: &[u8] = match (put_refused, complete_refused) {
        (_, false) => b"third",
        (false, true) => b"second",
        (true, true) => b"first",
    };
    assert_eq!(&now[..], want, "[{kind:?}] the object after both puts");
    (put_refused, complete_refused)
}

/// A bucket that does not exist: a list fails with S3's `NoSuchBucket` in the message, not a
/// bare "service error"; on moto puts (single and multipart) and gets too. (s3s-fs creates
/// the bucket's directory on a put and answers a get with `NoSuchKey`, so only its list
/// tells.)
pub async fn missing_bucket_is_named(kind: S3Kind, plugin: bool) {
    let server = S3Server::start(kind);
    let s = open_with(
        settings(&server, json!({ "bucket": "no-such-bucket" })),
        plugin,
    )
    .await
    .expect("open");
    let mut checks = vec![("list", s.list("", None, 10).await.err())];
    if kind == S3Kind::Moto {
        let p = part(kind);
        let small = put_all(s.as_ref(), "wal/1", PutMode::IfAbsent, b"x").await;
        let big = put_chunked(
            s.as_ref(),
            "wal/2",
            PutMode::Overwrite,
            &body(2 * p + 1, 0),
            p,
        )
        .await;
        checks.push(("put", small.err()));
        checks.push(("multipart put", big.err()));
        checks.push(("get", s.get_open("wal/1").await.err()));
    }
    for (what, r) in checks {
        let msg = r.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("NoSuchBucket") && !msg.contains("service error"),
            "[{kind:?}] {what} on a missing bucket: {msg:?}"
        );
    }
}

/// Wrong credentials: the error names S3's code (s3s-fs checks signatures; moto does not).
pub async fn wrong_secret_is_named(plugin: bool) {
    let server = server_with_bucket(S3Kind::S3sFs).await;
    let s = open_with(
        settings(&server, json!({ "secret_access_key": "not-the-secret" })),
        plugin,
    )
    .await
    .expect("open");
    let msg = put_all(s.as_ref(), "wal/1", PutMode::IfAbsent, b"x")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("SignatureDoesNotMatch") || msg.contains("AccessDenied"),
        "a wrong secret: {msg:?}"
    );
}

/// A listener that accepts connections and never answers; the connections stay open while the
/// thread runs (until the listener's test process ends).
fn black_hole() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming() {
            match c {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
    });
    port
}

/// A server that accepts TCP connections and never answers: every call fails with
/// `Timeout` (or `Unreachable`) within a bound — 1 s per request, 2 attempts — never hangs.
/// A port where nothing listens: `Unreachable`, naming the connection failure.
pub async fn silent_server_times_out(plugin: bool) {
    let port = black_hole();
    let v = json!({
        "bucket": BUCKET,
        "endpoint": format!("http://127.0.0.1:{port}"),
        "region": "us-east-1",
        "access_key_id": "k",
        "secret_access_key": "s",
        "timeout": 1,
        "max_attempts": 2,
    });
    let s = open_with(v, plugin).await.expect("open");
    let bound = Duration::from_secs(12);
    let t0 = Instant::now();
    let ok = |r: &Result<(), StorageError>| {
        matches!(
            r,
            Err(StorageError::Timeout { .. } | StorageError::Unreachable { .. })
        )
    };
    let head = s.head("wal/1").await.map(|_| ());
    assert!(ok(&head), "head on a silent server: {head:?}");
    let put = put_all(s.as_ref(), "wal/1", PutMode::IfAbsent, b"x").await;
    assert!(ok(&put), "put on a silent server: {put:?}");
    let list = s.list("", None, 10).await.map(|_| ());
    assert!(ok(&list), "list on a silent server: {list:?}");
    let took = t0.elapsed();
    assert!(took < bound * 3, "three calls took {took:?}");
    spilo_tests::note(format!(
        "silent server: {head:?} / {put:?} / {list:?} in {took:?}"
    ));

    // Nothing listening.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let v = json!({
        "bucket": BUCKET,
        "endpoint": format!("http://127.0.0.1:{closed}"),
        "region": "us-east-1",
        "access_key_id": "k",
        "secret_access_key": "s",
        "timeout": 1,
        "max_attempts": 2,
    });
    let s = open_with(v, plugin).await.expect("open");
    let t0 = Instant::now();
    let r = s.head("wal/1").await;
    assert!(t0.elapsed() < bound, "head took {:?}", t0.elapsed());
    match r {
        Err(StorageError::Unreachable { message, .. }) => assert!(
            message.to_lowercase().contains("connect") || message.contains("refused"),
            "{message}"
        ),
        other => panic!("head on a closed port: {other:?}"),
    }
}

/// Bad settings are refused before any request, naming the setting.
pub async fn bad_settings_are_refused(plugin: bool) {
    let base = json!({
        "bucket": BUCKET,
        "endpoint": "http://127.0.0.1:9",
        "region": "us-east-1",
        "access_key_id": "k",
        "secret_access_key": "s",
    });
    let with = |k: &str, v: Value| {
        let mut s = base.clone();
        s[k] = v;
        s
    };
    let mut no_bucket = base.clone();
    if let Some(o) = no_bucket.as_object_mut() {
        o.remove("bucket");
    }
    let cases = [
        (with("buckt", json!("x")), "unknown field `buckt`"),
        (no_bucket, "missing field `bucket`"),
        (with("bucket", json!("Bad Bucket!")), "bucket"),
        (with("part_size", json!(1024)), "part_size"),
        (with("sse", json!("rot13")), "sse"),
        (with("timeout", json!(-1)), "timeout"),
        (
            with("upload_concurrency", json!(1000)),
            "upload_concurrency",
        ),
        (with("force_path_style", json!("yes")), "invalid type"),
    ];
    for (v, want) in cases {
        let r = open_with(v.clone(), plugin).await;
        let msg = match r {
            Ok(_) => panic!("accepted {v}"),
            Err(e @ StorageError::Refused { .. }) => e.to_string(),
            Err(e) => panic!("settings {v}: not refused but {e:?}"),
        };
        assert!(
            msg.contains(want) && msg.contains("s3 storage settings"),
            "settings {v}: {msg:?} does not name {want:?}"
        );
    }
}
