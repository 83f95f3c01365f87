//! `spiloctl list --format json` on a running 3-node cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use spilo_tests::{wait_for, ClusterOpts, TestCluster};

use crate::BOOTSTRAP;

#[test]
fn spiloctl_list_json_shows_three_members_one_leader() {
    let c = TestCluster::start(3, ClusterOpts::named("ctl"));
    let primary = c.wait_for_replicas_streaming(BOOTSTRAP);
    let tl = c.node(&primary).timeline().expect("primary's timeline");

    let members = wait_for(
        "spiloctl list to show 1 Leader and 2 streaming/running Replicas",
        Duration::from_secs(60),
        || {
            let v = c.spiloctl_list_json()?;
            let arr = v
                .as_array()
                .ok_or_else(|| format!("not an array: {v}"))?
                .clone();
            let leaders = arr.iter().filter(|m| m["Role"] == "Leader").count();
            let ready_replicas = arr
                .iter()
                .filter(|m| {
                    m["Role"] == "Replica" && (m["State"] == "streaming" || m["State"] == "running")
                })
                .count();
            if arr.len() == 3 && leaders == 1 && ready_replicas == 2 {
                Ok(arr)
            } else {
                Err(format!("{v}"))
            }
        },
    );

    let names: BTreeSet<&str> = members
        .iter()
        .filter_map(|m| m["Member"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["node1", "node2", "node3"]),
        "members: {members:?}"
    );
    for m in &members {
        let name = m["Member"].as_str().unwrap_or_default();
        assert_eq!(m["Cluster"], c.scope.as_str(), "{m}");
        let port = c.node(name).pg_port;
        let host = m["Host"].as_str().unwrap_or_default();
        assert!(host.contains("127.0.0.1"), "Host of {name}: {m}");
        assert!(
            host.contains(&port.to_string()),
            "Host of {name} lacks its port {port}: {m}"
        );
        assert_eq!(m["TL"].as_u64(), Some(tl), "TL of {name}: {m}");
        assert!(
            m.get("Tags").is_none() || m["Tags"].is_object() || m["Tags"].is_null(),
            "Tags of {name}: {m}"
        );
        let want_role = if name == primary { "Leader" } else { "Replica" };
        assert_eq!(m["Role"], want_role, "{m}");
        if want_role == "Replica" {
            let lag = &m["Lag in MB"];
            assert!(
                lag.is_number() || *lag == "unknown",
                "Lag in MB of {name}: {m}"
            );
        }
    }

    // The table format works too and names every member.
    let out = c.spiloctl(&["list"]).expect("spiloctl list");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "spiloctl list: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for n in ["node1", "node2", "node3"] {
        assert!(table.contains(n), "spiloctl list lacks {n}:\n{table}");
    }
}
