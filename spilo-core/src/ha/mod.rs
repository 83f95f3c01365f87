//! The HA core.
pub mod state;
