//! The leader's bookkeeping in the DCS: `config` if missing, `status`, `history`, slots.

use crate::dcs::{Cas, Cluster, HistoryLine, Status};
use crate::ha::plan::{plan_bookkeeping, Bookkeeping};
use crate::ha::state::PgStatus;
use crate::{config, dcs};

use super::Node;

impl Node {
    /// Carries out [`plan_bookkeeping`]'s plan, with the synchronous-replication step (its own
    /// planner, [`crate::ha::sync::next_step`]) before the slots.
    pub(super) async fn leader_housekeeping(&mut self, cluster: Option<&Cluster>, pgs: &PgStatus) {
        let Some(c) = cluster else { return };
        // A standby leader has no flush position of its own: what it received or replayed.
        let standby_leader = pgs.role == crate::ha::state::Role::StandbyLeader;
        let position = if standby_leader {
            pgs.received.max(pgs.replayed)
        } else {
            pgs.wal_flush
        };
        let status = position.map(|optime| {
            dcs::codec::to_compact_json(&Status {
                optime: Some(optime),
                ..Status::default()
            })
        });
        let plan = plan_bookkeeping(
            c,
            &self.cfg.name,
            status,
            pgs.timeline,
            self.dynamic.postgresql.use_slots,
            &self.bookkeeping,
        );
        // Synchronous replication is the primary's business: a standby leader's commits are
        // the other cluster's.
        let mut synced = standby_leader;
        for step in plan {
            if matches!(step, Bookkeeping::EnsureSlots(_)) && !synced {
                self.sync_housekeeping(c, pgs).await;
                synced = true;
            }
            self.bookkeep(c, step).await;
        }
        if !synced {
            self.sync_housekeeping(c, pgs).await;
        }
    }

    async fn bookkeep(&mut self, c: &Cluster, step: Bookkeeping) {
        match step {
            Bookkeeping::WriteInitialConfig => {
                // `bootstrap.dcs` as written, with only the timeouts adjusted: local overrides
                // (postgresql.parameters of this node) stay local.
                let mut initial = self.cfg.bootstrap.dcs.clone();
                config::adjust_timeouts(&mut initial);
                let bytes = dcs::codec::to_compact_json(&initial);
                if let Err(e) = self.dcs.put("config", &bytes, Cas::Absent).await {
                    tracing::warn!(error = %e, "could not write config");
                }
            }
            Bookkeeping::WriteStatus(bytes) => match self.dcs.put("status", &bytes, Cas::Any).await
            {
                Ok(_) => self.bookkeeping.status_written = Some(bytes),
                Err(e) => tracing::warn!(error = %e, "could not write status"),
            },
            Bookkeeping::HistoryCurrent(tl) => self.bookkeeping.history_for = Some(tl),
            Bookkeeping::PublishHistory(tl) => match self.read_history(tl) {
                Ok(mut h) => {
                    // Earlier lines keep the time and new leader recorded when they were
                    // written; the history file has neither.
                    if let Some(old) = &c.history {
                        for line in h.iter_mut() {
                            if let Some(prev) = old.iter().find(|o| o.timeline == line.timeline) {
                                if line.timestamp.is_none() {
                                    line.timestamp = prev.timestamp.clone();
                                }
                                if line.new_leader.is_none() {
                                    line.new_leader = prev.new_leader.clone();
                                }
                            }
                        }
                    }
                    match self
                        .dcs
                        .put("history", &dcs::codec::encode_history(&h), Cas::Any)
                        .await
                    {
                        Ok(_) => self.bookkeeping.history_for = Some(tl),
                        Err(e) => tracing::warn!(error = %e, "could not write history"),
                    }
                }
                Err(e) => tracing::warn!("could not read the timeline history: {e}"),
            },
            Bookkeeping::EnsureSlots(wanted) => match self.pg.physical_slots(self.retry()).await {
                Ok(existing) => {
                    let mut ok = true;
                    for s in wanted.iter().filter(|s| !existing.contains(s)) {
                        if let Err(e) = self.pg.create_physical_slot(s, self.retry()).await {
                            tracing::warn!(error = %e, slot = %s, "could not create slot");
                            ok = false;
                        }
                    }
                    if ok {
                        self.bookkeeping.slots_for = wanted;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not list slots"),
            },
        }
    }

    /// The `history` key from `pg_wal/<tl>.history`.
    pub(super) fn read_history(&self, tl: u64) -> std::io::Result<Vec<HistoryLine>> {
        let (text, written) = self.pg.timeline_history(tl)?;
        let mtime = written
            .map(|t| chrono::DateTime::<chrono::Local>::from(t).to_rfc3339())
            .unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let mut parts = line.split('\t');
            let (Some(t), Some(lsn)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(t), Some(lsn)) = (t.trim().parse::<u64>(), dcs::codec::parse_lsn(lsn)) else {
                continue;
            };
            out.push(HistoryLine {
                timeline: t,
                lsn,
                reason: parts.next().unwrap_or("").trim().to_string(),
                timestamp: None,
                new_leader: None,
            });
        }
        if let Some(last) = out.last_mut() {
            last.timestamp = Some(mtime);
            last.new_leader = Some(self.cfg.name.clone());
        }
        Ok(out)
    }
}
