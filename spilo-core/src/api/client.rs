//! The one small HTTP client (plain HTTP for now) — for peers' REST APIs in the leader race,
//! hooks' `spilo.http` and `spiloctl` (`ctl::http` adds its URLs, auth and answers on top) —
//! and the parsing of a peer's status body as the leader race reads it.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, USER_AGENT};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::dcs::tags;

/// The largest response body read from a peer.
const MAX_BODY: usize = 4 << 20;

/// Why an HTTP exchange failed (an HTTP error status is not a failure here).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse or has no host.
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    /// Only `http://` URLs are supported.
    #[error("unsupported URL scheme in {0:?} (only http is supported)")]
    UnsupportedScheme(String),
    /// Nothing accepted the connection.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The whole exchange did not finish within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Sending the request or receiving the response head failed.
    #[error("request failed: {0}")]
    Request(String),
    /// Reading the response body failed (or it was too large).
    #[error("reading the response body failed: {0}")]
    Body(String),
    /// The body is not JSON.
    #[error("HTTP {status}: body is not JSON: {message}")]
    Json {
        /// The response's status code.
        status: u16,
        /// The parser's complaint.
        message: String,
    },
}

impl ClientError {
    /// True when the request certainly never reached the server.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            ClientError::Connect(_)
                | ClientError::InvalidUrl(_)
                | ClientError::UnsupportedScheme(_)
        )
    }
}

/// An error and its chain of sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    crate::error_chain(e)
}

/// The one HTTP exchange every caller uses (the leader race's peer reads, hooks' `spilo.http`,
/// `spiloctl`): `METHOD url` with these headers and body, the whole exchange within `timeout`;
/// the status code and the raw body (at most 4 MiB), whatever the status. Plain `http://`
/// only; no connection is kept.
pub async fn exchange(
    method: hyper::Method,
    url: &str,
    headers: &[(hyper::header::HeaderName, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| ClientError::InvalidUrl(url.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(ClientError::UnsupportedScheme(url.to_string())),
        None => return Err(ClientError::InvalidUrl(url.to_string())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ClientError::InvalidUrl(url.to_string()));
    }
    let mut req = hyper::Request::builder().method(method).uri(uri);
    if !headers.iter().any(|(k, _)| k == USER_AGENT) {
        req = req.header(USER_AGENT, concat!("spilo/", env!("CARGO_PKG_VERSION")));
    }
    for (k, v) in headers {
        req = req.header(k, v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Request(chain(&e)))?;
    let run = async {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                ClientError::Connect(chain(&e))
            } else {
                ClientError::Request(chain(&e))
            }
        })?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| ClientError::Body(chain(&*e)))?
            .to_bytes();
        Ok((status, body.to_vec()))
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout(timeout)),
    }
}

/// `GET url` and parse the body as JSON, all within `timeout`. An empty body yields
/// `Value::Null`. Returns the status code and the body whatever the status.
pub async fn get_json(url: &str, timeout: Duration) -> Result<(u16, Value), ClientError> {
    let (status, body) = exchange(
        hyper::Method::GET,
        url,
        &[(ACCEPT, "application/json".to_string())],
        Vec::new(),
        timeout,
    )
    .await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((status, Value::Null));
    }
    serde_json::from_slice(&body)
        .map(|v| (status, v))
        .map_err(|e| ClientError::Json {
            status,
            message: e.to_string(),
        })
}

/// `METHOD url` with an optional body and extra headers (by name), within `timeout`: the
/// status code and the raw body.
pub async fn request(
    method: &str,
    url: &str,
    body: Option<Vec<u8>>,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    let method = hyper::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| ClientError::Request(format!("invalid method {method:?}")))?;
    let mut named = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ClientError::Request(format!("invalid header name {k:?}")))?;
        named.push((name, v.clone()));
    }
    exchange(method, url, &named, body.unwrap_or_default(), timeout).await
}

