//! The built-in proxy (`type: proxy`), run by every daemon and on its own (`spilo proxy`),
//! with real PostgreSQL clients: the read-write port always reaches the primary and the
//! read-only port only replicas; across a switchover and a failover a client connected to the
//! old primary is cut at once, new connections reach the new primary, and no write the proxy
//! acknowledged is lost (none was taken by a deposed primary).

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use spilo_tests::bins::bins;
use spilo_tests::pg;
use spilo_tests::util::free_port;
use spilo_tests::{note, poll, wait_for, ClusterOpts, TestCluster};

use crate::haproxy::{through, where_am_i};
use crate::{BOOTSTRAP, REPLICATION};

fn proxy_yaml(rw: u16, ro: u16, metrics: Option<u16>) -> String {
    let mut y = format!(
        "load_balancers:\n- type: proxy\n  listen_rw: 127.0.0.1:{rw}\n  listen_ro: 127.0.0.1:{ro}\n  hold: 30\n"
    );
    if let Some(m) = metrics {
        y.push_str(&format!("  listen_metrics: 127.0.0.1:{m}\n"));
    }
    y
}

/// Waits until new connections through `rw` reach the server on `want`, out of recovery.
fn rw_reaches(rw: u16, want: u16, what: &str) -> Duration {
    match poll(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || match where_am_i(rw) {
            Ok((false, p)) if p == want => Ok(()),
            other => Err(format!("{other:?}")),
        },
    ) {
        Ok(((), took)) => {
            note(format!(
                "{what}: read-write port {rw} reaches {want} after {took:?}"
            ));
            took
        }
        Err(e) => panic!("{what}: read-write port {rw} never reached {want}: last {e}"),
    }
}

/// Every connection through `ro` (a dozen) lands on a replica in `want`, and all of them are
/// reached.
fn ro_reaches_only(ro: u16, want: &BTreeSet<u16>) {
    wait_for(
        &format!("read-only port {ro} to spread over {want:?}"),
        Duration::from_secs(60),
        || {
            let mut seen = BTreeSet::new();
            for _ in 0..12 {
                match where_am_i(ro) {
                    Ok((true, p)) if want.contains(&p) => {
                        seen.insert(p);
                    }
                    other => return Err(format!("a read-only connection: {other:?}")),
                }
            }
            if &seen == want {
                Ok(())
            } else {
                Err(format!("reached {seen:?}"))
            }
        },
    );
}

