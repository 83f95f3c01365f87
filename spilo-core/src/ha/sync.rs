//! Synchronous replication (priority mode): which standbys are synchronous, and the order in
//! which the leader changes `synchronous_standby_names` (SSN) and the `sync` key.
//!
//! Invariant: every member named in the `sync` key is in SSN, and was confirmed synchronous by
//! PostgreSQL (`pg_stat_replication.sync_state = 'sync'`) before it was named. So the leader
//! adds a standby to SSN first and to the key once it is confirmed, and removes it from the
//! key first and from SSN afterwards. Only members named in the key (or its leader) may be
//! promoted automatically, so an acknowledged commit is on every promotable node.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::DynamicConfig;
use crate::dcs::{tags, Cluster};
use crate::ha::state::{NodeState, ReplicationRow};

/// The name Patroni uses in SSN when strict mode has no standby: commits wait forever.
pub const STRICT_PLACEHOLDER: &str = "__patroni_strict_sync_replica_placeholder__";

/// `synchronous_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Asynchronous replication.
    Off,
    /// Priority mode (`on`/`true`).
    On,
    /// Quorum commit (`quorum`).
    Quorum,
}

/// `synchronous_mode` from the dynamic config (`true`, `"on"`, `"quorum"`…).
pub fn sync_mode(d: &DynamicConfig) -> SyncMode {
    match d.extra.get("synchronous_mode") {
        Some(Value::Bool(true)) => SyncMode::On,
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" => SyncMode::On,
            "quorum" => SyncMode::Quorum,
            _ => SyncMode::Off,
        },
        _ => SyncMode::Off,
    }
}

fn extra_bool(d: &DynamicConfig, k: &str) -> bool {
    match d.extra.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "on" | "true" | "yes"),
        _ => false,
    }
}

