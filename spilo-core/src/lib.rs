//! spilo: high-availability PostgreSQL.
//!
//! - [`config`]: the node configuration (Patroni's YAML schema), loading and validation;
//! - [`dcs`]: the DCS contract, the cluster model and its Patroni-compatible encoding;
//! - [`ha`]: the pure decision ([`ha::decide`]) and the loop that observes, decides, acts, waits;
//! - [`postgres`]: the local PostgreSQL;
//! - [`api`]: the Patroni-compatible REST API;
//! - [`ctl`]: the `spiloctl` commands.

pub mod api;
pub mod config;
pub mod ctl;
pub mod dcs;
pub mod ha;
pub mod hooks;
pub mod plugin;
pub mod postgres;

/// The version spilo advertises to peers: a Patroni 4.x version, so Patroni-aware tools use
/// their modern code paths.
pub const PATRONI_COMPAT_VERSION: &str = "4.1.4";
/// spilo's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
