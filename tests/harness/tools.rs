//! Third-party tools the operations tests drive: an unmodified `patronictl` (Patroni from
//! PyPI in a virtualenv), `promtool` and HAProxy. All installed by scripts/install-deps.sh.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::cluster::TestCluster;
use crate::http;
use crate::util::{chmod, note, poll, run_with_timeout, tail};

/// Where scripts/install-deps.sh puts the Patroni virtualenv (override: `SPILO_PATRONI_VENV`).
pub const PATRONI_VENV: &str = "/opt/spilo-test-venv";
/// HAProxy.
pub const HAPROXY: &str = "/usr/sbin/haproxy";
/// promtool (Debian package `prometheus`).
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// The patronictl executable; panics with the install hint when it is missing.
pub fn patronictl_bin() -> PathBuf {
    let venv = std::env::var_os("SPILO_PATRONI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PATRONI_VENV));
    let bin = venv.join("bin").join("patronictl");
    assert!(
        bin.is_file(),
        "{} not found: run scripts/install-deps.sh (installs Patroni from PyPI into {})",
        bin.display(),
        venv.display()
    );
    bin
}

/// A patronictl config for `scope` on the etcd at `etcd_host_port` (etcd v3 API).
pub fn patronictl_config(scope: &str, etcd_host_port: &str) -> String {
    format!(
        "# patronictl config written by the spilo integration tests\n\
         scope: {scope}\n\
         namespace: /service\n\
         etcd3:\n  hosts: {etcd_host_port}\n"
    )
}

impl TestCluster {
    /// Writes `<root>/patronictl.yml` for this cluster and returns its path.
    pub fn write_patronictl_config(&self) -> PathBuf {
        let path = self.root().join("patronictl.yml");
        fs::write(
            &path,
            patronictl_config(&self.scope, &self.dcs.etcd().host_port()),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        chmod(&path, 0o644);
        path
    }

    /// Runs the unmodified `patronictl -c <root>/patronictl.yml ARGS` (as root, HOME = the
    /// temp root, 120 s bound). Logs the command, exit status and output as a note.
    pub fn patronictl(&self, args: &[&str]) -> Result<Output, String> {
        let cfg = self.root().join("patronictl.yml");
        if !cfg.is_file() {
            self.write_patronictl_config();
        }
        let mut cmd = Command::new(patronictl_bin());
        cmd.arg("-c")
            .arg(&cfg)
            .args(args)
            .current_dir(self.root())
            .env("HOME", self.root())
            .env("PAGER", "cat")
            .env("TERM", "dumb")
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("PATRONICTL_CONFIG_FILE");
        let out = run_with_timeout(cmd, Duration::from_secs(120))?;
        note(format!(
            "patronictl {}: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        Ok(out)
    }

    /// `patronictl ARGS`, which must exit 0; its stdout. Panics with both streams otherwise.
    pub fn patronictl_ok(&self, args: &[&str]) -> String {
        let out = self
            .patronictl(args)
            .unwrap_or_else(|e| panic!("patronictl {}: {e}", args.join(" ")));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "patronictl {} exited with {}\nstdout:\n{stdout}\nstderr:\n{}\nstate: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.describe()
        );
        stdout
    }

    /// The value of `/service/<scope>/<suffix>` parsed as JSON (`None` when absent; an error
    /// when it is not JSON).
    pub fn dcs_json(&self, suffix: &str) -> Result<Option<Value>, String> {
        let key = self.dcs_key(suffix);
        match self.dcs.etcd().get(&key)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("{key} is not JSON ({e}): {text}")),
        }
    }

    /// `members/<name>` as JSON.
    pub fn member_json(&self, name: &str) -> Result<Value, String> {
        self.dcs_json(&format!("members/{name}"))?
            .ok_or_else(|| format!("no members/{name} key"))
    }

    /// Waits until `name` reports `role` (and state running) on `/patroni`.
    pub fn wait_for_role(&self, name: &str, role: &str, timeout: Duration) {
        crate::util::wait_for(&format!("{name} running as {role}"), timeout, || {
            let v = self.node(name).patroni()?;
            if v["role"] == role && v["state"] == "running" {
                Ok(())
            } else {
                Err(format!(
                    "{name}: role {} state {}; {}",
                    v["role"],
                    v["state"],
                    self.describe()
                ))
            }
        });
    }
}

/// Runs `cmd` with `input` on its stdin, stdout and stderr captured, killed after `timeout`.
pub fn run_with_input(mut cmd: Command, input: &[u8], timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let t_in = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let waited = poll(timeout, Duration::from_millis(50), || {
        match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("running".to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    let status = match waited {
        Ok((s, _)) => s,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} still running after {timeout:?} (killed)"));
        }
    };
    let _ = t_in.join();
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// What `promtool check metrics` said about a text exposition.
#[derive(Debug)]
pub struct PromtoolReport {
    /// Exit code (0 clean, 3 lint problems only, 1 a parse error).
    pub code: Option<i32>,
    /// stdout and stderr together.
    pub output: String,
    /// One entry per lint problem line (`<metric> <problem>`).
    pub problems: Vec<String>,
}

/// Pipes `text` through `promtool check metrics`.
pub fn promtool_check_metrics(text: &str) -> PromtoolReport {
    assert!(
        Path::new(PROMTOOL).is_file(),
        "{PROMTOOL} not found: run scripts/install-deps.sh (Debian package prometheus)"
    );
    let mut cmd = Command::new(PROMTOOL);
    cmd.args(["check", "metrics"]);
    let out = run_with_input(cmd, text.as_bytes(), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("promtool check metrics: {e}"));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    PromtoolReport {
        code: out.status.code(),
        output,
        problems,
    }
}

/// `t` as RFC 3339 in UTC with a `+00:00` offset, e.g. `2024-05-01T12:00:05+00:00`.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// One backend server of a rendered HAProxy config.
#[derive(Clone, Debug)]
pub struct HaServer {
    /// Server name (the member name).
    pub name: String,
    /// PostgreSQL port on 127.0.0.1.
    pub pg_port: u16,
    /// REST API port (the health check port).
    pub api_port: u16,
}

/// Rewrites an HAProxy config template (such as examples/haproxy.cfg) for a test: the `bind`
/// of each `listen` section named in `binds` gets `127.0.0.1:<port>`; in every section the
/// template's `server` lines are replaced by one per entry of `servers`, keeping the options
/// of the section's first `server` line but with `check port <api port>`. Everything else
/// (checks, timeouts, `default-server`) is kept as written.
pub fn render_haproxy_cfg(template: &str, binds: &[(&str, u16)], servers: &[HaServer]) -> String {
    let mut out = String::new();
    let mut section = String::new();
    let mut servers_done = false;
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indented = line.len() != trimmed.len();
        if !indented && !trimmed.is_empty() && !trimmed.starts_with('#') {
            let mut words = trimmed.split_whitespace();
            let kind = words.next().unwrap_or_default();
            section = format!("{kind} {}", words.next().unwrap_or_default());
            servers_done = false;
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut words = trimmed.split_whitespace();
        match words.next() {
            Some("bind") => {
                let name = section.split_whitespace().nth(1).unwrap_or_default();
                match binds.iter().find(|(n, _)| *n == name) {
                    Some((_, port)) => out.push_str(&format!("    bind 127.0.0.1:{port}\n")),
                    None => panic!("no port given for the bind of section {section:?}"),
                }
            }
            Some("server") => {
                if servers_done {
                    continue;
                }
                servers_done = true;
                let _template_name = words.next();
                let _template_addr = words.next();
                let opts: Vec<&str> = words.collect();
                for s in servers {
                    let mut line = format!("    server {} 127.0.0.1:{}", s.name, s.pg_port);
                    let mut i = 0;
                    while i < opts.len() {
                        if opts[i] == "port" && i + 1 < opts.len() {
                            line.push_str(&format!(" port {}", s.api_port));
                            i += 2;
                        } else {
                            line.push(' ');
                            line.push_str(opts[i]);
                            i += 1;
                        }
                    }
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A foreground HAProxy (`haproxy -db -f CFG`) child; SIGKILLed on drop.
pub struct HaProxy {
    /// The config it runs.
    pub cfg_path: PathBuf,
    /// Its stdout and stderr.
    pub log_path: PathBuf,
    /// The stats page port (`listen stats`), when the config has one.
    pub stats_port: Option<u16>,
    child: Option<Child>,
}

impl HaProxy {
    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Writes `cfg` to `<dir>/haproxy.cfg`, checks it with `haproxy -c`, starts HAProxy in the
    /// foreground and waits until every port in `wait_ports` accepts TCP connections.
    pub fn start(dir: &Path, cfg: &str, stats_port: Option<u16>, wait_ports: &[u16]) -> HaProxy {
        assert!(
            Path::new(HAPROXY).is_file(),
            "{HAPROXY} not found: run scripts/install-deps.sh (Debian package haproxy)"
        );
        let cfg_path = dir.join("haproxy.cfg");
        let log_path = dir.join("haproxy.log");
        fs::write(&cfg_path, cfg).unwrap_or_else(|e| panic!("write {}: {e}", cfg_path.display()));
        let mut check = Command::new(HAPROXY);
        check.arg("-c").arg("-f").arg(&cfg_path);
        let out = run_with_timeout(check, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("haproxy -c: {e}"));
        assert!(
            out.status.success(),
            "haproxy -c -f {} failed: {}\n{}{}\nconfig:\n{cfg}",
            cfg_path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("clone log file handle");
        // setpriv --pdeathsig: HAProxy dies with the test thread even if the harness is killed.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", HAPROXY, "-db", "-f"])
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {HAPROXY}: {e}"));
        note(format!(
            "haproxy (pid {}) with {}",
            child.id(),
            cfg_path.display()
        ));
        let mut h = HaProxy {
            cfg_path,
            log_path,
            stats_port,
            child: Some(child),
        };
        for &port in wait_ports {
            let r = poll(Duration::from_secs(20), Duration::from_millis(100), || {
                if let Some(Ok(Some(status))) = h.child.as_mut().map(|c| c.try_wait()) {
                    return Err(format!("haproxy exited with {status}"));
                }
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(|_| ())
                    .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))
            });
            if let Err(e) = r {
                panic!(
                    "haproxy not listening on {port}: {e}; log:\n{}",
                    tail(&h.log_path, 30)
                );
            }
        }
        h
    }

    /// The servers' check status per backend from the stats page's CSV
    /// (`<proxy>/<server>: <status> <check_status>`), or why it is unavailable.
    pub fn server_states(&self) -> String {
        let Some(port) = self.stats_port else {
            return "(no stats port)".into();
        };
        match http::call(port, "GET", "/;csv", None, None, Duration::from_secs(5)) {
            Ok(r) if r.status == 200 => {
                let text = r.text();
                let mut header: Vec<String> = Vec::new();
                let mut rows = Vec::new();
                for line in text.lines() {
                    if let Some(h) = line.strip_prefix("# ") {
                        header = h.split(',').map(str::to_string).collect();
                        continue;
                    }
                    let f: Vec<&str> = line.split(',').collect();
                    let col = |name: &str| {
                        header
                            .iter()
                            .position(|h| h == name)
                            .and_then(|i| f.get(i).copied())
                            .unwrap_or("")
                    };
                    let sv = col("svname");
                    if sv == "FRONTEND" || sv == "BACKEND" || sv.is_empty() {
                        continue;
                    }
                    rows.push(format!(
                        "{}/{}: {} {}",
                        col("pxname"),
                        sv,
                        col("status"),
                        col("check_status")
                    ));
                }
                rows.join("; ")
            }
            Ok(r) => format!("stats: {}", r.summary()),
            Err(e) => format!("stats: {e}"),
        }
    }

    /// The last `n` lines of HAProxy's output.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!(
                "[harness] haproxy state: {}\n[harness] haproxy log ({}):\n{}",
                self.server_states(),
                self.log_path.display(),
                self.log_tail(30)
            );
        }
    }
}

/// HAProxy in front of `c` with `examples/haproxy.cfg` rendered for its nodes: (the proxy, its
/// read-write port, its read-only port).
pub fn haproxy_for(c: &crate::TestCluster) -> (HaProxy, u16, u16) {
    let path = crate::bins::workspace_dir()
        .join("examples")
        .join("haproxy.cfg");
    let template =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let (rw, ro, stats) = (
        crate::util::free_port(),
        crate::util::free_port(),
        crate::util::free_port(),
    );
    let servers: Vec<HaServer> = c
        .nodes
        .iter()
        .map(|n| HaServer {
            name: n.name.clone(),
            pg_port: n.pg_port,
            api_port: n.api_port,
        })
        .collect();
    let cfg = render_haproxy_cfg(
        &template,
        &[("primary", rw), ("replicas", ro), ("stats", stats)],
        &servers,
    );
    let h = HaProxy::start(c.root(), &cfg, Some(stats), &[rw, ro, stats]);
    crate::util::note(format!(
        "haproxy: read-write {rw}, read-only {ro}, stats {stats}"
    ));
    (h, rw, ro)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661)),
            "2000-02-29T01:01:01+00:00"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
            "2024-02-29T23:59:59+00:00"
        );
    }

    #[test]
    fn haproxy_render_rewrites_binds_and_servers() {
        let t = "global\n    maxconn 10\n\nlisten primary\n    bind *:5000\n    option httpchk OPTIONS /primary\n    server a 127.0.0.1:5432 maxconn 100 check port 8008\n    server b 127.0.0.1:5433 maxconn 100 check port 8009\n\nlisten replicas\n    bind *:5001\n    server a 127.0.0.1:5432 check port 8008\n";
        let servers = vec![
            HaServer {
                name: "node1".into(),
                pg_port: 1001,
                api_port: 2001,
            },
            HaServer {
                name: "node2".into(),
                pg_port: 1002,
                api_port: 2002,
            },
        ];
        let r = render_haproxy_cfg(t, &[("primary", 7000), ("replicas", 7001)], &servers);
        assert!(r.contains("    bind 127.0.0.1:7000\n"), "{r}");
        assert!(r.contains("    bind 127.0.0.1:7001\n"), "{r}");
        assert!(
            r.contains("    server node1 127.0.0.1:1001 maxconn 100 check port 2001\n"),
            "{r}"
        );
        assert!(
            r.contains("    server node2 127.0.0.1:1002 check port 2002\n"),
            "{r}"
        );
        assert!(r.contains("option httpchk OPTIONS /primary"), "{r}");
        assert!(!r.contains("server a "), "{r}");
        assert_eq!(r.matches("server node1").count(), 2, "{r}");
    }
}
