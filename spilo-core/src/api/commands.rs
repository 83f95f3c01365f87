//! `POST /restart`, `DELETE /restart`, `POST /reinitialize` and `POST /reload`: validated here,
//! executed by the HA loop, which answers with a status and a message that are relayed as is.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::mutate::json_kind;
use super::switchover::parse_schedule;
use super::{ApiContext, Reply};
use crate::ha::command::{Command, CommandReply, RestartRequest};
use crate::ha::state::NodeState;

/// `server_version_num` of a `postgres_version` filter: `"15"`, `"15.4"`, `"9.6.24"`, or a number
/// that already is one (`150004`).
pub fn parse_postgres_version(v: &Value) -> Option<i64> {
    let text = match v {
        Value::Number(n) => {
            let n = n.as_i64()?;
            return (n >= 90000).then_some(n).or_else(|| {
                // A bare major version such as 15.
                (10..1000).contains(&n).then_some(n * 10000)
            });
        }
        Value::String(s) => s.trim(),
        _ => return None,
    };
    let parts: Vec<i64> = text
        .split('.')
        .map(|p| p.parse::<i64>().ok().filter(|x| *x >= 0))
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [major] if *major >= 10 => Some(major * 10000),
        [major, minor] if *major >= 10 && *minor < 10000 => Some(major * 10000 + minor),
        [major, minor, patch] if *major < 10 && *minor < 100 && *patch < 100 => {
            Some(major * 10000 + minor * 100 + patch)
        }
        _ => None,
    }
}

/// Seconds of a `timeout` filter: a positive number, or a string with an optional unit (`ms`,
/// `s`, `min`, `h`, `d`; seconds by default). Fractions are rounded up.
pub fn parse_timeout(v: &Value) -> Option<u64> {
    let secs = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let t = s.trim();
            let split = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let n: f64 = num.parse().ok()?;
            let mult = match unit.trim() {
                "" | "s" => 1.0,
                "ms" => 0.001,
                "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return None,
            };
            n * mult
        }
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0 && secs < 1e12).then(|| secs.ceil() as u64)
}

/// Validate a `POST /restart` body (400, or 422 for a schedule in the past or unparseable).
pub fn parse_restart_request(
    body: &Map<String, Value>,
    now: chrono::DateTime<Utc>,
) -> Result<RestartRequest, Reply> {
    let mut req = RestartRequest::default();
    for (key, value) in body {
        match key.as_str() {
            "schedule" => {
                if !value.is_null() {
                    req.schedule = Some(parse_schedule(value, "restart", now)?);
                }
            }
            "role" => {
                req.role =
                    match value.as_str() {
                        Some("primary" | "master") => Some("primary".into()),
                        Some(r @ ("standby_leader" | "replica")) => Some(r.to_string()),
                        _ => return Err(Reply::text(
                            400,
                            "PostgreSQL role should be either primary, standby_leader, or replica",
                        )),
                    }
            }
            "postgres_version" => {
                req.postgres_version = Some(parse_postgres_version(value).ok_or_else(|| {
                    Reply::text(
                        400,
                        "PostgreSQL version should be in the first.major.minor format",
                    )
                })?)
            }
            "timeout" => {
                req.timeout = Some(parse_timeout(value).ok_or_else(|| {
                    Reply::text(400, "Timeout should be a positive number of seconds")
                })?)
            }
            "restart_pending" => {
                req.restart_pending = match value {
                    Value::Bool(b) => *b,
                    Value::Null => false,
                    other => {
                        return Err(Reply::text(
                            400,
                            format!(
                                "restart_pending must be a boolean, not {}",
                                json_kind(other)
                            ),
                        ))
                    }
                }
            }
            other => {
                return Err(Reply::text(
                    400,
                    format!("Unknown filter for the scheduled restart: {other}"),
                ))
            }
        }
    }
    Ok(req)
}

