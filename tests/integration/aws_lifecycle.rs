//! The Auto Scaling lifecycle (`aws.lifecycle_hook`): three daemons, each an "instance" with
//! its own instance-metadata stub (IMDSv2 only), and a stub of Auto Scaling's
//! `CompleteLifecycleAction` (moto 5.2 has neither a lifecycle state in its metadata nor the
//! action). When the metadata of the primary's instance says `Terminated`, the primary hands
//! over (another node takes writes well before `ttl`, with every acknowledged row), its daemon
//! stops PostgreSQL and exits 0, and the lifecycle action of that instance is completed with
//! `CONTINUE`; the same for a replica, with the primary left alone. No metadata request is
//! made without a token.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spilo_tests::autoscaling::{AutoScalingStub, Completed};
use spilo_tests::imds::{Imds, LIFECYCLE_STATE};
use spilo_tests::{note, poll, ClusterOpts, TestCluster};

use crate::{BOOTSTRAP, REPLICATION};

const HOOK: &str = "spilo-handover";
const GROUP: &str = "spilo-lifecycle";

fn aws_yaml(imds: &Imds, asg: &AutoScalingStub) -> String {
    format!(
        "aws:\n  \
           lifecycle_hook: {HOOK}\n  \
           auto_scaling_group: {GROUP}\n  \
           imds_endpoint: {}\n  \
           region: us-east-1\n  \
           autoscaling_endpoint: {}\n  \
           lifecycle_poll: 1\n  \
           access_key_id: test\n  \
           secret_access_key: test\n",
        imds.endpoint(),
        asg.endpoint()
    )
}

fn completed_for(asg: &AutoScalingStub, instance: &str, within: Duration) -> Completed {
    let r = poll(within, Duration::from_millis(200), || {
        asg.completed()
            .into_iter()
            .find(|c| c.instance_id == instance)
            .ok_or_else(|| format!("{:?}", asg.completed()))
    });
    match r {
        Ok((c, _)) => c,
        Err(last) => panic!("no lifecycle action completed for {instance} in {within:?}: {last}"),
    }
}

#[test]
fn a_terminating_instance_hands_over_then_completes_its_lifecycle_action() {
    let ttl = 30;
    let asg = AutoScalingStub::start(GROUP, HOOK);
    let ids = [
        "i-00000000000000001",
        "i-00000000000000002",
        "i-00000000000000003",
    ];
    let imds: Vec<Imds> = ids.iter().map(|id| Imds::start(id)).collect();
    let mut c = TestCluster::start(0, ClusterOpts::named("lifecycle").timing(ttl, 2, 3));
    for (i, stub) in imds.iter().enumerate() {
        let name = format!("node{}", i + 1);
        let mut o = c.opts.node.clone();
        o.extra_yaml = aws_yaml(stub, &asg);
        let idx = c.add_node(&name, &name, o);
        c.nodes[idx].start();
    }
    let index = |name: &str| -> usize {
        name.trim_start_matches("node")
            .parse::<usize>()
            .expect("nodeN")
            - 1
    };
    let old = c.wait_for_replicas_streaming(BOOTSTRAP);
    c.node(&old)
        .write_value("lifecycle_rows", "before the notice")
        .expect("INSERT on the primary");
    for r in c.others(&old) {
        c.wait_for_value(&r, "lifecycle_rows", "before the notice", REPLICATION);
    }

    // The group starts terminating the primary's instance.
    let t0 = Instant::now();
    imds[index(&old)].set(LIFECYCLE_STATE, Some("Terminated"));
    let bound = Duration::from_secs(20);
    let r = poll(bound, Duration::from_millis(100), || {
        for name in c.others(&old) {
            if c.node(&name).try_write("lifecycle_rows") {
                return Ok(name);
            }
        }
        Err(c.describe())
    });
    let new = match r {
        Ok((name, _)) => name,
        Err(last) => panic!("no other node took writes within {bound:?} of the notice: {last}"),
    };
    let took = t0.elapsed();
    note(format!(
        "lifecycle: {new} takes writes {took:?} after the termination notice to {old} \
         (lifecycle_poll 1 s, ttl {ttl} s)"
    ));
    assert!(took < Duration::from_secs(ttl), "took {took:?}");
    assert!(c
        .node(&new)
        .has_value("lifecycle_rows", "before the notice")
        .expect("read on the new primary"));
    let done = completed_for(&asg, ids[index(&old)], Duration::from_secs(60));
    assert_eq!(
        done,
        Completed {
            group: GROUP.into(),
            hook: HOOK.into(),
            instance_id: ids[index(&old)].into(),
            result: "CONTINUE".into(),
        }
    );
    let status = c
        .node_mut(&old)
        .wait_daemon_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{old}'s daemon still runs after completing its action"));
    assert!(status.success(), "{old}'s daemon exited {status}");
    assert!(
        !c.node(&old).postmaster_alive(),
        "{old}'s PostgreSQL still runs"
    );
    let log = c.node(&old).log_text();
    assert!(
        log.contains(&format!(
            "on EC2 instance {} in us-east-1a",
            ids[index(&old)]
        )),
        "{log}"
    );
    assert!(log.contains("is terminating this instance"), "{log}");
    assert!(log.contains("lifecycle action completed"), "{log}");

    // A replica's instance: it stops and completes; the primary stays.
    let replica = c
        .others(&old)
        .into_iter()
        .find(|n| *n != new)
        .expect("a replica");
    imds[index(&replica)].set(LIFECYCLE_STATE, Some("Terminated"));
    completed_for(&asg, ids[index(&replica)], Duration::from_secs(60));
    let status = c
        .node_mut(&replica)
        .wait_daemon_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{replica}'s daemon still runs"));
    assert!(status.success(), "{replica}'s daemon exited {status}");
    assert_eq!(c.node(&new).role().as_deref(), Some("primary"));
    assert!(c.node(&new).try_write("lifecycle_rows"));
    assert_eq!(asg.completed().len(), 2, "{:?}", asg.completed());

    // IMDSv2 only, and the survivor keeps reading its state without completing anything.
    for (i, stub) in imds.iter().enumerate() {
        assert_eq!(
            stub.tokenless.load(Ordering::SeqCst),
            0,
            "node{} made a tokenless metadata request",
            i + 1
        );
    }
    assert!(imds[index(&new)].tokens.load(Ordering::SeqCst) >= 1);
}
