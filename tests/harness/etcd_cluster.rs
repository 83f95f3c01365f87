//! An etcd cluster of one or more members on loopback, optionally in production shape: clients
//! served over TLS with client certificates required, and username/password authentication
//! enabled (users `root:rootpw` and `spilo:spilopw`, the latter with read-write on `/`).
//!
//! Peers talk plain HTTP (loopback only); only the client side is secured. Every member is
//! started with `setpriv --pdeathsig KILL`, so it dies with the thread that started it, and is
//! killed on drop.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bins::{ETCD, ETCDCTL};
use crate::util::{free_port, run_with_timeout, send_signal, tail, wait_pid_gone, TempRoot};

/// How long the cluster may take to become healthy after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(40);

/// The etcd root user's password in a secure cluster.
pub const ROOT_PASSWORD: &str = "rootpw";
/// The unprivileged user made in a secure cluster (read-write on the whole key space).
pub const SPILO_USER: &str = "spilo";
/// Its password.
pub const SPILO_PASSWORD: &str = "spilopw";

/// The PEM files of a secure cluster.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA certificate that signed the server and client certificates.
    pub ca: PathBuf,
    /// Server certificate (subjectAltName IP:127.0.0.1, DNS:localhost).
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

/// One member process of an [`EtcdCluster`].
pub struct EtcdMember {
    /// Member name (`m0`, `m1`, ...).
    pub name: String,
    /// Client port.
    pub client_port: u16,
    /// Peer port.
    pub peer_port: u16,
    /// Data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// stdout+stderr of every run.
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl EtcdMember {
    /// The pid of the running process.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// n etcd processes forming one cluster; killed on drop.
pub struct EtcdCluster {
    /// The members, in `--initial-cluster` order.
    pub members: Vec<EtcdMember>,
    /// The certificates when the cluster serves clients over TLS.
    pub tls: Option<TlsFiles>,
    /// True when authentication is enabled.
    pub auth: bool,
    // Declared last: removed after the processes are gone.
    root: TempRoot,
}

impl EtcdCluster {
    /// Starts an `n`-member plain-HTTP cluster without authentication.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, false)
    }

    /// Starts an `n`-member cluster serving TLS (client certificates required) with
    /// authentication enabled.
    pub fn start_secure(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, true)
    }

