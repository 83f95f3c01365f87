//! The lease guard: a task apart from the HA loop that stops a primary whose lease renewal is
//! overdue, even if the loop itself is stuck in a slow step.
//!
//! Margin: the lease was last renewed by a keep-alive *sent* at `renewed_at`, so it stands at
//! least until `renewed_at + ttl` everywhere. The guard fires at `renewed_at + ttl -
//! retry_timeout`; with `loop_wait + 2*retry_timeout <= ttl` (enforced at config load) that is
//! never before a healthy loop's next renewal (`loop_wait` plus a keep-alive bounded by
//! `retry_timeout`), and it leaves `retry_timeout` (≥ 1 s) for an immediate stop to finish
//! before any other node can take the key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ha::state::StateRx;
use crate::postgres::{Postgres, StopMode};

/// The instant past which a primary renewed at `renewed_at` must not accept writes.
pub fn fence_deadline(renewed_at: Instant, ttl: Duration, retry_timeout: Duration) -> Instant {
    renewed_at + ttl.saturating_sub(retry_timeout)
}

/// Run the guard until the state channel closes.
pub async fn guard(mut state: StateRx, pg: Arc<Postgres>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if state.has_changed().is_err() {
            return;
        }
        let (renewed, ttl, retry, paused) = {
            let s = state.borrow_and_update();
            (
                s.leader_renewed_at,
                Duration::from_secs(s.dynamic.ttl),
                Duration::from_secs(s.dynamic.retry_timeout),
                s.dynamic.pause,
            )
        };
        let Some(renewed) = renewed else { continue };
        if paused || Instant::now() < fence_deadline(renewed, ttl, retry) {
            continue;
        }
        if pg.postmaster_pid().is_none() {
            continue;
        }
        tracing::error!(
            overdue_ms = (Instant::now() - fence_deadline(renewed, ttl, retry)).as_millis() as u64,
            "leader lease renewal is overdue: stopping PostgreSQL so that it acknowledges no more writes"
        );
        if pg.stop(StopMode::Immediate).await.is_err() {
            pg.kill_postmaster();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_falls_before_the_lease_can_expire_and_after_a_healthy_renewal() {
        let t0 = Instant::now();
        for (ttl, loop_wait, retry) in [(5u64, 1u64, 2u64), (10, 2, 3), (30, 10, 10)] {
            let ttl_d = Duration::from_secs(ttl);
            let retry_d = Duration::from_secs(retry);
            let fence = fence_deadline(t0, ttl_d, retry_d);
            // Before the lease expires, with at least retry_timeout to stop PostgreSQL.
            assert!(fence + retry_d <= t0 + ttl_d);
            // After the latest moment a healthy loop renews again.
            assert!(fence >= t0 + Duration::from_secs(loop_wait) + retry_d);
        }
    }
}
