//! `spiloctl switchover`: `POST /switchover` to the leader. When the leader's API cannot be
//! reached at all, the request is written to the `failover` key directly instead (the leader's
//! HA loop acts on it either way).

use std::time::Duration;

use hyper::Method;
use serde_json::{Map, Value};

use super::common::{fail, loop_wait, now, parse_schedule, CtlResult, Ctx};
use super::list;
use crate::dcs::{tags, Cas, Cluster, Failover, Member};

/// What was asked.
#[derive(Clone, Debug, Default)]
pub struct SwitchoverArgs {
    /// `--leader`/`--primary`.
    pub leader: Option<String>,
    /// `--candidate`.
    pub candidate: Option<String>,
    /// `--scheduled`.
    pub scheduled: Option<String>,
    /// Do not ask.
    pub force: bool,
}

/// The members that may be promoted: not the leader, not tagged `nofailover`.
pub fn candidates(c: &Cluster) -> Vec<&str> {
    let leader = c.leader.as_ref().map(|l| l.name.as_str());
    c.members
        .iter()
        .filter(|m| Some(m.name.as_str()) != leader && !tags::nofailover(&m.data.tags))
        .map(|m| m.name.as_str())
        .collect()
}

/// The candidate must be a member that may be promoted and not the leader.
pub fn check_candidate(c: &Cluster, scope: &str, candidate: &str) -> CtlResult {
    if c.leader.as_ref().is_some_and(|l| l.name == candidate) {
        return fail(format!(
            "Member {candidate} is already the leader of cluster {scope}"
        ));
    }
    if !candidates(c).contains(&candidate) {
        return fail(format!(
            "Member {candidate} does not exist in cluster {scope} or is tagged as nofailover \
             (candidates: {})",
            list_or_none(&candidates(c))
        ));
    }
    Ok(())
}

