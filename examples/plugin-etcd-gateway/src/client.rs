//! Calls to etcd's v3 JSON gateway: one endpoint at a time, moving on to the next one when the
//! current one fails, retrying until the caller's deadline; authentication tokens; and the
//! decoding of what the gateway sends (base64 keys and values, 64-bit integers as strings,
//! fields left out when zero).
//!
//! Error classes (after gRPC codes carried in the gateway's error body):
//! - transport (no connection, reset, no answer in time, `Unavailable`, `DeadlineExceeded`,
//!   garbage instead of JSON): try the next endpoint;
//! - `NotFound` "lease not found": the caller grants a new lease;
//! - `Unauthenticated`: authenticate again, once;
//! - anything else: the store refused.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use spilo_sdk::plugin::PluginError;

use crate::http;
use crate::settings::GatewaySettings;

/// Pause after every endpoint failed once, before trying them again.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// gRPC status codes, as the gateway reports them in `{"code": n}`.
const CANCELLED: i64 = 1;
const UNKNOWN: i64 = 2;
const DEADLINE_EXCEEDED: i64 = 4;
const NOT_FOUND: i64 = 5;
const UNAVAILABLE: i64 = 14;
const UNAUTHENTICATED: i64 = 16;

/// Why one attempt against one endpoint failed.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// Worth another endpoint; `timed_out` when it was silence rather than an error.
    Transport { message: String, timed_out: bool },
    /// etcd does not know the lease (any more).
    LeaseGone(String),
    /// The auth token is missing, expired or revoked.
    Unauthenticated(String),
    /// etcd answered with an error.
    Refused(String),
}

impl Failure {
    /// The error the plugin returns for it.
    pub(crate) fn into_plugin_error(self) -> PluginError {
        match self {
            Failure::Transport {
                message,
                timed_out: true,
            } => PluginError::timeout(message),
            Failure::Transport { message, .. } => PluginError::unavailable(message),
            Failure::LeaseGone(message)
            | Failure::Unauthenticated(message)
            | Failure::Refused(message) => PluginError::refused(message),
        }
    }

    /// The error the plugin returns for it from operation `op`, whose name starts the message.
    pub(crate) fn during(self, op: &str) -> PluginError {
        let mut error = self.into_plugin_error();
        if !error.message.starts_with(op) {
            error.message = format!("{op}: {}", error.message);
        }
        error
    }

    fn garbage(what: impl std::fmt::Display) -> Failure {
        Failure::Transport {
            message: format!("bad answer: {what}"),
            timed_out: false,
        }
    }
}

impl From<http::HttpError> for Failure {
    fn from(e: http::HttpError) -> Failure {
        Failure::Transport {
            message: e.message,
            timed_out: e.timed_out,
        }
    }
}

/// Sorts a non-200 answer by the gRPC code in its JSON body.
pub(crate) fn classify_answer(status: u16, body: &[u8]) -> Failure {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Failure::garbage(format!("HTTP {status}: {text}"));
    };
    let message = v["message"]
        .as_str()
        .or_else(|| v["error"].as_str())
        .unwrap_or("no message")
        .to_string();
    match v["code"].as_i64() {
        Some(code) => classify_code(code, message),
        None if status >= 500 => Failure::Transport {
            message: format!("HTTP {status}: {message}"),
            timed_out: false,
        },
        None => Failure::Refused(format!("HTTP {status}: {message}")),
    }
}

/// Sorts an error a stream reported in-band (`{"error": {"grpc_code": …, "message": …}}`).
pub(crate) fn classify_stream_error(error: &Value) -> Failure {
    let message = error["message"]
        .as_str()
        .map_or_else(|| error.to_string(), String::from);
    classify_code(error["grpc_code"].as_i64().unwrap_or(UNKNOWN), message)
}

/// Sorts a gRPC status code.
fn classify_code(code: i64, message: String) -> Failure {
    match code {
        NOT_FOUND if message.contains("lease not found") => Failure::LeaseGone(message),
        UNAUTHENTICATED => Failure::Unauthenticated(message),
        UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | UNKNOWN => Failure::Transport {
            message,
            timed_out: false,
        },
        _ => Failure::Refused(message),
    }
}

/// The endpoint in use; `generation` counts switches so that callers which saw the same
/// failure switch only once.
struct Current {
    index: usize,
    generation: u64,
}

/// The gateway of one etcd cluster.
pub(crate) struct Client {
    settings: GatewaySettings,
    current: Mutex<Current>,
    /// The auth token, when authentication is configured and done.
    token: Mutex<Option<String>>,
}

