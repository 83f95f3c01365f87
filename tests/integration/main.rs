//! Integration tests: real etcd 3.4, real PostgreSQL 15 and the spilo daemons running as the
//! `postgres` OS user. They need root (to switch to postgres), the packages from
//! scripts/install-deps.sh and the binaries built (`cargo build -p spilo-core`, or
//! `SPILO_BIN_DIR`). Run them one at a time: `cargo test -p spilo-tests -- --test-threads=1`.
//!
//! Timing defaults: ttl 10, loop_wait 2, retry_timeout 3. Timeouts are generous bounds, never
//! benchmarks.
//!
//! The operations tests (switchover, manual_failover, pause, config_api, restart_reinit_reload,
//! metrics, patronictl, haproxy, switchover_under_load) also need HAProxy, promtool and the
//! Patroni virtualenv with an unmodified patronictl, all from scripts/install-deps.sh.

mod archive;
mod aws_kms;
mod aws_lab;
mod aws_lifecycle;
mod aws_template;
mod backup;
mod bootstrap;
mod config_api;
mod config_errors;
mod crash_in_place;
mod dcs_loss;
mod duplicate_name;
mod elb;
mod etcd_members;
mod etcd_srv;
mod failover;
mod first_contact;
mod handover;
mod haproxy;
mod harness_selftest;
mod hooks;
mod low_ttl;
mod manual_failover;
mod metrics;
mod ops;
mod patronictl;
mod pause;
mod pgext;
mod pgext_fence;
mod plugins;
mod proxy;
mod rest_api;
mod restart_reinit_reload;
mod restore;
mod spiloctl;
mod spiloctl_ops;
mod standby;
mod switchover;
mod switchover_under_load;
mod symbol_order;
mod sync_mode;
mod terms;
mod zk_quorum_loss;

use std::time::Duration;

/// A fresh cluster (initdb, then base backups) on a busy 2-core machine with debug builds.
pub const BOOTSTRAP: Duration = Duration::from_secs(180);
/// A committed row reaching a streaming replica.
pub const REPLICATION: Duration = Duration::from_secs(60);
/// A node coming back (restart, pg_rewind or a new base backup) and streaming again.
pub const REJOIN: Duration = Duration::from_secs(180);
