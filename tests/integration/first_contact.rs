//! What a new user meets in the first hour: a node config shaped like Patroni's own examples
//! (no `local` line in `pg_hba`) bootstraps; a bootstrap that fails gives up as Patroni's does
//! (stops what it started, removes what it made, releases the keys, exits with PostgreSQL's
//! reason) so that another node can bootstrap; and absurd timing values written into the DCS
//! `config` key or sent to `PATCH /config` never take the cluster down.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spilo_tests::{note, ClusterOpts, NodeOpts, TestCluster};

use crate::{BOOTSTRAP, REPLICATION};

/// `bootstrap.pg_hba` of Patroni's example configs (postgres0.yml): TCP only, md5.
fn patroni_example_hba() -> Vec<String> {
    vec![
        "host replication replicator 127.0.0.1/32 md5".into(),
        "host all all 0.0.0.0/0 md5".into(),
    ]
}

#[test]
fn a_patroni_style_config_without_a_local_pg_hba_line_bootstraps_and_replicates() {
    let mut opts = ClusterOpts::named("patroni-hba");
    opts.node.pg_hba = Some(patroni_example_hba());
    let c = TestCluster::start(2, opts);
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replica = c.others(&primary).remove(0);
    let p = c.node(&primary);
    p.write_value("patroni_hba_rows", "over TCP")
        .expect("INSERT on the primary");
    c.wait_for_value(&replica, "patroni_hba_rows", "over TCP", REPLICATION);
    // The daemon reached PostgreSQL over TCP: no socket connection was ever refused.
    for n in &c.nodes {
        let log = n.log_text();
        assert!(
            !log.contains("[local]") && !log.contains("bootstrap failed"),
            "{}: the daemon must not try the UNIX socket:\n{}",
            n.name,
            n.log_tail(40)
        );
    }
    let pg_log = std::fs::read_to_string(p.data_dir.join("spilo-postgres.log")).unwrap_or_default();
    assert!(
        !pg_log.contains("no pg_hba.conf entry"),
        "PostgreSQL refused a connection:\n{pg_log}"
    );
}

/// Waits for the daemon of `name` to exit and returns its log; panics when it keeps running.
fn wait_exit_failed(c: &mut TestCluster, name: &str) -> String {
    let status = c
        .node_mut(name)
        .wait_daemon_exit(BOOTSTRAP)
        .unwrap_or_else(|| panic!("{name}: the daemon did not exit after its bootstrap failed"));
    assert!(
        !status.success(),
        "{name}: a failed bootstrap must exit non-zero, got {status}"
    );
    c.node(name).log_text()
}

/// After a node gave its bootstrap up: no leader key, no initialize key, no member key, no
/// PostgreSQL, no data directory.
fn assert_given_up(c: &TestCluster, name: &str) {
    let n = c.node(name);
    assert_eq!(
        c.leader_from_dcs().expect("read the leader key"),
        None,
        "{name} must release the leader key"
    );
    let etcd = c.dcs.etcd();
    assert_eq!(
        etcd.get(&c.dcs_key("initialize")).expect("etcdctl get"),
        None,
        "no initialize key may be left"
    );
    assert_eq!(
        etcd.get(&c.dcs_key(&format!("members/{name}")))
            .expect("etcdctl get"),
        None,
        "{name}'s member key goes with its session"
    );
    assert!(!n.postmaster_alive(), "{name}: PostgreSQL must be stopped");
    let left = std::fs::read_dir(&n.data_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        left,
        0,
        "{name}: the data directory the bootstrap made must be removed ({})",
        n.data_dir.display()
    );
}

