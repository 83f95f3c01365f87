//! One spilo daemon and its PostgreSQL, run as the `postgres` OS user.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bins::{bins, PG_BIN_DIR};
use crate::http;
use crate::pg::{self, ident, literal, PgTarget, Row};
use crate::template;
use crate::util::{
    chmod, chown_postgres, free_port, kill_processes_mentioning, note, pid_alive, poll,
    postgres_command, send_signal, tail, wait_pid_gone,
};

/// The superuser's password in every test config.
pub const SUPERUSER_PASSWORD: &str = "postgres-secret";
/// The replication role's password in every test config.
pub const REPLICATION_PASSWORD: &str = "rep-secret";

/// Settings of one node that tests vary.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    /// `bootstrap.dcs.ttl`.
    pub ttl: u64,
    /// `bootstrap.dcs.loop_wait`.
    pub loop_wait: u64,
    /// `bootstrap.dcs.retry_timeout`.
    pub retry_timeout: u64,
    /// Extra tags: (key, YAML value), e.g. `("nofailover", "true")`.
    pub tags: Vec<(String, String)>,
    /// `restapi.authentication` (username, password): Basic auth on the mutating endpoints.
    pub rest_auth: Option<(String, String)>,
    /// YAML appended at the top level (whole sections, e.g. `hooks:`), ending in a newline.
    pub extra_yaml: String,
    /// YAML lines added to the `postgresql:` section, indented by two spaces, each ending in
    /// a newline (e.g. `  pre_promote: /bin/false\n`).
    pub extra_postgresql: String,
    /// Environment variables for the daemon.
    pub env: Vec<(String, String)>,
    /// YAML lines added to the `bootstrap:` section, indented by two spaces, each ending in a
    /// newline (e.g. `  method: clone\n`).
    pub bootstrap_extra: String,
    /// Extra `postgresql.parameters` (name, YAML value), e.g.
    /// `("shared_preload_libraries", "spilo")`.
    pub pg_parameters: Vec<(String, String)>,
    /// `bootstrap.pg_hba` lines instead of the harness's own (which has a `local` line).
    pub pg_hba: Option<Vec<String>>,
    /// `bootstrap.initdb` entries (YAML flow values, e.g. `{locale: C}`) instead of the
    /// harness's `encoding: UTF8` and `data-checksums`.
    pub initdb: Option<Vec<String>>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            ttl: 10,
            loop_wait: 2,
            retry_timeout: 3,
            tags: Vec::new(),
            rest_auth: None,
            extra_yaml: String::new(),
            extra_postgresql: String::new(),
            env: Vec::new(),
            bootstrap_extra: String::new(),
            pg_parameters: Vec::new(),
            pg_hba: None,
            initdb: None,
        }
    }
}

/// Everything that goes into one node's YAML file.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `scope`.
    pub scope: String,
    /// `name`.
    pub name: String,
    /// REST API port on 127.0.0.1.
    pub api_port: u16,
    /// PostgreSQL port on 127.0.0.1.
    pub pg_port: u16,
    /// `etcd3.hosts` (`host:port[,host:port…]`).
    pub dcs: crate::dcs::DcsEndpoint,
    /// `postgresql.data_dir`.
    pub data_dir: PathBuf,
    /// `postgresql.pgpass`.
    pub pgpass: PathBuf,
    /// The varying part.
    pub opts: NodeOpts,
}

impl NodeConfig {
    /// The YAML text: `examples/node.template.yml` rendered with this node's values.
    pub fn render(&self) -> String {
        let o = &self.opts;
        let mut tags = String::from("  nofailover: false\n");
        for (k, v) in &o.tags {
            if k != "nofailover" {
                tags.push_str(&format!("  {k}: {v}\n"));
            } else {
                tags = tags.replace("nofailover: false", &format!("nofailover: {v}"));
            }
        }
        let initdb = o
            .initdb
            .clone()
            .unwrap_or_else(|| vec!["encoding: UTF8".into(), "data-checksums".into()]);
        let pg_hba = o.pg_hba.clone().unwrap_or_else(|| {
            vec![
                "local all all trust".into(),
                "host replication replicator 127.0.0.1/32 scram-sha-256".into(),
                "host all all 127.0.0.1/32 scram-sha-256".into(),
            ]
        });
        let mut v = std::collections::BTreeMap::new();
        v.insert("SCOPE", self.scope.clone());
        v.insert("NAME", self.name.clone());
        v.insert("API_ADDR", format!("127.0.0.1:{}", self.api_port));
        v.insert("PG_ADDR", format!("127.0.0.1:{}", self.pg_port));
        if let Some((u, p)) = &o.rest_auth {
            v.insert(
                "REST_AUTH",
                format!("  authentication: {{username: {u}, password: {p}}}\n"),
            );
        }
        v.insert("DCS", self.dcs.yaml());
        v.insert("TTL", o.ttl.to_string());
        v.insert("LOOP_WAIT", o.loop_wait.to_string());
        v.insert("RETRY_TIMEOUT", o.retry_timeout.to_string());
        v.insert("INITDB", template::list(&initdb));
        v.insert("PG_HBA", template::list(&pg_hba));
        v.insert("DATA_DIR", self.data_dir.display().to_string());
        v.insert("PG_BIN", PG_BIN_DIR.to_string());
        v.insert("PGPASS", self.pgpass.display().to_string());
        v.insert("SUPERUSER_PASSWORD", SUPERUSER_PASSWORD.to_string());
        v.insert("REPLICATION_PASSWORD", REPLICATION_PASSWORD.to_string());
        v.insert(
            "PG_PARAMETERS",
            o.pg_parameters
                .iter()
                .map(|(k, v)| format!("    {k}: {v}\n"))
                .collect(),
        );
        v.insert("POSTGRESQL_EXTRA", o.extra_postgresql.clone());
        v.insert("BOOTSTRAP_EXTRA", o.bootstrap_extra.clone());
        v.insert("TAGS", tags);
        v.insert("EXTRA", o.extra_yaml.clone());
        template::render(&v)
    }
}

