//! The proxy's counters, and their Prometheus text (the proxy's own `/metrics`, and the
//! daemon's when the proxy runs inside it).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Which port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Read-write: the primary.
    Rw,
    /// Read-only: the replicas.
    Ro,
}

impl Side {
    /// `rw` or `ro`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Rw => "rw",
            Side::Ro => "ro",
        }
    }
}

/// Counters of one port.
#[derive(Debug, Default)]
pub struct PortStats {
    /// Connections open now.
    pub active: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections refused at the limit.
    pub refused: AtomicU64,
    /// Connections that found no target (none within `hold`, or the target did not answer).
    pub unrouted: AtomicU64,
    /// Connections closed because their target stopped being one (a demoted primary, a replica
    /// promoted or gone).
    pub cut: AtomicU64,
    /// Bytes from clients to PostgreSQL.
    pub bytes_in: AtomicU64,
    /// Bytes from PostgreSQL to clients.
    pub bytes_out: AtomicU64,
}

/// Counters of one proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// The proxy's label (its `name`, or `proxy`).
    pub label: String,
    /// The read-write port.
    pub rw: PortStats,
    /// The read-only port.
    pub ro: PortStats,
    /// Changes of the read-write or read-only targets.
    pub route_changes: AtomicU64,
    /// The member receiving read-write connections now.
    pub primary: Mutex<Option<String>>,
}

impl ProxyStats {
    /// A proxy's counters.
    pub fn new(label: &str) -> ProxyStats {
        ProxyStats {
            label: label.to_string(),
            ..ProxyStats::default()
        }
    }

    /// One port's counters.
    pub fn port(&self, side: Side) -> &PortStats {
        match side {
            Side::Rw => &self.rw,
            Side::Ro => &self.ro,
        }
    }

    /// `/patroni`'s view.
    pub fn status_json(&self) -> serde_json::Value {
        let port = |p: &PortStats| {
            serde_json::json!({
                "active": p.active.load(Relaxed),
                "accepted": p.accepted.load(Relaxed),
                "cut": p.cut.load(Relaxed),
            })
        };
        serde_json::json!({
            "name": self.label,
            "primary": self.primary.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "route_changes": self.route_changes.load(Relaxed),
            "rw": port(&self.rw),
            "ro": port(&self.ro),
        })
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text for `proxies`; `labels` goes first in every sample (e.g.
/// `scope="x",name="n",`, or empty).
pub fn render(proxies: &[&ProxyStats], labels: &str) -> String {
    let mut out = String::new();
    type Get = fn(&PortStats) -> u64;
    let per_port: [(&str, &str, &str, Get); 7] = [
        ("spilo_proxy_connections", "gauge", "Client connections open now.", |p| {
            p.active.load(Relaxed)
        }),
        (
            "spilo_proxy_connections_total",
            "counter",
            "Client connections accepted.",
            |p| p.accepted.load(Relaxed),
        ),
        (
            "spilo_proxy_refused_total",
            "counter",
            "Client connections refused at max_connections.",
            |p| p.refused.load(Relaxed),
        ),
        (
            "spilo_proxy_unrouted_total",
            "counter",
            "Client connections closed without a target (no primary within hold, or the target did not answer).",
            |p| p.unrouted.load(Relaxed),
        ),
        (
            "spilo_proxy_cut_total",
            "counter",
            "Client connections closed because their target stopped being one (demoted, promoted, gone).",
            |p| p.cut.load(Relaxed),
        ),
        (
            "spilo_proxy_received_bytes_total",
            "counter",
            "Bytes from clients forwarded to PostgreSQL.",
            |p| p.bytes_in.load(Relaxed),
        ),
        (
            "spilo_proxy_sent_bytes_total",
            "counter",
            "Bytes from PostgreSQL forwarded to clients.",
            |p| p.bytes_out.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in per_port {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in proxies {
            for side in [Side::Rw, Side::Ro] {
                let _ = writeln!(
                    out,
                    "{name}{{{labels}proxy=\"{}\",port=\"{}\"}} {}",
                    escape(&p.label),
                    side.as_str(),
                    get(p.port(side))
                );
            }
        }
    }
    let name = "spilo_proxy_route_changes_total";
    let _ = writeln!(
        out,
        "# HELP {name} Changes of the proxy's read-write or read-only targets.\n# TYPE {name} counter"
    );
    for p in proxies {
        let _ = writeln!(
            out,
            "{name}{{{labels}proxy=\"{}\"}} {}",
            escape(&p.label),
            p.route_changes.load(Relaxed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_has_its_series() {
        let p = ProxyStats::new("front");
        p.rw.accepted.fetch_add(3, Relaxed);
        let text = render(&[&p], "");
        assert!(text.contains("spilo_proxy_connections_total{proxy=\"front\",port=\"rw\"} 3"));
        assert!(text.contains("spilo_proxy_connections_total{proxy=\"front\",port=\"ro\"} 0"));
        assert!(text.contains("spilo_proxy_route_changes_total{proxy=\"front\"} 0"));
    }
}
