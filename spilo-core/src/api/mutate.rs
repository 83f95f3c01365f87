//! Routing of the mutating requests: endpoint lookup (501 when unknown), access control, the
//! JSON body, then the endpoint itself.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Uri};
use serde_json::{Map, Value};

use super::{access, commands, config_edit, switchover, ApiContext, Reply};
use crate::dcs::{decode_cluster, Cluster};

/// The largest request body accepted (64 KiB); a larger one gets 413.
pub const MAX_BODY: usize = 64 * 1024;

/// Timings of the mutating endpoints; the defaults are the production values, tests shorten
/// them.
#[derive(Clone, Debug)]
pub(crate) struct Tuning {
    /// How often a switchover re-reads the DCS while waiting for the outcome.
    pub poll_interval: Duration,
    /// How long a switchover waits for the outcome (`None`: `2 * max(10, loop_wait)` s).
    pub poll_timeout: Option<Duration>,
    /// Deadline of a candidate's `GET /patroni` during the feasibility check.
    pub peer_timeout: Duration,
    /// Deadline of one allowlist host-name lookup.
    pub resolve_timeout: Duration,
    /// Deadline for receiving the request body.
    pub body_timeout: Duration,
    /// Deadline of the DCS read a mutating endpoint makes.
    pub dcs_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            poll_interval: Duration::from_millis(100),
            poll_timeout: None,
            peer_timeout: Duration::from_secs(2),
            resolve_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(10),
            dcs_timeout: Duration::from_secs(30),
        }
    }
}

/// The request line, headers and peer address of a mutating request.
pub(crate) struct Incoming<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub client: Option<IpAddr>,
}

/// The mutating endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    PatchConfig,
    PutConfig,
    Switchover,
    Failover,
    DeleteSwitchover,
    Restart,
    CancelRestart,
    Reinitialize,
    Reload,
}

/// Whether an endpoint reads a JSON body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyRule {
    /// The body is not read.
    Ignored,
    /// Absent (no `Content-Length`) or empty means `{}`.
    Optional,
    /// Without `Content-Length`: 411; empty: 400.
    Required,
}

impl Endpoint {
    /// Dispatch on the method and the first path segment, as Patroni does.
    fn route(method: &Method, uri: &Uri) -> Option<Endpoint> {
        let segment = uri
            .path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        Some(match (method.as_str(), segment) {
            ("PATCH", "config") => Endpoint::PatchConfig,
            ("PUT", "config") => Endpoint::PutConfig,
            ("POST", "switchover") => Endpoint::Switchover,
            ("POST", "failover") => Endpoint::Failover,
            ("DELETE", "switchover") => Endpoint::DeleteSwitchover,
            ("POST", "restart") => Endpoint::Restart,
            ("DELETE", "restart") => Endpoint::CancelRestart,
            ("POST", "reinitialize") => Endpoint::Reinitialize,
            ("POST", "reload") => Endpoint::Reload,
            _ => return None,
        })
    }

    fn body_rule(self) -> BodyRule {
        match self {
            Endpoint::PatchConfig
            | Endpoint::PutConfig
            | Endpoint::Switchover
            | Endpoint::Failover => BodyRule::Required,
            Endpoint::Restart | Endpoint::Reinitialize => BodyRule::Optional,
            Endpoint::DeleteSwitchover | Endpoint::CancelRestart | Endpoint::Reload => {
                BodyRule::Ignored
            }
        }
    }
}

