//! The local PostgreSQL: files, processes and queries.
//!
//! This is the only module that spawns processes. Every call has a deadline; none panics on
//! what PostgreSQL or the filesystem return.

pub mod archive_module;
pub mod basebackup;
pub mod conf;
pub mod ctl;
pub mod datadir;
pub mod local;
pub mod query;

pub use ctl::{PgError, PgSettings, Postgres, StopMode};
pub use local::{BootstrapRoles, LocalPostgres};
