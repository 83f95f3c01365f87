//! The contract between the spilo daemon and its backends.
//!
//! A backend crate depends on this crate only, never on the daemon. The DCS contract is
//! deliberately small and raw: a backend stores and returns bytes under keys relative to the
//! cluster prefix (`leader`, `members/<name>`, `config`, …); the daemon decodes them. That keeps
//! every backend thin and lets one conformance suite test them all.
//!
//! Third-party backends live in shared libraries behind a versioned C ABI ([`abi`]); a Rust
//! plugin implements [`plugin::DcsPlugin`] and exports it with [`export_dcs_plugin!`]. Such a
//! plugin depends on this crate with `default-features = false`: no async runtime.
#![deny(missing_docs)]

pub mod abi;
pub mod dcs;
pub mod plugin;

#[cfg(feature = "host")]
pub use dcs::Dcs;
pub use dcs::{Cas, DcsError, Entry, SessionInfo, Snapshot};