fn extra_int(d: &DynamicConfig, k: &str) -> Option<i64> {
    match d.extra.get(k) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `synchronous_mode_strict`.
pub fn strict(d: &DynamicConfig) -> bool {
    extra_bool(d, "synchronous_mode_strict")
}

/// `synchronous_node_count` (at least 1).
pub fn node_count(d: &DynamicConfig) -> usize {
    extra_int(d, "synchronous_node_count").unwrap_or(1).max(1) as usize
}

/// `maximum_lag_on_syncnode` in bytes (None: disabled).
pub fn max_lag_on_syncnode(d: &DynamicConfig) -> Option<u64> {
    extra_int(d, "maximum_lag_on_syncnode")
        .filter(|v| *v > 0)
        .map(|v| v as u64)
}

/// The names in the `sync` key (empty when absent or inactive).
pub fn key_standbys(c: &Cluster) -> Vec<String> {
    c.sync
        .as_ref()
        .filter(|s| {
            s.value
                .leader
                .as_deref()
                .map(|l| !l.is_empty())
                .unwrap_or(false)
        })
        .and_then(|s| s.value.sync_standby.clone())
        .map(|list| {
            list.split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The `sync` key's leader, when the key is active.
pub fn key_leader(c: &Cluster) -> Option<&str> {
    c.sync
        .as_ref()
        .and_then(|s| s.value.leader.as_deref())
        .filter(|l| !l.is_empty())
}

/// Whether `name` is listed (case-insensitively).
pub fn listed(list: &[String], name: &str) -> bool {
    list.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// For the health checks: (sync standby, quorum standby) for this node.
pub fn standby_roles(s: &NodeState) -> (bool, bool) {
    let mode = sync_mode(&s.dynamic);
    if mode == SyncMode::Off || s.pg.role != "replica" {
        return (false, false);
    }
    let on = s
        .cluster
        .as_ref()
        .map(|c| listed(&key_standbys(c), &s.name))
        .unwrap_or(false);
    (on && mode == SyncMode::On, on && mode == SyncMode::Quorum)
}

/// Quote a standby name for SSN unless it is a plain identifier.
fn quote_name(n: &str) -> String {
    let plain = n
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && !matches!(n.to_ascii_lowercase().as_str(), "first" | "any");
    if plain {
        n.to_string()
    } else {
        format!("\"{}\"", n.replace('"', "\"\""))
    }
}

/// The SSN value for these standbys (sorted), waiting for `count` of them. Empty list: the
/// placeholder in strict mode, else no synchronous standby at all.
pub fn ssn(names: &[String], count: usize, strict: bool) -> String {
    let mut names: Vec<String> = names.to_vec();
    names.sort();
    match names.len() {
        0 if strict => STRICT_PLACEHOLDER.to_string(),
        0 => String::new(),
        1 => quote_name(&names[0]),
        _ => format!(
            "{} ({})",
            count.min(names.len()),
            names
                .iter()
                .map(|n| quote_name(n))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Standbys eligible to be synchronous, best first: running replicas streaming from us,
/// without `nosync`, with `sync_priority` > 0, not cascading, within `maximum_lag_on_syncnode`;
/// ordered by `sync_priority`, then already synchronous, then flush position.
pub fn candidates(
    c: &Cluster,
    me: &str,
    replication: &[ReplicationRow],
    my_flush: Option<u64>,
    max_lag: Option<u64>,
) -> Vec<String> {
    let mut out: Vec<(i64, bool, u64, String)> = Vec::new();
    for m in &c.members {
        if m.name == me || m.data.state != "running" || m.data.normalized_role() != "replica" {
            continue;
        }
        let t = &m.data.tags;
        if tags::tag_bool(t, "nosync") || t.contains_key("replicatefrom") {
            continue;
        }
        let prio = tags::tag_int(t, "sync_priority").unwrap_or(1);
        if prio <= 0 {
            continue;
        }
        let Some(row) = replication
            .iter()
            .find(|r| r.application_name == m.name && r.state == "streaming")
        else {
            continue;
        };
        let flush = row.flush_lsn.unwrap_or(0);
        if let (Some(lim), Some(mine)) = (max_lag, my_flush) {
            if mine.saturating_sub(flush) > lim {
                continue;
            }
        }
        out.push((prio, row.sync_state == "sync", flush, m.name.clone()));
    }
    out.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then(a.3.cmp(&b.3))
    });
    out.into_iter().map(|x| x.3).collect()
}

/// The leader's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncStep {
    /// Write the `sync` key with these standbys (first activation, a removal, or newly
    /// confirmed standbys).
    WriteKey(Vec<String>),
    /// Set SSN to this value and reload.
    SetSsn(String),
    /// Nothing to change.
    Steady,
}

/// One step toward `wanted` standbys, keeping the invariant. `key` is what the `sync` key
/// names now (None: the key is not ours), `current_ssn` what PostgreSQL runs with, `confirmed`
/// the standbys `pg_stat_replication` reports as `sync`.
pub fn next_step(
    key: Option<&[String]>,
    wanted: &[String],
    current_ssn: &str,
    confirmed: &[String],
    count: usize,
    strict: bool,
) -> SyncStep {
    let Some(key) = key else {
        // First activation (or a new leader): the key names us and nobody yet.
        return SyncStep::WriteKey(Vec::new());
    };
    // 1. Removals from the key come first.
    let kept: Vec<String> = key.iter().filter(|n| listed(wanted, n)).cloned().collect();
    if kept.len() != key.len() {
        return SyncStep::WriteKey(kept);
    }
    // 2. SSN follows the wanted set (which includes everything in the key).
    let target = ssn(wanted, count, strict);
    if normalize(&target) != normalize(current_ssn) {
        return SyncStep::SetSsn(target);
    }
    // 3. Additions to the key once PostgreSQL confirms them.
    let mut next: Vec<String> = wanted
        .iter()
        .filter(|n| listed(confirmed, n))
        .cloned()
        .collect();
    next.sort();
    let mut cur = key.to_vec();
    cur.sort();
    if next != cur {
        return SyncStep::WriteKey(next);
    }
    SyncStep::Steady
}

fn normalize(s: &str) -> String {
    s.trim().trim_matches('\'').to_string()
}

/// The `sync` key value.
pub fn key_value(leader: &str, standbys: &[String]) -> Value {
    let mut names: Vec<String> = standbys.to_vec();
    names.sort();
    let list = if names.is_empty() {
        Value::Null
    } else {
        Value::from(names.join(","))
    };
    serde_json::json!({"leader": leader, "quorum": 0, "sync_standby": list})
}

/// Parameters with SSN set (a primary's configuration).
pub fn with_ssn(params: &BTreeMap<String, Value>, ssn: Option<&str>) -> BTreeMap<String, Value> {
    let mut p = params.clone();
    if let Some(v) = ssn {
        p.insert("synchronous_standby_names".into(), Value::from(v));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ssn_quotes_like_patroni() {
        assert_eq!(ssn(&v(&["postgres-1"]), 1, false), "\"postgres-1\"");
        assert_eq!(ssn(&v(&["n2", "n1"]), 1, false), "1 (n1,n2)");
        assert_eq!(ssn(&v(&["any"]), 1, false), "\"any\"");
        assert_eq!(ssn(&[], 1, false), "");
        assert_eq!(ssn(&[], 1, true), STRICT_PLACEHOLDER);
    }

    #[test]
    fn first_activation_writes_an_empty_key() {
        assert_eq!(
            next_step(None, &v(&["n2"]), "", &[], 1, false),
            SyncStep::WriteKey(vec![])
        );
    }

    #[test]
    fn a_standby_enters_ssn_before_the_key_and_the_key_only_once_confirmed() {
        let key = v(&[]);
        assert_eq!(
            next_step(Some(&key), &v(&["n2"]), "", &[], 1, false),
            SyncStep::SetSsn("n2".into())
        );
        assert_eq!(
            next_step(Some(&key), &v(&["n2"]), "n2", &[], 1, false),
            SyncStep::Steady
        );
        assert_eq!(
            next_step(Some(&key), &v(&["n2"]), "n2", &v(&["n2"]), 1, false),
            SyncStep::WriteKey(v(&["n2"]))
        );
    }

    #[test]
    fn a_standby_leaves_the_key_before_ssn() {
        let key = v(&["n2"]);
        // n2 is gone from the wanted set (disconnected): first the key...
        assert_eq!(
            next_step(Some(&key), &v(&["n3"]), "n2", &v(&["n2"]), 1, false),
            SyncStep::WriteKey(vec![])
        );
        // ...then SSN.
        let key = v(&[]);
        assert_eq!(
            next_step(Some(&key), &v(&["n3"]), "n2", &[], 1, false),
            SyncStep::SetSsn("n3".into())
        );
    }

    #[test]
    fn strict_mode_without_standbys_blocks_commits() {
        let key = v(&[]);
        assert_eq!(
            next_step(Some(&key), &[], "n2", &[], 1, true),
            SyncStep::SetSsn(STRICT_PLACEHOLDER.into())
        );
    }

    #[test]
    fn candidates_honour_tags_lag_and_priority() {
        use crate::dcs::{Member, MemberData};
        let mk = |name: &str, tags: &[(&str, Value)]| Member {
            name: name.into(),
            data: MemberData {
                state: "running".into(),
                role: "replica".into(),
                tags: tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                ..MemberData::default()
            },
            version: 1,
            owned_by_us: false,
        };
        let c = Cluster {
            members: vec![
                mk("n1", &[]),
                mk("n2", &[]),
                mk("n3", &[("sync_priority", Value::from(5))]),
                mk("n4", &[("nosync", Value::Bool(true))]),
                mk("n5", &[]),
            ],
            ..Cluster::default()
        };
        let row = |n: &str, flush: u64, st: &str| ReplicationRow {
            application_name: n.into(),
            state: "streaming".into(),
            sync_state: st.into(),
            flush_lsn: Some(flush),
            ..ReplicationRow::default()
        };
        let rep = vec![
            row("n2", 100, "async"),
            row("n3", 50, "async"),
            row("n4", 100, "async"),
            row("n5", 1, "async"),
        ];
        assert_eq!(
            candidates(&c, "n1", &rep, Some(100), None),
            v(&["n3", "n2", "n5"])
        );
        assert_eq!(
            candidates(&c, "n1", &rep, Some(100), Some(60)),
            v(&["n3", "n2"])
        );
    }
}
