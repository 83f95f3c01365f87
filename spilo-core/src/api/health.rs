//! Health checks: the status code of `GET /primary`, `/replica`, `/read-only`, …,
//! `/liveness` and `/readiness`, decided from the last published [`NodeState`] only.

use std::time::Instant;

use serde_json::Value;

use super::status::leader_optime;
use crate::ha::state::{NodeState, PgState, Role};

/// Query parameters, in request order; the first occurrence of a key wins.
pub type Params = [(String, String)];

/// The first value of `key` in `q`.
pub fn param<'a>(q: &'a Params, key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Parse a lag bound: plain bytes (`1048576`) or a number with a unit (`B`, `kB`, `MB`, `GB`,
/// `TB`, powers of 1024; units are case-insensitive). `None` when it does not parse, in which
/// case the caller ignores the parameter.
pub fn parse_lag(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1024.0,
        "mb" => 1024.0 * 1024.0,
        "gb" => 1024.0 * 1024.0 * 1024.0,
        "tb" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult as u64);
    }
    let n: f64 = num.parse().ok()?;
    let bytes = (n * mult).round();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The `?lag=` bound, if given and parseable.
fn lag_param(q: &Params) -> Option<u64> {
    param(q, "lag").and_then(parse_lag)
}

/// True when this node counts as the leader for the health checks: it holds the lock, or —
/// with no DCS view while paused — its PostgreSQL is a primary.
pub fn is_leader(s: &NodeState, now: Instant) -> bool {
    s.holds_lock(now) || (s.cluster.is_none() && s.paused() && s.pg.role.is_primary())
}

/// True when the replica is behind the leader by more than `?lag=` (never without it).
fn is_lagging(s: &NodeState, q: &Params) -> bool {
    match (lag_param(q), leader_optime(s)) {
        (Some(lag), Some(optime)) => optime > s.pg.replayed.unwrap_or(0).saturating_add(lag),
        _ => false,
    }
}

/// Patroni's `replica_ok`: no `noloadbalance` tag, a running replica, not lagging beyond
/// `?lag=`, and matching `?replication_state=` when given.
pub fn replica_ok(s: &NodeState, q: &Params) -> bool {
    if crate::dcs::tags::tag_bool(&s.tags, "noloadbalance") {
        return false;
    }
    if s.pg.role != Role::Replica || s.pg.state != PgState::Running || is_lagging(s, q) {
        return false;
    }
    match param(q, "replication_state") {
        Some(want) => s.pg.replication_state.as_deref() == Some(want),
        None => true,
    }
}

/// A tag value as Patroni compares it: strings as they are, anything else lower-cased text.
fn tag_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// True when every `?tag_<key>=<value>` filter matches this node's published tags.
pub fn tags_match(s: &NodeState, q: &Params) -> bool {
    let tags = crate::dcs::tags::published(&s.tags);
    q.iter()
        .filter_map(|(k, v)| k.strip_prefix("tag_").map(|t| (t, v)))
        .all(|(tag, want)| tags.get(tag).is_some_and(|have| tag_text(have) == *want))
}

/// The status code of a health-check GET on `path` (query string excluded), in Patroni's
/// substring-matching order. Unknown paths answer 503.
pub fn health_check(path: &str, q: &Params, s: &NodeState, now: Instant) -> u16 {
    let leader = is_leader(s, now);
    // A standby cluster's leader holds the lock and runs in recovery: it answers the
    // standby-leader checks, never the primary's.
    let standby_leader = s.pg.role == crate::ha::state::Role::StandbyLeader;
    let primary_ok = leader && !standby_leader;
    let standby_leader_ok = leader && standby_leader && s.pg.state == PgState::Running;
    let code = |ok: bool| if ok { 200 } else { 503 };

    if path.contains("standby_leader") || path.contains("standby-leader") {
        return code(standby_leader_ok);
    }
    if path.contains("leader") {
        return code(leader);
    }
    if path == "/"
        || path.is_empty()
        || path.contains("master")
        || path.contains("primary")
        || path.contains("read-write")
    {
        return code(primary_ok);
    }
    let (sync_standby, quorum_standby) = crate::ha::sync::standby_roles(s);
    let ok = if path.contains("replica") {
        replica_ok(s, q)
    } else if path.contains("read-only") && !path.contains("sync") && !path.contains("quorum") {
        primary_ok || standby_leader_ok || replica_ok(s, q)
    } else if path.contains("health") {
        s.pg.state == PgState::Running
    } else {
        match path {
            "/sync" | "/synchronous" => s.cluster.is_some() && sync_standby && replica_ok(s, q),
            "/quorum" => s.cluster.is_some() && quorum_standby && replica_ok(s, q),
            "/async" | "/asynchronous" => {
                s.cluster.is_some() && !sync_standby && !quorum_standby && replica_ok(s, q)
            }
            "/read-only-sync" | "/read-only-synchronous" => {
                primary_ok || standby_leader_ok || (sync_standby && replica_ok(s, q))
            }
            "/read-only-quorum" => {
                primary_ok || standby_leader_ok || (quorum_standby && replica_ok(s, q))
            }
            _ => false,
        }
    };
    code(ok && tags_match(s, q))
}

