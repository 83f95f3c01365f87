//! Test harness for spilo's integration tests: real etcd, real PostgreSQL 15 and the spilo
//! daemons running as the `postgres` OS user.
//!
//! - [`bins`]: finds the built `spilo`/`spiloctl` and copies them where postgres can run them;
//! - [`etcd`]: a single-member etcd on free loopback ports;
//! - [`etcd_cluster`]: an n-member etcd cluster, optionally with TLS and authentication;
//! - [`zookeeper`]: a standalone ZooKeeper server, plain or TLS-only;
//! - [`zookeeper_ensemble`]: a ZooKeeper ensemble of n servers, with quorum loss;
//! - [`node`]: one daemon, its config, log, signals, REST API and SQL;
//! - [`cluster`]: etcd plus n nodes, waits on cluster-wide conditions, cleanup on drop;
//! - [`http`], [`pg`], [`util`]: a tiny HTTP client, SQL helpers, ports/polling/processes;
//! - [`aws`]: moto as a local AWS API (EC2, classic ELB), set up and read back with boto3;
//! - [`imds`]: a stub of the EC2 instance metadata service (IMDSv2 tokens, the instance id);
//! - [`s3`]: local S3 servers (moto in server mode, s3s-fs) for the S3 storage backend;
//! - [`tools`]: the third-party tools of the operations tests (patronictl, promtool, HAProxy).
//!
//! Every wait is a polling loop with a generous timeout and a panic message naming what was
//! awaited and the last thing seen.

pub mod autoscaling;
pub mod aws;
pub mod bins;
pub mod cluster;
pub mod dcs;
pub mod dns;
pub mod elb_health;
pub mod etcd;
pub mod etcd_cluster;
pub mod http;
pub mod imds;
pub mod node;
pub mod pg;
pub mod s3;
pub mod stub_http;
pub mod template;
pub mod tools;
pub mod util;
pub mod zookeeper;
pub mod zookeeper_ensemble;

pub use cluster::{ClusterOpts, TestCluster};
pub use dcs::{DcsEndpoint, DcsKind, DcsServer};
pub use etcd::Etcd;
pub use node::{Node, NodeConfig, NodeOpts, REPLICATION_PASSWORD, SUPERUSER_PASSWORD};
pub use util::{note, poll, wait_for, TempRoot};
