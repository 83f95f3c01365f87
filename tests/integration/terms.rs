//! The leader term on `GET /patroni` grows with every new leadership — a switchover, then a
//! failover — on whichever DCS `SPILO_TEST_DCS` names (etcd, ZooKeeper, the etcd-gateway
//! plugin). Through a DCS plugin built for ABI 1.0 (`etcd-plugin-abi10`) the term is unknown
//! (null) throughout, never a made-up number.

use std::time::Duration;

use serde_json::json;
use spilo_tests::DcsKind;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};

use crate::ops::{call, expect};
use crate::BOOTSTRAP;

/// Waits until every running node's `/patroni` names the same term, and returns it (`None`:
/// every node says null).
fn agreed_term(c: &TestCluster, primary: &str, after: Option<u64>) -> Option<u64> {
    let no_terms = DcsKind::from_env() == DcsKind::EtcdPluginAbi10;
    wait_for(
        &format!("every node to report {primary}'s term (after {after:?})"),
        Duration::from_secs(60),
        || {
            let mut seen = Vec::new();
            for n in &c.nodes {
                if !n.postmaster_alive() {
                    continue;
                }
                let v = n.patroni()?;
                seen.push((n.name.clone(), v["term"].as_u64(), v["term"].is_null()));
            }
            let terms: Vec<Option<u64>> = seen.iter().map(|s| s.1).collect();
            let first = terms.first().copied().flatten();
            if no_terms {
                return if seen.iter().all(|s| s.2) {
                    Ok(None)
                } else {
                    Err(format!("a term from a 1.0 plugin: {seen:?}"))
                };
            }
            match first {
                Some(t) if terms.iter().all(|x| *x == Some(t)) && after.is_none_or(|a| t > a) => {
                    Ok(Some(t))
                }
                _ => Err(format!("terms {seen:?}")),
            }
        },
    )
}

#[test]
fn the_term_grows_on_switchover_and_on_failover() {
    let mut c = TestCluster::start(2, ClusterOpts::named("terms"));
    let first = c.wait_for_replicas_streaming(BOOTSTRAP);
    let t1 = agreed_term(&c, &first, None);
    let second = c.others(&first)[0].clone();

    let r = call(
        c.node(&first),
        "POST",
        "/switchover",
        Some(&json!({"leader": first, "candidate": second})),
    );
    expect("POST /switchover", r, 200, None);
    c.wait_for_primary_except(&[first.as_str()], Duration::from_secs(60));
    c.wait_for_streaming(&second, &[first.as_str()], Duration::from_secs(120));
    let t2 = agreed_term(&c, &second, t1);

    // A failover: the primary's daemon and PostgreSQL die; the other node takes over.
    let n = c.node_mut(&second);
    n.kill_daemon(libc::SIGKILL);
    n.wait_daemon_exit(Duration::from_secs(10))
        .expect("SIGKILLed daemon exits");
    n.kill_postmaster(libc::SIGKILL);
    let ttl = c.opts.node.ttl;
    let (third, _) = c.wait_for_writer(&[second.as_str()], Duration::from_secs(ttl + 30));
    assert_eq!(third, first);
    let t3 = agreed_term(&c, &third, t2);
    note(format!(
        "terms: {t1:?} -> {t2:?} (switchover) -> {t3:?} (failover)"
    ));
    if DcsKind::from_env() != DcsKind::EtcdPluginAbi10 {
        assert!(t1.is_some() && t2 > t1 && t3 > t2, "{t1:?} {t2:?} {t3:?}");
    }
    // SQL sees the same term, from the state file the daemon writes (NULL when unknown).
    let want = t3.map(|t| t.to_string());
    wait_for(
        &format!("SELECT spilo.term() on {third} to say {want:?}"),
        Duration::from_secs(30),
        || match c.node(&third).sql_value("SELECT spilo.term()") {
            Ok(v) if v == want => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    c.node_mut(&second).restart_daemon();
}
