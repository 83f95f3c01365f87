//! Real HAProxy with examples/haproxy.cfg (rendered with the test's ports): the read-write
//! port reaches the primary, the read-only port a replica, and after a switchover new
//! read-write connections reach the new primary within the health checks' reaction time.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use serde_json::json;
use spilo_tests::bins::workspace_dir;
use spilo_tests::pg::{self, PgTarget};
use spilo_tests::tools::HaProxy;
use spilo_tests::{note, poll, wait_for, TestCluster};

use crate::ops::{call, expect};
use crate::REJOIN;

/// Check settings examples/haproxy.cfg must keep (the test relies on them).
const REQUIRED: [&str; 5] = [
    "option httpchk OPTIONS /primary",
    "option httpchk OPTIONS /replica",
    "http-check expect status 200",
    "default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions",
    "check port",
];

/// HAProxy for `c` with examples/haproxy.cfg: (the proxy, read-write port, read-only port).
pub fn start_haproxy(c: &TestCluster) -> (HaProxy, u16, u16) {
    let path = workspace_dir().join("examples").join("haproxy.cfg");
    let template =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for r in REQUIRED {
        assert!(template.contains(r), "{} lacks {r:?}", path.display());
    }
    spilo_tests::tools::haproxy_for(c)
}

/// The superuser through a proxy port.
pub fn through(port: u16) -> PgTarget {
    pg::superuser(port)
}

/// On a new connection through `port`: (in recovery, the server's port).
pub fn where_am_i(port: u16) -> Result<(bool, u16), String> {
    pg::where_am_i(port, Duration::from_secs(3))
}

/// Waits until new connections through `port` reach `want` (port) out of recovery, then
/// checks `n` more in a row do too.
fn wait_rw_reaches(h: &HaProxy, rw: u16, want: u16, name: &str, timeout: Duration) -> Duration {
    let r = poll(timeout, Duration::from_millis(100), || {
        // HAProxy starts every server UP until its first checks have run: wait until the
        // read-write backend has exactly one server up, so that a connection is not routed to a
        // replica that is about to be marked down (and have its session shut).
        let states = h.server_states();
        let up = states
            .split("; ")
            .filter(|s| s.starts_with("primary/") && s.contains(": UP"))
            .count();
        if up != 1 {
            return Err(format!("haproxy still settling: {states}"));
        }
        match where_am_i(rw) {
            Ok((false, p)) if p == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let took = match r {
        Ok(((), took)) => took,
        Err(last) => panic!(
            "read-write port {rw} did not reach {name} (port {want}) within {timeout:?}; last: {last}; haproxy: {}",
            h.server_states()
        ),
    };
    for i in 0..10 {
        match where_am_i(rw) {
            Ok((false, p)) if p == want => {}
            other => panic!(
                "connection {i} through the read-write port after it reached {name}: {other:?} (want port {want}, not in recovery); haproxy: {}",
                h.server_states()
            ),
        }
    }
    took
}

/// Waits until the read-only port reaches only replicas and has reached all of `want`.
fn wait_ro_reaches(h: &HaProxy, ro: u16, want: &BTreeSet<u16>, timeout: Duration) {
    wait_for(
        &format!("read-only port {ro} to reach the replicas {want:?}"),
        timeout,
        || {
            let mut seen = BTreeSet::new();
            for _ in 0..(2 * want.len() + 2) {
                match where_am_i(ro) {
                    Ok((true, p)) if want.contains(&p) => {
                        seen.insert(p);
                    }
                    other => return Err(format!("got {other:?}; haproxy: {}", h.server_states())),
                }
            }
            if &seen == want {
                Ok(())
            } else {
                Err(format!(
                    "reached only {seen:?}; haproxy: {}",
                    h.server_states()
                ))
            }
        },
    );
}

#[test]
fn haproxy_routes_read_write_to_the_primary_and_follows_a_switchover() {
    let c = TestCluster::start(3, spilo_tests::ClusterOpts::named("haproxy"));
    let p = c.wait_for_replicas_streaming(crate::BOOTSTRAP);
    let cand = c.others(&p)[0].clone();
    let third = c.others(&p)[1].clone();
    let (h, rw, ro) = start_haproxy(&c);

    wait_rw_reaches(&h, rw, c.node(&p).pg_port, &p, Duration::from_secs(30));
    let replicas: BTreeSet<u16> = [&cand, &third].iter().map(|n| c.node(n).pg_port).collect();
    wait_ro_reaches(&h, ro, &replicas, Duration::from_secs(30));
    note(format!(
        "haproxy before the switchover: {}",
        h.server_states()
    ));

    let r = call(
        c.node(&p),
        "POST",
        "/switchover",
        Some(&json!({"leader": p, "candidate": cand})),
    );
    let answered = Instant::now();
    expect(
        "POST /switchover",
        r,
        200,
        Some(&format!("Successfully switched over to \"{cand}\"")),
    );
    // inter 1 s x fall 2 = 2 s for the old primary to leave, rise 1 for the new one to join;
    // the bound is generous for a loaded 2-core machine.
    let bound = Duration::from_secs(2 + 18);
    let took = wait_rw_reaches(&h, rw, c.node(&cand).pg_port, &cand, bound);
    note(format!(
        "haproxy: new read-write connections reach {cand} {took:?} after the switchover answer ({:?} since)",
        answered.elapsed()
    ));
    assert_eq!(c.wait_for_primary(Duration::from_secs(30)), cand);

    // The read-only port: the old primary, now a replica, and the third node.
    let replicas: BTreeSet<u16> = [&p, &third].iter().map(|n| c.node(n).pg_port).collect();
    wait_ro_reaches(&h, ro, &replicas, REJOIN);
    note(format!(
        "haproxy after the switchover: {}",
        h.server_states()
    ));
}
