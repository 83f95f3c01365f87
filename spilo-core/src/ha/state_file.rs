//! The state file the daemon publishes in the data directory every cycle, for the `spilo`
//! extension (`SELECT spilo.role()`) and its fence.
//!
//! `<data_dir>/spilo.state`, JSON, written atomically (temporary file, fsync, rename, fsync of
//! the directory) so a reader sees either the old or the new state, never a torn one. Format
//! version 1:
//!
//! ```json
//! {"format": 1, "scope": "demo", "member": "n1",
//!  "role": "primary", "is_leader": true, "leader": "n1", "term": 42, "timeline": 3,
//!  "leader_wal_position": 83886080, "leader_wal_position_unix_ms": 1795000000000,
//!  "written_unix_ms": 1795000000123, "written_monotonic_ns": 123456789,
//!  "valid_until_monotonic_ns": 10123456789,
//!  "lease_deadline_monotonic_ns": 9123456789,
//!  "fence": true,
//!  "members": [{"name": "n1", "role": "primary", "state": "running", "host": "10.0.0.1",
//!               "port": 5432, "timeline": 3, "lag": 0, "tags": {}}],
//!  "last_decision": {"actions": [...], "reasons": [...], "at": "…"}}
//! ```
//!
//! `*_monotonic_ns` are on `CLOCK_MONOTONIC`, which every process on the host shares, so
//! PostgreSQL's backends can compare them with their own clock without trusting wall time. A
//! reader treats the state as unknown once `valid_until_monotonic_ns` has passed (the daemon
//! stopped writing), and a primary's fence engages at `lease_deadline_monotonic_ns` (see
//! [`lease_deadline`] for why that is before any other node can be promoted).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::dcs::Cluster;
use crate::ha::state::{DecisionReport, PgState, PgStatus, Role};

/// The format number, the file name and the clock, shared with the extension's reader.
pub use spilo_sdk::state_file::{monotonic_ns, FILE_NAME, FORMAT};
/// How long before the leader key can expire anywhere the fence engages.
pub const FENCE_MARGIN: Duration = Duration::from_secs(1);

/// `at` on `CLOCK_MONOTONIC` (Rust's `Instant` is that clock on Linux, but opaque).
pub fn instant_ns(at: Instant) -> u64 {
    // The clock first, then `now`: if the thread is preempted in between, the result comes out
    // early by that much, never late, so a deadline made from it errs on the safe side.
    let now_ns = monotonic_ns();
    let now = crate::clock::now();
    if at <= now {
        now_ns.saturating_sub(now.duration_since(at).as_nanos() as u64)
    } else {
        now_ns.saturating_add(at.duration_since(now).as_nanos() as u64)
    }
}

/// The instant a primary must stop acknowledging writes: `renewed + ttl - FENCE_MARGIN`.
///
/// Why this is early enough: the daemon measures `renewed` *before* it sends the keep-alive
/// that renews the lease, and the DCS starts the lease's `ttl` only when that keep-alive
/// arrives, so the leader key cannot expire before `renewed + ttl` on the DCS. Another node
/// can only promote after it has seen the key gone and then won the create-if-absent race, so
/// no other node acknowledges writes before `renewed + ttl`. The fence engages `FENCE_MARGIN`
/// (1 s) earlier, which covers the background worker's polling interval (100 ms) and the time a
/// commit already past its check takes to finish.
pub fn lease_deadline(renewed: Instant, ttl: Duration) -> u64 {
    instant_ns(renewed) + ttl.saturating_sub(FENCE_MARGIN).as_nanos() as u64
}

/// What goes into one state file.
pub struct StateInputs<'a> {
    /// Cluster name.
    pub scope: &'a str,
    /// Member name.
    pub member: &'a str,
    /// The cluster as last read.
    pub cluster: Option<&'a Cluster>,
    /// The local PostgreSQL.
    pub pg: &'a PgStatus,
    /// When this node last renewed the leader lease, if it holds it.
    pub lease_renewed_at: Option<Instant>,
    /// `ttl`.
    pub ttl: Duration,
    /// The last decision.
    pub decision: &'a DecisionReport,
    /// `spilo.fence` is requested in the configuration.
    pub fence: bool,
}

