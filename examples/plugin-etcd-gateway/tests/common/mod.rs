//! A real etcd for the tests: `/usr/bin/etcd` on free local ports, in a temporary directory
//! that is kept (and named on stderr) when the test fails.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spilo_plugin_etcd_gateway::EtcdGateway;
use spilo_sdk::plugin::{DcsPlugin, PluginConfig};

/// The etcd binary (Debian's `etcd-server` package).
const ETCD: &str = "/usr/bin/etcd";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One single-member etcd cluster.
pub struct Etcd {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd and waits until `/health` says so.
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("etcd-gw-test-")
            .tempdir()
            .expect("temporary directory");
        let mut etcd = Etcd {
            child: None,
            dir: Some(dir),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn();
        etcd
    }

    /// `127.0.0.1:<client port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn dir(&self) -> &std::path::Path {
        self.dir.as_ref().expect("directory").path()
    }

    fn spawn(&mut self) {
        let client = format!("http://{}", self.host());
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("etcd.log"))
            .expect("log file");
        let child = Command::new(ETCD)
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("etcd starts (Debian package etcd-server)");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok((200, body)) = request(&self.host(), "GET", "/health", "") {
                if body.contains("true") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "etcd did not become healthy; log in {}",
            self.dir().display()
        );
    }

    /// Kills etcd (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd and starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("etcd directory kept: {}", dir.keep().display());
            }
        }
    }
}

/// One plain HTTP/1.0 request (for the harness: health checks, enabling auth).
pub fn request(host: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// How a test instance is made.
pub struct Opts {
    pub hosts: serde_json::Value,
    pub prefix: String,
    pub member: String,
    pub ttl: Duration,
    pub retry_timeout: Duration,
    pub watch: bool,
    pub extra: serde_json::Value,
}

impl Opts {
    pub fn new(hosts: &[String], member: &str) -> Opts {
        Opts {
            hosts: serde_json::json!(hosts),
            prefix: "/service/test/".into(),
            member: member.into(),
            ttl: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(3),
            watch: false,
            extra: serde_json::json!({}),
        }
    }

    pub fn create(&self) -> EtcdGateway {
        self.try_create().expect("plugin instance")
    }

    pub fn try_create(&self) -> Result<EtcdGateway, spilo_sdk::plugin::PluginError> {
        let mut config = serde_json::json!({ "hosts": self.hosts });
        if let (Some(c), Some(extra)) = (config.as_object_mut(), self.extra.as_object()) {
            c.extend(extra.clone());
        }
        EtcdGateway::create(&PluginConfig {
            prefix: self.prefix.clone(),
            member: self.member.clone(),
            ttl: self.ttl,
            retry_timeout: self.retry_timeout,
            watch: self.watch,
            session: true,
            config,
        })
    }
}

/// A deadline `ms` milliseconds from now.
pub fn within(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}
