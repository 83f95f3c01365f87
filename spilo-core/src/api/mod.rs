//! The Patroni-compatible REST API and a small client for peers' APIs.
//!
//! Read-only answers (`GET`, `HEAD`, `OPTIONS`) come from the last [`NodeState`] the HA loop
//! published; those handlers never touch PostgreSQL or the DCS. The mutating endpoints
//! (`PATCH`/`PUT /config`, `POST /switchover`, …) pass [`access`] control first, then either
//! write to the DCS themselves (config, failover key) or hand a [`Command`] to the HA loop and
//! relay its answer (restart, reinitialize, reload).
//!
//! - [`status`]: the `GET /patroni` body;
//! - [`health`]: the health checks (`/primary`, `/replica`, …, `/liveness`, `/readiness`);
//! - [`cluster`]: `GET /cluster`, `/history`, `/config`;
//! - [`metrics`]: `GET /metrics` (Prometheus text format);
//! - [`access`]: the allowlist and Basic auth of the mutating endpoints;
//! - [`config_edit`]: `PATCH`/`PUT /config`;
//! - [`switchover`]: `POST /switchover`, `POST /failover`, `DELETE /switchover`;
//! - [`commands`]: `POST`/`DELETE /restart`, `POST /reinitialize`, `POST /reload`;
//! - [`client`]: `GET` a peer's JSON and read its status.
//!
//! [`Command`]: crate::ha::command::Command

pub mod access;
pub mod client;
pub mod cluster;
pub mod commands;
pub mod config_edit;
pub mod health;
pub mod metrics;
mod mutate;
pub mod status;
pub mod switchover;
#[cfg(test)]
mod testutil;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use axum::Router;
use serde_json::Value;

pub use client::{fetch_peers, get_json, parse_peer_status, ClientError, PeerStatus};
pub use mutate::MAX_BODY;
pub use status::patroni_status;

use crate::ha::state::{NodeState, StateRx};
use mutate::Tuning;

/// What the API needs besides the published state.
#[derive(Clone)]
pub struct ApiContext {
    /// The state the HA loop publishes after every cycle.
    pub state: StateRx,
    /// The DCS the mutating endpoints write to (`None` in unit tests without a DCS).
    pub dcs: Option<Arc<dyn crate::dcs::Dcs>>,
    /// Where restart, reinitialize and reload requests go (`None`: answered with 503).
    pub commands: Option<crate::ha::command::CommandTx>,
    /// `notify_one()` wakes the HA loop (after a config change or a failover request).
    pub wake: Arc<tokio::sync::Notify>,
    /// The local `restapi` section: authentication, allowlist, allowed command parameters;
    /// replaced by the HA loop on reload.
    pub restapi: LiveRestApi,
}

/// The `restapi` section in force, shared between the REST API (which reads it per request) and
/// the HA loop (which replaces it when the config file is reloaded).
#[derive(Clone, Debug)]
pub struct LiveRestApi(Arc<std::sync::RwLock<Arc<crate::config::RestApi>>>);

impl LiveRestApi {
    /// Starts with `restapi`.
    pub fn new(restapi: crate::config::RestApi) -> LiveRestApi {
        LiveRestApi(Arc::new(std::sync::RwLock::new(Arc::new(restapi))))
    }

