//! `spiloctl`: reads the DCS directly, like `patronictl`.
pub mod list;
