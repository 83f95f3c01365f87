//! Why a node without the leader key does not race for it: the structured half of
//! [`Reason::NotHealthiest`](crate::ha::Reason::NotHealthiest). Tests and the simulation match
//! the variant; the log and `/patroni` print the sentence.

use std::fmt;

/// Why this node is not the one to take the leader key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotHealthiest {
    /// `nofailover` (or a failover priority of 0).
    NoFailover,
    /// A manual failover names another reachable member.
    ManualFailoverTo(String),
    /// A named candidate is taking over; wait for it instead of racing.
    WaitingForCandidate(String),
    /// The other members were not asked for their state this cycle.
    PeersNotQueried,
    /// Synchronous mode is on and this node is not one of the synchronous standbys (listed).
    NotSynchronous(Vec<String>),
    /// This node is further behind the last known leader position than allowed.
    Lagging {
        /// Our WAL position.
        pos: u64,
        /// The leader's last published position.
        optime: u64,
        /// `maximum_lag_on_failover`.
        max: u64,
    },
    /// This node's timeline is behind the cluster's.
    TimelineBehind {
        /// Ours (unknown when PostgreSQL did not say).
        mine: Option<u64>,
        /// The cluster's.
        cluster: u64,
    },
    /// Quorum mode: too few voters confirm this node is not behind.
    Quorum {
        /// Voters confirming.
        votes: u64,
        /// Votes needed.
        need: u64,
        /// The voters.
        voters: Vec<String>,
    },
    /// A member still runs as a primary.
    PrimaryAlive(String),
    /// `choose_failover_candidate` picked another member.
    HookPicked(String),
    /// Another member's WAL position is ahead of ours.
    Behind {
        /// The member.
        member: String,
        /// Its position.
        theirs: u64,
        /// Ours.
        mine: u64,
    },
    /// Another member has the same position and a higher failover priority.
    LowerPriority {
        /// The member.
        member: String,
        /// Its priority.
        theirs: i64,
        /// Ours.
        mine: i64,
    },
    /// PostgreSQL is not running (it is started read-only first).
    NotRunning,
    /// PostgreSQL is not running and this node was a primary (demoted offline first).
    NotRunningWasPrimary,
    /// PostgreSQL does not answer.
    Unresponsive,
}

impl fmt::Display for NotHealthiest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotHealthiest::NoFailover => write!(f, "nofailover"),
            NotHealthiest::ManualFailoverTo(c) => write!(f, "manual failover to {c} requested"),
            NotHealthiest::WaitingForCandidate(c) => write!(f, "waiting for {c} to take over"),
            NotHealthiest::PeersNotQueried => {
                write!(f, "the other members were not asked for their state this cycle")
            }
            NotHealthiest::NotSynchronous(list) => write!(
                f,
                "synchronous_mode is on and I am not a synchronous standby (sync standbys: {})",
                if list.is_empty() {
                    "none".to_string()
                } else {
                    list.join(",")
                }
            ),
            NotHealthiest::Lagging { pos, optime, max } => write!(
                f,
                "my WAL position {pos} is {} bytes behind the last known leader position {optime}, more than maximum_lag_on_failover {max}",
                optime.saturating_sub(*pos)
            ),
            NotHealthiest::TimelineBehind { mine, cluster } => match mine {
                Some(t) => write!(f, "my timeline {t} is behind the cluster's {cluster}"),
                None => write!(f, "my timeline is behind the cluster's ({cluster})"),
            },
            NotHealthiest::Quorum {
                votes,
                need,
                voters,
            } => write!(
                f,
                "quorum: {votes} of the voters ({}) confirm I am not behind, {need} needed",
                voters.join(",")
            ),
            NotHealthiest::PrimaryAlive(m) => write!(f, "primary {m} is still alive"),
            NotHealthiest::HookPicked(c) => write!(f, "choose_failover_candidate picked {c}"),
            NotHealthiest::Behind {
                member,
                theirs,
                mine,
            } => write!(f, "{member} is ahead of me ({theirs} > {mine})"),
            NotHealthiest::LowerPriority {
                member,
                theirs,
                mine,
            } => write!(
                f,
                "{member} has the same WAL position and a higher failover_priority ({theirs} > {mine})"
            ),
            NotHealthiest::NotRunning => write!(f, "PostgreSQL is not running"),
            NotHealthiest::NotRunningWasPrimary => {
                write!(f, "PostgreSQL is not running and I was a primary")
            }
            NotHealthiest::Unresponsive => write!(f, "PostgreSQL does not answer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_name_the_numbers() {
        let lag = NotHealthiest::Lagging {
            pos: 100,
            optime: 1100,
            max: 500,
        };
        assert_eq!(
            lag.to_string(),
            "my WAL position 100 is 1000 bytes behind the last known leader position 1100, more than maximum_lag_on_failover 500"
        );
        assert_eq!(
            NotHealthiest::NotSynchronous(vec![]).to_string(),
            "synchronous_mode is on and I am not a synchronous standby (sync standbys: none)"
        );
        // A position ahead of the recorded optime never underflows.
        let ahead = NotHealthiest::Lagging {
            pos: 2000,
            optime: 1100,
            max: 500,
        };
        assert!(ahead.to_string().contains(" 0 bytes behind"));
    }
}