/// Locks `m`, ignoring poisoning (the data stays consistent: every update is one store).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    pub(crate) fn new(settings: GatewaySettings) -> Client {
        Client {
            settings,
            current: Mutex::new(Current {
                index: 0,
                generation: 0,
            }),
            token: Mutex::new(None),
        }
    }

    /// The endpoint in use and its generation.
    pub(crate) fn endpoint(&self) -> (String, u64) {
        let c = lock(&self.current);
        let host = self
            .settings
            .hosts
            .get(c.index)
            .cloned()
            .unwrap_or_default();
        (host, c.generation)
    }

    /// Moves on to the next endpoint, unless somebody did since `generation`.
    pub(crate) fn rotate(&self, generation: u64) {
        let mut c = lock(&self.current);
        if c.generation == generation {
            c.index = (c.index + 1) % self.settings.hosts.len().max(1);
            c.generation += 1;
        }
    }

    /// The auth token to send to `host`, authenticating first when needed.
    pub(crate) fn token(&self, host: &str, deadline: Instant) -> Result<Option<String>, Failure> {
        let Some((user, password)) = &self.settings.credentials else {
            return Ok(None);
        };
        if let Some(token) = lock(&self.token).clone() {
            return Ok(Some(token));
        }
        let body = json!({"name": user, "password": password}).to_string();
        let answer = exchange(host, "/v3/auth/authenticate", None, &body, deadline)?;
        let token = answer["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Failure::garbage("authenticate answered without a token"))?
            .to_string();
        *lock(&self.token) = Some(token.clone());
        Ok(Some(token))
    }

    /// Forgets the token after etcd refused it.
    pub(crate) fn forget_token(&self) {
        *lock(&self.token) = None;
    }

    /// The deadline of one attempt: a share of the call's time so that a silent endpoint
    /// leaves time for the others (at most three shares, at least a second).
    fn attempt_budget(&self, deadline: Instant) -> Duration {
        let total = deadline.saturating_duration_since(Instant::now());
        let spread = u32::try_from(self.settings.hosts.len().clamp(1, 3)).unwrap_or(1);
        (total / spread).max(total.min(Duration::from_secs(1)))
    }

    /// `POST path` with `body`, retrying on other endpoints until `deadline`. The error is
    /// the last attempt's, or a timeout.
    pub(crate) fn call(
        &self,
        op: &str,
        path: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<Value, Failure> {
        let body = body.to_string();
        let budget = self.attempt_budget(deadline);
        let mut last: Option<Failure> = None;
        let mut failures = 0usize;
        let mut reauthenticated = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                let last = last.unwrap_or(Failure::Transport {
                    message: "deadline passed".into(),
                    timed_out: true,
                });
                return Err(match last {
                    Failure::Transport { message, timed_out } => Failure::Transport {
                        message: format!("{op}: {message} (retried until the deadline)"),
                        timed_out,
                    },
                    other => other,
                });
            }
            let (host, generation) = self.endpoint();
            let attempt_deadline = deadline.min(now + budget);
            let attempt = self
                .token(&host, attempt_deadline)
                .and_then(|token| exchange(&host, path, token.as_deref(), &body, attempt_deadline));
            match attempt {
                Ok(value) => return Ok(value),
                Err(Failure::Transport { message, timed_out }) => {
                    self.rotate(generation);
                    last = Some(Failure::Transport {
                        message: format!("{host}: {message}"),
                        timed_out,
                    });
                }
                Err(Failure::Unauthenticated(message)) if !reauthenticated => {
                    reauthenticated = true;
                    self.forget_token();
                    last = Some(Failure::Unauthenticated(format!("{op}: {host}: {message}")));
                    continue;
                }
                Err(Failure::Unauthenticated(message)) => {
                    return Err(Failure::Unauthenticated(format!("{op}: {host}: {message}")))
                }
                Err(Failure::LeaseGone(message)) => {
                    return Err(Failure::LeaseGone(format!("{op}: {host}: {message}")))
                }
                Err(Failure::Refused(message)) => {
                    return Err(Failure::Refused(format!("{op}: {host}: {message}")))
                }
            }
            failures += 1;
            if failures >= self.settings.hosts.len() {
                failures = 0;
                let pause = ROUND_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
                std::thread::sleep(pause);
            }
        }
    }
}

