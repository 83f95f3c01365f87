//! The contract between the spilo daemon and its backends.
//!
//! A backend crate depends on this crate only, never on the daemon. The DCS contract is
//! deliberately small and raw: a backend stores and returns bytes under keys relative to the
//! cluster prefix (`leader`, `members/<name>`, `config`, …); the daemon decodes them. That keeps
//! every backend thin and lets one conformance suite test them all.
#![deny(missing_docs)]

pub mod dcs;

pub use dcs::{Cas, Dcs, DcsError, Entry, SessionInfo, Snapshot};
