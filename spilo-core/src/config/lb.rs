//! `load_balancers:` — the load balancers that follow the primary (spilo's own section).
//!
//! ```yaml
//! load_balancers:
//! - type: elb                        # elb, or the name of a load_balancer plugin
//!   primary_elb: spilo-demo          # classic ELB names
//!   replica_elb: spilo-demo-replica  # optional
//!   instance_id: i-0123456789abcdef0 # optional: else from the instance metadata service
//!   region: eu-central-1
//!   endpoint: http://127.0.0.1:5000  # optional: a local AWS API server (moto)
//!   max_lag: 1048576                 # optional: replicas further behind leave the read-only side
//! - type: proxy                      # the built-in proxy
//!   listen_rw: 127.0.0.1:5000
//!   listen_ro: 127.0.0.1:5001
//! ```
//!
//! The leader's daemon routes read-write traffic to itself and read-only traffic to the healthy
//! replicas; every call carries its leader term, so a backend refuses a deposed primary's late
//! call (within what its API can compare and set). The built-in proxy follows the DCS itself (`crate::proxy`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::KeyProblem;

/// The load balancers built into spilo; any other `type` names a load-balancer plugin.
pub const BUILTIN_LB: &[&str] = &["elb", "proxy"];

/// The ELB backend's plugin file (the AWS SDK stays out of the daemon unless `type: elb` is
/// used).
pub const ELB_PLUGIN_FILE: &str = "libspilo_lb_elb_plugin.so";

/// Longest a single load-balancer call may take (seconds), and the default.
pub const MAX_TIMEOUT_SECS: u64 = 60;
const DEFAULT_TIMEOUT_SECS: u64 = 5;

