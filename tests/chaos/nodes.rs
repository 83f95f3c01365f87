//! The spilo nodes of a chaos run: one daemon and its PostgreSQL per namespace, listening on
//! the namespace's bridge address (REST 8008, PostgreSQL 5432), run as the `postgres` user.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use spilo_tests::bins::{bins, PG_BIN_DIR};
use spilo_tests::template;
use spilo_tests::util::{chmod, chown_postgres};
use spilo_tests::{REPLICATION_PASSWORD, SUPERUSER_PASSWORD};

use crate::net::Host;

/// REST API port inside each namespace.
pub const API_PORT: u16 = 8008;
/// PostgreSQL port inside each namespace.
pub const PG_PORT: u16 = 5432;

/// What every node's config shares.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `ttl`, `loop_wait`, `retry_timeout`.
    pub ttl: u64,
    /// See `ttl`.
    pub loop_wait: u64,
    /// See `ttl`.
    pub retry_timeout: u64,
    /// `synchronous_mode`.
    pub sync: bool,
    /// Load the extension and arm its fence.
    pub fence: bool,
    /// The DCS section of the config.
    pub dcs_yaml: String,
}

/// One node.
pub struct Node {
    /// `n1`…
    pub name: String,
    /// Its namespace and address.
    pub host: Host,
    /// Its directory (config, log, data).
    pub dir: PathBuf,
    /// `postgresql.data_dir`.
    pub data_dir: PathBuf,
    /// The daemon's log (across restarts).
    pub log_path: PathBuf,
    config_path: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Creates the directory and config.
    pub fn create(host: &Host, parent: &std::path::Path, s: &Settings) -> Result<Node, String> {
        let dir = parent.join(&host.name);
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        chown_postgres(&dir);
        chmod(&dir, 0o700);
        let node = Node {
            name: host.name.clone(),
            host: host.clone(),
            data_dir: dir.join("data"),
            log_path: dir.join("spilo.log"),
            config_path: dir.join("spilo.yml"),
            dir,
            child: None,
        };
        fs::write(&node.config_path, node.render(s)).map_err(|e| e.to_string())?;
        chown_postgres(&node.config_path);
        Ok(node)
    }

    /// `examples/node.template.yml` rendered for this node in its namespace.
    fn render(&self, s: &Settings) -> String {
        let addr = &self.host.addr;
        let net = crate::net::net();
        let mut v = BTreeMap::new();
        v.insert("SCOPE", "chaos".to_string());
        v.insert("NAME", self.name.clone());
        v.insert("API_ADDR", format!("{addr}:{API_PORT}"));
        v.insert("PG_ADDR", format!("{addr}:{PG_PORT}"));
        v.insert("DCS", s.dcs_yaml.clone());
        v.insert("TTL", s.ttl.to_string());
        v.insert("LOOP_WAIT", s.loop_wait.to_string());
        v.insert("RETRY_TIMEOUT", s.retry_timeout.to_string());
        if s.sync {
            v.insert(
                "DYNAMIC_EXTRA",
                "    synchronous_mode: true\n    synchronous_node_count: 1\n".to_string(),
            );
        }
        v.insert(
            "INITDB",
            template::list(&["encoding: UTF8".into(), "data-checksums".into()]),
        );
        v.insert(
            "PG_HBA",
            template::list(&[
                "local all all trust".into(),
                "host replication replicator 127.0.0.1/32 scram-sha-256".into(),
                format!("host replication replicator {net}.0/24 scram-sha-256"),
                "host all all 127.0.0.1/32 scram-sha-256".into(),
                format!("host all all {net}.0/24 scram-sha-256"),
            ]),
        );
        v.insert("DATA_DIR", self.data_dir.display().to_string());
        v.insert("PG_BIN", PG_BIN_DIR.to_string());
        v.insert("PGPASS", self.dir.join("pgpass").display().to_string());
        v.insert("SUPERUSER_PASSWORD", SUPERUSER_PASSWORD.to_string());
        v.insert("REPLICATION_PASSWORD", REPLICATION_PASSWORD.to_string());
        let mut params = format!(
            "    unix_socket_directories: '{}'\n    log_min_messages: log\n    log_min_error_statement: panic\n",
            self.dir.display()
        );
        if s.fence {
            params.push_str("    shared_preload_libraries: spilo\n    spilo.fence: 'on'\n");
        }
        v.insert("PG_PARAMETERS", params);
        v.insert("TAGS", "  nofailover: false\n".to_string());
        template::render(&v)
    }

    /// Starts the daemon in the node's namespace (no-op when it runs).
    pub fn start(&mut self) -> Result<(), String> {
        if self.daemon_running() {
            return Ok(());
        }
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open {}: {e}", self.log_path.display()))?;
        let _ = writeln!(log, "==== [chaos] start of spilo ====");
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.host.ns])
            .args([
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--pdeathsig",
                "KILL",
            ])
            .arg(&bins().spilo)
            .arg(&self.config_path)
            .current_dir(&self.dir)
            .env("USER", "postgres")
            .env("LOGNAME", "postgres")
            .env("HOME", &self.dir)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("{}: start spilo: {e}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the daemon process lives (reaps it when it exited).
    pub fn daemon_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                _ => {
                    self.child = None;
                    false
                }
            },
        }
    }

    /// The daemon's pid.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends `sig` to the daemon; SIGKILL also reaps it.
    pub fn signal_daemon(&mut self, sig: i32) -> bool {
        let Some(pid) = self.daemon_pid() else {
            return false;
        };
        let ok = unsafe { libc::kill(pid, sig) } == 0;
        if sig == libc::SIGKILL {
            if let Some(mut c) = self.child.take() {
                let _ = c.wait();
            }
        }
        ok
    }

    /// The postmaster's pid from `postmaster.pid`, when it lives.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
    }

    /// The node's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.host.addr.parse().expect("a node address is IPv4")
    }

    /// `GET /patroni` (1 s timeout).
    pub fn patroni(&self) -> Result<Value, String> {
        let r = spilo_tests::http::exchange_at(
            self.ip(),
            API_PORT,
            "GET",
            "/patroni",
            &[],
            None,
            Duration::from_secs(1),
        )?;
        serde_json::from_slice(&r.body).map_err(|e| format!("{}: /patroni: {e}", self.name))
    }

    /// `POST path` with a JSON body; the status and body text.
    pub fn post(&self, path: &str, body: &str, timeout: Duration) -> Result<(u16, String), String> {
        let r = spilo_tests::http::exchange_at(
            self.ip(),
            API_PORT,
            "POST",
            path,
            &[],
            Some(body.as_bytes()),
            timeout,
        )?;
        Ok((r.status, r.text()))
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        spilo_tests::util::tail(&self.log_path, n)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal_daemon(libc::SIGCONT);
        self.signal_daemon(libc::SIGKILL);
    }
}
