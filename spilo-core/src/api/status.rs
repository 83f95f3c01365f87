//! The status body: what `GET /patroni` and every health check answer with.
//!
//! Peers parse this body during the leader race (`xlog`, `role`, `tags`, `timeline`), so the
//! shape of those fields follows Patroni exactly; spilo's own details live under `"spilo"`.

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::ha::state::NodeState;

/// The leader's WAL position as the health checks see it:
/// `max(status.optime, latest_end_lsn of the WAL receiver)`, `None` when neither is known.
pub fn leader_optime(s: &NodeState) -> Option<u64> {
    let optime = s.cluster.as_ref().and_then(|c| c.optime());
    match (optime, s.pg.latest_end_lsn) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// True when the last DCS view has no leader key, or when there is no view yet.
pub fn cluster_unlocked(s: &NodeState) -> bool {
    s.cluster.as_ref().is_none_or(|c| c.leader.is_none())
}

/// The leader term of the last DCS view: `None` with no leader, no view, or a backend that
/// cannot tell (a DCS plugin built for ABI 1.0).
pub fn leader_term(s: &NodeState) -> Option<spilo_sdk::Term> {
    s.cluster
        .as_ref()
        .and_then(|c| c.leader.as_ref())
        .and_then(|l| l.term)
}

/// The `xlog` object: `{location}` on a primary, the receive/replay positions on a replica.
fn xlog(s: &NodeState) -> Value {
    let pg = &s.pg;
    let mut x = Map::new();
    if pg.role.is_primary() {
        if let Some(l) = pg.wal_flush {
            x.insert("location".into(), l.into());
        }
    } else {
        if let Some(r) = pg.received {
            x.insert("received_location".into(), r.into());
        }
        if let Some(r) = pg.replayed {
            x.insert("replayed_location".into(), r.into());
        }
        x.insert(
            "replayed_timestamp".into(),
            pg.replayed_timestamp.clone().into(),
        );
        x.insert("paused".into(), pg.replay_paused.into());
    }
    Value::Object(x)
}

/// The status body for `s` (Patroni's `GET /patroni` body plus a `"spilo"` object).
///
/// While PostgreSQL is not running the body holds only `state` and `role`, plus `pause`,
/// `cluster_unlocked`, `dcs_last_seen`, `term` and `spilo`.
pub fn patroni_status(s: &NodeState, now: Instant) -> Value {
    let pg = &s.pg;
    let mut m = Map::new();
    m.insert("state".into(), pg.state.as_str().into());
    m.insert("role".into(), pg.role.as_str().into());
    if pg.running {
        if let Some(t) = &pg.postmaster_start_time {
            m.insert("postmaster_start_time".into(), t.clone().into());
        }
        if let Some(v) = pg.server_version {
            m.insert("server_version".into(), v.into());
        }
        m.insert("xlog".into(), xlog(s));
        if let Some(t) = pg.timeline {
            m.insert("timeline".into(), t.into());
        }
        if let Some(r) = &pg.replication_state {
            m.insert("replication_state".into(), r.clone().into());
        }
        if pg.role.is_primary() && !pg.replication.is_empty() {
            m.insert("replication".into(), json!(pg.replication));
        }
    }
    if s.paused() {
        m.insert("pause".into(), true.into());
    }
    if cluster_unlocked(s) {
        m.insert("cluster_unlocked".into(), true.into());
    }
    m.insert("dcs_last_seen".into(), s.dcs_last_seen.unwrap_or(0).into());
    // spilo's own: the leader term (null when unknown); grows with every new leadership.
    m.insert("term".into(), leader_term(s).map(|t| t.0).into());
    // spilo's own: the WAL archive and the last base backup, on nodes with `storage:`.
    if let Some(a) = &s.archive {
        m.insert("archive".into(), a.status_json());
    }
    // spilo's own: the built-in proxies this daemon runs.
    if !s.proxies.is_empty() {
        m.insert(
            "proxies".into(),
            s.proxies.iter().map(|p| p.status_json()).collect(),
        );
    }
    // spilo's own: the load balancers this node drives (`load_balancers:`).
    if !s.load_balancers.is_empty() {
        m.insert(
            "load_balancers".into(),
            s.load_balancers.iter().map(|l| l.status_json()).collect(),
        );
    }
    if pg.running {
        let tags = crate::dcs::tags::published(&s.tags);
        if !tags.is_empty() {
            m.insert("tags".into(), json!(tags));
        }
        if let Some(id) = &pg.sysid {
            m.insert("database_system_identifier".into(), id.clone().into());
        }
        let (sync_standby, quorum_standby) = crate::ha::sync::standby_roles(s);
        if sync_standby {
            m.insert("sync_standby".into(), true.into());
        }
        if quorum_standby {
            m.insert("quorum_standby".into(), true.into());
        }
        if pg.pending_restart {
            m.insert("pending_restart".into(), true.into());
        }
        if let Some(r) = &s.scheduled_restart {
            m.insert("scheduled_restart".into(), r.clone());
        }
        if let Some(v) = &s.promotion_veto {
            m.insert("promotion_veto".into(), v.clone().into());
        }
        m.insert(
            "patroni".into(),
            json!({
                "version": crate::PATRONI_COMPAT_VERSION,
                "scope": s.scope,
                "name": s.name,
            }),
        );
    }
    m.insert(
        "spilo".into(),
        json!({
            "version": crate::VERSION,
            "last_decision": s.decision,
            "holds_lock": s.holds_lock(now),
            "fence_armed": s.pg.fence_armed,
            "loop_phase": {
                "name": s.phase.get(now).0.name(),
                "seconds": s.phase.get(now).1.as_secs_f64(),
            },
        }),
    );
    Value::Object(m)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::dcs::{Cluster, Leader, Status};
    use crate::ha::state::{PgState, PgStatus, ReplicationRow, Role};

    /// A cluster view with `leader` holding the lock (if any) and `status.optime`.
    pub(crate) fn cluster(leader: Option<&str>, optime: Option<u64>) -> Arc<Cluster> {
        Arc::new(Cluster {
            leader: leader.map(|n| Leader {
                name: n.into(),
                version: 1,
                owned_by_us: false,
                term: None,
            }),
            status: Some(Status {
                optime,
                ..Status::default()
            }),
            ..Cluster::default()
        })
    }

    /// A running primary `pg0` holding the lock at `now`.
    pub(crate) fn primary(now: Instant) -> NodeState {
        let mut s = NodeState::new("pg0", "demo", "http://10.0.0.1:8008/patroni");
        s.pg = PgStatus {
            state: PgState::Running,
            role: Role::Primary,
            running: true,
            server_version: Some(160004),
            postmaster_start_time: Some("2024-08-28 19:39:26.352526+00:00".into()),
            timeline: Some(3),
            wal_flush: Some(0x0500_0000),
            replication: vec![ReplicationRow {
                usename: "replicator".into(),
                application_name: "pg1".into(),
                client_addr: Some("10.0.0.2".into()),
                state: "streaming".into(),
                sync_state: "async".into(),
                sync_priority: 0,
                flush_lsn: Some(0x0500_0000),
            }],
            sysid: Some("7300000000000000001".into()),
            ..PgStatus::default()
        };
        s.leader_renewed_at = Some(now);
        s.cluster = Some(cluster(Some("pg0"), Some(0x0500_0000)));
        s.dcs_last_seen = Some(1_700_000_000);
        s.last_cycle = now;
        s
    }

    /// A running streaming replica `pg1`, replayed up to `replayed`, leader optime 0x0500_0000.
    pub(crate) fn replica(now: Instant, replayed: u64) -> NodeState {
        let mut s = NodeState::new("pg1", "demo", "http://10.0.0.2:8008/patroni");
        s.pg = PgStatus {
            state: PgState::Running,
            role: Role::Replica,
            running: true,
            server_version: Some(160004),
            timeline: Some(3),
            received: Some(replayed),
            replayed: Some(replayed),
            replication_state: Some("streaming".into()),
            sysid: Some("7300000000000000001".into()),
            ..PgStatus::default()
        };
        s.cluster = Some(cluster(Some("pg0"), Some(0x0500_0000)));
        s.dcs_last_seen = Some(1_700_000_000);
        s.last_cycle = now;
        s
    }

    #[test]
    fn the_body_carries_the_leader_term_or_null() {
        let now = crate::clock::now();
        let mut s = primary(now);
        assert_eq!(patroni_status(&s, now)["term"], Value::Null);
        let mut c = (**s.cluster.as_ref().expect("a view")).clone();
        if let Some(l) = c.leader.as_mut() {
            l.term = Some(spilo_sdk::Term(1234));
        }
        s.cluster = Some(Arc::new(c));
        assert_eq!(patroni_status(&s, now)["term"], 1234);
    }

    #[test]
    fn primary_body() {
        let now = crate::clock::now();
        let mut s = primary(now);
        s.tags = BTreeMap::from([
            ("nofailover".to_string(), Value::Bool(false)),
            ("zone".to_string(), Value::from("a")),
        ]);
        let v = patroni_status(&s, now);
        assert_eq!(v["state"], "running");
        assert_eq!(v["role"], "primary");
        assert_eq!(v["server_version"], 160004);
        assert_eq!(v["xlog"], json!({"location": 0x0500_0000u64}));
        assert_eq!(v["timeline"], 3);
        assert_eq!(v["replication"][0]["application_name"], "pg1");
        assert!(v["replication"][0].get("flush_lsn").is_none());
        assert!(v.get("cluster_unlocked").is_none());
        assert!(v.get("pause").is_none());
        assert_eq!(v["dcs_last_seen"], 1_700_000_000);
        assert_eq!(v["tags"], json!({"zone": "a"}));
        assert_eq!(v["database_system_identifier"], "7300000000000000001");
        assert_eq!(v["patroni"]["version"], crate::PATRONI_COMPAT_VERSION);
        assert_eq!(v["patroni"]["scope"], "demo");
        assert_eq!(v["patroni"]["name"], "pg0");
        assert_eq!(v["spilo"]["version"], crate::VERSION);
        assert_eq!(v["spilo"]["holds_lock"], true);
        assert!(v["spilo"].get("last_decision").is_some());
    }

    #[test]
    fn replica_body() {
        let now = crate::clock::now();
        let mut s = replica(now, 0x0400_0000);
        s.pg.received = Some(0x0480_0000);
        s.pg.replayed_timestamp = Some("2024-08-28 19:40:00+00:00".into());
        let v = patroni_status(&s, now);
        assert_eq!(v["role"], "replica");
        assert_eq!(
            v["xlog"],
            json!({
                "received_location": 0x0480_0000u64,
                "replayed_location": 0x0400_0000u64,
                "replayed_timestamp": "2024-08-28 19:40:00+00:00",
                "paused": false,
            })
        );
        assert_eq!(v["replication_state"], "streaming");
        assert!(v.get("replication").is_none());
        assert_eq!(v["spilo"]["holds_lock"], false);
    }

    #[test]
    fn stopped_body_is_minimal() {
        let now = crate::clock::now();
        let mut s = NodeState::new("pg2", "demo", "http://10.0.0.3:8008/patroni");
        s.dynamic.pause = true;
        let v = patroni_status(&s, now);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "cluster_unlocked",
                "dcs_last_seen",
                "pause",
                "role",
                "spilo",
                "state",
                "term"
            ]
        );
        assert_eq!(v["term"], Value::Null, "no DCS view, no term");
        assert_eq!(v["state"], "stopped");
        assert_eq!(v["role"], "uninitialized");
        assert_eq!(v["cluster_unlocked"], true);
    }

    #[test]
    fn leader_optime_takes_the_max() {
        let now = crate::clock::now();
        let mut s = replica(now, 0);
        assert_eq!(leader_optime(&s), Some(0x0500_0000));
        s.pg.latest_end_lsn = Some(0x0600_0000);
        assert_eq!(leader_optime(&s), Some(0x0600_0000));
        s.cluster = None;
        assert_eq!(leader_optime(&s), Some(0x0600_0000));
        s.pg.latest_end_lsn = None;
        assert_eq!(leader_optime(&s), None);
    }
}
