//! The DCS: the contract (re-exported from `spilo-sdk`), the cluster model and its
//! Patroni-compatible encoding, and the registry of built-in backends.

pub mod codec;
#[cfg(test)]
pub(crate) mod memory;
pub mod model;
pub mod registry;
pub mod srv;
pub mod tags;

pub use codec::{cluster_prefix, decode_cluster};
pub use model::*;
pub use spilo_sdk::{Cas, Dcs, DcsError, Entry, SessionInfo, Snapshot};
