//! etcd plus n spilo nodes, one scope per test.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bins::bins;
use crate::dcs::DcsServer;
use crate::node::{Node, NodeOpts};
use crate::util::{note, poll, run_with_timeout, wait_for, TempRoot};

/// How a test cluster is made.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Goes into the scope and the temp dir name (the test's theme, e.g. `failover`).
    pub label: String,
    /// Settings shared by every node.
    pub node: NodeOpts,
}

impl ClusterOpts {
    /// Default node settings (ttl 10, loop_wait 2, retry_timeout 3).
    pub fn named(label: &str) -> ClusterOpts {
        ClusterOpts {
            label: label.to_string(),
            node: NodeOpts::default(),
        }
    }

    /// Sets ttl, loop_wait and retry_timeout.
    pub fn timing(mut self, ttl: u64, loop_wait: u64, retry_timeout: u64) -> ClusterOpts {
        self.node.ttl = ttl;
        self.node.loop_wait = loop_wait;
        self.node.retry_timeout = retry_timeout;
        self
    }
}

/// The cluster. Dropping it kills every process it started (daemons, then PostgreSQL, then
/// etcd); the temp root is removed on success and kept (with log tails printed) on failure.
pub struct TestCluster {
    /// The cluster name (unique per test).
    pub scope: String,
    /// The nodes, `node1`…`nodeN` first, extra ones after.
    pub nodes: Vec<Node>,
    /// The DCS (etcd or ZooKeeper, from `SPILO_TEST_DCS`).
    pub dcs: DcsServer,
    /// As given.
    pub opts: ClusterOpts,
    /// When it started (its lifetime goes into `SPILO_TEST_TIMES`, see [`record_time`]).
    started: Instant,
    // Declared last so that it is removed after the processes are gone.
    root: TempRoot,
}

/// Appends `seconds test scope` to the file `SPILO_TEST_TIMES` names, if set (the test is the
/// running thread's name, which libtest sets to the test's path): `scripts/test.sh` prints the
/// slowest tests from it, to show where CI's time goes.
pub fn record_time(seconds: f64, scope: &str) {
    use std::io::Write;
    let Some(path) = std::env::var_os("SPILO_TEST_TIMES") else {
        return;
    };
    let test = thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace(char::is_whitespace, "_");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{seconds:.1} {test} {scope}");
    }
}

impl TestCluster {
    /// Starts the DCS `SPILO_TEST_DCS` names and `n` daemons (`node1`…) at once; returns
    /// without waiting for them.
    pub fn start(n: usize, opts: ClusterOpts) -> TestCluster {
        TestCluster::start_with(n, opts, DcsServer::start_in)
    }

