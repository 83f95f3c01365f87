//! The cluster as read from the DCS, decoded from Patroni's key layout and values.
//!
//! Everything here is untrusted input: a value that does not parse is treated as absent and
//! reported once through [`Cluster::warnings`], never a panic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::DynamicConfig;

/// A value with the store's version of its key (for compare-and-set).
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    /// The key's version.
    pub version: i64,
}

/// The `leader` key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The holder's member name.
    pub name: String,
    /// The key's version (etcd `mod_revision`, ZooKeeper data version): for compare-and-set
    /// only; it is *not* a term (a fresh ZooKeeper znode is version 0 in every term).
    pub version: i64,
    /// Bound to this daemon's current session.
    pub owned_by_us: bool,
    /// The leader term: the store's counter at the key's creation (etcd `create_revision`,
    /// ZooKeeper `czxid`), strictly larger for every new leadership. `None` when the backend
    /// cannot tell (a DCS plugin built for ABI 1.0): side effects needing a term are refused.
    pub term: Option<spilo_sdk::Term>,
}

/// A side effect outside the database was about to be sent without a known leader term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the leader term is unknown (the DCS backend reports no creation counter, e.g. a DCS plugin built for ABI 1.0): a side effect that must carry a term is refused")]
pub struct UnknownTerm;

impl Leader {
    /// The term to stamp on a side effect (a load-balancer change, …). With no known term
    /// the side effect is refused, never sent with a made-up one.
    pub fn term_for_side_effects(&self) -> Result<spilo_sdk::Term, UnknownTerm> {
        self.term.ok_or(UnknownTerm)
    }
}

/// `members/<name>`: what each daemon publishes about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MemberData {
    /// `postgres://host:port/postgres`.
    #[serde(default)]
    pub conn_url: String,
    /// `http://host:port/patroni`.
    #[serde(default)]
    pub api_url: String,
    /// PostgreSQL state (`running`, `stopped`, `starting`, …).
    #[serde(default = "unknown")]
    pub state: String,
    /// `primary`, `replica`, `uninitialized`, `demoted`… (`master` is read as `primary`).
    #[serde(default = "unknown")]
    pub role: String,
    /// Daemon version (a Patroni 4.x version for compatibility).
    #[serde(default)]
    pub version: String,
    /// WAL position in bytes (flush LSN on a primary, max(receive, replay) on a replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    /// Replay LSN on a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    /// Receive LSN on a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    /// `streaming` or `in archive recovery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    /// Current timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u64>,
    /// Effective tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, Value>,
    /// Present and true while the cluster is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
    /// Present and true when a restart is needed to apply settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<bool>,
    /// Fields we do not interpret, kept for round trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn unknown() -> String {
    "unknown".to_string()
}

impl MemberData {
    /// The role, with Patroni < 4's `master` read as `primary`.
    pub fn normalized_role(&self) -> &str {
        if self.role == "master" {
            "primary"
        } else {
            &self.role
        }
    }
}

/// One member.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Member name (basename of the key).
    pub name: String,
    /// The decoded value.
    pub data: MemberData,
    /// The key's version.
    pub version: i64,
    /// Bound to this daemon's session.
    pub owned_by_us: bool,
}

impl Member {
    /// `host` and `port` of `conn_url`.
    pub fn host_port(&self) -> Option<(String, u16)> {
        parse_conn_url(&self.data.conn_url)
    }

    /// Boolean tag, accepting `true`, `"true"`, `"on"`, `1`.
    pub fn tag_bool(&self, tag: &str) -> bool {
        crate::dcs::tags::tag_bool(&self.data.tags, tag)
    }
}

/// `host:port` out of `postgres://[user@]host:port/db`.
pub fn parse_conn_url(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let hostport = rest.split(['/', '?']).next()?;
    let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
        let (h, p) = stripped.split_once(']')?;
        (h.to_string(), p.strip_prefix(':').unwrap_or("5432"))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (hostport.to_string(), "5432"),
        }
    };
    Some((host, port.parse().ok()?))
}

/// The `status` key.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The leader's last WAL position in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optime: Option<u64>,
    /// Replication slot positions on the leader.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, u64>,
    /// Member slots to keep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retain_slots: Vec<String>,
}