    /// The section in force now.
    pub fn current(&self) -> Arc<crate::config::RestApi> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `restapi` in force for the next requests.
    pub fn replace(&self, restapi: crate::config::RestApi) {
        let new = Arc::new(restapi);
        match self.0.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

impl From<crate::config::RestApi> for LiveRestApi {
    fn from(restapi: crate::config::RestApi) -> LiveRestApi {
        LiveRestApi::new(restapi)
    }
}

/// The body of a [`Reply`].
#[derive(Clone, Debug, PartialEq)]
pub enum ReplyBody {
    /// Status line (and headers) only.
    Empty,
    /// `application/json`.
    Json(Value),
    /// `text/html` (error pages).
    Html(String),
    /// A plain message, sent as `text/html` the way Patroni sends its messages.
    Text(String),
    /// The Prometheus text exposition format.
    Metrics(String),
}

/// An answer before it becomes an HTTP response.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// What to send after the headers.
    pub body: ReplyBody,
    /// Extra response headers (name, value).
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            body: ReplyBody::Json(v),
            headers: Vec::new(),
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: ReplyBody::Empty,
            headers: Vec::new(),
        }
    }

    fn text(status: u16, message: impl Into<String>) -> Reply {
        Reply {
            status,
            body: ReplyBody::Text(message.into()),
            headers: Vec::new(),
        }
    }

    fn error(status: u16, message: &str) -> Reply {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|c| c.canonical_reason())
            .unwrap_or("");
        Reply {
            status,
            body: ReplyBody::Html(format!(
                "<html><head><title>{status} {reason}</title></head>\
                 <body><h1>{status} {reason}</h1><p>{message}</p></body></html>\n"
            )),
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// The message of a text or HTML reply (for logs and tests).
    pub fn message(&self) -> &str {
        match &self.body {
            ReplyBody::Text(t) | ReplyBody::Html(t) | ReplyBody::Metrics(t) => t,
            ReplyBody::Empty | ReplyBody::Json(_) => "",
        }
    }

    /// Into an HTTP response with `Server: spilo/<version>`.
    fn into_response(self) -> Response<Body> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (content_type, body) = match self.body {
            ReplyBody::Empty => (None, Body::empty()),
            ReplyBody::Json(v) => (Some("application/json"), Body::from(v.to_string())),
            ReplyBody::Html(h) => (Some("text/html"), Body::from(h)),
            ReplyBody::Text(t) => (Some("text/html; charset=utf-8"), Body::from(t)),
            ReplyBody::Metrics(m) => (Some(metrics::CONTENT_TYPE), Body::from(m)),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(header::SERVER, HeaderValue::from_static(SERVER));
        if let Some(ct) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.append(HeaderName::from_static(name), v);
            }
        }
        resp
    }
}

/// The `Server` header.
const SERVER: &str = concat!("spilo/", env!("CARGO_PKG_VERSION"));

/// True for the methods answered from the published state alone (never access-controlled).
fn is_read_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

/// Answer a read-only request `method uri` from the state `s` at time `now`.
///
/// GET dispatches on the first path segment (`patroni`, `cluster`, `history`, `config`,
/// `metrics`, `liveness`, `readiness`); any other path is a health check (503 when unknown).
/// HEAD and OPTIONS run the GET logic and drop the body. Every other method answers 501 here
/// (the server routes them to the mutating endpoints first).
pub fn handle(method: &Method, uri: &Uri, s: &NodeState, now: Instant) -> Reply {
    let status_only = *method == Method::HEAD || *method == Method::OPTIONS;
    if !is_read_method(method) {
        return Reply::error(501, &format!("Unsupported method ({:?})", method.as_str()));
    }
    let path = uri.path();
    let query: Vec<(String, String)> = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let reply = match segment {
        "patroni" => Reply::json(200, patroni_status(s, now)),
        "cluster" => match cluster::cluster_json(s) {
            Some(v) => Reply::json(200, v),
            None => Reply::error(503, "No DCS view yet"),
        },
        "history" => Reply::json(200, cluster::history_json(s)),
        "config" => match cluster::config_json(s) {
            Some(v) => Reply::json(200, v),
            None => Reply::error(502, "No valid configuration in the DCS"),
        },
        "metrics" => Reply {
            status: 200,
            body: ReplyBody::Metrics(metrics::render(s, now)),
            headers: Vec::new(),
        },
        "liveness" => Reply::empty(health::liveness(s, now)),
        "readiness" => Reply::empty(health::readiness(s, &query, now)),
        _ => Reply::json(
            health::health_check(path, &query, s, now),
            patroni_status(s, now),
        ),
    };
    if status_only {
        Reply::empty(reply.status)
    } else {
        reply
    }
}

/// The router's shared state.
struct Server {
    ctx: ApiContext,
    tuning: Tuning,
}

async fn dispatch(State(server): State<Arc<Server>>, req: Request) -> Response<Body> {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = req.into_parts();
    let reply = if is_read_method(&parts.method) {
        let s = server.ctx.state.borrow().clone();
        handle(&parts.method, &parts.uri, &s, crate::clock::now())
    } else {
        mutate::mutate(
            &server.ctx,
            &server.tuning,
            mutate::Incoming {
                method: &parts.method,
                uri: &parts.uri,
                headers: &parts.headers,
                client,
            },
            body,
        )
        .await
    };
    reply.into_response()
}

