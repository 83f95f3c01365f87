//! `spiloctl list`: the members as the DCS shows them, like `patronictl list`.

use serde_json::{json, Value};

use crate::dcs::Cluster;

/// One row per member, in patronictl's JSON shape.
pub fn rows(scope: &str, c: &Cluster) -> Vec<Value> {
    let leader = c.leader.as_ref().map(|l| l.name.as_str());
    let optime = c.optime();
    c.members
        .iter()
        .map(|m| {
            let is_leader = Some(m.name.as_str()) == leader;
            let host = match m.host_port() {
                Some((h, 5432)) => h,
                Some((h, p)) => format!("{h}:{p}"),
                None => String::new(),
            };
            let state = if is_leader {
                m.data.state.clone()
            } else {
                m.data
                    .replication_state
                    .clone()
                    .filter(|_| m.data.state == "running")
                    .unwrap_or_else(|| m.data.state.clone())
            };
            let mut row = json!({
                "Cluster": scope,
                "Member": m.name,
                "Host": host,
                "Role": if is_leader { "Leader" } else { "Replica" },
                "State": state,
            });
            if let Some(tl) = m.data.timeline {
                row["TL"] = json!(tl);
            }
            if !is_leader {
                row["Lag in MB"] = match (optime, m.data.xlog_location) {
                    (Some(o), Some(x)) => json!(o.saturating_sub(x) / (1024 * 1024)),
                    _ => json!("unknown"),
                };
            }
            if !m.data.tags.is_empty() {
                row["Tags"] = json!(m.data.tags);
            }
            row
        })
        .collect()
}

/// A plain-text table.
pub fn table(scope: &str, c: &Cluster) -> String {
    let rows = rows(scope, c);
    let headers = ["Member", "Host", "Role", "State", "TL", "Lag in MB", "Tags"];
    let cell = |r: &Value, h: &str| -> String {
        match r.get(h) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}: {}",
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            Some(v) => v.to_string(),
        }
    };
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, h) in headers.iter().enumerate() {
            widths[i] = widths[i].max(cell(r, h).len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!(" {:<w$} ", c, w = widths[i]))
            .collect();
        format!("|{}|\n", parts.join("|"))
    };
    let sep = format!(
        "+{}+\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut out = format!("+ Cluster: {scope} ");
    if let Some(id) = c.sysid() {
        out.push_str(&format!("({id}) "));
    }
    out.push('\n');
    out.push_str(&sep);
    out.push_str(&line(headers.iter().map(|h| h.to_string()).collect()));
    out.push_str(&sep);
    for r in &rows {
        out.push_str(&line(headers.iter().map(|h| cell(r, h)).collect()));
    }
    out.push_str(&sep);
    if c.paused() {
        out.push_str(" Maintenance mode: on\n");
    }
    out
}
