//! The unmodified `patronictl` (Patroni 4 from PyPI, installed by scripts/install-deps.sh)
//! against a spilo cluster: it reads the DCS keys spilo writes and calls spilo's REST API.
//!
//! patronictl exits 0 even when the REST call it made failed (it prints `... failed, details:`
//! or `Failed: ...` instead), so every command is checked by its output and by what the
//! cluster did, not by the exit status alone.

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use serde_json::Value;
use spilo_tests::util::chown_postgres;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::ops::wait_replica_of;
use crate::{BOOTSTRAP, REJOIN, REPLICATION};

/// `patronictl list -f json`, parsed.
fn list_json(c: &TestCluster) -> Vec<Value> {
    let out = c.patronictl_ok(&["list", "-f", "json"]);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("patronictl list -f json printed non-JSON ({e}): {out}"));
    v.as_array()
        .unwrap_or_else(|| panic!("patronictl list -f json: not an array: {v}"))
        .clone()
}

/// Asserts that patronictl's stdout has `want` and none of its failure phrases.
fn assert_success(what: &str, stdout: &str, want: &str) {
    for bad in [
        "failed, details",
        "Failed:",
        "Error:",
        "falling back to DCS",
    ] {
        assert!(
            !stdout.contains(bad),
            "patronictl {what} reported a failure ({bad:?}):\n{stdout}"
        );
    }
    assert!(
        stdout.contains(want),
        "patronictl {what}: output lacks {want:?}:\n{stdout}"
    );
}

