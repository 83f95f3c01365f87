//! `spiloctl`: the commands, like `patronictl`'s. Reads (`list`, `topology`, `history`,
//! `show-config`) and `edit-config` go to the DCS directly; actions go to the members' REST
//! APIs.
pub mod aws;
pub mod aws_template;
pub mod backup;
pub mod clone;
pub mod common;
pub mod edit_config;
pub mod failover;
pub mod flush;
pub mod history;
pub mod http;
pub mod list;
pub mod output;
pub mod pause;
pub mod reinit;
pub mod reload;
pub mod restart;
pub mod show_config;
pub mod switchover;
pub mod topology;
pub mod version;
