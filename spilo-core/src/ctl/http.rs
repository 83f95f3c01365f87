//! REST calls to members' APIs: any method, an optional JSON body, Basic auth, one deadline.

use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use hyper::Method;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::BasicAuth;

const MAX_BODY: usize = 4 << 20;

/// Why a REST call failed (an HTTP error status is not a failure here).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL does not parse or has no host.
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    /// Only `http://` is supported.
    #[error("unsupported URL scheme in {0:?} (only http is supported)")]
    UnsupportedScheme(String),
    /// Nothing accepted the connection.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No complete answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Sending the request or reading the answer failed.
    #[error("request failed: {0}")]
    Request(String),
}

impl HttpError {
    /// True when the request certainly never reached the server.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            HttpError::Connect(_) | HttpError::InvalidUrl(_) | HttpError::UnsupportedScheme(_)
        )
    }
}

/// An answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl Response {
    /// The body parsed as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The body as one line (a JSON string unquoted).
    pub fn text(&self) -> String {
        super::common::answer_text(&self.body)
    }

    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// An error and its chain of sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    crate::error_chain(e)
}

/// `api_url` with its path (and query) replaced by `/<endpoint>`; an empty endpoint keeps
/// `api_url` as is (`GET <api_url>` is the status body).
pub fn endpoint_url(api_url: &str, endpoint: &str) -> Result<String, HttpError> {
    let uri: hyper::Uri = api_url
        .parse()
        .map_err(|_| HttpError::InvalidUrl(api_url.to_string()))?;
    let (Some(scheme), Some(auth)) = (uri.scheme_str(), uri.authority()) else {
        return Err(HttpError::InvalidUrl(api_url.to_string()));
    };
    if endpoint.is_empty() {
        return Ok(api_url.to_string());
    }
    Ok(format!(
        "{scheme}://{auth}/{}",
        endpoint.trim_start_matches('/')
    ))
}

/// `Basic base64(user:password)`.
pub fn basic_auth_header(auth: &BasicAuth) -> String {
    let raw = format!("{}:{}", auth.username, auth.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Send `method url` with `body` as JSON (none: an empty body), Basic auth if given, all
/// within `timeout`. Any status is an `Ok` answer.
pub async fn request_json(
    method: Method,
    url: &str,
    body: Option<&Value>,
    auth: Option<&BasicAuth>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| HttpError::InvalidUrl(url.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(HttpError::UnsupportedScheme(url.to_string())),
        None => return Err(HttpError::InvalidUrl(url.to_string())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(HttpError::InvalidUrl(url.to_string()));
    }
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = hyper::Request::builder()
        .method(method.clone())
        .uri(uri)
        .header(USER_AGENT, concat!("spiloctl/", env!("CARGO_PKG_VERSION")))
        .header(ACCEPT, "application/json");
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    if method != Method::GET && method != Method::HEAD {
        req = req.header(CONTENT_LENGTH, payload.len());
    }
    if let Some(a) = auth {
        req = req.header(AUTHORIZATION, basic_auth_header(a));
    }
    let req = req
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| HttpError::Request(chain(&e)))?;
    match tokio::time::timeout(timeout, send(req)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout(timeout)),
    }
}

async fn send(req: hyper::Request<Full<Bytes>>) -> Result<Response, HttpError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let resp = client.request(req).await.map_err(|e| {
        if e.is_connect() {
            HttpError::Connect(chain(&e))
        } else {
            HttpError::Request(chain(&e))
        }
    })?;
    let status = resp.status().as_u16();
    let bytes = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| HttpError::Request(chain(&*e)))?
        .to_bytes();
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            endpoint_url("http://10.0.0.1:8008/patroni", "switchover").unwrap(),
            "http://10.0.0.1:8008/switchover"
        );
        assert_eq!(
            endpoint_url("http://[::1]:8008/patroni?x=1", "/restart").unwrap(),
            "http://[::1]:8008/restart"
        );
        assert_eq!(
            endpoint_url("http://h:1/patroni", "").unwrap(),
            "http://h:1/patroni"
        );
        assert!(endpoint_url("", "x").is_err());
        assert!(endpoint_url("h:1/patroni", "x").is_err());
        let a = BasicAuth {
            username: "admin".into(),
            password: "secret".into(),
        };
        assert_eq!(basic_auth_header(&a), "Basic YWRtaW46c2VjcmV0");
    }

    /// One canned answer from a one-shot server; the request it got is returned.
    async fn serve_once(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/patroni", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            // Read the head and a body announced by Content-Length.
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if got.len() >= i + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8_lossy(&got).to_string()
        });
        (url, h)
    }

    #[tokio::test]
    async fn sends_method_body_and_auth() {
        let (url, h) =
            serve_once("HTTP/1.0 202 Accepted\r\nContent-Type: text/html\r\n\r\nRestart scheduled")
                .await;
        let auth = BasicAuth {
            username: "admin".into(),
            password: "secret".into(),
        };
        let url = endpoint_url(&url, "restart").unwrap();
        let body = serde_json::json!({"schedule": "2030-01-01T00:00:00+00:00"});
        let r = request_json(
            Method::POST,
            &url,
            Some(&body),
            Some(&auth),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 202);
        assert!(r.ok());
        assert_eq!(r.text(), "Restart scheduled");
        let got = h.await.unwrap();
        assert!(got.starts_with("POST /restart HTTP/1.1\r\n"), "{got}");
        let lower = got.to_ascii_lowercase();
        assert!(
            lower.contains("authorization: basic ywrtaw46c2vjcmv0"),
            "{got}"
        );
        assert!(lower.contains("content-type: application/json"), "{got}");
        assert!(got.ends_with(&body.to_string()), "{got}");
    }

    #[tokio::test]
    async fn empty_post_has_content_length_zero() {
        let (url, h) = serve_once("HTTP/1.0 503 Service Unavailable\r\n\r\n\"busy\"").await;
        let url = endpoint_url(&url, "reload").unwrap();
        let r = request_json(Method::POST, &url, None, None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((r.status, r.text()), (503, "busy".to_string()));
        assert!(!r.ok());
        let got = h.await.unwrap().to_ascii_lowercase();
        assert!(got.contains("content-length: 0"), "{got}");
        assert!(!got.contains("authorization"), "{got}");
    }

    #[tokio::test]
    async fn connection_refused_is_never_sent() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url = format!("http://127.0.0.1:{port}/switchover");
        let e = request_json(Method::POST, &url, None, None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.never_sent(), "{e}");
        let e = request_json(
            Method::GET,
            "https://h/x",
            None,
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HttpError::UnsupportedScheme(_)));
    }
}
