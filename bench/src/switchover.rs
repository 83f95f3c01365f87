//! Switchover benchmark: `POST /switchover` to the leader → first acknowledged write on the
//! candidate, over N rounds, for spilo and — on the same etcd, PostgreSQL and YAML — for
//! Patroni from PyPI (`/opt/spilo-test-venv`, installed by `scripts/install-deps.sh`).

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use spilo_tests::pg::{simple_query, PgTarget};
use spilo_tests::util::postgres_command;
use spilo_tests::{Etcd, Node, NodeOpts, TempRoot};

/// One node as the benchmark sees it.
pub struct Endpoint {
    /// Member name.
    pub name: String,
    /// REST port.
    pub api: u16,
    /// PostgreSQL port.
    pub pg: u16,
}

fn target(port: u16) -> PgTarget {
    spilo_tests::pg::superuser(port)
}

fn patroni(api: u16) -> Option<Value> {
    spilo_tests::http::get(api, "/patroni").ok().map(|(_, v)| v)
}

/// Waits until one node is primary and all others are streaming replicas; returns the primary.
fn settled(nodes: &[Endpoint], timeout: Duration) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let states: Vec<Option<Value>> = nodes.iter().map(|n| patroni(n.api)).collect();
        let primaries: Vec<&Endpoint> = nodes
            .iter()
            .zip(&states)
            .filter(|(_, s)| {
                s.as_ref()
                    .is_some_and(|v| v["role"] == "primary" && v["state"] == "running")
            })
            .map(|(n, _)| n)
            .collect();
        let streaming = states
            .iter()
            .filter(|s| {
                s.as_ref().is_some_and(|v| {
                    v["role"] == "replica" && v["replication_state"] == "streaming"
                })
            })
            .count();
        if primaries.len() == 1 && streaming == nodes.len() - 1 {
            return Some(primaries[0].name.clone());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Runs `rounds` switchovers, rotating the candidate; the seconds each took.
pub fn rounds(nodes: &[Endpoint], rounds: usize, label: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for round in 1..=rounds {
        let Some(leader) = settled(nodes, Duration::from_secs(180)) else {
            println!("{label} switchover round {round}: the cluster did not settle");
            break;
        };
        std::thread::sleep(Duration::from_secs(2));
        let candidates: Vec<&Endpoint> = nodes.iter().filter(|n| n.name != leader).collect();
        let cand = candidates[round % candidates.len()];
        let leader_api = nodes
            .iter()
            .find(|n| n.name == leader)
            .map(|n| n.api)
            .unwrap_or(0);
        let cand_pg = cand.pg;
        let t0 = Instant::now();
        let prober = std::thread::spawn(move || {
            while t0.elapsed() < Duration::from_secs(120) {
                let ok = simple_query(
                    &target(cand_pg),
                    "CREATE TABLE IF NOT EXISTS bench_sw (at timestamptz); INSERT INTO bench_sw VALUES (now())",
                    Duration::from_millis(500),
                )
                .is_ok();
                if ok {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        });
        let body = format!(r#"{{"leader":"{leader}","candidate":"{}"}}"#, cand.name);
        let answer = spilo_tests::http::call(
            leader_api,
            "POST",
            "/switchover",
            Some(&body),
            None,
            Duration::from_secs(120),
        );
        let took = prober.join().ok().flatten();
        match (took, answer) {
            (Some(t), Ok(r)) => {
                println!(
                    "{label} switchover round {round}: {leader} -> {}: write accepted after {:.3} s ({} {})",
                    cand.name,
                    t.as_secs_f64(),
                    r.status,
                    r.text().trim()
                );
                out.push(t.as_secs_f64());
            }
            (t, a) => {
                println!("{label} switchover round {round}: failed (write: {t:?}, answer: {a:?})")
            }
        }
    }
    out
}

/// Patroni nodes on the same YAML the spilo harness renders.
pub struct PatroniCluster {
    /// The nodes' endpoints.
    pub nodes: Vec<Endpoint>,
    children: Vec<Child>,
    // Dropping a harness node kills every process under its directory (Patroni, PostgreSQL).
    _handles: Vec<Node>,
    _etcd: Etcd,
    _root: TempRoot,
}

impl PatroniCluster {
    /// Starts etcd and `n` Patroni daemons, or None when Patroni is not installed.
    pub fn start(n: usize, opts: NodeOpts) -> Option<PatroniCluster> {
        let bin = Path::new("/opt/spilo-test-venv/bin/patroni");
        if !bin.exists() {
            println!(
                "Patroni is not installed at {} (scripts/install-deps.sh installs it)",
                bin.display()
            );
            return None;
        }
        let root = TempRoot::new("spilo-bench-patroni-");
        let etcd = Etcd::start_in(root.path());
        let mut nodes = Vec::new();
        let mut children = Vec::new();
        let mut handles = Vec::new();
        for i in 1..=n {
            let node = Node::create(
                root.path(),
                &format!("p{i}"),
                "patronibench",
                &format!("p{i}"),
                &spilo_tests::DcsEndpoint::Etcd(etcd.host_port()),
                opts.clone(),
            );
            // Same YAML; Patroni also needs a socket directory the postgres user can write.
            let yaml = std::fs::read_to_string(&node.config_path).ok()?;
            let yaml = yaml.replace(
                "    shared_buffers: 32MB\n",
                "    shared_buffers: 32MB\n    unix_socket_directories: /tmp\n",
            );
            std::fs::write(&node.config_path, yaml).ok()?;
            let log = std::fs::File::create(node.dir.join("patroni.log")).ok()?;
            let log2 = log.try_clone().ok()?;
            let child = postgres_command(bin)
                .arg(&node.config_path)
                .current_dir(&node.dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .ok()?;
            children.push(child);
            nodes.push(Endpoint {
                name: node.name.clone(),
                api: node.api_port,
                pg: node.pg_port,
            });
            handles.push(node);
        }
        Some(PatroniCluster {
            nodes,
            children,
            _handles: handles,
            _etcd: etcd,
            _root: root,
        })
    }

    /// Resident memory of each Patroni daemon, in MB.
    pub fn rss_mb(&self) -> Vec<f64> {
        self.children
            .iter()
            .filter_map(|c| crate::rss_kb(c.id() as i32))
            .map(|kb| kb as f64 / 1024.0)
            .collect()
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
