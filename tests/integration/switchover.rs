//! `POST /switchover`: the candidate becomes primary on a new timeline, the old primary follows
//! it; the request's validation errors (400/412) change nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use spilo_tests::pg::{self, literal};
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::ops::{assert_primary_stays, call, check, expect, history_timelines, wait_replica_of};
use crate::{BOOTSTRAP, REJOIN, REPLICATION};

#[test]
fn switchover_moves_the_primary_and_the_old_one_follows_on_the_new_timeline() {
    let c = TestCluster::start(3, ClusterOpts::named("switchover"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let cand = c.others(&p)[0].clone();
    let third = c.others(&p)[1].clone();
    let old_tl = c.node(&p).timeline().expect("primary's timeline");
    c.node(&p)
        .write_value("switchover_rows", "before the switchover")
        .expect("INSERT on the primary");
    for r in c.others(&p) {
        c.wait_for_value(&r, "switchover_rows", "before the switchover", REPLICATION);
    }

    // A probe writing on the candidate every 100 ms from the moment the request is sent.
    let target = c.node(&cand).pg_target();
    let stop = Arc::new(AtomicBool::new(false));
    let first_write: Arc<Mutex<Option<Duration>>> = Arc::new(Mutex::new(None));
    let t0 = Instant::now();
    let probe = {
        let (stop, first_write) = (stop.clone(), first_write.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(120) {
                let q = format!(
                    "INSERT INTO switchover_rows (v) VALUES ({})",
                    literal("probe on the candidate")
                );
                if pg::simple_query(&target, &q, Duration::from_secs(2)).is_ok() {
                    *first_write.lock().unwrap_or_else(|e| e.into_inner()) = Some(t0.elapsed());
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let r = call(
        c.node(&p),
        "POST",
        "/switchover",
        Some(&json!({"leader": p, "candidate": cand})),
    );
    let answered = t0.elapsed();
    let r = expect(
        "POST /switchover",
        r,
        200,
        Some(&format!("Successfully switched over to \"{cand}\"")),
    );
    drop(r);
    let new = c.wait_for_primary(Duration::from_secs(60));
    assert_eq!(new, cand, "the candidate is not the primary");
    // Give the probe a little longer than the answer, then read it.
    let _ = crate::ops::wait_until(Duration::from_secs(15), || {
        first_write
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    });
    stop.store(true, Ordering::SeqCst);
    let _ = probe.join();
    let took = *first_write.lock().unwrap_or_else(|e| e.into_inner());
    note(format!(
        "switchover: request -> answer {answered:?}; request -> first write on {cand}: {took:?}"
    ));
    let took =
        took.unwrap_or_else(|| panic!("{cand} never accepted the probe's write; {}", c.describe()));
    assert!(
        took < Duration::from_secs(10),
        "request -> first write on {cand} took {took:?} (generous bound 10 s)"
    );

    // The new leader is on a new timeline and published it.
    let new_tl = wait_for(
        &format!("{cand} on a timeline after {old_tl}"),
        Duration::from_secs(30),
        || match c.node(&cand).timeline() {
            Some(t) if t > old_tl => Ok(t),
            other => Err(format!("timeline {other:?}")),
        },
    );
    wait_for(
        "the leader key to name the candidate",
        Duration::from_secs(30),
        || match c.leader_from_dcs() {
            Ok(Some(l)) if l == cand => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let history = wait_for(
        &format!("GET /history on {cand} to have a line for timeline {old_tl}"),
        Duration::from_secs(30),
        || match c.node(&cand).api_get("/history") {
            Ok((200, v)) if history_timelines(&v).contains(&old_tl) => Ok(v),
            other => Err(format!("{other:?}")),
        },
    );
    note(format!("/history on {cand}: {history}"));
    let line = history
        .as_array()
        .and_then(|a| a.iter().find(|l| l[0].as_u64() == Some(old_tl)))
        .cloned()
        .unwrap_or_default();
    assert!(
        line[1].as_u64().is_some_and(|lsn| lsn > 0),
        "history line without a switch LSN: {line}"
    );
    assert_eq!(
        line.get(4).and_then(|v| v.as_str()),
        Some(cand.as_str()),
        "history line for timeline {old_tl} does not name the new leader: {line}"
    );

    // Both others follow the new primary on the new timeline; data flows.
    wait_replica_of(&c, &p, &cand, REJOIN);
    wait_replica_of(&c, &third, &cand, REJOIN);
    assert_eq!(c.node(&p).timeline(), Some(new_tl));
    assert!(c
        .node(&cand)
        .has_value("switchover_rows", "before the switchover")
        .expect("read on the new primary"));
    c.node(&cand)
        .write_value("switchover_rows", "after the switchover")
        .expect("INSERT on the new primary");
    c.wait_for_value(&p, "switchover_rows", "after the switchover", REPLICATION);
    c.wait_for_value(
        &third,
        "switchover_rows",
        "after the switchover",
        REPLICATION,
    );
    assert!(
        !c.node(&p).try_write("switchover_rows"),
        "{p} still accepts writes after the switchover"
    );
}

#[test]
fn switchover_and_failover_requests_are_validated_and_refusals_change_nothing() {
    let c = TestCluster::start(3, ClusterOpts::named("switchover-err"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r1 = c.others(&p)[0].clone();
    let r2 = c.others(&p)[1].clone();
    let leader = c.node(&p);
    let post = |path: &str, body: &str| leader.api("POST", path, Some(body));

    let mut failures = Vec::new();
    check(
        &mut failures,
        "switchover to an unknown candidate",
        post(
            "/switchover",
            &json!({"leader": p, "candidate": "no-such-node"}).to_string(),
        ),
        412,
        "candidate does not exists",
    );
    check(
        &mut failures,
        "switchover naming a replica as the leader",
        post(
            "/switchover",
            &json!({"leader": r1, "candidate": r2}).to_string(),
        ),
        412,
        "leader name does not match",
    );
    check(
        &mut failures,
        "switchover with candidate == leader",
        post(
            "/switchover",
            &json!({"leader": p, "candidate": p}).to_string(),
        ),
        400,
        "Switchover target and source are the same",
    );
    check(
        &mut failures,
        "switchover without a leader",
        post("/switchover", &json!({"candidate": r1}).to_string()),
        400,
        "Switchover could be performed only from a specific leader",
    );
    check(
        &mut failures,
        "failover without a candidate",
        post("/failover", &json!({"foo": "bar"}).to_string()),
        400,
        "Failover could be performed only to a specific candidate",
    );
    check(
        &mut failures,
        "failover with an empty object",
        post("/failover", "{}"),
        400,
        "Failover could be performed only to a specific candidate",
    );
    check(
        &mut failures,
        "switchover with a body that is not JSON",
        post("/switchover", "leader=node1&candidate=node2"),
        400,
        "",
    );
    check(
        &mut failures,
        "switchover with an empty body",
        post("/switchover", ""),
        400,
        "",
    );
    check(
        &mut failures,
        "DELETE /switchover with nothing scheduled",
        leader.api("DELETE", "/switchover", None),
        404,
        "no switchover is scheduled",
    );

    // None of it moved anything: same primary, same leader key, nobody else writes, and the
    // failover key holds no request.
    assert_primary_stays(&c, &p, Duration::from_secs(8), "after refused requests");
    match c.dcs_json("failover") {
        Ok(None) => {}
        Ok(Some(v)) => assert!(
            v.as_object().is_some_and(|o| o.is_empty()),
            "a refused request left a failover key: {v}"
        ),
        Err(e) => failures.push(format!("failover key: {e}")),
    }
    assert!(
        failures.is_empty(),
        "REST validation mismatches:\n{}",
        failures.join("\n")
    );
}
