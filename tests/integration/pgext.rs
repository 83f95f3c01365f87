//! The `spilo` SQL extension on a real 3-node cluster (installed by scripts/install-pgext.sh,
//! created by the bootstrap node): every function on the primary and the replicas, before and
//! after a switchover and a failover; `members()` against `spiloctl list`; `lag()` while replay
//! is paused under writes; a stale, deleted or broken state file reads as unknown without
//! breaking the session.

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use serde_json::json;
use spilo_tests::util::chown_postgres;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::ops::{call, expect};
use crate::{BOOTSTRAP, REJOIN, REPLICATION};

fn value(c: &TestCluster, node: &str, sql: &str) -> Option<String> {
    c.node(node)
        .sql_value(sql)
        .unwrap_or_else(|e| panic!("{node}: {sql}: {e}"))
}

/// Waits until `SELECT spilo.role()` on `node` says `want`.
fn wait_sql_role(c: &TestCluster, node: &str, want: &str) {
    wait_for(
        &format!("spilo.role() = {want} on {node}"),
        Duration::from_secs(60),
        || match c.node(node).sql_value("SELECT spilo.role()") {
            Ok(Some(r)) if r == want => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

/// Every function on every node agrees with the cluster as the harness sees it.
fn check_functions(c: &TestCluster, primary: &str) {
    let tl = c.node(primary).timeline().expect("the primary's timeline");
    for n in c.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>() {
        if !c.node(&n).postmaster_alive() {
            continue;
        }
        let is_primary = n == primary;
        wait_sql_role(c, &n, if is_primary { "primary" } else { "replica" });
        assert_eq!(
            value(c, &n, "SELECT spilo.is_leader()").as_deref(),
            Some(if is_primary { "t" } else { "f" }),
            "{n}"
        );
        assert_eq!(
            value(c, &n, "SELECT spilo.leader()").as_deref(),
            Some(primary)
        );
        assert_eq!(
            value(c, &n, "SELECT spilo.member()").as_deref(),
            Some(n.as_str())
        );
        assert_eq!(
            value(c, &n, "SELECT spilo.scope()").as_deref(),
            Some(c.scope.as_str())
        );
        wait_for(
            &format!("spilo.timeline() = {tl} on {n}"),
            REPLICATION,
            || match c.node(&n).sql_value("SELECT spilo.timeline()") {
                Ok(Some(t)) if t == tl.to_string() => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        if is_primary {
            assert_eq!(value(c, &n, "SELECT spilo.lag()").as_deref(), Some("0"));
            assert_eq!(
                value(c, &n, "SELECT spilo.lag_seconds()").as_deref(),
                Some("0")
            );
        } else {
            assert!(
                value(c, &n, "SELECT spilo.lag()").is_some(),
                "{n}: lag unknown"
            );
        }
        let state_role = value(c, &n, "SELECT spilo.state()->>'role'");
        assert_eq!(
            state_role.as_deref(),
            Some(if is_primary { "primary" } else { "replica" })
        );
        let reasons = value(
            c,
            &n,
            "SELECT array_length(reasons, 1) FROM spilo.last_decision()",
        );
        assert!(
            reasons.and_then(|r| r.parse::<u32>().ok()).unwrap_or(0) >= 1,
            "{n}: last_decision() without reasons"
        );
    }
    // members() agrees with spiloctl list.
    let listed = c.spiloctl_list_json().expect("spiloctl list");
    let from_ctl: BTreeSet<(String, String)> = listed
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["Member"].as_str().unwrap_or_default().to_string(),
                if r["Role"] == "Leader" {
                    "leader"
                } else {
                    "replica"
                }
                .to_string(),
            )
        })
        .collect();
    let rows = c
        .node(primary)
        .sql("SELECT name, CASE WHEN role = 'leader' THEN 'leader' ELSE 'replica' END FROM spilo.members()")
        .expect("spilo.members()");
    let from_sql: BTreeSet<(String, String)> = rows
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        from_sql, from_ctl,
        "spilo.members() and spiloctl list disagree"
    );
}

#[test]
fn sql_functions_follow_the_cluster_through_switchover_and_failover() {
    let mut c = TestCluster::start(3, ClusterOpts::named("pgext"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    assert!(
        value(&c, &p, "SELECT extversion FROM pg_extension WHERE extname = 'spilo'").is_some(),
        "the bootstrap node did not create the extension (is it installed? scripts/install-pgext.sh)"
    );
    check_functions(&c, &p);

    // Replay paused under writes: lag grows; resumed: back to 0.
    let r = c.others(&p)[0].clone();
    c.node(&p)
        .sql("CREATE TABLE IF NOT EXISTS lag_rows (v text)")
        .expect("create table");
    c.node(&r)
        .sql("SELECT pg_wal_replay_pause()")
        .expect("pause replay");
    let mut last = 0i64;
    for round in 0..3 {
        c.node(&p)
            .sql("INSERT INTO lag_rows SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
            .expect("write load");
        let seen = wait_for(
            &format!("spilo.lag() on {r} beyond {last} (round {round})"),
            Duration::from_secs(30),
            || match c.node(&r).sql_value("SELECT spilo.lag()") {
                Ok(Some(l)) => match l.parse::<i64>() {
                    Ok(v) if v > last => Ok(v),
                    Ok(v) => Err(format!("lag {v}")),
                    Err(e) => Err(e.to_string()),
                },
                other => Err(format!("{other:?}")),
            },
        );
        note(format!("{r}: lag {seen} bytes with replay paused"));
        last = seen;
    }
    let secs = value(&c, &r, "SELECT spilo.lag_seconds()");
    assert!(secs.is_some(), "lag_seconds() unknown while lagging");
    c.node(&r)
        .sql("SELECT pg_wal_replay_resume()")
        .expect("resume replay");
    wait_for(
        &format!("spilo.lag() = 0 on {r}"),
        Duration::from_secs(60),
        || match c.node(&r).sql_value("SELECT spilo.lag()") {
            Ok(Some(l)) if l == "0" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // Switchover: the functions follow.
    let resp = call(
        c.node(&p),
        "POST",
        "/switchover",
        Some(&json!({"leader": p, "candidate": r})),
    );
    expect("POST /switchover", resp, 200, None);
    assert_eq!(c.wait_for_primary(Duration::from_secs(60)), r);
    c.wait_for_streaming(
        &r,
        &c.others(&r).iter().map(String::as_str).collect::<Vec<_>>(),
        REJOIN,
    );
    check_functions(&c, &r);

    // Failover: kill the primary; the new one reports primary, the dead one is left out.
    let n = c.node_mut(&r);
    n.kill_daemon(libc::SIGKILL);
    n.wait_daemon_exit(Duration::from_secs(10))
        .expect("SIGKILLed daemon exits");
    n.kill_postmaster(libc::SIGKILL);
    let (new, _) = c.wait_for_writer(&[r.as_str()], Duration::from_secs(60));
    c.node_mut(&r).restart_daemon();
    c.wait_for_streaming(
        &new,
        &c.others(&new)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        REJOIN,
    );
    check_functions(&c, &new);
}

#[test]
fn a_stale_missing_or_broken_state_file_reads_as_unknown() {
    let mut c = TestCluster::start(2, ClusterOpts::named("pgextbad"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = c.others(&p)[0].clone();
    wait_sql_role(&c, &r, "replica");
    let state = c.node(&r).data_dir.join("spilo.state");
    let ttl = c.opts.node.ttl;

    // A frozen daemon stops refreshing the file: past its deadline the role is unknown.
    c.node_mut(&r).kill_daemon(libc::SIGSTOP);
    wait_for(
        &format!("spilo.role() unknown on {r} once its daemon is frozen"),
        Duration::from_secs(ttl + 20),
        || match c.node(&r).sql_value("SELECT spilo.role()") {
            Ok(Some(v)) if v == "unknown" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let future_deadline = "99999999999999999999"; // far beyond any monotonic clock
    for (what, body) in [
        ("deleted", None),
        (
            "truncated",
            Some(r#"{"format": 1, "role": "repl"#.to_string()),
        ),
        ("not JSON", Some("\u{0}\u{1}garbage".to_string())),
        (
            "a future version",
            Some(format!(
                r#"{{"format": 2, "role": "replica", "valid_until_monotonic_ns": {future_deadline}}}"#
            )),
        ),
        (
            "huge",
            Some(format!(
                "{{\"format\": 1, \"pad\": \"{}\"}}",
                "x".repeat(2 << 20)
            )),
        ),
    ] {
        let _ = fs::remove_file(&state);
        if let Some(b) = &body {
            fs::write(&state, b).expect("write state file");
            chown_postgres(&state);
        }
        for f in [
            "SELECT spilo.role()",
            "SELECT spilo.is_leader()::text",
            "SELECT coalesce(spilo.leader(), 'NULL')",
            "SELECT coalesce(spilo.lag()::text, 'NULL')",
            "SELECT spilo.state()->>'role'",
            "SELECT count(*)::text FROM spilo.members()",
        ] {
            let got = c
                .node(&r)
                .sql_value(f)
                .unwrap_or_else(|e| panic!("{what} state file: {f} raised an error: {e}"));
            let want = match f {
                "SELECT spilo.is_leader()::text" => "false",
                "SELECT count(*)::text FROM spilo.members()" => "0",
                "SELECT coalesce(spilo.leader(), 'NULL')"
                | "SELECT coalesce(spilo.lag()::text, 'NULL')" => "NULL",
                _ => "unknown",
            };
            assert_eq!(got.as_deref(), Some(want), "{what} state file: {f}");
        }
        note(format!("{what} state file: unknown, session intact"));
    }
    // The daemon comes back and rewrites it.
    c.node_mut(&r).kill_daemon(libc::SIGCONT);
    wait_sql_role(&c, &r, "replica");
}
