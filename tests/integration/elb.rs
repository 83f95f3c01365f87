//! Classic ELBs that follow the primary (`load_balancers: [{type: elb}]`), on moto in server
//! mode: three daemons, each an "EC2 instance" of moto's. Read back through boto3 (not
//! spilo): after bootstrap the primary ELB holds exactly the primary and the replica ELB
//! exactly the streaming replicas; an instance registered by hand is removed; after a
//! switchover and a SIGTERM hand-over the same holds again; with moto down a failover is
//! not held up, and once moto is back (empty, as moto restarts) the new leader's reconcile
//! rebuilds both ELBs. The health check as the backstop, with the ELB API and then the DCS
//! gone, is probed by a stub of an ELB's checks (`spilo_tests::elb_health`: moto runs none).

use std::time::{Duration, Instant};

use spilo_tests::aws::{Moto, PRIMARY_ELB, REPLICA_ELB};
use spilo_tests::bins::plugin_lib;
use spilo_tests::elb_health::ElbHealthChecks;
use spilo_tests::{note, poll, wait_for, ClusterOpts, TestCluster};

use crate::{BOOTSTRAP, REPLICATION};

/// How long the ELBs may take to follow a change: a few `loop_wait`s (2 s here) and moto's
/// answers, generously.
const FOLLOW: Duration = Duration::from_secs(30);

fn elb_yaml(moto: &Moto, instance: &str) -> String {
    format!(
        "load_balancers:\n{}",
        moto.elb_entry(
            PRIMARY_ELB,
            REPLICA_ELB,
            &format!("instance_id: {instance}")
        )
    )
}

/// moto with the two ELBs and `n` instances, and a cluster of `n` daemons (`node1`…), each
/// one of the instances, started.
fn elb_cluster(n: usize, label: &str) -> (Moto, Vec<String>, TestCluster) {
    let (moto, ids) = Moto::with_elbs(n);
    // Next to the copied binaries, where the daemon looks for it.
    plugin_lib("libspilo_lb_elb_plugin.so");
    let mut c = TestCluster::start(0, ClusterOpts::named(label));
    for (i, id) in ids.iter().enumerate() {
        let name = format!("node{}", i + 1);
        let mut o = c.opts.node.clone();
        o.extra_yaml = elb_yaml(&moto, id);
        let idx = c.add_node(&name, &name, o);
        c.nodes[idx].start();
    }
    (moto, ids, c)
}

/// The instance id of `nodeN`.
fn id_of(ids: &[String], name: &str) -> String {
    let i: usize = name.trim_start_matches("node").parse().expect("nodeN");
    ids[i - 1].clone()
}

/// Waits until the primary ELB holds exactly `primary` and the replica ELB exactly
/// `replicas` (instance ids).
fn wait_elbs(moto: &Moto, primary: &str, replicas: &[&str], what: &str) -> Duration {
    let t0 = Instant::now();
    let mut want_r: Vec<String> = replicas.iter().map(|s| s.to_string()).collect();
    want_r.sort();
    let r = poll(FOLLOW, Duration::from_millis(200), || {
        let p = moto.elb_instances(PRIMARY_ELB);
        let r = moto.elb_instances(REPLICA_ELB);
        if p == vec![primary.to_string()] && r == want_r {
            Ok(())
        } else {
            Err(format!("primary ELB {p:?}, replica ELB {r:?}"))
        }
    });
    if let Err(e) = r {
        panic!("{what}: wanted primary ELB [{primary}] and replica ELB {want_r:?}; last seen {e}");
    }
    let took = t0.elapsed();
    note(format!("{what}: the ELBs followed in {took:?}"));
    took
}