#[test]
fn a_failed_bootstrap_gives_up_releases_the_keys_and_another_node_bootstraps() {
    // ttl 30: a key left behind would outlive every check below, so "absent" means released.
    let mut c = TestCluster::start(0, ClusterOpts::named("bootstrap-fail").timing(30, 2, 3));

    // 1. initdb refuses an option: initdb's own message reaches the log and the exit.
    let bad_initdb = NodeOpts {
        initdb: Some(vec!["{locale: xx_NOT_A_LOCALE}".into()]),
        ..c.opts.node.clone()
    };
    let i = c.add_node("bad-initdb", "bad-initdb", bad_initdb);
    c.nodes[i].start();
    let log = wait_exit_failed(&mut c, "bad-initdb");
    assert!(
        log.contains("bootstrap failed") && log.contains("xx_NOT_A_LOCALE"),
        "the log must say the bootstrap failed and why:\n{log}"
    );
    assert_given_up(&c, "bad-initdb");

    // 2. The bootstrap SQL cannot connect: the daemon is told to use the UNIX socket, and the
    //    Patroni-style pg_hba has no `local` line. PostgreSQL's own reason reaches the log,
    //    and the PostgreSQL the bootstrap started is stopped.
    let socket_only = NodeOpts {
        pg_hba: Some(patroni_example_hba()),
        extra_postgresql: "  use_unix_socket: true\n".into(),
        ..c.opts.node.clone()
    };
    let i = c.add_node("bad-socket", "bad-socket", socket_only);
    c.nodes[i].start();
    let log = wait_exit_failed(&mut c, "bad-socket");
    assert!(
        log.contains("no pg_hba.conf entry for host \"[local]\""),
        "PostgreSQL's reason must be in the daemon's log:\n{log}"
    );
    assert!(
        log.contains("28000"),
        "the SQLSTATE must be in the log:\n{log}"
    );
    assert!(
        !log.contains("db error\n") && !log.contains("query failed: db error"),
        "no bare 'db error':\n{log}"
    );
    assert_given_up(&c, "bad-socket");

    // 3. A node with a working config now bootstraps the cluster.
    let i = c.add_node("good", "good", c.opts.node.clone());
    c.nodes[i].start();
    let primary = c.wait_for_primary(BOOTSTRAP);
    assert_eq!(primary, "good");
    c.node("good")
        .write_value("after_failed_bootstraps", "ok")
        .expect("INSERT on the new primary");
}

/// The cluster's `config` key as JSON.
fn stored_config(c: &TestCluster) -> Value {
    let text = c
        .dcs
        .etcd()
        .get(&c.dcs_key("config"))
        .expect("etcdctl get config")
        .expect("the config key exists");
    serde_json::from_str(&text).expect("config is JSON")
}

/// Writes `config` (raw JSON text) straight into the DCS, as etcdctl or patronictl would.
fn put_config(c: &TestCluster, text: &str) {
    c.dcs
        .etcd()
        .etcdctl(&["put", &c.dcs_key("config"), text])
        .expect("etcdctl put config");
}

/// The nodes whose /patroni says primary.
fn primaries(c: &TestCluster) -> Vec<String> {
    c.nodes
        .iter()
        .filter(|n| n.role().as_deref() == Some("primary"))
        .map(|n| n.name.clone())
        .collect()
}

