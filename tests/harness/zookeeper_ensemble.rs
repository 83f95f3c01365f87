//! A ZooKeeper ensemble of n servers on loopback (`server.N=127.0.0.1:peerPort:electionPort`,
//! one `myid` and data directory each), with the failures the tests need: stop and start one
//! server, lose the quorum and get it back, freeze everything.
//!
//! A server is "serving" when its `srvr` four-letter word reports a `Mode:` (leader, follower
//! or standalone); a server without quorum answers "not currently serving requests" and
//! refuses client sessions. Every server dies with the thread that started it and is killed
//! on drop; the directory is kept when the test fails.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::etcd_cluster::freeze_pid;
use crate::util::{free_port, send_signal, tail, TempRoot};
use crate::zookeeper::{four_letter, spawn_java, ZOO_TIMING};

/// How long servers may take to serve after a start (JVM start-up and leader election on a
/// busy 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// One server of a [`ZkEnsemble`].
pub struct ZkEnsembleServer {
    /// Its `myid` (1-based).
    pub id: usize,
    /// Client port.
    pub client_port: u16,
    /// Quorum (follower-to-leader) port.
    pub peer_port: u16,
    /// Leader election port.
    pub election_port: u16,
    /// Its directory: `zoo.cfg`, `data/` (with `myid`).
    pub dir: PathBuf,
    /// stdout+stderr of every run.
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl ZkEnsembleServer {
    /// The pid of the running process.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// True while its process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// n ZooKeeper servers forming one ensemble; killed on drop.
pub struct ZkEnsemble {
    /// The servers, `myid` 1..=n in order.
    pub servers: Vec<ZkEnsembleServer>,
    // Declared last: removed after the processes are gone.
    root: TempRoot,
}

impl ZkEnsemble {
    /// Starts `n` servers and waits until every one serves.
    pub fn start(n: usize) -> ZkEnsemble {
        assert!(n >= 3, "an ensemble needs at least three servers");
        let root = TempRoot::new("spilo-zk-ensemble-");
        let servers: Vec<ZkEnsembleServer> = (1..=n)
            .map(|id| {
                let dir = root.path().join(format!("zk{id}"));
                ZkEnsembleServer {
                    id,
                    client_port: free_port(),
                    peer_port: free_port(),
                    election_port: free_port(),
                    log_path: dir.join("zk.log"),
                    dir,
                    child: None,
                }
            })
            .collect();
        let peers: String = servers
            .iter()
            .map(|s| {
                format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    s.id, s.peer_port, s.election_port
                )
            })
            .collect();
        for s in &servers {
            let data = s.dir.join("data");
            std::fs::create_dir_all(&data)
                .unwrap_or_else(|e| panic!("create {}: {e}", data.display()));
            std::fs::write(data.join("myid"), format!("{}\n", s.id))
                .unwrap_or_else(|e| panic!("write myid: {e}"));
            std::fs::write(
                s.dir.join("zoo.cfg"),
                format!(
                    "{ZOO_TIMING}initLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={}\n\
                     clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
                     4lw.commands.whitelist=*\n{peers}",
                    data.display(),
                    s.client_port
                ),
            )
            .unwrap_or_else(|e| panic!("write zoo.cfg: {e}"));
        }
        let mut ensemble = ZkEnsemble { servers, root };
        ensemble.start_all();
        ensemble
    }

    /// `127.0.0.1:<client port>` of every server, as written in `zookeeper.hosts`.
    pub fn host_ports(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.client_port))
            .collect()
    }

    /// The directory holding every server's directory.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// The pids of the running servers.
    pub fn pids(&self) -> Vec<i32> {
        self.servers
            .iter()
            .filter_map(ZkEnsembleServer::pid)
            .collect()
    }

    fn spawn(&mut self, i: usize) {
        let s = &mut self.servers[i];
        assert!(
            s.child.is_none(),
            "ZooKeeper server {} already running",
            s.id
        );
        let banner = format!("starting ZooKeeper server {} on {}", s.id, s.client_port);
        s.child = Some(spawn_java(
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            &s.dir.join("zoo.cfg"),
            &[],
            &s.log_path,
            &banner,
        ));
    }

    /// Server `i`'s `Mode:` (`leader`, `follower`) while it serves, else `None`.
    pub fn mode(&self, i: usize) -> Option<String> {
        let answer = four_letter(self.servers[i].client_port, "srvr")?;
        answer
            .lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_string())
    }

    /// Waits until every server of `which` serves.
    pub fn wait_serving(&mut self, which: &[usize]) {
        let started = Instant::now();
        loop {
            let waiting: Vec<usize> = which
                .iter()
                .copied()
                .filter(|&i| self.mode(i).is_none())
                .collect();
            if waiting.is_empty() {
                return;
            }
            for &i in which {
                if let Some(Ok(Some(status))) = self.servers[i].child.as_mut().map(|c| c.try_wait())
                {
                    panic!(
                        "ZooKeeper server {} exited early with {status}; log tail:\n{}",
                        self.servers[i].id,
                        tail(&self.servers[i].log_path, 30)
                    );
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "ZooKeeper servers {waiting:?} (0-based) not serving within {READY_TIMEOUT:?}; \
                     logs in {}:\n{}",
                    self.root.path().display(),
                    self.log_tails(15)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts every server that is not running and waits until all of them serve.
    pub fn start_all(&mut self) {
        for i in 0..self.servers.len() {
            if self.servers[i].child.is_none() {
                self.spawn(i);
            }
        }
        let all: Vec<usize> = (0..self.servers.len()).collect();
        self.wait_serving(&all);
    }

    /// Kills server `i` (SIGKILL; data kept).
    pub fn stop_server(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Starts server `i` again (same ports and data) and waits until it serves.
    pub fn start_server(&mut self, i: usize) {
        self.spawn(i);
        self.wait_serving(&[i]);
    }

    /// Kills every server (data kept).
    pub fn stop_all(&mut self) {
        for s in &mut self.servers {
            s.kill();
        }
    }

    /// Kills every server but `survivor`: the ensemble loses its quorum, and the survivor
    /// stops serving. Returns the killed indexes, for [`ZkEnsemble::start_all`].
    pub fn lose_quorum(&mut self, survivor: usize) -> Vec<usize> {
        let killed: Vec<usize> = (0..self.servers.len()).filter(|&i| i != survivor).collect();
        for &i in &killed {
            self.servers[i].kill();
        }
        killed
    }

    /// The index of the server holding the connection of session `session_id` (from the
    /// `cons` four-letter word of every server).
    pub fn server_of_session(&self, session_id: i64) -> Option<usize> {
        let needle = format!("sid=0x{session_id:x}");
        (0..self.servers.len()).find(|&i| {
            self.servers[i].is_running()
                && four_letter(self.servers[i].client_port, "cons")
                    .is_some_and(|answer| answer.contains(&needle))
        })
    }

    /// SIGSTOPs every running server.
    pub fn freeze_all(&self) {
        for pid in self.pids() {
            freeze_pid(pid);
        }
    }

    /// SIGCONTs every running server.
    pub fn thaw_all(&self) {
        for pid in self.pids() {
            send_signal(pid, libc::SIGCONT);
        }
    }

    /// The last `n` lines of every server's log.
    pub fn log_tails(&self, n: usize) -> String {
        self.servers
            .iter()
            .map(|s| {
                format!(
                    "--- zk{} ({}) ---\n{}",
                    s.id,
                    s.log_path.display(),
                    tail(&s.log_path, n)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ZkEnsemble {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(pid) = s.pid() {
                send_signal(pid, libc::SIGCONT);
            }
            s.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "[harness] ZooKeeper ensemble log tails:\n{}",
                self.log_tails(20)
            );
        }
    }
}
