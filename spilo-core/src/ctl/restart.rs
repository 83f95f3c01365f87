//! `spiloctl restart`: `POST /restart` to each chosen member, with the filters as the body.

use std::time::Duration;

use hyper::Method;
use serde_json::{Map, Value};

use super::common::{
    fail, names, now, parse_schedule, select_members, CtlResult, Ctx, RoleFilter, REST_TIMEOUT,
};
use crate::dcs::{Cluster, Member};

/// What was asked.
#[derive(Clone, Debug)]
pub struct RestartArgs {
    /// Members (all when empty).
    pub members: Vec<String>,
    /// Role filter.
    pub role: RoleFilter,
    /// `--scheduled`.
    pub scheduled: Option<String>,
    /// `--pg-version`.
    pub pg_version: Option<String>,
    /// `--pending`.
    pub pending: bool,
    /// `--timeout` seconds.
    pub timeout: Option<u64>,
    /// Do not ask; replace an already scheduled restart.
    pub force: bool,
}

/// A PostgreSQL version such as `16`, `16.4` or `9.6.24`.
pub fn check_pg_version(v: &str) -> CtlResult<String> {
    let v = v.trim();
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return fail(format!(
            "invalid PostgreSQL version {v:?}: expected e.g. 16.4 or 9.6.24"
        ));
    }
    Ok(v.to_string())
}

/// The `POST /restart` body.
pub fn body(
    role: RoleFilter,
    schedule: Option<&str>,
    pg_version: Option<&str>,
    pending: bool,
    timeout: Option<u64>,
) -> Value {
    let mut m = Map::new();
    if let Some(s) = schedule {
        m.insert("schedule".into(), s.into());
    }
    if let Some(r) = role.restart_role() {
        m.insert("role".into(), r.into());
    }
    if let Some(v) = pg_version {
        m.insert("postgres_version".into(), v.into());
    }
    if pending {
        m.insert("restart_pending".into(), true.into());
    }
    if let Some(t) = timeout {
        m.insert("timeout".into(), t.into());
    }
    Value::Object(m)
}

/// The member has a restart scheduled (published in its key).
pub fn has_scheduled_restart(m: &Member) -> bool {
    m.data
        .extra
        .get("scheduled_restart")
        .is_some_and(|v| !v.is_null())
}

/// How long an immediate restart may take to answer.
fn answer_timeout(c: &Cluster, timeout: Option<u64>) -> Duration {
    let start = timeout.unwrap_or_else(|| {
        c.config
            .as_ref()
            .map(|v| v.value.primary_start_timeout)
            .unwrap_or(300)
    });
    Duration::from_secs(start.max(30) + 30)
}