#[test]
fn elbs_follow_the_primary_through_switchover_handover_and_a_failover_without_the_api() {
    let (mut moto, ids, mut c) = elb_cluster(3, "elb");
    let id_of = |name: &str| id_of(&ids, name);
    let p = c.wait_for_primary(BOOTSTRAP);
    c.wait_for_replicas_streaming(REPLICATION);
    let others = c.others(&p);
    let other_ids: Vec<String> = others.iter().map(|n| id_of(n)).collect();
    let other_refs: Vec<&str> = other_ids.iter().map(String::as_str).collect();
    wait_elbs(&moto, &id_of(&p), &other_refs, "after bootstrap");
    let term = moto
        .term_tag(PRIMARY_ELB)
        .expect("the leader's term is in the ELB's tag");
    assert_eq!(
        Some(term),
        c.node(&p).term(),
        "the ELB tag holds the leader's term"
    );
    // The member keys say which instance each member is (the leader addresses them by it).
    for n in &c.nodes {
        let m = c.member_json(&n.name).expect("member key");
        assert_eq!(m["instance_id"], id_of(&n.name).as_str(), "{}: {m}", n.name);
    }

    // Somebody registers a replica with the primary ELB by hand: it is taken out again.
    moto.register(PRIMARY_ELB, &other_ids[0]);
    wait_elbs(&moto, &id_of(&p), &other_refs, "after a hand registration");
    let text = crate::metrics::metrics(c.node(&p));
    let repairs = crate::metrics::sample(&text, "spilo_lb_repairs_total", &c.scope, &p)
        .expect("spilo_lb_repairs_total for the elb");
    assert!(repairs >= 1.0, "the repair is counted:\n{text}");

    // Switchover to a replica.
    let cand = others[0].clone();
    crate::ops::switchover(&c, &p, &cand);
    let new = cand.clone();
    // From the new primary's log: the promotion, then the ELB call that registered it.
    let at = |needle: &str| -> Option<chrono::DateTime<chrono::FixedOffset>> {
        c.node(&new)
            .log_text()
            .lines()
            .rfind(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let promoted = at("promoted: PostgreSQL takes writes").expect("the promotion is logged");
    let routed = poll(FOLLOW, Duration::from_millis(100), || {
        at("read-write traffic now goes to").ok_or_else(|| "not yet".to_string())
    })
    .map(|(t, _)| t)
    .expect("the ELB change is logged");
    let lag = (routed - promoted).num_milliseconds();
    note(format!(
        "switchover: PostgreSQL promoted → the primary ELB call returned: {lag} ms"
    ));
    assert!(
        (0..10_000).contains(&lag),
        "the ELB was changed {lag} ms after the promotion (a generous bound)"
    );
    c.wait_for_replicas_streaming(Duration::from_secs(120));
    let rest: Vec<String> = c.others(&new).iter().map(|n| id_of(n)).collect();
    let rest_refs: Vec<&str> = rest.iter().map(String::as_str).collect();
    wait_elbs(&moto, &id_of(&new), &rest_refs, "after the switchover");
    assert!(
        moto.term_tag(PRIMARY_ELB) > Some(term),
        "a new term after the switchover"
    );

    // SIGTERM hand-over: the leaving primary takes itself out of the primary ELB first.
    let leaving = new.clone();
    c.node_mut(&leaving).kill_daemon(libc::SIGTERM);
    let next = c.wait_for_primary_except(&[&leaving], Duration::from_secs(60));
    let left: Vec<String> = c
        .others(&next)
        .iter()
        .filter(|n| **n != leaving)
        .map(|n| id_of(n))
        .collect();
    let left_refs: Vec<&str> = left.iter().map(String::as_str).collect();
    wait_elbs(
        &moto,
        &id_of(&next),
        &left_refs,
        "after the SIGTERM hand-over",
    );
    c.node_mut(&leaving).restart_daemon();
    c.wait_for_replicas_streaming(Duration::from_secs(180));

    // moto goes away; the primary dies; failover goes on without the API.
    moto.server.stop();
    let victim = next.clone();
    let t0 = Instant::now();
    c.node_mut(&victim).kill_daemon_now();
    c.node(&victim).kill_postmaster(libc::SIGKILL);
    let survivor = c.wait_for_primary_except(&[&victim], Duration::from_secs(60));
    let failover = t0.elapsed();
    note(format!(
        "failover with the ELB API down: {survivor} primary after {failover:?}"
    ));
    // ttl is 10 s here: the failover is bounded by the lease, not by the unreachable API.
    assert!(
        failover < Duration::from_secs(40),
        "the failover took {failover:?} with the ELB API down"
    );
    // moto comes back empty: the ELBs are made again, and the new leader fills them.
    moto.server.restart();
    moto.create_elbs();
    let standing: Vec<String> = c
        .others(&survivor)
        .iter()
        .filter(|n| **n != victim)
        .map(|n| id_of(n))
        .collect();
    let standing_refs: Vec<&str> = standing.iter().map(String::as_str).collect();
    // The replica that lost its primary streams from the new one.
    let stand_names: Vec<String> = c
        .others(&survivor)
        .into_iter()
        .filter(|n| *n != victim)
        .collect();
    let stand_name_refs: Vec<&str> = stand_names.iter().map(String::as_str).collect();
    c.wait_for_streaming(&survivor, &stand_name_refs, Duration::from_secs(120));
    wait_elbs(
        &moto,
        &id_of(&survivor),
        &standing_refs,
        "after moto came back",
    );
    let st = c.node(&survivor).patroni().expect("patroni");
    let lbs = &st["load_balancers"];
    assert_eq!(lbs[0]["name"], "elb", "{st}");
    assert_eq!(lbs[0]["in_sync"], true, "{st}");
    note(format!("load balancers on {survivor}: {lbs}"));
}

/// The health check stays the backstop for when the ELB API cannot be reached. With moto's
/// API gone the daemons cannot change the ELBs, and with the DCS gone too the primary cannot
/// keep its lease: it steps down (within `ttl`), its `/primary` then answers 503, and the ELB's
/// own checks (here the stub, with the health check moto holds: `HTTP:8008/primary`, every
/// 5 s, 2 to go unhealthy) take it out of service; the replica never answers 200 on
/// `/primary` meanwhile.
#[test]
fn without_the_api_the_health_check_takes_a_primary_without_its_lease_out_of_service() {
    let (mut moto, ids, mut c) = elb_cluster(2, "elbhc");
    let id_of = |name: &str| id_of(&ids, name);
    let p = c.wait_for_primary(BOOTSTRAP);
    c.wait_for_replicas_streaming(REPLICATION);
    let r = c.others(&p)[0].clone();
    let (pid, rid) = (id_of(&p), id_of(&r));
    wait_elbs(&moto, &pid, &[rid.as_str()], "after bootstrap");
    let addr_of = c
        .nodes
        .iter()
        .map(|n| {
            let addr = format!("127.0.0.1:{}", n.api_port)
                .parse()
                .expect("address");
            (id_of(&n.name), addr)
        })
        .collect();
    let checks = ElbHealthChecks::start(&moto, &[PRIMARY_ELB, REPLICA_ELB], addr_of);
    wait_for(
        "the health checks to put the primary and the replica in service",
        Duration::from_secs(40),
        || {
            let state = (
                checks.in_service(PRIMARY_ELB, &pid),
                checks.in_service(REPLICA_ELB, &rid),
            );
            if state == (Some(true), Some(true)) {
                Ok(())
            } else {
                Err(format!("(primary ELB: {p}, replica ELB: {r}): {state:?}"))
            }
        },
    );

    moto.server.stop();
    c.dcs.stop();
    let t0 = Instant::now();
    let ttl = c.opts.node.ttl;
    let bound = Duration::from_secs(ttl + 30);
    // Meanwhile the replica (which the checks would see if it were registered) never answers
    // 200 on /primary: without the DCS nobody is promoted.
    let rport = c.node(&r).api_port;
    let mut replica_said_primary = Vec::new();
    let res = poll(bound, Duration::from_millis(200), || {
        if let Ok((200, _)) = spilo_tests::http::get(rport, "/primary") {
            replica_said_primary.push(t0.elapsed());
        }
        match checks.in_service(PRIMARY_ELB, &pid) {
            Some(false) => Ok(()),
            other => Err(format!("{p} in service with the primary ELB: {other:?}")),
        }
    });
    match res {
        Ok((_, took)) => note(format!(
            "ELB API and DCS gone: {p} out of service with the primary ELB after {took:?} (it steps down within ttl {ttl} s; then 2 failed checks 5 s apart)"
        )),
        Err(last) => panic!("after {bound:?} (ttl {ttl}): {last}"),
    }
    assert!(
        replica_said_primary.is_empty(),
        "{r} answered 200 on /primary during the outage at {replica_said_primary:?}"
    );
    // It stepped down (its REST API answers, and says it is not the primary), rather than
    // stopped answering.
    let (status, body) = spilo_tests::http::get(c.node(&p).api_port, "/primary")
        .unwrap_or_else(|e| panic!("{p}'s REST API does not answer: {e}"));
    assert_eq!(status, 503, "{p} on /primary: {body}");
    // In service once, out once: no flapping.
    let changes = checks.history();
    let primary_elb: Vec<bool> = changes
        .iter()
        .filter(|(elb, id, _, _)| elb == PRIMARY_ELB && *id == pid)
        .map(|(_, _, on, _)| *on)
        .collect();
    assert_eq!(primary_elb, [true, false], "{changes:?}");
    note(format!("health-check changes: {changes:?}"));
}

#[test]
fn an_unknown_elb_is_a_clear_error_in_validate_and_at_start() {
    let (moto, ids) = Moto::with_elbs(1);
    plugin_lib("libspilo_lb_elb_plugin.so");
    let mut c = TestCluster::start(0, ClusterOpts::named("elb-bad"));
    let mut o = c.opts.node.clone();
    o.extra_yaml = elb_yaml(&moto, &ids[0]).replace(PRIMARY_ELB, "no-such-elb");
    let idx = c.add_node("node1", "node1", o);
    let out = std::process::Command::new(&spilo_tests::bins::bins().spilo)
        .arg("--validate")
        .arg(&c.nodes[idx].config_path)
        .output()
        .expect("spilo --validate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "--validate: {err}");
    assert!(
        err.contains("load_balancers[0]")
            && err.contains("LoadBalancerNotFound")
            && err.contains("no-such-elb"),
        "--validate names the entry and AWS's error: {err}"
    );
    c.nodes[idx].start();
    let status = c.nodes[idx]
        .wait_daemon_exit(Duration::from_secs(60))
        .expect("the daemon stops at start");
    assert!(!status.success());
    let log = c.nodes[idx].log_text();
    assert!(
        log.contains("load_balancers[0]") && log.contains("LoadBalancerNotFound"),
        "the start names the entry and AWS's error: {}",
        c.nodes[idx].log_tail(20)
    );
}
