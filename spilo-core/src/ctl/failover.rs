//! `spiloctl failover`: `POST /failover {"candidate"}` to the leader, or to the candidate when
//! the cluster has no leader; the `failover` key directly when that API cannot be reached.

use super::common::{fail, CtlResult, Ctx};
use super::list;
use super::switchover::{candidates, check_candidate, post_or_write_key, request_body};
use crate::dcs::{Cluster, Failover, Member};

/// The confirmation question.
pub fn question(scope: &str, leader: Option<&str>) -> String {
    match leader {
        Some(l) => format!(
            "Are you sure you want to failover cluster {scope}, demoting current leader {l}?"
        ),
        None => format!("Are you sure you want to failover cluster {scope}?"),
    }
}

/// Where the request goes: the leader, or the candidate without one.
pub fn target<'a>(c: &'a Cluster, candidate: &str) -> Option<&'a Member> {
    c.leader_member().or_else(|| c.member(candidate))
}

/// `spiloctl failover`.
pub async fn run(ctx: &Ctx, candidate: Option<&str>, force: bool) -> CtlResult {
    let c = ctx.cluster().await?;
    let scope = ctx.scope().to_string();
    let asking = ctx.console.interactive && !force;
    if asking {
        println!("Current cluster topology");
        print!("{}", list::table(&scope, &c));
    }
    let candidate = match candidate {
        Some(cand) => cand.to_string(),
        None if ctx.console.interactive => ctx
            .console
            .ask(&format!("Candidate {:?}", candidates(&c)), "")?,
        None => String::new(),
    };
    if candidate.trim().is_empty() {
        return fail("failover needs a candidate (--candidate NAME)");
    }
    let candidate = candidate.trim().to_string();
    check_candidate(&c, &scope, &candidate)?;
    let leader = c.leader.as_ref().map(|l| l.name.as_str());
    ctx.console.confirm(&question(&scope, leader), force)?;
    let body = request_body(None, Some(&candidate), None);
    let key = Failover {
        leader: None,
        member: Some(candidate.clone()),
        scheduled_at: None,
    };
    post_or_write_key(ctx, &c, target(&c, &candidate), "failover", &body, &key).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::common::tests::cluster;

    #[test]
    fn targets_and_questions() {
        let c = cluster(&["a", "b"], Some("a"));
        assert_eq!(target(&c, "b").unwrap().name, "a");
        let headless = cluster(&["a", "b"], None);
        assert_eq!(target(&headless, "b").unwrap().name, "b");
        assert!(target(&headless, "zz").is_none());
        assert_eq!(
            question("s", Some("a")),
            "Are you sure you want to failover cluster s, demoting current leader a?"
        );
        assert_eq!(
            question("s", None),
            "Are you sure you want to failover cluster s?"
        );
        assert_eq!(
            request_body(None, Some("b"), None).to_string(),
            r#"{"candidate":"b"}"#
        );
    }
}
