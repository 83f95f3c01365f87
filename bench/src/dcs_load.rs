//! DCS load in steady state: how many requests each daemon sends to etcd and to ZooKeeper, so
//! that a regression (a second keep-alive per loop, a member write per loop on an idle
//! cluster) shows as a number.
//!
//! For each backend: a fresh DCS server, a 3-node cluster, wait for one primary and two
//! streaming replicas, wait until the primary's WAL position stands still, then two windows
//! of N seconds:
//! - **idle**: no client writes, so the member data is constant: every member-key write in
//!   this window is one the daemon did not need;
//! - **writes**: an INSERT on the primary every 200 ms, so every node's WAL position moves
//!   every loop and each daemon should publish its member key about once per loop.
//!
//! The server's counters are sampled at both ends of a window (etcd `/metrics`; ZooKeeper
//! `mntr` and `cons`), and each key's write counter (etcd `version`, ZooKeeper `dataVersion`)
//! just outside it. etcd counters are server-wide, so per-daemon figures are the total / 3;
//! ZooKeeper's `cons` gives each daemon's own connection. "Per loop" is a rate × `loop_wait`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spilo_tests::zookeeper::ZooKeeper;
use spilo_tests::{ClusterOpts, DcsKind, DcsServer, Etcd, Node, TestCluster};

use crate::dcs_counters::{self, Prometheus, ZkConnection};
use crate::dcs_keys::{self, KeyWrites};

/// How the DCS load part runs.
#[derive(Clone, Debug)]
pub struct LoadOpts {
    /// Length of each window, seconds.
    pub secs: u64,
    /// `ttl`, `loop_wait`, `retry_timeout` of the cluster.
    pub ttl: u64,
    /// See `ttl`.
    pub loop_wait: u64,
    /// See `ttl`.
    pub retry: u64,
}

/// One window's figures for the summary table.
#[derive(Clone, Debug)]
pub struct Row {
    /// `etcd` or `zookeeper`.
    pub backend: &'static str,
    /// `idle` or `writes`.
    pub window: &'static str,
    /// Length of the counter window, seconds.
    pub secs: f64,
    /// WAL the primary wrote over the key-version window (0: no member data could change).
    pub wal_bytes: u64,
    /// DCS requests per second per daemon (etcd: all gRPC messages received / 3; ZooKeeper:
    /// the mean of the daemons' `cons` received packets).
    pub requests_per_s: f64,
    /// Lease keep-alives (etcd) or pings (ZooKeeper, when `mntr` can tell) per loop per daemon.
    pub keepalives_per_loop: Option<f64>,
    /// Member-key writes per loop, per daemon (node1, node2, …).
    pub member_writes_per_loop: Vec<(String, f64)>,
    /// The other keys written (e.g. `status ×15`).
    pub other_writes: String,
}

