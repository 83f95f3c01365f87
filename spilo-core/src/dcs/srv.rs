//! etcd discovery by DNS SRV records (Patroni's `etcd3.srv` and `etcd3.srv_suffix`, as Spilo's
//! nodes find their etcd): the names `_etcd-client-ssl`, `_etcd-client`, `_etcd-ssl`, `_etcd`,
//! `_etcd-server-ssl`, `_etcd-server` (each with `-<srv_suffix>` when one is set) under
//! `_tcp.<srv>` are asked in that order and the first that has records wins. Client records
//! are the endpoints (https for the `-ssl` names); server (peer) records are asked for the
//! cluster's members (`GET /members` on the peer port), whose client URLs are the endpoints.
//!
//! A small DNS client of its own (one UDP question per name, the nameservers of
//! `/etc/resolv.conf`, or `SPILO_DNS_SERVERS` = `ip:port,…` to point it elsewhere), so the
//! daemon carries no resolver library for one lookup at start.

use std::net::SocketAddr;
use std::time::Duration;

/// The SRV service names Patroni asks, in its order: (name, https, peer records).
pub const SERVICES: [(&str, bool, bool); 6] = [
    ("_etcd-client-ssl", true, false),
    ("_etcd-client", false, false),
    ("_etcd-ssl", true, false),
    ("_etcd", false, false),
    ("_etcd-server-ssl", true, true),
    ("_etcd-server", false, true),
];

/// How long one nameserver has to answer one question.
const QUESTION_TIMEOUT: Duration = Duration::from_secs(2);

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    /// Lower first.
    pub priority: u16,
    /// Higher first among equal priorities.
    pub weight: u16,
    /// The service's port.
    pub port: u16,
    /// The host (no final dot).
    pub target: String,
}

/// What discovery found: endpoints `host:port` and whether they speak https.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// The SRV name that answered.
    pub name: String,
    /// `host:port`, by priority and weight.
    pub endpoints: Vec<String>,
    /// From an `-ssl` name.
    pub https: bool,
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum SrvError {
    /// No nameserver to ask.
    #[error("no nameserver: none in /etc/resolv.conf and SPILO_DNS_SERVERS is not set")]
    NoNameserver,
    /// `SPILO_DNS_SERVERS` holds something that is not `ip:port`.
    #[error("SPILO_DNS_SERVERS: {0:?} is not ip:port")]
    BadServer(String),
    /// A nameserver answered with an error code (2 SERVFAIL, 5 REFUSED, …).
    #[error("{server} answered {name} with DNS error code {rcode}")]
    Rcode {
        /// The nameserver.
        server: SocketAddr,
        /// The question.
        name: String,
        /// The response code.
        rcode: u8,
    },
    /// A nameserver could not be asked (socket error).
    #[error("asking {server} for {name}: {source}")]
    Io {
        /// The nameserver.
        server: SocketAddr,
        /// The question.
        name: String,
        /// The socket's error.
        #[source]
        source: std::io::Error,
    },
    /// No name had records.
    #[error("no SRV records for etcd under {domain} (asked {asked}){failed}")]
    NotFound {
        /// `etcd3.srv`.
        domain: String,
        /// The names asked.
        asked: String,
        /// The questions that failed, if any (`; failed: …`).
        failed: String,
    },
    /// Peer records were found, but their members could not be listed.
    #[error("{name}: the etcd peers found ({peers}) did not list their members: {detail}")]
    Members {
        /// The SRV name.
        name: String,
        /// The peers asked.
        peers: String,
        /// Why.
        detail: String,
    },
}

/// The nameservers: `SPILO_DNS_SERVERS`, else `/etc/resolv.conf`'s.
pub fn nameservers() -> Result<Vec<SocketAddr>, SrvError> {
    if let Ok(list) = std::env::var("SPILO_DNS_SERVERS") {
        return list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| SrvError::BadServer(s.to_string())))
            .collect();
    }
    Ok(std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default())
}

/// `nameserver` lines of a resolv.conf, port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// A question id nobody can guess (the process's random hash keys and the time).
fn question_id(name: &str) -> u16 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    name.hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    h.finish() as u16
}