/// A client holding one connection open through `port`, on a thread of its own: it answers
/// `true` once its connection is gone.
struct HeldClient {
    gone: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HeldClient {
    fn open(port: u16) -> HeldClient {
        let gone = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (gone.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let t = through(port);
                let mut cfg = tokio_postgres::Config::new();
                cfg.host("127.0.0.1")
                    .port(t.port)
                    .user(&t.user)
                    .password(&t.password)
                    .dbname(&t.dbname);
                let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.expect("connect");
                let conn = tokio::spawn(conn);
                client.simple_query("SELECT 1").await.expect("first query");
                let _ = ready_tx.send(());
                while !s.load(Ordering::SeqCst) {
                    if client.simple_query("SELECT 1").await.is_err() || conn.is_finished() {
                        g.store(true, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the held client connected");
        HeldClient {
            gone,
            stop,
            thread: Some(thread),
        }
    }

    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }
}

impl Drop for HeldClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes through `rw` in a loop, each on a new connection; the acknowledged values.
fn writer(rw: u16, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<u64>> {
    thread::spawn(move || {
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            if pg::simple_query(
                &through(rw),
                &format!("INSERT INTO proxy_rows (v) VALUES ({i})"),
                Duration::from_secs(3),
            )
            .is_ok()
            {
                acked.push(i);
            }
            thread::sleep(Duration::from_millis(20));
        }
        acked
    })
}

struct Standalone(Child);

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn proxies_route_to_the_primary_and_replicas_and_cut_clients_of_a_demoted_primary() {
    let mut c = TestCluster::start(0, ClusterOpts::named("proxy"));
    let mut ports = Vec::new();
    for i in 1..=3 {
        let name = format!("node{i}");
        let (rw, ro) = (free_port(), free_port());
        let mut o = c.opts.node.clone();
        o.extra_yaml = proxy_yaml(rw, ro, None);
        let idx = c.add_node(&name, &name, o);
        c.nodes[idx].start();
        ports.push((rw, ro));
    }
    let p = c.wait_for_primary(BOOTSTRAP);
    c.wait_for_replicas_streaming(REPLICATION);
    let pg_ports: std::collections::BTreeMap<String, u16> = c
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.pg_port))
        .collect();
    let pg_port = |name: &str| pg_ports[name];

    // The same proxy on its own: `spilo proxy` with a copy of node1's file on other ports.
    let (srw, sro, smetrics) = (free_port(), free_port(), free_port());
    let node1_yaml =
        std::fs::read_to_string(&c.node("node1").config_path).expect("node1's configuration");
    let own = node1_yaml
        .split("load_balancers:")
        .next()
        .expect("yaml")
        .to_string()
        + &proxy_yaml(srw, sro, Some(smetrics));
    let own_path = c.root().join("proxy.yml");
    std::fs::write(&own_path, own).expect("write proxy.yml");
    let log = std::fs::File::create(c.root().join("proxy.log")).expect("log");
    let standalone = Standalone(
        Command::new(&bins().spilo)
            .arg("proxy")
            .arg(&own_path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn spilo proxy"),
    );

    // Every proxy's read-write port reaches the primary; read-only ports only the replicas.
    let replicas: BTreeSet<u16> = c.others(&p).iter().map(|n| pg_port(n)).collect();
    for (rw, ro) in ports.iter().copied().chain([(srw, sro)]) {
        rw_reaches(rw, pg_port(&p), "after bootstrap");
        ro_reaches_only(ro, &replicas);
    }
    pg::simple_query(
        &through(srw),
        "CREATE TABLE proxy_rows (v bigint PRIMARY KEY)",
        Duration::from_secs(10),
    )
    .expect("create table through the proxy");

    // Switchover, with a client held on the old primary, one held on each replica through the
    // read-only port (round robin), and a writer going through.
    let held = HeldClient::open(srw);
    let held_ro = [HeldClient::open(sro), HeldClient::open(sro)];
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(srw, stop.clone());
    thread::sleep(Duration::from_millis(500));
    let cand = c.others(&p)[0].clone();
    let t0 = Instant::now();
    crate::ops::switchover(&c, &p, &cand);
    let new = cand.clone();
    rw_reaches(srw, pg_port(&new), "after the switchover");
    note(format!(
        "switchover request -> the proxy reaches the new primary: {:?}",
        t0.elapsed()
    ));
    wait_for("the held client to be cut", Duration::from_secs(10), || {
        if held.is_gone() {
            Ok(())
        } else {
            Err("still connected".into())
        }
    });
    // The read-only client on the candidate is cut by the proxy itself (the candidate's
    // PostgreSQL kept running: it is a primary now, and the read-only port never keeps one).
    wait_for(
        "the read-only client on the new primary to be cut",
        Duration::from_secs(10),
        || {
            if held_ro.iter().any(|h| h.is_gone()) {
                Ok(())
            } else {
                Err("both read-only clients still connected".into())
            }
        },
    );
    drop(held_ro);
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let acked = w.join().expect("writer");
    assert!(!acked.is_empty(), "the writer got no write through");
    c.wait_for_replicas_streaming(Duration::from_secs(180));
    // Every acknowledged write is on the new primary: none went to the old one after it lost
    // the primary role (those would have been rewound away).
    let on_new: BTreeSet<u64> = c
        .node(&new)
        .sql("SELECT v FROM proxy_rows")
        .expect("read rows")
        .into_iter()
        .filter_map(|r| r[0].as_deref().and_then(|v| v.parse().ok()))
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|v| !on_new.contains(v))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes missing on the new primary: {lost:?}"
    );
    note(format!(
        "{} writes acknowledged through the switchover, none lost",
        acked.len()
    ));
    let replicas: BTreeSet<u16> = c.others(&new).iter().map(|n| pg_port(n)).collect();
    ro_reaches_only(sro, &replicas);

    // Failover: SIGKILL of the primary's daemon and postmaster.
    let victim = new.clone();
    c.node_mut(&victim).kill_daemon_now();
    c.node(&victim).kill_postmaster(libc::SIGKILL);
    let next = c.wait_for_primary_except(&[&victim], Duration::from_secs(60));
    for (rw, _) in ports
        .iter()
        .enumerate()
        .filter(|(i, _)| format!("node{}", i + 1) != victim)
        .map(|(_, p)| *p)
        .chain([(srw, sro)])
    {
        rw_reaches(rw, pg_port(&next), "after the failover");
    }

    // The proxy's own metrics.
    let (status, body) = spilo_tests::http::get(smetrics, "/metrics").expect("proxy metrics");
    assert_eq!(status, 200);
    let text = body
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    let ro_cut: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("spilo_proxy_cut_total{proxy=\"proxy\",port=\"ro\"} "))
        .and_then(|v| v.parse().ok())
        .expect("the read-only cut counter");
    assert!(
        ro_cut >= 1.0,
        "the promoted replica's read-only client was cut by the proxy: {text}"
    );
    let changes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("spilo_proxy_route_changes_total{proxy=\"proxy\"} "))
        .and_then(|v| v.parse().ok())
        .expect("route changes");
    assert!(
        changes >= 3.0,
        "bootstrap, switchover and failover change routes: {changes}"
    );
    drop(standalone);
}
