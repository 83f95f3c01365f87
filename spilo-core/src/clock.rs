//! The one place that reads the monotonic clock. It reads tokio's clock, so a test that pauses
//! tokio's time (`tokio::time::pause`, `#[tokio::test(start_paused = true)]`) moves every
//! deadline, lease and phase timer of the daemon with it; outside a runtime, or with time not
//! paused, it is the system's monotonic clock. `clippy.toml` refuses `Instant::now` anywhere
//! else in this crate.

use std::time::Instant;

/// Now, on the monotonic clock (paused with tokio's time in tests).
#[allow(clippy::disallowed_methods)] // the one reader of the clock
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_the_clock() {
        let t0 = super::now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(super::now() - t0 >= Duration::from_secs(3600));
    }
}
