//! `spiloctl list`: the members as the DCS shows them, like `patronictl list`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::{json, Value};

use super::common::{is_standby_cluster, CtlResult, Ctx};
use super::output::{self, Format};
use crate::dcs::Cluster;

/// The columns always shown in the table and TSV, in order.
const BASE_COLUMNS: [&str; 6] = ["Member", "Host", "Role", "State", "TL", "Lag in MB"];
/// Columns shown only when some member has a value.
const OPTIONAL_COLUMNS: [&str; 6] = [
    "Pending restart",
    "Scheduled restart",
    "Hooks",
    "Fence",
    "Archive",
    "Built",
];

/// The names in the `sync` key's `sync_standby` (comma-joined).
fn sync_standbys(c: &Cluster) -> Vec<String> {
    c.sync
        .as_ref()
        .and_then(|s| s.value.sync_standby.clone())
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// One row per member, in patronictl's JSON shape.
pub fn rows(scope: &str, c: &Cluster) -> Vec<Value> {
    let leader = c.leader.as_ref().map(|l| l.name.as_str());
    let optime = c.optime();
    let sync = sync_standbys(c);
    let quorum = c.sync.as_ref().is_some_and(|s| s.value.quorum > 0);
    let standby_cluster = is_standby_cluster(c);
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
            let role = if is_leader {
                if standby_cluster {
                    "Standby Leader"
                } else {
                    "Leader"
                }
            } else if sync.contains(&m.name) {
                if quorum {
                    "Quorum Standby"
                } else {
                    "Sync Standby"
                }
            } else {
                "Replica"
            };
            let mut row = json!({
                "Cluster": scope,
                "Member": m.name,
                "Host": host,
                "Role": role,
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
            if m.data.pending_restart == Some(true) {
                row["Pending restart"] = json!("*");
            }
            if let Some(at) = m
                .data
                .extra
                .get("scheduled_restart")
                .and_then(|s| s.get("schedule"))
                .and_then(Value::as_str)
            {
                row["Scheduled restart"] = json!(at);
            }
            // spilo's own: a hook's veto or candidate choice in the current leader race.
            let veto = m.data.extra.get("promotion_veto").and_then(Value::as_str);
            let pick = m.data.extra.get("hook_choice").and_then(Value::as_str);
            match (veto, pick) {
                (Some(v), _) => row["Hooks"] = json!(format!("promotion vetoed: {v}")),
                (None, Some(p)) => row["Hooks"] = json!(format!("picked {p}")),
                (None, None) => {}
            }
            if let Some(f) = m.data.extra.get("fence").and_then(Value::as_str) {
                row["Fence"] = json!(f);
            }
            // spilo's own: the WAL archive's state on the member that archives.
            if let Some(a) = m.data.extra.get("archive").and_then(Value::as_str) {
                row["Archive"] = json!(a);
            }
            // spilo's own: how a replica's data directory was built, and why.
            if let Some(b) = m.data.extra.get("built").and_then(Value::as_str) {
                row["Built"] = json!(b);
            }
            if !m.data.tags.is_empty() {
                row["Tags"] = json!(m.data.tags);
            }
            row
        })
        .collect()
}

/// The table/TSV columns for `rows`: the base ones, the optional ones some row has, `Tags`.
pub fn columns(rows: &[Value]) -> Vec<&'static str> {
    let mut cols: Vec<&'static str> = BASE_COLUMNS.to_vec();
    for c in OPTIONAL_COLUMNS {
        if rows.iter().any(|r| r.get(c).is_some()) {
            cols.push(c);
        }
    }
    cols.push("Tags");
    cols
}

/// The table's title: `Cluster: <scope> (<sysid>)`.
pub fn title(scope: &str, c: &Cluster) -> String {
    match c.sysid() {
        Some(id) => format!("Cluster: {scope} ({id})"),
        None => format!("Cluster: {scope}"),
    }
}

/// `rows` (already ordered) in `format`; the pretty table ends with the maintenance line when
/// the cluster is paused.
pub fn render_rows(scope: &str, c: &Cluster, rows: &[Value], format: Format) -> String {
    let cols = columns(rows);
    let mut out = output::render_rows(format, rows, &cols, Some(&title(scope, c)));
    if format == Format::Pretty && c.paused() {
        out.push_str(" Maintenance mode: on\n");
    }
    out
}

/// The members in `format`.
pub fn render(scope: &str, c: &Cluster, format: Format) -> String {
    render_rows(scope, c, &rows(scope, c), format)
}

/// A plain-text table.
pub fn table(scope: &str, c: &Cluster) -> String {
    render(scope, c, Format::Pretty)
}

/// `-W` means every 2 s, `-w N` every N s; neither means once. N must be positive.
pub fn watch_interval(watch: bool, every: Option<f64>) -> CtlResult<Option<Duration>> {
    match every {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            super::common::fail(format!("invalid watch interval {s}: must be > 0 seconds"))
        }
        Some(s) => Ok(Some(Duration::from_secs_f64(s))),
        None if watch => Ok(Some(Duration::from_secs(2))),
        None => Ok(None),
    }
}

