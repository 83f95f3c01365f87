//! Test helpers shared by the API's unit tests: an in-memory [`Dcs`], contexts and requests.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};

use super::mutate::{self, Incoming, Tuning};
use super::{ApiContext, Reply};
use crate::config::{BasicAuth, RestApi};
use crate::dcs::{Cas, Dcs, DcsError, Entry, Member, MemberData, SessionInfo, Snapshot};
use crate::ha::state::{NodeState, StateTx};

/// A `restapi` section with optional `(user, password)`.
pub(crate) fn restapi(auth: Option<(&str, &str)>) -> RestApi {
    RestApi {
        listen: "127.0.0.1:8008".into(),
        connect_address: "127.0.0.1:8008".into(),
        authentication: auth.map(|(u, p)| BasicAuth {
            username: u.into(),
            password: p.into(),
        }),
        allowlist: Vec::new(),
        allowlist_include_members: false,
        allowed_command_parameters: Vec::new(),
    }
}

/// A running replica member `name` with the given `api_url`.
pub(crate) fn member(name: &str, api_url: &str) -> Member {
    Member {
        name: name.into(),
        data: MemberData {
            conn_url: "postgres://127.0.0.1:5432/postgres".into(),
            api_url: api_url.into(),
            state: "running".into(),
            role: "replica".into(),
            ..MemberData::default()
        },
        version: 1,
        owned_by_us: false,
    }
}

/// Short timings for tests.
pub(crate) fn fast() -> Tuning {
    Tuning {
        poll_interval: Duration::from_millis(10),
        poll_timeout: Some(Duration::from_millis(400)),
        peer_timeout: Duration::from_millis(500),
        resolve_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        dcs_timeout: Duration::from_secs(1),
    }
}

/// A context over `state`, without a command channel.
pub(crate) fn context(
    state: NodeState,
    dcs: Option<Arc<MemDcs>>,
    restapi: RestApi,
) -> (ApiContext, StateTx) {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(state));
    let ctx = ApiContext {
        state: rx,
        dcs: dcs.map(|d| d as Arc<dyn Dcs>),
        commands: None,
        wake: Arc::new(tokio::sync::Notify::new()),
        restapi,
    };
    (ctx, tx)
}

/// `method path` with `body` (and its Content-Length) when given, from 127.0.0.1.
pub(crate) async fn call(ctx: &ApiContext, method: &str, path: &str, body: Option<&str>) -> Reply {
    call_tuned(ctx, &fast(), method, path, body).await
}

/// [`call`] with explicit timings.
pub(crate) async fn call_tuned(
    ctx: &ApiContext,
    tuning: &Tuning,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    let mut headers = HeaderMap::new();
    if let Some(b) = body {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
    }
    let client = Some("127.0.0.1".parse().unwrap());
    request(
        ctx,
        tuning,
        method,
        path,
        headers,
        client,
        body.unwrap_or(""),
    )
    .await
}

/// A request with exactly these headers and peer address.
pub(crate) async fn call_raw(
    ctx: &ApiContext,
    method: &str,
    path: &str,
    headers: HeaderMap,
    client: Option<IpAddr>,
    body: &str,
) -> Reply {
    request(ctx, &fast(), method, path, headers, client, body).await
}

async fn request(
    ctx: &ApiContext,
    tuning: &Tuning,
    method: &str,
    path: &str,
    headers: HeaderMap,
    client: Option<IpAddr>,
    body: &str,
) -> Reply {
    let method: Method = method.parse().unwrap();
    let uri: Uri = path.parse().unwrap();
    mutate::mutate(
        ctx,
        tuning,
        Incoming {
            method: &method,
            uri: &uri,
            headers: &headers,
            client,
        },
        Body::from(body.to_string()),
    )
    .await
}