/// For `hold`: never two primaries, and at the end exactly the expected one, taking a write.
fn hold_one_primary(c: &TestCluster, expected: &str, hold: Duration, label: &str) {
    let end = Instant::now() + hold;
    while Instant::now() < end {
        let p = primaries(c);
        assert!(
            p.len() <= 1,
            "{label}: two primaries {p:?}\n{}",
            c.describe()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Back (or still there) within one ttl: the primary takes a write.
    let (writer, _) = c.wait_for_writer(&[], Duration::from_secs(c.opts.node.ttl + 10));
    assert_eq!(
        writer,
        expected,
        "{label}: the primary changed\n{}",
        c.describe()
    );
}

#[test]
fn absurd_timing_values_in_the_dcs_or_through_rest_never_take_the_cluster_down() {
    let c = TestCluster::start(2, ClusterOpts::named("absurd-config"));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let good = stored_config(&c);
    note(format!("stored config: {good}"));
    let with = |key: &str, raw: &str| -> String {
        let mut v = good.clone();
        v[key] = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
        v.to_string()
    };

    // The case first, verbatim in spirit: ttl at i64::MAX with small loop timings.
    let mut steps: Vec<(String, String)> =
        vec![("ttl=i64::MAX, loop_wait 2, retry_timeout 4".into(), {
            let mut v = good.clone();
            v["ttl"] = json!(9_223_372_036_854_775_807u64);
            v["loop_wait"] = json!(2);
            v["retry_timeout"] = json!(4);
            v.to_string()
        })];
    // Each timing key at its type's limits and their neighbours, negative, fractional, a string.
    let keys = [
        "ttl",
        "loop_wait",
        "retry_timeout",
        "primary_start_timeout",
        "maximum_lag_on_failover",
    ];
    let values = [
        "9223372036854775807",
        "18446744073709551615",
        "4000000000000",
        "-1",
        "0",
        "2.5",
        "1e300",
        "\"abc\"",
    ];
    for key in keys {
        for v in values {
            // Keep the run short: every value on ttl (the one that took clusters down), the
            // extremes and the oddities on the others.
            if key != "ttl" && !matches!(v, "9223372036854775807" | "-1" | "2.5" | "\"abc\"") {
                continue;
            }
            steps.push((format!("{key}={v}"), with(key, v)));
        }
    }
    let loop_wait = Duration::from_secs(c.opts.node.loop_wait);
    for (label, text) in &steps {
        note(format!("DCS config: {label}"));
        put_config(&c, text);
        hold_one_primary(&c, &primary, loop_wait * 2, label);
    }

    // The stored value is shown as stored, with what the daemons use instead on stderr.
    put_config(&c, &with("ttl", "9223372036854775807"));
    let out = c.spiloctl(&["show-config"]).expect("spiloctl show-config");
    assert!(out.status.success(), "show-config: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("ttl: 9223372036854775807"), "{stdout}");
    assert!(
        stderr.contains("ttl: 9223372036854775807 is outside 5..=86400")
            && stderr.contains("86400"),
        "show-config must say the ttl is clamped: {stderr}"
    );
    hold_one_primary(&c, &primary, loop_wait * 2, "ttl clamped");
    let log = c.node(&primary).log_text();
    assert!(
        log.contains("DCS value not used as written: ttl: 9223372036854775807"),
        "the clamp is logged:\n{}",
        c.node(&primary).log_tail(60)
    );
    assert!(
        !log.contains("too large lease TTL") && !log.contains("panicked"),
        "no lease refusal and no panic:\n{}",
        c.node(&primary).log_tail(60)
    );

    // The repair: the good value back, the cluster as before (its lease TTL back to 10 s).
    put_config(&c, &good.to_string());
    hold_one_primary(&c, &primary, loop_wait * 3, "repaired");
    let out = c.spiloctl(&["show-config"]).expect("spiloctl show-config");
    assert!(
        String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "no warning once repaired: {out:?}"
    );

    // Through REST the same values are refused with 400 naming the key, and nothing is written.
    let before = stored_config(&c);
    let p = c.node(&primary);
    for key in keys {
        for v in values {
            // 0 is a valid primary_start_timeout and lag; large counts are valid lags.
            let valid = match key {
                "primary_start_timeout" => v == "0",
                "maximum_lag_on_failover" => {
                    matches!(v, "0" | "4000000000000" | "9223372036854775807")
                }
                _ => false,
            };
            if valid {
                continue;
            }
            let body = format!("{{\"{key}\": {v}}}");
            for method in ["PATCH", "PUT"] {
                let r = p.api(method, "/config", Some(&body)).expect("REST call");
                let text = r.text();
                assert_eq!(
                    r.status, 400,
                    "{method} /config {body}: {} {text}",
                    r.status
                );
                assert!(
                    text.contains(key),
                    "{method} /config {body}: the error must name {key}: {text}"
                );
            }
        }
    }
    assert_eq!(stored_config(&c), before, "a refused change writes nothing");
    // And a sane change still goes through.
    let r = p
        .api(
            "PATCH",
            "/config",
            Some("{\"maximum_lag_on_failover\": 2097152}"),
        )
        .expect("PATCH /config");
    assert_eq!(r.status, 200, "{}", r.text());
    hold_one_primary(&c, &primary, loop_wait, "after a sane PATCH");
}
