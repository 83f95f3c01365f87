//! The checkers, from the root namespace: a split-brain prober per node (a write attempted
//! directly on every node every 20 ms, with the server's own clock in the answer), a
//! lost-write client (unique ids inserted at 50/s through whichever node is primary), and the
//! final convergence check.
//!
//! Every time is microseconds of the wall clock: the nodes share this host's clock, so the
//! server's `clock_timestamp()` and the fault times are comparable without skew.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spilo_tests::SUPERUSER_PASSWORD;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::nodes::PG_PORT;

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One write attempt on one node.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The server's `clock_timestamp()` while it executed the INSERT, when acknowledged.
    pub server: Option<i64>,
}

/// A `pg_is_in_recovery()` sample.
#[derive(Clone, Copy, Debug)]
pub struct Claim {
    /// When answered.
    pub at: i64,
    /// `true`: not in recovery (claims to be primary).
    pub primary: bool,
}

/// What the probers and the writer saw.
#[derive(Default)]
pub struct Record {
    /// Per node: every attempt, in order.
    pub attempts: Vec<Vec<Attempt>>,
    /// Per node: the claims-primary samples.
    pub claims: Vec<Vec<Claim>>,
    /// Ids the lost-write client sent.
    pub attempted: BTreeSet<i64>,
    /// Ids acknowledged, with the acknowledgement time.
    pub acked: Vec<(i64, i64)>,
    /// The last few errors, for the report.
    pub errors: Vec<String>,
}

/// Shared between the tasks and the orchestrator.
pub type Shared = Arc<Mutex<Record>>;

/// Connects to `ip` as the superuser.
pub async fn connect(ip: Ipv4Addr, timeout: Duration) -> Result<Client, String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(ip.to_string())
        .port(PG_PORT)
        .user("postgres")
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres")
        .application_name("spilo-chaos")
        .connect_timeout(timeout);
    let (client, conn) = tokio::time::timeout(timeout, cfg.connect(NoTls))
        .await
        .map_err(|_| format!("connect {ip}: no answer in {timeout:?}"))?
        .map_err(|e| format!("connect {ip}: {}", spilo_tests::pg::describe(&e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Runs `sql` with a timeout; the first column of every row.
pub async fn query(client: &Client, sql: &str, timeout: Duration) -> Result<Vec<String>, String> {
    let msgs = tokio::time::timeout(timeout, client.simple_query(sql))
        .await
        .map_err(|_| format!("no answer in {timeout:?}"))?
        .map_err(|e| spilo_tests::pg::describe(&e))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .collect())
}

/// The split-brain prober of node `idx` at `ip`: a write every 20 ms (1 s timeout), and a
/// `pg_is_in_recovery()` every 200 ms.
pub async fn probe(idx: usize, name: String, ip: Ipv4Addr, rec: Shared, stop: Arc<AtomicBool>) {
    let insert = format!(
        "INSERT INTO chaos_sb (node) VALUES ('{name}') \
         RETURNING (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
    );
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        if client.as_ref().map(|c| c.is_closed()).unwrap_or(true) {
            client = connect(ip, Duration::from_millis(500)).await.ok();
        }
        let Some(c) = client.as_ref() else {
            // Not reachable: a failed attempt (it ends the node's write window).
            rec.lock().expect("record lock").attempts[idx].push(Attempt { server: None });
            continue;
        };
        let r = query(c, &insert, Duration::from_secs(1)).await;
        let server = match &r {
            Ok(rows) => rows.first().and_then(|v| v.parse::<i64>().ok()),
            Err(_) => None,
        };
        let claim = if n.is_multiple_of(10) {
            query(c, "SELECT pg_is_in_recovery()", Duration::from_millis(500))
                .await
                .ok()
                .and_then(|rows| rows.first().cloned())
                .map(|v| Claim {
                    at: now_us(),
                    primary: v == "f",
                })
        } else {
            None
        };
        {
            let mut g = rec.lock().expect("record lock");
            g.attempts[idx].push(Attempt { server });
            if let Some(cl) = claim {
                g.claims[idx].push(cl);
            }
        }
        if let Err(e) = r {
            // A timeout or a broken connection: start over with a new one.
            if e.contains("no answer") || c.is_closed() {
                client = None;
            }
        }
    }
}

/// The lost-write client: ids 1, 2, … every 20 ms into `chaos_ids` on whichever node answers
/// `pg_is_in_recovery() = false` (2 s timeout; after an error it looks for the primary again).
pub async fn writer(nodes: Vec<(String, Ipv4Addr)>, rec: Shared, stop: Arc<AtomicBool>) {
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut id: i64 = 0;
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if client.as_ref().map(|c| c.is_closed()).unwrap_or(true) {
            client = None;
            for k in 0..nodes.len() {
                let (_, ip) = &nodes[(turn + k) % nodes.len()];
                if let Ok(c) = connect(*ip, Duration::from_millis(500)).await {
                    let rows = query(&c, "SELECT pg_is_in_recovery()", Duration::from_millis(500))
                        .await
                        .unwrap_or_default();
                    if rows.first().map(String::as_str) == Some("f") {
                        client = Some(c);
                        break;
                    }
                }
            }
            turn += 1;
        }
        let Some(c) = client.as_ref() else {
            continue;
        };
        id += 1;
        rec.lock().expect("record lock").attempted.insert(id);
        let sql = format!("INSERT INTO chaos_ids (id) VALUES ({id})");
        match query(c, &sql, Duration::from_secs(2)).await {
            Ok(_) => rec.lock().expect("record lock").acked.push((id, now_us())),
            Err(e) => {
                let mut g = rec.lock().expect("record lock");
                if g.errors.len() < 50 {
                    g.errors.push(format!("id {id}: {e}"));
                }
                client = None;
            }
        }
    }
}
