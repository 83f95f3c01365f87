//! The Patroni-compatible REST API (read-only part) and a small client for peers' APIs.
//!
//! Every answer comes from the last [`NodeState`] the HA loop published; no handler touches
//! PostgreSQL or the DCS.
//!
//! - [`status`]: the `GET /patroni` body;
//! - [`health`]: the health checks (`/primary`, `/replica`, …, `/liveness`, `/readiness`);
//! - [`cluster`]: `GET /cluster`, `/history`, `/config`;
//! - [`client`]: `GET` a peer's JSON and read its status.

pub mod client;
pub mod cluster;
pub mod health;
pub mod status;

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, Method, Response, StatusCode, Uri};
use axum::Router;
use serde_json::Value;

pub use client::{fetch_peers, get_json, parse_peer_status, ClientError, PeerStatus};
pub use status::patroni_status;

use crate::ha::state::{NodeState, StateRx};

/// The body of a [`Reply`].
#[derive(Clone, Debug, PartialEq)]
pub enum ReplyBody {
    /// Status line (and headers) only.
    Empty,
    /// `application/json`.
    Json(Value),
    /// `text/html` (error pages).
    Html(String),
}

/// An answer before it becomes an HTTP response.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// What to send after the headers.
    pub body: ReplyBody,
}

impl Reply {
    fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            body: ReplyBody::Json(v),
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: ReplyBody::Empty,
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
        }
    }

    /// Into an HTTP response with `Server: spilo/<version>`.
    fn into_response(self) -> Response<Body> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (content_type, body) = match self.body {
            ReplyBody::Empty => (None, Body::empty()),
            ReplyBody::Json(v) => (Some("application/json"), Body::from(v.to_string())),
            ReplyBody::Html(h) => (Some("text/html"), Body::from(h)),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(header::SERVER, HeaderValue::from_static(SERVER));
        if let Some(ct) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        resp
    }
}

/// The `Server` header.
const SERVER: &str = concat!("spilo/", env!("CARGO_PKG_VERSION"));

/// Answer `method uri` from the state `s` at time `now`.
///
/// GET dispatches on the first path segment (`patroni`, `cluster`, `history`, `config`,
/// `liveness`, `readiness`); any other path is a health check (503 when unknown). HEAD and
/// OPTIONS run the GET logic and drop the body. Every other method answers 501.
pub fn handle(method: &Method, uri: &Uri, s: &NodeState, now: Instant) -> Reply {
    let status_only = *method == Method::HEAD || *method == Method::OPTIONS;
    if *method != Method::GET && !status_only {
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

async fn dispatch(State(rx): State<StateRx>, method: Method, uri: Uri) -> Response<Body> {
    let s = rx.borrow().clone();
    handle(&method, &uri, &s, Instant::now()).into_response()
}

/// The API's router: every method and path goes to [`handle`]. Routes added later take
/// precedence over this fallback.
pub fn router(state: StateRx) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// Serve the API on `listener` until `shutdown` completes, then finish the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: StateRx,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::status::tests::{primary, replica};
    use super::*;

    fn get(path: &str, s: &NodeState, now: Instant) -> Reply {
        handle(&Method::GET, &path.parse().unwrap(), s, now)
    }

    #[test]
    fn unknown_get_is_503_with_status_body() {
        let now = Instant::now();
        let s = primary(now);
        for path in ["/nonsense", "/metrics", "/failsafe/x"] {
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
        let now = Instant::now();
        let stopped = NodeState::new("x", "demo", "");
        assert_eq!(get("/patroni", &stopped, now).status, 200);
        let r = get("/patroni", &replica(now, 1), now);
        assert_eq!(r.status, 200);
        assert!(matches!(r.body, ReplyBody::Json(ref v) if v["role"] == "replica"));
    }

    #[test]
    fn head_and_options_have_no_body() {
        let now = Instant::now();
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
        let now = Instant::now();
        let s = replica(now, 0x0500_0000 - (1 << 20));
        assert_eq!(get("/replica?lag=10MB", &s, now).status, 200);
        assert_eq!(get("/replica?lag=16kB", &s, now).status, 503);
        assert_eq!(get("/replica?lag=1MB&lag=1kB", &s, now).status, 200);
        assert_eq!(get("/readiness?lag=16kB", &s, now), Reply::empty(503));
        assert_eq!(get("/liveness", &s, now), Reply::empty(200));
    }

    #[test]
    fn mutating_methods_are_501() {
        let now = Instant::now();
        let s = primary(now);
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let r = handle(&m, &"/whatever".parse().unwrap(), &s, now);
            assert_eq!(r.status, 501);
            assert!(matches!(r.body, ReplyBody::Html(_)));
        }
    }

    #[test]
    fn cluster_history_config_without_view() {
        let now = Instant::now();
        let s = NodeState::new("x", "demo", "");
        assert_eq!(get("/cluster", &s, now).status, 503);
        assert_eq!(
            get("/history", &s, now),
            Reply::json(200, Value::Array(vec![]))
        );
        assert_eq!(get("/config", &s, now).status, 502);
    }

    #[tokio::test]
    async fn serve_end_to_end() {
        let now = Instant::now();
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(primary(now)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, rx, async {
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
        tx.send(Arc::new(replica(Instant::now(), 0x0500_0000)))
            .unwrap();
        let (code, body) = get_json(&format!("{base}/primary"), t).await.unwrap();
        assert_eq!(code, 503);
        assert_eq!(body["role"], "replica");
        let (code, body) = get_json(&format!("{base}/liveness"), t).await.unwrap();
        assert_eq!((code, body), (200, Value::Null));

        let peers = fetch_peers(&[("pg1".into(), format!("{base}/patroni"))], t).await;
        assert!(peers[0].reachable && peers[0].in_recovery);

        stop_tx.send(()).unwrap();
        tokio::time::timeout(t, server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