/// The question for `name` (type SRV, class IN, recursion desired), with an EDNS0 record
/// announcing 4096-byte UDP answers.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(48 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.trim_end_matches('.').split('.') {
        let l = &label.as_bytes()[..label.len().min(63)];
        q.push(l.len() as u8);
        q.extend_from_slice(l);
    }
    q.push(0);
    q.extend_from_slice(&[0, 33, 0, 1]);
    // OPT: root name, type 41, UDP size 4096, no extended flags, no options.
    q.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    q
}

/// A name at `pos` (with compression pointers); the name and the position after it.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos)? as usize;
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            jumps += 1;
            if jumps > 32 {
                return None;
            }
            pos = ptr;
            continue;
        }
        if len == 0 {
            let after = end.unwrap_or(pos + 1);
            return Some((labels.join("."), after));
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        if labels.len() > 127 {
            return None;
        }
        pos += 1 + len;
    }
}

fn u16_at(msg: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]))
}

/// What an answer says.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name's SRV records (empty: none, NXDOMAIN included), by priority and weight.
    Records(Vec<Srv>),
    /// The answer did not fit (TC): ask again over TCP.
    Truncated,
    /// The server failed the question (its response code).
    Failed(u8),
}

/// An answer to question `id` for `name` (None: not an answer to it, or malformed).
pub fn parse_answer(id: u16, name: &str, msg: &[u8]) -> Option<Answer> {
    if u16_at(msg, 0)? != id || msg.get(2)? & 0x80 == 0 {
        return None;
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut pos = 12;
    // The answer must repeat our question (an answer to another one is not ours).
    if qd != 1 {
        return None;
    }
    let (qname, after) = read_name(msg, pos)?;
    if !qname.eq_ignore_ascii_case(name.trim_end_matches('.')) || u16_at(msg, after)? != 33 {
        return None;
    }
    pos = after + 4;
    if msg.get(2)? & 0x02 != 0 {
        return Some(Answer::Truncated);
    }
    match msg.get(3)? & 0x0f {
        0 => {}
        3 => return Some(Answer::Records(Vec::new())),
        rcode => return Some(Answer::Failed(rcode)),
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let (_, after) = read_name(msg, pos)?;
        let kind = u16_at(msg, after)?;
        let len = u16_at(msg, after + 8)? as usize;
        let data = after + 10;
        if msg.len() < data + len {
            return None;
        }
        if kind == 33 && len >= 7 {
            let (target, _) = read_name(msg, data + 6)?;
            out.push(Srv {
                priority: u16_at(msg, data)?,
                weight: u16_at(msg, data + 2)?,
                port: u16_at(msg, data + 4)?,
                target,
            });
        }
        pos = data + len;
    }
    out.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    Some(Answer::Records(out))
}

/// Asks `server` over TCP (after a truncated UDP answer).
async fn ask_tcp(server: SocketAddr, id: u16, name: &str) -> std::io::Result<Option<Answer>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let q = query(id, name);
    let mut c = tokio::net::TcpStream::connect(server).await?;
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    c.write_all(&framed).await?;
    let mut len = [0u8; 2];
    c.read_exact(&mut len).await?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    c.read_exact(&mut msg).await?;
    Ok(parse_answer(id, name, &msg))
}

/// Asks one nameserver (UDP, then TCP when the answer was truncated).
async fn ask(server: SocketAddr, name: &str) -> Result<Vec<Srv>, SrvError> {
    let io = |source| SrvError::Io {
        server,
        name: name.to_string(),
        source,
    };
    let timed_out = || {
        io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer in {} s", QUESTION_TIMEOUT.as_secs()),
        ))
    };
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.map_err(io)?;
    let id = question_id(name);
    sock.send_to(&query(id, name), server).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + QUESTION_TIMEOUT;
    let answer = loop {
        match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) if from == server => {
                if let Some(a) = parse_answer(id, name, &buf[..n]) {
                    break a;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(io(e)),
            Err(_) => return Err(timed_out()),
        }
    };
    let answer = match answer {
        Answer::Truncated => {
            let id = question_id(name);
            match tokio::time::timeout(QUESTION_TIMEOUT, ask_tcp(server, id, name)).await {
                Ok(Ok(Some(a))) => a,
                Ok(Ok(None)) => {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "a malformed answer over TCP",
                    )))
                }
                Ok(Err(e)) => return Err(io(e)),
                Err(_) => return Err(timed_out()),
            }
        }
        a => a,
    };
    match answer {
        Answer::Records(r) => Ok(r),
        Answer::Failed(rcode) => Err(SrvError::Rcode {
            server,
            name: name.to_string(),
            rcode,
        }),
        Answer::Truncated => Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a truncated answer over TCP",
        ))),
    }
}

