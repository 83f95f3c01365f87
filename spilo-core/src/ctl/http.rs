//! REST calls to members' APIs: any method, an optional JSON body, Basic auth, one deadline,
//! over the one HTTP client (`api::client::exchange`).

use std::time::Duration;

use base64::Engine as _;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use hyper::Method;
use serde_json::Value;

use crate::config::BasicAuth;

/// Why a REST call failed: the one client's error (an HTTP error status is not a failure).
pub type HttpError = crate::api::client::ClientError;

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
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut headers = vec![
        (
            USER_AGENT,
            concat!("spiloctl/", env!("CARGO_PKG_VERSION")).to_string(),
        ),
        (ACCEPT, "application/json".to_string()),
    ];
    if body.is_some() {
        headers.push((CONTENT_TYPE, "application/json".to_string()));
    }
    if method != Method::GET && method != Method::HEAD {
        headers.push((CONTENT_LENGTH, payload.len().to_string()));
    }
    if let Some(a) = auth {
        headers.push((AUTHORIZATION, basic_auth_header(a)));
    }
    let (status, bytes) =
        crate::api::client::exchange(method, url, &headers, payload.into_bytes(), timeout).await?;
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
