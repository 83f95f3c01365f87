//! SIGKILL of the primary's postmaster alone: the daemon brings the same node back as primary
//! on the same timeline.

use std::time::Duration;

use spilo_tests::{wait_for, ClusterOpts, TestCluster};

use crate::{BOOTSTRAP, REPLICATION};

#[test]
fn killed_postmaster_restarts_in_place_on_same_timeline() {
    let c = TestCluster::start(3, ClusterOpts::named("crash"));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let p = c.node(&primary);
    let tl = p.timeline().expect("primary's timeline on /patroni");
    p.write_value("crash_rows", "before the crash")
        .expect("INSERT on the primary");

    let old_pid = p.kill_postmaster(libc::SIGKILL);

    // The same node accepts writes again, from a new postmaster.
    wait_for(
        &format!("{primary} to accept writes again with a new postmaster"),
        Duration::from_secs(90),
        || {
            match p.postmaster_pid() {
                Some(pid) if pid != old_pid => {}
                other => {
                    return Err(format!(
                        "postmaster.pid: {other:?} (killed {old_pid}); {}",
                        c.describe()
                    ))
                }
            }
            if p.try_write("crash_rows") {
                Ok(())
            } else {
                Err(format!("INSERT refused; {}", c.describe()))
            }
        },
    );

    // The daemon publishes what it saw at its last cycle: PostgreSQL can accept writes a moment
    // before the start job ends and the status says so. Wait for it, then check what it says.
    let v = wait_for(
        &format!("{primary} to report itself running again"),
        Duration::from_secs(30),
        || {
            let v = p.patroni()?;
            if v["state"] == "running" {
                Ok(v)
            } else {
                Err(format!("/patroni = {v}"))
            }
        },
    );
    assert_eq!(v["role"], "primary", "{primary}: /patroni = {v}");
    assert_eq!(
        v["timeline"].as_u64(),
        Some(tl),
        "{primary}: timeline changed: /patroni = {v}"
    );
    assert_eq!(
        c.leader_from_dcs().expect("read the leader key").as_deref(),
        Some(primary.as_str())
    );
    for r in c.others(&primary) {
        assert_ne!(
            c.node(&r).role().as_deref(),
            Some("primary"),
            "{r} was promoted"
        );
    }
    assert!(p
        .has_value("crash_rows", "before the crash")
        .expect("read on the primary"));
    p.write_value("crash_rows", "after the crash")
        .expect("INSERT after the crash");
    for r in c.others(&primary) {
        c.wait_for_value(&r, "crash_rows", "after the crash", REPLICATION);
    }
}
