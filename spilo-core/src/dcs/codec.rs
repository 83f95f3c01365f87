//! Decoding a raw [`Snapshot`] into a [`Cluster`], and encoding values the way Patroni writes
//! them (compact JSON; the leader key a bare name).

use serde_json::Value;
use spilo_sdk::Snapshot;

use super::model::*;
use crate::config::DynamicConfig;

/// The cluster prefix: `/<namespace>/<scope>/`, runs of `/` collapsed.
pub fn cluster_prefix(namespace: &str, scope: &str) -> String {
    let joined = format!("/{}/{}/", namespace, scope);
    let mut out = String::with_capacity(joined.len());
    for c in joined.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Decode every key of a snapshot. Unparseable values are skipped and listed in
/// [`Cluster::warnings`].
pub fn decode_cluster(snap: &Snapshot) -> Cluster {
    let mut c = Cluster {
        revision: snap.revision,
        ..Cluster::default()
    };
    let mut legacy_optime: Option<u64> = None;
    for e in &snap.entries {
        let text = match std::str::from_utf8(&e.value) {
            Ok(t) => t,
            Err(_) => {
                c.warnings
                    .push((e.key.clone(), "value is not UTF-8".into()));
                continue;
            }
        };
        match e.key.as_str() {
            "initialize" => c.initialize = Some(text.trim().to_string()),
            "leader" => {
                let name = text.trim();
                if name.is_empty() {
                    c.warnings.push((e.key.clone(), "empty leader name".into()));
                } else {
                    c.leader = Some(Leader {
                        name: name.to_string(),
                        version: e.version,
                        owned_by_us: e.owned_by_us,
                        term: spilo_sdk::Term::from_created(e.created),
                    })
                }
            }
            "config" => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(obj)) => {
                    // Absurd or mistyped values are clamped or dropped, one warning each, so
                    // that one bad key neither discards the rest nor reaches the timers.
                    let mut usable = obj.clone();
                    for w in crate::config::limits::sanitize_from_dcs(&mut usable) {
                        c.warnings.push((e.key.clone(), w));
                    }
                    let raw = Value::Object(obj);
                    match serde_json::from_value::<DynamicConfig>(Value::Object(usable)) {
                        Ok(cfg) => {
                            c.config = Some(Versioned {
                                value: cfg,
                                version: e.version,
                            })
                        }
                        Err(err) => c
                            .warnings
                            .push((e.key.clone(), format!("invalid config: {err}"))),
                    }
                    c.config_raw = Some(Versioned {
                        value: raw,
                        version: e.version,
                    });
                }
                Ok(_) => c
                    .warnings
                    .push((e.key.clone(), "config is not a JSON object".into())),
                Err(err) => c
                    .warnings
                    .push((e.key.clone(), format!("invalid JSON: {err}"))),
            },
            "status" => match decode_status(text) {
                Ok(s) => c.status = Some(s),
                Err(err) => c.warnings.push((e.key.clone(), crate::error_chain(&err))),
            },
            "optime/leader" => legacy_optime = text.trim().parse().ok(),
            "failover" => match decode_failover(text) {
                Ok(Some(f)) => {
                    c.failover = Some(Versioned {
                        value: f,
                        version: e.version,
                    })
                }
                Ok(None) => {}
                Err(err) => c.warnings.push((e.key.clone(), crate::error_chain(&err))),
            },
            "sync" => match serde_json::from_str::<SyncState>(text) {
                Ok(s) => {
                    c.sync = Some(Versioned {
                        value: s,
                        version: e.version,
                    })
                }
                Err(err) if text.trim() == "{}" || text.trim().is_empty() => {
                    let _ = err;
                }
                Err(err) => c
                    .warnings
                    .push((e.key.clone(), format!("invalid sync: {err}"))),
            },
            "history" => match decode_history(text) {
                Ok(h) => c.history = Some(h),
                Err(err) => c.warnings.push((e.key.clone(), crate::error_chain(&err))),
            },
            k if k.starts_with("members/") && !k["members/".len()..].contains('/') => {
                let name = &k["members/".len()..];
                if name.is_empty() {
                    continue;
                }
                match decode_member(text) {
                    Ok(data) => c.members.push(Member {
                        name: name.to_string(),
                        data,
                        version: e.version,
                        owned_by_us: e.owned_by_us,
                    }),
                    Err(err) => c.warnings.push((e.key.clone(), crate::error_chain(&err))),
                }
            }
            _ => {}
        }
    }
    if c.status.is_none() {
        if let Some(o) = legacy_optime {
            c.status = Some(Status {
                optime: Some(o),
                ..Status::default()
            });
        }
    }
    c.members.sort_by(|a, b| a.name.cmp(&b.name));
    c
}

