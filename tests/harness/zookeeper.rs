//! A standalone ZooKeeper (Debian's `zookeeper` package 3.8) on a free loopback port, plain or
//! TLS-only; plus the pieces the ensemble harness ([`crate::zookeeper_ensemble`]) shares:
//! the class path, the JVM launch, and the four-letter-word probes.
//!
//! TLS needs the Netty connection factory; Debian's `zookeeper.jar` manifest puts only part of
//! Netty on the class path (buffer, common, handler, transport, epoll), so [`CLASSPATH`] adds
//! codec, resolver and the native unix transport. The server reads PEM files: the key store is
//! the server key followed by its certificate, the trust store the CA certificate.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd_cluster::{make_certs, TlsFiles};
use crate::util::{free_port, run_with_timeout, tail, TempRoot};

/// The class path of the server: Debian's jar (its manifest names most dependencies), the
/// Netty jars its manifest lacks, and a logging backend so the log shows what happened.
pub const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:\
/usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar:\
/usr/share/java/netty-transport-native-unix-common.jar:/usr/share/java/slf4j-simple.jar";
/// How long the server may take to answer `ruok` after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(40);
/// Session timeouts the servers allow (`maxSessionTimeout`): tests use ttls of 1–10 s.
pub const ZOO_TIMING: &str = "tickTime=500\nmaxSessionTimeout=10000\n";

/// Starts a ZooKeeper JVM (`main` class, config `cfg`, extra `-D` properties) appending its
/// output to `log_path`. `setpriv --pdeathsig`: the server dies with the test thread even if
/// the harness is killed.
pub fn spawn_java(
    main: &str,
    cfg: &Path,
    props: &[String],
    log_path: &Path,
    banner: &str,
) -> Child {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
    let _ = writeln!(log, "==== [harness] {banner} ====");
    let log2 = log.try_clone().expect("clone log file handle");
    Command::new("setpriv")
        .args([
            "--pdeathsig",
            "KILL",
            "java",
            "-Xmx192m",
            "-XX:+UseSerialGC",
        ])
        .arg("-XX:TieredStopAtLevel=1")
        .arg("-Dorg.slf4j.simpleLogger.showDateTime=true")
        .args(props)
        .args(["-cp", CLASSPATH, main])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn ZooKeeper ({main}): {e}"))
}

/// Sends a four-letter word to a plain client port; the answer, or `None` on no answer.
pub fn four_letter(port: u16, word: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    stream.write_all(word.as_bytes()).ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    Some(answer)
}

/// Sends `ruok` to a TLS client port with `openssl s_client` (client certificate included);
/// true on `imok`.
pub fn tls_ruok(port: u16, tls: &TlsFiles) -> bool {
    let script = format!(
        "printf ruok | openssl s_client -connect 127.0.0.1:{port} -quiet -verify_return_error \
         -CAfile '{}' -cert '{}' -key '{}'",
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    run_with_timeout(cmd, Duration::from_secs(5))
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("imok"))
        .unwrap_or(false)
}

/// The JVM properties of a TLS-only server: the Netty factory, PEM key and trust stores, and
/// client certificates required.
fn tls_props(dir: &Path, tls: &TlsFiles) -> Vec<String> {
    let key_store = dir.join("server-keystore.pem");
    let pem = [&tls.server_key, &tls.server_cert]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
        .collect::<Vec<_>>()
        .join("");
    std::fs::write(&key_store, pem).unwrap_or_else(|e| panic!("write key store: {e}"));
    vec![
        "-Dzookeeper.serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory".into(),
        format!("-Dzookeeper.ssl.keyStore.location={}", key_store.display()),
        "-Dzookeeper.ssl.keyStore.type=PEM".into(),
        format!("-Dzookeeper.ssl.trustStore.location={}", tls.ca.display()),
        "-Dzookeeper.ssl.trustStore.type=PEM".into(),
        "-Dzookeeper.ssl.clientAuth=need".into(),
    ]
}

/// One ZooKeeper server process; killed on drop.
pub struct ZooKeeper {
    /// Client port (the secure one for a TLS server, which has no plain port).
    pub port: u16,
    /// stdout+stderr of every run.
    pub log_path: PathBuf,
    /// The certificates of a TLS server (CA, server and client certificate).
    pub tls: Option<TlsFiles>,
    child: Option<Child>,
    // Declared last: removed after the process is gone.
    root: TempRoot,
}

impl ZooKeeper {
    /// Starts a plain server (tickTime 500 ms, sessions of 1–10 s) and waits until it answers.
    pub fn start() -> ZooKeeper {
        ZooKeeper::start_with(false)
    }

    /// Starts a TLS-only server (client certificates required; certificates made in its
    /// directory) and waits until it answers over TLS.
    pub fn start_tls() -> ZooKeeper {
        ZooKeeper::start_with(true)
    }

    fn start_with(tls: bool) -> ZooKeeper {
        let root = TempRoot::new(if tls { "spilo-zk-tls-" } else { "spilo-zk-" });
        let tls = tls.then(|| make_certs(root.path()));
        let mut zk = ZooKeeper {
            port: free_port(),
            log_path: root.path().join("zk.log"),
            tls,
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

    /// The directory holding the config, data, log and certificates.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// The pid of the running server.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "ZooKeeper already running");
        let dir = self.root.path();
        let cfg = dir.join("zoo.cfg");
        let port_line = match self.tls {
            Some(_) => format!(
                "secureClientPort={}\nsecureClientPortAddress=127.0.0.1\n",
                self.port
            ),
            None => format!("clientPort={}\nclientPortAddress=127.0.0.1\n", self.port),
        };
        std::fs::write(
            &cfg,
            format!(
                "{ZOO_TIMING}dataDir={}\n{port_line}admin.enableServer=false\n\
                 4lw.commands.whitelist=*\n",
                dir.join("data").display(),
            ),
        )
        .unwrap_or_else(|e| panic!("write zoo.cfg: {e}"));
        let props = self
            .tls
            .as_ref()
            .map(|tls| tls_props(dir, tls))
            .unwrap_or_default();
        let banner = format!("starting ZooKeeper on {}", self.port);
        self.child = Some(spawn_java(
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            &cfg,
            &props,
            &self.log_path,
            &banner,
        ));
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

    /// True when the server answers the `ruok` four-letter word with `imok` (over TLS for a
    /// TLS server).
    pub fn ruok(&self) -> bool {
        match &self.tls {
            Some(tls) => tls_ruok(self.port, tls),
            None => four_letter(self.port, "ruok").as_deref() == Some("imok"),
        }
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