/// A peer's state as the leader race sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerStatus {
    /// Member name.
    pub name: String,
    /// The peer answered with a body carrying `wal` or `xlog`.
    pub reachable: bool,
    /// The reported role, if any.
    pub role: Option<String>,
    /// True unless the peer reports `xlog.location` or a primary role.
    pub in_recovery: bool,
    /// `xlog.location`, else `max(received_location, replayed_location)`.
    pub wal_position: Option<u64>,
    /// The reported timeline.
    pub timeline: Option<u64>,
    /// The peer may not be promoted (`nofailover`, or `failover_priority` ≤ 0).
    pub nofailover: bool,
    /// Effective failover priority: `failover_priority` (default 1), 0 with `nofailover`.
    pub failover_priority: i64,
    /// The peer's hooks vetoed its promotion (spilo's `promotion_veto` field), with the reason.
    pub promotion_veto: Option<String>,
}

impl PeerStatus {
    /// A peer that did not answer usefully.
    pub fn unreachable(name: &str) -> PeerStatus {
        PeerStatus {
            name: name.to_string(),
            reachable: false,
            role: None,
            in_recovery: true,
            wal_position: None,
            timeline: None,
            nofailover: false,
            failover_priority: 1,
            promotion_veto: None,
        }
    }

    /// The peer may not be promoted now: `nofailover`, or a hook vetoed it.
    pub fn barred(&self) -> bool {
        self.nofailover || self.promotion_veto.is_some()
    }
}