/// Why a DCS value was not understood (the value is then skipped with a warning naming the key).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong types.
    #[error("invalid {what}")]
    Json {
        /// Which value.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// Well-formed, but not the shape this value has.
    #[error("{0}")]
    Shape(String),
}

fn json_err(what: &'static str) -> impl FnOnce(serde_json::Error) -> DecodeError {
    move |source| DecodeError::Json { what, source }
}

/// Decode a member value (JSON object; the legacy `postgres://…?application_name=` string too).
pub fn decode_member(text: &str) -> Result<MemberData, DecodeError> {
    let t = text.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        let (conn, query) = t.split_once('?').unwrap_or((t, ""));
        let api_url = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("application_name="))
            .unwrap_or("")
            .to_string();
        return Ok(MemberData {
            conn_url: conn.to_string(),
            api_url,
            state: "unknown".into(),
            role: "unknown".into(),
            ..MemberData::default()
        });
    }
    let v: Value = serde_json::from_str(t).map_err(json_err("member JSON"))?;
    if !v.is_object() {
        return Err(DecodeError::Shape(
            "member value is not a JSON object".into(),
        ));
    }
    serde_json::from_value(v).map_err(json_err("member value"))
}

/// Decode `status` (an object, or a bare integer meaning `optime`).
pub fn decode_status(text: &str) -> Result<Status, DecodeError> {
    let v: Value = serde_json::from_str(text.trim()).map_err(json_err("status JSON"))?;
    match v {
        Value::Number(n) => Ok(Status {
            optime: n.as_u64(),
            ..Status::default()
        }),
        Value::Object(_) => serde_json::from_value(v).map_err(json_err("status")),
        _ => Err(DecodeError::Shape(
            "status is neither an object nor an integer".into(),
        )),
    }
}

/// Decode `failover` (`{}`/empty mean none; legacy `leader:candidate` accepted).
pub fn decode_failover(text: &str) -> Result<Option<Failover>, DecodeError> {
    let t = text.trim();
    if t.is_empty() || t == "{}" {
        return Ok(None);
    }
    if !t.starts_with('{') {
        if let Some((l, m)) = t.split_once(':') {
            let f = Failover {
                leader: Some(l.to_string()).filter(|s| !s.is_empty()),
                member: Some(m.to_string()).filter(|s| !s.is_empty()),
                scheduled_at: None,
            };
            return Ok(Some(f).filter(|f| !f.is_empty()));
        }
        return Err(DecodeError::Shape(
            "failover is neither JSON nor leader:candidate".into(),
        ));
    }
    let f: Failover = serde_json::from_str(t).map_err(json_err("failover"))?;
    Ok(Some(f).filter(|f| !f.is_empty()))
}

/// Decode `history` (array of 3–5 element arrays).
pub fn decode_history(text: &str) -> Result<Vec<HistoryLine>, DecodeError> {
    let v: Value = serde_json::from_str(text.trim()).map_err(json_err("history JSON"))?;
    let shape = |m: String| DecodeError::Shape(m);
    let arr = v
        .as_array()
        .ok_or_else(|| shape("history is not an array".into()))?;
    let mut out = Vec::with_capacity(arr.len());
    for (i, line) in arr.iter().enumerate() {
        let l = line
            .as_array()
            .ok_or_else(|| shape(format!("history line {i} is not an array")))?;
        let tl = l
            .first()
            .and_then(Value::as_u64)
            .ok_or_else(|| shape(format!("history line {i}: bad timeline")))?;
        let lsn = l
            .get(1)
            .and_then(Value::as_u64)
            .ok_or_else(|| shape(format!("history line {i}: bad lsn")))?;
        out.push(HistoryLine {
            timeline: tl,
            lsn,
            reason: l.get(2).and_then(Value::as_str).unwrap_or("").to_string(),
            timestamp: l.get(3).and_then(Value::as_str).map(str::to_string),
            new_leader: l.get(4).and_then(Value::as_str).map(str::to_string),
        });
    }
    Ok(out)
}

/// Compact JSON, as Patroni writes every value.
pub fn to_compact_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

/// Encode a history list.
pub fn encode_history(h: &[HistoryLine]) -> Vec<u8> {
    to_compact_json(&Value::Array(h.iter().map(HistoryLine::to_json).collect()))
}

