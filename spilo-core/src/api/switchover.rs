//! `POST /switchover`, `POST /failover` and `DELETE /switchover`.
//!
//! The API does not move the leader itself: it checks the request (in Patroni's order, with
//! Patroni's messages), writes the `failover` key, wakes the HA loop and — unless the switchover
//! is scheduled — watches the DCS until the leader key moves, the request is dropped, or time
//! runs out.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Map, Value};

use super::client::fetch_peers;
use super::mutate::{json_kind, read_cluster, Tuning};
use super::{ApiContext, Reply};
use crate::dcs::codec::to_compact_json;
use crate::dcs::{decode_cluster, Cas, Cluster, Dcs, Failover};
use crate::ha::state::NodeState;

pub use crate::timestamp::{parse_timestamp, TimestampError};

/// Check a `scheduled_at` / `schedule` value for `action` (`switchover`, `restart`): 400
/// without a timezone, 422 when unparseable or in the past.
pub(crate) fn parse_schedule(
    value: &Value,
    action: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<FixedOffset>, Reply> {
    let Some(text) = value.as_str() else {
        return Err(Reply::text(
            400,
            format!(
                "The scheduled {action} time must be a string, not {}",
                json_kind(value)
            ),
        ));
    };
    match parse_timestamp(text) {
        Ok(ts) if ts < now => Err(Reply::text(
            422,
            format!("Cannot schedule {action} in the past"),
        )),
        Ok(ts) => Ok(ts),
        Err(TimestampError::NoTimezone) => Err(Reply::text(
            400,
            format!("Timezone information is mandatory for the scheduled {action}"),
        )),
        Err(TimestampError::Invalid) => Err(Reply::text(
            422,
            format!(
                "Unable to parse scheduled timestamp {text:?}: use ISO 8601 with a timezone, \
                 e.g. 2030-01-01T12:00:00+00:00"
            ),
        )),
    }
}

/// Which endpoint was called (a failover naming a leader is handled as a switchover).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `POST /switchover`: from a named leader.
    Switchover,
    /// `POST /failover`: to a named candidate.
    Failover,
}

impl Action {
    /// `switchover` / `failover`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Switchover => "switchover",
            Action::Failover => "failover",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Action::Switchover => "Switchover",
            Action::Failover => "Failover",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Action::Switchover => "switched",
            Action::Failover => "failed",
        }
    }
}

/// The request body, empty strings read as absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchoverRequest {
    /// The current leader.
    pub leader: Option<String>,
    /// The candidate (`candidate`, or its alias `member`).
    pub candidate: Option<String>,
    /// The raw `scheduled_at`.
    pub scheduled_at: Option<Value>,
}

fn string_field(body: &Map<String, Value>, key: &str) -> Result<Option<String>, Reply> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Reply::text(
            400,
            format!("{key} must be a string, not {}", json_kind(other)),
        )),
    }
}

/// Read the body's fields (400 when one has the wrong type).
pub fn parse_request(body: &Map<String, Value>) -> Result<SwitchoverRequest, Reply> {
    let leader = string_field(body, "leader")?;
    let candidate = match string_field(body, "candidate")? {
        Some(c) => Some(c),
        None => string_field(body, "member")?,
    };
    let scheduled_at = match body.get("scheduled_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(v) => Some(v.clone()),
    };
    Ok(SwitchoverRequest {
        leader,
        candidate,
        scheduled_at,
    })
}

/// A request that passed the checks that need no peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The effective action.
    pub action: Action,
    /// The leader named in the request.
    pub leader: Option<String>,
    /// The candidate named in the request.
    pub candidate: Option<String>,
    /// When, for a scheduled switchover.
    pub scheduled_at: Option<DateTime<FixedOffset>>,
}

