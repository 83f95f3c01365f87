//! `spiloctl history`: the `history` key, one row per timeline switch.

use serde_json::{json, Value};

use super::common::{CtlResult, Ctx};
use super::output::{self, Format};
use crate::dcs::{Cluster, HistoryLine};

/// The columns, in order.
pub const COLUMNS: [&str; 5] = ["TL", "LSN", "Reason", "Timestamp", "New Leader"];

/// One row per history line.
pub fn rows(history: &[HistoryLine]) -> Vec<Value> {
    history
        .iter()
        .map(|h| {
            json!({
                "TL": h.timeline,
                "LSN": h.lsn,
                "Reason": h.reason,
                "Timestamp": h.timestamp,
                "New Leader": h.new_leader,
            })
        })
        .collect()
}

/// The cluster's history in `format` (no key: no rows).
pub fn render(c: &Cluster, format: Format) -> String {
    let rows = rows(c.history.as_deref().unwrap_or(&[]));
    output::render_rows(format, &rows, &COLUMNS, None)
}

/// `spiloctl history`.
pub async fn run(ctx: &Ctx, format: Format) -> CtlResult {
    let c = ctx.cluster().await?;
    if let Some((_, why)) = c.warnings.iter().find(|(k, _)| k == "history") {
        return super::common::fail(format!("the history key is unreadable: {why}"));
    }
    print!("{}", render(&c, format));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> Vec<HistoryLine> {
        vec![
            HistoryLine {
                timeline: 1,
                lsn: 25165984,
                reason: "no recovery target specified".into(),
                timestamp: Some("2024-05-01T12:00:00.123+00:00".into()),
                new_leader: Some("node2".into()),
            },
            HistoryLine {
                timeline: 2,
                lsn: 50331808,
                reason: "no recovery target specified".into(),
                timestamp: None,
                new_leader: None,
            },
        ]
    }

    #[test]
    fn renders_every_format() {
        let c = Cluster {
            history: Some(history()),
            ..Cluster::default()
        };
        let t = render(&c, Format::Pretty);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[1],
            "| TL | LSN      | Reason                       | Timestamp                     | New Leader |"
        );
        assert_eq!(
            lines[3],
            "| 1  | 25165984 | no recovery target specified | 2024-05-01T12:00:00.123+00:00 | node2      |"
        );
        assert_eq!(
            lines[4],
            "| 2  | 50331808 | no recovery target specified |                               |            |"
        );
        assert_eq!(
            render(&c, Format::Tsv),
            "TL\tLSN\tReason\tTimestamp\tNew Leader\n\
             1\t25165984\tno recovery target specified\t2024-05-01T12:00:00.123+00:00\tnode2\n\
             2\t50331808\tno recovery target specified\t\t\n"
        );
        let j: Value = serde_json::from_str(&render(&c, Format::Json)).unwrap();
        assert_eq!(j[0]["New Leader"], "node2");
        assert_eq!(j[1]["Timestamp"], Value::Null);
        let y = render(&c, Format::Yaml);
        assert!(y.contains("- LSN: 25165984\n  New Leader: node2\n"), "{y}");
        // No key: an empty table.
        let empty = render(&Cluster::default(), Format::Pretty);
        assert_eq!(empty.lines().count(), 4);
        assert_eq!(render(&Cluster::default(), Format::Json), "[]\n");
    }
}
