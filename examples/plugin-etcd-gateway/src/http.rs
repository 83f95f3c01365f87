//! A minimal blocking HTTP/1.1 client: one `POST` per TCP connection (`Connection: close`),
//! plain http only.
//!
//! Why not a general-purpose client: every step here is bounded by the caller's deadline
//! (name resolution, connect, write, and *each* read), and a streaming body can be read with a
//! short deadline, resumed after a timeout without losing bytes, and abandoned at any point.
//! The watch thread relies on that to notice a stop request within a fraction of a second, so
//! the host can join it before unloading the library.
//!
//! Invariants: nothing here panics on what the server sends; headers and bodies are bounded
//! ([`MAX_HEAD`], [`MAX_BODY`]); a read that times out consumes nothing, so the next read
//! resumes exactly where the previous one stopped.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::Instant;

/// The longest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The largest unary response body accepted.
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;

/// A failed HTTP exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpError {
    /// The deadline passed (as opposed to a refused connection, a reset, garbage …).
    pub(crate) timed_out: bool,
    /// What happened.
    pub(crate) message: String,
}

impl HttpError {
    fn timeout(what: &str) -> HttpError {
        HttpError {
            timed_out: true,
            message: format!("{what}: deadline passed"),
        }
    }

    fn other(message: impl Into<String>) -> HttpError {
        HttpError {
            timed_out: false,
            message: message.into(),
        }
    }

    fn io(what: &str, error: &std::io::Error) -> HttpError {
        match error.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => HttpError::timeout(what),
            _ => HttpError::other(format!("{what}: {error}")),
        }
    }
}

/// Time left until `deadline`, or a timeout error naming `what` when none is.
fn left(deadline: Instant, what: &str) -> Result<std::time::Duration, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(HttpError::timeout(what))
    } else {
        Ok(left)
    }
}

/// The addresses of `host` (`name:port`, `1.2.3.4:port`, `[::1]:port`). Literal addresses need
/// no lookup; names are resolved on a helper thread so that a hanging resolver cannot hold the
/// caller past `deadline` (the helper then finishes on its own).
fn resolve(host: &str, deadline: Instant) -> Result<Vec<SocketAddr>, HttpError> {
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let (tx, rx) = mpsc::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("etcd-gw-resolve".into())
        .spawn(move || {
            let _ = tx.send(name.to_socket_addrs().map(Iterator::collect::<Vec<_>>));
        })
        .map_err(|e| HttpError::other(format!("resolve {host}: cannot start thread: {e}")))?;
    match rx.recv_timeout(left(deadline, "resolve")?) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(HttpError::other(format!("resolve {host}: no addresses"))),
        Ok(Err(e)) => Err(HttpError::other(format!("resolve {host}: {e}"))),
        Err(_) => Err(HttpError::timeout("resolve")),
    }
}

/// One connection, with the bytes read from it but not yet consumed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    fn fill(&mut self, deadline: Instant) -> Result<bool, HttpError> {
        if self.eof {
            return Ok(false);
        }
        let left = left(deadline, "read")?;
        self.stream
            .set_read_timeout(Some(left))
            .map_err(|e| HttpError::io("read", &e))?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(HttpError::io("read", &e)),
            }
        }
    }

    /// The next line without its line end; consumes nothing unless a whole line arrived.
    fn line(&mut self, deadline: Instant) -> Result<String, HttpError> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=at).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return String::from_utf8(line)
                    .map_err(|_| HttpError::other("response line is not UTF-8"));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(HttpError::other("response line too long"));
            }
            if !self.fill(deadline)? {
                return Err(HttpError::other(
                    "connection closed in the middle of a line",
                ));
            }
        }
    }

    /// Up to `max` bytes (at least one); `Ok(empty)` only at end of stream.
    fn take(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, HttpError> {
        if self.buf.is_empty() && !self.fill(deadline)? {
            return Ok(Vec::new());
        }
        let n = max.min(self.buf.len());
        Ok(self.buf.drain(..n).collect())
    }
}

/// How the body is delimited.
enum Framing {
    /// `Content-Length`: the bytes still to come.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked {
        /// Bytes left in the current chunk.
        in_chunk: usize,
        /// The CRLF closing the previous chunk is still to be read.
        need_crlf: bool,
        /// The last chunk was seen.
        done: bool,
    },
    /// Until the server closes the connection.
    UntilClose,
}

/// A response whose head was read; the body is read with [`Response::next`] or
/// [`Response::body`].
pub(crate) struct Response {
    /// The HTTP status code.
    pub(crate) status: u16,
    conn: Conn,
    framing: Framing,
}

impl Response {
    /// The next piece of the body, `Ok(None)` at its end. A timeout consumes nothing: calling
    /// again continues where this call stopped.
    pub(crate) fn next(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, HttpError> {
        match &mut self.framing {
            Framing::Length(0) => Ok(None),
            Framing::Length(rest) => {
                let data = self.conn.take(*rest, deadline)?;
                if data.is_empty() {
                    return Err(HttpError::other("connection closed before the body ended"));
                }
                *rest -= data.len();
                Ok(Some(data))
            }
            Framing::UntilClose => {
                let data = self.conn.take(usize::MAX, deadline)?;
                Ok(if data.is_empty() { None } else { Some(data) })
            }
            Framing::Chunked {
                in_chunk,
                need_crlf,
                done,
            } => loop {
                if *done {
                    return Ok(None);
                }
                if *in_chunk > 0 {
                    let data = self.conn.take(*in_chunk, deadline)?;
                    if data.is_empty() {
                        return Err(HttpError::other("connection closed inside a chunk"));
                    }
                    *in_chunk -= data.len();
                    *need_crlf = *in_chunk == 0;
                    return Ok(Some(data));
                }
                if *need_crlf {
                    let line = self.conn.line(deadline)?;
                    if !line.is_empty() {
                        return Err(HttpError::other("chunk not followed by CRLF"));
                    }
                    *need_crlf = false;
                }
                let line = self.conn.line(deadline)?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| HttpError::other(format!("bad chunk size {size:?}")))?;
                if size == 0 {
                    // Trailers follow; the connection closes after them and nobody needs them.
                    *done = true;
                } else {
                    *in_chunk = size;
                }
            },
        }
    }

