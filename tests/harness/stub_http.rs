//! The HTTP plumbing of the test stubs that stand in for what moto lacks (the instance
//! metadata service, Auto Scaling's `CompleteLifecycleAction`): a listener on 127.0.0.1 served
//! by a thread, one request per connection (the clients reconnect), answered by a handler.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// One request.
pub struct Request {
    /// `GET`, `PUT`, `POST`, ….
    pub method: String,
    /// The path (and query).
    pub path: String,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    /// The body (at most 64 KiB is read).
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status line text (`200 OK`), content type, extra headers, body.
pub struct Answer {
    /// `200 OK`, `404 Not Found`, ….
    pub status: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// More headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: String,
}

/// A running stub; stops serving on drop.
pub struct StubServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl StubServer {
    /// Serves every request with `handler`; `what` names the stub in a bind failure.
    pub fn start(what: &str, handler: impl Fn(Request) -> Answer + Send + 'static) -> StubServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind the {what}: {e}"));
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        if let Some(req) = read_request(&c) {
                            write_answer(c, handler(req));
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StubServer { port, stop }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn read_request(c: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(c.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((&h, ""));
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        if k == "content-length" {
            length = v.parse().unwrap_or(0);
        }
        headers.push((k, v));
    }
    let mut body = vec![0u8; length.min(64 * 1024)];
    let _ = r.read_exact(&mut body);
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn write_answer(mut w: TcpStream, a: Answer) {
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        a.status,
        a.content_type,
        a.body.len()
    );
    for (k, v) in &a.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(a.body.as_bytes());
    let _ = w.flush();
}
