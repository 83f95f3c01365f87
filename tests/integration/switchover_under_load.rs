//! A switchover under a steady stream of INSERTs through HAProxy's read-write port: every
//! acknowledged row is on the new primary afterwards (a switchover is graceful: the old
//! primary's shutdown checkpoint reaches the candidate before the leader key is released),
//! and all nodes converge on the same rows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use spilo_tests::pg::describe;
use spilo_tests::{note, wait_for, ClusterOpts, TestCluster};
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::haproxy::{start_haproxy, through};
use crate::ops::{call, expect};
use crate::{BOOTSTRAP, REJOIN};

/// What the writer saw.
#[derive(Default, Debug)]
struct Load {
    /// Acknowledged ids with the server port that acknowledged them and when (since start).
    acked: Vec<(i64, u16, Duration)>,
    /// Ids sent without an acknowledgement (error or timeout: committed or not, unknown).
    unacked: Vec<i64>,
    /// The highest id sent.
    last_sent: i64,
    /// A few error messages.
    errors: Vec<String>,
}

/// Inserts ids 1, 2, … through `port` about every 20 ms until `stop`, reconnecting after
/// errors; every INSERT has a 2 s bound and reports the server port that committed it.
fn writer(port: u16, stop: Arc<AtomicBool>, load: Arc<Mutex<Load>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let target = through(port);
    let t0 = Instant::now();
    rt.block_on(async move {
        let mut client: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
        let mut id: i64 = 0;
        // Bounded in time no matter what: 10 minutes.
        while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(600) {
            if client.is_none() {
                let mut cfg = tokio_postgres::Config::new();
                cfg.host("127.0.0.1")
                    .port(target.port)
                    .user(&target.user)
                    .password(&target.password)
                    .dbname(&target.dbname)
                    .application_name("spilo-tests-load")
                    .connect_timeout(Duration::from_secs(1));
                match tokio::time::timeout(Duration::from_secs(2), cfg.connect(NoTls)).await {
                    Ok(Ok((c, conn))) => {
                        let h = tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        client = Some((c, h));
                    }
                    Ok(Err(e)) => {
                        push_error(&load, format!("connect: {}", describe(&e)));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => {
                        push_error(&load, "connect: timeout".into());
                        continue;
                    }
                }
            }
            id += 1;
            load.lock().unwrap_or_else(|e| e.into_inner()).last_sent = id;
            let q = format!("INSERT INTO load_ids (id) VALUES ({id}) RETURNING inet_server_port()");
            let (c, _) = client.as_ref().expect("connected");
            let res = tokio::time::timeout(Duration::from_secs(2), c.simple_query(&q)).await;
            let port = match res {
                Ok(Ok(msgs)) => msgs.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).and_then(|p| p.parse::<u16>().ok()),
                    _ => None,
                }),
                Ok(Err(e)) => {
                    push_error(&load, format!("insert {id}: {}", describe(&e)));
                    None
                }
                Err(_) => {
                    push_error(&load, format!("insert {id}: timeout"));
                    None
                }
            };
            {
                let mut l = load.lock().unwrap_or_else(|e| e.into_inner());
                match port {
                    Some(p) => l.acked.push((id, p, t0.elapsed())),
                    None => l.unacked.push(id),
                }
            }
            if port.is_none() {
                if let Some((_, h)) = client.take() {
                    h.abort();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some((_, h)) = client.take() {
            h.abort();
        }
    });
}

fn push_error(load: &Arc<Mutex<Load>>, e: String) {
    let mut l = load.lock().unwrap_or_else(|e| e.into_inner());
    if l.errors.len() < 20 {
        l.errors.push(e);
    }
}

/// `(count, sum)` of ids on `node`.
fn digest(c: &TestCluster, node: &str) -> Result<(String, String), String> {
    let rows = c
        .node(node)
        .sql("SELECT count(*), coalesce(sum(id), 0) FROM load_ids")?;
    let r = rows.first().ok_or("no row")?;
    Ok((
        r.first().cloned().flatten().unwrap_or_default(),
        r.get(1).cloned().flatten().unwrap_or_default(),
    ))
}

#[test]
fn switchover_under_write_load_loses_no_acknowledged_write() {
    let c = TestCluster::start(3, ClusterOpts::named("sw-load"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let cand = c.others(&p)[0].clone();
    let (p_port, cand_port) = (c.node(&p).pg_port, c.node(&cand).pg_port);
    c.node(&p)
        .sql("CREATE TABLE load_ids (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
        .expect("CREATE TABLE on the primary");
    wait_for(
        "load_ids on the candidate",
        Duration::from_secs(60),
        || match c
            .node(&cand)
            .sql_value("SELECT to_regclass('load_ids') IS NOT NULL")
        {
            Ok(Some(t)) if t == "t" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let (h, rw, _ro) = start_haproxy(&c);
    wait_for(
        "the read-write port to reach the primary",
        Duration::from_secs(30),
        || match crate::haproxy::where_am_i(rw) {
            Ok((false, port)) if port == p_port => Ok(()),
            other => Err(format!("{other:?}; haproxy: {}", h.server_states())),
        },
    );

    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Mutex::new(Load::default()));
    let w = {
        let (stop, load) = (stop.clone(), load.clone());
        thread::spawn(move || writer(rw, stop, load))
    };
    let acked_on = |port: u16| {
        load.lock()
            .unwrap_or_else(|e| e.into_inner())
            .acked
            .iter()
            .filter(|(_, p, _)| *p == port)
            .count()
    };
    // Some load on the old primary first.
    let warm = crate::ops::wait_until(Duration::from_secs(30), || acked_on(p_port) >= 100);
    if !warm {
        stop.store(true, Ordering::SeqCst);
        let _ = w.join();
        panic!(
            "the writer got fewer than 100 acks from {p} in 30 s: {:?}",
            load.lock().unwrap_or_else(|e| e.into_inner())
        );
    }

    let r = call(
        c.node(&p),
        "POST",
        "/switchover",
        Some(&json!({"leader": p, "candidate": cand})),
    );
    let resumed = crate::ops::wait_until(Duration::from_secs(60), || acked_on(cand_port) >= 100);
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let _ = w.join();
    expect(
        "POST /switchover under load",
        r,
        200,
        Some(&format!("Successfully switched over to \"{cand}\"")),
    );
    let load = std::mem::take(&mut *load.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(
        resumed,
        "the writer got fewer than 100 acks from {cand} within 60 s of the switchover: errors {:?}; haproxy: {}",
        load.errors,
        h.server_states()
    );
    assert_eq!(c.wait_for_primary(Duration::from_secs(60)), cand);

    // Every acknowledged id is on the new primary.
    let rows = c
        .node(&cand)
        .sql("SELECT id FROM load_ids")
        .expect("read the ids on the new primary");
    let present: BTreeSet<i64> = rows
        .iter()
        .filter_map(|r| r.first().cloned().flatten()?.parse().ok())
        .collect();
    let acked: BTreeSet<i64> = load.acked.iter().map(|(id, _, _)| *id).collect();
    let lost: Vec<i64> = acked.difference(&present).copied().collect();
    let unexpected: Vec<i64> = present
        .iter()
        .filter(|id| **id < 1 || **id > load.last_sent)
        .copied()
        .collect();
    let recovered = load
        .unacked
        .iter()
        .filter(|id| present.contains(id))
        .count();
    let mut per_port: BTreeMap<u16, usize> = BTreeMap::new();
    for (_, port, _) in &load.acked {
        *per_port.entry(*port).or_default() += 1;
    }
    // The longest gap between two consecutive acknowledgements: the write outage.
    let outage = load
        .acked
        .windows(2)
        .map(|w| w[1].2.saturating_sub(w[0].2))
        .max()
        .unwrap_or_default();
    note(format!(
        "switchover under load: sent {}, acked {} (per server port {per_port:?}; {p}={p_port}, {cand}={cand_port}), \
         unacked {} of which {recovered} committed anyway, lost {} {:?}, unexpected {}; longest gap between acks {outage:?}; errors (first 20) {:?}",
        load.last_sent,
        acked.len(),
        load.unacked.len(),
        lost.len(),
        lost.iter().take(20).collect::<Vec<_>>(),
        unexpected.len(),
        load.errors
    ));
    assert!(
        per_port.get(&p_port).is_some_and(|n| *n > 0)
            && per_port.get(&cand_port).is_some_and(|n| *n > 0),
        "acks should come from both {p} and {cand}: {per_port:?}"
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged writes are missing on the new primary {cand} after a switchover (async replication, \
         but a switchover must lose nothing): first {:?}",
        lost.len(),
        lost.iter().take(20).collect::<Vec<_>>()
    );
    assert!(unexpected.is_empty(), "ids never sent: {unexpected:?}");

    // Every node converges on the same rows.
    let want = digest(&c, &cand).expect("digest on the new primary");
    for n in c.others(&cand) {
        wait_for(
            &format!("{n} to have the same load_ids as {cand} {want:?}"),
            REJOIN,
            || match digest(&c, &n) {
                Ok(d) if d == want => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
}
