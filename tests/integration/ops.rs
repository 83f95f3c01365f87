//! Helpers shared by the operations tests (switchover, failover, pause, config, restart,
//! reinitialize, reload, metrics, patronictl, HAProxy).

use std::time::{Duration, Instant};

use serde_json::Value;
use spilo_tests::http::Response;
use spilo_tests::{note, Node, TestCluster};

/// `method path` on `node` with a JSON body (the node's own credentials, if any); panics when
/// the request itself fails (no answer), not on an error status.
pub fn call(node: &Node, method: &str, path: &str, body: Option<&Value>) -> Response {
    let text = body.map(Value::to_string);
    let t0 = Instant::now();
    let r = node
        .api(method, path, text.as_deref())
        .unwrap_or_else(|e| panic!("{method} {path} on {}: no answer: {e}", node.name));
    note(format!(
        "{method} {path} {} on {} -> {} (in {:?})",
        text.as_deref().unwrap_or(""),
        node.name,
        r.summary(),
        t0.elapsed()
    ));
    r
}

/// Asserts the status and (when given) that the body contains `needle`; returns the response.
pub fn expect(what: &str, r: Response, status: u16, needle: Option<&str>) -> Response {
    let text = r.text();
    assert_eq!(
        r.status,
        status,
        "{what}: want {status}{}, got {}",
        needle.map(|n| format!(" with {n:?}")).unwrap_or_default(),
        r.summary()
    );
    if let Some(n) = needle {
        assert!(
            text.contains(n),
            "{what}: status {status} as wanted, but the body lacks {n:?}: {}",
            r.summary()
        );
    }
    r
}

/// Collects a mismatch instead of panicking (for endpoints checked in a batch).
pub fn check(
    failures: &mut Vec<String>,
    what: &str,
    r: Result<Response, String>,
    status: u16,
    needle: &str,
) {
    match r {
        Ok(r) if r.status == status && r.text().contains(needle) => {
            note(format!("{what}: {} as wanted", r.summary()));
        }
        Ok(r) => failures.push(format!(
            "{what}: want {status} with {needle:?}, got {}",
            r.summary()
        )),
        Err(e) => failures.push(format!("{what}: no answer: {e}")),
    }
}

/// The timelines named in a `/history` body (`[[tl, lsn, reason, ts, leader], …]`).
pub fn history_timelines(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|line| line.get(0).and_then(Value::as_u64))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts for `period` that `primary` stays the only node claiming primary on `/patroni`,
/// that the leader key keeps naming it and that no other node accepts a write.
pub fn assert_primary_stays(c: &TestCluster, primary: &str, period: Duration, why: &str) {
    let start = Instant::now();
    while start.elapsed() < period {
        for n in &c.nodes {
            if n.name == primary {
                continue;
            }
            if let Some(role) = n.role() {
                assert!(
                    role != "primary" && role != "master",
                    "{why}: {} reports role {role} although {primary} is the primary; {}",
                    n.name,
                    c.describe()
                );
            }
            assert!(
                !n.try_write("ops_split_probe"),
                "{why}: {} accepted a write although {primary} is the primary; {}",
                n.name,
                c.describe()
            );
        }
        if let Ok(Some(l)) = c.leader_from_dcs() {
            assert_eq!(l, primary, "{why}: the leader key moved; {}", c.describe());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `node` is back as a streaming replica of `primary` on `primary`'s timeline.
pub fn wait_replica_of(c: &TestCluster, node: &str, primary: &str, timeout: Duration) {
    c.wait_for_streaming(primary, &[node], timeout);
    let tl = c.node(primary).timeline();
    spilo_tests::wait_for(
        &format!("{node} on {primary}'s timeline {tl:?}"),
        Duration::from_secs(30),
        || {
            let mine = c.node(node).timeline();
            if mine.is_some() && mine == tl {
                Ok(())
            } else {
                Err(format!("{node} timeline {mine:?}, {primary} {tl:?}"))
            }
        },
    );
}

/// Polls `cond` every 100 ms for up to `timeout`; whether it became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `POST /switchover` from `leader` to `candidate` (answered 200), then waits until the
/// candidate is the primary.
pub fn switchover(c: &spilo_tests::TestCluster, leader: &str, candidate: &str) {
    let r = call(
        c.node(leader),
        "POST",
        "/switchover",
        Some(&serde_json::json!({"leader": leader, "candidate": candidate})),
    );
    drop(expect("POST /switchover", r, 200, None));
    let new = c.wait_for_primary_except(&[leader], std::time::Duration::from_secs(60));
    assert_eq!(
        new, candidate,
        "the candidate is not the primary after the switchover"
    );
}
