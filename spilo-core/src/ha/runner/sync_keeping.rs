//! Synchronous and quorum replication on the leader: `synchronous_standby_names` and the
//! `sync` key, moved one invariant-keeping step at a time.

use crate::dcs::{self, Cas, Cluster};
use crate::ha::state::PgStatus;
use crate::ha::sync;

use super::Node;

impl Node {
    /// Synchronous replication on the leader: move SSN and the `sync` key toward the best
    /// standbys, one invariant-keeping step at a time (see [`sync`]).
    pub(super) async fn sync_housekeeping(&mut self, c: &Cluster, pgs: &PgStatus) {
        let me = self.cfg.name.clone();
        let ours = sync::key_leader(c) == Some(me.as_str());
        let version = c.sync.as_ref().map(|v| v.version);
        if sync::sync_mode(&self.dynamic) == sync::SyncMode::Off {
            if ours {
                // Leaving synchronous mode: the key first, then SSN.
                if let Some(v) = version {
                    let _ = self.dcs.delete("sync", Cas::Version(v)).await;
                }
            }
            if self.ssn.take().is_some_and(|s| !s.is_empty()) {
                self.apply_ssn().await;
            }
            return;
        }
        if self.ssn.is_none() {
            // After a restart of the daemon: learn what PostgreSQL runs with.
            self.ssn = Some(
                self.pg
                    .current_setting("synchronous_standby_names", self.retry())
                    .await
                    .unwrap_or_default(),
            );
            self.ssn_since = None;
        }
        let count = sync::node_count(&self.dynamic);
        let strict = sync::strict(&self.dynamic);
        if sync::sync_mode(&self.dynamic) == sync::SyncMode::Quorum {
            self.quorum_housekeeping(c, pgs, ours, version, count, strict)
                .await;
            return;
        }
        let mut wanted = sync::candidates(
            c,
            &me,
            &pgs.replication,
            pgs.wal_flush,
            sync::max_lag_on_syncnode(&self.dynamic),
        );
        wanted.truncate(count);
        // Commits acknowledged before SSN last changed waited for nobody (or another
        // standby): measure how far the primary had flushed after the change (this cycle's
        // observation is taken after it), and confirm a `sync` standby only once it has that.
        if self.ssn_since.is_none() {
            self.ssn_since = pgs.wal_flush;
        }
        let confirmed = sync::confirmed(&pgs.replication, self.ssn_since);
        let mut key: Option<Vec<String>> = ours.then(|| sync::key_standbys(c));
        let mut wrote_key = false;
        for _ in 0..3 {
            let current = self.ssn.clone().unwrap_or_default();
            match sync::next_step(key.as_deref(), &wanted, &current, &confirmed, count, strict) {
                sync::SyncStep::Steady => return,
                sync::SyncStep::WriteKey(list) => {
                    if wrote_key {
                        // A second write needs the key's new version: next cycle.
                        return;
                    }
                    let value = dcs::codec::to_compact_json(&sync::key_value(&me, &list));
                    let cas = version.map(Cas::Version).unwrap_or(Cas::Absent);
                    match self.dcs.put("sync", &value, cas).await {
                        Ok(true) => {
                            tracing::info!(standbys = ?list, "sync key updated");
                            key = Some(list);
                            wrote_key = true;
                        }
                        Ok(false) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not write the sync key");
                            return;
                        }
                    }
                }
                sync::SyncStep::SetSsn(v) => {
                    tracing::info!(synchronous_standby_names = %v, "changing synchronous standbys");
                    self.ssn = Some(v);
                    self.ssn_since = None;
                    self.apply_ssn().await;
                    return;
                }
            }
        }
    }

    /// Quorum commit on the leader: `ANY k (voters)` and the `sync` key's voters and quorum,
    /// moved by [`sync::quorum_step`], which keeps every promotable quorum overlapping every
    /// acknowledging set.
    pub(super) async fn quorum_housekeeping(
        &mut self,
        c: &Cluster,
        pgs: &PgStatus,
        ours: bool,
        version: Option<i64>,
        count: usize,
        strict: bool,
    ) {
        let me = self.cfg.name.clone();
        let active = sync::candidates(
            c,
            &me,
            &pgs.replication,
            pgs.wal_flush,
            sync::max_lag_on_syncnode(&self.dynamic),
        );
        if active.is_empty() && strict {
            // No standby: commits wait. The key may stay as it is, since nothing more can
            // be acknowledged.
            let placeholder = sync::quorum_ssn(&[], 1, true);
            if self.ssn.as_deref() != Some(placeholder.as_str()) {
                tracing::warn!("synchronous_mode_strict with no standby: commits wait for one");
                self.ssn = Some(placeholder);
                self.ssn_since = None;
                self.apply_ssn().await;
            }
            return;
        }
        let mut key: Option<(Vec<String>, u64)> =
            ours.then(|| (sync::key_standbys(c), sync::key_quorum(c)));
        let mut wrote_key = false;
        for _ in 0..3 {
            let mut parsed = sync::parse_ssn(self.ssn.as_deref().unwrap_or(""));
            parsed.names.retain(|n| n != sync::STRICT_PLACEHOLDER);
            let step = sync::quorum_step(
                key.as_ref().map(|(v, q)| (v.as_slice(), *q)),
                &parsed,
                &active,
                count,
            );
            match step {
                sync::QuorumStep::Steady => return,
                sync::QuorumStep::WriteKey(voters, q) => {
                    if wrote_key {
                        return;
                    }
                    let value =
                        dcs::codec::to_compact_json(&sync::quorum_key_value(&me, &voters, q));
                    let cas = version.map(Cas::Version).unwrap_or(Cas::Absent);
                    match self.dcs.put("sync", &value, cas).await {
                        Ok(true) => {
                            tracing::info!(voters = ?voters, quorum = q, "sync key updated");
                            key = Some((voters, q));
                            wrote_key = true;
                        }
                        Ok(false) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not write the sync key");
                            return;
                        }
                    }
                }
                sync::QuorumStep::SetSsn(names, k) => {
                    let v = sync::quorum_ssn(&names, k, strict);
                    tracing::info!(synchronous_standby_names = %v, "changing the quorum");
                    self.ssn = Some(v);
                    self.ssn_since = None;
                    self.apply_ssn().await;
                    return;
                }
            }
        }
    }

    pub(super) async fn apply_ssn(&mut self) {
        if let Err(e) = self.write_conf(false, None, None) {
            tracing::error!("cannot write the PostgreSQL configuration: {e}");
            return;
        }
        if let Err(e) = self.pg.reload(self.retry()).await {
            tracing::warn!(error = %e, "reload failed");
        }
    }
}