/// One entry of `load_balancers:`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoadBalancerConfig {
    /// `elb`, or the name of a load-balancer plugin listed under `plugins:`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A name for logs and metrics (default: the type, with its position when a type repeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Replicas further behind the primary than this many bytes leave the read-only side
    /// (default: `maximum_lag_on_failover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<u64>,
    /// Seconds a single call may take (default 5, at most 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// `elb`: the classic ELB that receives read-write traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_elb: Option<String>,
    /// `elb`: the classic ELB that receives read-only traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_elb: Option<String>,
    /// `elb`: this node's EC2 instance id (default: from the instance metadata service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// `elb`: the region (default: `AWS_REGION`, the profile, the instance metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `elb`: a custom API endpoint (a local AWS API server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `elb`: the instance metadata service (default `http://169.254.169.254`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_endpoint: Option<String>,
    /// `proxy`: the read-write port (`host:port`), forwarding to the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_rw: Option<String>,
    /// `proxy`: the read-only port, spreading over the healthy replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_ro: Option<String>,
    /// `proxy`: the proxy's own `/metrics` (`spilo proxy`; inside the daemon its series are in
    /// the daemon's `/metrics` as well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_metrics: Option<String>,
    /// `proxy`: the read-only port falls back to the primary when no replica qualifies
    /// (default false: it never sends a client to the primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ro_fallback_primary: Option<bool>,
    /// `proxy`: seconds a new read-write connection waits for a primary while there is none
    /// (default 10; 0 refuses at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<u64>,
    /// `proxy`: connections per port at most (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    /// `proxy`: seconds to connect to PostgreSQL (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<u64>,
    /// Everything else: a plugin's own settings, passed on as they are.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl LoadBalancerConfig {
    /// How long one call may take.
    pub fn call_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.timeout
                .unwrap_or(DEFAULT_TIMEOUT_SECS)
                .clamp(1, MAX_TIMEOUT_SECS),
        )
    }

    /// The settings handed to the backend: every key but `type`, `name`, `max_lag` and
    /// `timeout` (spilo's own).
    pub fn backend_settings(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("primary_elb", &self.primary_elb),
            ("replica_elb", &self.replica_elb),
            ("instance_id", &self.instance_id),
            ("region", &self.region),
            ("endpoint", &self.endpoint),
            ("imds_endpoint", &self.imds_endpoint),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), Value::from(v.clone()));
            }
        }
        for (k, v) in &self.other {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// The names the entries go by in logs and metrics: `name`, else the type (with its position
/// when the type repeats).
pub fn labels(lbs: &[LoadBalancerConfig]) -> Vec<String> {
    lbs.iter()
        .enumerate()
        .map(|(i, l)| match &l.name {
            Some(n) => n.clone(),
            None if lbs.iter().filter(|o| o.kind == l.kind).count() > 1 => {
                format!("{}-{i}", l.kind)
            }
            None => l.kind.clone(),
        })
        .collect()
}

/// The ELB backend's settings beyond the typed ones (credentials).
const ELB_EXTRA: &[&str] = &["access_key_id", "secret_access_key", "session_token"];

/// A key set on an entry of another built-in type (a typo or a misplaced key is refused
/// rather than ignored).
fn misplaced(l: &LoadBalancerConfig) -> Option<(String, String)> {
    let elb_keys = [
        ("primary_elb", l.primary_elb.is_some()),
        ("replica_elb", l.replica_elb.is_some()),
        ("instance_id", l.instance_id.is_some()),
        ("region", l.region.is_some()),
        ("endpoint", l.endpoint.is_some()),
        ("imds_endpoint", l.imds_endpoint.is_some()),
    ];
    let proxy_keys = [
        ("listen_rw", l.listen_rw.is_some()),
        ("listen_ro", l.listen_ro.is_some()),
        ("listen_metrics", l.listen_metrics.is_some()),
        ("ro_fallback_primary", l.ro_fallback_primary.is_some()),
        ("hold", l.hold.is_some()),
        ("max_connections", l.max_connections.is_some()),
        ("connect_timeout", l.connect_timeout.is_some()),
    ];
    let (wrong, allowed_other): (&[(&str, bool)], &[&str]) = match l.kind.as_str() {
        "elb" => (&proxy_keys, ELB_EXTRA),
        "proxy" => (&elb_keys, &[]),
        _ => return None,
    };
    if let Some((k, _)) = wrong.iter().find(|(_, set)| *set) {
        return Some((
            k.to_string(),
            format!("is not a setting of type {}", l.kind),
        ));
    }
    l.other
        .keys()
        .find(|k| !allowed_other.contains(&k.as_str()))
        .map(|k| (k.clone(), format!("is not a setting of type {}", l.kind)))
}

/// A classic ELB name: 1–32 letters, digits and hyphens, not starting or ending with a hyphen.
fn elb_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

pub use spilo_sdk::lb::instance_id_ok;

/// A listen address: `ip:port` (or `*:port`, every address).
pub fn listen_addr(s: &str) -> Option<std::net::SocketAddr> {
    let s = match s.strip_prefix("*:") {
        Some(port) => format!("0.0.0.0:{port}"),
        None => s.to_string(),
    };
    s.parse().ok()
}

/// An http:// or https:// URL with something after the scheme.
pub(crate) fn url_ok(u: &str) -> bool {
    (u.starts_with("http://") || u.starts_with("https://")) && u.len() > "https://".len()
}

/// An AWS region name: lower-case letters, digits and '-', 1–32 of them.
pub(crate) fn region_ok(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks `load_balancers:`; the error names the key.
pub fn check(lbs: &[LoadBalancerConfig], lb_plugins: &[&str]) -> Result<(), KeyProblem> {
    let labels = labels(lbs);
    for (i, l) in lbs.iter().enumerate() {
        let key = |k: &str| format!("load_balancers[{i}].{k}");
        let err = |k: &str, m: String| Err(KeyProblem::new(key(k), m));
        if let Some(n) = &l.name {
            if n.trim().is_empty() || n.len() > 64 || n.chars().any(|c| c.is_control()) {
                return err("name", format!("{n:?}: 1–64 printable characters"));
            }
        }
        if labels[..i].contains(&labels[i]) {
            return err(
                "name",
                format!("'{}' names two load balancers: give each a name", labels[i]),
            );
        }
        if let Some((k, m)) = misplaced(l) {
            return err(&k, m);
        }
        if let Some(t) = l.timeout {
            if !(1..=MAX_TIMEOUT_SECS).contains(&t) {
                return err(
                    "timeout",
                    format!("{t}: seconds from 1 to {MAX_TIMEOUT_SECS}"),
                );
            }
        }
        match l.kind.as_str() {
            "elb" => {
                let Some(p) = &l.primary_elb else {
                    return err("primary_elb", "required for type elb".into());
                };
                for (k, v) in [("primary_elb", Some(p)), ("replica_elb", l.replica_elb.as_ref())]
                {
                    if let Some(v) = v {
                        if !elb_name_ok(v) {
                            return err(
                                k,
                                format!(
                                    "'{v}' is not a classic ELB name (1–32 letters, digits and hyphens, no hyphen at either end)"
                                ),
                            );
                        }
                    }
                }
                if l.replica_elb.as_deref() == Some(p.as_str()) {
                    return err(
                        "replica_elb",
                        format!("'{p}' is also the primary ELB: read-only traffic would reach the primary"),
                    );
                }
                if let Some(id) = &l.instance_id {
                    if !instance_id_ok(id) {
                        return err(
                            "instance_id",
                            format!("'{id}' is not an EC2 instance id (i- and 8 or 17 hex digits)"),
                        );
                    }
                }
                if let Some(r) = &l.region {
                    if !region_ok(r) {
                        return err("region", format!("'{r}' is not an AWS region name"));
                    }
                }
                for (k, v) in [("endpoint", &l.endpoint), ("imds_endpoint", &l.imds_endpoint)] {
                    if let Some(u) = v {
                        if !url_ok(u) {
                            return err(k, format!("'{u}' must be an http:// or https:// URL"));
                        }
                    }
                }
            }
            "proxy" => {
                let Some(rw) = &l.listen_rw else {
                    return err("listen_rw", "required for type proxy".into());
                };
                let mut seen = Vec::new();
                for (k, v) in [
                    ("listen_rw", Some(rw)),
                    ("listen_ro", l.listen_ro.as_ref()),
                    ("listen_metrics", l.listen_metrics.as_ref()),
                ] {
                    let Some(v) = v else { continue };
                    let Some(a) = listen_addr(v) else {
                        return err(k, format!("'{v}' is not ip:port (or *:port)"));
                    };
                    if seen.contains(&a) {
                        return err(k, format!("'{v}' is already another port of this proxy"));
                    }
                    seen.push(a);
                }
                for (k, v, range) in [
                    ("hold", l.hold, 0..=3600),
                    ("max_connections", l.max_connections, 1..=100_000),
                    ("connect_timeout", l.connect_timeout, 1..=60),
                ] {
                    if let Some(v) = v {
                        if !range.contains(&v) {
                            return err(
                                k,
                                format!("{v}: from {} to {}", range.start(), range.end()),
                            );
                        }
                    }
                }
            }
            other if lb_plugins.contains(&other) => {}
            other => {
                return err(
                    "type",
                    format!(
                        "'{other}' is neither a built-in load balancer ({}) nor a load_balancer plugin listed under plugins",
                        BUILTIN_LB.join(", ")
                    ),
                )
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Vec<LoadBalancerConfig> {
        serde_yaml::from_str(y).expect("yaml")
    }

    #[test]
    fn the_issue_example_is_valid_and_settings_pass_through() {
        let lbs = parse(
            "- type: elb\n  primary_elb: spilo-demo\n  replica_elb: spilo-demo-replica\n  \
             instance_id: i-0123456789abcdef0\n  region: eu-central-1\n  endpoint: http://127.0.0.1:5000\n  \
             access_key_id: AK\n  secret_access_key: S\n",
        );
        check(&lbs, &[]).expect("valid");
        let proxy = parse("- type: proxy\n  listen_rw: '*:5000'\n  listen_ro: 127.0.0.1:5001\n");
        check(&proxy, &[]).expect("a proxy");
        let s = lbs[0].backend_settings();
        assert_eq!(s["primary_elb"], "spilo-demo");
        assert_eq!(s["instance_id"], "i-0123456789abcdef0");
        assert_eq!(s["access_key_id"], "AK");
        assert!(s.get("type").is_none());
        assert_eq!(labels(&lbs), vec!["elb".to_string()]);
    }

    #[test]
    fn bad_entries_name_the_key() {
        let cases = [
            ("- type: elb\n", "load_balancers[0].primary_elb"),
            (
                "- type: elb\n  primary_elb: -bad\n",
                "load_balancers[0].primary_elb",
            ),
            (
                "- type: elb\n  primary_elb: a\n  replica_elb: a\n",
                "load_balancers[0].replica_elb",
            ),
            (
                "- type: elb\n  primary_elb: a\n  instance_id: i-xyz\n",
                "load_balancers[0].instance_id",
            ),
            (
                "- type: elb\n  primary_elb: a\n  endpoint: localhost:5000\n",
                "load_balancers[0].endpoint",
            ),
            (
                "- type: elb\n  primary_elb: a\n  timeout: 18446744073709551615\n",
                "load_balancers[0].timeout",
            ),
            ("- type: nginx\n", "load_balancers[0].type"),
            (
                "- type: elb\n  primary_elb: a\n  replica_eb: b\n",
                "load_balancers[0].replica_eb",
            ),
            (
                "- type: elb\n  primary_elb: a\n  listen_rw: 127.0.0.1:5000\n",
                "load_balancers[0].listen_rw",
            ),
            (
                "- type: proxy\n  listen_rw: 127.0.0.1:5000\n  primary_elb: a\n",
                "load_balancers[0].primary_elb",
            ),
            ("- type: proxy\n", "load_balancers[0].listen_rw"),
            (
                "- type: proxy\n  listen_rw: localhost:5000\n",
                "load_balancers[0].listen_rw",
            ),
            (
                "- type: proxy\n  listen_rw: 127.0.0.1:5000\n  listen_ro: 127.0.0.1:5000\n",
                "load_balancers[0].listen_ro",
            ),
            (
                "- type: proxy\n  listen_rw: 127.0.0.1:5000\n  hold: 99999\n",
                "load_balancers[0].hold",
            ),
            (
                "- type: elb\n  primary_elb: a\n- type: elb\n  primary_elb: b\n  name: elb-0\n",
                "load_balancers[1].name",
            ),
        ];
        for (y, want) in cases {
            let KeyProblem { key: k, message: m } = check(&parse(y), &[]).expect_err(y);
            assert_eq!(k, want, "{y}: {m}");
            assert!(!m.is_empty());
        }
    }

    #[test]
    fn a_listed_plugin_is_a_type_and_repeated_types_get_positions() {
        let lbs = parse("- type: memlb\n- type: memlb\n");
        check(&lbs, &["memlb"]).expect("plugin type");
        assert_eq!(
            labels(&lbs),
            vec!["memlb-0".to_string(), "memlb-1".to_string()]
        );
        assert!(check(&lbs, &[]).is_err());
    }

    #[test]
    fn instance_ids() {
        assert!(instance_id_ok("i-0123456789abcdef0"));
        assert!(instance_id_ok("i-01234567"));
        assert!(!instance_id_ok("i-0123456789abcdef"));
        assert!(!instance_id_ok("0123456789abcdef0"));
    }
}
