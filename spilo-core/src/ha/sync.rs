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
    if mode == SyncMode::Off || s.pg.role != crate::ha::state::Role::Replica {
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

/// The standbys that may be named in the `sync` key: `pg_stat_replication` reports them
/// `sync`, and they have flushed at least `since`, the primary's flush position measured after
/// `synchronous_standby_names` last changed (None: not measured yet, nobody).
///
/// `sync` alone is not enough: a walsender is `streaming` once its standby caught up, and stays
/// so while the standby falls behind again, and the commits acknowledged before SSN named it
/// waited for nobody (or for another standby). Named in the key, it becomes promotable, so it
/// must have those commits first: every commit acknowledged before the change is at or below
/// `since`, and every commit after it waits for this standby.
pub fn confirmed(replication: &[ReplicationRow], since: Option<u64>) -> Vec<String> {
    let Some(since) = since else {
        return Vec::new();
    };
    replication
        .iter()
        .filter(|r| r.sync_state == "sync" && r.flush_lsn.is_some_and(|f| f >= since))
        .map(|r| r.application_name.clone())
        .collect()
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

/// A parsed `synchronous_standby_names`: the standbys and how many must acknowledge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ssn {
    /// `ANY` (quorum) rather than priority.
    pub any: bool,
    /// How many must acknowledge.
    pub count: usize,
    /// The standby names (placeholder included), unquoted.
    pub names: Vec<String>,
}

/// Parse SSN: `''`, `name`, `"name"`, `N (a, b)`, `FIRST N (…)`, `ANY N (…)`, `*`.
pub fn parse_ssn(s: &str) -> Ssn {
    let t = s.trim();
    if t.is_empty() {
        return Ssn::default();
    }
    let unquote = |n: &str| n.trim().trim_matches('"').replace("\"\"", "\"");
    let (head, list) = match (t.find('('), t.rfind(')')) {
        (Some(a), Some(b)) if b > a => (t[..a].trim(), Some(&t[a + 1..b])),
        _ => (t, None),
    };
    match list {
        None => Ssn {
            any: false,
            count: 1,
            names: t
                .split(',')
                .map(unquote)
                .filter(|n| !n.is_empty())
                .collect(),
        },
        Some(list) => {
            let mut words = head.split_whitespace();
            let (any, num) = match (words.next(), words.next()) {
                (Some(w), Some(n)) if w.eq_ignore_ascii_case("any") => (true, n),
                (Some(w), Some(n)) if w.eq_ignore_ascii_case("first") => (false, n),
                (Some(n), None) => (false, n),
                _ => (false, "1"),
            };
            Ssn {
                any,
                count: num.parse().unwrap_or(1),
                names: list
                    .split(',')
                    .map(unquote)
                    .filter(|n| !n.is_empty())
                    .collect(),
            }
        }
    }
}

/// The quorum SSN value: `ANY k (names)`; with no names, the placeholder in strict mode.
pub fn quorum_ssn(names: &[String], k: usize, strict: bool) -> String {
    let mut names: Vec<String> = names.to_vec();
    names.sort();
    if names.is_empty() {
        return if strict {
            format!("ANY 1 ({STRICT_PLACEHOLDER})")
        } else {
            String::new()
        };
    }
    format!(
        "ANY {} ({})",
        k.clamp(1, names.len()),
        names
            .iter()
            .map(|n| quote_name(n))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// One step of the quorum-mode leader toward `active` standbys with `wanted` acknowledgements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuorumStep {
    /// Write the `sync` key: these voters and this quorum.
    WriteKey(Vec<String>, u64),
    /// Set SSN to `ANY k (names)`.
    SetSsn(Vec<String>, usize),
    /// Nothing to change.
    Steady,
}

/// The quorum resolver. State: key voters `V` with quorum `q`, SSN `ANY k (S)`. It stays safe
/// — every set of `q+1` voters meets every set of `k` acknowledging standbys — when `S ⊆ V`
/// and `q + k ≥ |V|`. Each step keeps that: grow the key first, then change SSN, then shrink
/// the key, then lower `k`.
pub fn quorum_step(
    key: Option<(&[String], u64)>,
    ssn: &Ssn,
    active: &[String],
    wanted: usize,
) -> QuorumStep {
    let Some((voters, q)) = key else {
        return QuorumStep::WriteKey(Vec::new(), 0);
    };
    let set = |v: &[String]| -> std::collections::BTreeSet<String> {
        v.iter().map(|n| n.to_lowercase()).collect()
    };
    let (v, s_now, target) = (set(voters), set(&ssn.names), set(active));
    let k_now = if ssn.names.is_empty() { 0 } else { ssn.count };
    let k_target = wanted.min(target.len());
    let q_target = (target.len() - k_target) as u64;
    // 1. Grow the key to cover the new standbys, raising the quorum as needed.
    if !target.is_subset(&v) {
        let mut names: Vec<String> = voters.to_vec();
        names.extend(
            active
                .iter()
                .filter(|n| !v.contains(&n.to_lowercase()))
                .cloned(),
        );
        let q1 = q.max((names.len() as u64).saturating_sub(k_now as u64));
        return QuorumStep::WriteKey(names, q1);
    }
    // 2. SSN to the target standbys, acknowledged by enough of them for the current key; raise
    //    the quorum first where fewer acknowledgements will be asked for.
    let k2 = if target.is_empty() {
        0
    } else {
        k_target
            .max(v.len().saturating_sub(q as usize))
            .min(target.len())
    };
    if s_now != target || k_now < k2 {
        if (q as usize) + k2 < v.len() {
            return QuorumStep::WriteKey(voters.to_vec(), (v.len() - k2) as u64);
        }
        return QuorumStep::SetSsn(active.to_vec(), k2);
    }
    // 3. Shrink the key to the target, at the target quorum.
    if v != target || q != q_target {
        return QuorumStep::WriteKey(active.to_vec(), q_target);
    }
    // 4. Lower k to what is wanted.
    if k_now != k_target && !target.is_empty() {
        return QuorumStep::SetSsn(active.to_vec(), k_target);
    }
    QuorumStep::Steady
}

/// The quorum-mode `sync` key value.
pub fn quorum_key_value(leader: &str, voters: &[String], quorum: u64) -> Value {
    let mut names: Vec<String> = voters.to_vec();
    names.sort();
    let list = if names.is_empty() {
        Value::Null
    } else {
        Value::from(names.join(","))
    };
    serde_json::json!({"leader": leader, "quorum": quorum, "sync_standby": list})
}

/// The `sync` key's quorum (0 when absent).
pub fn key_quorum(c: &Cluster) -> u64 {
    c.sync.as_ref().map(|s| s.value.quorum).unwrap_or(0)
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

    /// Found by the first, hand-written simulation of `decide()` (since replaced by
    /// `tests/executor_sim`, which runs the executor itself): right after its promotion n2 ran with
    /// an empty SSN and acknowledged commits alone; it then named n1 in SSN, and n1, streaming
    /// but a few records behind, was reported `sync` at once and went into the key. n2 froze,
    /// and n1 was promoted without commits n2 had acknowledged. A standby is confirmed only
    /// once it has flushed what the primary had flushed after SSN changed.
    #[test]
    fn a_lagging_sync_standby_is_not_confirmed_until_it_has_every_acknowledged_commit() {
        let row = |flush: u64| ReplicationRow {
            application_name: "n1".into(),
            state: "streaming".into(),
            sync_state: "sync".into(),
            flush_lsn: Some(flush),
            ..ReplicationRow::default()
        };
        // Not measured yet (the cycle that changed SSN): nobody.
        assert!(confirmed(&[row(19_300)], None).is_empty());
        // Measured at 19_300 after the change: n1 at 19_181 lacks acknowledged commits.
        assert!(confirmed(&[row(19_181)], Some(19_300)).is_empty());
        let key = v(&[]);
        assert_eq!(
            next_step(
                Some(&key),
                &v(&["n1"]),
                "n1",
                &confirmed(&[row(19_181)], Some(19_300)),
                1,
                false
            ),
            SyncStep::Steady
        );
        // Caught up: confirmed, and named.
        assert_eq!(confirmed(&[row(19_300)], Some(19_300)), v(&["n1"]));
        assert_eq!(
            next_step(
                Some(&key),
                &v(&["n1"]),
                "n1",
                &confirmed(&[row(19_400)], Some(19_300)),
                1,
                false
            ),
            SyncStep::WriteKey(v(&["n1"]))
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

    /// Every step of the resolver keeps `S ⊆ V` and `q + k ≥ |V|`, and it converges.
    fn drive(
        mut voters: Vec<String>,
        mut q: u64,
        mut ssn: Ssn,
        active: &[String],
        wanted: usize,
    ) -> (Vec<String>, u64, Ssn) {
        for _ in 0..10 {
            let safe = |v: &[String], q: u64, s: &Ssn| {
                let k = if s.names.is_empty() { 0 } else { s.count };
                s.names.iter().all(|n| listed(v, n)) && q as usize + k >= v.len()
            };
            assert!(
                safe(&voters, q, &ssn),
                "unsafe state V={voters:?} q={q} S={ssn:?}"
            );
            match quorum_step(Some((&voters, q)), &ssn, active, wanted) {
                QuorumStep::Steady => return (voters, q, ssn),
                QuorumStep::WriteKey(v, nq) => {
                    voters = v;
                    q = nq;
                }
                QuorumStep::SetSsn(names, k) => {
                    ssn = Ssn {
                        any: true,
                        count: k,
                        names,
                    };
                }
            }
        }
        panic!("did not converge: V={voters:?} q={q} S={ssn:?}");
    }

    #[test]
    fn quorum_resolver_is_safe_at_every_step_and_converges() {
        let empty = Ssn::default();
        // From nothing to two standbys, one acknowledgement: ANY 1 (n2,n3), quorum 1.
        let (v1, q1, s1) = drive(vec![], 0, empty.clone(), &v(&["n2", "n3"]), 1);
        assert_eq!((v1.len(), q1, s1.count, s1.names.len()), (2, 1, 1, 2));
        // Ask for two acknowledgements: quorum 0.
        let (v2, q2, s2) = drive(v1.clone(), q1, s1.clone(), &v(&["n2", "n3"]), 2);
        assert_eq!((v2.len(), q2, s2.count), (2, 0, 2));
        // Lose n3.
        let (v3, q3, s3) = drive(v2, q2, s2, &v(&["n2"]), 2);
        assert_eq!((v3, q3, s3.names, s3.count), (v(&["n2"]), 0, v(&["n2"]), 1));
        // Lose everyone.
        let (v4, q4, s4) = drive(
            v(&["n2"]),
            0,
            Ssn {
                any: true,
                count: 1,
                names: v(&["n2"]),
            },
            &[],
            1,
        );
        assert!(v4.is_empty() && q4 == 0 && s4.names.is_empty());
        // Replace n2 by n4 at three voters.
        drive(
            v(&["n2", "n3", "n5"]),
            2,
            Ssn {
                any: true,
                count: 1,
                names: v(&["n2", "n3", "n5"]),
            },
            &v(&["n3", "n4", "n5"]),
            1,
        );
    }

    #[test]
    fn quorum_resolver_random_transitions_stay_safe() {
        let all = v(&["a", "b", "c", "d", "e"]);
        let mut seed: u64 = 0x5eed;
        let mut rnd = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..2000 {
            let pick = |mask: u64| -> Vec<String> {
                all.iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, n)| n.clone())
                    .collect()
            };
            // A safe start: S ⊆ V, q + k ≥ |V|.
            let voters = pick(rnd(32));
            let s_mask: Vec<String> = voters.iter().filter(|_| rnd(2) == 0).cloned().collect();
            let k = if s_mask.is_empty() {
                0
            } else {
                1 + rnd(s_mask.len() as u64) as usize
            };
            let q = (voters.len() - k.min(voters.len())) as u64 + rnd(2);
            let ssn = Ssn {
                any: true,
                count: k.max(1),
                names: s_mask,
            };
            let target = pick(rnd(32));
            let wanted = 1 + rnd(3) as usize;
            let (v2, q2, s2) = drive(voters, q, ssn, &target, wanted);
            let mut t = target.clone();
            t.sort();
            let mut got = v2.clone();
            got.sort();
            assert_eq!(got, t);
            assert_eq!(q2 as usize, target.len() - wanted.min(target.len()));
            if !target.is_empty() {
                assert_eq!(s2.count, wanted.min(target.len()));
            }
        }
    }

    #[test]
    fn ssn_parses_every_form() {
        assert_eq!(parse_ssn(""), Ssn::default());
        assert_eq!(parse_ssn("n2").names, v(&["n2"]));
        assert_eq!(parse_ssn("\"postgres-1\"").names, v(&["postgres-1"]));
        let p = parse_ssn("ANY 2 (n2,\"n-3\")");
        assert!(p.any && p.count == 2 && p.names == v(&["n2", "n-3"]));
        let f = parse_ssn("2 (a, b)");
        assert!(!f.any && f.count == 2 && f.names == v(&["a", "b"]));
        assert_eq!(quorum_ssn(&v(&["b", "a"]), 1, false), "ANY 1 (a,b)");
        assert_eq!(
            quorum_ssn(&[], 1, true),
            format!("ANY 1 ({STRICT_PLACEHOLDER})")
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
