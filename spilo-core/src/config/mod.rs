//! The node configuration: Patroni's YAML schema ([`model`]), loading with environment
//! overrides ([`load`]), validation and the dynamic-configuration rules ([`mod@validate`]).
//!
//! ```no_run
//! # fn main() -> Result<(), spilo_core::config::ConfigError> {
//! let loaded = spilo_core::config::load_file(std::path::Path::new("/etc/spilo/node.yml"))?;
//! for warning in &loaded.warnings {
//!     eprintln!("warning: {warning}");
//! }
//! # Ok(())
//! # }
//! ```
pub mod aws;
pub mod backup;
pub mod error;
mod helpers;
pub mod lb;
pub mod limits;
pub mod load;
pub mod model;
mod schema;
pub mod standby;
pub mod validate;

pub use error::{ConfigError, KeyProblem};
pub use load::{
    load_file, load_str, EnvKind, EnvOverride, Loaded, DEFAULTS_ORIGIN, ENV_OVERRIDES, ENV_PREFIXES,
};
pub use model::*;
pub use validate::{
    adjust_timeouts, effective_dynamic, is_dcs_only_parameter, split_host_port, validate,
    validate_dynamic, AddressError, DynamicError, DynamicProblem, DCS_ONLY_PARAMETERS,
    DEFAULT_PG_PORT, LOOP_WAIT_MIN, PLACEHOLDER_NAME, RETRY_TIMEOUT_MIN, TTL_MIN,
};