fn router_with(ctx: ApiContext, tuning: Tuning) -> Router {
    Router::new()
        .fallback(dispatch)
        .with_state(Arc::new(Server { ctx, tuning }))
}

/// The API's router: every method and path goes to one dispatcher (read-only requests to
/// [`handle`], the others to the mutating endpoints). Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so that the allowlist sees the client
/// address; without it a configured allowlist denies every mutating request.
pub fn router(ctx: ApiContext) -> Router {
    router_with(ctx, Tuning::default())
}

/// Serve the API on `listener` until `shutdown` completes, then finish the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: ApiContext,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(ctx).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    use super::status::tests::{primary, replica};
    use super::*;

    /// `method url` with `body` (and optional Basic credentials) over real HTTP: status,
    /// headers, body text.
    async fn send(
        method: &str,
        url: &str,
        body: &str,
        auth: Option<&str>,
    ) -> (u16, axum::http::HeaderMap, String) {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut req = hyper::Request::builder().method(method).uri(url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = client
            .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&text).into_owned())
    }

    fn get(path: &str, s: &NodeState, now: Instant) -> Reply {
        handle(&Method::GET, &path.parse().unwrap(), s, now)
    }

    #[test]
    fn unknown_get_is_503_with_status_body() {
        let now = crate::clock::now();
        let s = primary(now);
        for path in ["/nonsense", "/failsafe/x"] {
            let r = get(path, &s, now);
            assert_eq!(r.status, 503, "{path}");
            match r.body {
                ReplyBody::Json(v) => assert_eq!(v["role"], "primary"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn patroni_is_always_200() {
        let now = crate::clock::now();
        let stopped = NodeState::new("x", "demo", "");
        assert_eq!(get("/patroni", &stopped, now).status, 200);
        let r = get("/patroni", &replica(now, 1), now);
        assert_eq!(r.status, 200);
        assert!(matches!(r.body, ReplyBody::Json(ref v) if v["role"] == "replica"));
    }

    #[test]
    fn head_and_options_have_no_body() {
        let now = crate::clock::now();
        let s = replica(now, 0x0500_0000);
        for m in [Method::HEAD, Method::OPTIONS] {
            assert_eq!(
                handle(&m, &"/replica".parse().unwrap(), &s, now),
                Reply::empty(200)
            );
            assert_eq!(
                handle(&m, &"/primary".parse().unwrap(), &s, now),
                Reply::empty(503)
            );
            assert_eq!(
                handle(&m, &"/patroni".parse().unwrap(), &s, now),
                Reply::empty(200)
            );
        }
    }

    #[test]
    fn query_string_reaches_the_checks() {
        let now = crate::clock::now();
        let s = replica(now, 0x0500_0000 - (1 << 20));
        assert_eq!(get("/replica?lag=10MB", &s, now).status, 200);
        assert_eq!(get("/replica?lag=16kB", &s, now).status, 503);
        assert_eq!(get("/replica?lag=1MB&lag=1kB", &s, now).status, 200);
        assert_eq!(get("/readiness?lag=16kB", &s, now), Reply::empty(503));
        assert_eq!(get("/liveness", &s, now), Reply::empty(200));
    }

    #[test]
    fn mutating_methods_are_501() {
        let now = crate::clock::now();
        let s = primary(now);
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let r = handle(&m, &"/whatever".parse().unwrap(), &s, now);
            assert_eq!(r.status, 501);
            assert!(matches!(r.body, ReplyBody::Html(_)));
        }
    }

    #[test]
    fn cluster_history_config_without_view() {
        let now = crate::clock::now();
        let s = NodeState::new("x", "demo", "");
        assert_eq!(get("/cluster", &s, now).status, 503);
        assert_eq!(
            get("/history", &s, now),
            Reply::json(200, Value::Array(vec![]))
        );
        assert_eq!(get("/config", &s, now).status, 502);
    }

    #[test]
    fn metrics_get_and_head() {
        let now = crate::clock::now();
        let s = primary(now);
        let r = get("/metrics", &s, now);
        assert_eq!(r.status, 200);
        assert!(matches!(r.body, ReplyBody::Metrics(ref t) if t.contains("patroni_primary{")));
        assert_eq!(
            handle(&Method::HEAD, &"/metrics".parse().unwrap(), &s, now),
            Reply::empty(200)
        );
    }

    #[tokio::test]
    async fn serve_end_to_end() {
        let now = crate::clock::now();
        let (ctx, tx) = testutil::context(primary(now), None, testutil::restapi(None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, ctx, async {
            let _ = stop_rx.await;
        }));
        let t = Duration::from_secs(5);
        let base = format!("http://{addr}");

        let (code, body) = get_json(&format!("{base}/patroni"), t).await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(body["role"], "primary");
        assert_eq!(body["patroni"]["name"], "pg0");
        let peer = parse_peer_status("pg0", &body);
        assert!(peer.reachable && !peer.in_recovery);
        assert_eq!(peer.wal_position, Some(0x0500_0000));

        let (code, body) = get_json(&format!("{base}/primary"), t).await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(body["xlog"]["location"], 0x0500_0000u64);

        // A new state is picked up by the next request.
        tx.send(Arc::new(replica(crate::clock::now(), 0x0500_0000)))
            .unwrap();
        let (code, body) = get_json(&format!("{base}/primary"), t).await.unwrap();
        assert_eq!(code, 503);
        assert_eq!(body["role"], "replica");
        let (code, body) = get_json(&format!("{base}/liveness"), t).await.unwrap();
        assert_eq!((code, body), (200, Value::Null));

        let peers = fetch_peers(&[("pg1".into(), format!("{base}/patroni"))], t).await;
        assert!(peers[0].reachable && peers[0].in_recovery);

        // /metrics over HTTP.
        let (code, headers, text) = send("GET", &format!("{base}/metrics"), "", None).await;
        assert_eq!(code, 200);
        assert_eq!(headers["content-type"], metrics::CONTENT_TYPE);
        assert!(
            text.contains("patroni_replica{scope=\"demo\",name=\"pg1\"} 1"),
            "{text}"
        );

        stop_tx.send(()).unwrap();
        tokio::time::timeout(t, server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn mutating_requests_over_http_see_the_client_address() {
        async fn start(
            restapi: crate::config::RestApi,
        ) -> (String, tokio::sync::oneshot::Sender<()>) {
            let (ctx, tx) = testutil::context(primary(crate::clock::now()), None, restapi);
            std::mem::forget(tx);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(serve(listener, ctx, async {
                let _ = stop_rx.await;
            }));
            (format!("http://{addr}"), stop_tx)
        }

        let mut allowed = testutil::restapi(Some(("admin", "pw")));
        allowed.allowlist = vec!["127.0.0.0/8".into()];
        let (base, _stop) = start(allowed).await;
        let (code, headers, text) = send("POST", &format!("{base}/reload"), "", None).await;
        assert_eq!((code, text.as_str()), (401, "no auth header received"));
        assert_eq!(headers["www-authenticate"], "Basic realm=\"Patroni\"");
        // admin:pw; no command channel in this context, hence 503.
        let (code, _, _) = send(
            "POST",
            &format!("{base}/reload"),
            "",
            Some("Basic YWRtaW46cHc="),
        )
        .await;
        assert_eq!(code, 503);
        let (code, _, text) = send(
            "POST",
            &format!("{base}/failover"),
            "{}",
            Some("Basic YWRtaW46cHc="),
        )
        .await;
        assert_eq!(
            (code, text.as_str()),
            (
                400,
                "Failover could be performed only to a specific candidate"
            )
        );
        let (code, _, _) = send("DELETE", &format!("{base}/nothing"), "", None).await;
        assert_eq!(code, 501);

        let mut denied = testutil::restapi(None);
        denied.allowlist = vec!["10.0.0.0/8".into()];
        let (base, _stop) = start(denied).await;
        let (code, _, text) = send("POST", &format!("{base}/reload"), "", None).await;
        assert_eq!((code, text.as_str()), (403, "Access is denied"));
        // Reads are never access-controlled.
        let (code, _, _) = send("GET", &format!("{base}/patroni"), "", None).await;
        assert_eq!(code, 200);
    }
}
