//! A tiny blocking HTTP/1.1 client for the REST API (loopback, or any IPv4 address).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Sends `METHOD path` to 127.0.0.1:`port` and returns the status code and the body as JSON
/// (a JSON string holding the raw text when the body is not JSON; `null` when empty).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let r = exchange(port, method, path, &[], body.map(str::as_bytes), timeout)?;
    Ok((r.status, to_json(&r.body)))
}

/// A whole response: status, headers (names lower-cased, in order) and the raw body.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// (lower-cased name, value), in the order received.
    pub headers: Vec<(String, String)>,
    /// The body bytes (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (a JSON string holding the text when it is not JSON; `null` when
    /// empty).
    pub fn json(&self) -> Value {
        to_json(&self.body)
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `STATUS body` on one line (body cut to 300 characters), for assertion messages.
    pub fn summary(&self) -> String {
        let t = self.text();
        let t = t.trim();
        let cut: String = t.chars().take(300).collect();
        if cut.len() < t.len() {
            format!("{} {cut}…", self.status)
        } else {
            format!("{} {cut}", self.status)
        }
    }
}

/// Basic-auth credentials.
#[derive(Clone, Copy, Debug)]
pub struct Auth<'a> {
    /// User name.
    pub username: &'a str,
    /// Password.
    pub password: &'a str,
}

impl Auth<'_> {
    /// The `Authorization` header value: `Basic base64(user:password)`.
    pub fn header_value(&self) -> String {
        format!(
            "Basic {}",
            base64_encode(format!("{}:{}", self.username, self.password).as_bytes())
        )
    }
}

/// `METHOD path` with an optional JSON body and Basic auth; the whole response. The timeout
/// bounds connect, send and receive together (mutating endpoints such as `POST /switchover`
/// answer only when the operation is over: give them tens of seconds).
pub fn call(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<Auth<'_>>,
    timeout: Duration,
) -> Result<Response, String> {
    let auth_header = auth.map(|a| a.header_value());
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(h) = auth_header.as_deref() {
        headers.push(("Authorization", h));
    }
    exchange(
        port,
        method,
        path,
        &headers,
        body.map(str::as_bytes),
        timeout,
    )
}

/// The low-level exchange: sends `METHOD path` with `extra_headers` and `body` (with
/// `Content-Type: application/json` and `Content-Length` whenever there is a body or the method
/// is not GET/HEAD/OPTIONS) and reads one response. `Connection: close`.
pub fn exchange(
    port: u16,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, String> {
    exchange_at(
        std::net::Ipv4Addr::LOCALHOST,
        port,
        method,
        path,
        extra_headers,
        body,
        timeout,
    )
}

/// [`exchange`] with a server on another IPv4 address (the chaos suite's namespaces).
pub fn exchange_at(
    ip: std::net::Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, String> {
    let addr = SocketAddr::from((ip, port));
    let deadline = Instant::now() + timeout;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or(b"");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: spilo-tests\r\nAccept: application/json\r\nConnection: close\r\n");
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD" | "OPTIONS") {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream
        .write_all(&bytes)
        .map_err(|e| format!("send to {addr}: {e}"))?;

    let head_only = method == "HEAD";
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(resp) = parse_full(&buf, head_only)? {
            return Ok(resp);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "{method} {path} on {addr}: no complete response within {timeout:?}"
            ));
        }
        let _ = stream.set_read_timeout(Some(deadline - now));
        match stream.read(&mut chunk) {
            Ok(0) => {
                return parse_full_at_eof(&buf)
                    .map_err(|e| format!("{method} {path} on {addr}: {e}"));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{method} {path} on {addr}: read: {e}")),
        }
    }
}

/// Standard base64 with padding.
pub fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(c.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(c.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `GET path` with a 5 s timeout.
pub fn get(port: u16, path: &str) -> Result<(u16, Value), String> {
    request(port, "GET", path, None, Duration::from_secs(5))
}

struct Head {
    status: u16,
    body_start: usize,
    content_length: Option<usize>,
    chunked: bool,
    headers: Vec<(String, String)>,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut headers = Vec::new();
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        headers.push((k.clone(), v.to_string()));
        if k == "content-length" {
            content_length = v.parse().ok();
        } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    Ok(Some(Head {
        status,
        body_start: end + 4,
        content_length,
        chunked,
        headers,
    }))
}

/// The whole response if `buf` holds a complete one. A response to HEAD (`head_only`) ends
/// with its headers.
fn parse_full(buf: &[u8], head_only: bool) -> Result<Option<Response>, String> {
    let Some(h) = parse_head(buf)? else {
        return Ok(None);
    };
    let rest = &buf[h.body_start..];
    let body = if head_only || h.status == 204 || h.status == 304 {
        Some(Vec::new())
    } else if h.chunked {
        decode_chunked(rest)?
    } else {
        match h.content_length {
            Some(n) if rest.len() >= n => Some(rest[..n].to_vec()),
            _ => None,
        }
    };
    Ok(body.map(|body| Response {
        status: h.status,
        headers: h.headers,
        body,
    }))
}

fn parse_full_at_eof(buf: &[u8]) -> Result<Response, String> {
    if let Some(r) = parse_full(buf, false)? {
        return Ok(r);
    }
    let h = parse_head(buf)?.ok_or_else(|| {
        format!(
            "connection closed after {} bytes, before the headers ended",
            buf.len()
        )
    })?;
    if h.chunked || h.content_length.is_some() {
        return Err("connection closed before the body was complete".into());
    }
    Ok(Response {
        status: h.status,
        body: buf[h.body_start..].to_vec(),
        headers: h.headers,
    })
}

/// Decodes a chunked body; `None` while incomplete.
fn decode_chunked(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn to_json(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_response() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"role\":\"x\"}\n";
        let r = parse_full(raw, false).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["role"], "x");
        assert!(parse_full(&raw[..raw.len() - 3], false).unwrap().is_none());
    }

    #[test]
    fn chunked_response() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n";
        let r = parse_full(raw, false).unwrap().unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["a"], 1);
    }

    #[test]
    fn base64_and_auth_header() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        let a = Auth {
            username: "admin",
            password: "secret",
        };
        assert_eq!(a.header_value(), "Basic YWRtaW46c2VjcmV0");
    }

    #[test]
    fn full_response_keeps_headers() {
        let raw = b"HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"Patroni\"\r\nContent-Length: 2\r\n\r\nno";
        let r = parse_full(raw, false).unwrap().unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"Patroni\"")
        );
        assert_eq!(r.text(), "no");
        let head = b"HTTP/1.0 200 OK\r\n\r\n";
        assert_eq!(parse_full(head, true).unwrap().unwrap().status, 200);
        assert!(parse_full(head, false).unwrap().is_none());
        assert_eq!(parse_full_at_eof(head).unwrap().status, 200);
    }

    #[test]
    fn non_json_body_at_eof() {
        let raw = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert!(parse_full(raw, false).unwrap().is_none());
        let r = parse_full_at_eof(raw).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.json(), Value::String("nope".into()));
    }
}
