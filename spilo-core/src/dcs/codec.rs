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
                c.warnings.push((e.key.clone(), "value is not UTF-8".into()));
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
                    })
                }
            }
            "config" => match serde_json::from_str::<Value>(text) {
                Ok(raw @ Value::Object(_)) => {
                    match serde_json::from_value::<DynamicConfig>(raw.clone()) {
                        Ok(cfg) => {
                            c.config = Some(Versioned {
                                value: cfg,
                                version: e.version,
                            })
                        }
                        Err(err) => c.warnings.push((e.key.clone(), format!("invalid config: {err}"))),
                    }
                    c.config_raw = Some(Versioned {
                        value: raw,
                        version: e.version,
                    });
                }
                Ok(_) => c.warnings.push((e.key.clone(), "config is not a JSON object".into())),
                Err(err) => c.warnings.push((e.key.clone(), format!("invalid JSON: {err}"))),
            },
            "status" => match decode_status(text) {
                Ok(s) => c.status = Some(s),
                Err(err) => c.warnings.push((e.key.clone(), err)),
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
                Err(err) => c.warnings.push((e.key.clone(), err)),
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
                Err(err) => c.warnings.push((e.key.clone(), format!("invalid sync: {err}"))),
            },
            "history" => match decode_history(text) {
                Ok(h) => c.history = Some(h),
                Err(err) => c.warnings.push((e.key.clone(), err)),
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
                    Err(err) => c.warnings.push((e.key.clone(), err)),
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

/// Decode a member value (JSON object; the legacy `postgres://…?application_name=` string too).
pub fn decode_member(text: &str) -> Result<MemberData, String> {
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
    let v: Value = serde_json::from_str(t).map_err(|e| format!("invalid member JSON: {e}"))?;
    if !v.is_object() {
        return Err("member value is not a JSON object".into());
    }
    serde_json::from_value(v).map_err(|e| format!("invalid member value: {e}"))
}

/// Decode `status` (an object, or a bare integer meaning `optime`).
pub fn decode_status(text: &str) -> Result<Status, String> {
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| format!("invalid status JSON: {e}"))?;
    match v {
        Value::Number(n) => Ok(Status {
            optime: n.as_u64(),
            ..Status::default()
        }),
        Value::Object(_) => serde_json::from_value(v).map_err(|e| format!("invalid status: {e}")),
        _ => Err("status is neither an object nor an integer".into()),
    }
}

/// Decode `failover` (`{}`/empty mean none; legacy `leader:candidate` accepted).
pub fn decode_failover(text: &str) -> Result<Option<Failover>, String> {
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
        return Err("failover is neither JSON nor leader:candidate".into());
    }
    let f: Failover = serde_json::from_str(t).map_err(|e| format!("invalid failover: {e}"))?;
    Ok(Some(f).filter(|f| !f.is_empty()))
}

/// Decode `history` (array of 3–5 element arrays).
pub fn decode_history(text: &str) -> Result<Vec<HistoryLine>, String> {
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| format!("invalid history JSON: {e}"))?;
    let arr = v.as_array().ok_or("history is not an array")?;
    let mut out = Vec::with_capacity(arr.len());
    for (i, line) in arr.iter().enumerate() {
        let l = line.as_array().ok_or_else(|| format!("history line {i} is not an array"))?;
        let tl = l.first().and_then(Value::as_u64).ok_or_else(|| format!("history line {i}: bad timeline"))?;
        let lsn = l.get(1).and_then(Value::as_u64).ok_or_else(|| format!("history line {i}: bad lsn"))?;
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
