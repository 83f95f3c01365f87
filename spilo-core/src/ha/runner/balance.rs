//! The loop's side of the load balancers: each cycle asks for the routes the planner
//! ([`crate::lb::plan::desired`]) calls for; before PostgreSQL stops as primary, read-write
//! traffic is taken away from it (a bounded wait: a load balancer that does not answer never
//! holds a demotion up).

use std::time::Duration;

use crate::dcs::Cluster;
use crate::ha::decide::{Action, Decision};
use crate::ha::state::PgStatus;
use crate::lb::plan::Leading;

use super::Node;

/// Longest a hand-over waits for the load balancers to take read-write traffic away.
const WITHDRAW_BOUND: Duration = Duration::from_secs(1);

impl Node {
    /// Asks the load balancers for this cycle's routes (after the actions ran).
    pub(super) fn balance(&mut self, cluster: Option<&Cluster>, d: &Decision, pg: &PgStatus) {
        let every = Duration::from_secs(self.dynamic.loop_wait.max(1));
        let max_lag = self.dynamic.maximum_lag_on_failover;
        let leading = Leading {
            holds_lock: self.lease_renewed_at.is_some(),
            // A promotion job still running has promoted once PostgreSQL reports primary (its
            // checkpoint is still to come): traffic may come.
            primary_running: pg.role.is_primary()
                && pg.running
                && self
                    .job
                    .as_ref()
                    .is_none_or(|j| j.kind == crate::ha::decide::JobKind::Promote),
            stepping_down: d
                .actions
                .iter()
                .any(|a| matches!(a, Action::Demote(_) | Action::ReleaseLeader)),
        };
        let Some(lbs) = self.lbs.as_mut() else { return };
        lbs.update(cluster, &self.cfg.name, leading, max_lag, every);
    }

    /// Takes read-write traffic away from this node before PostgreSQL stops as primary: asks
    /// with the last known term (a newer leader's term refuses it, which is as good) and waits
    /// up to `bound` (zero: send and go on).
    pub(super) async fn withdraw_from_load_balancers(&mut self, bound: Duration) {
        let Some(lbs) = self.lbs.as_mut() else { return };
        let cluster = self.state.borrow().cluster.clone();
        let leading = Leading {
            holds_lock: true,
            primary_running: false,
            stepping_down: true,
        };
        let every = Duration::from_secs(self.dynamic.loop_wait.max(1));
        let asked = lbs.update(
            cluster.as_deref(),
            &self.cfg.name,
            leading,
            self.dynamic.maximum_lag_on_failover,
            every,
        );
        if !asked.is_empty() && !bound.is_zero() {
            lbs.wait(bound).await;
        }
    }

    /// The bound of a planned hand-over's wait.
    pub(super) fn withdraw_bound(&self) -> Duration {
        WITHDRAW_BOUND.min(self.retry())
    }
}