/// Checks 1 to 8 of Patroni's order (all 400, or 422 for a bad schedule).
pub fn precheck(
    action: Action,
    req: SwitchoverRequest,
    paused: bool,
    now: DateTime<Utc>,
) -> Result<Plan, Reply> {
    if action == Action::Failover && req.candidate.is_none() {
        return Err(Reply::text(
            400,
            "Failover could be performed only to a specific candidate",
        ));
    }
    if action == Action::Switchover && req.leader.is_none() {
        return Err(Reply::text(
            400,
            "Switchover could be performed only from a specific leader",
        ));
    }
    let mut scheduled_at = None;
    if let Some(at) = &req.scheduled_at {
        if action == Action::Failover {
            return Err(Reply::text(400, "Failover can't be scheduled"));
        }
        if paused {
            return Err(Reply::text(
                400,
                "Can't schedule switchover in the paused state",
            ));
        }
        scheduled_at = Some(parse_schedule(at, action.name(), now)?);
    }
    if paused && req.candidate.is_none() {
        return Err(Reply::text(
            400,
            "Switchover is possible only to a specific candidate in a paused state",
        ));
    }
    let action = if action == Action::Failover && req.leader.is_some() {
        Action::Switchover
    } else {
        action
    };
    if req.leader.is_some() && req.leader == req.candidate {
        return Err(Reply::text(
            400,
            "Switchover target and source are the same",
        ));
    }
    Ok(Plan {
        action,
        leader: req.leader,
        candidate: req.candidate,
        scheduled_at,
    })
}

/// The synchronous standbys when synchronous replication (priority mode) is active and the
/// `sync` key is in force, else `None`.
fn sync_standbys(s: &NodeState) -> Option<Vec<String>> {
    if crate::ha::sync::sync_mode(&s.dynamic) != crate::ha::sync::SyncMode::On {
        return None;
    }
    let c = s.cluster.as_deref()?;
    crate::ha::sync::key_leader(c)?;
    Some(crate::ha::sync::key_standbys(c))
}

/// Why a switchover or failover cannot succeed now (check 9); the text is the 412 message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Infeasible {
    /// The request names another leader than the DCS.
    #[error("leader name does not match")]
    LeaderMismatch,
    /// A switchover to a member that is not a synchronous standby.
    #[error("candidate name does not match with sync_standby")]
    CandidateNotSync,
    /// The candidate is not a member.
    #[error("candidate does not exists")]
    NoSuchCandidate,
    /// Synchronous replication is on and no member is a synchronous standby.
    #[error("{0} is not possible: can not find sync_standby")]
    NoSyncStandby(&'static str),
    /// No member but the leader.
    #[error("{0} is not possible: cluster does not have members except leader")]
    LeaderAlone(&'static str),
    /// No member answered as a healthy candidate.
    #[error("{0} is not possible: no good candidates have been found")]
    NoGoodCandidate(&'static str),
}

/// Check 9: can the request succeed now? `Err` holds the 412 message.
pub async fn feasibility(
    s: &NodeState,
    plan: &Plan,
    peer_timeout: Duration,
) -> Result<(), Infeasible> {
    let empty = Cluster::default();
    let cluster = s.cluster.as_deref().unwrap_or(&empty);
    let action = plan.action.name();
    let leader_name = cluster.leader.as_ref().map(|l| l.name.as_str());
    if let Some(l) = &plan.leader {
        if leader_name != Some(l.as_str()) {
            return Err(Infeasible::LeaderMismatch);
        }
    }
    let sync = sync_standbys(s);
    let is_sync = |name: &str| {
        sync.as_ref()
            .is_some_and(|names| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
    };
    let members: Vec<(String, String)> = if let Some(c) = &plan.candidate {
        if plan.action == Action::Switchover && sync.is_some() && !is_sync(c) {
            return Err(Infeasible::CandidateNotSync);
        }
        match cluster.member(c) {
            Some(m) => vec![(m.name.clone(), m.data.api_url.clone())],
            None => return Err(Infeasible::NoSuchCandidate),
        }
    } else if sync.is_some() {
        let m: Vec<_> = cluster
            .members
            .iter()
            .filter(|m| is_sync(&m.name))
            .map(|m| (m.name.clone(), m.data.api_url.clone()))
            .collect();
        if m.is_empty() {
            return Err(Infeasible::NoSyncStandby(action));
        }
        m
    } else {
        let m: Vec<_> = cluster
            .members
            .iter()
            .filter(|m| Some(m.name.as_str()) != leader_name && !m.data.api_url.is_empty())
            .map(|m| (m.name.clone(), m.data.api_url.clone()))
            .collect();
        if m.is_empty() {
            return Err(Infeasible::LeaderAlone(action));
        }
        m
    };
    let peers = fetch_peers(&members, peer_timeout).await;
    if peers.iter().any(|p| p.reachable && !p.nofailover) {
        Ok(())
    } else {
        Err(Infeasible::NoGoodCandidate(action))
    }
}

/// What one DCS read says about a requested switchover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still in progress.
    Pending,
    /// Done: the final answer.
    Done(u16, String),
}

/// Judge the cluster `c` after a switchover from `old_leader` to `candidate` was requested.
pub fn outcome(
    c: &Cluster,
    old_leader: Option<&str>,
    candidate: Option<&str>,
    action: Action,
) -> Outcome {
    if let Some(l) = &c.leader {
        if Some(l.name.as_str()) != old_leader {
            return match candidate {
                Some(want) if want != l.name => Outcome::Done(
                    200,
                    format!(
                        "{} over to \"{}\" instead of \"{want}\"",
                        capitalize(action.past()),
                        l.name
                    ),
                ),
                _ => Outcome::Done(
                    200,
                    format!("Successfully {} over to \"{}\"", action.past(), l.name),
                ),
            };
        }
    }
    if c.failover.is_none() {
        return Outcome::Done(503, format!("{} failed", action.title()));
    }
    Outcome::Pending
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn format_secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.1}", d.as_secs_f64())
    }
}

