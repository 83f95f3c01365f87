//! `spiloctl reinit`: `POST /reinitialize` to each named member (never the leader); with
//! `--wait`, poll each member's status until PostgreSQL runs again.

use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use super::common::{fail, names, select_members, CtlResult, Ctx, RoleFilter, REST_TIMEOUT};

/// How long `--wait` waits at most.
pub const WAIT_LIMIT: Duration = Duration::from_secs(3600);
/// How long to wait for a member to leave `running` after the request was accepted.
const START_GRACE: Duration = Duration::from_secs(15);

/// The `POST /reinitialize` body.
pub fn body(from_leader: bool) -> Value {
    json!({"force": true, "from_leader": from_leader})
}

/// Where a reinitialization stands, from the member's `state` and what was seen before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not started yet (still `running` as before the request).
    NotStarted,
    /// Under way.
    Running,
    /// PostgreSQL runs again.
    Done,
}

/// `state` now, and whether a non-running state was seen since the request.
pub fn progress(state: &str, seen_other: bool) -> Progress {
    match state {
        "running" if seen_other => Progress::Done,
        "running" => Progress::NotStarted,
        _ => Progress::Running,
    }
}

/// `spiloctl reinit`.
pub async fn run(
    ctx: &Ctx,
    members: &[String],
    from_leader: bool,
    wait: bool,
    force: bool,
) -> CtlResult {
    if members.is_empty() {
        return fail("reinit needs at least one member name");
    }
    let c = ctx.cluster().await?;
    let chosen = select_members(&c, members, RoleFilter::Any)?;
    ctx.console.confirm(
        &format!(
            "Are you sure you want to reinitialize members {}?",
            names(&chosen)
        ),
        force,
    )?;
    let leader = c.leader.as_ref().map(|l| l.name.as_str());
    let body = body(from_leader);
    let mut failed = Vec::new();
    let mut started = Vec::new();
    for m in &chosen {
        if Some(m.name.as_str()) == leader {
            eprintln!(
                "Failed: reinitialize for member {}: it is the leader",
                m.name
            );
            failed.push(m.name.clone());
            continue;
        }
        match ctx
            .rest(m, Method::POST, "reinitialize", Some(&body), REST_TIMEOUT)
            .await
        {
            Ok(r) if r.status == 200 => {
                println!("Success: reinitialize for member {}", m.name);
                started.push(*m);
            }
            Ok(r) => {
                eprintln!(
                    "Failed: reinitialize for member {}, status code={}, ({})",
                    m.name,
                    r.status,
                    r.text()
                );
                failed.push(m.name.clone());
            }
            Err(e) => {
                eprintln!("Failed: reinitialize for member {}: {e}", m.name);
                failed.push(m.name.clone());
            }
        }
    }
    if wait && !started.is_empty() {
        println!(
            "Waiting for reinitialize to complete on: {}",
            names(&started)
        );
        let begin = crate::clock::now();
        let mut seen_other = vec![false; started.len()];
        let mut done = vec![false; started.len()];
        let mut last_state = vec![String::new(); started.len()];
        while done.iter().any(|d| !d) {
            for (i, m) in started.iter().enumerate() {
                if done[i] {
                    continue;
                }
                let state = ctx
                    .rest(m, Method::GET, "", None, REST_TIMEOUT)
                    .await
                    .ok()
                    .and_then(|r| r.json())
                    .and_then(|v| v.get("state").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| "unreachable".into());
                match progress(&state, seen_other[i]) {
                    Progress::Running => seen_other[i] = true,
                    Progress::Done => done[i] = true,
                    Progress::NotStarted if begin.elapsed() >= START_GRACE => done[i] = true,
                    Progress::NotStarted => {}
                }
                if done[i] {
                    println!("Reinitialize is completed on: {}", m.name);
                }
                last_state[i] = state;
            }
            if done.iter().all(|d| *d) {
                break;
            }
            if begin.elapsed() >= WAIT_LIMIT {
                let pending: Vec<String> = started
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !done[*i])
                    .map(|(i, m)| format!("{} ({})", m.name, last_state[i]))
                    .collect();
                return fail(format!(
                    "reinitialize not completed after {}s on: {}",
                    WAIT_LIMIT.as_secs(),
                    pending.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        fail(format!("reinitialize failed on: {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_progress() {
        assert_eq!(
            body(true).to_string(),
            r#"{"force":true,"from_leader":true}"#
        );
        assert_eq!(body(false)["from_leader"], false);
        assert_eq!(progress("running", false), Progress::NotStarted);
        assert_eq!(progress("creating replica", false), Progress::Running);
        assert_eq!(progress("stopped", true), Progress::Running);
        assert_eq!(progress("unreachable", true), Progress::Running);
        assert_eq!(progress("running", true), Progress::Done);
    }
}
