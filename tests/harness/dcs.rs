//! The DCS a test cluster runs on, chosen by `SPILO_TEST_DCS` (default `etcd`), so the same HA
//! tests run against every backend and shape: `etcd` (one member), `etcd-tls` (three members
//! serving TLS with client certificates and authentication, as in production), `etcd-plugin`
//! (etcd through the example plugin), `etcd-plugin-abi10` (etcd through the same plugin's
//! source built against the frozen ABI 1.0 SDK: no leader terms) and `zookeeper`; or given explicitly
//! ([`crate::TestCluster::start_with`]) for the tests of one DCS shape: a ZooKeeper ensemble, a
//! TLS-only ZooKeeper, a 3-member etcd.

use std::path::{Path, PathBuf};

use crate::etcd::Etcd;
use crate::etcd_cluster::{EtcdCluster, SPILO_PASSWORD, SPILO_USER};
use crate::util::{chmod, note};
use crate::zookeeper::ZooKeeper;
use crate::zookeeper_ensemble::ZkEnsemble;

/// Which DCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DcsKind {
    /// etcd v3, one member.
    Etcd,
    /// etcd v3, three members, TLS with client certificates, authentication.
    EtcdSecure,
    /// etcd v3 reached through the example `etcd-gateway` plugin (a shared library).
    EtcdPlugin,
    /// The same plugin's source built against the frozen ABI 1.0 SDK
    /// (`tests/plugins/abi-1.0`): a plugin binary from before ABI 1.1, which reports no terms.
    EtcdPluginAbi10,
    /// ZooKeeper.
    ZooKeeper,
}

impl DcsKind {
    /// From `SPILO_TEST_DCS` (`etcd` when unset); panics on anything else, naming the value.
    pub fn from_env() -> DcsKind {
        match std::env::var("SPILO_TEST_DCS").as_deref() {
            Err(_) | Ok("") | Ok("etcd") | Ok("etcd3") => DcsKind::Etcd,
            Ok("etcd-tls") => DcsKind::EtcdSecure,
            Ok("etcd-plugin") => DcsKind::EtcdPlugin,
            Ok("etcd-plugin-abi10") => DcsKind::EtcdPluginAbi10,
            Ok("zookeeper") | Ok("zk") => DcsKind::ZooKeeper,
            Ok(other) => panic!(
                "SPILO_TEST_DCS={other:?}: expected etcd, etcd-tls, etcd-plugin, etcd-plugin-abi10 or zookeeper"
            ),
        }
    }
}

/// Where the nodes find the DCS: rendered into their YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DcsEndpoint {
    /// `etcd3: {hosts: …}` (one `host:port`, or several separated by commas).
    Etcd(String),
    /// `etcd3:` over https with a client certificate and a user.
    EtcdSecure {
        /// `host:port,host:port,…`.
        hosts: String,
        /// CA certificate that signed the servers'.
        cacert: PathBuf,
        /// Client certificate.
        cert: PathBuf,
        /// Client key (readable by the postgres user).
        key: PathBuf,
        /// etcd user.
        username: String,
        /// Its password.
        password: String,
    },
    /// `etcd3: {srv: <domain>, srv_suffix: …}`: etcd found through DNS SRV records.
    EtcdSrv {
        /// `etcd3.srv`.
        domain: String,
        /// `etcd3.srv_suffix`.
        suffix: Option<String>,
    },
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
    /// A DCS plugin: `plugins: [{name, path, kind: dcs}]` and `dcs: {plugin: name, …}`.
    Plugin {
        /// The plugin's name.
        name: String,
        /// Its shared library (readable by postgres).
        path: PathBuf,
        /// Its own settings, as YAML values: `(key, value)`.
        settings: Vec<(String, String)>,
    },
}

impl DcsEndpoint {
    /// The YAML section of a node config.
    pub fn yaml(&self) -> String {
        match self {
            DcsEndpoint::Etcd(h) => format!("etcd3:\n  hosts: {h}\n"),
            DcsEndpoint::EtcdSecure {
                hosts,
                cacert,
                cert,
                key,
                username,
                password,
            } => format!(
                "etcd3:\n  hosts: {hosts}\n  protocol: https\n  cacert: {}\n  cert: {}\n  key: {}\n  \
                 username: {username}\n  password: {password}\n",
                cacert.display(),
                cert.display(),
                key.display()
            ),
            DcsEndpoint::EtcdSrv { domain, suffix } => match suffix {
                Some(x) => format!("etcd3:\n  srv: {domain}\n  srv_suffix: {x}\n"),
                None => format!("etcd3:\n  srv: {domain}\n"),
            },
            DcsEndpoint::ZooKeeper(h) => format!("zookeeper:\n  hosts: [{h}]\n"),
            DcsEndpoint::Plugin {
                name,
                path,
                settings,
            } => {
                let mut y = format!(
                    "plugins:\n- {{name: {name}, path: {}, kind: dcs}}\ndcs:\n  plugin: {name}\n",
                    path.display()
                );
                for (k, v) in settings {
                    y.push_str(&format!("  {k}: {v}\n"));
                }
                y
            }
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
    /// A multi-member etcd (plain, or TLS + authentication).
    EtcdCluster(EtcdCluster),
    /// A single-member etcd that the nodes reach through the `etcd-gateway` plugin, built for
    /// the current ABI (false) or the frozen 1.0 one (true).
    EtcdViaPlugin(Etcd, bool),
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
            DcsKind::EtcdSecure => DcsServer::etcd_cluster(EtcdCluster::start_secure(3)),
            DcsKind::EtcdPlugin => DcsServer::EtcdViaPlugin(Etcd::start_in(dir), false),
            DcsKind::EtcdPluginAbi10 => DcsServer::EtcdViaPlugin(Etcd::start_in(dir), true),
            DcsKind::ZooKeeper => DcsServer::ZooKeeper(ZooKeeper::start()),
        }
    }

