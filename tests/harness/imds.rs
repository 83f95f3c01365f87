//! A stub of the EC2 instance metadata service, IMDSv2 only: `PUT /latest/api/token` (with
//! `X-aws-ec2-metadata-token-ttl-seconds`) hands out a token, and `GET /latest/meta-data/…`
//! answers only with that token (401 without, as an instance with `HttpTokens: required`
//! does): `instance-id`, `local-ipv4`, `placement/availability-zone`, `placement/region` and
//! `autoscaling/target-lifecycle-state` (`InService` until a test sets `Terminated`, as the
//! Auto Scaling Group does when it starts terminating the instance). moto's own metadata mock
//! has no lifecycle state and does not serve these the way AWS does, hence this stub of just
//! that.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const TOKEN: &str = "spilo-test-imds-token";

/// The stub; stops serving on drop.
pub struct Imds {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Requests without a token (IMDSv1), answered 401.
    pub tokenless: Arc<AtomicU64>,
    /// Tokens handed out.
    pub tokens: Arc<AtomicU64>,
    /// What `GET /latest/meta-data/<path>` answers, by path.
    values: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<AtomicBool>,
}

/// The meta-data path of the Auto Scaling lifecycle state.
pub const LIFECYCLE_STATE: &str = "autoscaling/target-lifecycle-state";

impl Imds {
    /// Serves `instance_id` (in us-east-1a, at 127.0.0.1, `InService`).
    pub fn start(instance_id: &str) -> Imds {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the IMDS stub");
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let tokenless = Arc::new(AtomicU64::new(0));
        let tokens = Arc::new(AtomicU64::new(0));
        let values = Arc::new(Mutex::new(BTreeMap::from(
            [
                ("instance-id", instance_id),
                ("local-ipv4", "127.0.0.1"),
                ("placement/availability-zone", "us-east-1a"),
                ("placement/region", "us-east-1"),
                (LIFECYCLE_STATE, "InService"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )));
        let (s, tl, tk, vals) = (
            stop.clone(),
            tokenless.clone(),
            tokens.clone(),
            values.clone(),
        );
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        serve(c, &vals, &tl, &tk);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Imds {
            port,
            tokenless,
            tokens,
            values,
            stop,
        }
    }

    /// Sets what `meta-data/<path>` answers (None: 404, as when there is no such item).
    pub fn set(&self, path: &str, value: Option<&str>) {
        let mut v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(x) => v.insert(path.to_string(), x.to_string()),
            None => v.remove(path),
        };
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    c: TcpStream,
    values: &Mutex<BTreeMap<String, String>>,
    tokenless: &AtomicU64,
    tokens: &AtomicU64,
) {
    let mut r = BufReader::new(match c.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut w = c;
    // One request per connection is enough for the SDK's client (it reconnects).
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
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
    let mut body = vec![0u8; length.min(4096)];
    let _ = r.read_exact(&mut body);
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let (status, text) = match (method.as_str(), path.as_str()) {
        ("PUT", "/latest/api/token")
            if header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
        {
            tokens.fetch_add(1, Ordering::SeqCst);
            ("200 OK", TOKEN.to_string())
        }
        ("PUT", "/latest/api/token") => ("400 Bad Request", String::new()),
        ("GET", p) => match header("x-aws-ec2-metadata-token") {
            Some(t) if t == TOKEN => {
                let item = p.strip_prefix("/latest/meta-data/").and_then(|k| {
                    values
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(k)
                        .cloned()
                });
                match item {
                    Some(v) => ("200 OK", v),
                    None => ("404 Not Found", String::new()),
                }
            }
            _ => {
                tokenless.fetch_add(1, Ordering::SeqCst);
                ("401 Unauthorized", String::new())
            }
        },
        _ => ("405 Method Not Allowed", String::new()),
    };
    let _ = write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = w.flush();
}
