//! `POST /restart` (now, filtered by role, scheduled; `DELETE /restart`), `POST /reinitialize`
//! and `POST /reload`: requests the HA loop executes.

use std::fs;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use spilo_tests::tools::rfc3339_utc;
use spilo_tests::util::chown_postgres;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::ops::{call, expect, wait_replica_of};
use crate::{BOOTSTRAP, REJOIN, REPLICATION};

/// Waits until `node`'s `postmaster_start_time` differs from `before` (and it runs again).
fn wait_start_time_changes(c: &TestCluster, node: &str, before: &str, timeout: Duration) -> String {
    wait_for(
        &format!("{node}'s postmaster_start_time to change from {before}"),
        timeout,
        || {
            let v = c.node(node).patroni()?;
            match v["postmaster_start_time"].as_str() {
                Some(t) if t != before && v["state"] == "running" => Ok(t.to_string()),
                other => Err(format!(
                    "postmaster_start_time {other:?} state {}",
                    v["state"]
                )),
            }
        },
    )
}

#[test]
fn restart_now_with_role_filter_and_scheduled_with_cancel() {
    let c = TestCluster::start(2, ClusterOpts::named("restart"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = c.others(&p)[0].clone();
    let start0 = c
        .node(&r)
        .postmaster_start_time()
        .expect("postmaster_start_time on the replica");

    // Immediate restart of the replica.
    let resp = call(c.node(&r), "POST", "/restart", Some(&json!({})));
    expect(
        "POST /restart on the replica",
        resp,
        200,
        Some("restarted successfully"),
    );
    let start1 = wait_start_time_changes(&c, &r, &start0, Duration::from_secs(30));
    note(format!("{r}: postmaster_start_time {start0} -> {start1}"));
    wait_replica_of(&c, &r, &p, REJOIN);
    assert_eq!(
        c.wait_for_primary(Duration::from_secs(30)),
        p,
        "restarting a replica moved the primary"
    );

    // A role filter that does not match: 503, no restart.
    let resp = call(
        c.node(&r),
        "POST",
        "/restart",
        Some(&json!({"role": "primary"})),
    );
    expect(
        "POST /restart {role: primary} on a replica",
        resp,
        503,
        None,
    );
    std::thread::sleep(Duration::from_secs(2 * c.opts.node.loop_wait + 1));
    assert_eq!(
        c.node(&r).postmaster_start_time().as_deref(),
        Some(start1.as_str()),
        "the replica restarted despite the role filter"
    );
    let resp = call(
        c.node(&r),
        "POST",
        "/restart",
        Some(&json!({"role": "nonsense"})),
    );
    expect("POST /restart {role: nonsense}", resp, 400, None);
    let resp = call(c.node(&r), "POST", "/restart", Some(&json!({"foo": 1})));
    expect(
        "POST /restart with an unknown key",
        resp,
        400,
        Some("Unknown filter for the scheduled restart: foo"),
    );

    // Scheduled restart far enough ahead to cancel it, then cancel it.
    let at = rfc3339_utc(SystemTime::now() + Duration::from_secs(40));
    let resp = call(
        c.node(&r),
        "POST",
        "/restart",
        Some(&json!({"schedule": at})),
    );
    expect(
        "POST /restart scheduled",
        resp,
        202,
        Some("Restart scheduled"),
    );
    let resp = call(
        c.node(&r),
        "POST",
        "/restart",
        Some(&json!({"schedule": at})),
    );
    expect(
        "POST /restart scheduled twice",
        resp,
        409,
        Some("Another restart is already scheduled"),
    );
    // Published like Patroni does: in the member key (patronictl list's "Scheduled restart")
    // and in /patroni.
    let mut published = Vec::new();
    let shown = |what: &str, probe: &dyn Fn() -> Result<Value, String>, want: bool| {
        let r = spilo_tests::poll(Duration::from_secs(15), Duration::from_millis(500), || {
            let v = probe()?;
            let has = v["scheduled_restart"]["schedule"].is_string();
            if has == want {
                Ok(())
            } else {
                Err(format!("{v}"))
            }
        });
        r.err().map(|last| {
            format!(
                "{what}: scheduled_restart {} within 15 s; last: {last}",
                if want { "not shown" } else { "still shown" }
            )
        })
    };
    let member = || c.member_json(&r);
    let status = || c.node(&r).patroni();
    published.extend(shown("members key", &member, true));
    published.extend(shown("/patroni", &status, true));
    let resp = call(c.node(&r), "DELETE", "/restart", None);
    expect(
        "DELETE /restart",
        resp,
        200,
        Some("scheduled restart deleted"),
    );
    let resp = call(c.node(&r), "DELETE", "/restart", None);
    expect(
        "DELETE /restart again",
        resp,
        404,
        Some("no restarts are scheduled"),
    );
    published.extend(shown("members key after DELETE", &member, false));
    published.extend(shown("/patroni after DELETE", &status, false));
    // A schedule in the past or without a timezone is refused.
    let resp = call(
        c.node(&r),
        "POST",
        "/restart",
        Some(&json!({"schedule": "2020-01-01T00:00:00+00:00"})),
    );
    expect("POST /restart scheduled in the past", resp, 422, None);
    let resp = call(
        c.node(&r),
        "POST",
        "/restart",
        Some(&json!({"schedule": "2999-01-01T00:00:00"})),
    );
    expect("POST /restart schedule without timezone", resp, 400, None);

    // A short schedule is executed.
    let at = rfc3339_utc(SystemTime::now() + Duration::from_secs(5));
    let resp = call(
        c.node(&r),
        "POST",
        "/restart",
        Some(&json!({"schedule": at})),
    );
    expect("POST /restart in 5 s", resp, 202, Some("Restart scheduled"));
    let start2 = wait_start_time_changes(&c, &r, &start1, Duration::from_secs(60));
    note(format!("{r}: scheduled restart done, start time {start2}"));
    wait_replica_of(&c, &r, &p, REJOIN);
    assert!(
        published.is_empty(),
        "scheduled restart publication mismatches:\n{}",
        published.join("\n")
    );
}

#[test]
fn reinitialize_is_refused_on_the_leader_and_rebuilds_a_replica() {
    let c = TestCluster::start(2, ClusterOpts::named("reinit"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = c.others(&p)[0].clone();

    let resp = call(
        c.node(&p),
        "POST",
        "/reinitialize",
        Some(&json!({"force": true})),
    );
    expect(
        "POST /reinitialize on the leader",
        resp,
        503,
        Some("I am the leader, can not reinitialize"),
    );

    // A marker in the replica's data directory: a rebuilt one does not have it.
    let marker = c.node(&r).data_dir.join("spilo_test_marker");
    fs::write(&marker, "from the test").expect("write the marker");
    chown_postgres(&marker);
    let start0 = c
        .node(&r)
        .postmaster_start_time()
        .expect("postmaster_start_time on the replica");

    let resp = call(
        c.node(&r),
        "POST",
        "/reinitialize",
        Some(&json!({"force": true})),
    );
    expect(
        "POST /reinitialize on the replica",
        resp,
        200,
        Some("reinitialize started"),
    );
    wait_start_time_changes(&c, &r, &start0, REJOIN);
    wait_replica_of(&c, &r, &p, REJOIN);
    assert!(
        !marker.exists(),
        "{} survived: the data directory was not rebuilt",
        marker.display()
    );
    c.node(&p)
        .write_value("reinit_rows", "after the reinit")
        .expect("INSERT on the primary");
    c.wait_for_value(&r, "reinit_rows", "after the reinit", REPLICATION);
    assert_eq!(c.wait_for_primary(Duration::from_secs(30)), p);
}

#[test]
fn reload_picks_up_new_tags_and_rest_credentials_from_the_yaml() {
    let mut c = TestCluster::start(2, ClusterOpts::named("reload"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = c.others(&p)[0].clone();
    let before = c.node(&r).patroni().expect("/patroni");
    assert!(
        before["tags"]["nofailover"] != true,
        "nofailover already set: {before}"
    );

    c.node_mut(&r).rewrite_config(|o| {
        o.tags.push(("nofailover".into(), "true".into()));
        o.tags.push(("zone".into(), "reloaded".into()));
    });
    let resp = call(c.node(&r), "POST", "/reload", Some(&json!({})));
    expect("POST /reload", resp, 202, Some("reload scheduled"));
    wait_for(
        &format!("/patroni on {r} with the new tags"),
        Duration::from_secs(30),
        || {
            let v = c.node(&r).patroni()?;
            if v["tags"]["nofailover"] == true && v["tags"]["zone"] == "reloaded" {
                Ok(())
            } else {
                Err(format!("tags {}", v["tags"]))
            }
        },
    );
    wait_for(
        &format!("members/{r} with the new tags"),
        Duration::from_secs(30),
        || {
            let m = c.member_json(&r)?;
            if m["tags"]["nofailover"] == true && m["tags"]["zone"] == "reloaded" {
                Ok(())
            } else {
                Err(format!("{m}"))
            }
        },
    );
    // The tag is in force: a failover to the node is refused.
    let resp = call(
        c.node(&p),
        "POST",
        "/failover",
        Some(&json!({"candidate": r})),
    );
    expect("POST /failover to a nofailover node", resp, 412, None);
    assert_eq!(c.wait_for_primary(Duration::from_secs(30)), p);

    // New REST credentials, reloaded on SIGHUP, guard the mutating endpoints at once.
    let no_auth = c
        .node(&r)
        .api_with_auth("POST", "/reload", Some("{}"), None)
        .expect("POST /reload");
    assert_eq!(no_auth.status, 202, "no credentials are configured yet");
    c.node_mut(&r).rewrite_config(|o| {
        o.rest_auth = Some(("admin".into(), "reloaded-pw".into()));
    });
    c.node_mut(&r).kill_daemon(libc::SIGHUP);
    wait_for(
        &format!("{r} to refuse POST /reload without the new credentials"),
        Duration::from_secs(30),
        || {
            let resp = c
                .node(&r)
                .api_with_auth("POST", "/reload", Some("{}"), None)?;
            match resp.status {
                401 => Ok(()),
                other => Err(format!("status {other}")),
            }
        },
    );
    let wrong = spilo_tests::http::Auth {
        username: "admin",
        password: "not-it",
    };
    let resp = c
        .node(&r)
        .api_with_auth("POST", "/reload", Some("{}"), Some(wrong))
        .expect("POST /reload");
    assert_eq!(resp.status, 401, "a wrong password was accepted");
    // Node::api sends the credentials now in the node's config.
    let resp = call(c.node(&r), "POST", "/reload", Some(&json!({})));
    expect(
        "POST /reload with the reloaded credentials",
        resp,
        202,
        None,
    );
}
