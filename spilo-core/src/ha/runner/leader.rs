//! The leader's bookkeeping in the DCS: `config` if missing, `status`, `history`, slots.

use crate::dcs::{Cas, Cluster, HistoryLine, Status};
use crate::ha::state::PgStatus;
use crate::postgres::query::quote_literal;
use crate::{config, dcs};

use super::Node;

impl Node {
    pub(super) async fn leader_housekeeping(&mut self, cluster: Option<&Cluster>, pgs: &PgStatus) {
        let Some(c) = cluster else { return };
        if c.config.is_none() && c.config_raw.is_none() {
            // `bootstrap.dcs` as written, with only the timeouts adjusted: local overrides
            // (postgresql.parameters of this node) stay local.
            let mut initial = self.cfg.bootstrap.dcs.clone();
            config::adjust_timeouts(&mut initial);
            let bytes = dcs::codec::to_compact_json(&initial);
            if let Err(e) = self.dcs.put("config", &bytes, Cas::Absent).await {
                tracing::warn!(error = %e, "could not write config");
            }
        }
        let status = Status {
            optime: pgs.wal_flush,
            ..Status::default()
        };
        let bytes = dcs::codec::to_compact_json(&status);
        if self.last_status.as_deref() != Some(&bytes[..]) && status.optime.is_some() {
            match self.dcs.put("status", &bytes, Cas::Any).await {
                Ok(_) => self.last_status = Some(bytes),
                Err(e) => tracing::warn!(error = %e, "could not write status"),
            }
        }
        if let Some(tl) = pgs.timeline {
            if tl > 1 && self.history_written_for != Some(tl) && c.timeline() != tl {
                match self.read_history(tl) {
                    Ok(mut h) => {
                        // Earlier lines keep the time and new leader recorded when they
                        // were written; the history file has neither.
                        if let Some(old) = &c.history {
                            for line in h.iter_mut() {
                                if let Some(prev) = old.iter().find(|o| o.timeline == line.timeline)
                                {
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
                            Ok(_) => self.history_written_for = Some(tl),
                            Err(e) => tracing::warn!(error = %e, "could not write history"),
                        }
                    }
                    Err(e) => tracing::warn!("could not read the timeline history: {e}"),
                }
            } else if c.timeline() == tl {
                self.history_written_for = Some(tl);
            }
        }
        self.sync_housekeeping(c, pgs).await;
        if self.dynamic.postgresql.use_slots {
            let wanted: Vec<String> = c
                .members
                .iter()
                .filter(|m| m.name != self.cfg.name)
                .map(|m| dcs::codec::slot_name(&m.name))
                .collect();
            // Re-check while some replica is not streaming: its slot may be what is missing.
            let lagging = c.members.iter().any(|m| {
                m.name != self.cfg.name && m.data.replication_state.as_deref() != Some("streaming")
            });
            if wanted != self.slots_done_for || lagging {
                match self.pg.physical_slots(self.retry()).await {
                    Ok(existing) => {
                        let mut ok = true;
                        for s in wanted.iter().filter(|s| !existing.contains(s)) {
                            let sql = format!(
                                "SELECT pg_create_physical_replication_slot({})",
                                quote_literal(s)
                            );
                            if let Err(e) = self.pg.execute(&sql, self.retry()).await {
                                tracing::warn!(error = %e, slot = %s, "could not create slot");
                                ok = false;
                            }
                        }
                        if ok {
                            self.slots_done_for = wanted;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not list slots"),
                }
            }
        }
    }

    /// The `history` key from `pg_wal/<tl>.history`.
    pub(super) fn read_history(&self, tl: u64) -> Result<Vec<HistoryLine>, String> {
        let path = self
            .pg
            .s
            .data_dir
            .join("pg_wal")
            .join(format!("{tl:08X}.history"));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
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