    /// Wraps a running etcd cluster; makes its client key readable by the daemons.
    pub fn etcd_cluster(cluster: EtcdCluster) -> DcsServer {
        if let Some(tls) = &cluster.tls {
            // A throw-away test key: the daemons run as postgres and must read it.
            chmod(&tls.client_key, 0o644);
        }
        note(format!(
            "etcd cluster of {} members at {} (TLS: {}, auth: {})",
            cluster.members.len(),
            cluster.host_ports().join(","),
            cluster.tls.is_some(),
            cluster.auth
        ));
        DcsServer::EtcdCluster(cluster)
    }

    /// Which kind.
    pub fn kind(&self) -> DcsKind {
        match self {
            DcsServer::Etcd(_) => DcsKind::Etcd,
            DcsServer::EtcdCluster(c) if c.tls.is_some() => DcsKind::EtcdSecure,
            DcsServer::EtcdCluster(_) => DcsKind::Etcd,
            DcsServer::EtcdViaPlugin(_, false) => DcsKind::EtcdPlugin,
            DcsServer::EtcdViaPlugin(_, true) => DcsKind::EtcdPluginAbi10,
            DcsServer::ZooKeeper(_) | DcsServer::ZooKeeperEnsemble(_) => DcsKind::ZooKeeper,
        }
    }

    /// `127.0.0.1:<client port>` (every server's, joined with `, `, for an ensemble).
    pub fn host_port(&self) -> String {
        match self {
            DcsServer::Etcd(e) => e.host_port(),
            DcsServer::EtcdCluster(c) => c.host_ports().join(","),
            DcsServer::EtcdViaPlugin(e, _) => e.host_port(),
            DcsServer::ZooKeeper(z) => z.host_port(),
            DcsServer::ZooKeeperEnsemble(z) => z.host_ports().join(", "),
        }
    }

    /// What the nodes' YAML names.
    pub fn endpoint(&self) -> DcsEndpoint {
        match self {
            DcsServer::Etcd(e) => DcsEndpoint::Etcd(e.host_port()),
            DcsServer::EtcdViaPlugin(e, abi10) => DcsEndpoint::Plugin {
                name: "etcd-gateway".into(),
                path: crate::bins::plugin_lib(if *abi10 {
                    "libspilo_plugin_etcd_gateway_abi10.so"
                } else {
                    "libspilo_plugin_etcd_gateway.so"
                }),
                settings: vec![("hosts".into(), format!("[\"{}\"]", e.host_port()))],
            },
            DcsServer::EtcdCluster(c) => match &c.tls {
                Some(tls) => DcsEndpoint::EtcdSecure {
                    hosts: c.host_ports().join(","),
                    cacert: tls.ca.clone(),
                    cert: tls.client_cert.clone(),
                    key: tls.client_key.clone(),
                    username: SPILO_USER.to_string(),
                    password: SPILO_PASSWORD.to_string(),
                },
                None => DcsEndpoint::Etcd(c.host_ports().join(",")),
            },
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
            DcsServer::Etcd(e) | DcsServer::EtcdViaPlugin(e, _) => e.stop(),
            DcsServer::EtcdCluster(c) => c.stop_all(),
            DcsServer::ZooKeeper(z) => z.stop(),
            DcsServer::ZooKeeperEnsemble(z) => z.stop_all(),
        }
    }

    /// Starts it again on the same port and data, waiting until it answers.
    pub fn start_again(&mut self) {
        match self {
            DcsServer::Etcd(e) | DcsServer::EtcdViaPlugin(e, _) => e.start_again(),
            DcsServer::EtcdCluster(c) => c.start_all(),
            DcsServer::ZooKeeper(z) => z.start_again(),
            DcsServer::ZooKeeperEnsemble(z) => z.start_all(),
        }
    }

    /// Kills it for good.
    pub fn kill(&mut self) {
        match self {
            DcsServer::Etcd(e) | DcsServer::EtcdViaPlugin(e, _) => e.kill(),
            DcsServer::EtcdCluster(c) => {
                for i in 0..c.members.len() {
                    c.kill_member(i);
                }
            }
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
            DcsServer::Etcd(e) | DcsServer::EtcdViaPlugin(e, _) => e,
            DcsServer::EtcdCluster(_)
            | DcsServer::ZooKeeper(_)
            | DcsServer::ZooKeeperEnsemble(_) => {
                panic!("this test reads keys with etcdctl and needs SPILO_TEST_DCS=etcd")
            }
        }
    }

    /// A name and the tail of the server's log, for failure reports.
    pub fn log_tail(&self, n: usize) -> (String, String) {
        match self {
            DcsServer::Etcd(e) | DcsServer::EtcdViaPlugin(e, _) => (
                format!("etcd log ({})", e.log_path.display()),
                e.log_tail(n),
            ),
            DcsServer::EtcdCluster(c) => (
                format!("etcd member logs ({})", c.dir().display()),
                c.log_tails(n),
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