/// Runs the DCS load part on `kind`; the rows for the summary, or why it could not run.
pub fn run(kind: DcsKind, o: &LoadOpts) -> Result<Vec<Row>, String> {
    let backend = if kind == DcsKind::Etcd {
        "etcd"
    } else if kind == DcsKind::ZooKeeper {
        "zookeeper"
    } else {
        return Err(format!("no DCS load measurement for {kind:?}"));
    };
    let opts = ClusterOpts::named(&format!("dcsload{backend}")).timing(o.ttl, o.loop_wait, o.retry);
    // A fresh server of the kind asked for, whatever SPILO_TEST_DCS says.
    let c = if kind == DcsKind::Etcd {
        TestCluster::start_with(3, opts, |dir| DcsServer::Etcd(Etcd::start_in(dir)))
    } else {
        TestCluster::start_with(3, opts, |_| DcsServer::ZooKeeper(ZooKeeper::start()))
    };
    let primary = c.wait_for_replicas_streaming(Duration::from_secs(180));
    // Idle means no WAL: after start-up PostgreSQL still writes a little (the bgwriter logs a
    // running-transactions record 15 s after the last activity), and every moved position is
    // a member change the daemons rightly publish. Wait until the primary's WAL position has
    // stood still for 20 s (longer than that 15 s interval), for at most 2 minutes.
    let quiet = Duration::from_secs(20);
    let settled = Instant::now();
    let stood_still = wait_wal_quiet(c.node(&primary), quiet, Duration::from_secs(120));
    println!(
        "dcs-load {backend}: cluster up (primary {primary}, 2 streaming replicas); {} after {:.0} s",
        if stood_still {
            format!("WAL position still for {} s", quiet.as_secs())
        } else {
            format!("WAL position never still for {} s", quiet.as_secs())
        },
        settled.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    let idle = measure(&c, o, backend, "idle", &primary, || {})?;
    rows.push(idle);
    let writer = c.node(&primary);
    let mut failed_writes = 0u32;
    let mut writes = 0u32;
    let busy = measure(&c, o, backend, "writes", &primary, || {
        writes += 1;
        if writer
            .write_value_within("bench_dcs_load", "x", Duration::from_secs(2))
            .is_err()
        {
            failed_writes += 1;
        }
    })?;
    println!("dcs-load {backend} writes: {writes} INSERTs on {primary}, {failed_writes} failed");
    rows.push(busy);
    Ok(rows)
}

/// `pg_current_wal_lsn()` of `node`.
fn wal_position(node: &Node) -> Result<String, String> {
    node.sql_value("SELECT pg_current_wal_lsn()")?
        .ok_or_else(|| format!("{}: pg_current_wal_lsn() is NULL", node.name))
}

/// Waits until `node`'s WAL position has not moved for `quiet`; false after `limit`.
fn wait_wal_quiet(node: &Node, quiet: Duration, limit: Duration) -> bool {
    let started = Instant::now();
    let mut last = wal_position(node).ok();
    let mut since = Instant::now();
    while started.elapsed() < limit {
        if since.elapsed() >= quiet {
            return true;
        }
        std::thread::sleep(Duration::from_secs(1));
        let now = wal_position(node).ok();
        if now != last || now.is_none() {
            last = now;
            since = Instant::now();
        }
    }
    false
}

/// One window: samples, `tick` every 200 ms for `o.secs`, samples again; prints the raw
/// deltas and the per-daemon figures.
fn measure(
    c: &TestCluster,
    o: &LoadOpts,
    backend: &'static str,
    window: &'static str,
    primary: &str,
    mut tick: impl FnMut(),
) -> Result<Row, String> {
    let keys_started = Instant::now();
    let lsn0 = wal_position(c.node(primary))?;
    let keys0 = dcs_keys::sample(c)?;
    let keys0_mid = keys_started + keys_started.elapsed() / 2;
    let server0 = ServerSample::take(c)?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(o.secs) {
        tick();
        std::thread::sleep(Duration::from_millis(200));
    }
    let server1 = ServerSample::take(c)?;
    let secs = started.elapsed().as_secs_f64();
    let keys_started = Instant::now();
    let keys1 = dcs_keys::sample(c)?;
    let keys1_mid = keys_started + keys_started.elapsed() / 2;
    let wal_bytes = c
        .node(primary)
        .sql_value(&format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn0}')::bigint"
        ))?
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("pg_wal_lsn_diff gave no number")?;
    let key_secs = keys1_mid.duration_since(keys0_mid).as_secs_f64();
    let keys = KeyWrites::between(&keys0, &keys1);

    let per_loop = |count: f64, over: f64| count / over * o.loop_wait as f64;
    let daemons = c.nodes.len() as f64;
    println!(
        "dcs-load {backend} {window}: counter window {secs:.1} s, key-version window {key_secs:.1} s \
         (ttl {} s, loop_wait {} s)",
        o.ttl, o.loop_wait
    );
    println!(
        "  primary {primary} WAL: {wal_bytes} bytes written from {lsn0} over the key-version window"
    );
    println!("  keys written: {}", keys.describe());
    let member_writes_per_loop: Vec<(String, f64)> = c
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                per_loop(keys.member(&n.name) as f64, key_secs),
            )
        })
        .collect();
    let other_writes: Vec<String> = keys
        .writes
        .iter()
        .filter(|(k, n)| !k.starts_with("members/") && **n > 0)
        .map(|(k, n)| format!("{k} {:.2}/loop", per_loop(*n as f64, key_secs)))
        .collect();
    let other_writes = if other_writes.is_empty() {
        "none".to_string()
    } else {
        other_writes.join(", ")
    };

    let (requests_per_s, keepalives_per_loop) = match (&server0, &server1) {
        (ServerSample::Etcd(a), ServerSample::Etcd(b)) => {
            let d = |name: &str, labels: &[(&str, &str)]| b.sum(name, labels) - a.sum(name, labels);
            let keepalives = d(
                "grpc_server_msg_received_total",
                &[("grpc_method", "LeaseKeepAlive")],
            );
            let all = d("grpc_server_msg_received_total", &[]);
            println!("  server-wide counters (raw deltas; per daemon = total / {daemons}):");
            let show = |what: &str, delta: f64| {
                println!(
                    "    {what:<58} +{delta:<6} {:>6.2}/s per daemon, {:>5.2} per loop",
                    delta / secs / daemons,
                    per_loop(delta / daemons, secs)
                );
            };
            show("gRPC messages received, all methods", all);
            show("LeaseKeepAlive stream messages received", keepalives);
            show(
                "etcd_debugging_lease_renewed_total",
                d("etcd_debugging_lease_renewed_total", &[]),
            );
            for method in ["Range", "Txn", "Put", "DeleteRange", "LeaseGrant", "Watch"] {
                show(
                    &format!("grpc_server_handled_total{{grpc_method=\"{method}\"}}"),
                    d("grpc_server_handled_total", &[("grpc_method", method)]),
                );
            }
            for name in [
                "etcd_mvcc_put_total",
                "etcd_mvcc_txn_total",
                "etcd_mvcc_range_total",
                "etcd_mvcc_delete_total",
                "etcd_debugging_mvcc_events_total",
            ] {
                if b.has(name) {
                    show(name, d(name, &[]));
                } else {
                    println!("    {name:<58} (not exported by this etcd)");
                }
            }
            show(
                "Watch stream messages sent (events batches)",
                d("grpc_server_msg_sent_total", &[("grpc_method", "Watch")]),
            );
            (
                all / secs / daemons,
                Some(per_loop(keepalives / daemons, secs)),
            )
        }
        (ServerSample::ZooKeeper(a), ServerSample::ZooKeeper(b)) => {
            let d = |name: &str| {
                b.mntr.get(name).copied().unwrap_or(0.0) - a.mntr.get(name).copied().unwrap_or(0.0)
            };
            let sum_d = |suffix: &str| -> f64 {
                b.mntr
                    .keys()
                    .filter(|k| k.starts_with("zk_cnt_") && k.ends_with(suffix))
                    .map(|k| d(k))
                    .sum()
            };
            let has = |suffix: &str| {
                b.mntr
                    .keys()
                    .any(|k| k.starts_with("zk_cnt_") && k.ends_with(suffix))
            };
            println!("  server-wide mntr counters (raw deltas; per daemon = total / {daemons}):");
            let show = |what: &str, delta: f64| {
                println!(
                    "    {what:<58} +{delta:<6} {:>6.2}/s per daemon, {:>5.2} per loop",
                    delta / secs / daemons,
                    per_loop(delta / daemons, secs)
                );
            };
            let received = d("zk_packets_received");
            show(
                "zk_packets_received (includes this bench's 2 four-letter words)",
                received,
            );
            show("zk_packets_sent", d("zk_packets_sent"));
            let updates = d("zk_cnt_updatelatency");
            let reads = d("zk_cnt_readlatency");
            show("zk_cnt_updatelatency (writes: txns with a header)", updates);
            show(
                "zk_cnt_readlatency (requests without a txn: reads, pings)",
                reads,
            );
            let ns_reads = sum_d("_read_per_namespace");
            let pings = if has("_read_per_namespace") {
                show("zk_cnt_*_read_per_namespace (reads of a path)", ns_reads);
                show(
                    "zk_cnt_*_write_per_namespace (writes of a path)",
                    sum_d("_write_per_namespace"),
                );
                let pings = (reads - ns_reads).max(0.0);
                show("pings = readlatency − namespace reads", pings);
                Some(per_loop(pings / daemons, secs))
            } else {
                println!("    (no *_read_per_namespace counters: pings not separable from reads)");
                None
            };
            show(
                "watch notifications (zk_cnt_node_*_watch_count)",
                sum_d("_watch_count"),
            );
            println!("  per daemon, from cons (its own connection):");
            let mut total = 0.0;
            for n in &c.nodes {
                match (a.by_daemon.get(&n.name), b.by_daemon.get(&n.name)) {
                    (Some(x), Some(y)) => {
                        let (recv, sent, note) =
                            if x.session == y.session && x.client_port == y.client_port {
                                (y.received - x.received, y.sent - x.sent, "")
                            } else {
                                (
                                    y.received,
                                    y.sent,
                                    " (reconnected in the window: lower bound)",
                                )
                            };
                        total += recv as f64;
                        println!(
                            "    {:<8} session {} received +{recv} ({:.2}/s, {:.2} per loop), sent +{sent}{note}",
                            n.name,
                            y.session,
                            recv as f64 / secs,
                            per_loop(recv as f64, secs)
                        );
                    }
                    _ => println!(
                        "    {:<8} connection not found in cons at both ends",
                        n.name
                    ),
                }
            }
            (total / secs / daemons, pings)
        }
        _ => return Err("the two samples are of different servers".into()),
    };
    let writes_line: Vec<String> = member_writes_per_loop
        .iter()
        .map(|(n, w)| format!("{n} {w:.2}"))
        .collect();
    println!(
        "dcs-load {backend} {window}: per daemon {requests_per_s:.2} requests/s ({:.2} per loop), \
         {} per loop (target ≤ 1), member-key writes per loop: {} (target: only when the member's data changed); \
         other keys: {other_writes}",
        requests_per_s * o.loop_wait as f64,
        match (backend, keepalives_per_loop) {
            ("etcd", Some(k)) => format!("{k:.2} lease keep-alives"),
            (_, Some(k)) => format!("{k:.2} pings"),
            (_, None) => "pings not separable,".to_string(),
        },
        writes_line.join(", "),
    );
    Ok(Row {
        backend,
        window,
        secs,
        wal_bytes,
        requests_per_s,
        keepalives_per_loop,
        member_writes_per_loop,
        other_writes,
    })
}