/// Read the request body as a JSON object according to `rule`. Nothing has been done yet when
/// this fails, so an error leaves no trace.
async fn read_json_object(
    headers: &HeaderMap,
    body: Body,
    rule: BodyRule,
    timeout: Duration,
) -> Result<Map<String, Value>, Reply> {
    if rule == BodyRule::Ignored {
        return Ok(Map::new());
    }
    let too_large = || {
        Reply::text(
            413,
            format!("Request body is larger than the limit of {MAX_BODY} bytes"),
        )
    };
    match headers.get(header::CONTENT_LENGTH) {
        // A chunked body to an endpoint whose body is optional is read all the same, so that
        // filters (e.g. `restart_pending`) are never silently dropped.
        None if rule == BodyRule::Optional && !headers.contains_key(header::TRANSFER_ENCODING) => {
            return Ok(Map::new())
        }
        None if rule == BodyRule::Optional => {}
        None => return Err(Reply::text(411, "Content-Length is required")),
        Some(v) => {
            let length = v
                .to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| Reply::text(400, "Content-Length is not a number"))?;
            if length > MAX_BODY as u64 {
                return Err(too_large());
            }
        }
    }
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e))
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) =>
        {
            return Err(too_large())
        }
        Ok(Err(e)) => {
            return Err(Reply::text(
                400,
                format!("Could not read the request body: {e}"),
            ))
        }
        Err(_) => return Err(Reply::text(408, "The request body did not arrive in time")),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if rule == BodyRule::Optional {
            return Ok(Map::new());
        }
        return Err(Reply::text(
            400,
            "Request body is empty; a JSON object is required",
        ));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Reply::text(
            400,
            format!(
                "Request body must be a JSON object, not {}",
                json_kind(&other)
            ),
        )),
        Err(e) => Err(Reply::text(
            400,
            format!("Request body is not valid JSON: {e}"),
        )),
    }
}

/// The JSON type of `v` in words.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A fresh read of the cluster from the DCS: 503 when there is no DCS or the read fails.
pub(crate) async fn read_cluster(ctx: &ApiContext, timeout: Duration) -> Result<Cluster, Reply> {
    let Some(dcs) = &ctx.dcs else {
        return Err(Reply::text(503, "DCS is not available"));
    };
    match tokio::time::timeout(timeout, dcs.snapshot()).await {
        Ok(Ok(snap)) => Ok(decode_cluster(&snap)),
        Ok(Err(e)) => Err(Reply::text(503, format!("DCS is not accessible: {e}"))),
        Err(_) => Err(Reply::text(
            503,
            "DCS is not accessible: the read timed out",
        )),
    }
}

