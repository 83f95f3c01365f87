//! What the suite needs from a DCS backend: start its server(s), make clients, and break the
//! server in the ways the tests need.

use std::time::Duration;

use async_trait::async_trait;
use spilo_sdk::{Dcs, DcsError};

/// The settings of one client.
#[derive(Clone, Debug)]
pub struct ClientOpts {
    /// Cluster prefix, unique per test (`/conformance/<test>-<n>/`).
    pub prefix: String,
    /// Member name.
    pub member: String,
    /// Session time-to-live.
    pub ttl: Duration,
    /// Deadline of every operation.
    pub retry_timeout: Duration,
    /// Whether to feed [`Dcs::changes`].
    pub watch: bool,
}

/// One DCS backend under test: its server processes and its client.
///
/// The process-control methods block (they wait for the servers); the suite calls them through
/// `tokio::task::block_in_place`.
#[async_trait]
pub trait Backend: Sized + Send + Sync + 'static {
    /// Name used in messages.
    const NAME: &'static str;
    /// True when a member-key-only change does not bump [`Dcs::changes`].
    const MEMBER_CHANGES_SILENT: bool;

    /// Starts the server(s) and waits until they serve.
    fn start() -> Self;

    /// Makes a client.
    async fn try_client(&self, opts: ClientOpts) -> Result<Box<dyn Dcs>, DcsError>;

    /// Stops every server process (data kept).
    fn stop(&mut self);

    /// Starts the servers again on the same data and waits until they serve.
    fn start_again(&mut self);

    /// SIGSTOPs every server process.
    fn freeze(&self);

    /// SIGCONTs every server process.
    fn thaw(&self);
}

/// Runs blocking process control from inside the (multi-threaded) test runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