/// The server's counters at one instant.
enum ServerSample {
    Etcd(Prometheus),
    ZooKeeper(ZkSample),
}

struct ZkSample {
    mntr: BTreeMap<String, f64>,
    /// Daemon name → its connection.
    by_daemon: BTreeMap<String, ZkConnection>,
}

impl ServerSample {
    fn take(c: &TestCluster) -> Result<ServerSample, String> {
        let kind = c.dcs.kind();
        // Through `kind()` and the accessors, not a match on `DcsServer`: the harness may grow
        // more server shapes, which this part does not measure.
        if kind == DcsKind::Etcd {
            let port = c.dcs.etcd().client_port;
            Ok(ServerSample::Etcd(dcs_counters::etcd_metrics(port)?))
        } else if kind == DcsKind::ZooKeeper {
            Ok(ServerSample::ZooKeeper(ZkSample::take(c)?))
        } else {
            Err(format!("no DCS counters for {kind:?}"))
        }
    }
}

impl ZkSample {
    /// `mntr`, and `cons` with each connection given to the daemon owning its socket.
    fn take(c: &TestCluster) -> Result<ZkSample, String> {
        let host_port = c.dcs.host_port();
        let port: u16 = host_port
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| format!("ZooKeeper address without a port: {host_port}"))?;
        let mntr = dcs_counters::zk_mntr(port)?;
        let cons = dcs_counters::zk_cons(port)?;
        let daemons: Vec<(String, i32)> = c
            .nodes
            .iter()
            .filter_map(|n| n.daemon_pid().map(|p| (n.name.clone(), p)))
            .collect();
        let pids: Vec<i32> = daemons.iter().map(|(_, p)| *p).collect();
        let mut by_daemon = BTreeMap::new();
        for conn in cons {
            let owner = dcs_counters::socket_owner(conn.client_port, port, &pids);
            if let Some((name, _)) = daemons.iter().find(|(_, p)| Some(*p) == owner) {
                by_daemon.insert(name.clone(), conn);
            }
        }
        Ok(ZkSample { mntr, by_daemon })
    }
}