    fn start_with(n: usize, secure: bool) -> EtcdCluster {
        assert!(n >= 1, "an etcd cluster needs at least one member");
        let root = TempRoot::new("spilo-etcd-cluster-");
        let tls = secure.then(|| make_certs(root.path()));
        let members = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                EtcdMember {
                    client_port: free_port(),
                    peer_port: free_port(),
                    data_dir: root.path().join(format!("{name}-data")),
                    log_path: root.path().join(format!("{name}.log")),
                    name,
                    child: None,
                }
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            tls,
            auth: false,
            root,
        };
        cluster.start_all();
        if secure {
            cluster.enable_auth();
        }
        cluster
    }

    /// The scheme clients use.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `127.0.0.1:<client port>` of every member, as written in `etcd3.hosts`.
    pub fn host_ports(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[i].client_port
        )
    }

    /// The pids of the running members.
    pub fn pids(&self) -> Vec<i32> {
        self.members.iter().filter_map(EtcdMember::pid).collect()
    }

    /// The directory holding data, logs and certificates.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster();
        let client = self.endpoint(i);
        let tls = self.tls.clone();
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {} already running", m.name);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", m.log_path.display()));
        let _ = writeln!(
            log,
            "==== [harness] starting etcd {} on {client} ====",
            m.name
        );
        let log2 = log.try_clone().expect("clone log file handle");
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", ETCD])
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=spilo-conformance")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        if let Some(tls) = &tls {
            cmd.arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {ETCD}: {e}"));
        m.child = Some(child);
    }

    /// Starts every member that is not running and waits until the cluster is healthy.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_healthy(&all);
    }

    /// Starts member `i` again (same data and ports) and waits until it is healthy.
    pub fn start_member(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(&[i]);
    }

    /// Waits until the members `which` answer `endpoint health`.
    pub fn wait_healthy(&mut self, which: &[usize]) {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < READY_TIMEOUT {
            for &i in which {
                if let Some(Ok(Some(status))) = self.members[i].child.as_mut().map(|c| c.try_wait())
                {
                    panic!(
                        "etcd {} exited early with {status}; log tail:\n{}",
                        self.members[i].name,
                        tail(&self.members[i].log_path, 30)
                    );
                }
            }
            match self.etcdctl_on(which, &["endpoint", "health"]) {
                Ok(_) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let logs: Vec<String> = which
            .iter()
            .map(|&i| {
                format!(
                    "--- {} ---\n{}",
                    self.members[i].name,
                    tail(&self.members[i].log_path, 20)
                )
            })
            .collect();
        panic!(
            "etcd cluster not healthy within {READY_TIMEOUT:?} ({last}); log tails:\n{}",
            logs.join("\n")
        );
    }

    /// Stops member `i` with SIGTERM (SIGKILL after 10 s).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let pid = child.id() as i32;
            send_signal(pid, libc::SIGTERM);
            if !wait_pid_gone(pid, Duration::from_secs(10)) {
                send_signal(pid, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Stops every member; data and ports stay for [`EtcdCluster::start_all`].
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }

    /// SIGSTOPs every running member and waits until all their threads are stopped.
    pub fn freeze_all(&self) {
        for pid in self.pids() {
            freeze_pid(pid);
        }
    }

    /// SIGCONTs every running member.
    pub fn thaw_all(&self) {
        for pid in self.pids() {
            send_signal(pid, libc::SIGCONT);
        }
    }

    /// Runs etcdctl against the members `which`, with the TLS files and root credentials when
    /// the cluster is secure.
    pub fn etcdctl_on(&self, which: &[usize], args: &[&str]) -> Result<String, String> {
        let endpoints: Vec<String> = which.iter().map(|&i| self.endpoint(i)).collect();
        let mut cmd = Command::new(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=4s");
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        if self.auth {
            cmd.arg(format!("--user=root:{ROOT_PASSWORD}"));
        }
        cmd.args(args);
        let out = run_with_timeout(cmd, Duration::from_secs(15))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "etcdctl {args:?}: {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        }
    }

    /// Runs etcdctl against every running member.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect();
        self.etcdctl_on(&running, args)
    }

    /// The index of the member that is the raft leader, as `endpoint status` reports it.
    pub fn leader_index(&self) -> Result<usize, String> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let out = match self.etcdctl_on(&[i], &["endpoint", "status", "-w", "json"]) {
                Ok(out) => out,
                Err(_) => continue,
            };
            let v: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| format!("endpoint status JSON: {e}"))?;
            let status = &v[0]["Status"];
            let (id, leader) = (&status["header"]["member_id"], &status["leader"]);
            if !id.is_null() && id == leader {
                return Ok(i);
            }
        }
        Err("no member reports itself as the leader".to_string())
    }

    /// Hands raft leadership to member `i` (`etcdctl move-leader`, sent to the current
    /// leader) and waits until `i` reports itself the leader.
    pub fn move_leader_to(&self, i: usize) -> Result<(), String> {
        let current = self.leader_index()?;
        if current == i {
            return Ok(());
        }
        let out = self.etcdctl_on(&[i], &["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("endpoint status JSON: {e}"))?;
        let id = v[0]["Status"]["header"]["member_id"]
            .as_u64()
            .ok_or_else(|| format!("no member_id in {out}"))?;
        self.etcdctl_on(&[current], &["move-leader", &format!("{id:x}")])?;
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if self.leader_index() == Ok(i) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("member {i} did not become the raft leader"))
    }

    /// Makes the users and enables authentication.
    fn enable_auth(&mut self) {
        let steps: [&[&str]; 8] = [
            &["user", "add", "root:rootpw"],
            &["user", "grant-role", "root", "root"],
            &["role", "add", "spilo-rw"],
            &[
                "role",
                "grant-permission",
                "spilo-rw",
                "--prefix=true",
                "readwrite",
                "/",
            ],
            &["user", "add", "spilo:spilopw"],
            &["user", "grant-role", "spilo", "spilo-rw"],
            &["auth", "enable"],
            &["user", "list"],
        ];
        for (n, args) in steps.iter().enumerate() {
            if n == 7 {
                self.auth = true;
            }
            if let Err(e) = self.etcdctl(args) {
                // etcd may already have granted the root role with the user.
                if args[..2] == ["user", "grant-role"] && args[2] == "root" {
                    continue;
                }
                panic!("enabling etcd authentication: {e}");
            }
        }
    }

    /// The last `n` lines of every member's log.
    pub fn log_tails(&self, n: usize) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {} ---\n{}", m.name, tail(&m.log_path, n)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(pid) = m.pid() {
                // A frozen process still dies of SIGKILL, but continue it anyway.
                send_signal(pid, libc::SIGCONT);
            }
            m.kill();
        }
        if std::thread::panicking() {
            eprintln!("[harness] etcd cluster log tails:\n{}", self.log_tails(20));
        }
    }
}

/// SIGSTOPs `pid` and waits (up to 5 s) until every one of its threads is stopped.
pub fn freeze_pid(pid: i32) {
    send_signal(pid, libc::SIGSTOP);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|dir| dir.flatten().map(|t| t.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        let stopped = tasks.iter().all(|task| {
            std::fs::read_to_string(task.join("stat"))
                .ok()
                .and_then(|stat| {
                    let state = stat.rsplit_once(") ")?.1.chars().next()?;
                    Some(state == 'T' || state == 't')
                })
                .unwrap_or(true)
        });
        if stopped && !tasks.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the `openssl` CLI with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run openssl: {e}"));
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Generates, in `dir`, a CA, a server certificate for 127.0.0.1 and localhost and a client
/// certificate, all with P-256 keys (PKCS#8 PEM). Shared by the etcd and ZooKeeper harnesses.
pub fn make_certs(dir: &Path) -> TlsFiles {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=spilo-test-ca",
    ]);
    openssl(dir, &ca);
    for (name, cn, ext) in [
        (
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        (
            "client",
            "/CN=spilo-test-client",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        let ext_file = format!("{name}.ext");
        std::fs::write(dir.join(&ext_file), ext)
            .unwrap_or_else(|e| panic!("write {ext_file}: {e}"));
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", cn]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext_file,
            ],
        );
    }
    TlsFiles {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}