/// `spiloctl restart`.
pub async fn run(ctx: &Ctx, args: &RestartArgs) -> CtlResult {
    let c = ctx.cluster().await?;
    let members = select_members(&c, &args.members, args.role)?;
    if members.is_empty() {
        return fail(format!("no member matches the role filter {:?}", args.role));
    }
    let pg_version = args
        .pg_version
        .as_deref()
        .map(check_pg_version)
        .transpose()?;
    if args.timeout == Some(0) {
        return fail("--timeout must be at least 1 second");
    }
    let scheduled = match &args.scheduled {
        Some(s) => Some(s.clone()),
        None if ctx.console.interactive && !args.force => Some(ctx.console.ask(
            "When should the restart take place (e.g. 2030-10-01T14:30)",
            "now",
        )?),
        None => None,
    };
    let schedule = parse_schedule(scheduled.as_deref().unwrap_or(""), now())?;
    let when = schedule
        .as_deref()
        .map(|t| format!(" at {t}"))
        .unwrap_or_default();
    ctx.console.confirm(
        &format!(
            "Are you sure you want to restart members {}{when}?",
            names(&members)
        ),
        args.force,
    )?;
    let body = body(
        args.role,
        schedule.as_deref(),
        pg_version.as_deref(),
        args.pending,
        args.timeout,
    );
    let timeout = answer_timeout(&c, args.timeout);
    let mut failed = Vec::new();
    for m in &members {
        if args.force && has_scheduled_restart(m) {
            match ctx
                .rest(m, Method::DELETE, "restart", None, REST_TIMEOUT)
                .await
            {
                Ok(r) if r.ok() || r.status == 404 => {}
                Ok(r) => eprintln!(
                    "Warning: could not delete the scheduled restart of member {}: status \
                     code={}, ({})",
                    m.name,
                    r.status,
                    r.text()
                ),
                Err(e) => eprintln!(
                    "Warning: could not delete the scheduled restart of member {}: {e}",
                    m.name
                ),
            }
        }
        match ctx
            .rest(m, Method::POST, "restart", Some(&body), timeout)
            .await
        {
            Ok(r) if r.status == 200 => println!("Success: restart on member {}", m.name),
            Ok(r) if r.status == 202 => {
                println!("Success: restart scheduled on member {}", m.name)
            }
            Ok(r) => {
                eprintln!(
                    "Failed: restart for member {}, status code={}, ({})",
                    m.name,
                    r.status,
                    r.text()
                );
                failed.push(m.name.clone());
            }
            Err(e) => {
                eprintln!("Failed: restart for member {}: {e}", m.name);
                failed.push(m.name.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        fail(format!("restart failed on: {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ctl::common::tests::cluster;

    #[test]
    fn restart_bodies() {
        assert_eq!(body(RoleFilter::Any, None, None, false, None), json!({}));
        assert_eq!(
            body(
                RoleFilter::Replica,
                Some("2030-01-01T00:00:00+00:00"),
                Some("16.4"),
                true,
                Some(60)
            ),
            json!({"schedule": "2030-01-01T00:00:00+00:00", "role": "replica",
                   "postgres_version": "16.4", "restart_pending": true, "timeout": 60})
        );
        assert_eq!(
            body(RoleFilter::Primary, None, None, false, None),
            json!({"role": "primary"})
        );
        assert_eq!(body(RoleFilter::Leader, None, None, false, None), json!({}));
    }

    #[test]
    fn versions_and_schedules() {
        assert_eq!(check_pg_version(" 16.4 ").unwrap(), "16.4");
        assert!(check_pg_version("9.6.24").is_ok());
        assert!(check_pg_version("16").is_ok());
        for bad in ["", "16.", "x", "1.2.3.4", "16beta1"] {
            assert!(check_pg_version(bad).is_err(), "{bad}");
        }
        let mut c = cluster(&["a"], Some("a"));
        assert!(!has_scheduled_restart(&c.members[0]));
        c.members[0].data.extra.insert(
            "scheduled_restart".into(),
            json!({"schedule": "2030-01-01T00:00:00+00:00"}),
        );
        assert!(has_scheduled_restart(&c.members[0]));
        assert_eq!(answer_timeout(&c, Some(5)), Duration::from_secs(60));
        assert_eq!(answer_timeout(&c, None), Duration::from_secs(330));
    }

    #[tokio::test]
    async fn failures_are_reported_per_member() {
        use std::sync::Arc;

        use crate::ctl::common::tests::{ctx, dead_url, MemDcs};

        let dcs = Arc::new(MemDcs::default());
        dcs.set("leader", "a");
        for n in ["a", "b"] {
            let m = json!({"api_url": dead_url(), "state": "running"});
            dcs.set(&format!("members/{n}"), &m.to_string());
        }
        let ctx = ctx(dcs.clone());
        let args = RestartArgs {
            members: vec![],
            role: RoleFilter::Any,
            scheduled: None,
            pg_version: None,
            pending: false,
            timeout: None,
            force: true,
        };
        let e = run(&ctx, &args).await.unwrap_err();
        assert_eq!(e.0, "restart failed on: a, b");
        let replicas = RestartArgs {
            role: RoleFilter::Replica,
            ..args.clone()
        };
        assert_eq!(
            run(&ctx, &replicas).await.unwrap_err().0,
            "restart failed on: b"
        );
        let bad = RestartArgs {
            pg_version: Some("x".into()),
            ..args.clone()
        };
        assert!(run(&ctx, &bad)
            .await
            .unwrap_err()
            .0
            .contains("invalid PostgreSQL version"));
        let e = crate::ctl::version::run(&ctx, &[]).await.unwrap_err();
        assert_eq!(e.0, "no version from: a, b");
        let e = crate::ctl::reload::run(&ctx, &["b".into()], RoleFilter::Any, true)
            .await
            .unwrap_err();
        assert_eq!(e.0, "reload failed on: b");
        let e = crate::ctl::reinit::run(&ctx, &["a".into()], false, false, true)
            .await
            .unwrap_err();
        assert_eq!(e.0, "reinitialize failed on: a");
    }
}
