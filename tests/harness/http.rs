//! A tiny blocking HTTP/1.1 client for the REST API (loopback only).

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
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: spilo-tests\r\nAccept: application/json\r\nConnection: close\r\n");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(resp) = parse_response(&buf)? {
            return Ok(resp);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{method} {path} on {addr}: no complete response within {timeout:?}"
            ));
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return parse_response_at_eof(&buf)
                    .map_err(|e| format!("{method} {path} on {addr}: {e}"));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{method} {path} on {addr}: read: {e}")),
        }
    }
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
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
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
    }))
}

/// The response if `buf` holds a complete one (by Content-Length or the last chunk).
fn parse_response(buf: &[u8]) -> Result<Option<(u16, Value)>, String> {
    let Some(h) = parse_head(buf)? else {
        return Ok(None);
    };
    let rest = &buf[h.body_start..];
    if h.chunked {
        return Ok(decode_chunked(rest)?.map(|b| (h.status, to_json(&b))));
    }
    match h.content_length {
        Some(n) if rest.len() >= n => Ok(Some((h.status, to_json(&rest[..n])))),
        Some(_) => Ok(None),
        None if h.status == 204 || h.status == 304 => Ok(Some((h.status, Value::Null))),
        None => Ok(None),
    }
}

fn parse_response_at_eof(buf: &[u8]) -> Result<(u16, Value), String> {
    if let Some(r) = parse_response(buf)? {
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
    Ok((h.status, to_json(&buf[h.body_start..])))
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
        let (s, v) = parse_response(raw).unwrap().unwrap();
        assert_eq!(s, 200);
        assert_eq!(v["role"], "x");
        assert!(parse_response(&raw[..raw.len() - 3]).unwrap().is_none());
    }

    #[test]
    fn chunked_response() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n";
        let (s, v) = parse_response(raw).unwrap().unwrap();
        assert_eq!(s, 503);
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn non_json_body_at_eof() {
        let raw = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert!(parse_response(raw).unwrap().is_none());
        let (s, v) = parse_response_at_eof(raw).unwrap();
        assert_eq!(s, 404);
        assert_eq!(v, Value::String("nope".into()));
    }
}
