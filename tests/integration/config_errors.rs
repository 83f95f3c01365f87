//! `spilo --validate` on broken and valid configs; the daemon refuses root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use spilo_tests::bins::{bins, workspace_dir};
use spilo_tests::etcd::Etcd;
use spilo_tests::util::{chmod, postgres_command, run_with_timeout};
use spilo_tests::util::{free_port, wait_for};
use spilo_tests::{DcsEndpoint, Node, NodeConfig, NodeOpts, TempRoot};

/// A valid config for node `cfgtest` under `root` (nothing listens on its ports; its DCS is
/// `127.0.0.1:12379`, see [`valid_config_on`]).
fn valid_config(root: &Path) -> String {
    valid_config_on(root, "127.0.0.1:12379")
}

/// [`valid_config`] with etcd at `etcd_hosts`.
fn valid_config_on(root: &Path, etcd_hosts: &str) -> String {
    NodeConfig {
        scope: "cfgtest".into(),
        name: "cfgnode".into(),
        api_port: 18008,
        pg_port: 15432,
        dcs: spilo_tests::DcsEndpoint::Etcd(etcd_hosts.into()),
        data_dir: root.join("pgdata"),
        pgpass: root.join("pgpass"),
        opts: NodeOpts::default(),
    }
    .render()
}

/// Writes `text` as `<root>/caseN.yml` (neutral names: the path must not contain key names).
fn write_case(root: &Path, n: usize, text: &str) -> PathBuf {
    let p = root.join(format!("case{n}.yml"));
    fs::write(&p, text).expect("write config");
    chmod(&p, 0o644);
    p
}

/// `spilo --validate --offline PATH` as postgres: the file only.
fn validate(path: &Path) -> Output {
    validate_with(path, &["--offline"])
}

