//! What the load balancers should route, as a pure function of the cluster as this node sees
//! it: the leader routes read-write traffic to itself and read-only traffic to the healthy
//! replicas close enough behind it; any other node routes nothing (it holds no term).

use spilo_sdk::Term;

use crate::dcs::{Cluster, Member};

/// The routes one leader term asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    /// The member receiving read-write traffic (`None`: nobody, a leader stepping down).
    pub primary: Option<String>,
    /// The members receiving read-only traffic, sorted.
    pub replicas: Vec<String>,
    /// The leader term the routes are sent with.
    pub term: Term,
}

/// What this node knows about itself.
#[derive(Clone, Copy, Debug)]
pub struct Leading {
    /// This node holds the leader key with a lease renewed in this cycle.
    pub holds_lock: bool,
    /// Its PostgreSQL runs as a primary (not in recovery, no demotion under way).
    pub primary_running: bool,
    /// It is about to stop being the primary (a demotion or hand-over is in this cycle's
    /// plan): read-write traffic leaves it first.
    pub stepping_down: bool,
}

/// The member-key field a backend knows members by (`None`: their names).
pub type Addressing<'a> = Option<&'a str>;

/// The routes this node should ask for, or `None` when it has no term to ask with (not the
/// leader, or the DCS reports no term).
pub fn desired(
    cluster: Option<&Cluster>,
    me: &str,
    leading: Leading,
    max_lag: u64,
) -> Option<Routes> {
    let c = cluster?;
    let leader = c.leader.as_ref()?;
    if leader.name != me || !leader.owned_by_us || !leading.holds_lock {
        return None;
    }
    let term = leader.term_for_side_effects().ok()?;
    if leading.stepping_down || !leading.primary_running {
        return Some(Routes {
            primary: None,
            replicas: healthy_replicas(c, me, max_lag),
            term,
        });
    }
    Some(Routes {
        primary: Some(me.to_string()),
        replicas: healthy_replicas(c, me, max_lag),
        term,
    })
}

/// Replicas fit for read-only traffic: running, in recovery, not tagged `noloadbalance`, and
/// no more than `max_lag` bytes behind the primary's position (a replica with no reported
/// position is left out).
pub fn healthy_replicas(c: &Cluster, me: &str, max_lag: u64) -> Vec<String> {
    let leader_pos = c
        .member(me)
        .and_then(|m| m.data.xlog_location)
        .or_else(|| c.status.as_ref().and_then(|s| s.optime));
    let mut out: Vec<String> = c
        .members
        .iter()
        .filter(|m| m.name != me)
        .filter(|m| serves_reads(m))
        .filter(|m| match (leader_pos, m.data.xlog_location) {
            (Some(l), Some(r)) => l.saturating_sub(r) <= max_lag,
            (None, Some(_)) => true,
            (_, None) => false,
        })
        .map(|m| m.name.clone())
        .collect();
    out.sort();
    out
}

fn serves_reads(m: &Member) -> bool {
    let role_ok = matches!(m.data.role.as_str(), "replica" | "standby_leader");
    role_ok && m.data.state == "running" && !m.tag_bool("noloadbalance")
}

/// Member names as a backend addresses them: the member-key field `field` of each (members
/// without it are left out), or the names themselves.
pub fn to_targets(c: Option<&Cluster>, names: &[String], field: Addressing<'_>) -> Vec<String> {
    let Some(field) = field else {
        return names.to_vec();
    };
    let mut out: Vec<String> = names
        .iter()
        .filter_map(|n| {
            c?.member(n)?
                .data
                .extra
                .get(field)?
                .as_str()
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{Leader, MemberData, Status};

    fn member(name: &str, role: &str, state: &str, pos: Option<u64>) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                role: role.into(),
                state: state.into(),
                xlog_location: pos,
                ..serde_json::from_str("{}").expect("defaults")
            },
            version: 1,
            owned_by_us: name == "a",
        }
    }

    fn cluster(term: Option<u64>) -> Cluster {
        let mut c = Cluster {
            leader: Some(Leader {
                name: "a".into(),
                version: 3,
                owned_by_us: true,
                term: term.map(Term),
            }),
            ..Cluster::default()
        };
        c.members = vec![
            member("a", "primary", "running", Some(10_000)),
            member("b", "replica", "running", Some(9_000)),
            member("c", "replica", "running", Some(1_000)),
            member("d", "replica", "stopped", Some(10_000)),
            member("e", "replica", "running", None),
        ];
        c.status = Some(Status {
            optime: Some(10_000),
            ..Status::default()
        });
        c
    }

    const LEADING: Leading = Leading {
        holds_lock: true,
        primary_running: true,
        stepping_down: false,
    };

    #[test]
    fn the_leader_routes_writes_to_itself_and_reads_to_close_running_replicas() {
        let r = desired(Some(&cluster(Some(42))), "a", LEADING, 2_000).expect("routes");
        assert_eq!(r.primary.as_deref(), Some("a"));
        assert_eq!(r.replicas, vec!["b".to_string()]);
        assert_eq!(r.term, Term(42));
        let wide = desired(Some(&cluster(Some(42))), "a", LEADING, 9_000).expect("routes");
        assert_eq!(wide.replicas, vec!["b".to_string(), "c".to_string()]);
    }

    #[test]
    fn nobody_else_routes_and_no_term_means_no_routes() {
        assert_eq!(
            desired(Some(&cluster(Some(42))), "b", LEADING, 1 << 20),
            None
        );
        assert_eq!(desired(Some(&cluster(None)), "a", LEADING, 1 << 20), None);
        assert_eq!(desired(None, "a", LEADING, 1 << 20), None);
        let lost = Leading {
            holds_lock: false,
            ..LEADING
        };
        assert_eq!(desired(Some(&cluster(Some(42))), "a", lost, 1 << 20), None);
    }

    #[test]
    fn a_leader_stepping_down_or_not_yet_primary_routes_writes_to_nobody() {
        for l in [
            Leading {
                stepping_down: true,
                ..LEADING
            },
            Leading {
                primary_running: false,
                ..LEADING
            },
        ] {
            let r = desired(Some(&cluster(Some(42))), "a", l, 1 << 20).expect("routes");
            assert_eq!(r.primary, None);
            assert_eq!(r.term, Term(42));
        }
    }

    #[test]
    fn noloadbalance_replicas_are_left_out() {
        let mut c = cluster(Some(1));
        c.members[1]
            .data
            .tags
            .insert("noloadbalance".into(), serde_json::Value::Bool(true));
        assert_eq!(healthy_replicas(&c, "a", 1 << 20), vec!["c".to_string()]);
    }

    #[test]
    fn targets_come_from_the_member_key_field() {
        let mut c = cluster(Some(1));
        c.members[1]
            .data
            .extra
            .insert("instance_id".into(), "i-0000000b".into());
        let names = vec!["a".to_string(), "b".to_string()];
        assert_eq!(to_targets(Some(&c), &names, None), names);
        assert_eq!(
            to_targets(Some(&c), &names, Some("instance_id")),
            vec!["i-0000000b".to_string()]
        );
    }
}