/// The `failover` key.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failover {
    /// The current leader (present for a switchover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// ISO-8601 time for a scheduled switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

impl Failover {
    /// `{}` means no failover requested.
    pub fn is_empty(&self) -> bool {
        self.leader.is_none() && self.member.is_none()
    }
}

/// The `sync` key.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncState {
    /// The primary.
    #[serde(default)]
    pub leader: Option<String>,
    /// Quorum (0 unless quorum mode).
    #[serde(default)]
    pub quorum: u64,
    /// Comma-joined sorted names, or null.
    #[serde(default)]
    pub sync_standby: Option<String>,
}

/// One line of the `history` key: `[timeline, switch_lsn, reason, timestamp, new_leader]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryLine {
    /// The timeline that ended.
    pub timeline: u64,
    /// Where it ended.
    pub lsn: u64,
    /// Why.
    pub reason: String,
    /// When (ISO-8601), if recorded.
    pub timestamp: Option<String>,
    /// Who became leader, if recorded.
    pub new_leader: Option<String>,
}

impl HistoryLine {
    /// As the JSON array Patroni writes.
    pub fn to_json(&self) -> Value {
        let mut v = vec![
            Value::from(self.timeline),
            Value::from(self.lsn),
            Value::from(self.reason.clone()),
        ];
        if let Some(t) = &self.timestamp {
            v.push(Value::from(t.clone()));
            if let Some(n) = &self.new_leader {
                v.push(Value::from(n.clone()));
            }
        }
        Value::Array(v)
    }
}

/// The whole cluster, decoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    /// The DCS revision of the read.
    pub revision: i64,
    /// `initialize`: `None` absent, `Some("")` bootstrap in progress, `Some(sysid)`.
    pub initialize: Option<String>,
    /// `config`, if present and valid.
    pub config: Option<Versioned<DynamicConfig>>,
    /// `config` as raw JSON (for `GET /config` and PATCH), if valid JSON.
    pub config_raw: Option<Versioned<Value>>,
    /// `leader`.
    pub leader: Option<Leader>,
    /// `members/*`, sorted by name.
    pub members: Vec<Member>,
    /// `status` (or legacy `optime/leader`).
    pub status: Option<Status>,
    /// `failover`, when non-empty.
    pub failover: Option<Versioned<Failover>>,
    /// `sync`.
    pub sync: Option<Versioned<SyncState>>,
    /// `history` (`None` when absent).
    pub history: Option<Vec<HistoryLine>>,
    /// Keys that did not parse: `(key, problem)`.
    pub warnings: Vec<(String, String)>,
}

impl Cluster {
    /// The member called `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The leader's member entry.
    pub fn leader_member(&self) -> Option<&Member> {
        self.leader.as_ref().and_then(|l| self.member(&l.name))
    }

    /// The cluster timeline as Patroni derives it: last history timeline + 1; 1 with `[]`;
    /// 0 without the key.
    pub fn timeline(&self) -> u64 {
        match &self.history {
            None => 0,
            Some(h) => h.last().map(|l| l.timeline + 1).unwrap_or(1),
        }
    }

    /// `status.optime`.
    pub fn optime(&self) -> Option<u64> {
        self.status.as_ref().and_then(|s| s.optime)
    }

    /// The valid system identifier in `initialize` (at least 10 digits).
    pub fn sysid(&self) -> Option<&str> {
        self.initialize
            .as_deref()
            .filter(|s| s.len() >= 10 && s.bytes().all(|b| b.is_ascii_digit()))
    }

    /// True while the cluster is paused.
    pub fn paused(&self) -> bool {
        self.config.as_ref().map(|c| c.value.pause).unwrap_or(false)
    }
}

#[cfg(test)]
mod term_tests {
    use super::*;

    #[test]
    fn a_side_effect_needs_a_known_term() {
        let mut l = Leader {
            name: "n1".into(),
            version: 0,
            owned_by_us: true,
            term: None,
        };
        assert_eq!(l.term_for_side_effects(), Err(UnknownTerm));
        l.term = Some(spilo_sdk::Term(17));
        assert_eq!(l.term_for_side_effects(), Ok(spilo_sdk::Term(17)));
    }
}