/// One request to one endpoint: the decoded JSON answer of a `200`, or the failure.
fn exchange(
    host: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
    deadline: Instant,
) -> Result<Value, Failure> {
    let response = http::post(host, path, token, body.as_bytes(), deadline)?;
    let status = response.status;
    let bytes = response.body(deadline)?;
    if status != 200 {
        return Err(classify_answer(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| Failure::garbage(format!("invalid JSON: {e}")))
}

/// Base64 of `bytes`, as the gateway wants keys and values.
pub(crate) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The end of the range of keys starting with `prefix` (etcd's `range_end` for a prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from the prefix on.
    vec![0]
}

/// A 64-bit integer field: the gateway writes them as strings and leaves out zeros.
pub(crate) fn int(v: &Value, field: &str) -> Result<i64, Failure> {
    match &v[field] {
        Value::Null => Ok(0),
        Value::String(s) => s
            .parse()
            .map_err(|_| Failure::garbage(format!("{field} is not an integer: {s:?}"))),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| Failure::garbage(format!("{field} is not an integer: {n}"))),
        other => Err(Failure::garbage(format!(
            "{field} is not an integer: {other}"
        ))),
    }
}

/// A base64 field (keys, values); absent means empty.
pub(crate) fn bytes(v: &Value, field: &str) -> Result<Vec<u8>, Failure> {
    match &v[field] {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => B64
            .decode(s)
            .map_err(|e| Failure::garbage(format!("{field} is not base64: {e}"))),
        other => Err(Failure::garbage(format!("{field} is not base64: {other}"))),
    }
}

/// A boolean field; absent means false.
pub(crate) fn flag(v: &Value, field: &str) -> Result<bool, Failure> {
    match &v[field] {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        other => Err(Failure::garbage(format!(
            "{field} is not a boolean: {other}"
        ))),
    }
}

/// A list field; absent means empty.
pub(crate) fn list<'a>(v: &'a Value, field: &str) -> Result<&'a [Value], Failure> {
    match &v[field] {
        Value::Null => Ok(&[]),
        Value::Array(items) => Ok(items),
        other => Err(Failure::garbage(format!("{field} is not a list: {other}"))),
    }
}

/// One key-value as etcd describes it.
#[derive(Debug)]
pub(crate) struct Kv {
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
    pub(crate) mod_revision: i64,
    #[cfg_attr(feature = "abi-1-0", allow(dead_code))]
    pub(crate) create_revision: i64,
    pub(crate) lease: i64,
}

/// Decodes a `mvccpb.KeyValue`.
pub(crate) fn kv(v: &Value) -> Result<Kv, Failure> {
    if !v.is_object() {
        return Err(Failure::garbage(format!("key-value is not an object: {v}")));
    }
    Ok(Kv {
        key: bytes(v, "key")?,
        value: bytes(v, "value")?,
        mod_revision: int(v, "mod_revision")?,
        create_revision: int(v, "create_revision")?,
        lease: int(v, "lease")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/service/a/"), b"/service/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn gateway_values_decode_and_garbage_is_an_error() {
        let v = json!({"key": "bGVhZGVy", "mod_revision": "7", "lease": 12});
        let kv = kv(&v).expect("valid");
        assert_eq!((kv.key.as_slice(), kv.value.len()), (&b"leader"[..], 0));
        assert_eq!((kv.mod_revision, kv.lease), (7, 12));
        assert!(matches!(
            kv_of(json!({"key": "!!"})),
            Err(Failure::Transport { .. })
        ));
        assert!(kv_of(json!({"key": "a2V5", "mod_revision": "x"})).is_err());
        assert!(kv_of(json!({"key": "a2V5", "lease": 1.5})).is_err());
        assert!(kv_of(json!([1])).is_err());
        assert!(flag(&json!({"succeeded": "yes"}), "succeeded").is_err());
        assert!(list(&json!({"kvs": {}}), "kvs").is_err());
    }

    fn kv_of(v: Value) -> Result<Kv, Failure> {
        kv(&v)
    }

    #[test]
    fn error_bodies_are_classified_by_grpc_code() {
        let lease = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        assert!(matches!(classify_answer(404, lease), Failure::LeaseGone(_)));
        let no_leader = br#"{"error":"etcdserver: no leader","code":14}"#;
        assert!(matches!(
            classify_answer(503, no_leader),
            Failure::Transport { .. }
        ));
        let token = br#"{"message":"etcdserver: invalid auth token","code":16}"#;
        assert!(matches!(
            classify_answer(401, token),
            Failure::Unauthenticated(_)
        ));
        let bad = br#"{"message":"illegal base64","code":3}"#;
        assert!(matches!(classify_answer(400, bad), Failure::Refused(_)));
        assert!(matches!(
            classify_answer(502, b"<html>"),
            Failure::Transport { .. }
        ));
    }
}
