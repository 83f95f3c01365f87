//! The extension's fence (`shared_preload_libraries = 'spilo'`, `spilo.fence = on`): when the
//! primary's daemon freezes, the primary stops acknowledging writes before another node is
//! promoted, reads keep working, and no two nodes acknowledge writes at the same instant; when
//! the daemon thaws, the old primary rejoins as a replica. With the fence off, nothing changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spilo_tests::{note, wait_for, ClusterOpts, NodeOpts, TestCluster};

use crate::ops::wait_replica_of;
use crate::{BOOTSTRAP, REJOIN};

fn fence_opts(fence: &str) -> NodeOpts {
    NodeOpts {
        pg_parameters: vec![
            ("shared_preload_libraries".into(), "spilo".into()),
            ("spilo.fence".into(), format!("'{fence}'")),
        ],
        ..NodeOpts::default()
    }
}

/// Per node: the instants at which a write was acknowledged, and the last refusal's text.
type Acks = Arc<Mutex<Vec<(String, Instant)>>>;

#[test]
fn a_frozen_daemons_primary_is_fenced_before_anyone_else_is_promoted() {
    let mut opts = ClusterOpts::named("fence");
    opts.node = fence_opts("on");
    let mut c = TestCluster::start(3, opts);
    let ttl = c.opts.node.ttl;
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    for n in c.nodes.iter() {
        let v = n.patroni().expect("/patroni");
        assert_eq!(
            v["spilo"]["fence_armed"], true,
            "{}: fence not armed: {v}",
            n.name
        );
    }
    wait_for(
        "spiloctl list shows the fence armed",
        Duration::from_secs(30),
        || {
            let rows = c.spiloctl_list_json()?;
            let armed = rows
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["Fence"] == "armed")
                .count();
            if armed == 3 {
                Ok(())
            } else {
                Err(format!("{armed} of 3 armed: {rows}"))
            }
        },
    );
    c.node(&p)
        .sql("CREATE TABLE fence_rows (node text, at timestamptz DEFAULT now())")
        .expect("create table");
    c.wait_for_streaming(
        &p,
        &c.others(&p).iter().map(String::as_str).collect::<Vec<_>>(),
        REJOIN,
    );

    // A writer per node, each straight to its node, every 50 ms.
    let acks: Acks = Arc::default();
    let refusals: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for n in &c.nodes {
        let target = n.pg_target();
        let name = n.name.clone();
        let (acks, refusals, stop) = (acks.clone(), refusals.clone(), stop.clone());
        writers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let sql = format!("INSERT INTO fence_rows (node) VALUES ('{name}')");
                match spilo_tests::pg::simple_query(&target, &sql, Duration::from_secs(2)) {
                    Ok(_) => acks
                        .lock()
                        .expect("acks")
                        .push((name.clone(), Instant::now())),
                    Err(e) if e.contains("spilo fence") => {
                        refusals.lock().expect("refusals").push(e)
                    }
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(2));

    // Freeze the primary's daemon.
    let frozen_at = Instant::now();
    c.node_mut(&p).kill_daemon(libc::SIGSTOP);
    let (new, took) = c.wait_for_writer(&[p.as_str()], Duration::from_secs(ttl + 30));
    note(format!(
        "{new} took writes {took:?} after {p}'s daemon froze"
    ));
    // Reads still work on the fenced old primary.
    let count = c
        .node(&p)
        .sql_value("SELECT count(*) FROM fence_rows")
        .expect("a read on the fenced primary");
    assert!(count.is_some());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer thread");
    }

    let acks = acks.lock().expect("acks").clone();
    let last_old = acks
        .iter()
        .filter(|(n, _)| n == &p)
        .map(|(_, t)| *t)
        .max()
        .expect("the old primary acknowledged writes before the freeze");
    let first_new = acks
        .iter()
        .filter(|(n, _)| n == &new)
        .map(|(_, t)| *t)
        .min()
        .expect("the new primary acknowledged writes");
    note(format!(
        "{p}: last ack {:?} after the freeze; {new}: first ack {:?} after it",
        last_old.duration_since(frozen_at),
        first_new.saturating_duration_since(frozen_at)
    ));
    assert!(
        last_old < first_new,
        "two nodes acknowledged writes at once: {p} until {:?}, {new} from {:?} after the freeze",
        last_old.duration_since(frozen_at),
        first_new.saturating_duration_since(frozen_at)
    );
    assert!(
        last_old.duration_since(frozen_at) <= Duration::from_secs(ttl),
        "the fence engaged {:?} after the freeze, later than ttl",
        last_old.duration_since(frozen_at)
    );
    let refusals = refusals.lock().expect("refusals").clone();
    assert!(
        !refusals.is_empty(),
        "the old primary's refusals never named the spilo fence"
    );
    note(format!("refusal: {}", refusals[0]));

    // The daemon thaws: it sees another leader, demotes, and rejoins.
    c.node_mut(&p).kill_daemon(libc::SIGCONT);
    wait_replica_of(&c, &p, &new, REJOIN);
}

#[test]
fn with_the_fence_off_a_frozen_daemon_changes_nothing() {
    let mut opts = ClusterOpts::named("fenceoff");
    opts.node = fence_opts("off");
    let mut c = TestCluster::start(1, opts);
    let ttl = c.opts.node.ttl;
    let p = c.wait_for_primary(BOOTSTRAP);
    let v = c.node(&p).patroni().expect("/patroni");
    assert_eq!(v["spilo"]["fence_armed"], false, "{v}");
    c.node_mut(&p).kill_daemon(libc::SIGSTOP);
    let until = Instant::now() + Duration::from_secs(ttl + 3);
    let mut writes = 0;
    while Instant::now() < until {
        assert!(
            c.node(&p).try_write("fence_off_rows"),
            "a write failed with the fence off, {writes} writes in"
        );
        writes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        c.node(&p)
            .sql_value("SELECT spilo.fence_reason()")
            .expect("fence_reason()"),
        None,
        "the fence is off: no reason to refuse"
    );
    c.node_mut(&p).kill_daemon(libc::SIGCONT);
}