    /// The whole body (at most [`MAX_BODY`] bytes), read by `deadline`.
    pub(crate) fn body(mut self, deadline: Instant) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        while let Some(piece) = self.next(deadline)? {
            body.extend_from_slice(&piece);
            if body.len() > MAX_BODY {
                return Err(HttpError::other("response body too large"));
            }
        }
        Ok(body)
    }
}

/// Sends `POST path` with a JSON `body` to `host` and reads the response head, all by
/// `deadline`. `token` goes into the `Authorization` header.
pub(crate) fn post(
    host: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    deadline: Instant,
) -> Result<Response, HttpError> {
    let mut stream = None;
    let mut last = HttpError::other(format!("{host}: no address"));
    for addr in resolve(host, deadline)? {
        match TcpStream::connect_timeout(&addr, left(deadline, "connect")?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = HttpError::io("connect", &e),
        }
    }
    let Some(stream) = stream else {
        return Err(last);
    };
    let _ = stream.set_nodelay(true);

    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: {token}\r\n"));
    }
    request.push_str("\r\n");
    let mut wire = request.into_bytes();
    wire.extend_from_slice(body);
    stream
        .set_write_timeout(Some(left(deadline, "write")?))
        .map_err(|e| HttpError::io("write", &e))?;
    (&stream)
        .write_all(&wire)
        .map_err(|e| HttpError::io("write", &e))?;

    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        eof: false,
    };
    let status_line = conn.line(deadline)?;
    let status = parse_status(&status_line)?;
    let mut framing = Framing::UntilClose;
    let mut head = status_line.len();
    loop {
        let line = conn.line(deadline)?;
        head += line.len();
        if head > MAX_HEAD {
            return Err(HttpError::other("response head too large"));
        }
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::other(format!("bad header line {line:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked {
                in_chunk: 0,
                need_crlf: false,
                done: false,
            };
        } else if name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked { .. })
        {
            let n = value
                .parse::<usize>()
                .map_err(|_| HttpError::other(format!("bad Content-Length {value:?}")))?;
            if n > MAX_BODY {
                return Err(HttpError::other("response body too large"));
            }
            framing = Framing::Length(n);
        }
    }
    Ok(Response {
        status,
        conn,
        framing,
    })
}

/// The code of a status line such as `HTTP/1.1 200 OK`.
fn parse_status(line: &str) -> Result<u16, HttpError> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(code))) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(HttpError::other(format!(
            "not an HTTP response: {:?}",
            line.chars().take(80).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    /// Serves `reply` (written in `pieces`, with pauses) to one connection.
    fn serve(pieces: Vec<&'static [u8]>, pause: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut scratch = [0u8; 4096];
                let _ = s.read(&mut scratch);
                for piece in pieces {
                    let _ = s.write_all(piece);
                    std::thread::sleep(pause);
                }
            }
        });
        addr
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn reads_content_length_and_chunked_bodies() {
        let host = serve(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
            Duration::ZERO,
        );
        let r = post(&host, "/x", None, b"{}", soon(2000)).expect("post");
        assert_eq!(r.status, 200);
        assert_eq!(r.body(soon(2000)).expect("body"), b"hello");

        let host = serve(
            vec![b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: z\r\n\r\n"],
            Duration::ZERO,
        );
        let r = post(&host, "/x", Some("tok"), b"{}", soon(2000)).expect("post");
        assert_eq!(r.status, 404);
        assert_eq!(r.body(soon(2000)).expect("body"), b"abcde");
    }

    #[test]
    fn a_timed_out_read_resumes_without_losing_bytes() {
        let host = serve(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab",
                b"cd\r\n",
                b"2\r\nef\r\n0\r\n\r\n",
            ],
            Duration::from_millis(150),
        );
        let mut r = post(&host, "/x", None, b"{}", soon(2000)).expect("post");
        let mut body = Vec::new();
        let mut timeouts = 0;
        loop {
            match r.next(soon(20)) {
                Ok(Some(piece)) => body.extend_from_slice(&piece),
                Ok(None) => break,
                Err(e) if e.timed_out => timeouts += 1,
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        assert_eq!(body, b"abcdef");
        assert!(timeouts > 0, "the pauses should have caused timeouts");
    }

    #[test]
    fn garbage_and_silence_are_errors_by_the_deadline() {
        let host = serve(vec![b"SSH-2.0-OpenSSH\r\n"], Duration::ZERO);
        let e = post(&host, "/x", None, b"{}", soon(2000))
            .err()
            .expect("garbage is an error");
        assert!(e.message.contains("not an HTTP response"), "{e:?}");

        let host = serve(
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
            Duration::ZERO,
        );
        let r = post(&host, "/x", None, b"{}", soon(2000)).expect("head");
        assert!(r.body(soon(2000)).is_err());

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let started = Instant::now();
        let e = post(&host, "/x", None, b"{}", soon(300))
            .err()
            .expect("silence is an error");
        assert!(e.timed_out, "{e:?}");
        assert!(started.elapsed() < Duration::from_millis(1000));
        drop(listener);
    }
}
