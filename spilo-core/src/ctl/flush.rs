//! `spiloctl flush [MEMBER...] restart|switchover`: cancel scheduled restarts
//! (`DELETE /restart` per member) or a scheduled switchover (`DELETE /switchover`, the leader
//! first; the `failover` key directly when no API can be reached).

use hyper::Method;

use super::common::{fail, names, select_members, CtlResult, Ctx, RoleFilter, REST_TIMEOUT};
use super::pause::leader_first;
use super::restart::has_scheduled_restart;
use crate::dcs::{Cas, Cluster, Member};

/// What to flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Scheduled restarts.
    Restart,
    /// A scheduled switchover.
    Switchover,
}

/// `[MEMBER...] restart|switchover`: the last word is the target.
pub fn parse_args(args: &[String]) -> CtlResult<(Vec<String>, Target)> {
    let Some((last, members)) = args.split_last() else {
        return fail("flush needs a target: restart or switchover");
    };
    let target = match last.as_str() {
        "restart" => Target::Restart,
        "switchover" => Target::Switchover,
        other => {
            return fail(format!(
                "invalid flush target {other:?}: the last argument must be restart or switchover"
            ))
        }
    };
    Ok((members.to_vec(), target))
}

/// The members (in `chosen`) with a restart scheduled.
pub fn with_scheduled_restart<'a>(chosen: &[&'a Member]) -> Vec<&'a Member> {
    chosen
        .iter()
        .copied()
        .filter(|m| has_scheduled_restart(m))
        .collect()
}

/// The scheduled switchover, if any: `(at, from, to)`.
pub fn scheduled_switchover(c: &Cluster) -> Option<(String, String, String)> {
    let f = &c.failover.as_ref()?.value;
    let at = f.scheduled_at.clone()?;
    Some((
        at,
        f.leader.clone().unwrap_or_default(),
        f.member.clone().unwrap_or_default(),
    ))
}