/// Format an LSN in bytes as PostgreSQL's `X/X`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parse PostgreSQL's `X/X` LSN.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Patroni's `slot_name_from_member_name`: lower case, `-` and `.` to `_`, other characters
/// outside `[a-z0-9_]` to `u%04d` of the code point, at most 63 bytes.
pub fn slot_name(member: &str) -> String {
    let mut out = String::new();
    for ch in member.to_lowercase().chars() {
        match ch {
            'a'..='z' | '0'..='9' | '_' => out.push(ch),
            '-' | '.' => out.push('_'),
            other => out.push_str(&format!("u{:04}", other as u32)),
        }
    }
    out.truncate(63);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use spilo_sdk::Entry;

    fn entry(key: &str, value: &str) -> Entry {
        Entry {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            version: 5,
            owned_by_us: false,
            created: None,
        }
    }

    // The example keyspace of a 2-node Patroni 4 cluster (compat reference §1.2).
    const MEMBER0: &str = r#"{"conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"http://10.0.0.1:8008/patroni","state":"running","role":"primary","version":"4.1.4","xlog_location":50331856,"timeline":2}"#;
    const MEMBER1: &str = r#"{"conn_url":"postgres://127.0.0.1:5433/postgres","api_url":"http://127.0.0.1:8009/patroni","state":"running","role":"replica","version":"4.1.4","xlog_location":67393608,"replay_lsn":67393608,"receive_lsn":67393608,"replication_state":"streaming","timeline":1}"#;
    const CONFIG: &str = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"synchronous_mode":true,"failsafe_mode":true,"postgresql":{"use_pg_rewind":true}}"#;
    const STATUS: &str = r#"{"optime":50331856,"slots":{"postgresql0":50331856,"postgresql1":50331856},"retain_slots":["postgresql0","postgresql1"]}"#;
    const SYNC: &str = r#"{"leader":"postgresql0","quorum":0,"sync_standby":"postgresql1"}"#;
    const HISTORY: &str = r#"[[1,25623960,"no recovery target specified","2019-09-24T09:35:52+02:00","postgresql0"]]"#;

    #[test]
    fn prefix_collapses_slashes() {
        assert_eq!(cluster_prefix("/service", "batman"), "/service/batman/");
        assert_eq!(cluster_prefix("service", "batman"), "/service/batman/");
        assert_eq!(cluster_prefix("/service/", "batman"), "/service/batman/");
    }

    #[test]
    fn decodes_the_reference_keyspace() {
        let snap = Snapshot {
            revision: 42,
            entries: vec![
                entry("config", CONFIG),
                entry("initialize", "7268616322854375442"),
                entry("leader", "postgresql0"),
                entry("members/postgresql0", MEMBER0),
                entry("members/postgresql1", MEMBER1),
                entry("status", STATUS),
                entry("sync", SYNC),
                entry("history", HISTORY),
                entry("failover", "{}"),
            ],
        };
        let c = decode_cluster(&snap);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.sysid(), Some("7268616322854375442"));
        assert_eq!(c.leader.as_ref().unwrap().name, "postgresql0");
        assert_eq!(c.members.len(), 2);
        assert_eq!(
            c.members[1].data.replication_state.as_deref(),
            Some("streaming")
        );
        assert_eq!(c.optime(), Some(50331856));
        assert_eq!(c.timeline(), 2);
        assert!(c.failover.is_none());
        let cfg = &c.config.as_ref().unwrap().value;
        assert_eq!(cfg.ttl, 30);
        assert!(cfg.postgresql.use_pg_rewind);
        assert_eq!(cfg.extra.get("synchronous_mode"), Some(&Value::Bool(true)));
        assert_eq!(
            c.sync.as_ref().unwrap().value.sync_standby.as_deref(),
            Some("postgresql1")
        );
        assert_eq!(
            c.member("postgresql0").unwrap().host_port(),
            Some(("10.0.0.1".into(), 5432))
        );
    }

    #[test]
    fn member_round_trips_byte_for_byte() {
        for text in [MEMBER0, MEMBER1] {
            let m = decode_member(text).unwrap();
            assert_eq!(String::from_utf8(to_compact_json(&m)).unwrap(), text);
        }
    }

    #[test]
    fn status_sync_history_config_round_trip() {
        let s = decode_status(STATUS).unwrap();
        assert_eq!(String::from_utf8(to_compact_json(&s)).unwrap(), STATUS);
        let y: SyncState = serde_json::from_str(SYNC).unwrap();
        assert_eq!(String::from_utf8(to_compact_json(&y)).unwrap(), SYNC);
        let h = decode_history(HISTORY).unwrap();
        assert_eq!(String::from_utf8(encode_history(&h)).unwrap(), HISTORY);
        let c: crate::config::DynamicConfig = serde_json::from_str(CONFIG).unwrap();
        let back: Value = serde_json::from_slice(&to_compact_json(&c)).unwrap();
        let orig: Value = serde_json::from_str(CONFIG).unwrap();
        for k in [
            "ttl",
            "loop_wait",
            "retry_timeout",
            "synchronous_mode",
            "failsafe_mode",
        ] {
            assert_eq!(back[k], orig[k], "{k}");
        }
        assert_eq!(back["postgresql"]["use_pg_rewind"], Value::Bool(true));
    }

    #[test]
    fn failover_forms() {
        let f = decode_failover(
            r#"{"leader":"a","member":"b","scheduled_at":"2024-01-01T00:00:00+00:00"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(f.member.as_deref(), Some("b"));
        assert_eq!(
            String::from_utf8(to_compact_json(&f)).unwrap(),
            r#"{"leader":"a","member":"b","scheduled_at":"2024-01-01T00:00:00+00:00"}"#
        );
        assert_eq!(decode_failover("{}").unwrap(), None);
        assert_eq!(decode_failover("").unwrap(), None);
        let legacy = decode_failover("a:b").unwrap().unwrap();
        assert_eq!(
            (legacy.leader.as_deref(), legacy.member.as_deref()),
            (Some("a"), Some("b"))
        );
    }

    #[test]
    fn legacy_values_decode() {
        assert_eq!(decode_status("12345").unwrap().optime, Some(12345));
        let m = decode_member(
            "postgres://u:p@10.0.0.1:5432/postgres?application_name=http://10.0.0.1:8008/patroni",
        )
        .unwrap();
        assert_eq!(m.api_url, "http://10.0.0.1:8008/patroni");
        let master: MemberData = decode_member(r#"{"role":"master","state":"running"}"#).unwrap();
        assert_eq!(master.normalized_role(), "primary");
        let snap = Snapshot {
            revision: 1,
            entries: vec![entry("optime/leader", "777")],
        };
        assert_eq!(decode_cluster(&snap).optime(), Some(777));
    }

    #[test]
    fn garbage_values_are_skipped_with_a_warning() {
        let snap = Snapshot {
            revision: 1,
            entries: vec![
                entry("members/bad", "{not json"),
                entry("members/ok", MEMBER1),
                entry("config", "[1,2]"),
                entry("status", "\"x\""),
                entry("history", "{}"),
                entry("failover", "nonsense"),
                entry("sync", "7"),
                Entry {
                    key: "leader".into(),
                    value: vec![0xff, 0xfe],
                    version: 1,
                    owned_by_us: false,
                    created: None,
                },
            ],
        };
        let c = decode_cluster(&snap);
        assert_eq!(c.members.len(), 1);
        assert!(
            c.config.is_none() && c.status.is_none() && c.history.is_none() && c.leader.is_none()
        );
        assert_eq!(c.warnings.len(), 7, "{:?}", c.warnings);
    }

    #[test]
    fn history_timelines() {
        let mut c = Cluster::default();
        assert_eq!(c.timeline(), 0);
        c.history = Some(vec![]);
        assert_eq!(c.timeline(), 1);
        c.history = Some(decode_history(r#"[[1,100,"r"],[2,200,"r","t"]]"#).unwrap());
        assert_eq!(c.timeline(), 3);
    }

    #[test]
    fn lsn_and_slot_names() {
        assert_eq!(format_lsn(0x1_0000_00A0), "1/A0");
        assert_eq!(parse_lsn("1/A0"), Some(0x1_0000_00A0));
        assert_eq!(parse_lsn("zz"), None);
        assert_eq!(slot_name("Node-1.a"), "node_1_a");
        assert_eq!(slot_name("né"), "nu0233");
        assert_eq!(slot_name(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn a_bad_value_is_an_error_with_its_cause() {
        let e = decode_member("{\"role\": ").unwrap_err();
        let line = crate::error_chain(&e);
        assert!(line.starts_with("invalid member JSON: "), "{line}");
        assert!(line.contains("line 1"), "{line}");
        assert!(matches!(decode_status("[1]"), Err(DecodeError::Shape(_))));
        let e = decode_history("[[1, \"x\"]]").unwrap_err();
        assert_eq!(e.to_string(), "history line 0: bad lsn");
    }
}