/// The summary table of every row.
pub fn print_summary(rows: &[Row], o: &LoadOpts) {
    println!();
    println!(
        "== dcs-load summary: 3 daemons, ttl {} s, loop_wait {} s, retry_timeout {} s, windows of {} s ==",
        o.ttl, o.loop_wait, o.retry, o.secs
    );
    println!(
        "(requests/s: etcd gRPC messages received / 3, ZooKeeper each daemon's own packets from cons; \
         keep-alives: etcd LeaseKeepAlive messages / 3, ZooKeeper pings / 3)"
    );
    println!(
        "{:<10} {:<7} {:>6} {:>10} {:>11} {:>12} {:>20}  other keys written",
        "backend", "window", "secs", "WAL", "requests/s", "keep-alives", "member writes"
    );
    println!(
        "{:<10} {:<7} {:>6} {:>10} {:>11} {:>12} {:>20}  per loop",
        "", "", "", "bytes", "per daemon", "per loop", "per loop (node1..3)"
    );
    for r in rows {
        let writes: Vec<String> = r
            .member_writes_per_loop
            .iter()
            .map(|(_, w)| format!("{w:.2}"))
            .collect();
        println!(
            "{:<10} {:<7} {:>6.1} {:>10} {:>11.2} {:>12} {:>20}  {}",
            r.backend,
            r.window,
            r.secs,
            r.wal_bytes,
            r.requests_per_s,
            r.keepalives_per_loop
                .map(|k| format!("{k:.2}"))
                .unwrap_or_else(|| "n/a".into()),
            writes.join(" "),
            r.other_writes
        );
    }
    println!("targets: ≤ 1 lease keep-alive per loop; member-key writes only when the member's data changed (idle ≈ 0)");
}
