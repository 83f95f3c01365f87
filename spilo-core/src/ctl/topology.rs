//! `spiloctl topology`: `list` ordered as a replication tree. The leader comes first; a member
//! hangs under the member its `replicatefrom` tag names (under the leader without one); each
//! level below the top is shown with `+ ` and two more spaces per extra level.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::common::{CtlResult, Ctx};
use super::list;
use super::output::Format;
use crate::dcs::{Cluster, Member};

/// The member `m` replicates from: its `replicatefrom` tag, when that names another member.
fn upstream<'a>(c: &'a Cluster, m: &Member) -> Option<&'a str> {
    let name = m.data.tags.get("replicatefrom")?.as_str()?;
    (name != m.name)
        .then(|| c.member(name).map(|u| u.name.as_str()))
        .flatten()
}

/// Members in tree order with their depth (the leader, or every root without one, at 0).
pub fn order(c: &Cluster) -> Vec<(usize, &Member)> {
    let leader = c.leader_member().map(|m| m.name.as_str());
    // The parent in the tree: the upstream, else the leader (for everyone but the leader).
    let parent = |m: &Member| -> Option<&str> {
        if Some(m.name.as_str()) == leader {
            return None;
        }
        upstream(c, m).or(leader)
    };
    let mut out: Vec<(usize, &Member)> = Vec::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    fn visit<'a>(
        c: &'a Cluster,
        m: &'a Member,
        depth: usize,
        parent: &dyn Fn(&Member) -> Option<&'a str>,
        seen: &mut BTreeSet<&'a str>,
        out: &mut Vec<(usize, &'a Member)>,
    ) {
        if !seen.insert(m.name.as_str()) {
            return;
        }
        out.push((depth, m));
        for child in &c.members {
            if parent(child) == Some(m.name.as_str()) {
                visit(c, child, depth + 1, parent, seen, out);
            }
        }
    }
    let roots: Vec<&Member> = c.members.iter().filter(|m| parent(m).is_none()).collect();
    for r in roots {
        visit(c, r, 0, &parent, &mut seen, &mut out);
    }
    // Members caught in a `replicatefrom` cycle: under the leader, or at the top.
    let base = usize::from(leader.is_some());
    for m in &c.members {
        if !seen.contains(m.name.as_str()) {
            visit(c, m, base, &parent, &mut seen, &mut out);
        }
    }
    out
}

/// A member's name as shown at `depth`.
pub fn indent(name: &str, depth: usize) -> String {
    if depth == 0 {
        name.to_string()
    } else {
        format!("{}+ {name}", "  ".repeat(depth - 1))
    }
}

/// The list rows in tree order, names indented.
pub fn rows(scope: &str, c: &Cluster) -> Vec<Value> {
    let flat = list::rows(scope, c);
    order(c)
        .into_iter()
        .filter_map(|(depth, m)| {
            let mut row = flat
                .iter()
                .find(|r| r["Member"].as_str() == Some(m.name.as_str()))?
                .clone();
            row["Member"] = Value::String(indent(&m.name, depth));
            Some(row)
        })
        .collect()
}

/// The tree as a table.
pub fn render(scope: &str, c: &Cluster) -> String {
    list::render_rows(scope, c, &rows(scope, c), Format::Pretty)
}

/// `spiloctl topology`.
pub async fn run(ctx: &Ctx, watch: Option<Duration>) -> CtlResult {
    let scope = ctx.scope().to_string();
    list::print_loop(ctx, Format::Pretty, watch, |c| render(&scope, c)).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ctl::common::tests::cluster;

    fn tag(c: &mut Cluster, member: &str, from: &str) {
        let i = c.members.iter().position(|m| m.name == member).unwrap();
        c.members[i]
            .data
            .tags
            .insert("replicatefrom".into(), json!(from));
    }

    fn shown(c: &Cluster) -> Vec<String> {
        order(c)
            .into_iter()
            .map(|(d, m)| indent(&m.name, d))
            .collect()
    }

    #[test]
    fn tree_with_cascading_replicas() {
        let mut c = cluster(&["a", "b", "c", "d", "e"], Some("c"));
        tag(&mut c, "a", "b");
        tag(&mut c, "d", "a");
        tag(&mut c, "e", "ghost"); // unknown upstream: under the leader
        assert_eq!(shown(&c), vec!["c", "+ b", "  + a", "    + d", "+ e"]);
        let r = rows("s", &c);
        assert_eq!(r[2]["Member"], "  + a");
        assert_eq!(r[2]["Role"], "Replica");
        assert!(render("s", &c).contains("|   + a "));
    }

    #[test]
    fn no_leader_and_cycles() {
        let mut c = cluster(&["a", "b", "c"], None);
        tag(&mut c, "b", "a");
        assert_eq!(shown(&c), vec!["a", "+ b", "c"]);

        let mut c = cluster(&["a", "b", "c", "d"], Some("a"));
        tag(&mut c, "b", "c");
        tag(&mut c, "c", "b");
        tag(&mut c, "d", "d"); // itself: ignored
        assert_eq!(shown(&c), vec!["a", "+ d", "+ b", "  + c"]);

        // A leader key without a member key: every member at the top.
        let c = cluster(&["a", "b"], Some("zz"));
        assert_eq!(shown(&c), vec!["a", "b"]);
    }
}
