//! The observing half of a cycle: the local PostgreSQL and data directory, the dynamic
//! configuration and DCS values read.

use std::time::Duration;

use crate::config;
use crate::dcs::{decode_cluster, Cluster};
use crate::ha::decide::{DataDir, Pg};
use crate::ha::state::{PgState, PgStatus, Role};

use super::Node;

impl Node {
    /// Logs the DCS values that were ignored, clamped or dropped, once per change.
    pub(super) fn log_dcs_warnings(&mut self, c: &Cluster) {
        if c.warnings != self.last_dcs_warnings {
            for (k, w) in &c.warnings {
                tracing::warn!(key = %k, "DCS value not used as written: {w}");
            }
            self.last_dcs_warnings = c.warnings.clone();
        }
    }

    /// After the store refused the keep-alive: read the cluster again and apply its dynamic
    /// configuration, so that a repaired `ttl` reaches the backend before the next keep-alive
    /// (which then makes a session with it). Nothing else of this read is used: the decision of
    /// this cycle was taken without a session.
    pub(super) async fn reread_config_after_refusal(&mut self) {
        match self.dcs.snapshot().await {
            Ok(s) => {
                let c = decode_cluster(&s);
                self.log_dcs_warnings(&c);
                self.apply_dynamic(&c);
            }
            Err(e) => tracing::debug!(error = %e, "DCS read after a refused keep-alive failed"),
        }
    }

    /// Observe the local PostgreSQL: the decision's view, the published status, the data dir.
    pub(super) async fn observe_pg(&mut self) -> (Pg, PgStatus, DataDir) {
        let running = self.pg.postmaster_pid().is_some();
        let initialized = self.pg.data_dir_initialized();
        let mut st = PgStatus::default();
        let mut view = Pg::Stopped;
        let mut data = if initialized {
            DataDir::Initialized {
                sysid: None,
                was_primary: false,
                crashed: false,
                timeline: None,
            }
        } else {
            DataDir::Empty
        };
        // The role PostgreSQL reports, when it answers.
        let mut role: Option<Role> = None;
        if running {
            match self.pg.query_status(self.retry()).await {
                Ok(mut q) => {
                    // Without a WAL receiver a replica only knows the timeline of its last
                    // restartpoint, which lags; the timeline it streamed last is better.
                    if q.role.is_primary() || q.replication_state.as_deref() == Some("streaming") {
                        self.known_timeline = q.timeline;
                    } else if let (Some(t), Some(k)) = (q.timeline, self.known_timeline) {
                        q.timeline = Some(t.max(k));
                    }
                    view = Pg::Running {
                        primary: q.role.is_primary(),
                        timeline: q.timeline,
                        wal_position: q.wal_position(),
                        streaming: q.replication_state.as_deref() == Some("streaming"),
                    };
                    data = DataDir::Initialized {
                        sysid: q.sysid.clone(),
                        was_primary: q.role.is_primary(),
                        crashed: false,
                        timeline: q.timeline,
                    };
                    role = Some(q.role);
                    st = q;
                    st.state = PgState::Running;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "PostgreSQL does not answer");
                    view = Pg::Unresponsive;
                    st.state = PgState::Starting;
                    role = Some(Role::Replica);
                }
            }
        } else {
            if initialized && self.job.is_none() {
                match self.pg.controldata().await {
                    Ok(cd) => {
                        let state = cd
                            .get("Database cluster state")
                            .cloned()
                            .unwrap_or_default();
                        data = DataDir::Initialized {
                            sysid: cd.get("Database system identifier").cloned(),
                            was_primary: state == "in production" || state == "shut down",
                            crashed: state == "in production" || state.contains("crash"),
                            timeline: cd
                                .get("Latest checkpoint's TimeLineID")
                                .and_then(|t| t.parse().ok()),
                        };
                    }
                    Err(e) => tracing::warn!(error = %e, "pg_controldata failed"),
                }
            }
            st.state = PgState::Stopped;
        }
        if let Some(label) = self.pg_label {
            st.state = label;
        }
        st.role = role.unwrap_or(match &data {
            DataDir::Empty => Role::Uninitialized,
            DataDir::Initialized {
                was_primary: true, ..
            } if !running => Role::Demoted,
            _ => Role::Replica,
        });
        // A standby cluster's leader runs in recovery and holds the key: Patroni's
        // `standby_leader`.
        if st.role == Role::Replica && self.standby.is_some() && self.lease_renewed_at.is_some() {
            st.role = Role::StandbyLeader;
        }
        (view, st, data)
    }

    pub(super) fn apply_dynamic(&mut self, c: &Cluster) {
        let (dynamic, warnings) =
            config::effective_dynamic(c.config.as_ref().map(|v| &v.value), &self.cfg);
        if dynamic != self.dynamic {
            for w in warnings {
                tracing::warn!("{w}");
            }
            if dynamic.ttl != self.dynamic.ttl {
                self.dcs.set_ttl(Duration::from_secs(dynamic.ttl));
            }
            // PostgreSQL settings changed (PATCH /config, edit-config): rewrite the files and
            // reload at the end of this cycle.
            if dynamic.postgresql.parameters != self.dynamic.postgresql.parameters
                || dynamic.postgresql.pg_hba != self.dynamic.postgresql.pg_hba
            {
                self.conf_dirty = true;
            }
            self.dynamic = dynamic;
        }
        self.apply_standby();
    }
}
