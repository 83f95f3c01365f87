//! `spiloctl` subcommands on a running 3-node cluster: the DCS-only ones (show-config,
//! edit-config, history, topology, list formats) and version (GET only), then the ones that
//! call the members' REST APIs (pause/resume, reload, restart, switchover, flush).

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::{BOOTSTRAP, REJOIN};

/// `(exit code, stdout, stderr)` of `spiloctl ARGS`.
fn run(c: &TestCluster, args: &[&str]) -> (i32, String, String) {
    let out: Output = c
        .spiloctl(args)
        .unwrap_or_else(|e| panic!("spiloctl {args:?}: {e}"));
    let r = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    note(format!(
        "spiloctl {} -> {}\n{}{}",
        args.join(" "),
        r.0,
        r.1,
        r.2
    ));
    r
}

/// stdout of `spiloctl ARGS`, which must exit 0.
fn ok(c: &TestCluster, args: &[&str]) -> String {
    let (code, out, err) = run(c, args);
    assert_eq!(
        code, 0,
        "spiloctl {args:?} failed; stdout: {out}; stderr: {err}"
    );
    out
}

/// stderr of `spiloctl ARGS`, which must exit 1.
fn fails(c: &TestCluster, args: &[&str]) -> String {
    let (code, out, err) = run(c, args);
    assert_eq!(
        code, 1,
        "spiloctl {args:?} should fail; stdout: {out}; stderr: {err}"
    );
    err
}

/// The `config` key, read with etcdctl.
fn config_key(c: &TestCluster) -> Value {
    let raw = c
        .dcs
        .etcd()
        .get(&c.dcs_key("config"))
        .expect("etcdctl get config")
        .expect("the config key exists");
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("config key is not JSON ({e}): {raw}"))
}

