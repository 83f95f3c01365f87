//! One HA cycle: observe (keep-alive, DCS read, PostgreSQL, peers), ask the hooks, decide,
//! act, publish.

use std::sync::Arc;
use std::time::Duration;

use crate::dcs::{decode_cluster, DcsError};
use crate::ha::decide::{CandidateChoice, JobKind, LocalView, Peers, Pg, PromotionGate};
use crate::ha::phase::Phase;
use crate::ha::state::DecisionReport;
use crate::ha::{decide, member};

use super::{Exit, Node};

impl Node {
    /// One cycle. Returns Some when the loop must end.
    pub(super) async fn cycle(&mut self) -> Option<Exit> {
        let now = self.started.elapsed();
        // ---- observe
        self.enter(Phase::Keepalive);
        let keep_sent = crate::clock::now();
        let mut dcs_failed = false;
        let session = self.dcs.keepalive().await;
        // The store answered but refused to renew (e.g. a lease TTL it does not accept): the
        // cure may be a config written meanwhile, so the config is re-read after acting.
        let refused = matches!(&session, Err(DcsError::Refused { .. }));
        let mut session_ok = match &session {
            Ok(info) => {
                if self.granted_ttl != info.granted_ttl {
                    if let Some(g) = info.granted_ttl {
                        tracing::info!(
                            granted_seconds = g.as_secs_f64(),
                            configured_seconds = self.dynamic.ttl,
                            "the DCS granted a session TTL of {:.1} s; lease deadlines count with the shorter of it and ttl",
                            g.as_secs_f64()
                        );
                    }
                    self.granted_ttl = info.granted_ttl;
                    let granted = info.granted_ttl;
                    self.state
                        .send_modify(|s| Arc::make_mut(s).granted_ttl = granted);
                }
                if info.new_session {
                    self.last_member = None;
                    tracing::info!(session = info.id, "new DCS session");
                } else if self.lease_renewed_at.is_some() {
                    // The same lease, renewed: the leader key bound to it stands. Tell the
                    // lease guard now rather than at the end of the cycle.
                    self.lease_renewed_at = Some(keep_sent);
                    self.state
                        .send_modify(|s| Arc::make_mut(s).leader_renewed_at = Some(keep_sent));
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "DCS keep-alive failed");
                dcs_failed = true;
                false
            }
        };
        self.enter(Phase::ReadDcs);
        let cluster = if session_ok {
            match self.dcs.snapshot().await {
                Ok(s) => {
                    let c = decode_cluster(&s);
                    self.log_dcs_warnings(&c);
                    Some(c)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DCS read failed");
                    session_ok = false;
                    dcs_failed = true;
                    None
                }
            }
        } else {
            None
        };
        let rtt = keep_sent.elapsed().as_secs_f64();
        self.state.send_modify(|s| {
            let st = &mut Arc::make_mut(s).stats;
            st.dcs_rtt_secs = Some(rtt);
            st.dcs_errors += u64::from(dcs_failed);
        });
        if let Some(c) = &cluster {
            self.apply_dynamic(c);
        }
        self.switch_archive().await;
        let holds = cluster
            .as_ref()
            .and_then(|c| c.leader.as_ref())
            .map(|l| l.name == self.cfg.name && l.owned_by_us)
            .unwrap_or(false);
        // The lock is held only while this cycle renewed the session and the key is bound to it.
        self.lease_renewed_at = (session_ok && holds).then_some(keep_sent);

        self.enter(Phase::ReapJob);
        self.reap_job().await;

        self.enter(Phase::ObservePostgres);
        let (pg_view, mut pgstat, data) = self.observe_pg().await;
        if matches!(pg_view, Pg::Stopped) && holds {
            self.down_since.get_or_insert(now);
        } else {
            self.down_since = None;
        }

        self.enter(Phase::QueryPeers);
        // Peers matter only in a leader race, or to a leader asked to hand over.
        let peers = match &cluster {
            Some(c)
                if decide::peers_needed(Some(c), &pg_view, &self.cfg.name, self.job.is_some()) =>
            {
                let others: Vec<(String, String)> = c
                    .members
                    .iter()
                    .filter(|m| m.name != self.cfg.name && !m.data.api_url.is_empty())
                    .map(|m| (m.name.clone(), m.data.api_url.clone()))
                    .collect();
                Peers::Queried(
                    self.peers
                        .fetch(others, self.retry().min(Duration::from_secs(2)))
                        .await,
                )
            }
            _ => Peers::NotQueried,
        };

        // ---- decide
        let local = LocalView {
            session_ok,
            data,
            pg: pg_view,
            job: self.job.as_ref().map(|j| j.kind),
            upstream: self.upstream.clone(),
            needs_rewind: self.rewind.needed(),
            rewind_failed: self.rewind.failed(),
            down_since: self.down_since,
            peers,
            lease_renewed_at: self
                .lease_renewed_at
                .map(|t| t.duration_since(self.started)),
            unix_now: chrono::Utc::now().timestamp(),
            clone_from_leader: self.clone_from_leader,
            promotion_gate: PromotionGate::Open,
            candidate_choice: CandidateChoice::Default,
            bootstrap_failed: self.bootstrap_failed.clone(),
        };
        self.enter(Phase::Hooks);
        let (gate, choice) = self.hook_inputs(cluster.as_ref(), &local);
        let local = LocalView {
            promotion_gate: gate,
            candidate_choice: choice,
            ..local
        };
        self.enter(Phase::Decide);
        let decision = (self.decider)(cluster.as_ref(), &local, &self.policy(), now);
        let summary = decision.summary();
        if summary != self.last_summary {
            tracing::info!(
                "{}{summary}",
                if self.dynamic.pause { "PAUSE: " } else { "" }
            );
            self.last_summary = summary;
        } else {
            tracing::debug!("{summary}");
        }

        // ---- act
        self.enter(Phase::Act);
        let fatal = self
            .execute(&decision, cluster.as_ref(), &local, &pgstat, keep_sent)
            .await;

        if self.conf_dirty && self.job.is_none() && self.pg.postmaster_pid().is_some() {
            self.conf_dirty = false;
            self.reload_postgres(cluster.as_ref()).await;
        }

        // Refresh PostgreSQL's view if the actions changed it, so the member key is current.
        if !decision.actions.is_empty() {
            let (_, st, _) = self.observe_pg().await;
            pgstat = st;
        }

        // ---- publish
        self.enter(Phase::Publish);
        self.balance(cluster.as_ref(), &decision, &pgstat);
        // A daemon about to exit publishes nothing more to the DCS (a failed bootstrap has
        // just closed its session: a member key written now would make a new one).
        if session_ok && fatal.is_none() {
            let promoting = self
                .job
                .as_ref()
                .map(|j| j.kind == JobKind::Promote)
                .unwrap_or(false);
            let mut m = member::member_data(&self.cfg, &pgstat, self.dynamic.pause, promoting);
            {
                let st = self.state.borrow();
                if let Some(v) = st.scheduled_restart.clone() {
                    m.extra.insert("scheduled_restart".into(), v);
                }
                if let Some(v) = &st.promotion_veto {
                    m.extra.insert("promotion_veto".into(), v.clone().into());
                }
                if let Some(p) = &st.hook_choice {
                    m.extra.insert("hook_choice".into(), p.clone().into());
                }
                if pgstat.fence_armed {
                    m.extra.insert("fence".into(), "armed".into());
                }
                if let Some(a) = st.archive.as_ref().and_then(|a| a.summary()) {
                    m.extra.insert("archive".into(), a.into());
                }
                if let Some(b) = &self.built {
                    m.extra.insert("built".into(), b.clone().into());
                }
                if let Some(lbs) = &self.lbs {
                    for (field, me) in lbs.member_fields() {
                        m.extra.insert(field, me.into());
                    }
                }
            }
            let bytes = member::encode(&m);
            if self.last_member.as_deref() != Some(&bytes[..]) {
                match self.dcs.put_member(&bytes).await {
                    Ok(()) => self.last_member = Some(bytes),
                    Err(e) => tracing::warn!(error = %e, "could not write the member key"),
                }
            }
        }
        let cluster_arc = cluster.map(Arc::new);
        let dynamic = self.dynamic.clone();
        let leader_renewed_at = self.lease_renewed_at;
        let report = DecisionReport {
            actions: decision.actions.iter().map(ToString::to_string).collect(),
            reasons: decision.reasons.iter().map(ToString::to_string).collect(),
            at: chrono::Utc::now().to_rfc3339(),
            action_kinds: decision.actions.iter().map(|a| a.kind()).collect(),
            reason_kinds: decision.reasons.iter().map(|r| r.kind()).collect(),
        };
        let tags = self.cfg.tags.clone();
        let hook_stats = self.hooks.stats.snapshot();
        let observed_pg = pgstat.clone();
        self.state.send_modify(|s| {
            let s = Arc::make_mut(s);
            s.hook_stats = hook_stats;
            s.pg = pgstat;
            s.leader_renewed_at = leader_renewed_at;
            if let Some(c) = cluster_arc {
                s.cluster = Some(c);
                s.dcs_last_seen = Some(chrono::Utc::now().timestamp());
            }
            s.last_cycle = crate::clock::now();
            s.dynamic = dynamic;
            s.decision = report;
            s.tags = tags;
        });
        self.report_transitions(&observed_pg);
        self.publish_state_file(&observed_pg);
        if refused && fatal.is_none() {
            self.reread_config_after_refusal().await;
        }
        fatal.map(Exit::Fatal)
    }
}
