//! `ttl` at spilo's floor (5 s, loop_wait 1, retry_timeout 2) on this loaded 2-core machine:
//! with both cores kept busy and a write load running, the leader keeps its lease — no false
//! failover, no demotion, the timeline does not change.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use spilo_tests::{note, ClusterOpts, TestCluster};

use crate::BOOTSTRAP;

/// Busy loops that keep the CPUs saturated; killed on drop.
struct Burners(Vec<Child>);

impl Burners {
    fn start(n: usize) -> Burners {
        Burners(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("spawn a CPU burner")
                })
                .collect(),
        )
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn ttl_5_under_cpu_and_write_load_keeps_the_leader() {
    let c = TestCluster::start(3, ClusterOpts::named("lowttl").timing(5, 1, 2));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let tl = c.node(&primary).timeline().expect("primary timeline");
    let secs = std::env::var("SPILO_LOW_TTL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45u64);

    let burners = Burners::start(2);
    let start = Instant::now();
    let mut writes = 0u64;
    let mut checks = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        // A steady write load on the primary.
        for _ in 0..20 {
            if c.node(&primary)
                .write_value_within("lowttl_load", "x", Duration::from_secs(5))
                .is_ok()
            {
                writes += 1;
            }
        }
        let leader = c.leader_from_dcs().expect("read the leader key");
        assert_eq!(
            leader.as_deref(),
            Some(primary.as_str()),
            "the leader changed under load after {:?}; {}",
            start.elapsed(),
            c.describe()
        );
        checks += 1;
    }
    drop(burners);

    assert!(writes > 0, "the write load never got through");
    let now_tl = c.node(&primary).timeline().expect("primary timeline");
    assert_eq!(now_tl, tl, "the timeline changed: a failover happened");
    for n in &c.nodes {
        let log = n.log_text();
        assert!(
            !log.contains("demoting"),
            "{} demoted under load:\n{}",
            n.name,
            n.log_tail(30)
        );
        let took_lock = log
            .lines()
            .any(|l| l.trim_end().ends_with("INFO acquired the leader lock"));
        assert!(
            !took_lock || n.name == primary,
            "{} took the leader lock under load:\n{}",
            n.name,
            n.log_tail(30)
        );
    }
    note(format!(
        "ttl 5 under load: {secs} s, {writes} writes, {checks} leader checks, leader {primary} kept the lock on timeline {tl}"
    ));
}
