//! `PATCH /config`: recursive merge, `null` deletes, validation (400), command-running
//! settings refused (403), the change reaching PostgreSQL; Basic auth on the mutating
//! endpoints only.

use std::time::Duration;

use serde_json::{json, Value};
use spilo_tests::http::Auth;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::ops::{call, check, expect};
use crate::BOOTSTRAP;

/// `GET /config` on `node`, which must answer 200 with an object.
fn get_config(c: &TestCluster, node: &str) -> Value {
    match c.node(node).api_get("/config") {
        Ok((200, v @ Value::Object(_))) => v,
        other => panic!("GET /config on {node}: {other:?}"),
    }
}

/// Waits (15 s) until `GET /config` on `node` satisfies `ok`; returns it. Notes when the first
/// read after the change was still the old configuration (the API serves the HA loop's cached
/// DCS view, refreshed on the next cycle).
fn wait_config(c: &TestCluster, node: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let first = get_config(c, node);
    if ok(&first) {
        return first;
    }
    note(format!(
        "GET /config on {node} right after the change is stale ({what} not there yet): {first}"
    ));
    wait_for(
        &format!("GET /config on {node}: {what}"),
        Duration::from_secs(15),
        || {
            let v = get_config(c, node);
            if ok(&v) {
                Ok(v)
            } else {
                Err(format!("{v}"))
            }
        },
    )
}

