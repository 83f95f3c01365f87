//! A stub of the EC2 instance metadata service, IMDSv2 only: `PUT /latest/api/token` (with
//! `X-aws-ec2-metadata-token-ttl-seconds`) hands out a token, and `GET /latest/meta-data/…`
//! answers only with that token (401 without, as an instance with `HttpTokens: required`
//! does): `instance-id`, `local-ipv4`, `placement/availability-zone`, `placement/region` and
//! `autoscaling/target-lifecycle-state` (`InService` until a test sets `Terminated`, as the
//! Auto Scaling Group does when it starts terminating the instance). moto's own metadata mock
//! has no lifecycle state and does not serve these the way AWS does, hence this stub of just
//! that.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::stub_http::{Answer, Request, StubServer};

const TOKEN: &str = "spilo-test-imds-token";

/// The meta-data path of the Auto Scaling lifecycle state.
pub const LIFECYCLE_STATE: &str = "autoscaling/target-lifecycle-state";

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
    _server: StubServer,
}

impl Imds {
    /// Serves `instance_id` (in us-east-1a, at 127.0.0.1, `InService`).
    pub fn start(instance_id: &str) -> Imds {
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
        let (tl, tk, vals) = (tokenless.clone(), tokens.clone(), values.clone());
        let server = StubServer::start("IMDS stub", move |req| serve(&req, &vals, &tl, &tk));
        Imds {
            port: server.port,
            tokenless,
            tokens,
            values,
            _server: server,
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

fn serve(
    req: &Request,
    values: &Mutex<BTreeMap<String, String>>,
    tokenless: &AtomicU64,
    tokens: &AtomicU64,
) -> Answer {
    let (status, body) = match (req.method.as_str(), req.path.as_str()) {
        ("PUT", "/latest/api/token")
            if req.header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
        {
            tokens.fetch_add(1, Ordering::SeqCst);
            ("200 OK", TOKEN.to_string())
        }
        ("PUT", "/latest/api/token") => ("400 Bad Request", String::new()),
        ("GET", p) => match req.header("x-aws-ec2-metadata-token") {
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
    Answer {
        status,
        content_type: "text/plain",
        headers: vec![("x-aws-ec2-metadata-token-ttl-seconds", "21600".into())],
        body,
    }
}