/// Re-read the DCS every `tuning.poll_interval` until [`outcome`] is final or `timeout` passes.
async fn wait_for_outcome(
    dcs: &dyn Dcs,
    tuning: &Tuning,
    old_leader: Option<&str>,
    candidate: Option<&str>,
    action: Action,
    timeout: Duration,
) -> Reply {
    let start = crate::clock::now();
    loop {
        tokio::time::sleep(tuning.poll_interval).await;
        match tokio::time::timeout(tuning.dcs_timeout, dcs.snapshot()).await {
            Ok(Ok(snap)) => {
                let c = decode_cluster(&snap);
                if let Outcome::Done(status, message) = outcome(&c, old_leader, candidate, action) {
                    return Reply::text(status, message);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "DCS read failed while waiting for the {}", action.name())
            }
            Err(_) => tracing::debug!("DCS read timed out while waiting for the {}", action.name()),
        }
        if start.elapsed() >= timeout {
            return Reply::text(
                503,
                format!(
                    "{} status unknown after {} seconds; operation may still be in progress",
                    action.title(),
                    format_secs(timeout)
                ),
            );
        }
    }
}

/// `POST /switchover` and `POST /failover`.
pub(crate) async fn post(
    ctx: &ApiContext,
    tuning: &Tuning,
    s: &NodeState,
    action: Action,
    body: &Map<String, Value>,
) -> Reply {
    let plan = match parse_request(body).and_then(|r| precheck(action, r, s.paused(), Utc::now())) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if plan.scheduled_at.is_none() {
        if let Err(m) = feasibility(s, &plan, tuning.peer_timeout).await {
            return Reply::text(412, m.to_string());
        }
    }
    let value = Failover {
        leader: plan.leader.clone(),
        member: plan.candidate.clone(),
        scheduled_at: plan.scheduled_at.map(|t| t.to_rfc3339()),
    };
    let Some(dcs) = &ctx.dcs else {
        return Reply::text(503, "failed to write failover key into DCS");
    };
    match dcs
        .put("failover", &to_compact_json(&value), Cas::Any)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Reply::text(503, "failed to write failover key into DCS"),
        Err(e) => {
            tracing::warn!(error = %e, "writing the failover key failed");
            return Reply::text(503, "failed to write failover key into DCS");
        }
    }
    ctx.wake.notify_one();
    if plan.scheduled_at.is_some() {
        return Reply::text(202, "Switchover scheduled");
    }
    let old_leader = s
        .cluster
        .as_ref()
        .and_then(|c| c.leader.as_ref())
        .map(|l| l.name.clone());
    let timeout = tuning
        .poll_timeout
        .unwrap_or_else(|| Duration::from_secs(2 * s.dynamic.loop_wait.max(10)));
    wait_for_outcome(
        dcs.as_ref(),
        tuning,
        old_leader.as_deref(),
        plan.candidate.as_deref(),
        plan.action,
        timeout,
    )
    .await
}

