//! What moto does not do: a classic ELB's health checks. moto keeps an ELB's `HealthCheck`
//! (target, interval, timeout, thresholds) and lists every registered instance as
//! `InService`; this stub reads that configuration and the registered instances from moto once
//! ([`ElbHealthChecks::start`]) and then probes each instance as an ELB would, from a thread of
//! its own: an HTTP GET of the target's path every `Interval`, answered within `Timeout` with a
//! 200 counting as a success; `HealthyThreshold` successes in a row put an instance in service,
//! `UnhealthyThreshold` failures in a row take it out (an instance starts out of service, as
//! on AWS). Instances are fake EC2 ids, so the test says at which address each one's REST API
//! listens (the target's port is the one spilo's template uses, 8008, on every instance).
//! Only HTTP targets are checked (the ones spilo's template and the tests configure).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::aws::Moto;

/// An ELB's health check as moto holds it.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The path of an `HTTP:<port><path>` target.
    pub path: String,
    /// Between probes.
    pub interval: Duration,
    /// A probe's answer must come within this.
    pub timeout: Duration,
    /// Successes in a row that put an instance in service.
    pub healthy: u32,
    /// Failures in a row that take it out.
    pub unhealthy: u32,
}

/// One instance's standing with one ELB, and when it last changed.
#[derive(Debug, Clone)]
pub struct Standing {
    /// In service.
    pub in_service: bool,
    /// When it last changed (or the checks started).
    pub since: Instant,
    successes: u32,
    failures: u32,
}

/// An instance's changes: (ELB, instance id, in service, when).
pub type Change = (String, String, bool, Instant);

/// The checks of some ELBs, running until dropped.
pub struct ElbHealthChecks {
    state: Arc<Mutex<BTreeMap<(String, String), Standing>>>,
    history: Arc<Mutex<Vec<Change>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ElbHealthChecks {
    /// Reads each ELB of `elbs` (its health check and registered instances) from `moto` and
    /// starts probing them; `addr_of` gives each instance id's REST API address.
    pub fn start(moto: &Moto, elbs: &[&str], addr_of: BTreeMap<String, SocketAddr>) -> Self {
        let mut plan: Vec<(String, HealthCheck, Vec<String>)> = Vec::new();
        for elb in elbs {
            let v = moto.boto(&format!(
                "d = elb.describe_load_balancers(LoadBalancerNames=[{elb:?}])['LoadBalancerDescriptions'][0]\n\
                 print(json.dumps({{'hc': d['HealthCheck'], 'ids': [i['InstanceId'] for i in d['Instances']]}}))"
            ));
            let hc = &v["hc"];
            let target = hc["Target"].as_str().unwrap_or_default();
            let path = target
                .strip_prefix("HTTP:")
                .and_then(|rest| rest.find('/').map(|i| rest[i..].to_string()))
                .unwrap_or_else(|| panic!("{elb}: only HTTP targets are checked, not {target:?}"));
            let secs = |k: &str| Duration::from_secs(hc[k].as_u64().unwrap_or(5));
            let count = |k: &str| hc[k].as_u64().unwrap_or(2) as u32;
            let check = HealthCheck {
                path,
                interval: secs("Interval"),
                timeout: secs("Timeout"),
                healthy: count("HealthyThreshold"),
                unhealthy: count("UnhealthyThreshold"),
            };
            let ids: Vec<String> = serde_json::from_value(v["ids"].clone()).expect("instance ids");
            plan.push((elb.to_string(), check, ids));
        }
        let now = Instant::now();
        let state: BTreeMap<(String, String), Standing> = plan
            .iter()
            .flat_map(|(elb, _, ids)| {
                ids.iter().map(move |id| {
                    (
                        (elb.clone(), id.clone()),
                        Standing {
                            in_service: false,
                            since: now,
                            successes: 0,
                            failures: 0,
                        },
                    )
                })
            })
            .collect();
        let state = Arc::new(Mutex::new(state));
        let history = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, history, stop) = (state.clone(), history.clone(), stop.clone());
            thread::spawn(move || run(plan, addr_of, state, history, stop))
        };
        ElbHealthChecks {
            state,
            history,
            stop,
            thread: Some(thread),
        }
    }

    /// Whether `id` is in service with `elb` now (None: not registered when the checks began).
    pub fn in_service(&self, elb: &str, id: &str) -> Option<bool> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(elb.to_string(), id.to_string()))
            .map(|s| s.in_service)
    }

    /// Every change so far, in order.
    pub fn history(&self) -> Vec<Change> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for ElbHealthChecks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One probe: a 200 within `timeout`.
fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let left = || deadline.saturating_duration_since(Instant::now());
    if s.set_write_timeout(Some(left().max(Duration::from_millis(1))))
        .is_err()
        || s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .is_err()
    {
        return false;
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let wait = left();
        if wait.is_zero() || s.set_read_timeout(Some(wait)).is_err() {
            return false;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1) == Some("200")
}

fn run(
    plan: Vec<(String, HealthCheck, Vec<String>)>,
    addr_of: BTreeMap<String, SocketAddr>,
    state: Arc<Mutex<BTreeMap<(String, String), Standing>>>,
    history: Arc<Mutex<Vec<Change>>>,
    stop: Arc<AtomicBool>,
) {
    // Each ELB on its own schedule, as each ELB node probes on its own.
    let mut next: Vec<Instant> = plan.iter().map(|_| Instant::now()).collect();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for (i, (elb, check, ids)) in plan.iter().enumerate() {
            if now < next[i] {
                continue;
            }
            next[i] = now + check.interval;
            for id in ids {
                let ok = addr_of
                    .get(id)
                    .is_some_and(|a| probe(*a, &check.path, check.timeout));
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                let Some(s) = st.get_mut(&(elb.clone(), id.clone())) else {
                    continue;
                };
                if ok {
                    s.successes += 1;
                    s.failures = 0;
                } else {
                    s.failures += 1;
                    s.successes = 0;
                }
                let flip = if s.in_service {
                    s.failures >= check.unhealthy
                } else {
                    s.successes >= check.healthy
                };
                if flip {
                    s.in_service = !s.in_service;
                    s.since = Instant::now();
                    history.lock().unwrap_or_else(|p| p.into_inner()).push((
                        elb.clone(),
                        id.clone(),
                        s.in_service,
                        s.since,
                    ));
                }
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stub_http::{Answer, StubServer};

    #[test]
    fn a_probe_passes_on_200_only_and_gives_up_at_its_timeout() {
        let stub = StubServer::start("rest", |r| Answer {
            status: if r.path == "/primary" {
                "200 OK"
            } else {
                "503 Service Unavailable"
            },
            content_type: "application/json",
            headers: Vec::new(),
            body: "{}".into(),
        });
        let addr: SocketAddr = format!("127.0.0.1:{}", stub.port).parse().unwrap();
        assert!(probe(addr, "/primary", Duration::from_secs(3)));
        assert!(!probe(addr, "/replica", Duration::from_secs(3)));
        // A listener that never answers: the probe fails at its timeout, not later.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let t0 = Instant::now();
        assert!(!probe(
            silent.local_addr().unwrap(),
            "/primary",
            Duration::from_millis(300)
        ));
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }
}