/// An in-memory DCS: keys with versions from one revision counter, CAS as etcd does it, and
/// switches to make reads or writes fail.
pub(crate) struct MemDcs {
    keys: Mutex<BTreeMap<String, (Vec<u8>, i64)>>,
    revision: AtomicI64,
    /// Every `put`/`delete` fails with an error.
    pub fail_writes: AtomicBool,
    /// Every `snapshot` fails with an error.
    pub fail_reads: AtomicBool,
    /// A key whose version is bumped (same value) right after every `snapshot`, as a concurrent
    /// writer would.
    pub bump_after_read: Mutex<Option<String>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl MemDcs {
    pub(crate) fn new() -> Arc<MemDcs> {
        Arc::new(MemDcs {
            keys: Mutex::new(BTreeMap::new()),
            revision: AtomicI64::new(1),
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            bump_after_read: Mutex::new(None),
            changes: tokio::sync::watch::channel(0).0,
        })
    }

    /// Write `key` unconditionally (a new version).
    pub(crate) fn set(&self, key: &str, value: &str) {
        let v = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
        self.keys
            .lock()
            .unwrap()
            .insert(key.to_string(), (value.as_bytes().to_vec(), v));
    }

    pub(crate) fn remove(&self, key: &str) {
        self.keys.lock().unwrap().remove(key);
    }

    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.keys
            .lock()
            .unwrap()
            .get(key)
            .map(|(v, _)| String::from_utf8(v.clone()).unwrap())
    }

    pub(crate) fn version(&self, key: &str) -> Option<i64> {
        self.keys.lock().unwrap().get(key).map(|(_, v)| *v)
    }

    fn refused(op: &'static str) -> DcsError {
        DcsError::Unreachable {
            op,
            message: "test DCS is down".into(),
        }
    }
}

#[async_trait]
impl Dcs for MemDcs {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(Self::refused("snapshot"));
        }
        let snap = {
            let keys = self.keys.lock().unwrap();
            Snapshot {
                revision: self.revision.load(Ordering::SeqCst),
                entries: keys
                    .iter()
                    .map(|(k, (v, ver))| Entry {
                        key: k.clone(),
                        value: v.clone(),
                        version: *ver,
                        owned_by_us: false,
                    })
                    .collect(),
            }
        };
        let bump = self.bump_after_read.lock().unwrap().clone();
        if let Some(key) = bump {
            if let Some(v) = self.get(&key) {
                self.set(&key, &v);
            }
        }
        Ok(snap)
    }

    async fn keepalive(&self) -> Result<SessionInfo, DcsError> {
        Ok(SessionInfo {
            id: 1,
            new_session: false,
        })
    }

    async fn put_member(&self, _value: &[u8]) -> Result<(), DcsError> {
        Ok(())
    }

    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        Ok(false)
    }

    async fn reattach_leader(&self) -> Result<bool, DcsError> {
        Ok(false)
    }

    async fn release_leader(&self) -> Result<bool, DcsError> {
        Ok(false)
    }

    async fn put(&self, key: &str, value: &[u8], cas: Cas) -> Result<bool, DcsError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(Self::refused("put"));
        }
        let mut keys = self.keys.lock().unwrap();
        let current = keys.get(key).map(|(_, v)| *v);
        let ok = match cas {
            Cas::Any => true,
            Cas::Absent => current.is_none(),
            Cas::Version(v) => current == Some(v),
        };
        if ok {
            let v = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
            keys.insert(key.to_string(), (value.to_vec(), v));
            self.changes.send_modify(|c| *c += 1);
        }
        Ok(ok)
    }

    async fn delete(&self, key: &str, cas: Cas) -> Result<bool, DcsError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(Self::refused("delete"));
        }
        let mut keys = self.keys.lock().unwrap();
        let current = keys.get(key).map(|(_, v)| *v);
        let ok = match cas {
            Cas::Any => true,
            Cas::Absent => current.is_none(),
            Cas::Version(v) => current == Some(v),
        };
        if ok {
            keys.remove(key);
        }
        Ok(ok)
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn set_ttl(&self, _ttl: Duration) {}

    async fn close(&self) -> Result<(), DcsError> {
        Ok(())
    }
}
