//! `spilo --validate` on broken and valid configs; the daemon refuses root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use spilo_tests::bins::{bins, workspace_dir};
use spilo_tests::util::{chmod, postgres_command, run_with_timeout};
use spilo_tests::{NodeConfig, NodeOpts, TempRoot};

/// A valid config for node `cfgtest` under `root` (nothing listens on its ports).
fn valid_config(root: &Path) -> String {
    NodeConfig {
        scope: "cfgtest".into(),
        name: "cfgnode".into(),
        api_port: 18008,
        pg_port: 15432,
        dcs: spilo_tests::DcsEndpoint::Etcd("127.0.0.1:12379".into()),
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

/// `spilo --validate PATH` as postgres.
fn validate(path: &Path) -> Output {
    let mut cmd = postgres_command(&bins().spilo);
    cmd.arg("--validate").arg(path);
    run_with_timeout(cmd, Duration::from_secs(30))
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
    // (what, config text, any of these must appear in stderr; empty: only non-empty stderr)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
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
fn validate_accepts_valid_configs() {
    let root = TempRoot::new("spilo-cfg-");
    let mut failures = Vec::new();
    let example = fs::read_to_string(workspace_dir().join("examples/node.yml"))
        .expect("read examples/node.yml");
    for (what, yaml) in [
        ("the harness template", valid_config(root.path())),
        ("examples/node.yml", example),
    ] {
        let path = write_case(root.path(), failures.len() + 100, &yaml);
        let out = validate(&path);
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