#[test]
fn spiloctl_reads_and_edits_through_the_dcs() {
    let c = TestCluster::start(3, ClusterOpts::named("ctlread"));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);

    // show-config: the bootstrap.dcs section as YAML.
    let shown = ok(&c, &["show-config"]);
    assert!(shown.contains("loop_wait: 2\n"), "{shown}");
    assert!(shown.contains("  parameters:\n"), "{shown}");

    // edit-config -s, with the diff, read back through show-config and the key itself.
    let out = ok(&c, &["edit-config", "--force", "-s", "loop_wait=3"]);
    assert!(
        out.contains("-loop_wait: 2\n") && out.contains("+loop_wait: 3\n"),
        "{out}"
    );
    assert!(ok(&c, &["show-config"]).contains("loop_wait: 3\n"));
    assert_eq!(config_key(&c)["loop_wait"], 3);

    // The same change again: nothing to write.
    let out = ok(&c, &["edit-config", "--force", "-s", "loop_wait=3"]);
    assert!(out.contains("Nothing changed"), "{out}");

    // -p sets a GUC; null deletes a key; a dotted GUC name stays one key.
    ok(
        &c,
        &[
            "edit-config",
            "--force",
            "-p",
            "work_mem=8MB",
            "-s",
            "postgresql.parameters.pg_stat_statements.track=all",
            "-s",
            "custom_key=[1, 2]",
        ],
    );
    let cfg = config_key(&c);
    assert_eq!(cfg["postgresql"]["parameters"]["work_mem"], "8MB", "{cfg}");
    assert_eq!(
        cfg["postgresql"]["parameters"]["pg_stat_statements.track"], "all",
        "{cfg}"
    );
    assert_eq!(cfg["custom_key"], serde_json::json!([1, 2]), "{cfg}");
    ok(
        &c,
        &[
            "edit-config",
            "--force",
            "-s",
            "custom_key=null",
            "-s",
            "postgresql.parameters.pg_stat_statements.track=null",
        ],
    );
    let cfg = config_key(&c);
    assert!(cfg.get("custom_key").is_none(), "{cfg}");
    assert!(
        cfg["postgresql"]["parameters"]
            .get("pg_stat_statements.track")
            .is_none(),
        "{cfg}"
    );

    // Without --force and without a terminal nothing is written.
    let err = fails(&c, &["edit-config", "-s", "loop_wait=4"]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(config_key(&c)["loop_wait"], 3);
    // An invalid value is refused before writing.
    let err = fails(&c, &["edit-config", "--force", "-s", "loop_wait=soon"]);
    assert!(err.contains("not valid"), "{err}");
    assert_eq!(config_key(&c)["loop_wait"], 3);

    // history: the table header, and JSON that parses.
    let h = ok(&c, &["history"]);
    assert!(
        h.contains("| TL | LSN") && h.contains("| Reason") && h.contains("| New Leader |"),
        "{h}"
    );
    let hj: Value = serde_json::from_str(&ok(&c, &["history", "-f", "json"])).expect("JSON");
    assert!(hj.is_array(), "{hj}");

    // topology: the leader first, the replicas under it.
    let t = ok(&c, &["topology"]);
    let rows: Vec<&str> = t.lines().filter(|l| l.contains("node")).collect();
    assert_eq!(rows.len(), 3, "{t}");
    assert!(rows[0].starts_with(&format!("| {primary} ")), "{t}");
    assert!(
        rows[1].starts_with("| + node") && rows[2].starts_with("| + node"),
        "{t}"
    );

    // list in TSV and YAML.
    let tsv = ok(&c, &["list", "-f", "tsv"]);
    let lines: Vec<&str> = tsv.lines().collect();
    assert!(
        lines[0].starts_with("Member\tHost\tRole\tState\tTL\tLag in MB"),
        "{tsv}"
    );
    assert_eq!(lines.len(), 4, "{tsv}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{primary}\t")) && l.contains("\tLeader\t")),
        "{tsv}"
    );
    let yaml = ok(&c, &["list", "-f", "yaml"]);
    // One item per member (keys sorted: spilo's optional columns may come before Cluster).
    assert_eq!(
        yaml.lines().filter(|l| l.starts_with("- ")).count(),
        3,
        "{yaml}"
    );
    assert_eq!(
        yaml.matches("  Cluster: ").count() + yaml.matches("- Cluster: ").count(),
        3,
        "{yaml}"
    );
    for n in ["node1", "node2", "node3"] {
        assert!(yaml.contains(&format!("  Member: {n}\n")), "{yaml}");
    }

    // version: spiloctl's, then each member's from its REST API.
    let v = ok(&c, &["version"]);
    assert!(v.starts_with("spiloctl version "), "{v}");
    for n in ["node1", "node2", "node3"] {
        let line = v
            .lines()
            .find(|l| l.starts_with(&format!("{n}: ")))
            .unwrap_or_else(|| panic!("no version line for {n}: {v}"));
        assert!(
            line.contains("Spilo ") && line.contains("PostgreSQL 1"),
            "{line}"
        );
    }
    // An unknown member is an error naming the known ones.
    let err = fails(&c, &["version", "nodeX"]);
    assert!(
        err.contains("nodeX") && err.contains("node1, node2, node3"),
        "{err}"
    );
}