/// Send a command built around a reply channel and relay the loop's answer; 503 when there is
/// no loop to ask or it does not answer within `deadline`.
async fn ask(
    ctx: &ApiContext,
    deadline: Duration,
    make: impl FnOnce(oneshot::Sender<CommandReply>) -> Command,
) -> Reply {
    let Some(commands) = &ctx.commands else {
        return Reply::text(503, "The HA loop does not accept commands");
    };
    let (tx, rx) = oneshot::channel();
    let work = async {
        commands
            .send(make(tx))
            .await
            .map_err(|_| "The HA loop is not running")?;
        rx.await.map_err(|_| "The HA loop dropped the request")
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(Ok(reply)) => Reply::text(reply.status, reply.message),
        Ok(Err(m)) => Reply::text(503, m),
        Err(_) => Reply::text(
            503,
            format!(
                "The HA loop did not answer within {} seconds",
                deadline.as_secs()
            ),
        ),
    }
}

/// `2 * ttl` seconds: how long a command may wait for the loop to pick it up.
fn loop_deadline(s: &NodeState) -> Duration {
    Duration::from_secs(s.dynamic.ttl.saturating_mul(2).max(1))
}

/// `POST /restart`.
pub(crate) async fn restart(ctx: &ApiContext, s: &NodeState, body: &Map<String, Value>) -> Reply {
    let request = match parse_restart_request(body, Utc::now()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if request.schedule.is_some() && s.paused() {
        return Reply::text(500, "Can't schedule restart in the paused state");
    }
    let wait = request.timeout.unwrap_or(s.dynamic.primary_start_timeout);
    let deadline = loop_deadline(s).saturating_add(Duration::from_secs(wait));
    ask(ctx, deadline, |reply| Command::Restart { request, reply }).await
}

/// `DELETE /restart`.
pub(crate) async fn cancel_restart(ctx: &ApiContext, s: &NodeState) -> Reply {
    ask(ctx, loop_deadline(s), |reply| Command::CancelRestart {
        reply,
    })
    .await
}

fn bool_field(body: &Map<String, Value>, key: &str) -> Result<bool, Reply> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Reply::text(
            400,
            format!("{key} must be a boolean, not {}", json_kind(other)),
        )),
    }
}