/// `DELETE /switchover`: drop a scheduled switchover (writes `{}` with a CAS on the version).
pub(crate) async fn delete(ctx: &ApiContext, tuning: &Tuning) -> Reply {
    let cluster = match read_cluster(ctx, tuning.dcs_timeout).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(f) = cluster.failover.filter(|f| f.value.scheduled_at.is_some()) else {
        return Reply::text(404, "no switchover is scheduled");
    };
    let Some(dcs) = &ctx.dcs else {
        return Reply::text(503, "DCS is not available");
    };
    match dcs.put("failover", b"{}", Cas::Version(f.version)).await {
        Ok(true) => {
            ctx.wake.notify_one();
            Reply::text(200, "scheduled switchover deleted")
        }
        Ok(false) => Reply::text(
            409,
            "The failover key changed concurrently; the scheduled switchover was not deleted",
        ),
        Err(e) => Reply::text(503, format!("failed to write failover key into DCS: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::api::status::tests::primary;
    use crate::api::testutil::{call, call_tuned, context, fast, member, restapi, MemDcs};
    use crate::dcs::Leader;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    fn req(leader: Option<&str>, candidate: Option<&str>, at: Option<&str>) -> SwitchoverRequest {
        SwitchoverRequest {
            leader: leader.map(str::to_string),
            candidate: candidate.map(str::to_string),
            scheduled_at: at.map(Value::from),
        }
    }

    fn err(r: Result<Plan, Reply>) -> (u16, String) {
        let e = r.unwrap_err();
        (e.status, e.message().to_string())
    }

    /// A port nothing listens on.
    fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/patroni")
    }

    /// A peer answering `GET /patroni` with a replica body carrying `tags`.
    async fn live_peer(tags: Value) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = json!({"state": "running", "role": "replica",
                          "xlog": {"received_location": 1, "replayed_location": 1}, "tags": tags});
        let app = axum::Router::new().fallback(move || {
            let b = body.clone();
            async move { axum::Json(b) }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/patroni")
    }

    /// Node `pg0` (primary, leader) with members pg0 and `others`.
    fn state_with(others: Vec<crate::dcs::Member>) -> NodeState {
        let mut s = primary(crate::clock::now());
        let mut members = vec![member("pg0", "http://127.0.0.1:1/patroni")];
        members.extend(others);
        s.cluster = Some(Arc::new(Cluster {
            leader: Some(Leader {
                name: "pg0".into(),
                version: 1,
                owned_by_us: true,
                term: None,
            }),
            members,
            ..Cluster::default()
        }));
        s
    }

    #[test]
    fn timestamps() {
        let ok = |t: &str| parse_timestamp(t).unwrap().to_rfc3339();
        assert_eq!(ok("2030-01-01T12:00:00+00:00"), "2030-01-01T12:00:00+00:00");
        assert_eq!(ok("2030-01-01T12:00:00Z"), "2030-01-01T12:00:00+00:00");
        assert_eq!(ok("2030-01-01 12:00:00+02:00"), "2030-01-01T12:00:00+02:00");
        assert_eq!(ok("2030-01-01T12:00+0100"), "2030-01-01T12:00:00+01:00");
        assert_eq!(
            ok("2030-01-01 12:00:00.5+00"),
            "2030-01-01T12:00:00.500+00:00"
        );
        assert_eq!(ok("2030-01-01T12:00Z"), "2030-01-01T12:00:00+00:00");
        for t in ["2030-01-01T12:00:00", "2030-01-01 12:00", "2030-01-01"] {
            assert_eq!(parse_timestamp(t), Err(TimestampError::NoTimezone), "{t}");
        }
        for t in ["tomorrow", "", "2030-13-01T00:00:00+00:00"] {
            assert_eq!(parse_timestamp(t), Err(TimestampError::Invalid), "{t}");
        }
        let n = now();
        assert_eq!(
            parse_schedule(&json!("2000-01-01T00:00:00+00:00"), "restart", n)
                .unwrap_err()
                .status,
            422
        );
        assert_eq!(
            parse_schedule(&json!("2099-01-01T00:00:00"), "restart", n)
                .unwrap_err()
                .message(),
            "Timezone information is mandatory for the scheduled restart"
        );
        assert_eq!(
            parse_schedule(&json!("soon"), "restart", n)
                .unwrap_err()
                .status,
            422
        );
        assert_eq!(
            parse_schedule(&json!(5), "restart", n).unwrap_err().status,
            400
        );
    }

    #[test]
    fn request_fields() {
        let body = json!({"leader": "a", "member": "b", "scheduled_at": ""});
        assert_eq!(
            parse_request(body.as_object().unwrap()).unwrap(),
            req(Some("a"), Some("b"), None)
        );
        let body = json!({"leader": "", "candidate": "c", "member": "b"});
        assert_eq!(
            parse_request(body.as_object().unwrap()).unwrap(),
            req(None, Some("c"), None)
        );
        let e = parse_request(json!({"leader": 5}).as_object().unwrap()).unwrap_err();
        assert_eq!(
            (e.status, e.message()),
            (400, "leader must be a string, not a number")
        );
    }

    #[test]
    fn prechecks_in_patroni_order() {
        use Action::*;
        let n = now();
        let future = "2099-01-01T00:00:00+00:00";
        assert_eq!(
            err(precheck(Failover, req(None, None, None), false, n)),
            (
                400,
                "Failover could be performed only to a specific candidate".into()
            )
        );
        assert_eq!(
            err(precheck(Switchover, req(None, Some("b"), None), false, n)),
            (
                400,
                "Switchover could be performed only from a specific leader".into()
            )
        );
        assert_eq!(
            err(precheck(
                Failover,
                req(None, Some("b"), Some(future)),
                false,
                n
            )),
            (400, "Failover can't be scheduled".into())
        );
        assert_eq!(
            err(precheck(
                Switchover,
                req(Some("a"), Some("b"), Some(future)),
                true,
                n
            )),
            (400, "Can't schedule switchover in the paused state".into())
        );
        assert_eq!(
            err(precheck(
                Switchover,
                req(Some("a"), None, Some("2099-01-01 00:00")),
                false,
                n
            ))
            .0,
            400
        );
        assert_eq!(
            err(precheck(
                Switchover,
                req(Some("a"), None, Some("2001-01-01T00:00Z")),
                false,
                n
            )),
            (422, "Cannot schedule switchover in the past".into())
        );
        assert_eq!(
            err(precheck(Switchover, req(Some("a"), None, None), true, n)),
            (
                400,
                "Switchover is possible only to a specific candidate in a paused state".into()
            )
        );
        assert_eq!(
            err(precheck(
                Failover,
                req(Some("a"), Some("a"), None),
                false,
                n
            )),
            (400, "Switchover target and source are the same".into())
        );
        // A failover naming the leader becomes a switchover.
        let p = precheck(Failover, req(Some("a"), Some("b"), None), false, n).unwrap();
        assert_eq!(p.action, Switchover);
        let p = precheck(Switchover, req(Some("a"), None, Some(future)), false, n).unwrap();
        assert_eq!(
            p.scheduled_at.unwrap().to_rfc3339(),
            "2099-01-01T00:00:00+00:00"
        );
        // Paused with a candidate is fine.
        assert!(precheck(Failover, req(None, Some("b"), None), true, n).is_ok());
    }

    #[tokio::test]
    async fn feasibility_messages() {
        let t = Duration::from_millis(500);
        let plan = |action, leader: Option<&str>, cand: Option<&str>| Plan {
            action,
            leader: leader.map(str::to_string),
            candidate: cand.map(str::to_string),
            scheduled_at: None,
        };
        let alone = state_with(vec![]);
        assert_eq!(
            feasibility(&alone, &plan(Action::Switchover, Some("pgX"), None), t)
                .await
                .map_err(|e| e.to_string()),
            Err("leader name does not match".into())
        );
        assert_eq!(
            feasibility(&alone, &plan(Action::Switchover, Some("pg0"), None), t)
                .await
                .map_err(|e| e.to_string()),
            Err("switchover is not possible: cluster does not have members except leader".into())
        );
        assert_eq!(
            feasibility(&alone, &plan(Action::Failover, None, Some("pg9")), t)
                .await
                .map_err(|e| e.to_string()),
            Err("candidate does not exists".into())
        );
        let dead = state_with(vec![member("pg1", &dead_url())]);
        assert_eq!(
            feasibility(&dead, &plan(Action::Failover, None, Some("pg1")), t)
                .await
                .map_err(|e| e.to_string()),
            Err("failover is not possible: no good candidates have been found".into())
        );
        let nofailover = state_with(vec![member(
            "pg1",
            &live_peer(json!({"nofailover": true})).await,
        )]);
        assert_eq!(
            feasibility(&nofailover, &plan(Action::Switchover, Some("pg0"), None), t)
                .await
                .map_err(|e| e.to_string()),
            Err("switchover is not possible: no good candidates have been found".into())
        );
        let good = state_with(vec![
            member("pg1", &dead_url()),
            member("pg2", &live_peer(json!({})).await),
        ]);
        assert_eq!(
            feasibility(&good, &plan(Action::Switchover, Some("pg0"), None), t)
                .await
                .map_err(|e| e.to_string()),
            Ok(())
        );
        // No DCS view: nothing matches.
        let mut blind = good.clone();
        blind.cluster = None;
        assert_eq!(
            feasibility(&blind, &plan(Action::Switchover, Some("pg0"), None), t)
                .await
                .map_err(|e| e.to_string()),
            Err("leader name does not match".into())
        );
    }

    #[test]
    fn outcomes() {
        let mut c = Cluster {
            leader: Some(Leader {
                name: "pg0".into(),
                version: 1,
                owned_by_us: false,
                term: None,
            }),
            failover: Some(crate::dcs::Versioned {
                value: Failover {
                    leader: Some("pg0".into()),
                    member: Some("pg1".into()),
                    scheduled_at: None,
                },
                version: 3,
            }),
            ..Cluster::default()
        };
        let sw = Action::Switchover;
        assert_eq!(outcome(&c, Some("pg0"), Some("pg1"), sw), Outcome::Pending);
        c.leader = None;
        assert_eq!(outcome(&c, Some("pg0"), Some("pg1"), sw), Outcome::Pending);
        c.leader = Some(Leader {
            name: "pg1".into(),
            version: 2,
            owned_by_us: false,
            term: None,
        });
        assert_eq!(
            outcome(&c, Some("pg0"), Some("pg1"), sw),
            Outcome::Done(200, "Successfully switched over to \"pg1\"".into())
        );
        assert_eq!(
            outcome(&c, Some("pg0"), Some("pg1"), Action::Failover),
            Outcome::Done(200, "Successfully failed over to \"pg1\"".into())
        );
        assert_eq!(
            outcome(&c, Some("pg0"), None, sw),
            Outcome::Done(200, "Successfully switched over to \"pg1\"".into())
        );
        assert_eq!(
            outcome(&c, Some("pg0"), Some("pg2"), sw),
            Outcome::Done(200, "Switched over to \"pg1\" instead of \"pg2\"".into())
        );
        c.leader.as_mut().unwrap().name = "pg0".into();
        c.failover = None;
        assert_eq!(
            outcome(&c, Some("pg0"), Some("pg1"), sw),
            Outcome::Done(503, "Switchover failed".into())
        );
    }

    #[tokio::test]
    async fn switchover_without_dcs_after_checks() {
        // Validation needs no DCS; the write then fails with 503.
        let s = state_with(vec![member("pg1", &live_peer(json!({})).await)]);
        let (ctx, _tx) = context(s, None, restapi(None));
        let r = call(&ctx, "POST", "/failover", Some(r#"{"foo": "bar"}"#)).await;
        assert_eq!(
            (r.status, r.message()),
            (
                400,
                "Failover could be performed only to a specific candidate"
            )
        );
        let r = call(&ctx, "POST", "/switchover", Some(r#"{"leader": "pg0"}"#)).await;
        assert_eq!(
            (r.status, r.message()),
            (503, "failed to write failover key into DCS")
        );
        let r = call(&ctx, "POST", "/switchover", Some(r#"{"leader": "pgX"}"#)).await;
        assert_eq!((r.status, r.message()), (412, "leader name does not match"));
    }

    #[tokio::test]
    async fn scheduled_switchover_is_written_and_202() {
        let dcs = MemDcs::new();
        let (ctx, _tx) = context(state_with(vec![]), Some(dcs.clone()), restapi(None));
        // Scheduled: no feasibility check (pg0 has no other member), written normalised.
        let r = call(
            &ctx,
            "POST",
            "/switchover",
            Some(r#"{"leader": "pg0", "scheduled_at": "2099-06-01 10:00:00Z"}"#),
        )
        .await;
        assert_eq!((r.status, r.message()), (202, "Switchover scheduled"));
        assert_eq!(
            dcs.get("failover").unwrap(),
            r#"{"leader":"pg0","scheduled_at":"2099-06-01T10:00:00+00:00"}"#
        );
        // Delete it: 200, `{}` written; again: 404.
        let r = call(&ctx, "DELETE", "/switchover", None).await;
        assert_eq!(
            (r.status, r.message()),
            (200, "scheduled switchover deleted")
        );
        assert_eq!(dcs.get("failover").unwrap(), "{}");
        let r = call(&ctx, "DELETE", "/switchover", None).await;
        assert_eq!((r.status, r.message()), (404, "no switchover is scheduled"));
        // An unscheduled request is not "scheduled" either.
        dcs.set("failover", r#"{"leader":"pg0","member":"pg1"}"#);
        assert_eq!(call(&ctx, "DELETE", "/switchover", None).await.status, 404);
        // CAS conflict: 409.
        dcs.set(
            "failover",
            r#"{"leader":"pg0","scheduled_at":"2099-06-01T10:00:00+00:00"}"#,
        );
        *dcs.bump_after_read.lock().unwrap() = Some("failover".into());
        assert_eq!(call(&ctx, "DELETE", "/switchover", None).await.status, 409);
        // Write failure on POST: 503.
        *dcs.bump_after_read.lock().unwrap() = None;
        dcs.fail_writes.store(true, Ordering::SeqCst);
        let r = call(
            &ctx,
            "POST",
            "/switchover",
            Some(r#"{"leader": "pg0", "scheduled_at": "2099-06-01T10:00:00+00:00"}"#),
        )
        .await;
        assert_eq!(
            (r.status, r.message()),
            (503, "failed to write failover key into DCS")
        );
        // No DCS: DELETE is 503.
        let (no_dcs, _tx) = context(state_with(vec![]), None, restapi(None));
        assert_eq!(
            call(&no_dcs, "DELETE", "/switchover", None).await.status,
            503
        );
    }

    /// Run a switchover pg0 → pg1 against `dcs`; `react` plays the HA loop.
    async fn run_switchover(
        body: &str,
        react: impl FnOnce(Arc<MemDcs>) + Send + 'static,
    ) -> (Reply, Arc<MemDcs>) {
        let dcs = MemDcs::new();
        dcs.set("leader", "pg0");
        let peer = live_peer(json!({})).await;
        let s = state_with(vec![member("pg1", &peer), member("pg2", &peer)]);
        let (ctx, _tx) = context(s, Some(dcs.clone()), restapi(None));
        let d = dcs.clone();
        let wake = ctx.wake.clone();
        tokio::spawn(async move {
            // Wait for the request to be written and the loop to be woken.
            wake.notified().await;
            react(d);
        });
        let r = call_tuned(&ctx, &fast(), "POST", "/switchover", Some(body)).await;
        (r, dcs)
    }

    #[tokio::test]
    async fn switchover_succeeds() {
        let (r, dcs) = run_switchover(r#"{"leader": "pg0", "candidate": "pg1"}"#, |d| {
            d.set("leader", "pg1");
            d.set("failover", "{}");
        })
        .await;
        assert_eq!(
            (r.status, r.message()),
            (200, "Successfully switched over to \"pg1\"")
        );
        assert_eq!(dcs.get("leader").as_deref(), Some("pg1"));
    }

    #[tokio::test]
    async fn switchover_to_another_node() {
        let (r, _) = run_switchover(r#"{"leader": "pg0", "member": "pg1"}"#, |d| {
            d.set("leader", "pg2");
        })
        .await;
        assert_eq!(
            (r.status, r.message()),
            (200, "Switched over to \"pg2\" instead of \"pg1\"")
        );
    }

    #[tokio::test]
    async fn switchover_fails_when_the_request_is_dropped() {
        let (r, dcs) = run_switchover(r#"{"leader": "pg0", "candidate": "pg1"}"#, |d| {
            d.set("failover", "{}");
        })
        .await;
        assert_eq!((r.status, r.message()), (503, "Switchover failed"));
        assert_eq!(dcs.get("leader").as_deref(), Some("pg0"));
        // The key was written in Patroni's layout before.
        let (_, dcs) = run_switchover(r#"{"leader": "pg0"}"#, |d| d.remove("failover")).await;
        assert!(dcs.get("failover").is_none());
    }

    #[tokio::test]
    async fn switchover_times_out() {
        let (r, dcs) = run_switchover(r#"{"leader": "pg0", "candidate": "pg1"}"#, |_| {}).await;
        assert_eq!(
            (r.status, r.message()),
            (
                503,
                "Switchover status unknown after 0.4 seconds; operation may still be in progress"
            )
        );
        assert_eq!(
            dcs.get("failover").unwrap(),
            r#"{"leader":"pg0","member":"pg1"}"#
        );
    }

    #[tokio::test]
    async fn paused_cluster_rules() {
        let dcs = MemDcs::new();
        let mut s = state_with(vec![member("pg1", &live_peer(json!({})).await)]);
        s.dynamic.pause = true;
        let (ctx, _tx) = context(s, Some(dcs.clone()), restapi(None));
        let r = call(&ctx, "POST", "/switchover", Some(r#"{"leader": "pg0"}"#)).await;
        assert_eq!(
            (r.status, r.message()),
            (
                400,
                "Switchover is possible only to a specific candidate in a paused state"
            )
        );
        let r = call(
            &ctx,
            "POST",
            "/switchover",
            Some(r#"{"leader": "pg0", "candidate": "pg1", "scheduled_at": "2099-01-01T00:00:00+00:00"}"#),
        )
        .await;
        assert_eq!(
            (r.status, r.message()),
            (400, "Can't schedule switchover in the paused state")
        );
        // A failover to a named candidate is allowed (here it times out: no loop reacts).
        let r = call(&ctx, "POST", "/failover", Some(r#"{"candidate": "pg1"}"#)).await;
        assert_eq!(r.status, 503);
        assert!(
            r.message().starts_with("Failover status unknown"),
            "{}",
            r.message()
        );
        assert_eq!(dcs.get("failover").unwrap(), r#"{"member":"pg1"}"#);
    }
}