async fn flush_restarts(ctx: &Ctx, c: &Cluster, members: &[String], force: bool) -> CtlResult {
    let chosen = select_members(c, members, RoleFilter::Any)?;
    let todo = with_scheduled_restart(&chosen);
    if todo.is_empty() {
        println!("No scheduled restart on members {}", names(&chosen));
        return Ok(());
    }
    ctx.console.confirm(
        &format!(
            "Are you sure you want to flush the scheduled restarts of members {}?",
            names(&todo)
        ),
        force,
    )?;
    let mut failed = Vec::new();
    for m in todo {
        match ctx
            .rest(m, Method::DELETE, "restart", None, REST_TIMEOUT)
            .await
        {
            Ok(r) if r.status == 200 => {
                println!("Success: flush scheduled restart for member {}", m.name)
            }
            Ok(r) if r.status == 404 => println!("No scheduled restart for member {}", m.name),
            Ok(r) => {
                eprintln!(
                    "Failed: flush scheduled restart for member {}, status code={}, ({})",
                    m.name,
                    r.status,
                    r.text()
                );
                failed.push(m.name.clone());
            }
            Err(e) => {
                eprintln!("Failed: flush scheduled restart for member {}: {e}", m.name);
                failed.push(m.name.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        fail(format!("flush failed on: {}", failed.join(", ")))
    }
}

async fn flush_switchover(ctx: &Ctx, c: &Cluster, members: &[String], force: bool) -> CtlResult {
    let Some((at, from, to)) = scheduled_switchover(c) else {
        println!("No pending scheduled switchover");
        return Ok(());
    };
    let to = if to.is_empty() {
        String::new()
    } else {
        format!(" to {to}")
    };
    ctx.console.confirm(
        &format!(
            "Are you sure you want to flush the switchover scheduled at {at} from {from}{to}?"
        ),
        force,
    )?;
    // The leader first, then the others (or only the members named).
    let targets: Vec<&Member> = if members.is_empty() {
        leader_first(c)
    } else {
        select_members(c, members, RoleFilter::Any)?
    };
    let mut unreachable = true;
    for m in targets {
        match ctx
            .rest(m, Method::DELETE, "switchover", None, REST_TIMEOUT)
            .await
        {
            Ok(r) if r.ok() => {
                println!("Success: {}", r.text());
                return Ok(());
            }
            Ok(r) if r.status == 404 => {
                println!("No pending scheduled switchover ({})", r.text());
                return Ok(());
            }
            Ok(r) => {
                unreachable = false;
                eprintln!(
                    "Failed: DELETE /switchover on member {}, status code={}, ({})",
                    m.name,
                    r.status,
                    r.text()
                );
            }
            Err(e) => {
                if !e.never_sent() {
                    unreachable = false;
                }
                eprintln!("Failed: DELETE /switchover on member {}: {e}", m.name);
            }
        }
    }
    if !unreachable {
        return fail("no member deleted the scheduled switchover");
    }
    let version = c.failover.as_ref().map(|f| f.version).unwrap_or_default();
    match ctx.dcs.put("failover", b"{}", Cas::Version(version)).await {
        Ok(true) => {
            println!(
                "Success: scheduled switchover deleted directly in the DCS (no API reachable)"
            );
            Ok(())
        }
        Ok(false) => fail("the failover key changed meanwhile; nothing was flushed"),
        Err(e) => fail(format!("cannot write the failover key: {e}")),
    }
}

/// `spiloctl flush`.
pub async fn run(ctx: &Ctx, args: &[String], force: bool) -> CtlResult {
    let (members, target) = parse_args(args)?;
    let c = ctx.cluster().await?;
    match target {
        Target::Restart => flush_restarts(ctx, &c, &members, force).await,
        Target::Switchover => flush_switchover(ctx, &c, &members, force).await,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ctl::common::tests::cluster;
    use crate::dcs::{Failover, Versioned};

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&v(&["restart"])).unwrap(),
            (vec![], Target::Restart)
        );
        assert_eq!(
            parse_args(&v(&["a", "b", "switchover"])).unwrap(),
            (v(&["a", "b"]), Target::Switchover)
        );
        assert!(parse_args(&[]).unwrap_err().0.contains("needs a target"));
        assert!(parse_args(&v(&["restart", "a"]))
            .unwrap_err()
            .0
            .contains("invalid flush target \"a\""));
    }

    #[test]
    fn what_is_scheduled() {
        let mut c = cluster(&["a", "b"], Some("a"));
        assert!(scheduled_switchover(&c).is_none());
        c.failover = Some(Versioned {
            value: Failover {
                leader: Some("a".into()),
                member: Some("b".into()),
                scheduled_at: None,
            },
            version: 4,
        });
        assert!(scheduled_switchover(&c).is_none());
        c.failover.as_mut().unwrap().value.scheduled_at = Some("2030-01-01T00:00:00+00:00".into());
        assert_eq!(
            scheduled_switchover(&c).unwrap(),
            (
                "2030-01-01T00:00:00+00:00".to_string(),
                "a".to_string(),
                "b".to_string()
            )
        );
        c.members[1]
            .data
            .extra
            .insert("scheduled_restart".into(), json!({"schedule": "x"}));
        let all: Vec<&Member> = c.members.iter().collect();
        let names: Vec<&str> = with_scheduled_restart(&all)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, vec!["b"]);
    }

    #[tokio::test]
    async fn unreachable_apis_flush_through_the_dcs() {
        use std::sync::Arc;

        use crate::ctl::common::tests::{ctx, dead_url, MemDcs};

        let dcs = Arc::new(MemDcs::default());
        dcs.set("leader", "a");
        let m = json!({"api_url": dead_url(), "state": "running", "role": "primary"});
        dcs.set("members/a", &m.to_string());
        dcs.set(
            "failover",
            r#"{"leader":"a","member":"b","scheduled_at":"2099-01-01T00:00:00+00:00"}"#,
        );
        let ctx = ctx(dcs.clone());
        run(&ctx, &v(&["switchover"]), true).await.unwrap();
        assert_eq!(dcs.get("failover").unwrap(), "{}");
        // Nothing scheduled any more: nothing to do.
        run(&ctx, &v(&["switchover"]), true).await.unwrap();
        // Restarts: member a has one scheduled but cannot be reached.
        let m = json!({"api_url": dead_url(), "state": "running", "role": "primary",
                       "scheduled_restart": {"schedule": "2099-01-01T00:00:00+00:00"}});
        dcs.set("members/a", &m.to_string());
        let e = run(&ctx, &v(&["a", "restart"]), true).await.unwrap_err();
        assert_eq!(e.0, "flush failed on: a");
        let e = run(&ctx, &v(&["zz", "restart"]), true).await.unwrap_err();
        assert!(e.0.contains("unknown member zz"), "{e}");
    }
}
