//! Test helpers shared by the API's unit tests: contexts and requests (the in-memory DCS is
//! `crate::dcs::memory`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};

use super::mutate::{self, Incoming, Tuning};
use super::{ApiContext, Reply};
use crate::config::{BasicAuth, RestApi};
use crate::dcs::{Dcs, Member, MemberData};
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
        restapi: restapi.into(),
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

pub(crate) use crate::dcs::memory::MemDcs;