/// Python truthiness of a JSON value, for the fields Patroni tests with `or`.
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// Read a peer's status body (`GET /patroni` or its `api_url`). Without a `wal` or `xlog`
/// object the peer counts as unreachable.
pub fn parse_peer_status(name: &str, body: &Value) -> PeerStatus {
    let wal = body
        .get("wal")
        .filter(|v| v.is_object())
        .or_else(|| body.get("xlog").filter(|v| v.is_object()));
    let role = body.get("role").and_then(Value::as_str).map(str::to_string);
    let Some(wal) = wal else {
        return PeerStatus {
            role,
            ..PeerStatus::unreachable(name)
        };
    };
    let primary_role = matches!(role.as_deref(), Some("master" | "primary"));
    let in_recovery = !(truthy(wal.get("location")) || primary_role);
    let location = wal
        .get("location")
        .and_then(Value::as_u64)
        .filter(|&l| l != 0);
    let wal_position = location.or_else(|| {
        let received = wal.get("received_location").and_then(Value::as_u64);
        let replayed = wal.get("replayed_location").and_then(Value::as_u64);
        match (received, replayed) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    });
    let peer_tags: BTreeMap<String, Value> = body
        .get("tags")
        .and_then(Value::as_object)
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    PeerStatus {
        name: name.to_string(),
        reachable: true,
        role,
        in_recovery,
        wal_position,
        timeline: body.get("timeline").and_then(Value::as_u64),
        nofailover: tags::nofailover(&peer_tags),
        failover_priority: tags::failover_priority(&peer_tags),
        promotion_veto: body
            .get("promotion_veto")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// Where the HA loop learns its peers' state: over HTTP from their REST APIs ([`HttpPeers`]),
/// or from a simulated network in tests.
pub trait PeerSource: Send + Sync + 'static {
    /// The state of every `(name, api_url)`, in the input order, each asked within `timeout`;
    /// one that does not answer is [`PeerStatus::unreachable`].
    fn fetch(
        &self,
        members: Vec<(String, String)>,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<PeerStatus>> + Send + '_>>;
}

/// Peers asked with `GET /patroni` on their REST APIs.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpPeers;

impl PeerSource for HttpPeers {
    fn fetch(
        &self,
        members: Vec<(String, String)>,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<PeerStatus>> + Send + '_>> {
        Box::pin(async move { fetch_peers(&members, timeout).await })
    }
}

/// Query every `(name, api_url)` in parallel, each bounded by `timeout`; the result keeps the
/// input order. A peer that fails to answer is [`PeerStatus::unreachable`].
pub async fn fetch_peers(members: &[(String, String)], timeout: Duration) -> Vec<PeerStatus> {
    let handles: Vec<_> = members
        .iter()
        .map(|(name, url)| {
            let (name, url) = (name.clone(), url.clone());
            tokio::spawn(async move {
                match get_json(&url, timeout).await {
                    Ok((_, body)) => parse_peer_status(&name, &body),
                    Err(e) => {
                        tracing::debug!(member = %name, url = %url, error = %e, "peer status request failed");
                        PeerStatus::unreachable(&name)
                    }
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for ((name, _), h) in members.iter().zip(handles) {
        out.push(h.await.unwrap_or_else(|_| PeerStatus::unreachable(name)));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn primary_peer() {
        let body = json!({
            "state": "running", "role": "primary", "timeline": 4,
            "xlog": {"location": 83886080u64},
            "tags": {"failover_priority": 5},
        });
        let p = parse_peer_status("pg0", &body);
        assert_eq!(
            p,
            PeerStatus {
                name: "pg0".into(),
                reachable: true,
                role: Some("primary".into()),
                in_recovery: false,
                wal_position: Some(83886080),
                timeline: Some(4),
                nofailover: false,
                failover_priority: 5,
                promotion_veto: None,
            }
        );
        let vetoed = json!({"role": "replica", "xlog": {"received_location": 5},
                            "promotion_veto": "before_promote: backup site"});
        let p = parse_peer_status("pg1", &vetoed);
        assert!(p.barred());
        assert_eq!(
            p.promotion_veto.as_deref(),
            Some("before_promote: backup site")
        );
        // Patroni < 4 says "master".
        let old = json!({"role": "master", "xlog": {"location": 0}});
        assert!(!parse_peer_status("pg0", &old).in_recovery);
    }

    #[test]
    fn replica_peer() {
        let body = json!({
            "state": "running", "role": "replica", "timeline": 4,
            "xlog": {"received_location": 2000, "replayed_location": 1500,
                     "replayed_timestamp": null, "paused": false},
            "tags": {"nofailover": true, "failover_priority": 3},
        });
        let p = parse_peer_status("pg1", &body);
        assert!(p.reachable);
        assert!(p.in_recovery);
        assert_eq!(p.wal_position, Some(2000));
        assert_eq!(p.timeline, Some(4));
        assert!(p.nofailover);
        assert_eq!(p.failover_priority, 0);
        let plain = json!({"role": "replica", "wal": {"replayed_location": 7}});
        let p = parse_peer_status("pg1", &plain);
        assert_eq!(p.wal_position, Some(7));
        assert_eq!(p.failover_priority, 1);
        assert!(!p.nofailover);
    }

    #[test]
    fn peer_without_xlog_is_unreachable() {
        let p = parse_peer_status("pg2", &json!({"state": "stopped", "role": "replica"}));
        assert!(!p.reachable);
        assert_eq!(p.role.as_deref(), Some("replica"));
        assert!(!parse_peer_status("pg2", &Value::Null).reachable);
        assert!(!parse_peer_status("pg2", &json!({"xlog": 5})).reachable);
    }

    #[tokio::test]
    async fn client_errors_do_not_panic() {
        let t = Duration::from_millis(500);
        assert!(matches!(
            get_json("not a url", t).await,
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(
            get_json("https://127.0.0.1:1/patroni", t).await,
            Err(ClientError::UnsupportedScheme(_))
        ));
        // A port nothing listens on (bound, then released).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url = format!("http://127.0.0.1:{port}/patroni");
        assert!(get_json(&url, t).await.is_err());
        let peers = fetch_peers(&[("x".into(), url)], t).await;
        assert_eq!(peers, vec![PeerStatus::unreachable("x")]);
    }
}