/// `spilo --validate EXTRA… PATH` as postgres.
fn validate_with(path: &Path, extra: &[&str]) -> Output {
    let mut cmd = postgres_command(&bins().spilo);
    cmd.arg("--validate").args(extra).arg(path);
    run_with_timeout(cmd, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("spilo --validate: {e}"))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn replace_once(s: &str, from: &str, to: &str) -> String {
    assert!(s.contains(from), "template lacks {from:?}");
    s.replacen(from, to, 1)
}

#[test]
fn validate_rejects_broken_configs_with_exit_2_naming_the_key() {
    let root = TempRoot::new("spilo-cfg-");
    let valid = valid_config(root.path());
    let data_dir_line = valid
        .lines()
        .find(|l| l.trim_start().starts_with("data_dir:"))
        .expect("data_dir line")
        .to_string();
    // A PostgreSQL without archive modules: a `postgres` that says it is 14.
    let pg14 = root.path().join("pg14bin");
    fs::create_dir_all(&pg14).expect("mkdir");
    chmod(&pg14, 0o755);
    fs::write(
        pg14.join("postgres"),
        "#!/bin/sh\necho 'postgres (PostgreSQL) 14.10'\n",
    )
    .expect("write postgres");
    chmod(&pg14.join("postgres"), 0o755);
    let archive_module_on_14 = format!(
        "{}storage:\n  type: fs\n  path: {}\nbackup:\n  schedule: ''\n  archive:\n    method: module\n",
        replace_once(
            &valid,
            "bin_dir: /usr/lib/postgresql/15/bin",
            &format!("bin_dir: {}", pg14.display())
        ),
        root.path().join("store").display()
    );
    // (what, config text, any of these must appear in stderr; empty: only non-empty stderr)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "archive module asked of a PostgreSQL without archive modules",
            archive_module_on_14,
            vec!["backup.archive.method: module, but PostgreSQL 14: the spilo extension's archive module is built for PostgreSQL 15"],
        ),
        (
            "missing postgresql.data_dir",
            valid.replace(&format!("{data_dir_line}\n"), ""),
            vec!["data_dir"],
        ),
        (
            "bad restapi.listen address",
            replace_once(&valid, "listen: 127.0.0.1:18008", "listen: not an address"),
            vec!["listen"],
        ),
        (
            "ttl too small",
            replace_once(&valid, "ttl: 10\n", "ttl: 1\n"),
            vec!["ttl"],
        ),
        (
            "wrong type for loop_wait",
            replace_once(&valid, "loop_wait: 2\n", "loop_wait: soon\n"),
            vec!["loop_wait"],
        ),
        (
            "unparseable YAML",
            replace_once(&valid, "scope: cfgtest\n", "scope: [cfgtest\n  : : {\n"),
            vec![],
        ),
        (
            "unknown DCS endpoint format",
            replace_once(
                &valid,
                "hosts: 127.0.0.1:12379",
                "hosts: 127.0.0.1:notaport",
            ),
            vec!["hosts", "etcd3"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, yaml, needles)) in cases.iter().enumerate() {
        let path = write_case(root.path(), i, yaml);
        let out = validate(&path);
        let (stdout, stderr) = text(&out);
        // The temp path is random: do not let it supply a key name.
        let stderr_sans_path = stderr.replace(&path.display().to_string(), "CONFIG");
        let code = out.status.code();
        let named = if needles.is_empty() {
            !stderr.trim().is_empty()
        } else {
            needles.iter().any(|n| stderr_sans_path.contains(n))
        };
        if code != Some(2) || !named {
            failures.push(format!(
                "- {what} ({}): exit {code:?} (want 2), stderr should name {needles:?}\n  stderr: {}\n  stdout: {}",
                path.display(),
                stderr.trim(),
                stdout.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "spilo --validate mishandled {} of {} broken configs:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn validate_accepts_valid_configs_whose_dcs_answers() {
    let root = TempRoot::new("spilo-cfg-");
    let etcd = Etcd::start_in(root.path());
    let mut failures = Vec::new();
    let example = fs::read_to_string(workspace_dir().join("examples/node.yml"))
        .expect("read examples/node.yml");
    let example = replace_once(
        &example,
        "hosts: 127.0.0.1:2379",
        &format!("hosts: {}", etcd.host_port()),
    );
    for (i, (what, yaml)) in [
        (
            "the harness template",
            valid_config_on(root.path(), &etcd.host_port()),
        ),
        ("examples/node.yml", example),
    ]
    .into_iter()
    .enumerate()
    {
        let path = write_case(root.path(), i + 100, &yaml);
        let out = validate_with(&path, &[]);
        if !out.status.success() {
            let (stdout, stderr) = text(&out);
            failures.push(format!(
                "- {what}: {} stderr: {} stdout: {}",
                out.status,
                stderr.trim(),
                stdout.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "valid configs rejected:\n{}",
        failures.join("\n")
    );
}

#[test]
fn validate_only_warns_about_an_unknown_key() {
    let root = TempRoot::new("spilo-cfg-");
    let yaml = format!("{}frobnicate_widgets: 42\n", valid_config(root.path()));
    let path = write_case(root.path(), 1, &yaml);
    let out = validate(&path);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "unknown key must only warn; stderr: {stderr} stdout: {stdout}"
    );
    assert!(
        stderr.contains("frobnicate_widgets") || stdout.contains("frobnicate_widgets"),
        "no warning naming the unknown key; stderr: {stderr} stdout: {stdout}"
    );
}

#[test]
fn daemon_refuses_to_run_as_root() {
    let root = TempRoot::new("spilo-cfg-");
    let path = write_case(root.path(), 1, &valid_config(root.path()));
    let mut cmd = Command::new(&bins().spilo);
    cmd.arg(&path).current_dir(root.path());
    let out = run_with_timeout(cmd, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("spilo as root should exit at once: {e}"));
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "spilo ran as root and exited {}; stderr: {stderr}",
        out.status
    );
    assert!(
        format!("{stdout}{stderr}")
            .to_lowercase()
            .contains("postgres"),
        "the refusal does not mention the postgres user; stderr: {stderr} stdout: {stdout}"
    );
    assert!(
        !root.path().join("pgdata").exists(),
        "spilo as root created the data dir before refusing"
    );
}

#[test]
fn validate_names_an_unreachable_dcs_with_exit_3() {
    let root = TempRoot::new("spilo-cfg-");
    let hosts = format!("127.0.0.1:{}", free_port());
    let path = write_case(root.path(), 1, &valid_config_on(root.path(), &hosts));
    let started = std::time::Instant::now();
    let out = validate_with(&path, &["--dcs-timeout", "3"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "an unreachable DCS must give exit 3; stderr: {stderr} stdout: {stdout}"
    );
    assert!(
        stderr.contains(&hosts) && stderr.contains("cannot be reached"),
        "the error must name the DCS endpoint {hosts}; stderr: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "--dcs-timeout 3 took {:?}",
        started.elapsed()
    );
    // --offline skips the DCS: the same file is valid.
    let offline = validate(&path);
    assert!(
        offline.status.success(),
        "--offline must not contact the DCS: {:?}",
        text(&offline)
    );
}

#[test]
fn daemon_waits_for_its_dcs_with_logged_back_off_then_starts() {
    let root = TempRoot::new("spilo-cfg-");
    let port = free_port();
    let dcs = DcsEndpoint::Etcd(format!("127.0.0.1:{port}"));
    let mut node = Node::create(
        root.path(),
        "n1",
        "dcswait",
        "n1",
        &dcs,
        NodeOpts::default(),
    );
    node.start();
    let retries = |node: &Node| node.log_text().matches("waiting for the DCS").count();
    wait_for(
        "three logged retries",
        Duration::from_secs(60),
        || match retries(&node) {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} retries logged so far")),
        },
    );
    assert!(
        node.daemon_running(),
        "the daemon must keep waiting for its DCS, not exit; log:\n{}",
        node.log_tail(30)
    );
    let log = node.log_text();
    let delays: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("waiting for the DCS"))
        .filter_map(|l| l.rsplit("retrying in ").next())
        .take(3)
        .collect();
    assert!(
        delays.windows(2).all(|w| w[0] != w[1]),
        "the back-off must grow between retries: {delays:?}"
    );
    let _etcd = Etcd::start_in_on(root.path(), port);
    wait_for(
        "the node bootstraps once etcd answers",
        Duration::from_secs(120),
        || match node.role() {
            Some(r) if r == "primary" => Ok(()),
            other => Err(format!("role {other:?}")),
        },
    );
    node.cleanup();
}

#[test]
fn a_hook_script_with_a_syntax_error_is_refused_naming_file_and_line() {
    let root = TempRoot::new("spilo-cfg-");
    let script = root.path().join("broken.lua");
    fs::write(
        &script,
        "spilo.on('on_promote', function(ctx)\n  local x = = 1\nend)\n",
    )
    .expect("write script");
    chmod(&script, 0o644);
    let yaml = format!(
        "{}hooks:\n  script: {}\n",
        valid_config(root.path()),
        script.display()
    );
    let path = write_case(root.path(), 1, &yaml);
    let out = validate(&path);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {stderr} stdout: {stdout}"
    );
    assert!(
        stderr.contains("broken.lua:2"),
        "the error must name the file and line: {stderr}"
    );
    // The daemon refuses to start with it, before touching the DCS or PostgreSQL.
    let mut cmd = postgres_command(&bins().spilo);
    cmd.arg(&path).current_dir(root.path());
    let out = run_with_timeout(cmd, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("spilo with a broken hook script should exit at once: {e}"));
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "spilo started with a broken hook script"
    );
    assert!(
        format!("{stdout}{stderr}").contains("broken.lua:2"),
        "stderr: {stderr} stdout: {stdout}"
    );
    assert!(!root.path().join("pgdata").exists());
}