/// Print `render(cluster)` once, or every `watch` until interrupted (clearing a terminal
/// between pretty tables). In watch mode a failed DCS read is reported and retried.
pub async fn print_loop(
    ctx: &Ctx,
    format: Format,
    watch: Option<Duration>,
    render: impl Fn(&Cluster) -> String,
) -> CtlResult {
    let Some(every) = watch else {
        let c = ctx.cluster().await?;
        print!("{}", render(&c));
        return Ok(());
    };
    let clear = format == Format::Pretty && std::io::stdout().is_terminal();
    loop {
        let text = match ctx.cluster().await {
            Ok(c) => render(&c),
            Err(e) => {
                eprintln!("spiloctl: {e}");
                String::new()
            }
        };
        let mut out = std::io::stdout().lock();
        if clear {
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        if format == Format::Pretty {
            let _ = writeln!(
                out,
                "{}",
                chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.3f %:z")
            );
        }
        let _ = write!(out, "{text}");
        let _ = out.flush();
        drop(out);
        tokio::time::sleep(every).await;
    }
}

/// `spiloctl list`.
pub async fn run(ctx: &Ctx, format: Format, watch: Option<Duration>) -> CtlResult {
    let scope = ctx.scope().to_string();
    print_loop(ctx, format, watch, |c| render(&scope, c, format)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::common::tests::cluster;
    use crate::dcs::{Status, SyncState, Versioned};

    #[test]
    fn hook_vetoes_and_picks_show_in_their_own_column() {
        let mut c = cluster(&["a", "b", "c"], None);
        c.members[0].data.extra.insert(
            "promotion_veto".into(),
            json!("before_promote: backup site"),
        );
        c.members[1]
            .data
            .extra
            .insert("hook_choice".into(), json!("c"));
        let r = rows("s", &c);
        assert_eq!(
            r[0]["Hooks"],
            "promotion vetoed: before_promote: backup site"
        );
        assert_eq!(r[1]["Hooks"], "picked c");
        assert!(r[2].get("Hooks").is_none());
        assert!(columns(&r).contains(&"Hooks"));
        assert!(!columns(&rows("s", &cluster(&["a"], Some("a")))).contains(&"Hooks"));
    }

    #[test]
    fn rows_roles_lag_and_optional_columns() {
        let mut c = cluster(&["a", "b", "c"], Some("a"));
        c.status = Some(Status {
            optime: Some(50 << 20),
            ..Status::default()
        });
        c.members[0].data.conn_url = "postgres://10.0.0.1:5432/postgres".into();
        c.members[1].data.conn_url = "postgres://10.0.0.2:5433/postgres".into();
        c.members[1].data.xlog_location = Some(40 << 20);
        c.members[1].data.replication_state = Some("streaming".into());
        c.members[2].data.pending_restart = Some(true);
        c.sync = Some(Versioned {
            value: SyncState {
                leader: Some("a".into()),
                quorum: 0,
                sync_standby: Some("b".into()),
            },
            version: 1,
        });
        let r = rows("s", &c);
        assert_eq!(r[0]["Role"], "Leader");
        assert_eq!(r[0]["Host"], "10.0.0.1");
        assert!(r[0].get("Lag in MB").is_none());
        assert_eq!(r[1]["Role"], "Sync Standby");
        assert_eq!(r[1]["Host"], "10.0.0.2:5433");
        assert_eq!(r[1]["State"], "streaming");
        assert_eq!(r[1]["Lag in MB"], 10);
        assert_eq!(r[2]["Lag in MB"], "unknown");
        assert_eq!(r[2]["Pending restart"], "*");
        assert_eq!(
            columns(&r),
            vec![
                "Member",
                "Host",
                "Role",
                "State",
                "TL",
                "Lag in MB",
                "Pending restart",
                "Tags"
            ]
        );
        let tsv = render("s", &c, Format::Tsv);
        assert!(
            tsv.starts_with("Member\tHost\tRole\tState\tTL\tLag in MB\tPending restart\tTags\n")
        );
        assert!(tsv.contains("\nb\t10.0.0.2:5433\tSync Standby\tstreaming\t\t10\t\t\n"));
        let yaml = render("s", &c, Format::Yaml);
        assert!(
            yaml.starts_with("- Cluster: s\n  Host: \"10.0.0.1\"\n  Member: a\n"),
            "{yaml}"
        );
        assert_eq!(output::from_yaml(&yaml).unwrap(), Value::Array(r));
    }

    #[test]
    fn pretty_shows_maintenance_mode() {
        let mut c = cluster(&["a"], Some("a"));
        c.initialize = Some("7000000000000000001".into());
        let t = table("s", &c);
        assert!(t.starts_with("+ Cluster: s (7000000000000000001) "), "{t}");
        assert!(!t.contains("Maintenance"));
        c.config = Some(Versioned {
            value: crate::config::DynamicConfig {
                pause: true,
                ..Default::default()
            },
            version: 1,
        });
        assert!(table("s", &c).ends_with("+\n Maintenance mode: on\n"));
    }

    #[test]
    fn watch_intervals() {
        assert_eq!(watch_interval(false, None).unwrap(), None);
        assert_eq!(
            watch_interval(true, None).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watch_interval(true, Some(0.5)).unwrap(),
            Some(Duration::from_millis(500))
        );
        assert!(watch_interval(false, Some(0.0)).is_err());
        assert!(watch_interval(false, Some(f64::NAN)).is_err());
    }
}
