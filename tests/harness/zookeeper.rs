//! A standalone ZooKeeper (Debian's `zookeeper` package) on a free loopback port.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{free_port, tail, TempRoot};

/// The class path of the server.
const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar";
/// How long the server may take to answer `ruok` after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(40);

/// One ZooKeeper server process; killed on drop.
pub struct ZooKeeper {
    /// Client port.
    pub port: u16,
    /// stdout+stderr of every run.
    pub log_path: PathBuf,
    child: Option<Child>,
    // Declared last: removed after the process is gone.
    root: TempRoot,
}

impl ZooKeeper {
    /// Starts a server (tickTime 500 ms, sessions of 1–10 s) and waits until it answers.
    pub fn start() -> ZooKeeper {
        let root = TempRoot::new("spilo-zk-");
        let mut zk = ZooKeeper {
            port: free_port(),
            log_path: root.path().join("zk.log"),
            child: None,
            root,
        };
        zk.spawn();
        zk
    }

    /// `127.0.0.1:<port>`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The pid of the running server.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "ZooKeeper already running");
        let dir = self.root.path();
        let cfg = dir.join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\n\
                 maxSessionTimeout=10000\nadmin.enableServer=false\n4lw.commands.whitelist=*\n",
                dir.join("data").display(),
                self.port
            ),
        )
        .unwrap_or_else(|e| panic!("write zoo.cfg: {e}"));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path.display()));
        let _ = writeln!(
            log,
            "==== [harness] starting ZooKeeper on {} ====",
            self.port
        );
        let log2 = log.try_clone().expect("clone log file handle");
        // setpriv --pdeathsig: the server dies with the test thread even if the harness is killed.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "java", "-Xmx256m", "-cp", CLASSPATH])
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ZooKeeper: {e}"));
        self.child = Some(child);
        let started = Instant::now();
        while !self.ruok() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "ZooKeeper exited early with {status}; log tail:\n{}",
                    tail(&self.log_path, 30)
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "ZooKeeper not up within {READY_TIMEOUT:?}; log tail:\n{}",
                    tail(&self.log_path, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// True when the server answers the `ruok` four-letter word with `imok`.
    pub fn ruok(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"ruok").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer == "imok"
    }

    /// Kills the server (data kept for [`ZooKeeper::start_again`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data and waits until it answers.
    pub fn start_again(&mut self) {
        self.spawn();
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "[harness] ZooKeeper log tail ({}):\n{}",
                self.log_path.display(),
                tail(&self.log_path, 30)
            );
        }
    }
}