/// One node: its directory (config, log, pgpass, data dir), ports and daemon process.
pub struct Node {
    /// Member name.
    pub name: String,
    /// Cluster name.
    pub scope: String,
    /// The node's private directory (owned by postgres).
    pub dir: PathBuf,
    /// `postgresql.data_dir`.
    pub data_dir: PathBuf,
    /// The YAML file the daemon reads.
    pub config_path: PathBuf,
    /// The daemon's stdout and stderr, across restarts.
    pub log_path: PathBuf,
    /// REST API port.
    pub api_port: u16,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// The config written.
    pub config: NodeConfig,
    child: Option<Child>,
    starts: u32,
}

impl Node {
    /// Creates `<parent>/<dir_name>/` (owned by postgres) and writes the config; does not start
    /// anything.
    pub fn create(
        parent: &Path,
        dir_name: &str,
        scope: &str,
        name: &str,
        dcs: &crate::dcs::DcsEndpoint,
        opts: NodeOpts,
    ) -> Node {
        let dir = parent.join(dir_name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        chown_postgres(&dir);
        chmod(&dir, 0o755);
        let config = NodeConfig {
            scope: scope.to_string(),
            name: name.to_string(),
            api_port: free_port(),
            pg_port: free_port(),
            dcs: dcs.clone(),
            data_dir: dir.join("data"),
            pgpass: dir.join("pgpass"),
            opts,
        };
        let config_path = dir.join("spilo.yml");
        fs::write(&config_path, config.render())
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        chmod(&config_path, 0o644);
        Node {
            name: name.to_string(),
            scope: scope.to_string(),
            data_dir: config.data_dir.clone(),
            log_path: dir.join("spilo.log"),
            api_port: config.api_port,
            pg_port: config.pg_port,
            config_path,
            dir,
            config,
            child: None,
            starts: 0,
        }
    }

    /// Starts `spilo CONFIG` as postgres, output appended to the log file.
    pub fn start(&mut self) {
        assert!(
            !self.daemon_running(),
            "{}: daemon already running",
            self.name
        );
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path.display()));
        let _ = writeln!(
            log,
            "==== [harness] start #{} of spilo {} ====",
            self.starts,
            self.config_path.display()
        );
        let log2 = log.try_clone().expect("clone log file handle");
        let mut cmd = postgres_command(&bins().spilo);
        cmd.arg(&self.config_path)
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env("RUST_BACKTRACE", "1")
            // Plain text in the log file (tracing-subscriber honours NO_COLOR).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &self.config.opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawn spilo: {e}", self.name));
        note(format!(
            "{}: started spilo (pid {}), api {}, pg {}",
            self.name,
            child.id(),
            self.api_port,
            self.pg_port
        ));
        self.child = Some(child);
    }

    /// The daemon's pid, if one was started and has not been reaped.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// True while the daemon process runs.
    pub fn daemon_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `sig` to the daemon (no wait).
    pub fn kill_daemon(&mut self, sig: i32) {
        let pid = self
            .daemon_pid()
            .unwrap_or_else(|| panic!("{}: no daemon to signal", self.name));
        note(format!("{}: signal {sig} to daemon pid {pid}", self.name));
        send_signal(pid, sig);
    }

    /// Waits up to `timeout` for the daemon to exit; its exit status, or `None` if it still runs.
    pub fn wait_daemon_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let r = poll(timeout, Duration::from_millis(100), || {
            match child.try_wait() {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err("still running".to_string()),
                Err(e) => Err(e.to_string()),
            }
        });
        r.ok().map(|(s, _)| s)
    }

    /// Kills the daemon (SIGKILL) if it still runs, reaps it, then starts it again.
    pub fn restart_daemon(&mut self) {
        self.kill_daemon_now();
        self.start();
    }

    /// SIGKILL the daemon and reap it (no-op when none runs).
    pub fn kill_daemon_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The postmaster's pid: the first line of DATA/postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Sends `sig` to the postmaster; returns its pid. Panics when there is none.
    pub fn kill_postmaster(&self, sig: i32) -> i32 {
        let pid = self.postmaster_pid().unwrap_or_else(|| {
            panic!(
                "{}: no postmaster.pid in {}",
                self.name,
                self.data_dir.display()
            )
        });
        note(format!(
            "{}: signal {sig} to postmaster pid {pid}",
            self.name
        ));
        assert!(
            send_signal(pid, sig),
            "{}: kill({pid}, {sig}) failed",
            self.name
        );
        pid
    }

    /// `GET path` on the REST API.
    pub fn api_get(&self, path: &str) -> Result<(u16, Value), String> {
        http::get(self.api_port, path)
    }

    /// `GET /patroni` (any status, as long as the body is a JSON object).
    pub fn patroni(&self) -> Result<Value, String> {
        match self.api_get("/patroni")? {
            (_, v @ Value::Object(_)) => Ok(v),
            (s, v) => Err(format!("{}: GET /patroni: {s} {v}", self.name)),
        }
    }

    /// `role` from `/patroni` (`primary`, `replica`, …).
    pub fn role(&self) -> Option<String> {
        self.patroni()
            .ok()?
            .get("role")?
            .as_str()
            .map(str::to_string)
    }

    /// `timeline` from `/patroni`.
    pub fn timeline(&self) -> Option<u64> {
        self.patroni().ok()?.get("timeline")?.as_u64()
    }

    /// `term` from `/patroni` (the leader term; `None` when null or unreachable).
    pub fn term(&self) -> Option<u64> {
        self.patroni().ok()?.get("term")?.as_u64()
    }

    /// Connection settings for the superuser over TCP.
    pub fn pg_target(&self) -> PgTarget {
        PgTarget {
            port: self.pg_port,
            user: "postgres".into(),
            password: SUPERUSER_PASSWORD.into(),
            dbname: "postgres".into(),
        }
    }

    /// Runs SQL as the superuser (10 s bound); rows as text.
    pub fn sql(&self, query: &str) -> Result<Vec<Row>, String> {
        pg::simple_query(&self.pg_target(), query, Duration::from_secs(10))
            .map_err(|e| format!("{}: {e}", self.name))
    }

    /// The first column of the first row (`None` for no row or NULL).
    pub fn sql_value(&self, query: &str) -> Result<Option<String>, String> {
        Ok(self
            .sql(query)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    /// `pg_is_in_recovery()`.
    pub fn in_recovery(&self) -> Result<bool, String> {
        Ok(self.sql_value("SELECT pg_is_in_recovery()")?.as_deref() == Some("t"))
    }

    /// Creates `table` if needed and inserts `value`; bounded by `timeout`.
    pub fn write_value_within(
        &self,
        table: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let t = ident(table);
        let q = format!(
            "CREATE TABLE IF NOT EXISTS {t} (id bigserial PRIMARY KEY, v text NOT NULL, at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO {t} (v) VALUES ({})",
            literal(value)
        );
        pg::simple_query(&self.pg_target(), &q, timeout)
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", self.name))
    }

    /// [`Node::write_value_within`] with 10 s.
    pub fn write_value(&self, table: &str, value: &str) -> Result<(), String> {
        self.write_value_within(table, value, Duration::from_secs(10))
    }

    /// Whether an INSERT into `table` is acknowledged within 3 s.
    pub fn try_write(&self, table: &str) -> bool {
        self.write_value_within(
            table,
            &format!("probe from harness on {}", self.name),
            Duration::from_secs(3),
        )
        .is_ok()
    }

    /// Whether `table` holds a row with `v = value`.
    pub fn has_value(&self, table: &str, value: &str) -> Result<bool, String> {
        let q = format!(
            "SELECT count(*) FROM {} WHERE v = {}",
            ident(table),
            literal(value)
        );
        Ok(self.sql_value(&q)?.map(|n| n != "0").unwrap_or(false))
    }

    /// `METHOD path` on the REST API with an optional JSON body, sending the node's own
    /// `restapi.authentication` (if configured) as Basic auth; the whole response. 60 s bound:
    /// `POST /switchover` answers only once the switchover is over.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<http::Response, String> {
        let auth = self
            .config
            .opts
            .rest_auth
            .as_ref()
            .map(|(u, p)| http::Auth {
                username: u,
                password: p,
            });
        http::call(
            self.api_port,
            method,
            path,
            body,
            auth,
            Duration::from_secs(60),
        )
        .map_err(|e| format!("{}: {e}", self.name))
    }

    /// [`Node::api`] with explicit credentials (`None`: no `Authorization` header).
    pub fn api_with_auth(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        auth: Option<http::Auth<'_>>,
    ) -> Result<http::Response, String> {
        http::call(
            self.api_port,
            method,
            path,
            body,
            auth,
            Duration::from_secs(60),
        )
        .map_err(|e| format!("{}: {e}", self.name))
    }

    /// `postmaster_start_time` from `/patroni` (as given; `None` while PostgreSQL is down).
    pub fn postmaster_start_time(&self) -> Option<String> {
        self.patroni()
            .ok()?
            .get("postmaster_start_time")?
            .as_str()
            .map(str::to_string)
    }

    /// Changes the node's settings and rewrites its YAML file (the daemon sees the change on
    /// its next reload: `POST /reload` or SIGHUP, or on a restart).
    pub fn rewrite_config(&mut self, change: impl FnOnce(&mut NodeOpts)) {
        change(&mut self.config.opts);
        let text = self.config.render();
        // Write next to it and rename, so the daemon never reads half a file.
        let tmp = self.config_path.with_extension("yml.new");
        fs::write(&tmp, &text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        chmod(&tmp, 0o644);
        fs::rename(&tmp, &self.config_path)
            .unwrap_or_else(|e| panic!("rename to {}: {e}", self.config_path.display()));
        note(format!(
            "{}: rewrote {}",
            self.name,
            self.config_path.display()
        ));
    }

    /// Whether the postmaster recorded in DATA/postmaster.pid is alive (false without the
    /// file).
    pub fn postmaster_alive(&self) -> bool {
        self.postmaster_pid().is_some_and(crate::util::pid_alive)
    }

    /// The daemon log, whole.
    pub fn log_text(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the daemon log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }

    /// `pg_ctl -D DATA stop -m immediate` as postgres if a postmaster.pid exists; SIGKILL the
    /// postmaster if it still lives afterwards.
    pub fn stop_postgres_immediate(&self) {
        let Some(pid) = self.postmaster_pid() else {
            return;
        };
        if !pid_alive(pid) {
            return;
        }
        let status = postgres_command(&Path::new(PG_BIN_DIR).join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .args(["stop", "-m", "immediate", "-w", "-t", "20"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) && pid_alive(pid) {
            send_signal(pid, libc::SIGKILL);
            wait_pid_gone(pid, Duration::from_secs(5));
        }
    }

    /// Kills the daemon, stops PostgreSQL, then SIGKILLs anything still mentioning the node's
    /// directory (an initdb, pg_basebackup or pg_rewind the daemon started).
    pub fn cleanup(&mut self) {
        self.kill_daemon_now();
        self.stop_postgres_immediate();
        let left = kill_processes_mentioning(&format!("{}/", self.dir.display()));
        if !left.is_empty() {
            note(format!("{}: killed leftover processes {left:?}", self.name));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_the_varying_parts() {
        let c = NodeConfig {
            scope: "s1".into(),
            name: "n1".into(),
            api_port: 1234,
            pg_port: 2345,
            dcs: crate::dcs::DcsEndpoint::Etcd("127.0.0.1:3456".into()),
            data_dir: "/tmp/x/data".into(),
            pgpass: "/tmp/x/pgpass".into(),
            opts: NodeOpts {
                ttl: 30,
                tags: vec![
                    ("nofailover".into(), "true".into()),
                    ("zone".into(), "a".into()),
                ],
                rest_auth: Some(("admin".into(), "secret".into())),
                ..NodeOpts::default()
            },
        };
        let y = c.render();
        for needle in [
            "scope: s1\n",
            "name: n1\n",
            "listen: 127.0.0.1:1234",
            "hosts: 127.0.0.1:3456",
            "ttl: 30\n",
            "loop_wait: 2\n",
            "listen: 127.0.0.1:2345",
            "data_dir: /tmp/x/data\n",
            "nofailover: true\n",
            "zone: a\n",
            "superuser: {username: postgres, password: postgres-secret}",
            "  connect_address: 127.0.0.1:1234\n  authentication: {username: admin, password: secret}\netcd3:\n",
        ] {
            assert!(y.contains(needle), "missing {needle:?} in\n{y}");
        }
        assert!(!y.contains("nofailover: false"));
        let plain = NodeConfig {
            opts: NodeOpts::default(),
            ..c
        }
        .render();
        assert!(
            !plain.contains("authentication: {username: admin"),
            "{plain}"
        );
    }
}