#[test]
fn spiloctl_acts_through_the_rest_api() {
    let mut opts = ClusterOpts::named("ctlrest");
    opts.node.rest_auth = Some(("admin".into(), "ctl-secret".into()));
    let c = TestCluster::start(3, opts);
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replicas = c.others(&primary);

    // pause / resume, waiting for every member.
    let out = ok(&c, &["pause", "--wait"]);
    assert!(
        out.contains("Success: cluster management is paused"),
        "{out}"
    );
    assert!(ok(&c, &["list"]).contains("Maintenance mode: on"));
    let err = fails(&c, &["pause"]);
    assert!(err.contains("already paused"), "{err}");
    let out = ok(&c, &["resume", "--wait"]);
    assert!(
        out.contains("Success: cluster management is resumed"),
        "{out}"
    );
    assert!(!ok(&c, &["list"]).contains("Maintenance mode"));

    // reload every member.
    let out = ok(&c, &["reload", "--force"]);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("Reload request received") || l.contains("No changes"))
            .count(),
        3,
        "{out}"
    );

    // restart one replica now.
    let out = ok(&c, &["restart", &replicas[0], "--force"]);
    assert!(
        out.contains(&format!("Success: restart on member {}", replicas[0])),
        "{out}"
    );

    // flush: nothing scheduled.
    let out = ok(&c, &["flush", "switchover", "--force"]);
    assert!(out.contains("No pending scheduled switchover"), "{out}");
    let out = ok(&c, &["flush", "restart", "--force"]);
    assert!(out.contains("No scheduled restart"), "{out}");

    // A scheduled switchover, then flushed.
    let out = ok(
        &c,
        &[
            "switchover",
            "--force",
            "--candidate",
            &replicas[0],
            "--scheduled",
            "2099-01-01T00:00:00+00:00",
        ],
    );
    assert!(out.to_lowercase().contains("scheduled"), "{out}");
    let out = ok(&c, &["flush", "switchover", "--force"]);
    assert!(out.contains("Success"), "{out}");

    // A switchover now, to the first replica.
    let target = replicas[0].clone();
    let out = ok(&c, &["switchover", "--force", "--candidate", &target]);
    assert!(out.contains(&target), "{out}");
    let new_primary = c.wait_for_primary_except(&[&primary], REJOIN);
    assert_eq!(new_primary, target);
    // history now has the switch.
    wait_for(
        "spiloctl history to show the new leader",
        Duration::from_secs(60),
        || {
            let v: Value = serde_json::from_str(&ok(&c, &["history", "-f", "json"]))
                .map_err(|e| e.to_string())?;
            let rows = v.as_array().cloned().unwrap_or_default();
            if rows.iter().any(|r| r["New Leader"] == target.as_str()) {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    );
    // A candidate that is the leader is refused before any request.
    let err = fails(&c, &["switchover", "--force", "--candidate", &target]);
    assert!(err.contains("already the leader"), "{err}");

    // The former primary rejoins; rebuild it from scratch and wait for it.
    c.wait_for_streaming(&target, &[&primary], REJOIN);
    let out = ok(&c, &["reinit", &primary, "--force", "--wait"]);
    assert!(
        out.contains(&format!("Success: reinitialize for member {primary}"))
            && out.contains(&format!("Reinitialize is completed on: {primary}")),
        "{out}"
    );
    c.wait_for_streaming(&target, &[&primary], REJOIN);
    // The leader cannot be reinitialized.
    let err = fails(&c, &["reinit", &target, "--force"]);
    assert!(err.contains("it is the leader"), "{err}");

    // A scheduled restart on the replicas, shown by list, then flushed.
    let out = ok(
        &c,
        &[
            "restart",
            "--role",
            "replica",
            "--scheduled",
            "2099-01-01T00:00:00+00:00",
            "--force",
        ],
    );
    assert_eq!(
        out.matches("Success: restart scheduled on member").count(),
        2,
        "{out}"
    );
    wait_for(
        "list to show the scheduled restarts",
        Duration::from_secs(30),
        || {
            let t = ok(&c, &["list", "-f", "tsv"]);
            if t.lines().next().unwrap_or("").contains("Scheduled restart") {
                Ok(())
            } else {
                Err(t)
            }
        },
    );
    let out = ok(&c, &["flush", "restart", "--force"]);
    assert_eq!(
        out.matches("Success: flush scheduled restart for member")
            .count(),
        2,
        "{out}"
    );

    // failover to the remaining replica.
    let third = c
        .others(&target)
        .into_iter()
        .find(|n| *n != primary)
        .expect("a third node");
    let out = ok(&c, &["failover", "--force", "--candidate", &third]);
    assert!(out.contains(&third), "{out}");
    assert_eq!(c.wait_for_primary_except(&[&target], REJOIN), third);
}