#[test]
fn patronictl_list_edit_config_pause_resume_and_version() {
    let c = TestCluster::start(3, ClusterOpts::named("patronictl"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);

    let members = wait_for(
        "patronictl list: 3 members, 1 Leader, 2 streaming Replicas",
        Duration::from_secs(60),
        || {
            let m = list_json(&c);
            let leaders: Vec<&Value> = m.iter().filter(|x| x["Role"] == "Leader").collect();
            let replicas = m
                .iter()
                .filter(|x| x["Role"] == "Replica" && x["State"] == "streaming")
                .count();
            if m.len() == 3 && leaders.len() == 1 && replicas == 2 {
                Ok(m)
            } else {
                Err(format!("{m:?}"))
            }
        },
    );
    let names: BTreeSet<&str> = members
        .iter()
        .filter_map(|m| m["Member"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["node1", "node2", "node3"]));
    let leader = members
        .iter()
        .find(|m| m["Role"] == "Leader")
        .and_then(|m| m["Member"].as_str())
        .unwrap_or_default();
    assert_eq!(leader, p, "patronictl's leader differs: {members:?}");
    let table = c.patronictl_ok(&["list"]);
    for n in ["node1", "node2", "node3", "Leader", c.scope.as_str()] {
        assert!(table.contains(n), "patronictl list lacks {n}:\n{table}");
    }

    // edit-config writes the DCS; the daemons serve the new value.
    let out = c.patronictl_ok(&["edit-config", "--force", "-s", "loop_wait=3"]);
    note(format!("edit-config printed:\n{out}"));
    for n in &c.nodes {
        let name = n.name.clone();
        wait_for(
            &format!("GET /config on {name} with loop_wait 3"),
            Duration::from_secs(30),
            || match n.api_get("/config") {
                Ok((200, v)) if v["loop_wait"] == 3 => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    let shown = c.patronictl_ok(&["show-config"]);
    assert!(shown.contains("loop_wait: 3"), "show-config:\n{shown}");

    // pause --wait / resume --wait go through PATCH /config and watch the member keys.
    let out = c.patronictl_ok(&["pause", "--wait"]);
    assert_success(
        "pause --wait",
        &out,
        "Success: cluster management is paused",
    );
    match c.dcs_json("config") {
        Ok(Some(v)) if v["pause"] == true => {}
        other => panic!("/config after patronictl pause: {other:?}"),
    }
    let table = c.patronictl_ok(&["list"]);
    assert!(
        table.contains("Maintenance mode: on"),
        "patronictl list while paused:\n{table}"
    );
    let out = c.patronictl_ok(&["resume", "--wait"]);
    assert_success(
        "resume --wait",
        &out,
        "Success: cluster management is resumed",
    );
    match c.dcs_json("config") {
        Ok(Some(v)) if v.get("pause").is_none() || v["pause"].is_null() || v["pause"] == false => {}
        other => panic!("/config after patronictl resume: {other:?}"),
    }
    let table = c.patronictl_ok(&["list"]);
    assert!(
        !table.contains("Maintenance mode: on"),
        "patronictl list after resume:\n{table}"
    );

    // version asks every member's REST API.
    let scope = c.scope.clone();
    let out = c.patronictl_ok(&["version", &scope]);
    for n in ["node1", "node2", "node3"] {
        let line = out.lines().find(|l| l.contains(&format!("{n}:")));
        assert!(
            line.is_some_and(|l| l.contains("PostgreSQL 15") && !l.contains("failed")),
            "patronictl version: no good line for {n}:\n{out}"
        );
    }
    assert_eq!(c.wait_for_primary(Duration::from_secs(30)), p);
}

#[test]
fn patronictl_switchover_failover_and_history() {
    let c = TestCluster::start(3, ClusterOpts::named("patronictl-sw"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let cand = c.others(&p)[0].clone();
    let third = c.others(&p)[1].clone();
    let tl1 = c.node(&p).timeline().expect("timeline");
    c.node(&p)
        .write_value("patronictl_rows", "before")
        .expect("INSERT on the primary");

    let out = c.patronictl_ok(&[
        "switchover",
        "--force",
        "--leader",
        &p,
        "--candidate",
        &cand,
    ]);
    assert_success(
        "switchover",
        &out,
        &format!("Successfully switched over to \"{cand}\""),
    );
    assert_eq!(
        c.wait_for_primary(Duration::from_secs(60)),
        cand,
        "patronictl switchover did not make {cand} the primary"
    );
    wait_replica_of(&c, &p, &cand, REJOIN);
    wait_replica_of(&c, &third, &cand, REJOIN);
    let tl2 = c.node(&cand).timeline().expect("timeline");
    assert!(tl2 > tl1, "timeline {tl1} -> {tl2}");

    let out = c.patronictl_ok(&["failover", "--force", "--candidate", &third]);
    assert_success(
        "failover",
        &out,
        &format!("Successfully failed over to \"{third}\""),
    );
    assert_eq!(
        c.wait_for_primary(Duration::from_secs(60)),
        third,
        "patronictl failover did not make {third} the primary"
    );
    wait_replica_of(&c, &p, &third, REJOIN);
    wait_replica_of(&c, &cand, &third, REJOIN);
    assert!(c
        .node(&third)
        .has_value("patronictl_rows", "before")
        .expect("read on the final primary"));

    // history: one line per timeline left, read from the DCS key.
    let rows = wait_for(
        "patronictl history to list the timelines left",
        Duration::from_secs(30),
        || {
            let out = c.patronictl_ok(&["history", "-f", "json"]);
            let v: Value = serde_json::from_str(&out)
                .map_err(|e| format!("history -f json printed non-JSON ({e}): {out}"))?;
            let tls: Vec<u64> = v
                .as_array()
                .map(|a| a.iter().filter_map(|r| r["TL"].as_u64()).collect())
                .unwrap_or_default();
            if tls.contains(&tl1) && tls.contains(&tl2) {
                Ok(v)
            } else {
                Err(format!("{v}"))
            }
        },
    );
    note(format!("patronictl history: {rows}"));
    // Patroni rebuilds the key from the new primary's timeline history file and carries the
    // earlier lines' timestamp and new leader over from the key (ha.py update_cluster_history),
    // so after two promotions both lines still name their new leader.
    let by_tl = |tl: u64| {
        rows.as_array()
            .and_then(|a| a.iter().find(|r| r["TL"].as_u64() == Some(tl)))
            .cloned()
            .unwrap_or_default()
    };
    for (tl, leader) in [(tl1, &cand), (tl2, &third)] {
        let row = by_tl(tl);
        assert!(
            row["New Leader"] == leader.as_str() && row["Timestamp"].as_str().is_some_and(|t| !t.is_empty()),
            "patronictl history line for TL {tl}: want New Leader {leader} and a Timestamp, got {row}; all: {rows}"
        );
    }
    let table = c.patronictl_ok(&["history"]);
    assert!(table.contains(&third), "patronictl history:\n{table}");

    let members = list_json(&c);
    let leader = members
        .iter()
        .find(|m| m["Role"] == "Leader")
        .and_then(|m| m["Member"].as_str())
        .unwrap_or_default();
    assert_eq!(
        leader, third,
        "patronictl list after the failover: {members:?}"
    );
}

#[test]
fn patronictl_restart_reinit_and_reload_a_replica() {
    let c = TestCluster::start(2, ClusterOpts::named("patronictl-rr"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = c.others(&p)[0].clone();
    let scope = c.scope.clone();

    let start0 = c
        .node(&r)
        .postmaster_start_time()
        .expect("postmaster_start_time");
    let out = c.patronictl_ok(&["restart", "--force", &scope, &r]);
    assert_success("restart", &out, &format!("Success: restart on member {r}"));
    let start1 = wait_for(
        &format!("{r}'s postmaster_start_time to change"),
        Duration::from_secs(60),
        || match c.node(&r).postmaster_start_time() {
            Some(t) if t != start0 => Ok(t),
            other => Err(format!("{other:?}")),
        },
    );
    wait_replica_of(&c, &r, &p, REJOIN);

    let marker = c.node(&r).data_dir.join("spilo_test_marker");
    fs::write(&marker, "from the test").expect("write the marker");
    chown_postgres(&marker);
    let out = c.patronictl_ok(&["reinit", "--force", "--wait", &scope, &r]);
    assert_success(
        "reinit",
        &out,
        &format!("Success: reinitialize for member {r}"),
    );
    wait_replica_of(&c, &r, &p, REJOIN);
    assert!(
        !marker.exists(),
        "{} survived patronictl reinit: the data directory was not rebuilt",
        marker.display()
    );
    assert_ne!(c.node(&r).postmaster_start_time(), Some(start1));
    c.node(&p)
        .write_value("patronictl_rr_rows", "after the reinit")
        .expect("INSERT on the primary");
    c.wait_for_value(&r, "patronictl_rr_rows", "after the reinit", REPLICATION);

    let out = c.patronictl_ok(&["reload", "--force", &scope, &r]);
    assert_success(
        "reload",
        &out,
        &format!("Reload request received for member {r}"),
    );
    assert_eq!(c.wait_for_primary(Duration::from_secs(30)), p);
}
