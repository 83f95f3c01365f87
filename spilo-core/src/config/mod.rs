//! The node configuration.
pub mod model;
pub use model::*;
