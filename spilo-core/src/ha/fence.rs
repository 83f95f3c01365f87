//! The lease guard: a thread of its own, apart from the HA loop and its runtime, that stops a
//! primary whose lease renewal is overdue — even while the loop, the REST API or a job is stuck
//! in a slow step, a blocking filesystem call or a hung `fsync` on the daemon's runtime.
//!
//! Margin: the lease was last renewed by a keep-alive *sent* at `renewed_at`, so it stands at
//! least until `renewed_at + ttl` everywhere. The guard fires at `renewed_at + ttl -
//! retry_timeout`; with `loop_wait + 2*retry_timeout <= ttl` (enforced at config load) that is
//! never before a healthy loop's next renewal (`loop_wait` plus a keep-alive bounded by
//! `retry_timeout`), and it leaves `retry_timeout` (≥ 1 s) for an immediate stop to finish
//! before any other node can take the key.
//!
//! The guard also watches the loop's [`PhaseTracker`]: a phase (other than waiting) that lasts
//! longer than `retry_timeout` is logged as a warning, once per phase instance.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ha::state::StateRx;
use crate::postgres::{Postgres, StopMode};

/// How often the guard looks.
const TICK: Duration = Duration::from_millis(200);

/// The instant past which a primary renewed at `renewed_at` must not accept writes; `None`
/// when it lies beyond what an `Instant` can hold (never, for the ranges of `ttl`).
pub fn fence_deadline(
    renewed_at: Instant,
    ttl: Duration,
    retry_timeout: Duration,
) -> Option<Instant> {
    renewed_at.checked_add(ttl.saturating_sub(retry_timeout))
}

/// What the guard stops.
pub trait FenceTarget: Send + Sync + 'static {
    /// True while there is something to stop (a postmaster runs).
    fn running(&self) -> bool;
    /// Stop it now, so that it acknowledges no more writes.
    fn stop_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl FenceTarget for Postgres {
    fn running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    fn stop_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.stop(StopMode::Immediate).await.is_err() {
                self.kill_postmaster();
            }
        })
    }
}

/// Starts the guard on its own OS thread with its own single-threaded runtime. It ends when
/// the state channel's sender is dropped (the daemon ends).
pub fn spawn_guard(
    state: StateRx,
    target: Arc<dyn FenceTarget>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("spilo-lease-guard".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "the lease guard cannot start its runtime");
                    return;
                }
            };
            rt.block_on(guard(state, target));
        })
}

/// The guard's loop, until the state channel closes.
pub async fn guard(mut state: StateRx, target: Arc<dyn FenceTarget>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if state.has_changed().is_err() {
            return;
        }
        let (renewed, ttl, retry, paused, phase) = {
            let s = state.borrow_and_update();
            (
                s.leader_renewed_at,
                s.lease_ttl(),
                Duration::from_secs(s.dynamic.retry_timeout),
                s.dynamic.pause,
                s.phase.clone(),
            )
        };
        let now = crate::clock::now();
        if let Some((p, age)) = phase.overrun(retry, now) {
            tracing::warn!(
                phase = %p,
                seconds = age.as_secs_f64(),
                "the HA loop has been in phase {p} for {:.1} s, longer than retry_timeout ({} s)",
                age.as_secs_f64(),
                retry.as_secs()
            );
        }
        let Some(renewed) = renewed else { continue };
        let Some(deadline) = fence_deadline(renewed, ttl, retry) else {
            continue;
        };
        if paused || now < deadline || !target.running() {
            continue;
        }
        tracing::error!(
            overdue_ms = (now - deadline).as_millis() as u64,
            "leader lease renewal is overdue: stopping PostgreSQL so that it acknowledges no more writes"
        );
        target.stop_now().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::ha::state::NodeState;

    #[test]
    fn the_fence_falls_before_the_lease_can_expire_and_after_a_healthy_renewal() {
        let t0 = crate::clock::now();
        for (ttl, loop_wait, retry) in [(5u64, 1u64, 2u64), (10, 2, 3), (30, 10, 10)] {
            let ttl_d = Duration::from_secs(ttl);
            let retry_d = Duration::from_secs(retry);
            let fence = fence_deadline(t0, ttl_d, retry_d).expect("in range");
            // Before the lease expires, with at least retry_timeout to stop PostgreSQL.
            assert!(fence + retry_d <= t0 + ttl_d);
            // After the latest moment a healthy loop renews again.
            assert!(fence >= t0 + Duration::from_secs(loop_wait) + retry_d);
        }
        // An absurd ttl gives no deadline rather than a panic.
        assert_eq!(
            fence_deadline(t0, Duration::MAX, Duration::from_secs(1)),
            None
        );
    }

    /// Records when it was stopped.
    struct Recorder {
        running: AtomicBool,
        stopped_at: Mutex<Option<Instant>>,
    }

    impl FenceTarget for Recorder {
        fn running(&self) -> bool {
            self.running.load(Ordering::SeqCst)
        }
        fn stop_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async move {
                self.running.store(false, Ordering::SeqCst);
                *self.stopped_at.lock().unwrap() = Some(crate::clock::now());
            })
        }
    }

    /// The daemon's runtime is single-threaded: a job or the loop blocking it in a filesystem
    /// call (here: opening a FIFO for writing, which blocks until a reader comes, for longer
    /// than `ttl`) must not delay the guard, which runs on its own thread.
    #[test]
    fn a_filesystem_call_blocked_past_ttl_does_not_delay_the_fence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("stuck");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");

        let ttl = 5u64;
        let retry = 2u64;
        let blocked_for = Duration::from_secs(ttl + 2);
        let mut state = NodeState::new("n1", "s", "http://127.0.0.1:1/patroni");
        state.dynamic.ttl = ttl;
        state.dynamic.retry_timeout = retry;
        let renewed = crate::clock::now();
        state.leader_renewed_at = Some(renewed);
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(state));
        let target = Arc::new(Recorder {
            running: AtomicBool::new(true),
            stopped_at: Mutex::new(None),
        });
        let guard = spawn_guard(rx, target.clone()).expect("spawn the guard");

        // The reader that finally unblocks the writer.
        let reader_path = fifo.clone();
        let reader = std::thread::spawn(move || {
            #[allow(clippy::disallowed_methods)] // the test's reader thread waits, off any runtime
            std::thread::sleep(blocked_for);
            std::fs::File::open(reader_path).expect("open the FIFO for reading");
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let unblocked_at = rt.block_on(async {
            // The daemon's runtime is stuck in this task's synchronous call.
            tokio::spawn(async move {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&fifo)
                    .expect("open the FIFO for writing");
                crate::clock::now()
            })
            .await
            .unwrap()
        });
        reader.join().unwrap();
        let stopped_at = target.stopped_at.lock().unwrap().expect("the guard fenced");
        let deadline = fence_deadline(
            renewed,
            Duration::from_secs(ttl),
            Duration::from_secs(retry),
        )
        .unwrap();
        assert!(stopped_at >= deadline, "fenced before the deadline");
        assert!(
            stopped_at < unblocked_at,
            "the guard waited for the blocked runtime: fenced {:?} after the deadline, the \
             call returned {:?} after it",
            stopped_at - deadline,
            unblocked_at - deadline
        );
        drop(tx);
        guard.join().unwrap();
    }
}