/// Waits until `SHOW work_mem` is `want` on every node.
fn wait_work_mem(c: &TestCluster, want: &str) {
    for n in &c.nodes {
        wait_for(
            &format!("work_mem = {want} on {}", n.name),
            Duration::from_secs(60),
            || match n.sql_value("SHOW work_mem") {
                Ok(Some(v)) if v == want => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
}

#[test]
fn patch_config_merges_deletes_and_validates() {
    let c = TestCluster::start(2, ClusterOpts::named("config-api"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = c.others(&p)[0].clone();
    let before = get_config(&c, &p);
    assert_eq!(before["ttl"], 10, "{before}");
    assert_eq!(before["loop_wait"], 2, "{before}");

    // Merge (sent to the replica: any node accepts it).
    let resp = call(
        c.node(&r),
        "PATCH",
        "/config",
        Some(&json!({"loop_wait": 3, "postgresql": {"parameters": {"work_mem": "8MB"}}})),
    );
    let resp = expect("PATCH loop_wait and work_mem", resp, 200, None);
    let answered = resp.json();
    assert_eq!(answered["loop_wait"], 3, "PATCH answer: {answered}");
    for node in [&p, &r] {
        let v = wait_config(&c, node, "loop_wait 3 and work_mem 8MB", |v| {
            v["loop_wait"] == 3 && v["postgresql"]["parameters"]["work_mem"] == "8MB"
        });
        assert_eq!(v["ttl"], before["ttl"], "ttl lost in the merge: {v}");
        assert_eq!(
            v["retry_timeout"], before["retry_timeout"],
            "retry_timeout lost: {v}"
        );
        assert_eq!(
            v["postgresql"]["parameters"]["work_mem"], "8MB",
            "work_mem not merged: {v}"
        );
        assert_eq!(
            v["postgresql"]["parameters"]["max_connections"],
            before["postgresql"]["parameters"]["max_connections"],
            "sibling parameter lost in the merge: {v}"
        );
        assert_eq!(
            v["postgresql"]["use_pg_rewind"], before["postgresql"]["use_pg_rewind"],
            "sibling key of parameters lost in the merge: {v}"
        );
    }
    let stored = c
        .dcs_json("config")
        .expect("read /config key")
        .expect("/config key");
    assert_eq!(
        stored,
        get_config(&c, &p),
        "GET /config differs from the DCS"
    );

    // null deletes the key only.
    let resp = call(
        c.node(&p),
        "PATCH",
        "/config",
        Some(&json!({"postgresql": {"parameters": {"work_mem": null}}})),
    );
    expect("PATCH work_mem: null", resp, 200, None);
    let v = wait_config(&c, &p, "work_mem deleted", |v| {
        v["postgresql"]["parameters"].get("work_mem").is_none()
    });
    assert!(
        v["postgresql"]["parameters"].get("work_mem").is_none(),
        "work_mem still there after null: {v}"
    );
    assert_eq!(
        v["postgresql"]["parameters"]["max_connections"],
        before["postgresql"]["parameters"]["max_connections"],
        "null deleted more than work_mem: {v}"
    );
    assert_eq!(v["loop_wait"], 3, "{v}");

    // Refusals leave the config (the DCS key) as it was.
    let stored_config = || {
        c.dcs_json("config")
            .expect("read /config key")
            .expect("/config key")
    };
    let kept = stored_config();
    let mut failures = Vec::new();
    check(
        &mut failures,
        "PATCH archive_command",
        c.node(&p).api(
            "PATCH",
            "/config",
            Some(
                &json!({"postgresql": {"parameters": {"archive_command": "/bin/true"}}})
                    .to_string(),
            ),
        ),
        403,
        "archive_command",
    );
    check(
        &mut failures,
        "PATCH ttl: 2",
        c.node(&p)
            .api("PATCH", "/config", Some(&json!({"ttl": 2}).to_string())),
        400,
        "",
    );
    check(
        &mut failures,
        "PATCH with a body that is not JSON",
        c.node(&p).api("PATCH", "/config", Some("loop_wait=4")),
        400,
        "",
    );
    let after = stored_config();
    if after != kept {
        failures.push(format!(
            "a refused PATCH changed /config:\nbefore {kept}\nafter  {after}"
        ));
    }
    assert!(
        failures.is_empty(),
        "PATCH /config mismatches:\n{}",
        failures.join("\n")
    );
    assert!(
        c.node(&p).sql_value("SHOW archive_command").ok().flatten() != Some("/bin/true".into()),
        "archive_command reached PostgreSQL"
    );
}

#[test]
fn patch_config_parameters_reach_postgres_and_flag_pending_restart() {
    let c = TestCluster::start(2, ClusterOpts::named("config-pg"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = c.others(&p)[0].clone();

    // A reloadable parameter reaches every PostgreSQL without a restart.
    let resp = call(
        c.node(&p),
        "PATCH",
        "/config",
        Some(&json!({"postgresql": {"parameters": {"work_mem": "8MB"}}})),
    );
    expect("PATCH work_mem 8MB", resp, 200, None);
    wait_work_mem(&c, "8MB");
    let resp = call(
        c.node(&p),
        "PATCH",
        "/config",
        Some(&json!({"postgresql": {"parameters": {"work_mem": null}}})),
    );
    expect("PATCH work_mem null", resp, 200, None);
    wait_work_mem(&c, "4MB");

    // A restart-only parameter: pending_restart on every node, applied by a restart with
    // restart_pending, which clears the flag.
    let resp = call(
        c.node(&p),
        "PATCH",
        "/config",
        Some(&json!({"postgresql": {"parameters": {"max_locks_per_transaction": 128}}})),
    );
    expect("PATCH max_locks_per_transaction 128", resp, 200, None);
    for n in &c.nodes {
        wait_for(
            &format!("pending_restart on {}", n.name),
            Duration::from_secs(60),
            || {
                let v = n.patroni()?;
                if v["pending_restart"] == true {
                    Ok(())
                } else {
                    Err(format!(
                        "pending_restart {} reason {}",
                        v["pending_restart"], v["pending_restart_reason"]
                    ))
                }
            },
        );
    }
    assert_eq!(
        c.node(&r)
            .sql_value("SHOW max_locks_per_transaction")
            .ok()
            .flatten()
            .as_deref(),
        Some("64"),
        "a restart-only parameter changed without a restart"
    );
    let resp = call(
        c.node(&r),
        "POST",
        "/restart",
        Some(&json!({"restart_pending": true})),
    );
    expect(
        "POST /restart {restart_pending: true} on the replica",
        resp,
        200,
        Some("restarted successfully"),
    );
    wait_for(
        &format!("max_locks_per_transaction 128 and no pending_restart on {r}"),
        Duration::from_secs(60),
        || {
            let v = c.node(&r).patroni()?;
            let shown = c.node(&r).sql_value("SHOW max_locks_per_transaction")?;
            if shown.as_deref() == Some("128") && v["pending_restart"] != true {
                Ok(())
            } else {
                Err(format!(
                    "SHOW {shown:?}, pending_restart {}",
                    v["pending_restart"]
                ))
            }
        },
    );
    assert_eq!(
        c.node(&p).patroni().expect("/patroni")["pending_restart"],
        true,
        "the primary was not restarted and must still be pending"
    );
}

#[test]
fn mutating_endpoints_require_basic_auth_when_configured_and_reads_do_not() {
    let mut opts = ClusterOpts::named("config-auth");
    opts.node.rest_auth = Some(("admin".into(), "secret".into()));
    let c = TestCluster::start(1, opts);
    let p = c.wait_for_primary(BOOTSTRAP);
    let n = c.node(&p);
    let body = json!({"loop_wait": 3}).to_string();
    let mut failures = Vec::new();

    let unauth = |method: &str, path: &str, b: Option<&str>, auth: Option<Auth<'_>>, what: &str| {
        let mut f = Vec::new();
        match n.api_with_auth(method, path, b, auth) {
            Ok(r) if r.status == 401 => {
                let h = r.header("www-authenticate").unwrap_or_default().to_string();
                if !h.starts_with("Basic") {
                    f.push(format!(
                        "{what}: 401 without a Basic WWW-Authenticate header (got {h:?}); headers {:?}",
                        r.headers
                    ));
                }
            }
            Ok(r) => f.push(format!("{what}: want 401, got {}", r.summary())),
            Err(e) => f.push(format!("{what}: no answer: {e}")),
        }
        f
    };
    failures.extend(unauth(
        "PATCH",
        "/config",
        Some(&body),
        None,
        "PATCH /config without credentials",
    ));
    failures.extend(unauth(
        "PATCH",
        "/config",
        Some(&body),
        Some(Auth {
            username: "admin",
            password: "wrong",
        }),
        "PATCH /config with a wrong password",
    ));
    failures.extend(unauth(
        "PATCH",
        "/config",
        Some(&body),
        Some(Auth {
            username: "someone",
            password: "secret",
        }),
        "PATCH /config with a wrong user",
    ));
    check(
        &mut failures,
        "PATCH without credentials: message",
        n.api_with_auth("PATCH", "/config", Some(&body), None),
        401,
        "no auth header received",
    );
    check(
        &mut failures,
        "PATCH with a wrong password: message",
        n.api_with_auth(
            "PATCH",
            "/config",
            Some(&body),
            Some(Auth {
                username: "admin",
                password: "wrong",
            }),
        ),
        401,
        "not authenticated",
    );
    for (method, path, b) in [
        ("POST", "/restart", Some("{}")),
        ("DELETE", "/restart", None),
        ("POST", "/reload", Some("{}")),
        ("POST", "/reinitialize", Some("{}")),
        (
            "POST",
            "/switchover",
            Some(r#"{"leader":"node1","candidate":"x"}"#),
        ),
        ("POST", "/failover", Some(r#"{"candidate":"x"}"#)),
        ("DELETE", "/switchover", None),
    ] {
        failures.extend(unauth(
            method,
            path,
            b,
            None,
            &format!("{method} {path} without credentials"),
        ));
    }
    // Nothing changed so far.
    match n.api_get("/config") {
        Ok((200, v)) if v["loop_wait"] == 2 => {}
        other => failures.push(format!(
            "GET /config after refused PATCHes (want loop_wait 2): {other:?}"
        )),
    }

    // The right credentials work.
    let ok = n.api_with_auth(
        "PATCH",
        "/config",
        Some(&body),
        Some(Auth {
            username: "admin",
            password: "secret",
        }),
    );
    check(
        &mut failures,
        "PATCH with the right credentials",
        ok,
        200,
        "",
    );
    wait_config(&c, &p, "loop_wait 3", |v| v["loop_wait"] == 3);

    // Reads never need credentials.
    for path in [
        "/patroni", "/config", "/cluster", "/history", "/metrics", "/primary", "/health",
    ] {
        match n.api_with_auth("GET", path, None, None) {
            Ok(r) if r.status == 200 => {}
            Ok(r) => failures.push(format!("GET {path} without credentials: {}", r.summary())),
            Err(e) => failures.push(format!("GET {path}: {e}")),
        }
    }
    match n.api_with_auth("OPTIONS", "/primary", None, None) {
        Ok(r) if r.status == 200 => {}
        other => failures.push(format!(
            "OPTIONS /primary without credentials: {:?}",
            other.map(|r| r.summary())
        )),
    }
    assert!(
        failures.is_empty(),
        "REST authentication mismatches:\n{}",
        failures.join("\n")
    );
}
