//! Where the HA loop is: the phase it is in and since when, shared with the REST API, `/metrics`
//! and the lease guard's thread (which warns when a phase overruns `retry_timeout`, also while
//! the loop itself is stuck and cannot say so).

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A step of one HA cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Before the first cycle.
    Start,
    /// Renewing the DCS session.
    Keepalive,
    /// Reading the cluster's keys.
    ReadDcs,
    /// Collecting a finished background job.
    ReapJob,
    /// Querying the local PostgreSQL.
    ObservePostgres,
    /// Asking peers for their WAL positions.
    QueryPeers,
    /// Waiting for decision hooks' answers.
    Hooks,
    /// Running the pure decision.
    Decide,
    /// Carrying out the decision.
    Act,
    /// Writing the member key and the published state.
    Publish,
    /// Waiting for the next cycle (`loop_wait`, a DCS change, a request).
    Wait,
    /// Handing over and stopping.
    Shutdown,
}

impl Phase {
    /// Every phase, for metrics that list them all.
    pub const ALL: [Phase; 12] = [
        Phase::Start,
        Phase::Keepalive,
        Phase::ReadDcs,
        Phase::ReapJob,
        Phase::ObservePostgres,
        Phase::QueryPeers,
        Phase::Hooks,
        Phase::Decide,
        Phase::Act,
        Phase::Publish,
        Phase::Wait,
        Phase::Shutdown,
    ];

    /// The name used in logs, `/patroni` and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Keepalive => "keepalive",
            Phase::ReadDcs => "read_dcs",
            Phase::ReapJob => "reap_job",
            Phase::ObservePostgres => "observe_postgres",
            Phase::QueryPeers => "query_peers",
            Phase::Hooks => "hooks",
            Phase::Decide => "decide",
            Phase::Act => "act",
            Phase::Publish => "publish",
            Phase::Wait => "wait",
            Phase::Shutdown => "shutdown",
        }
    }

    /// Waiting is the one phase that may last as long as it likes.
    pub fn may_last(self) -> bool {
        matches!(self, Phase::Wait | Phase::Start)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug)]
struct Current {
    phase: Phase,
    since: Instant,
    /// A warning about this phase instance was logged.
    warned: bool,
}

/// The loop's current phase; written by the loop, read by anyone.
#[derive(Debug)]
pub struct PhaseTracker {
    current: Mutex<Current>,
}

impl Default for PhaseTracker {
    fn default() -> Self {
        PhaseTracker::new(crate::clock::now())
    }
}

impl PhaseTracker {
    /// A tracker in [`Phase::Start`] since `now`.
    pub fn new(now: Instant) -> PhaseTracker {
        PhaseTracker {
            current: Mutex::new(Current {
                phase: Phase::Start,
                since: now,
                warned: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loop enters `phase` at `now`.
    pub fn enter(&self, phase: Phase, now: Instant) {
        let mut c = self.lock();
        if c.phase != phase {
            *c = Current {
                phase,
                since: now,
                warned: false,
            };
        }
    }

    /// The phase and how long the loop has been in it at `now`.
    pub fn get(&self, now: Instant) -> (Phase, Duration) {
        let c = self.lock();
        (c.phase, now.saturating_duration_since(c.since))
    }

    /// When the current phase (other than waiting) has lasted longer than `limit` at `now` and
    /// was not reported yet: the phase and its age, once per phase instance.
    pub fn overrun(&self, limit: Duration, now: Instant) -> Option<(Phase, Duration)> {
        let mut c = self.lock();
        let age = now.saturating_duration_since(c.since);
        if c.warned || c.phase.may_last() || age <= limit {
            return None;
        }
        c.warned = true;
        Some((c.phase, age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overrun_is_reported_once_per_phase_instance_and_never_for_waiting() {
        let t0 = crate::clock::now();
        let p = PhaseTracker::new(t0);
        let limit = Duration::from_secs(3);
        p.enter(Phase::Act, t0);
        assert_eq!(p.overrun(limit, t0 + Duration::from_secs(2)), None);
        assert_eq!(
            p.overrun(limit, t0 + Duration::from_secs(4)),
            Some((Phase::Act, Duration::from_secs(4)))
        );
        assert_eq!(p.overrun(limit, t0 + Duration::from_secs(9)), None);
        // Entering the same phase again does not reset it; another phase does.
        p.enter(Phase::Act, t0 + Duration::from_secs(10));
        assert_eq!(
            p.get(t0 + Duration::from_secs(10)).1,
            Duration::from_secs(10)
        );
        p.enter(Phase::Wait, t0 + Duration::from_secs(10));
        assert_eq!(p.overrun(limit, t0 + Duration::from_secs(60)), None);
        p.enter(Phase::Keepalive, t0 + Duration::from_secs(60));
        assert!(p.overrun(limit, t0 + Duration::from_secs(64)).is_some());
    }

    #[test]
    fn names_are_distinct() {
        let names: std::collections::BTreeSet<_> = Phase::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Phase::ALL.len());
    }
}
