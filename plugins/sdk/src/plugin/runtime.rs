//! A plugin's own tokio runtime (feature `tokio-runtime`): plugin calls are blocking, so a
//! plugin written on async clients runs each call on a runtime of its own until the call's
//! deadline. The runtime is shut down (waiting at most a second for its tasks) when dropped.

use std::future::Future;
use std::time::{Duration, Instant};

use super::PluginError;

/// A multi-thread tokio runtime owned by a plugin instance.
pub struct PluginRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl PluginRuntime {
    /// A runtime of `workers` worker threads named `thread_name`, with timers and I/O.
    pub fn new(thread_name: &str, workers: usize) -> Result<PluginRuntime, PluginError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(thread_name)
            .enable_all()
            .build()
            .map_err(|e| PluginError::refused(format!("starting the plugin's runtime: {e}")))?;
        Ok(PluginRuntime { rt: Some(rt) })
    }

    /// The runtime (to enter it, or to block on a future without a deadline).
    pub fn get(&self) -> Result<&tokio::runtime::Runtime, PluginError> {
        self.rt
            .as_ref()
            .ok_or_else(|| PluginError::refused("the plugin's runtime is gone"))
    }

    /// Runs `f` on the runtime for at most `limit`: `None` when the time ran out.
    pub fn run_for<T>(
        &self,
        limit: Duration,
        f: impl Future<Output = T>,
    ) -> Result<Option<T>, PluginError> {
        // The timer is made inside the runtime (a tokio timer needs one).
        Ok(self
            .get()?
            .block_on(async { tokio::time::timeout(limit, f).await })
            .ok())
    }

    /// Runs `f` on the runtime until `deadline`; a deadline that passes is a timeout error.
    pub fn call<T>(
        &self,
        deadline: Instant,
        f: impl Future<Output = Result<T, PluginError>>,
    ) -> Result<T, PluginError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.run_for(left, f)? {
            Some(r) => r,
            None => Err(PluginError::timeout(format!(
                "the call's deadline ({left:?}) passed"
            ))),
        }
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_ends_at_its_deadline() {
        let rt = PluginRuntime::new("sdk-test", 1).expect("runtime");
        assert_eq!(
            rt.call(Instant::now() + Duration::from_secs(5), async { Ok(7) }),
            Ok(7)
        );
        let late = rt.call(Instant::now() + Duration::from_millis(20), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        });
        let e = late.expect_err("timed out");
        assert_eq!(e.status, crate::abi::STATUS_TIMEOUT);
        assert!(e.message.contains("deadline"), "{}", e.message);
        assert_eq!(rt.run_for(Duration::from_secs(5), async { 3 }), Ok(Some(3)));
    }
}