/// The file's JSON.
pub fn render(i: &StateInputs<'_>) -> Value {
    let now_ns = monotonic_ns();
    let leader = i.cluster.and_then(|c| c.leader.as_ref());
    let is_leader =
        i.lease_renewed_at.is_some() && leader.map(|l| l.name == i.member).unwrap_or(false);
    let standby_cluster = i
        .cluster
        .and_then(|c| c.config.as_ref())
        .map(|c| c.value.extra.contains_key("standby_cluster"))
        .unwrap_or(false);
    let role = match (is_leader, i.pg.role, i.pg.state) {
        (true, Role::Primary, PgState::Running) => "primary",
        (true, _, PgState::Running) if standby_cluster => "standby_leader",
        (false, Role::Replica, PgState::Running) => "replica",
        _ => "unknown",
    };
    let optime = i.cluster.and_then(Cluster::optime);
    let leader_member = leader.and_then(|l| i.cluster.and_then(|c| c.member(&l.name)));
    let leader_pos = leader_member.and_then(|m| m.data.xlog_location).or(optime);
    let members: Vec<Value> =
        i.cluster
            .map(|c| {
                c.members
                    .iter()
                    .map(|m| {
                        let is_l = leader.map(|l| l.name == m.name).unwrap_or(false);
                        let pos = m.data.xlog_location.or(
                            match (m.data.receive_lsn, m.data.replay_lsn) {
                                (Some(a), Some(b)) => Some(a.max(b)),
                                (a, b) => a.or(b),
                            },
                        );
                        let lag = if is_l {
                            Some(0)
                        } else {
                            match (leader_pos, pos) {
                                (Some(l), Some(p)) => Some(l.saturating_sub(p)),
                                _ => None,
                            }
                        };
                        let (host, port) = m
                            .host_port()
                            .map(|(h, p)| (Some(h), Some(p)))
                            .unwrap_or((None, None));
                        json!({
                            "name": m.name,
                            "role": if is_l { "leader" } else { m.data.normalized_role() },
                            "state": m.data.state,
                            "host": host,
                            "port": port,
                            "timeline": m.data.timeline,
                            "lag": lag,
                            "tags": m.data.tags,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
    json!({
        "format": FORMAT,
        "scope": i.scope,
        "member": i.member,
        "role": role,
        "is_leader": is_leader,
        "leader": leader.map(|l| l.name.clone()),
        "term": leader.and_then(|l| l.term).map(|t| t.0),
        "timeline": i.pg.timeline,
        "leader_wal_position": leader_pos,
        "written_unix_ms": chrono::Utc::now().timestamp_millis(),
        "written_monotonic_ns": now_ns,
        "valid_until_monotonic_ns": now_ns + i.ttl.as_nanos() as u64,
        "lease_deadline_monotonic_ns": i.lease_renewed_at.filter(|_| is_leader).map(|t| lease_deadline(t, i.ttl)),
        "fence": i.fence,
        "members": members,
        "last_decision": i.decision,
    })
}

/// Writes `state` to `<data_dir>/spilo.state` atomically, through `pg`.
pub fn write(pg: &dyn crate::postgres::LocalPostgres, state: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    pg.write_state_file(FILE_NAME, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{Leader, Member, MemberData};

    fn cluster() -> Cluster {
        let member = |name: &str, role: &str, pos: u64| Member {
            name: name.into(),
            data: MemberData {
                conn_url: format!("postgres://10.0.0.{}:5432/postgres", &name[1..]),
                state: "running".into(),
                role: role.into(),
                xlog_location: Some(pos),
                timeline: Some(3),
                ..MemberData::default()
            },
            version: 1,
            owned_by_us: false,
        };
        Cluster {
            leader: Some(Leader {
                name: "n1".into(),
                version: 42,
                owned_by_us: true,
                term: Some(spilo_sdk::Term(40)),
            }),
            members: vec![member("n1", "primary", 5000), member("n2", "replica", 4000)],
            ..Cluster::default()
        }
    }

    fn pg(role: Role) -> PgStatus {
        PgStatus {
            role,
            state: PgState::Running,
            timeline: Some(3),
            ..PgStatus::default()
        }
    }

    #[test]
    fn a_leader_publishes_primary_with_a_lease_deadline_before_expiry() {
        let c = cluster();
        let p = pg(Role::Primary);
        let d = DecisionReport::default();
        let renewed = crate::clock::now();
        let v = render(&StateInputs {
            scope: "demo",
            member: "n1",
            cluster: Some(&c),
            pg: &p,
            lease_renewed_at: Some(renewed),
            ttl: Duration::from_secs(10),
            decision: &d,
            fence: true,
        });
        assert_eq!(v["format"], 1);
        assert_eq!(v["role"], "primary");
        assert_eq!(
            v["term"], 40,
            "the term is the leader key's creation counter, not its version"
        );
        assert_eq!(v["members"][1]["lag"], 1000);
        assert_eq!(v["members"][0]["host"], "10.0.0.1");
        let deadline = v["lease_deadline_monotonic_ns"].as_u64().expect("deadline");
        let expiry = instant_ns(renewed) + 10_000_000_000;
        // Each conversion may come out early by however long the thread was preempted between
        // its two clock reads (a run on a loaded machine saw the margin short by microseconds).
        let slack = 100_000_000;
        assert!(
            deadline < expiry && expiry - deadline + slack >= FENCE_MARGIN.as_nanos() as u64,
            "deadline {deadline}, expiry {expiry}"
        );
    }

    #[test]
    fn without_the_lease_the_role_is_never_primary() {
        let c = cluster();
        let p = pg(Role::Primary);
        let d = DecisionReport::default();
        let v = render(&StateInputs {
            scope: "demo",
            member: "n1",
            cluster: Some(&c),
            pg: &p,
            lease_renewed_at: None,
            ttl: Duration::from_secs(10),
            decision: &d,
            fence: false,
        });
        assert_eq!(v["role"], "unknown");
        assert!(v["lease_deadline_monotonic_ns"].is_null());
        let r = render(&StateInputs {
            member: "n2",
            pg: &pg(Role::Replica),
            ..StateInputs {
                scope: "demo",
                member: "n1",
                cluster: Some(&c),
                pg: &p,
                lease_renewed_at: None,
                ttl: Duration::from_secs(10),
                decision: &d,
                fence: false,
            }
        });
        assert_eq!(r["role"], "replica");
    }
}
