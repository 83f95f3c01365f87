//! Server-side request counters of the two DCS servers, read the way an operator would:
//! etcd's Prometheus text on `GET /metrics` (client port) and ZooKeeper's four-letter words
//! `mntr` (server-wide counters) and `cons` (per-connection packet counts).
//!
//! Everything here is a plain sample; `dcs_load` takes one at each end of a window and
//! subtracts. No sample sends a request the server counts as a DCS request: `/metrics` is
//! HTTP, not gRPC; a four-letter word is answered before the request pipeline (it does show
//! as one received packet in `zk_packets_received`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One Prometheus exposition, as `(metric name, label text, value)` rows.
#[derive(Clone, Debug, Default)]
pub struct Prometheus {
    rows: Vec<(String, String, f64)>,
}

impl Prometheus {
    /// Parses the text format (`name{labels} value` or `name value`; `#` lines skipped).
    pub fn parse(text: &str) -> Prometheus {
        let mut rows = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            rows.push((name.to_string(), labels.to_string(), value));
        }
        Prometheus { rows }
    }

    /// Whether any series of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.rows.iter().any(|(n, _, _)| n == name)
    }

    /// The sum over the series of `name` whose labels contain every `key="value"` of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        self.rows
            .iter()
            .filter(|(n, l, _)| n == name && wanted.iter().all(|w| l.contains(w.as_str())))
            .map(|(_, _, v)| v)
            .sum()
    }
}

/// `GET /metrics` on etcd's client port.
pub fn etcd_metrics(client_port: u16) -> Result<Prometheus, String> {
    let r = spilo_tests::http::exchange(
        client_port,
        "GET",
        "/metrics",
        &[],
        None,
        Duration::from_secs(10),
    )?;
    if r.status != 200 {
        return Err(format!("etcd GET /metrics: {}", r.summary()));
    }
    Ok(Prometheus::parse(&r.text()))
}

/// Sends a four-letter word to ZooKeeper and returns its whole answer.
pub fn four_letter_word(port: u16, word: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect to ZooKeeper 127.0.0.1:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("set timeout: {e}"))?;
    stream
        .write_all(word.as_bytes())
        .map_err(|e| format!("send {word}: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read the {word} answer: {e}"))?;
    if answer.contains("is not executed because it is not in the whitelist") {
        return Err(format!(
            "ZooKeeper refuses {word}: 4lw.commands.whitelist must list it"
        ));
    }
    Ok(answer)
}

/// `mntr`: the numeric `zk_*` counters.
pub fn zk_mntr(port: u16) -> Result<BTreeMap<String, f64>, String> {
    let text = four_letter_word(port, "mntr")?;
    let map: BTreeMap<String, f64> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    if map.is_empty() {
        return Err(format!("mntr answered no counters: {text:?}"));
    }
    Ok(map)
}

/// One client connection as `cons` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkConnection {
    /// The client's source port on 127.0.0.1.
    pub client_port: u16,
    /// The session id (`sid=0x…`).
    pub session: String,
    /// Packets received from this client on this connection.
    pub received: u64,
    /// Packets sent to it.
    pub sent: u64,
}

/// `cons`: every connection that has a session (the asking connection has none).
pub fn zk_cons(port: u16) -> Result<Vec<ZkConnection>, String> {
    let text = four_letter_word(port, "cons")?;
    Ok(text.lines().filter_map(parse_cons_line).collect())
}

/// ` /127.0.0.1:35384[1](queued=0,recved=12,sent=12,sid=0x1000…,lop=EXIS,…)`.
fn parse_cons_line(line: &str) -> Option<ZkConnection> {
    let line = line.trim();
    let addr = line.strip_prefix('/')?.split('[').next()?;
    let client_port = addr.rsplit_once(':')?.1.parse().ok()?;
    let fields = line.split_once('(')?.1.trim_end_matches(')');
    let field = |name: &str| {
        fields
            .split(',')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(ZkConnection {
        client_port,
        session: field("sid")?,
        received: field("recved")?.parse().ok()?,
        sent: field("sent")?.parse().ok()?,
    })
}

/// The pid owning the IPv4 TCP socket whose local port is `local_port` and whose remote port
/// is `remote_port`, among `pids` (`/proc/net/tcp` inode, then each pid's `fd/` links).
pub fn socket_owner(local_port: u16, remote_port: u16, pids: &[i32]) -> Option<i32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port_of = |s: &str| u16::from_str_radix(s.rsplit_once(':')?.1, 16).ok();
        (port_of(f.get(1)?)? == local_port && port_of(f.get(2)?)? == remote_port)
            .then(|| f.get(9).map(|s| s.to_string()))
            .flatten()
    })?;
    let needle = format!("socket:[{inode}]");
    pids.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.flatten().any(|e| {
                    std::fs::read_link(e.path())
                        .map(|t| t.to_string_lossy() == needle)
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_sum_filters_by_labels() {
        let p = Prometheus::parse(
            "# HELP x\n\
             grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\"} 7\n\
             grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\"} 3\n\
             etcd_mvcc_put_total 5\n",
        );
        assert_eq!(
            p.sum(
                "grpc_server_msg_received_total",
                &[("grpc_method", "LeaseKeepAlive")]
            ),
            7.0
        );
        assert_eq!(p.sum("grpc_server_msg_received_total", &[]), 10.0);
        assert_eq!(p.sum("etcd_mvcc_put_total", &[]), 5.0);
        assert!(!p.has("etcd_mvcc_txn_total"));
    }

    #[test]
    fn cons_line_gives_port_session_and_packets() {
        let c = parse_cons_line(
            " /127.0.0.1:35384[1](queued=0,recved=12,sent=13,sid=0x100012f,lop=EXIS,est=1,to=5000)",
        );
        assert_eq!(
            c,
            Some(ZkConnection {
                client_port: 35384,
                session: "0x100012f".into(),
                received: 12,
                sent: 13
            })
        );
        assert_eq!(
            parse_cons_line(" /127.0.0.1:35390[0](queued=0,recved=1,sent=0)"),
            None
        );
    }
}