/// `POST /reinitialize` (`{"force": bool, "from_leader": bool}`, both optional).
pub(crate) async fn reinitialize(
    ctx: &ApiContext,
    s: &NodeState,
    body: &Map<String, Value>,
) -> Reply {
    let (force, from_leader) = match (bool_field(body, "force"), bool_field(body, "from_leader")) {
        (Ok(f), Ok(l)) => (f, l),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    ask(ctx, loop_deadline(s), |reply| Command::Reinitialize {
        force,
        from_leader,
        reply,
    })
    .await
}

/// `POST /reload`.
pub(crate) async fn reload(ctx: &ApiContext, s: &NodeState) -> Reply {
    ask(ctx, loop_deadline(s), |reply| Command::Reload {
        reply: Some(reply),
    })
    .await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::testutil::{call, context, restapi};
    use crate::ha::command::CommandRx;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// A context whose loop answers every command with `answer(&command)`.
    fn with_loop(
        s: NodeState,
        answer: impl Fn(&Command) -> Option<CommandReply> + Send + 'static,
    ) -> (ApiContext, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (mut ctx, tx) = context(s, None, restapi(None));
        std::mem::forget(tx);
        let (cmd_tx, mut cmd_rx): (_, CommandRx) = tokio::sync::mpsc::channel(4);
        let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
        ctx.commands = Some(cmd_tx);
        tokio::spawn(async move {
            while let Some(cmd) = cmd_rx.recv().await {
                let _ = seen_tx.send(format!("{cmd:?}"));
                let r = answer(&cmd);
                match (cmd, r) {
                    (_, None) => {} // dropped: no answer
                    (Command::Restart { reply, .. }, Some(r))
                    | (Command::CancelRestart { reply }, Some(r))
                    | (Command::Reinitialize { reply, .. }, Some(r)) => {
                        let _ = reply.send(r);
                    }
                    (Command::Reload { reply }, Some(r)) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(r);
                        }
                    }
                }
            }
        });
        (ctx, seen_rx)
    }

    #[test]
    fn restart_filters() {
        let now = Utc::now();
        let r = parse_restart_request(
            &obj(json!({
                "schedule": "2099-01-01T00:00:00+01:00", "role": "master",
                "postgres_version": "15.4", "timeout": "2min", "restart_pending": true,
            })),
            now,
        )
        .unwrap();
        assert_eq!(
            r.schedule.unwrap().to_rfc3339(),
            "2099-01-01T00:00:00+01:00"
        );
        assert_eq!(r.role.as_deref(), Some("primary"));
        assert_eq!(r.postgres_version, Some(150004));
        assert_eq!(r.timeout, Some(120));
        assert!(r.restart_pending);
        assert_eq!(
            parse_restart_request(&Map::new(), now).unwrap(),
            RestartRequest::default()
        );

        let e = |v: Value| {
            let r = parse_restart_request(&obj(v), now).unwrap_err();
            (r.status, r.message().to_string())
        };
        assert_eq!(
            e(json!({"foo": 1})),
            (400, "Unknown filter for the scheduled restart: foo".into())
        );
        assert_eq!(e(json!({"role": "leader"})).0, 400);
        assert_eq!(e(json!({"postgres_version": "fifteen"})).0, 400);
        assert_eq!(e(json!({"timeout": 0})).0, 400);
        assert_eq!(e(json!({"timeout": "-5"})).0, 400);
        assert_eq!(e(json!({"restart_pending": "yes"})).0, 400);
        assert_eq!(e(json!({"schedule": "2099-01-01T00:00:00"})).0, 400);
        assert_eq!(e(json!({"schedule": "2001-01-01T00:00:00+00:00"})).0, 422);
        assert_eq!(e(json!({"schedule": "whenever"})).0, 422);

        assert_eq!(parse_postgres_version(&json!("9.6.24")), Some(90624));
        assert_eq!(parse_postgres_version(&json!("16")), Some(160000));
        assert_eq!(parse_postgres_version(&json!(160004)), Some(160004));
        assert_eq!(parse_postgres_version(&json!(17)), Some(170000));
        assert_eq!(parse_postgres_version(&json!("9.6")), None);
        assert_eq!(parse_postgres_version(&json!("15.4.1")), None);
        assert_eq!(parse_timeout(&json!(1.5)), Some(2));
        assert_eq!(parse_timeout(&json!("30")), Some(30));
        assert_eq!(parse_timeout(&json!("1h")), Some(3600));
        assert_eq!(parse_timeout(&json!("5 parsecs")), None);
    }

    #[tokio::test]
    async fn restart_is_relayed() {
        let (ctx, mut seen) = with_loop(NodeState::new("pg0", "demo", ""), |c| match c {
            Command::Restart { request, .. } if request.schedule.is_some() => {
                Some(CommandReply::new(202, "Restart scheduled"))
            }
            Command::Restart { .. } => Some(CommandReply::new(200, "restarted successfully")),
            Command::CancelRestart { .. } => {
                Some(CommandReply::new(404, "no restarts are scheduled"))
            }
            _ => None,
        });
        let r = call(&ctx, "POST", "/restart", None).await;
        assert_eq!((r.status, r.message()), (200, "restarted successfully"));
        assert!(seen.recv().await.unwrap().starts_with("Restart"));
        let r = call(
            &ctx,
            "POST",
            "/restart",
            Some(r#"{"schedule": "2099-01-01T00:00:00Z", "role": "replica", "timeout": 30}"#),
        )
        .await;
        assert_eq!((r.status, r.message()), (202, "Restart scheduled"));
        let cmd = seen.recv().await.unwrap();
        assert!(
            cmd.contains("role: Some(\"replica\")") && cmd.contains("timeout: Some(30)"),
            "{cmd}"
        );
        let r = call(&ctx, "DELETE", "/restart", None).await;
        assert_eq!((r.status, r.message()), (404, "no restarts are scheduled"));
        assert!(seen.recv().await.unwrap().starts_with("CancelRestart"));
        // Validation errors never reach the loop.
        let r = call(&ctx, "POST", "/restart", Some(r#"{"bogus": true}"#)).await;
        assert_eq!(
            (r.status, r.message()),
            (400, "Unknown filter for the scheduled restart: bogus")
        );
        assert!(seen.try_recv().is_err());
    }

    #[tokio::test]
    async fn scheduled_restart_refused_while_paused() {
        let mut s = NodeState::new("pg0", "demo", "");
        s.dynamic.pause = true;
        let (ctx, mut seen) = with_loop(s, |_| Some(CommandReply::new(200, "ok")));
        let r = call(
            &ctx,
            "POST",
            "/restart",
            Some(r#"{"schedule": "2099-01-01T00:00:00Z"}"#),
        )
        .await;
        assert_eq!(
            (r.status, r.message()),
            (500, "Can't schedule restart in the paused state")
        );
        assert!(seen.try_recv().is_err());
        // An immediate restart is fine while paused.
        assert_eq!(call(&ctx, "POST", "/restart", Some("{}")).await.status, 200);
    }

    #[tokio::test]
    async fn reinitialize_and_reload() {
        let (ctx, mut seen) = with_loop(NodeState::new("pg1", "demo", ""), |c| match c {
            Command::Reinitialize { force: true, .. } => Some(CommandReply::new(
                503,
                "I am the leader, can not reinitialize",
            )),
            Command::Reinitialize { .. } => Some(CommandReply::new(200, "reinitialize started")),
            Command::Reload { .. } => Some(CommandReply::new(202, "reload scheduled")),
            _ => None,
        });
        let r = call(&ctx, "POST", "/reinitialize", Some(r#"{"force": true}"#)).await;
        assert_eq!(
            (r.status, r.message()),
            (503, "I am the leader, can not reinitialize")
        );
        let r = call(
            &ctx,
            "POST",
            "/reinitialize",
            Some(r#"{"from_leader": true}"#),
        )
        .await;
        assert_eq!((r.status, r.message()), (200, "reinitialize started"));
        let _ = seen.recv().await;
        assert!(seen.recv().await.unwrap().contains("from_leader: true"));
        let r = call(&ctx, "POST", "/reinitialize", Some(r#"{"force": "yes"}"#)).await;
        assert_eq!(
            (r.status, r.message()),
            (400, "force must be a boolean, not a string")
        );
        let r = call(&ctx, "POST", "/reload", None).await;
        assert_eq!((r.status, r.message()), (202, "reload scheduled"));
    }

    #[tokio::test]
    async fn no_loop_or_no_answer_is_503() {
        let (ctx, _tx) = context(NodeState::new("pg0", "demo", ""), None, restapi(None));
        for (m, p) in [
            ("POST", "/restart"),
            ("DELETE", "/restart"),
            ("POST", "/reinitialize"),
            ("POST", "/reload"),
        ] {
            assert_eq!(call(&ctx, m, p, None).await.status, 503, "{m} {p}");
        }
        // The loop drops the reply channel.
        let (ctx, _seen) = with_loop(NodeState::new("pg0", "demo", ""), |_| None);
        let r = call(&ctx, "POST", "/reload", None).await;
        assert_eq!(
            (r.status, r.message()),
            (503, "The HA loop dropped the request")
        );
        // The loop never answers: the deadline (2 * ttl, ttl 0 → 1 s floor) passes.
        let mut s = NodeState::new("pg0", "demo", "");
        s.dynamic.ttl = 0;
        let (mut ctx, _tx) = context(s, None, restapi(None));
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(1);
        ctx.commands = Some(cmd_tx);
        let r = call(&ctx, "DELETE", "/restart", None).await;
        assert_eq!(r.status, 503);
        assert!(r.message().contains("did not answer"), "{}", r.message());
        drop(cmd_rx);
    }
}
