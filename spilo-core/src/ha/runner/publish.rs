//! What the loop publishes for others to read: the state file for the SQL extension.

use std::time::Duration;

use crate::ha::decide::JobKind;
use crate::ha::state::PgStatus;

use super::Node;

impl Node {
    /// Writes `spilo.state` for the extension, off the loop's task (an fsync can stall); skips
    /// a cycle while the previous write still runs.
    pub(super) fn publish_state_file(&self, pg: &PgStatus) {
        use std::sync::atomic::Ordering;
        // pg_rewind and pg_basebackup own the data directory while they run: a write (its
        // temporary file renamed away under pg_rewind's file list) made a rewind fail.
        let job_owns_data = matches!(
            self.job.as_ref().map(|j| &j.kind),
            Some(JobKind::Rewind | JobKind::Clone | JobKind::Bootstrap)
        );
        if job_owns_data
            || !self.pg.data_dir_initialized()
            || self.state_file_busy.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let s = self.state.borrow().clone();
        let fence = self
            .conf_params(false, None)
            .get("spilo.fence")
            .and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.eq_ignore_ascii_case("on")),
                serde_json::Value::Bool(b) => Some(*b),
                _ => None,
            })
            .unwrap_or(false);
        let state = crate::ha::state_file::render(&crate::ha::state_file::StateInputs {
            scope: &self.cfg.scope,
            member: &self.cfg.name,
            cluster: s.cluster.as_deref(),
            pg,
            lease_renewed_at: self.lease_renewed_at,
            ttl: crate::ha::state::lease_ttl(
                Duration::from_secs(self.dynamic.ttl),
                self.granted_ttl,
            ),
            decision: &s.decision,
            fence,
        });
        let pg = self.pg.clone();
        let busy = self.state_file_busy.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::ha::state_file::write(pg.as_ref(), &state) {
                tracing::warn!(error = %e, "could not write {}", crate::ha::state_file::FILE_NAME);
            }
            busy.store(false, Ordering::SeqCst);
        });
    }
}
