//! The contract between the spilo daemon and its backends.
//!
//! A backend crate depends on this crate only, never on the daemon. The DCS contract is
//! deliberately small and raw: a backend stores and returns bytes under keys relative to the
//! cluster prefix (`leader`, `members/<name>`, `config`, …); the daemon decodes them. That keeps
//! every backend thin and lets one conformance suite test them all.
//!
//! Three kinds of backend: a DCS ([`dcs`]), storage ([`storage`]) and a load balancer
//! ([`lb`]), each an async trait for the daemon and its built-in backends (feature `host`).
//! Side effects carry the leader [`Term`]; receivers fence with a [`TermFence`].
//!
//! Third-party backends live in shared libraries behind a versioned C ABI ([`abi`]); a Rust
//! plugin implements [`plugin::DcsPlugin`], [`plugin::StoragePlugin`] or [`plugin::LbPlugin`]
//! and exports it with [`export_dcs_plugin!`], [`export_storage_plugin!`] or
//! [`export_lb_plugin!`]. Such a plugin depends on this crate with `default-features = false`:
//! no async runtime. A plugin written on async clients enables feature `tokio-runtime` for
//! `plugin::runtime::PluginRuntime`, which runs each blocking call on the plugin's own tokio
//! runtime until the call's deadline.
#![deny(missing_docs)]

pub mod abi;
pub mod dcs;
pub mod lb;
pub mod plugin;
pub mod state_file;
pub mod storage;
pub mod term;

#[cfg(feature = "host")]
pub use dcs::Dcs;
pub use dcs::{Cas, DcsError, Entry, SessionInfo, Snapshot};
#[cfg(feature = "host")]
pub use lb::LoadBalancer;
pub use lb::{LbError, LbState};
#[cfg(feature = "host")]
pub use storage::Storage;
pub use storage::{PutMode, StorageError};
pub use term::{StaleTerm, Term, TermFence};