/// `GET /liveness`: 200 when paused, or when the last HA cycle finished within `ttl` (lock
/// holder) or `2 * ttl` (everyone else).
///
/// "Lock holder" is judged as of the last cycle: a primary whose loop hangs must fail after
/// `ttl`, even though its lock has expired by the time of the request.
pub fn liveness(s: &NodeState, now: Instant) -> u16 {
    let ttl = s.dynamic.ttl as f64;
    let limit = if s.holds_lock(s.last_cycle) {
        ttl
    } else {
        2.0 * ttl
    };
    let age = now.saturating_duration_since(s.last_cycle).as_secs_f64();
    if s.paused() || age < limit {
        200
    } else {
        503
    }
}

/// `GET /readiness[?lag=&mode=apply|write]`: 200 for the lock holder; otherwise PostgreSQL must
/// be running and streaming with its replay (`mode=write`: receive) position within `?lag=`
/// (default `maximum_lag_on_failover`) of the leader.
pub fn readiness(s: &NodeState, q: &Params, now: Instant) -> u16 {
    if s.holds_lock(now) {
        return 200;
    }
    if s.pg.state != PgState::Running || s.pg.replication_state.as_deref() != Some("streaming") {
        return 503;
    }
    // Without a leader position (no DCS view, no WAL receiver) only failsafe mode would
    // allow a 200, and failsafe mode does not exist yet.
    let Some(optime) = leader_optime(s) else {
        return 503;
    };
    let position = if param(q, "mode") == Some("write") {
        s.pg.received
    } else {
        s.pg.replayed
    };
    let Some(position) = position else {
        return 503;
    };
    let bound = lag_param(q).unwrap_or(s.dynamic.maximum_lag_on_failover);
    if optime.saturating_sub(position) <= bound {
        200
    } else {
        503
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::status::tests::{primary, replica};
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const PATHS: [&str; 20] = [
        "/",
        "/primary",
        "/master",
        "/leader",
        "/read-write",
        "/standby-leader",
        "/standby_leader",
        "/replica",
        "/read-only",
        "/health",
        "/sync",
        "/synchronous",
        "/async",
        "/asynchronous",
        "/quorum",
        "/read-only-sync",
        "/read-only-synchronous",
        "/read-only-quorum",
        "/metrics",
        "/nonsense",
    ];

    fn codes(s: &NodeState, now: Instant) -> Vec<(&'static str, u16)> {
        PATHS
            .iter()
            .map(|p| (*p, health_check(p, &[], s, now)))
            .collect()
    }

    #[test]
    fn primary_paths() {
        let now = crate::clock::now();
        let s = primary(now);
        let ok = [
            "/",
            "/primary",
            "/master",
            "/leader",
            "/read-write",
            "/read-only",
            "/health",
            "/read-only-sync",
            "/read-only-synchronous",
            "/read-only-quorum",
        ];
        for (p, c) in codes(&s, now) {
            assert_eq!(c, if ok.contains(&p) { 200 } else { 503 }, "{p}");
        }
    }

    #[test]
    fn replica_paths() {
        let now = crate::clock::now();
        let s = replica(now, 0x0400_0000);
        let ok = [
            "/replica",
            "/read-only",
            "/health",
            "/async",
            "/asynchronous",
        ];
        for (p, c) in codes(&s, now) {
            assert_eq!(c, if ok.contains(&p) { 200 } else { 503 }, "{p}");
        }
    }

    #[test]
    fn standby_leader_paths() {
        let now = crate::clock::now();
        let mut s = primary(now);
        s.pg.role = crate::ha::state::Role::StandbyLeader;
        let ok = [
            "/standby-leader",
            "/standby_leader",
            "/leader",
            "/read-only",
            "/health",
            "/read-only-sync",
            "/read-only-synchronous",
            "/read-only-quorum",
        ];
        for (p, c) in codes(&s, now) {
            assert_eq!(c, if ok.contains(&p) { 200 } else { 503 }, "{p}");
        }
        // Without the lock it is no standby leader.
        let later = now + Duration::from_secs(s.dynamic.ttl + 1);
        assert_eq!(health_check("/standby-leader", &[], &s, later), 503);
    }

    #[test]
    fn primary_loses_lock_after_ttl() {
        let now = crate::clock::now();
        let s = primary(now);
        let later = now + Duration::from_secs(s.dynamic.ttl + 1);
        assert_eq!(health_check("/primary", &[], &s, later), 503);
        assert_eq!(health_check("/health", &[], &s, later), 200);
    }

    #[test]
    fn paused_without_dcs_view_uses_pg_role() {
        let now = crate::clock::now();
        let mut s = primary(now);
        s.leader_renewed_at = None;
        s.cluster = None;
        assert_eq!(health_check("/primary", &[], &s, now), 503);
        s.dynamic.pause = true;
        assert_eq!(health_check("/primary", &[], &s, now), 200);
    }

    #[test]
    fn stopped_replica_is_not_ok() {
        let now = crate::clock::now();
        let mut s = replica(now, 0x0500_0000);
        s.pg.state = PgState::Stopped;
        s.pg.running = false;
        assert_eq!(health_check("/replica", &[], &s, now), 503);
        assert_eq!(health_check("/health", &[], &s, now), 503);
        assert_eq!(health_check("/read-only", &[], &s, now), 503);
    }

    #[test]
    fn lag_parsing() {
        assert_eq!(parse_lag("16kB"), Some(16 * 1024));
        assert_eq!(parse_lag("10MB"), Some(10 * 1024 * 1024));
        assert_eq!(parse_lag("1GB"), Some(1 << 30));
        assert_eq!(parse_lag("1TB"), Some(1 << 40));
        assert_eq!(parse_lag("123"), Some(123));
        assert_eq!(parse_lag("123B"), Some(123));
        assert_eq!(parse_lag(" 2 mb "), Some(2 << 20));
        assert_eq!(parse_lag("1.5kB"), Some(1536));
        assert_eq!(parse_lag("garbage"), None);
        assert_eq!(parse_lag("10XB"), None);
        assert_eq!(parse_lag(""), None);
        assert_eq!(parse_lag("-5"), None);
        assert_eq!(parse_lag("99999999999999999999GB"), None);
    }

    #[test]
    fn replica_lag_filter() {
        let now = crate::clock::now();
        // Leader at 0x0500_0000, replayed 1 MiB behind.
        let s = replica(now, 0x0500_0000 - (1 << 20));
        assert_eq!(
            health_check("/replica", &q(&[("lag", "10MB")]), &s, now),
            200
        );
        assert_eq!(
            health_check("/replica", &q(&[("lag", "16kB")]), &s, now),
            503
        );
        assert_eq!(
            health_check("/replica", &q(&[("lag", "1048576")]), &s, now),
            200
        );
        assert_eq!(
            health_check("/replica", &q(&[("lag", "1048575")]), &s, now),
            503
        );
        // Unparseable: ignored.
        assert_eq!(
            health_check("/replica", &q(&[("lag", "soon")]), &s, now),
            200
        );
        assert_eq!(health_check("/async", &q(&[("lag", "16kB")]), &s, now), 503);
        assert_eq!(
            health_check("/read-only", &q(&[("lag", "16kB")]), &s, now),
            503
        );
    }

    #[test]
    fn lag_uses_wal_receiver_position_too() {
        let now = crate::clock::now();
        let mut s = replica(now, 0x0500_0000);
        assert_eq!(
            health_check("/replica", &q(&[("lag", "1kB")]), &s, now),
            200
        );
        s.pg.latest_end_lsn = Some(0x0500_0000 + (1 << 20));
        assert_eq!(
            health_check("/replica", &q(&[("lag", "1kB")]), &s, now),
            503
        );
    }

    #[test]
    fn replication_state_filter() {
        let now = crate::clock::now();
        let mut s = replica(now, 0x0500_0000);
        let streaming = q(&[("replication_state", "streaming")]);
        assert_eq!(health_check("/replica", &streaming, &s, now), 200);
        s.pg.replication_state = Some("in archive recovery".into());
        assert_eq!(health_check("/replica", &streaming, &s, now), 503);
        let archive = q(&[("replication_state", "in archive recovery")]);
        assert_eq!(health_check("/replica", &archive, &s, now), 200);
    }

    #[test]
    fn noloadbalance_fails_replica_checks() {
        let now = crate::clock::now();
        let mut s = replica(now, 0x0500_0000);
        s.tags.insert("noloadbalance".into(), Value::Bool(true));
        assert_eq!(health_check("/replica", &[], &s, now), 503);
        assert_eq!(health_check("/read-only", &[], &s, now), 503);
        assert_eq!(health_check("/health", &[], &s, now), 200);
    }

    #[test]
    fn tag_filters() {
        let now = crate::clock::now();
        let mut s = replica(now, 0x0500_0000);
        s.tags.insert("zone".into(), Value::from("eu-1"));
        s.tags.insert("nofailover".into(), Value::Bool(true));
        s.tags.insert("weight".into(), Value::from(3));
        let check = |pairs: &[(&str, &str)]| health_check("/replica", &q(pairs), &s, now);
        assert_eq!(check(&[("tag_zone", "eu-1")]), 200);
        assert_eq!(check(&[("tag_zone", "eu-2")]), 503);
        assert_eq!(check(&[("tag_nofailover", "true")]), 200);
        assert_eq!(check(&[("tag_weight", "3")]), 200);
        assert_eq!(check(&[("tag_zone", "eu-1"), ("tag_weight", "4")]), 503);
        assert_eq!(check(&[("tag_missing", "x")]), 503);
        // Filters do not turn a 503 into a 200, and do not apply to leader paths.
        assert_eq!(
            health_check("/primary", &q(&[("tag_zone", "eu-1")]), &s, now),
            503
        );
        let p = primary(now);
        assert_eq!(
            health_check("/primary", &q(&[("tag_zone", "x")]), &p, now),
            200
        );
        assert_eq!(
            health_check("/leader", &q(&[("tag_zone", "x")]), &p, now),
            200
        );
        assert_eq!(
            health_check("/read-only", &q(&[("tag_zone", "x")]), &p, now),
            503
        );
        assert_eq!(
            health_check("/health", &q(&[("tag_zone", "x")]), &p, now),
            503
        );
    }

    #[test]
    fn liveness_rules() {
        let now = crate::clock::now();
        let p = primary(now);
        let ttl = p.dynamic.ttl;
        assert_eq!(liveness(&p, now), 200);
        assert_eq!(liveness(&p, now + Duration::from_secs(ttl + 1)), 503);
        let r = replica(now, 0);
        assert_eq!(liveness(&r, now + Duration::from_secs(ttl + 1)), 200);
        assert_eq!(liveness(&r, now + Duration::from_secs(2 * ttl + 1)), 503);
        let mut paused = r.clone();
        paused.dynamic.pause = true;
        assert_eq!(liveness(&paused, now + Duration::from_secs(10 * ttl)), 200);
    }

    #[test]
    fn readiness_rules() {
        let now = crate::clock::now();
        assert_eq!(readiness(&primary(now), &[], now), 200);
        // Default bound: maximum_lag_on_failover (1 MiB).
        let near = replica(now, 0x0500_0000 - 1000);
        assert_eq!(readiness(&near, &[], now), 200);
        let far = replica(now, 0x0400_0000);
        assert_eq!(readiness(&far, &[], now), 503);
        assert_eq!(readiness(&far, &q(&[("lag", "1GB")]), now), 200);
        let mut write = far.clone();
        write.pg.received = Some(0x0500_0000);
        assert_eq!(readiness(&write, &q(&[("mode", "write")]), now), 200);
        assert_eq!(readiness(&write, &q(&[("mode", "apply")]), now), 503);
        let mut archive = near.clone();
        archive.pg.replication_state = Some("in archive recovery".into());
        assert_eq!(readiness(&archive, &[], now), 503);
        let mut blind = near.clone();
        blind.cluster = None;
        assert_eq!(readiness(&blind, &[], now), 503);
    }
}