/// Asks the nameservers for the SRV records of `name`, in turn, until one answers.
pub async fn lookup(name: &str, servers: &[SocketAddr]) -> Result<Vec<Srv>, SrvError> {
    let mut last = SrvError::NoNameserver;
    for &server in servers {
        match ask(server, name).await {
            Ok(r) => return Ok(r),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The SRV names for `domain` with `suffix`, in Patroni's order.
pub fn names(domain: &str, suffix: Option<&str>) -> Vec<(String, bool, bool)> {
    let domain = domain.trim_end_matches('.');
    SERVICES
        .iter()
        .map(|&(svc, https, peer)| {
            let svc = match suffix {
                Some(s) if !s.is_empty() => format!("{svc}-{s}"),
                _ => svc.to_string(),
            };
            (format!("{svc}._tcp.{domain}"), https, peer)
        })
        .collect()
}

/// Finds etcd under `domain`: the first name with records wins; a name whose question fails
/// is passed over, as Patroni does, and reported when no name has records.
pub async fn discover(domain: &str, suffix: Option<&str>) -> Result<Discovered, SrvError> {
    let servers = nameservers()?;
    if servers.is_empty() {
        return Err(SrvError::NoNameserver);
    }
    let mut asked = Vec::new();
    let mut failed = Vec::new();
    for (name, https, peer) in names(domain, suffix) {
        asked.push(name.clone());
        let records = match lookup(&name, &servers).await {
            Ok(r) => r,
            Err(e) => {
                failed.push(e.to_string());
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        let found: Vec<String> = records
            .iter()
            .map(|r| format!("{}:{}", r.target, r.port))
            .collect();
        if !peer {
            return Ok(Discovered {
                name,
                endpoints: found,
                https,
            });
        }
        return members(&name, &found, https).await;
    }
    Err(SrvError::NotFound {
        domain: domain.to_string(),
        asked: asked.join(", "),
        failed: if failed.is_empty() {
            String::new()
        } else {
            format!("; failed: {}", failed.join("; "))
        },
    })
}

/// The client URLs the etcd peers list (`GET /members` on a peer port).
async fn members(name: &str, peers: &[String], https: bool) -> Result<Discovered, SrvError> {
    let fail = |detail: String| SrvError::Members {
        name: name.to_string(),
        peers: peers.join(", "),
        detail,
    };
    if https {
        return Err(fail(
            "listing members over https peer URLs is not supported: publish _etcd-client-ssl records".into(),
        ));
    }
    let mut last = String::from("no peer answered");
    for p in peers {
        let url = format!("http://{p}/members");
        match crate::api::client::exchange(
            hyper::Method::GET,
            &url,
            &[],
            Vec::new(),
            Duration::from_secs(3),
        )
        .await
        {
            Ok((200, body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| fail(format!("{url}: not JSON: {e}")))?;
                let mut endpoints = Vec::new();
                let mut https_clients = false;
                for m in v.as_array().into_iter().flatten() {
                    for u in m["clientURLs"].as_array().into_iter().flatten() {
                        let Some(u) = u.as_str() else { continue };
                        https_clients |= u.starts_with("https://");
                        let hp = u
                            .trim_start_matches("http://")
                            .trim_start_matches("https://")
                            .trim_end_matches('/');
                        if !endpoints.iter().any(|e| e == hp) {
                            endpoints.push(hp.to_string());
                        }
                    }
                }
                if endpoints.is_empty() {
                    return Err(fail(format!("{url}: no clientURLs")));
                }
                return Ok(Discovered {
                    name: name.to_string(),
                    endpoints,
                    https: https_clients,
                });
            }
            Ok((status, _)) => last = format!("{url}: HTTP {status}"),
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(fail(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `q` with `records` (the target name written in full, the owner name as a
    /// pointer to the question).
    fn answer(q: &[u8], records: &[(u16, u16, u16, &str)], rcode: u8) -> Vec<u8> {
        // The question, without our OPT record.
        let mut a = q[..q.len() - 11].to_vec();
        a[10..12].copy_from_slice(&[0, 0]);
        a[2] = 0x81;
        a[3] = 0x80 | rcode;
        a[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for &(prio, weight, port, target) in records {
            a.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 60]);
            let mut rdata = Vec::new();
            rdata.extend_from_slice(&prio.to_be_bytes());
            rdata.extend_from_slice(&weight.to_be_bytes());
            rdata.extend_from_slice(&port.to_be_bytes());
            for l in target.split('.') {
                rdata.push(l.len() as u8);
                rdata.extend_from_slice(l.as_bytes());
            }
            rdata.push(0);
            a.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            a.extend_from_slice(&rdata);
        }
        a
    }

    #[test]
    fn records_are_read_and_ordered() {
        let name = "_etcd-client._tcp.example.org";
        let q = query(7, name);
        let a = answer(
            &q,
            &[
                (20, 0, 2379, "c.example.org"),
                (10, 5, 2379, "a.example.org"),
                (10, 50, 2380, "b.example.org"),
            ],
            0,
        );
        let Some(Answer::Records(r)) = parse_answer(7, name, &a) else {
            panic!("records")
        };
        let order: Vec<(&str, u16)> = r.iter().map(|s| (s.target.as_str(), s.port)).collect();
        assert_eq!(
            order,
            vec![
                ("b.example.org", 2380),
                ("a.example.org", 2379),
                ("c.example.org", 2379)
            ]
        );
        assert_eq!(parse_answer(8, name, &a), None, "another id");
        assert_eq!(
            parse_answer(7, "_etcd._tcp.example.org", &a),
            None,
            "an answer to another question"
        );
        assert_eq!(
            parse_answer(7, name, &answer(&q, &[], 3)),
            Some(Answer::Records(vec![])),
            "NXDOMAIN"
        );
        assert_eq!(
            parse_answer(7, name, &answer(&q, &[], 2)),
            Some(Answer::Failed(2)),
            "SERVFAIL"
        );
        let mut tc = answer(&q, &[], 0);
        tc[2] |= 0x02;
        assert_eq!(parse_answer(7, name, &tc), Some(Answer::Truncated));
        // Truncated messages and pointer loops are refused, not a panic or a hang.
        assert_eq!(parse_answer(7, name, &a[..a.len() - 3]), None);
        let mut looped = answer(&q, &[(1, 1, 1, "x")], 0);
        // The record's target becomes a pointer to itself.
        let n = looped.len();
        let at = n - 3;
        looped.truncate(at);
        looped.extend_from_slice(&[0xc0 | ((at >> 8) as u8), at as u8]);
        let rdlen = (6 + 2) as u16;
        looped[at - 8..at - 6].copy_from_slice(&rdlen.to_be_bytes());
        assert_eq!(parse_answer(7, name, &looped), None);
    }

    #[test]
    fn names_follow_patronis_order_with_the_suffix() {
        let n = names("example.org.", Some("prod"));
        assert_eq!(n[0].0, "_etcd-client-ssl-prod._tcp.example.org");
        assert!(n[0].1 && !n[0].2);
        assert_eq!(n[5].0, "_etcd-server-prod._tcp.example.org");
        assert!(!n[5].1 && n[5].2);
        assert_eq!(
            names("example.org", None)[1].0,
            "_etcd-client._tcp.example.org"
        );
    }

    #[test]
    fn resolv_conf_nameservers() {
        let t = "# c\nsearch x\nnameserver 10.0.0.2\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_silent_nameserver_is_an_error_naming_it() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let e = lookup("_etcd._tcp.x", &[addr])
            .await
            .expect_err("no answer");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
