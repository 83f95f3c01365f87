//! The HA loop's side of the hooks: it reports events (from what it observes, once per
//! transition) and turns the decision hooks' answers into inputs of `decide()`.
//!
//! Nothing here waits for a hook. A decision hook is asked on a task of its own; until it
//! answers, `decide()` sees `Pending` and the node does not promote. The answer wakes the loop.
//! Answers hold for one leaderless period (at most `ttl`, then the hook is asked again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::dcs::Cluster;
use crate::ha::decide::{self, CandidateChoice, LocalView, Pg, PromotionGate};
use crate::ha::state::{PgState, PgStatus, Role};
use crate::hooks::{Choice, Event, Gate};

use super::Node;

/// One decision hook's answer for the current leaderless period.
pub(super) struct Asked<T> {
    answer: Option<(T, Instant)>,
    pending: Option<oneshot::Receiver<T>>,
    /// What the answer was given for (the candidate names, sorted; empty for the gate).
    about: Vec<String>,
}

impl<T: Clone> Asked<T> {
    pub(super) fn new() -> Asked<T> {
        Asked {
            answer: None,
            pending: None,
            about: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.answer = None;
        self.pending = None;
        self.about.clear();
    }

    /// Takes a finished answer; the current one if fresh and about `about`.
    fn current(&mut self, about: &[String], max_age: Duration) -> Option<T> {
        if let Some(rx) = &mut self.pending {
            match rx.try_recv() {
                Ok(v) => {
                    self.answer = Some((v, crate::clock::now()));
                    self.pending = None;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => self.pending = None,
            }
        }
        match &self.answer {
            Some((v, at)) if at.elapsed() < max_age && self.about == about => Some(v.clone()),
            _ => None,
        }
    }
}

/// What the loop remembers to report each transition once.
#[derive(Default)]
pub(super) struct Observed {
    /// PostgreSQL was running at the last observation (None before the first).
    running: Option<bool>,
    /// The role it last ran in (primary or replica).
    role: Option<Role>,
    /// Since when the cluster has had no leader while this node could take over.
    leaderless_since: Option<Instant>,
}

impl Node {
    /// The context table of a handler call.
    pub(super) fn hook_context(&self, event: Event, old_role: Option<&str>) -> Value {
        let s = self.state.borrow();
        let cluster = s.cluster.as_deref();
        let role = s.pg.role.as_str();
        let optime = cluster.and_then(Cluster::optime);
        let member_pos = |d: &crate::dcs::MemberData| {
            d.xlog_location.or(match (d.receive_lsn, d.replay_lsn) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            })
        };
        let lag_of = |pos: Option<u64>| match (optime, pos) {
            (Some(o), Some(p)) => Some(o.saturating_sub(p)),
            _ => None,
        };
        let my_pos = s.pg.wal_position();
        let members: Vec<Value> = cluster
            .map(|c| {
                c.members
                    .iter()
                    .map(|m| {
                        json!({
                            "name": m.name,
                            "role": m.data.normalized_role(),
                            "state": m.data.state,
                            "lag": if m.data.normalized_role() == "primary" { Some(0) } else { lag_of(member_pos(&m.data)) },
                            "tags": m.data.tags,
                            "api_url": m.data.api_url,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "event": event.name(),
            "member": self.cfg.name,
            "scope": self.cfg.scope,
            "role": role,
            "old_role": old_role,
            "leader": cluster.and_then(|c| c.leader.as_ref()).map(|l| l.name.clone()),
            "term": cluster.and_then(|c| c.leader.as_ref()).and_then(|l| l.term).map(|t| t.0),
            "timeline": s.pg.timeline,
            "wal_position": my_pos,
            "lag": if role == "primary" { Some(0) } else { lag_of(my_pos) },
            "tags": self.cfg.tags,
            "members": members,
        })
    }

    /// Reports what changed since the last cycle: start, stop, role change, promote, demote.
    pub(super) fn report_transitions(&mut self, pgstat: &PgStatus) {
        let restarting = self
            .job
            .as_ref()
            .map(|j| j.kind == decide::JobKind::Restart)
            .unwrap_or(false);
        if restarting {
            return; // on_restart is reported when the restart job ends.
        }
        let running = pgstat.state == PgState::Running;
        let was = self.observed.running.replace(running);
        match was {
            Some(false) if running => self.fire(Event::OnStart, None),
            Some(true) if !running => self.fire(Event::OnStop, None),
            _ => {}
        }
        if !running || !matches!(pgstat.role, Role::Primary | Role::Replica) {
            return;
        }
        let role = pgstat.role;
        let old = self.observed.role.replace(role);
        if let Some(old) = old {
            if old != role {
                self.fire(Event::OnRoleChange, Some(old.as_str()));
                if role == Role::Primary {
                    self.fire(Event::OnPromote, Some(old.as_str()));
                } else if old == Role::Primary {
                    self.fire(Event::OnDemote, Some(old.as_str()));
                }
            }
        }
    }

    /// Reports `event` (never waits).
    pub(super) fn fire(&self, event: Event, old_role: Option<&str>) {
        if self.hooks.handles(event) || event.callback_action().is_some() {
            let ctx = self.hook_context(event, old_role);
            tracing::debug!(event = %event, "hook event");
            self.hooks.notify(event, ctx);
        }
    }

    /// The decision hooks' inputs for this cycle (asking them if a leader race is on).
    pub(super) fn hook_inputs(
        &mut self,
        cluster: Option<&Cluster>,
        local: &LocalView,
    ) -> (PromotionGate, CandidateChoice) {
        let me = self.cfg.name.as_str();
        let policy = self.policy();
        let race = match (cluster, &local.pg) {
            (Some(c), Pg::Running { primary: false, .. }) => {
                let named_me =
                    c.failover.as_ref().and_then(|f| f.value.member.as_deref()) == Some(me);
                c.leader.is_none() && policy.failover_priority > 0 && (named_me || !policy.paused)
            }
            _ => false,
        };
        let Some(c) = cluster.filter(|_| race) else {
            self.gate.reset();
            self.choice.reset();
            self.observed.leaderless_since = None;
            self.publish_veto(None);
            self.publish_choice(None);
            return (PromotionGate::Open, CandidateChoice::Default);
        };
        let since = *self
            .observed
            .leaderless_since
            .get_or_insert_with(crate::clock::now);
        let ttl = Duration::from_secs(self.dynamic.ttl);

        let gate = if self.hooks.gates_promotion() {
            match self.gate.current(&[], ttl) {
                Some(Gate::Allow) => PromotionGate::Open,
                Some(Gate::Veto(r)) => PromotionGate::Vetoed(r),
                None => {
                    if self.gate.pending.is_none() {
                        let ctx = self.hook_context(Event::BeforePromote, None);
                        let hooks = self.hooks.clone();
                        self.gate.pending =
                            Some(self.ask(async move { hooks.before_promote(ctx).await }));
                    }
                    PromotionGate::Pending
                }
            }
        } else {
            PromotionGate::Open
        };
        self.publish_veto(match &gate {
            PromotionGate::Vetoed(r) => Some(r.clone()),
            _ => None,
        });

        let mut view = local.clone();
        view.promotion_gate = gate.clone();
        let candidates = decide::failover_candidates(c, &policy, &view);
        let mut about = candidates.clone();
        about.sort();
        let choice = if !self.hooks.handles(Event::ChooseFailoverCandidate) || candidates.len() < 2
        {
            CandidateChoice::Default
        } else if since.elapsed() > 2 * ttl {
            // The chosen member did not take over: stop deferring to the choice.
            CandidateChoice::Default
        } else {
            match self.choice.current(&about, ttl) {
                Some(Choice::Default) => CandidateChoice::Default,
                Some(Choice::Member(m)) => CandidateChoice::Member(m),
                Some(Choice::Nobody(r)) => CandidateChoice::Nobody(r),
                None => {
                    if self.choice.pending.is_none() || self.choice.about != about {
                        let mut ctx = self.hook_context(Event::ChooseFailoverCandidate, None);
                        ctx["candidates"] = json!(candidates);
                        let hooks = self.hooks.clone();
                        let list = candidates.clone();
                        self.choice.about = about;
                        self.choice.answer = None;
                        self.choice.pending =
                            Some(self.ask(async move { hooks.choose_candidate(ctx, list).await }));
                    }
                    CandidateChoice::Pending
                }
            }
        };
        self.publish_choice(match &choice {
            CandidateChoice::Member(m) => Some(m.clone()),
            _ => None,
        });
        (gate, choice)
    }

    /// Records the hook's pick (in the member key, for `spiloctl list`).
    fn publish_choice(&self, pick: Option<String>) {
        if self.state.borrow().hook_choice != pick {
            if let Some(m) = &pick {
                tracing::info!("choose_failover_candidate picked {m}");
            }
            self.state
                .send_modify(|s| Arc::make_mut(s).hook_choice = pick);
        }
    }

    /// Runs `ask` on a task of its own; the answer wakes the loop.
    fn ask<T: Send + 'static>(
        &self,
        ask: impl std::future::Future<Output = T> + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let wake = self.wake.clone();
        tokio::spawn(async move {
            let _ = tx.send(ask.await);
            wake.notify_one();
        });
        rx
    }

    /// Shows a veto in `/patroni` (`promotion_veto`), so that peers skip this node.
    fn publish_veto(&self, veto: Option<String>) {
        if self.state.borrow().promotion_veto != veto {
            if let Some(r) = &veto {
                tracing::warn!("promotion vetoed by a hook: {r}");
            }
            self.state
                .send_modify(|s| Arc::make_mut(s).promotion_veto = veto);
        }
    }
}
