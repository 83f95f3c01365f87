//! Bodies of `GET /cluster`, `GET /history` and `GET /config`, built from the last DCS view.

use serde_json::{json, Map, Value};

use crate::dcs::codec::format_lsn;
use crate::dcs::{Cluster, Member};
use crate::ha::state::NodeState;

/// `optime - lsn` (0 when ahead), or `"unknown"` when either is missing.
fn lag(optime: Option<u64>, lsn: Option<u64>) -> Value {
    match (optime, lsn) {
        (Some(o), Some(l)) => o.saturating_sub(l).into(),
        _ => "unknown".into(),
    }
}

/// One entry of the `members` list.
fn member_json(c: &Cluster, m: &Member) -> Value {
    let d = &m.data;
    let is_leader = c.leader.as_ref().is_some_and(|l| l.name == m.name);
    let mut o = Map::new();
    o.insert("name".into(), m.name.clone().into());
    o.insert(
        "role".into(),
        if is_leader { "leader" } else { "replica" }.into(),
    );
    let state = if is_leader {
        d.state.clone()
    } else {
        d.replication_state
            .clone()
            .unwrap_or_else(|| d.state.clone())
    };
    o.insert("state".into(), state.into());
    o.insert("api_url".into(), d.api_url.clone().into());
    if let Some((host, port)) = m.host_port() {
        o.insert("host".into(), host.into());
        o.insert("port".into(), port.into());
    }
    if let Some(t) = d.timeline {
        o.insert("timeline".into(), t.into());
    }
    if d.pending_restart == Some(true) {
        o.insert("pending_restart".into(), true.into());
    }
    for key in ["pending_restart_reason", "scheduled_restart"] {
        if let Some(v) = d.extra.get(key) {
            o.insert(key.into(), v.clone());
        }
    }
    if !d.tags.is_empty() {
        o.insert("tags".into(), json!(d.tags));
    }
    if !is_leader {
        let optime = c.optime();
        for (name, lsn) in [
            ("", d.xlog_location),
            ("receive_", d.receive_lsn),
            ("replay_", d.replay_lsn),
        ] {
            if let Some(l) = lsn {
                o.insert(format!("{name}lsn"), format_lsn(l).into());
            }
            o.insert(format!("{name}lag"), lag(optime, lsn));
        }
    }
    Value::Object(o)
}

/// The `GET /cluster` body, or `None` before the first successful DCS read.
pub fn cluster_json(s: &NodeState) -> Option<Value> {
    let c = s.cluster.as_deref()?;
    let mut members: Vec<&Member> = c.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let mut o = Map::new();
    o.insert(
        "members".into(),
        Value::Array(members.into_iter().map(|m| member_json(c, m)).collect()),
    );
    o.insert("scope".into(), s.scope.clone().into());
    if c.paused() || s.paused() {
        o.insert("pause".into(), true.into());
    }
    if let Some(f) = &c.failover {
        if let Some(at) = &f.value.scheduled_at {
            let mut sw = Map::new();
            sw.insert("at".into(), at.clone().into());
            if let Some(l) = &f.value.leader {
                sw.insert("from".into(), l.clone().into());
            }
            if let Some(m) = &f.value.member {
                sw.insert("to".into(), m.clone().into());
            }
            o.insert("scheduled_switchover".into(), Value::Object(sw));
        }
    }
    Some(Value::Object(o))
}

/// The `GET /history` body: the history lines as JSON arrays, `[]` when there are none.
pub fn history_json(s: &NodeState) -> Value {
    let lines = s.cluster.as_ref().and_then(|c| c.history.as_ref());
    Value::Array(lines.map_or_else(Vec::new, |h| h.iter().map(|l| l.to_json()).collect()))
}