    /// Like [`TestCluster::start`], on the DCS `make_dcs` starts (given the temp root): for
    /// the tests of one DCS shape, e.g. a ZooKeeper ensemble or a 3-member etcd.
    pub fn start_with(
        n: usize,
        opts: ClusterOpts,
        make_dcs: impl FnOnce(&std::path::Path) -> DcsServer,
    ) -> TestCluster {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let bins = bins(); // fail early, before anything runs, when the binaries are missing
        let scope = format!(
            "{}-{}-{}",
            opts.label,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let root = TempRoot::new(&format!("spilo-it-{}-", opts.label));
        note(format!(
            "cluster {scope}: root {}, binaries {}",
            root.path().display(),
            bins.dir.display()
        ));
        let dcs = make_dcs(root.path());
        note(format!(
            "cluster {scope}: {:?} at {}",
            dcs.kind(),
            dcs.host_port()
        ));
        let mut c = TestCluster {
            scope,
            nodes: Vec::new(),
            dcs,
            opts,
            started: Instant::now(),
            root,
        };
        for i in 1..=n {
            let name = format!("node{i}");
            let idx = c.add_node(&name, &name, c.opts.node.clone());
            c.nodes[idx].start();
        }
        c
    }

    /// Creates (does not start) one more node with its own directory `dir_name`, ports and data
    /// dir; returns its index in `nodes`.
    pub fn add_node(&mut self, dir_name: &str, name: &str, opts: NodeOpts) -> usize {
        let node = Node::create(
            self.root.path(),
            dir_name,
            &self.scope,
            name,
            &self.dcs.endpoint(),
            opts,
        );
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The temp root.
    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    /// The first node called `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name}"))
    }

    /// The first node called `name`, mutable.
    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name}"))
    }

    /// Every node's name except `name`'s.
    pub fn others(&self, name: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.name != name)
            .map(|n| n.name.clone())
            .collect()
    }

    /// One line per node: `/patroni` role/state/timeline, or why it is unknown.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        for n in &self.nodes {
            let s = match n.patroni() {
                Ok(v) => format!(
                    "{}: role={} state={} timeline={}",
                    n.name, v["role"], v["state"], v["timeline"]
                ),
                Err(e) => format!("{}: /patroni unavailable ({e})", n.name),
            };
            out.push(s);
        }
        out.join("; ")
    }

    /// Waits until exactly one node reports `role: primary` and `state: running` on `/patroni`
    /// and is out of recovery; returns its name.
    pub fn wait_for_primary(&self, timeout: Duration) -> String {
        self.wait_for_primary_except(&[], timeout)
    }

    /// [`TestCluster::wait_for_primary`], ignoring the nodes in `exclude` (e.g. a killed one
    /// whose daemon is gone).
    pub fn wait_for_primary_except(&self, exclude: &[&str], timeout: Duration) -> String {
        let name = wait_for(
            &format!("exactly one primary in {}", self.scope),
            timeout,
            || {
                let mut primaries = Vec::new();
                for n in self
                    .nodes
                    .iter()
                    .filter(|n| !exclude.contains(&n.name.as_str()))
                {
                    if let Ok(v) = n.patroni() {
                        let role = v["role"].as_str().unwrap_or_default();
                        if (role == "primary" || role == "master") && v["state"] == "running" {
                            primaries.push(n.name.clone());
                        }
                    }
                }
                match primaries.as_slice() {
                    [one] => match self.node(one).in_recovery() {
                        Ok(false) => Ok(one.clone()),
                        Ok(true) => Err(format!(
                            "{one} says primary but is in recovery; {}",
                            self.describe()
                        )),
                        Err(e) => Err(format!(
                            "{one} says primary but SQL fails: {e}; {}",
                            self.describe()
                        )),
                    },
                    [] => Err(format!("no primary yet; {}", self.describe())),
                    many => Err(format!(
                        "{} primaries {many:?}; {}",
                        many.len(),
                        self.describe()
                    )),
                }
            },
        );
        note(format!("primary is {name}"));
        name
    }

    /// Polls INSERTs on every node not in `exclude` until one is acknowledged; returns that
    /// node and the time it took. Panics after `timeout`.
    pub fn wait_for_writer(&self, exclude: &[&str], timeout: Duration) -> (String, Duration) {
        let r = poll(timeout, Duration::from_millis(200), || {
            for n in self
                .nodes
                .iter()
                .filter(|n| !exclude.contains(&n.name.as_str()))
            {
                if n.try_write("harness_write_probe") {
                    return Ok(n.name.clone());
                }
            }
            Err(self.describe())
        });
        match r {
            Ok((name, took)) => {
                note(format!("{name} accepts writes after {took:?}"));
                (name, took)
            }
            Err(last) => panic!(
                "no node (excluding {exclude:?}) accepted an INSERT within {timeout:?}; last states: {last}"
            ),
        }
    }

    /// Waits for a primary, then for every other node to stream from it.
    pub fn wait_for_replicas_streaming(&self, timeout: Duration) -> String {
        let start = Instant::now();
        let primary = self.wait_for_primary(timeout);
        let replicas = self.others(&primary);
        let refs: Vec<&str> = replicas.iter().map(String::as_str).collect();
        self.wait_for_streaming(
            &primary,
            &refs,
            timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_secs(10)),
        );
        primary
    }

    /// Waits until the primary's `pg_stat_replication` shows at least `replicas.len()` streaming
    /// walsenders and every replica reports `role: replica` on `/patroni` and a WAL receiver
    /// streaming from the primary's port.
    pub fn wait_for_streaming(&self, primary: &str, replicas: &[&str], timeout: Duration) {
        let p = self.node(primary);
        wait_for(
            &format!("{replicas:?} streaming from {primary}"),
            timeout,
            || {
                let rows = p.sql("SELECT application_name, state FROM pg_stat_replication")?;
                let streaming = rows
                    .iter()
                    .filter(|r| r.get(1).cloned().flatten().as_deref() == Some("streaming"))
                    .count();
                if streaming < replicas.len() {
                    return Err(format!(
                        "{primary} pg_stat_replication (application_name, state): {rows:?}"
                    ));
                }
                for r in replicas {
                    let n = self.node(r);
                    let v = n.patroni()?;
                    if v["role"] != "replica" {
                        return Err(format!(
                            "{r}: /patroni role {} state {}",
                            v["role"], v["state"]
                        ));
                    }
                    let rx = n.sql("SELECT status, sender_port FROM pg_stat_wal_receiver")?;
                    let ok = rx.iter().any(|row| {
                        row.first().cloned().flatten().as_deref() == Some("streaming")
                            && row.get(1).cloned().flatten() == Some(p.pg_port.to_string())
                    });
                    if !ok {
                        return Err(format!("{r}: pg_stat_wal_receiver (status, sender_port) = {rx:?}, want streaming from {}", p.pg_port));
                    }
                }
                Ok(())
            },
        );
        note(format!("{replicas:?} stream from {primary}"));
    }

    /// Waits until `node` has a row `v = value` in `table`.
    pub fn wait_for_value(&self, node: &str, table: &str, value: &str, timeout: Duration) {
        let n = self.node(node);
        wait_for(
            &format!("row {value:?} of {table} on {node}"),
            timeout,
            || match n.has_value(table, value) {
                Ok(true) => Ok(()),
                Ok(false) => Err("not there yet".into()),
                Err(e) => Err(e),
            },
        );
    }

    /// `/service/<scope>/<suffix>`.
    pub fn dcs_key(&self, suffix: &str) -> String {
        format!("/service/{}/{suffix}", self.scope)
    }

    /// The leader key's value (the leader's member name): read with etcdctl on a single etcd,
    /// through `spiloctl list` on other stores.
    pub fn leader_from_dcs(&self) -> Result<Option<String>, String> {
        match &self.dcs {
            DcsServer::Etcd(e) | DcsServer::EtcdViaPlugin(e, _) => e.get(&self.dcs_key("leader")),
            DcsServer::EtcdCluster(_)
            | DcsServer::ZooKeeper(_)
            | DcsServer::ZooKeeperEnsemble(_) => {
                let rows = self.spiloctl_list_json()?;
                Ok(rows
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["Role"] == "Leader")
                    .and_then(|r| r["Member"].as_str().map(str::to_string)))
            }
        }
    }

    /// Runs `spiloctl -c <first node's config> ARGS` (30 s bound).
    pub fn spiloctl(&self, args: &[&str]) -> Result<std::process::Output, String> {
        let mut cmd = Command::new(&bins().spiloctl);
        cmd.arg("-c")
            .arg(&self.nodes[0].config_path)
            .args(args)
            .current_dir(self.root.path());
        run_with_timeout(cmd, Duration::from_secs(30))
    }

    /// Runs `spiloctl -c <first node's config> ARGS` as the `postgres` OS user (for commands
    /// that start PostgreSQL; `timeout` bound).
    pub fn spiloctl_as_postgres(
        &self,
        args: &[&str],
        timeout: Duration,
    ) -> Result<std::process::Output, String> {
        let mut cmd = crate::util::postgres_command(&bins().spiloctl);
        cmd.arg("-c").arg(&self.nodes[0].config_path).args(args);
        run_with_timeout(cmd, timeout)
    }

    /// `spiloctl -c CFG list --format json`, parsed.
    pub fn spiloctl_list_json(&self) -> Result<Value, String> {
        let out = self.spiloctl(&["list", "--format", "json"])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "spiloctl list --format json: {}; stdout: {stdout}; stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_str(&stdout)
            .map_err(|e| format!("spiloctl list --format json printed non-JSON ({e}): {stdout}"))
    }

    /// Prints the temp root and the tail of every log.
    pub fn dump_logs(&self, lines: usize) {
        eprintln!(
            "[harness] ===== cluster {} (root {}) =====",
            self.scope,
            self.root.path().display()
        );
        for n in &self.nodes {
            eprintln!(
                "[harness] ----- {} log ({}), last {lines} lines -----\n{}",
                n.name,
                n.log_path.display(),
                n.log_tail(lines)
            );
        }
        let (what, text) = self.dcs.log_tail(15);
        eprintln!("[harness] ----- {what}, last 15 lines -----\n{text}");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let failed = thread::panicking();
        if failed {
            eprintln!("[harness] state at failure: {}", self.describe());
        }
        for n in &mut self.nodes {
            n.kill_daemon_now();
        }
        for n in &mut self.nodes {
            n.cleanup();
        }
        self.dcs.kill();
        if failed {
            self.dump_logs(50);
        }
        record_time(self.started.elapsed().as_secs_f64(), &self.scope);
    }
}
