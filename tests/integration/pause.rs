//! Maintenance mode: `PATCH /config {"pause": true}` marks the cluster paused; a crashed
//! primary is then neither restarted nor failed over; `{"pause": null}` resumes and the
//! cluster recovers.

use std::time::{Duration, Instant};

use serde_json::json;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::ops::{call, expect};
use crate::BOOTSTRAP;

#[test]
fn paused_cluster_neither_restarts_nor_fails_over_a_crashed_primary_until_resumed() {
    let c = TestCluster::start(3, ClusterOpts::named("pause"));
    let ttl = c.opts.node.ttl;
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);

    let r = call(
        c.node(&p),
        "PATCH",
        "/config",
        Some(&json!({"pause": true})),
    );
    let r = expect("PATCH /config {pause: true}", r, 200, None);
    assert_eq!(
        r.json()["pause"],
        true,
        "PATCH answer lacks pause: {}",
        r.summary()
    );
    wait_for(
        "/config key with pause: true",
        Duration::from_secs(10),
        || match c.dcs_json("config") {
            Ok(Some(v)) if v["pause"] == true => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // Every member key and every /patroni carries the flag (patronictl pause --wait waits
    // for the member keys).
    for n in &c.nodes {
        let name = n.name.clone();
        wait_for(
            &format!("members/{name} and /patroni on {name} with pause: true"),
            Duration::from_secs(30),
            || {
                let m = c.member_json(&name)?;
                let s = n.patroni()?;
                if m["pause"] == true && s["pause"] == true {
                    Ok(())
                } else {
                    Err(format!(
                        "member key pause {}, /patroni pause {}",
                        m["pause"], s["pause"]
                    ))
                }
            },
        );
    }

    // Crash the primary's postmaster (the daemon keeps running).
    let pid = c.node(&p).kill_postmaster(libc::SIGKILL);
    assert!(
        spilo_tests::util::wait_pid_gone(pid, Duration::from_secs(10)),
        "postmaster {pid} survived SIGKILL"
    );
    let watch = Duration::from_secs(3 * ttl);
    let start = Instant::now();
    let mut saw_down = false;
    while start.elapsed() < watch {
        for n in &c.nodes {
            if n.name == p {
                continue;
            }
            if let Some(role) = n.role() {
                assert!(
                    role != "primary" && role != "master",
                    "paused: {} became {role} {:?} after {p}'s postmaster was killed; {}",
                    n.name,
                    start.elapsed(),
                    c.describe()
                );
            }
            assert!(
                !n.try_write("pause_probe"),
                "paused: {} accepts writes {:?} after {p}'s postmaster was killed",
                n.name,
                start.elapsed()
            );
        }
        let old = c.node(&p);
        let restarted = old.postmaster_pid().filter(|&q| q != pid);
        assert!(
            restarted.is_none() && !old.postmaster_alive(),
            "paused: {p}'s PostgreSQL was started again (postmaster.pid {:?}) {:?} after the kill; {}",
            old.postmaster_pid(),
            start.elapsed(),
            c.describe()
        );
        let sql = old.sql("SELECT 1");
        assert!(
            sql.is_err(),
            "paused: SQL on {p} works {:?} after its postmaster was killed: {sql:?}",
            start.elapsed()
        );
        saw_down = true;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(saw_down);
    note(format!(
        "paused for {watch:?} with {p}'s postmaster dead: no promotion, no restart; {}",
        c.describe()
    ));
    // The daemon on the crashed node still answers and still says paused.
    let s = c
        .node(&p)
        .patroni()
        .expect("/patroni on the crashed primary's daemon");
    assert_eq!(s["pause"], true, "/patroni on {p}: {s}");

    // Resume: some node (the old primary restarted in place, or a replica) becomes a writable
    // primary.
    let resume_on = c.others(&p)[0].clone();
    let r = call(
        c.node(&resume_on),
        "PATCH",
        "/config",
        Some(&json!({"pause": null})),
    );
    let r = expect("PATCH /config {pause: null}", r, 200, None);
    assert!(
        r.json().get("pause").is_none() || r.json()["pause"].is_null(),
        "PATCH answer still has pause: {}",
        r.summary()
    );
    let (writer, took) = c.wait_for_writer(&[], Duration::from_secs(ttl * 3 + 60));
    note(format!(
        "resumed: {writer} accepts writes {took:?} after resume"
    ));
    let primary = c.wait_for_primary(Duration::from_secs(60));
    assert_eq!(primary, writer);
    match c.dcs_json("config") {
        Ok(Some(v)) => assert!(
            v.get("pause").is_none() || v["pause"].is_null() || v["pause"] == false,
            "/config still paused after resume: {v}"
        ),
        other => panic!("/config key after resume: {other:?}"),
    }
    for n in &c.nodes {
        let name = n.name.clone();
        wait_for(
            &format!("members/{name} without pause"),
            Duration::from_secs(60),
            || {
                let m = c.member_json(&name)?;
                if m.get("pause").is_none() || m["pause"] == false {
                    Ok(())
                } else {
                    Err(format!("{m}"))
                }
            },
        );
    }
    let others = c.others(&primary);
    let refs: Vec<&str> = others.iter().map(String::as_str).collect();
    c.wait_for_streaming(&primary, &refs, crate::REJOIN);
}