/// The `GET /config` body: the `config` key as stored, `None` when absent or invalid.
pub fn config_json(s: &NodeState) -> Option<Value> {
    s.cluster
        .as_ref()
        .and_then(|c| c.config_raw.as_ref())
        .map(|v| v.value.clone())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::dcs::{Failover, HistoryLine, Leader, MemberData, Status, Versioned};

    fn member(name: &str, port: u16, lsn: Option<u64>) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                conn_url: format!("postgres://10.0.0.9:{port}/postgres"),
                api_url: format!("http://10.0.0.9:{}/patroni", port + 1000),
                state: "running".into(),
                role: "replica".into(),
                xlog_location: lsn,
                replay_lsn: lsn,
                replication_state: Some("streaming".into()),
                timeline: Some(2),
                ..MemberData::default()
            },
            version: 1,
            owned_by_us: false,
        }
    }

    fn state() -> NodeState {
        let mut leader = member("b", 5433, Some(0x1_0000_0100));
        leader.data.role = "primary".into();
        leader.data.replication_state = None;
        leader.data.tags = BTreeMap::from([("zone".to_string(), Value::from("x"))]);
        let cluster = Cluster {
            leader: Some(Leader {
                name: "b".into(),
                version: 7,
                owned_by_us: false,
                term: None,
            }),
            members: vec![
                member("c", 5434, None),
                leader,
                member("a", 5432, Some(0x1_0000_0000)),
            ],
            status: Some(Status {
                optime: Some(0x1_0000_0100),
                ..Status::default()
            }),
            history: Some(vec![HistoryLine {
                timeline: 1,
                lsn: 100,
                reason: "no recovery target specified".into(),
                timestamp: Some("2024-01-01T00:00:00+00:00".into()),
                new_leader: Some("b".into()),
            }]),
            failover: Some(Versioned {
                value: Failover {
                    leader: Some("b".into()),
                    member: Some("a".into()),
                    scheduled_at: Some("2030-01-01T00:00:00+00:00".into()),
                },
                version: 3,
            }),
            config_raw: Some(Versioned {
                value: json!({"ttl": 30, "loop_wait": 10}),
                version: 2,
            }),
            ..Cluster::default()
        };
        let mut s = NodeState::new("a", "demo", "http://10.0.0.9:6432/patroni");
        s.cluster = Some(Arc::new(cluster));
        s.last_cycle = crate::clock::now();
        s
    }

    #[test]
    fn cluster_body() {
        let v = cluster_json(&state()).unwrap();
        assert_eq!(v["scope"], "demo");
        assert!(v.get("pause").is_none());
        let names: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let a = &v["members"][0];
        assert_eq!(a["role"], "replica");
        assert_eq!(a["state"], "streaming");
        assert_eq!(a["host"], "10.0.0.9");
        assert_eq!(a["port"], 5432);
        assert_eq!(a["api_url"], "http://10.0.0.9:6432/patroni");
        assert_eq!(a["timeline"], 2);
        assert_eq!(a["lsn"], "1/0");
        assert_eq!(a["lag"], 0x100);
        assert_eq!(a["replay_lsn"], "1/0");
        assert_eq!(a["replay_lag"], 0x100);
        assert!(a.get("receive_lsn").is_none());
        assert_eq!(a["receive_lag"], "unknown");
        let b = &v["members"][1];
        assert_eq!(b["role"], "leader");
        assert_eq!(b["state"], "running");
        assert_eq!(b["tags"], json!({"zone": "x"}));
        assert!(b.get("lsn").is_none() && b.get("lag").is_none());
        let c = &v["members"][2];
        assert_eq!(c["lag"], "unknown");
        assert_eq!(
            v["scheduled_switchover"],
            json!({"at": "2030-01-01T00:00:00+00:00", "from": "b", "to": "a"})
        );
    }

    #[test]
    fn cluster_pause_and_absent_view() {
        let mut s = state();
        s.dynamic.pause = true;
        assert_eq!(cluster_json(&s).unwrap()["pause"], true);
        s.cluster = None;
        assert!(cluster_json(&s).is_none());
    }

    #[test]
    fn history_and_config() {
        let s = state();
        assert_eq!(
            history_json(&s),
            json!([[
                1,
                100,
                "no recovery target specified",
                "2024-01-01T00:00:00+00:00",
                "b"
            ]])
        );
        assert_eq!(config_json(&s), Some(json!({"ttl": 30, "loop_wait": 10})));
        let empty = NodeState::new("a", "demo", "");
        assert_eq!(history_json(&empty), json!([]));
        assert_eq!(config_json(&empty), None);
    }
}
