//! The proxy's counters, and their Prometheus text (the proxy's own `/metrics`, and the
//! daemon's when the proxy runs inside it).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::exposition::{escape_label, Exposition, Family};

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

/// The proxies' families into `e` (after the daemon's, with its labels, or alone).
pub fn write(e: &mut Exposition, proxies: &[&ProxyStats]) {
    let per_port: [Family<PortStats>; 7] = [
        Family {
            name: "spilo_proxy_connections",
            kind: "gauge",
            help: "Client connections open now.",
            get: |p| p.active.load(Relaxed),
        },
        Family {
            name: "spilo_proxy_connections_total",
            kind: "counter",
            help: "Client connections accepted.",
            get: |p| p.accepted.load(Relaxed),
        },
        Family {
            name: "spilo_proxy_refused_total",
            kind: "counter",
            help: "Client connections refused at max_connections.",
            get: |p| p.refused.load(Relaxed),
        },
        Family {
            name: "spilo_proxy_unrouted_total",
            kind: "counter",
            help: "Client connections closed without a target (no primary within hold, or the target did not answer).",
            get: |p| p.unrouted.load(Relaxed),
        },
        Family {
            name: "spilo_proxy_cut_total",
            kind: "counter",
            help: "Client connections closed because their target stopped being one (demoted, promoted, gone).",
            get: |p| p.cut.load(Relaxed),
        },
        Family {
            name: "spilo_proxy_received_bytes_total",
            kind: "counter",
            help: "Bytes from clients forwarded to PostgreSQL.",
            get: |p| p.bytes_in.load(Relaxed),
        },
        Family {
            name: "spilo_proxy_sent_bytes_total",
            kind: "counter",
            help: "Bytes from PostgreSQL forwarded to clients.",
            get: |p| p.bytes_out.load(Relaxed),
        },
    ];
    let ports: Vec<(String, &PortStats)> = proxies
        .iter()
        .flat_map(|p| {
            [Side::Rw, Side::Ro].map(|side| {
                (
                    format!(
                        ",proxy=\"{}\",port=\"{}\"",
                        escape_label(&p.label),
                        side.as_str()
                    ),
                    p.port(side),
                )
            })
        })
        .collect();
    e.table(&per_port, &ports);
    let whole: Vec<(String, &ProxyStats)> = proxies
        .iter()
        .map(|p| (format!(",proxy=\"{}\"", escape_label(&p.label)), *p))
        .collect();
    e.table(
        &[Family::<ProxyStats> {
            name: "spilo_proxy_route_changes_total",
            kind: "counter",
            help: "Changes of the proxy's read-write or read-only targets.",
            get: |p| p.route_changes.load(Relaxed),
        }],
        &whole,
    );
}

/// The proxy's own `/metrics` text (no common labels).
pub fn render(proxies: &[&ProxyStats]) -> String {
    let mut e = Exposition::new(String::new(), 2048);
    write(&mut e, proxies);
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_has_its_series() {
        let p = ProxyStats::new("front");
        p.rw.accepted.fetch_add(3, Relaxed);
        let text = render(&[&p]);
        assert!(text.contains("spilo_proxy_connections_total{proxy=\"front\",port=\"rw\"} 3"));
        assert!(text.contains("spilo_proxy_connections_total{proxy=\"front\",port=\"ro\"} 0"));
        assert!(text.contains("spilo_proxy_route_changes_total{proxy=\"front\"} 0"));
    }
}
