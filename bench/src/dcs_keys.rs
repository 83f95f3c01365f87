//! How often each key of a cluster was written, from the DCS's own per-key counters: etcd's
//! `version` (puts since the key was created) through `etcdctl`, ZooKeeper's `dataVersion`
//! (setData calls since the znode was created) through Debian's `zkCli.sh`.
//!
//! Both tools are run only outside the measured window, since they are DCS clients too.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use spilo_tests::util::run_with_timeout;
use spilo_tests::{DcsKind, Etcd, TestCluster};

/// Debian's ZooKeeper command-line client.
const ZKCLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";

/// One key's write counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersion {
    /// What identifies this incarnation of the key: etcd's `create_revision`, ZooKeeper's
    /// `cZxid`. A different value at the end means the key was deleted and made again.
    pub incarnation: String,
    /// Writes since that creation: etcd `version` (1 after the create), ZooKeeper
    /// `dataVersion` (0 after the create).
    pub version: u64,
}

/// Writes per key between two samples.
#[derive(Clone, Debug, Default)]
pub struct KeyWrites {
    /// Key (relative to `/service/<scope>/`) → writes in the window.
    pub writes: BTreeMap<String, u64>,
    /// Keys created, deleted or re-created in the window (their count is a lower bound).
    pub recreated: Vec<String>,
}

impl KeyWrites {
    /// Counts what changed from `start` to `end`.
    pub fn between(
        start: &BTreeMap<String, KeyVersion>,
        end: &BTreeMap<String, KeyVersion>,
    ) -> KeyWrites {
        let mut out = KeyWrites::default();
        for (key, e) in end {
            match start.get(key) {
                Some(s) if s.incarnation == e.incarnation => {
                    out.writes
                        .insert(key.clone(), e.version.saturating_sub(s.version));
                }
                _ => {
                    out.writes.insert(key.clone(), e.version + 1);
                    out.recreated.push(key.clone());
                }
            }
        }
        for key in start.keys().filter(|k| !end.contains_key(*k)) {
            out.recreated.push(format!("{key} (deleted)"));
        }
        out
    }

    /// Writes to `members/<name>`.
    pub fn member(&self, name: &str) -> u64 {
        self.writes
            .get(&format!("members/{name}"))
            .copied()
            .unwrap_or(0)
    }

    /// Every key written at least once, `key ×n`, for the report.
    pub fn describe(&self) -> String {
        let written: Vec<String> = self
            .writes
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        let mut s = if written.is_empty() {
            "no key written".to_string()
        } else {
            written.join(", ")
        };
        if !self.recreated.is_empty() {
            s.push_str(&format!("; re-created: {}", self.recreated.join(", ")));
        }
        s
    }
}

/// Every key under the cluster's prefix with its write counter.
pub fn sample(c: &TestCluster) -> Result<BTreeMap<String, KeyVersion>, String> {
    // Through `kind()` and the accessors, not a match on `DcsServer`: the harness may grow
    // more server shapes, which this bench does not measure.
    let kind = c.dcs.kind();
    if kind == DcsKind::Etcd {
        etcd_versions(c.dcs.etcd(), &c.dcs_key(""))
    } else if kind == DcsKind::ZooKeeper {
        zookeeper_versions(&c.dcs.host_port(), &c.dcs_key(""))
    } else {
        Err(format!("no key sampling for {kind:?}"))
    }
}

/// `etcdctl get PREFIX --prefix --keys-only`, then `get KEY -w json` for each.
fn etcd_versions(e: &Etcd, prefix: &str) -> Result<BTreeMap<String, KeyVersion>, String> {
    let keys = e.etcdctl(&["get", prefix, "--prefix", "--keys-only"])?;
    let mut out = BTreeMap::new();
    for key in keys.lines().filter(|l| !l.is_empty()) {
        let json = e.etcdctl(&["get", key, "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&json)
            .map_err(|err| format!("etcdctl get {key} -w json: {err}: {json}"))?;
        // A key gone between the listing and the read is skipped.
        let Some(kv) = v["kvs"].get(0) else { continue };
        out.insert(
            key.trim_start_matches(prefix).to_string(),
            KeyVersion {
                incarnation: kv["create_revision"].to_string(),
                version: kv["version"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// zkCli `ls -R`, then `stat` of each znode.
fn zookeeper_versions(
    host_port: &str,
    prefix: &str,
) -> Result<BTreeMap<String, KeyVersion>, String> {
    let root = prefix.trim_end_matches('/');
    let listing = zkcli(host_port, &format!("ls -R {root}"))?;
    let mut out = BTreeMap::new();
    for path in listing
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix))
    {
        let stat = zkcli(host_port, &format!("stat {path}"))?;
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix('='))
                .map(|v| v.trim().to_string())
        };
        // A znode gone between the listing and the stat is skipped.
        let (Some(czxid), Some(version)) = (field("cZxid"), field("dataVersion")) else {
            continue;
        };
        out.insert(
            path.trim_start_matches(prefix).to_string(),
            KeyVersion {
                incarnation: czxid,
                version: version.parse().unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// Runs one zkCli command and `quit` (which closes the session, so no session expiry lands in
/// a later window); its stdout.
fn zkcli(host_port: &str, command: &str) -> Result<String, String> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "printf '%s\\nquit\\n' '{command}' | {ZKCLI} -server {host_port}"
        ))
        .env("ZOO_LOG_DIR", std::env::temp_dir());
    let out = run_with_timeout(cmd, Duration::from_secs(60))?;
    if !out.status.success() {
        return Err(format!(
            "zkCli {command}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
