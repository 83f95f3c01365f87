//! Where the proxy sends connections, as a pure function of the cluster in the DCS: read-write
//! to the leader once its member key says it runs as primary, read-only to the healthy
//! replicas within the lag limit (optionally the primary when none qualifies).

use crate::dcs::Cluster;

/// A member the proxy connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The member's name.
    pub member: String,
    /// `host:port` of its PostgreSQL (from the member key's `conn_url`).
    pub addr: String,
}

/// Both ports' targets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyRoutes {
    /// The primary (`None`: there is none, new read-write connections wait).
    pub rw: Option<Target>,
    /// The replicas, sorted by name.
    pub ro: Vec<Target>,
}

fn target(c: &Cluster, name: &str) -> Option<Target> {
    let (host, port) = c.member(name)?.host_port()?;
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some(Target {
        member: name.to_string(),
        addr,
    })
}

/// The routes for `c`.
pub fn routes(c: &Cluster, max_lag: u64, ro_fallback_primary: bool) -> ProxyRoutes {
    let leader = c.leader.as_ref().map(|l| l.name.as_str());
    // The leader key alone is not enough: a new leader is still a replica until its promotion
    // is done and its member key says so.
    let rw = leader.and_then(|l| {
        let m = c.member(l)?;
        (matches!(m.data.role.as_str(), "primary" | "master") && m.data.state == "running")
            .then(|| target(c, l))
            .flatten()
    });
    let mut ro: Vec<Target> = crate::lb::plan::healthy_replicas(c, leader.unwrap_or(""), max_lag)
        .iter()
        .filter_map(|n| target(c, n))
        .collect();
    if ro.is_empty() && ro_fallback_primary {
        ro.extend(rw.clone());
    }
    ProxyRoutes { rw, ro }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{Leader, Member, MemberData};

    fn member(name: &str, role: &str, port: u16, pos: u64) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                role: role.into(),
                state: "running".into(),
                conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
                xlog_location: Some(pos),
                ..serde_json::from_str("{}").expect("defaults")
            },
            version: 1,
            owned_by_us: false,
        }
    }

    fn cluster(leader_role: &str) -> Cluster {
        Cluster {
            leader: Some(Leader {
                name: "a".into(),
                version: 1,
                owned_by_us: false,
                term: None,
            }),
            members: vec![
                member("a", leader_role, 5432, 100),
                member("b", "replica", 5433, 100),
                member("c", "replica", 5434, 1),
            ],
            ..Cluster::default()
        }
    }

    #[test]
    fn read_write_goes_to_a_running_primary_and_read_only_to_close_replicas() {
        let r = routes(&cluster("primary"), 10, false);
        assert_eq!(
            r.rw.as_ref().map(|t| t.addr.as_str()),
            Some("127.0.0.1:5432")
        );
        assert_eq!(
            r.ro.iter().map(|t| t.member.as_str()).collect::<Vec<_>>(),
            vec!["b"]
        );
        let r = routes(&cluster("primary"), 1000, false);
        assert_eq!(r.ro.len(), 2);
    }

    #[test]
    fn a_leader_not_yet_promoted_gets_no_writes() {
        let r = routes(&cluster("replica"), 10, false);
        assert_eq!(r.rw, None);
        // And the leader is never a read-only target, even while still a replica.
        assert!(r.ro.iter().all(|t| t.member != "a"));
    }

    #[test]
    fn the_read_only_side_falls_back_to_the_primary_only_when_asked() {
        let mut c = cluster("primary");
        c.members.truncate(1);
        assert!(routes(&c, 10, false).ro.is_empty());
        let r = routes(&c, 10, true);
        assert_eq!(r.ro, r.rw.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn no_leader_means_no_writes_but_reads_go_on() {
        let mut c = cluster("primary");
        c.leader = None;
        c.members.remove(0);
        let r = routes(&c, 10, false);
        assert_eq!(r.rw, None);
        assert_eq!(r.ro.len(), 2);
    }
}
