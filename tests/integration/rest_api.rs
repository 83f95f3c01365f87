//! Patroni's REST API health endpoints on a primary and a replica.

use std::time::Duration;

use spilo_tests::{wait_for, ClusterOpts, TestCluster};

use crate::BOOTSTRAP;

#[test]
fn rest_api_reports_roles_like_patroni() {
    let c = TestCluster::start(2, ClusterOpts::named("rest"));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let replica = c.others(&primary).remove(0);
    let (p, r) = (c.node(&primary), c.node(&replica));

    let status = |n: &spilo_tests::Node, path: &str| n.api_get(path).map(|(s, _)| s);
    // Replica health may lag the streaming check by one HA cycle.
    wait_for(
        "GET /replica 200 on the replica",
        Duration::from_secs(30),
        || match status(r, "/replica") {
            Ok(200) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let mut failures = Vec::new();
    for (node, path, want) in [
        (p, "/primary", 200),
        (r, "/primary", 503),
        (r, "/replica", 200),
        (p, "/replica", 503),
        (p, "/health", 200),
        (r, "/health", 200),
        (p, "/patroni", 200),
        (r, "/patroni", 200),
    ] {
        match status(node, path) {
            Ok(s) if s == want => {}
            other => failures.push(format!(
                "GET {path} on {} ({}): {other:?}, want {want}",
                node.name,
                if node.name == primary {
                    "primary"
                } else {
                    "replica"
                }
            )),
        }
    }

    let pv = p.patroni().expect("/patroni on the primary");
    let rv = r.patroni().expect("/patroni on the replica");
    for (v, role, name) in [(&pv, "primary", &primary), (&rv, "replica", &replica)] {
        if v["role"] != role
            || v["state"] != "running"
            || v["patroni"]["name"] != name.as_str()
            || !v["timeline"].is_u64()
        {
            failures.push(format!(
                "/patroni on {name}: want role {role}, state running, patroni.name, timeline: {v}"
            ));
        }
        if !v["xlog"].is_object() {
            failures.push(format!("/patroni on {name} lacks an xlog object: {v}"));
        }
    }
    if pv["database_system_identifier"] != rv["database_system_identifier"] {
        failures.push(format!(
            "system identifiers differ: {} vs {}",
            pv["database_system_identifier"], rv["database_system_identifier"]
        ));
    }

    match p.api_get("/cluster") {
        Ok((200, v)) => {
            let members = v["members"].as_array().cloned().unwrap_or_default();
            let leader = members.iter().filter(|m| m["role"] == "leader").count();
            if members.len() != 2 || leader != 1 {
                failures.push(format!("/cluster: want 2 members, 1 with role leader: {v}"));
            }
        }
        other => failures.push(format!("GET /cluster: {other:?}")),
    }
    assert!(
        failures.is_empty(),
        "REST API mismatches:\n{}",
        failures.join("\n")
    );
}
