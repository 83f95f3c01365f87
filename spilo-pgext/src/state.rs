//! The daemon's state file (`<data_dir>/spilo.state`): its reader, format number and clock come
//! from `spilo_sdk::state_file`, the one definition the daemon writes against too.

pub use spilo_sdk::state_file::{monotonic_ns, read, Reading};
