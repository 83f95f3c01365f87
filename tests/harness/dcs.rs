//! The DCS a test cluster runs on, chosen by `SPILO_TEST_DCS=etcd|zookeeper` (default etcd), so
//! the same HA tests run against both backends; or given explicitly
//! ([`crate::TestCluster::start_with`]) for the tests of one DCS shape: a ZooKeeper ensemble, a
//! TLS-only ZooKeeper.

use std::path::{Path, PathBuf};

use crate::etcd::Etcd;
use crate::zookeeper::ZooKeeper;
use crate::zookeeper_ensemble::ZkEnsemble;

/// Which DCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DcsKind {
    /// etcd v3.
    Etcd,
    /// ZooKeeper.
    ZooKeeper,
}

impl DcsKind {
    /// From `SPILO_TEST_DCS` (`etcd` when unset); panics on anything else, naming the value.
    pub fn from_env() -> DcsKind {
        match std::env::var("SPILO_TEST_DCS").as_deref() {
            Err(_) | Ok("") | Ok("etcd") | Ok("etcd3") => DcsKind::Etcd,
            Ok("zookeeper") | Ok("zk") => DcsKind::ZooKeeper,
            Ok(other) => panic!("SPILO_TEST_DCS={other:?}: expected etcd or zookeeper"),
        }
    }
}

/// Where the nodes find the DCS: rendered into their YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DcsEndpoint {
    /// `etcd3: {hosts: …}`.
    Etcd(String),
    /// `zookeeper: {hosts: [...]}` (one host, or several joined with `, `).
    ZooKeeper(String),
    /// `zookeeper: {hosts: [...], use_ssl: true, cacert, cert, key}`.
    ZooKeeperTls {
        /// `host:port`, or several joined with `, `.
        hosts: String,
        /// CA certificate that verifies the server.
        cacert: PathBuf,
        /// Client certificate.
        cert: PathBuf,
        /// Client key.
        key: PathBuf,
    },
}

impl DcsEndpoint {
    /// The YAML section of a node config.
    pub fn yaml(&self) -> String {
        match self {
            DcsEndpoint::Etcd(h) => format!("etcd3:\n  hosts: {h}\n"),
            DcsEndpoint::ZooKeeper(h) => format!("zookeeper:\n  hosts: [{h}]\n"),
            DcsEndpoint::ZooKeeperTls {
                hosts,
                cacert,
                cert,
                key,
            } => format!(
                "zookeeper:\n  hosts: [{hosts}]\n  use_ssl: true\n  cacert: {}\n  cert: {}\n  \
                 key: {}\n",
                cacert.display(),
                cert.display(),
                key.display()
            ),
        }
    }
}

/// A running DCS server.
pub enum DcsServer {
    /// A single-member etcd.
    Etcd(Etcd),
    /// A standalone ZooKeeper (plain or TLS-only).
    ZooKeeper(ZooKeeper),
    /// A ZooKeeper ensemble; the nodes are given every server.
    ZooKeeperEnsemble(ZkEnsemble),
}

impl DcsServer {
    /// Starts the kind of server `SPILO_TEST_DCS` names, keeping etcd's data under `dir`.
    pub fn start_in(dir: &Path) -> DcsServer {
        match DcsKind::from_env() {
            DcsKind::Etcd => DcsServer::Etcd(Etcd::start_in(dir)),
            DcsKind::ZooKeeper => DcsServer::ZooKeeper(ZooKeeper::start()),
        }
    }

    /// Which kind.
    pub fn kind(&self) -> DcsKind {
        match self {
            DcsServer::Etcd(_) => DcsKind::Etcd,
            DcsServer::ZooKeeper(_) | DcsServer::ZooKeeperEnsemble(_) => DcsKind::ZooKeeper,
        }
    }

    /// `127.0.0.1:<client port>` (every server's, joined with `, `, for an ensemble).
    pub fn host_port(&self) -> String {
        match self {
            DcsServer::Etcd(e) => e.host_port(),
            DcsServer::ZooKeeper(z) => z.host_port(),
            DcsServer::ZooKeeperEnsemble(z) => z.host_ports().join(", "),
        }
    }

    /// What the nodes' YAML names.
    pub fn endpoint(&self) -> DcsEndpoint {
        match self {
            DcsServer::Etcd(e) => DcsEndpoint::Etcd(e.host_port()),
            DcsServer::ZooKeeper(z) => match &z.tls {
                Some(tls) => DcsEndpoint::ZooKeeperTls {
                    hosts: z.host_port(),
                    cacert: tls.ca.clone(),
                    cert: tls.client_cert.clone(),
                    key: tls.client_key.clone(),
                },
                None => DcsEndpoint::ZooKeeper(z.host_port()),
            },
            DcsServer::ZooKeeperEnsemble(z) => DcsEndpoint::ZooKeeper(z.host_ports().join(", ")),
        }
    }

    /// Stops the server (every server of an ensemble), keeping its data.
    pub fn stop(&mut self) {
        match self {
            DcsServer::Etcd(e) => e.stop(),
            DcsServer::ZooKeeper(z) => z.stop(),
            DcsServer::ZooKeeperEnsemble(z) => z.stop_all(),
        }
    }

    /// Starts it again on the same port and data, waiting until it answers.
    pub fn start_again(&mut self) {
        match self {
            DcsServer::Etcd(e) => e.start_again(),
            DcsServer::ZooKeeper(z) => z.start_again(),
            DcsServer::ZooKeeperEnsemble(z) => z.start_all(),
        }
    }

    /// Kills it for good.
    pub fn kill(&mut self) {
        match self {
            DcsServer::Etcd(e) => e.kill(),
            DcsServer::ZooKeeper(z) => z.stop(),
            DcsServer::ZooKeeperEnsemble(z) => z.stop_all(),
        }
    }

    /// The ensemble, for the tests that break part of it; panics on anything else.
    pub fn ensemble(&mut self) -> &mut ZkEnsemble {
        match self {
            DcsServer::ZooKeeperEnsemble(z) => z,
            _ => panic!("this test needs a ZooKeeper ensemble (TestCluster::start_with)"),
        }
    }

    /// The etcd server, for the tests that read keys with etcdctl; panics on ZooKeeper.
    pub fn etcd(&self) -> &Etcd {
        match self {
            DcsServer::Etcd(e) => e,
            DcsServer::ZooKeeper(_) | DcsServer::ZooKeeperEnsemble(_) => {
                panic!("this test reads keys with etcdctl and needs SPILO_TEST_DCS=etcd")
            }
        }
    }

    /// A name and the tail of the server's log, for failure reports.
    pub fn log_tail(&self, n: usize) -> (String, String) {
        match self {
            DcsServer::Etcd(e) => (
                format!("etcd log ({})", e.log_path.display()),
                e.log_tail(n),
            ),
            DcsServer::ZooKeeper(z) => (
                format!("ZooKeeper log ({})", z.log_path.display()),
                crate::util::tail(&z.log_path, n),
            ),
            DcsServer::ZooKeeperEnsemble(z) => (
                format!("ZooKeeper ensemble logs ({})", z.dir().display()),
                z.log_tails(n),
            ),
        }
    }
}