/// Answer a mutating request (any method but GET, HEAD and OPTIONS).
pub(crate) async fn mutate(
    ctx: &ApiContext,
    tuning: &Tuning,
    req: Incoming<'_>,
    body: Body,
) -> Reply {
    let Some(endpoint) = Endpoint::route(req.method, req.uri) else {
        return Reply::error(
            501,
            &format!("Unsupported method ({:?})", req.method.as_str()),
        );
    };
    let s = ctx.state.borrow().clone();
    let restapi = ctx.restapi.current();
    if let Err(denied) = access::check_access(
        &restapi,
        &s,
        req.headers,
        req.client,
        tuning.resolve_timeout,
    )
    .await
    {
        return denied;
    }
    let body = match read_json_object(req.headers, body, endpoint.body_rule(), tuning.body_timeout)
        .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    let reply = match endpoint {
        Endpoint::PatchConfig => config_edit::patch_config(ctx, tuning, body).await,
        Endpoint::PutConfig => config_edit::put_config(ctx, tuning, body).await,
        Endpoint::Switchover => {
            switchover::post(ctx, tuning, &s, switchover::Action::Switchover, &body).await
        }
        Endpoint::Failover => {
            switchover::post(ctx, tuning, &s, switchover::Action::Failover, &body).await
        }
        Endpoint::DeleteSwitchover => switchover::delete(ctx, tuning).await,
        Endpoint::Restart => commands::restart(ctx, &s, &body).await,
        Endpoint::CancelRestart => commands::cancel_restart(ctx, &s).await,
        Endpoint::Reinitialize => commands::reinitialize(ctx, &s, &body).await,
        Endpoint::Reload => commands::reload(ctx, &s).await,
    };
    tracing::info!(
        method = %req.method,
        path = %req.uri.path(),
        client = ?req.client,
        status = reply.status,
        message = %reply.message(),
        "REST API request"
    );
    reply
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::api::testutil::{call, call_raw, context, restapi};
    use crate::ha::state::NodeState;

    #[tokio::test]
    async fn unknown_mutating_paths_are_501() {
        let (ctx, _tx) = context(NodeState::new("pg0", "demo", ""), None, restapi(None));
        for (m, p) in [
            ("POST", "/whatever"),
            ("PUT", "/switchover"),
            ("PATCH", "/restart"),
            ("DELETE", "/config"),
            ("POST", "/failsafe"),
        ] {
            let r = call(&ctx, m, p, Some("{}")).await;
            assert_eq!(r.status, 501, "{m} {p}");
            assert!(r.message().contains("Unsupported method"), "{m} {p}");
        }
    }

    #[tokio::test]
    async fn bodies_are_checked_before_anything_happens() {
        let (ctx, _tx) = context(NodeState::new("pg0", "demo", ""), None, restapi(None));
        // No Content-Length on a body-required endpoint.
        let r = call_raw(&ctx, "POST", "/switchover", HeaderMap::new(), None, "").await;
        assert_eq!(r.status, 411);
        // Empty, invalid, wrong shape.
        let r = call(&ctx, "POST", "/failover", Some("")).await;
        assert_eq!(
            (r.status, r.message()),
            (400, "Request body is empty; a JSON object is required")
        );
        let r = call(&ctx, "PATCH", "/config", Some("{\"ttl\": ")).await;
        assert_eq!(r.status, 400);
        assert!(
            r.message().starts_with("Request body is not valid JSON"),
            "{}",
            r.message()
        );
        let r = call(&ctx, "PUT", "/config", Some("[1, 2]")).await;
        assert_eq!(
            (r.status, r.message()),
            (400, "Request body must be a JSON object, not an array")
        );
        // Oversized, by header and by actual size.
        let big = format!("{{\"x\": \"{}\"}}", "a".repeat(MAX_BODY));
        let r = call(&ctx, "PATCH", "/config", Some(&big)).await;
        assert_eq!(r.status, 413);
        assert_eq!(
            r.message(),
            "Request body is larger than the limit of 65536 bytes"
        );
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        let r = call_raw(&ctx, "PATCH", "/config", h, None, &big).await;
        assert_eq!(r.status, 413);
        // Chunked (no Content-Length): 411 where a body is required, read where it is optional.
        let mut chunked = HeaderMap::new();
        chunked.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let r = call_raw(&ctx, "PUT", "/config", chunked.clone(), None, "{}").await;
        assert_eq!(r.status, 411);
        let r = call_raw(
            &ctx,
            "POST",
            "/restart",
            chunked.clone(),
            None,
            "{\"x\": 1}",
        )
        .await;
        assert_eq!(
            (r.status, r.message()),
            (400, "Unknown filter for the scheduled restart: x")
        );
        let r = call_raw(&ctx, "POST", "/restart", chunked, None, &big).await;
        assert_eq!(r.status, 413);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("ten"));
        let r = call_raw(&ctx, "PATCH", "/config", h, None, "{}").await;
        assert_eq!(
            (r.status, r.message()),
            (400, "Content-Length is not a number")
        );
        // Optional bodies: absent or empty is `{}` (here: no command channel, hence 503).
        let r = call_raw(&ctx, "POST", "/restart", HeaderMap::new(), None, "").await;
        assert_eq!(r.status, 503);
        let r = call(&ctx, "POST", "/reinitialize", Some("")).await;
        assert_eq!(r.status, 503);
        let r = call(&ctx, "POST", "/reinitialize", Some("\"x\"")).await;
        assert_eq!(r.status, 400);
    }

    #[tokio::test]
    async fn access_control_comes_before_the_body() {
        let mut r = restapi(Some(("admin", "pw")));
        r.allowlist = vec!["10.0.0.0/8".into()];
        let (ctx, _tx) = context(NodeState::new("pg0", "demo", ""), None, r);
        let outsider = Some("192.168.1.1".parse().unwrap());
        let inside = Some("10.0.0.1".parse().unwrap());
        let r = call_raw(&ctx, "POST", "/switchover", HeaderMap::new(), outsider, "").await;
        assert_eq!((r.status, r.message()), (403, "Access is denied"));
        let r = call_raw(&ctx, "POST", "/switchover", HeaderMap::new(), inside, "").await;
        assert_eq!((r.status, r.message()), (401, "no auth header received"));
        assert_eq!(r.headers[0].1, "Basic realm=\"Patroni\"");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWRtaW46cHc="), // admin:pw
        );
        let r = call_raw(&ctx, "POST", "/switchover", h, inside, "").await;
        assert_eq!(r.status, 411);
        // No peer address known (router served without connect info): denied.
        let r = call_raw(&ctx, "POST", "/reload", HeaderMap::new(), None, "").await;
        assert_eq!(r.status, 403);
    }
}
