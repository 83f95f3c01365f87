//! The HA core: the pure decision, the loop around it, and the daemon's start-up.
pub mod command;
pub mod daemon;
pub mod decide;
pub mod fence;
pub mod member;
pub mod phase;
pub mod plan;
pub mod refusal;
pub mod replica;
pub mod runner;
pub mod state;
pub mod state_file;
pub mod sync;

pub use decide::{
    decide, peers_needed, Action, DataDir, Decision, DemoteMode, JobKind, LocalView, Peers, Pg,
    Policy, Reason,
};
