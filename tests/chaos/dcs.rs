//! The DCS of a chaos run: a 3-member etcd cluster or a 3-server ZooKeeper ensemble, one
//! server per namespace (`d1`…`d3`), each listening on its own bridge address.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spilo_tests::zookeeper::CLASSPATH;

use crate::net::{Host, Topology};

/// Which store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// etcd v3 (Debian's etcd-server).
    Etcd,
    /// ZooKeeper (Debian's zookeeper).
    ZooKeeper,
}

impl Kind {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::ZooKeeper => "zookeeper",
        }
    }
}

const ETCD_CLIENT: u16 = 2379;
const ETCD_PEER: u16 = 2380;
const ZK_CLIENT: u16 = 2181;

/// The servers.
pub struct Dcs {
    /// The store.
    pub kind: Kind,
    /// The hosts (namespaces) the servers run in.
    pub hosts: Vec<Host>,
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Dcs {
    /// Writes the configs and starts every server; waits until the store serves.
    pub fn start(kind: Kind, topo: &Topology, names: &[&str], dir: &Path) -> Result<Dcs, String> {
        let hosts: Vec<Host> = names.iter().map(|n| topo.host(n).clone()).collect();
        let mut dcs = Dcs {
            kind,
            hosts,
            dir: dir.to_path_buf(),
            children: Vec::new(),
        };
        for i in 0..dcs.hosts.len() {
            let d = dcs.member_dir(i);
            fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
            if kind == Kind::ZooKeeper {
                dcs.write_zk_config(i)?;
            }
            dcs.children.push(None);
        }
        for i in 0..dcs.hosts.len() {
            dcs.spawn(i)?;
        }
        dcs.wait_serving(Duration::from_secs(120))?;
        Ok(dcs)
    }

    fn member_dir(&self, i: usize) -> PathBuf {
        self.dir
            .join(format!("{}-{}", self.kind.name(), self.hosts[i].name))
    }

    fn write_zk_config(&self, i: usize) -> Result<(), String> {
        let d = self.member_dir(i);
        let data = d.join("data");
        fs::create_dir_all(&data).map_err(|e| format!("create {}: {e}", data.display()))?;
        fs::write(data.join("myid"), format!("{}\n", i + 1)).map_err(|e| e.to_string())?;
        let peers: String = self
            .hosts
            .iter()
            .enumerate()
            .map(|(k, h)| format!("server.{}={}:2888:3888\n", k + 1, h.addr))
            .collect();
        let cfg = format!(
            "tickTime=500\nmaxSessionTimeout=30000\ninitLimit=20\nsyncLimit=10\n\
             dataDir={}\nclientPort={ZK_CLIENT}\nclientPortAddress={}\n\
             admin.enableServer=false\n4lw.commands.whitelist=*\n{peers}",
            data.display(),
            self.hosts[i].addr
        );
        fs::write(d.join("zoo.cfg"), cfg).map_err(|e| e.to_string())
    }

    /// Starts server `i` (its data directory kept from before).
    pub fn spawn(&mut self, i: usize) -> Result<(), String> {
        if self.children[i].is_some() {
            return Ok(());
        }
        let h = self.hosts[i].clone();
        let d = self.member_dir(i);
        let log = File::options()
            .create(true)
            .append(true)
            .open(d.join("server.log"))
            .map_err(|e| format!("open log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, "setpriv", "--pdeathsig", "KILL"]);
        match self.kind {
            Kind::Etcd => {
                let cluster: Vec<String> = self
                    .hosts
                    .iter()
                    .map(|o| format!("{}=http://{}:{ETCD_PEER}", o.name, o.addr))
                    .collect();
                cmd.arg(spilo_tests::bins::ETCD).args([
                    "--name",
                    &h.name,
                    "--data-dir",
                    &d.join("data").display().to_string(),
                    "--listen-client-urls",
                    &format!("http://{}:{ETCD_CLIENT}", h.addr),
                    "--advertise-client-urls",
                    &format!("http://{}:{ETCD_CLIENT}", h.addr),
                    "--listen-peer-urls",
                    &format!("http://{}:{ETCD_PEER}", h.addr),
                    "--initial-advertise-peer-urls",
                    &format!("http://{}:{ETCD_PEER}", h.addr),
                    "--initial-cluster",
                    &cluster.join(","),
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "spilo-chaos",
                    "--log-level",
                    "warn",
                ]);
            }
            Kind::ZooKeeper => {
                cmd.args([
                    "java",
                    "-Xmx128m",
                    "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1",
                    "-cp",
                    CLASSPATH,
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                ])
                .arg(d.join("zoo.cfg"));
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("start {} on {}: {e}", self.kind.name(), h.name))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// SIGKILLs server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether server `i` was started and not killed.
    pub fn running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// Restarts every killed server.
    pub fn start_all(&mut self) -> Result<(), String> {
        for i in 0..self.hosts.len() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// The node config's DCS section.
    pub fn yaml(&self) -> String {
        let hosts = |port: u16, quote: &str| -> Vec<String> {
            self.hosts
                .iter()
                .map(|h| format!("{quote}{}:{port}{quote}", h.addr))
                .collect()
        };
        match self.kind {
            Kind::Etcd => format!("etcd3:\n  hosts: {}\n", hosts(ETCD_CLIENT, "").join(",")),
            Kind::ZooKeeper => format!(
                "zookeeper:\n  hosts: [{}]\n",
                hosts(ZK_CLIENT, "'").join(", ")
            ),
        }
    }

    /// The index of the current leader (etcd raft leader, ZooKeeper `Mode: leader`).
    pub fn leader(&self) -> Option<usize> {
        (0..self.hosts.len()).find(|&i| self.running(i) && self.is_leader(i))
    }

    /// `etcdctl` against server `i` alone, with a 1 s command timeout.
    fn etcdctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let endpoint = format!("http://{}:{ETCD_CLIENT}", self.hosts[i].addr);
        let mut all = vec!["--endpoints", &endpoint, "--command-timeout=1s"];
        all.extend_from_slice(args);
        crate::net::run(spilo_tests::bins::ETCDCTL, &all)
    }

    /// ZooKeeper's `srvr` answer of server `i`.
    fn srvr(&self, i: usize) -> String {
        four_letter(&self.hosts[i].addr, "srvr").unwrap_or_default()
    }

    fn is_leader(&self, i: usize) -> bool {
        match self.kind {
            Kind::Etcd => {
                let Ok(out) = self.etcdctl(i, &["endpoint", "status", "-w", "json"]) else {
                    return false;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
                    return false;
                };
                let s = &v[0]["Status"];
                s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"]
            }
            Kind::ZooKeeper => self.srvr(i).contains("Mode: leader"),
        }
    }

    /// Whether server `i` serves clients.
    pub fn serving(&self, i: usize) -> bool {
        match self.kind {
            Kind::Etcd => self.etcdctl(i, &["endpoint", "health"]).is_ok(),
            Kind::ZooKeeper => self.srvr(i).contains("Mode:"),
        }
    }

    /// Waits until every running server serves.
    pub fn wait_serving(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let waiting: Vec<&str> = (0..self.hosts.len())
                .filter(|&i| self.running(i) && !self.serving(i))
                .map(|i| self.hosts[i].name.as_str())
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} servers {waiting:?} not serving after {timeout:?}; logs in {}",
                    self.kind.name(),
                    self.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Dcs {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// A ZooKeeper four-letter word to `addr:2181`.
fn four_letter(addr: &str, word: &str) -> Option<String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = format!("{addr}:{ZK_CLIENT}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(500)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    s.write_all(word.as_bytes()).ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    Some(answer)
}