fn list_or_none(v: &[&str]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The body of `POST /switchover` and `POST /failover` (absent fields left out).
pub fn request_body(
    leader: Option<&str>,
    candidate: Option<&str>,
    scheduled_at: Option<&str>,
) -> Value {
    let mut m = Map::new();
    if let Some(l) = leader {
        m.insert("leader".into(), l.into());
    }
    if let Some(c) = candidate {
        m.insert("candidate".into(), c.into());
    }
    if let Some(t) = scheduled_at {
        m.insert("scheduled_at".into(), t.into());
    }
    Value::Object(m)
}

/// How long to wait for the answer: the server polls for up to `2 * max(10, loop_wait)` s.
pub fn op_timeout(c: &Cluster) -> Duration {
    Duration::from_secs(2 * loop_wait(c).max(10) + 15)
}

/// Send `POST /<endpoint>` to `target`; fall back to the `failover` key when the request could
/// not be sent. `what` is "switchover" or "failover". Prints the outcome.
pub async fn post_or_write_key(
    ctx: &Ctx,
    c: &Cluster,
    target: Option<&Member>,
    what: &str,
    body: &Value,
    key: &Failover,
) -> CtlResult {
    let endpoint = what;
    let attempt = match target {
        Some(m) => Some(
            ctx.rest(m, Method::POST, endpoint, Some(body), op_timeout(c))
                .await
                .map(|r| (m, r)),
        ),
        None => None,
    };
    match attempt {
        Some(Ok((_, r))) if r.status == 200 || r.status == 202 => {
            println!("{}", r.text());
            if r.status == 200 {
                if let Ok(after) = ctx.cluster().await {
                    print!("{}", list::table(ctx.scope(), &after));
                }
            }
            Ok(())
        }
        Some(Ok((m, r))) => fail(format!(
            "{} failed, details: {}, {} (sent to member {})",
            capitalized(what),
            r.status,
            r.text(),
            m.name
        )),
        Some(Err(e)) if !e.never_sent() => fail(format!(
            "{what} request to {} failed: {e}; the outcome is unknown (check `spiloctl list`)",
            target.map(|m| m.name.as_str()).unwrap_or("?")
        )),
        other => {
            let why = match other {
                Some(Err(e)) => format!("the REST API could not be reached: {e}"),
                _ => "no member to send the request to".to_string(),
            };
            let value = serde_json::to_vec(key).expect("JSON values serialize");
            match ctx.dcs.put("failover", &value, Cas::Any).await {
                Ok(true) => {
                    println!(
                        "{} request written directly to the DCS failover key ({why})",
                        capitalized(what)
                    );
                    Ok(())
                }
                Ok(false) => fail(format!("{what}: writing the failover key was refused")),
                Err(e) => fail(format!(
                    "{what}: {why}, and writing the failover key failed: {e}"
                )),
            }
        }
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The checked request: leader, candidate, schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The current leader.
    pub leader: String,
    /// The wanted new leader, if any.
    pub candidate: Option<String>,
    /// RFC 3339 time, if scheduled.
    pub scheduled_at: Option<String>,
}

/// Check the answers against the cluster.
pub fn plan(
    c: &Cluster,
    scope: &str,
    leader: &str,
    candidate: Option<&str>,
    scheduled: Option<&str>,
) -> CtlResult<Plan> {
    let Some(current) = c.leader.as_ref().map(|l| l.name.as_str()) else {
        return fail(format!("This cluster ({scope}) has no leader"));
    };
    if leader != current {
        return fail(format!(
            "Member {leader} is not the leader of cluster {scope} (the leader is {current})"
        ));
    }
    let candidate = candidate.map(str::trim).filter(|s| !s.is_empty());
    if let Some(cand) = candidate {
        check_candidate(c, scope, cand)?;
    } else if candidates(c).is_empty() {
        return fail(format!(
            "cluster {scope} has no members that can be promoted"
        ));
    }
    let scheduled_at = parse_schedule(scheduled.unwrap_or(""), now())?;
    if c.paused() {
        if scheduled_at.is_some() {
            return fail("Can't schedule switchover in the paused state");
        }
        if candidate.is_none() {
            return fail("Switchover is possible only to a specific candidate in a paused state");
        }
    }
    Ok(Plan {
        leader: leader.to_string(),
        candidate: candidate.map(str::to_string),
        scheduled_at,
    })
}

/// `spiloctl switchover`.
pub async fn run(ctx: &Ctx, args: &SwitchoverArgs) -> CtlResult {
    let c = ctx.cluster().await?;
    let scope = ctx.scope().to_string();
    let Some(current) = c.leader.as_ref().map(|l| l.name.clone()) else {
        return fail(format!("This cluster ({scope}) has no leader"));
    };
    let asking = ctx.console.interactive && !args.force;
    if asking {
        println!("Current cluster topology");
        print!("{}", list::table(&scope, &c));
    }
    let leader = match &args.leader {
        Some(l) => l.clone(),
        None => ctx.console.ask("Primary", &current)?,
    };
    let candidate = match &args.candidate {
        Some(cand) => Some(cand.clone()),
        None if asking => {
            let s = ctx
                .console
                .ask(&format!("Candidate {:?}", candidates(&c)), "")?;
            Some(s).filter(|s| !s.is_empty())
        }
        None => None,
    };
    let scheduled = match &args.scheduled {
        Some(s) => Some(s.clone()),
        None if asking => Some(ctx.console.ask(
            "When should the switchover take place (e.g. 2030-10-01T14:30)",
            "now",
        )?),
        None => None,
    };
    let p = plan(
        &c,
        &scope,
        &leader,
        candidate.as_deref(),
        scheduled.as_deref(),
    )?;
    let question = match &p.scheduled_at {
        Some(t) => format!(
            "Are you sure you want to schedule switchover of cluster {scope} at {t}, demoting \
             current leader {}?",
            p.leader
        ),
        None => format!(
            "Are you sure you want to switchover cluster {scope}, demoting current leader {}?",
            p.leader
        ),
    };
    ctx.console.confirm(&question, args.force)?;
    let body = request_body(
        Some(&p.leader),
        p.candidate.as_deref(),
        p.scheduled_at.as_deref(),
    );
    let key = Failover {
        leader: Some(p.leader.clone()),
        member: p.candidate.clone(),
        scheduled_at: p.scheduled_at.clone(),
    };
    let target = c.member(&p.leader);
    post_or_write_key(ctx, &c, target, "switchover", &body, &key).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ctl::common::tests::cluster;
    use crate::dcs::Versioned;

    #[test]
    fn bodies() {
        assert_eq!(
            request_body(Some("a"), Some("b"), Some("2030-01-01T00:00:00+00:00")),
            json!({"leader": "a", "candidate": "b", "scheduled_at": "2030-01-01T00:00:00+00:00"})
        );
        assert_eq!(request_body(Some("a"), None, None), json!({"leader": "a"}));
        assert_eq!(
            request_body(None, Some("b"), None),
            json!({"candidate": "b"})
        );
        let key = Failover {
            leader: Some("a".into()),
            member: None,
            scheduled_at: None,
        };
        assert_eq!(serde_json::to_string(&key).unwrap(), r#"{"leader":"a"}"#);
    }

    #[test]
    fn plans_are_checked() {
        let mut c = cluster(&["a", "b", "c"], Some("a"));
        c.members[2]
            .data
            .tags
            .insert("nofailover".into(), json!(true));
        assert_eq!(candidates(&c), vec!["b"]);
        let ok = plan(&c, "s", "a", Some("b"), None).unwrap();
        assert_eq!(
            ok,
            Plan {
                leader: "a".into(),
                candidate: Some("b".into()),
                scheduled_at: None
            }
        );
        assert_eq!(
            plan(&c, "s", "a", Some(" "), Some("now"))
                .unwrap()
                .candidate,
            None
        );
        let err = |c: &Cluster, l, cand, t| plan(c, "s", l, cand, t).unwrap_err().0;
        assert!(err(&c, "b", None, None).starts_with("Member b is not the leader of cluster s"));
        assert!(err(&c, "a", Some("a"), None).contains("already the leader"));
        assert!(err(&c, "a", Some("c"), None).contains("tagged as nofailover (candidates: b)"));
        assert!(err(&c, "a", Some("zz"), None).contains("does not exist"));
        assert!(err(&c, "a", None, Some("2001-01-01T00:00:00+00:00")).contains("in the past"));
        let t = plan(&c, "s", "a", None, Some("2099-01-01T00:00:00+00:00"))
            .unwrap()
            .scheduled_at;
        assert_eq!(t.as_deref(), Some("2099-01-01T00:00:00+00:00"));

        c.config = Some(Versioned {
            value: crate::config::DynamicConfig {
                pause: true,
                ..Default::default()
            },
            version: 1,
        });
        assert!(err(&c, "a", None, None).contains("only to a specific candidate"));
        assert!(err(&c, "a", Some("b"), Some("2099-01-01T00:00")).contains("paused state"));
        let no_leader = cluster(&["a"], None);
        assert!(plan(&no_leader, "s", "a", None, None)
            .unwrap_err()
            .0
            .contains("has no leader"));
        let alone = cluster(&["a"], Some("a"));
        assert!(plan(&alone, "s", "a", None, None)
            .unwrap_err()
            .0
            .contains("no members that can be promoted"));
    }

    #[test]
    fn timeouts_follow_loop_wait() {
        let mut c = Cluster::default();
        assert_eq!(op_timeout(&c), Duration::from_secs(35));
        c.config = Some(Versioned {
            value: crate::config::DynamicConfig {
                loop_wait: 30,
                ..Default::default()
            },
            version: 1,
        });
        assert_eq!(op_timeout(&c), Duration::from_secs(75));
        assert_eq!(capitalized("failover"), "Failover");
    }

    #[tokio::test]
    async fn unreachable_api_falls_back_to_the_failover_key() {
        use std::sync::Arc;

        use crate::ctl::common::tests::{ctx, dead_url, MemDcs};

        let dcs = Arc::new(MemDcs::default());
        dcs.set("leader", "a");
        for n in ["a", "b"] {
            let m = json!({"api_url": dead_url(), "conn_url": "postgres://127.0.0.1:5432/postgres",
                           "state": "running", "role": "replica"});
            dcs.set(&format!("members/{n}"), &m.to_string());
        }
        let ctx = ctx(dcs.clone());
        let args = SwitchoverArgs {
            candidate: Some("b".into()),
            force: true,
            ..SwitchoverArgs::default()
        };
        run(&ctx, &args).await.unwrap();
        assert_eq!(
            dcs.get("failover").unwrap(),
            r#"{"leader":"a","member":"b"}"#
        );
        // Failover too (the candidate only).
        crate::ctl::failover::run(&ctx, Some("b"), true)
            .await
            .unwrap();
        assert_eq!(dcs.get("failover").unwrap(), r#"{"member":"b"}"#);
        // Unconfirmed: nothing sent.
        let e = crate::ctl::failover::run(&ctx, Some("b"), false)
            .await
            .unwrap_err();
        assert!(e.0.contains("not confirmed"), "{e}");
        assert!(crate::ctl::failover::run(&ctx, None, true)
            .await
            .unwrap_err()
            .0
            .contains("needs a candidate"));
    }
}
