//! A single-member etcd on free loopback ports.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bins::{ETCD, ETCDCTL};
use crate::http;
use crate::util::{free_port, poll, run_with_timeout, send_signal, tail, wait_pid_gone, TempRoot};

/// How long etcd may take to answer `/health` after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One etcd process; killed on drop.
pub struct Etcd {
    /// Client port (`http://127.0.0.1:<client_port>`).
    pub client_port: u16,
    /// Peer port.
    pub peer_port: u16,
    /// Data directory (kept across [`Etcd::stop`] / [`Etcd::start_again`]).
    pub data_dir: PathBuf,
    /// stdout+stderr of every run.
    pub log_path: PathBuf,
    child: Option<Child>,
    // Declared last: removed after the process is gone.
    _own_root: Option<TempRoot>,
}

impl Etcd {
    /// Starts etcd in a temp directory of its own and waits until it is healthy.
    pub fn start() -> Etcd {
        let root = TempRoot::new("spilo-etcd-");
        let mut e = Etcd::start_in(root.path());
        e._own_root = Some(root);
        e
    }

    /// Starts etcd with its data and log under `dir` and waits until it is healthy.
    pub fn start_in(dir: &Path) -> Etcd {
        Etcd::start_in_on(dir, free_port())
    }

    /// Like [`Etcd::start_in`], serving clients on `client_port` (a port a test chose before
    /// the server existed).
    pub fn start_in_on(dir: &Path, client_port: u16) -> Etcd {
        let mut e = Etcd {
            client_port,
            peer_port: free_port(),
            data_dir: dir.join("etcd-data"),
            log_path: dir.join("etcd.log"),
            child: None,
            _own_root: None,
        };
        e.spawn();
        e
    }

    /// `127.0.0.1:<client port>`, as written in `etcd3.hosts`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.host_port())
    }

    /// The pid of the running etcd.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path.display()));
        let _ = writeln!(log, "==== [harness] starting etcd on {client} ====");
        let log2 = log.try_clone().expect("clone log file handle");
        // setpriv --pdeathsig: etcd dies with the test thread even if the harness is killed.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", ETCD])
            .arg("--name=spilo-test")
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=spilo-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn {ETCD}: {e} (install etcd-server: scripts/install-deps.sh)")
            });
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let port = self.client_port;
        let child = self.child.as_mut().expect("etcd spawned");
        let r = poll(READY_TIMEOUT, Duration::from_millis(200), || {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("etcd exited early with {status}"));
            }
            match http::get(port, "/health") {
                Ok((200, v)) if v["health"] == "true" || v["health"] == true => Ok(()),
                Ok((s, v)) => Err(format!("GET /health: {s} {v}")),
                Err(e) => Err(e),
            }
        });
        if let Err(last) = r {
            panic!(
                "etcd on 127.0.0.1:{port} not healthy within {READY_TIMEOUT:?} ({last}); log tail:\n{}",
                tail(&self.log_path, 30)
            );
        }
    }

    /// Stops etcd (SIGTERM, SIGKILL after 10 s); data dir and ports stay for
    /// [`Etcd::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            send_signal(pid, libc::SIGTERM);
            if !wait_pid_gone(pid, Duration::from_secs(10)) {
                send_signal(pid, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir and waits until it is healthy.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again on a running etcd");
        self.spawn();
    }

    /// SIGKILL etcd and reap it (no-op when it is not running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True while the etcd process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Runs etcdctl (v3 API) against this etcd.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=3s")
            .arg("--command-timeout=5s")
            .args(args);
        let out = run_with_timeout(cmd, Duration::from_secs(15))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "etcdctl {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The value of `key`, `None` if absent.
    pub fn get(&self, key: &str) -> Result<Option<String>, String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"])?;
        let v = out.trim_end_matches('\n');
        Ok(if out.is_empty() {
            None
        } else {
            Some(v.to_string())
        })
    }

    /// Every key under `prefix` with its value.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, String> {
        let out = self.etcdctl(&["get", prefix, "--prefix"])?;
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines
            .chunks(2)
            .map(|c| (c[0].to_string(), c.get(1).unwrap_or(&"").to_string()))
            .collect())
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if self._own_root.is_some() && std::thread::panicking() {
            eprintln!(
                "[harness] etcd log tail ({}):\n{}",
                self.log_path.display(),
                self.log_tail(30)
            );
        }
    }
}
