//! The load-balancer contract: route read-write traffic to the primary and read-only traffic
//! to the replicas, each change carrying the leader [`Term`] it acts for.
//!
//! Invariants every implementation keeps:
//! - a call carrying an older term than the newest the backend has seen is refused with
//!   [`LbError::StaleTerm`] and changes nothing (a [`crate::TermFence`] does the bookkeeping);
//! - the same term may repeat (a leader re-announcing itself);
//! - every call returns by its deadline with an error rather than hang.

use std::time::Duration;

#[cfg(feature = "host")]
use async_trait::async_trait;

use crate::term::{StaleTerm, Term};

/// An EC2 instance id: `i-` and 8 or 17 hexadecimal digits (how members are addressed by AWS
/// load balancers; the ELB plugin and the host's configuration check both use this).
pub fn instance_id_ok(id: &str) -> bool {
    id.strip_prefix("i-")
        .map(|h| (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or(false)
}

/// What a load balancer routes now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LbState {
    /// The member receiving read-write traffic.
    pub primary: Option<String>,
    /// The members receiving read-only traffic.
    pub replicas: Vec<String>,
    /// The newest term the backend has seen.
    pub term: Option<Term>,
    /// Everything the backend reported (backend-specific fields included).
    pub raw: serde_json::Value,
}

/// A `describe` answer that is not what the contract says.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DescribeError {
    /// Not an object.
    #[error("describe: not a JSON object: {0}")]
    NotAnObject(serde_json::Value),
    /// `primary` is not a string.
    #[error("describe: primary is not a string: {0}")]
    Primary(serde_json::Value),
    /// An entry of `replicas` is not a string.
    #[error("describe: replica is not a string: {0}")]
    Replica(serde_json::Value),
    /// `replicas` is not a list.
    #[error("describe: replicas is not a list: {0}")]
    Replicas(serde_json::Value),
    /// `term` is not a non-negative integer.
    #[error("describe: term is not a non-negative integer: {0}")]
    Term(serde_json::Value),
}

impl LbState {
    /// Reads `describe`'s JSON (`{"primary": …, "replicas": […], "term": …}`).
    pub fn from_json(v: serde_json::Value) -> Result<LbState, DescribeError> {
        if !v.is_object() {
            return Err(DescribeError::NotAnObject(v));
        }
        let primary = match &v["primary"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) if s.is_empty() => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => return Err(DescribeError::Primary(other.clone())),
        };
        let replicas = match &v["replicas"] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|r| {
                    r.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| DescribeError::Replica(r.clone()))
                })
                .collect::<Result<_, _>>()?,
            other => return Err(DescribeError::Replicas(other.clone())),
        };
        let term = match &v["term"] {
            serde_json::Value::Null => None,
            t => Some(Term(
                t.as_u64().ok_or_else(|| DescribeError::Term(t.clone()))?,
            ))
            .filter(|t| t.0 > 0),
        };
        Ok(LbState {
            primary,
            replicas,
            term,
            raw: v,
        })
    }
}

/// A failed load-balancer operation.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The call carried an older term than the backend has seen.
    #[error("load balancer refused a stale term: {0}")]
    StaleTerm(#[source] StaleTerm),
    /// A term the backend reported as stale without saying more (plugins).
    #[error("load balancer refused a stale term: {message}")]
    StaleTermReported {
        /// What the backend said.
        message: String,
    },
    /// The load balancer could not be reached.
    #[error("load balancer unreachable during {op}: {message}")]
    Unreachable {
        /// The operation.
        op: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The operation did not finish within its deadline.
    #[error("load balancer {op} timed out after {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The load balancer (or the plugin) refused.
    #[error("load balancer refused {op}: {message}")]
    Refused {
        /// The operation.
        op: &'static str,
        /// What it said.
        message: String,
    },
}

impl LbError {
    /// True for either stale-term refusal.
    pub fn is_stale_term(&self) -> bool {
        matches!(
            self,
            LbError::StaleTerm(_) | LbError::StaleTermReported { .. }
        )
    }
}

/// A load balancer in front of the cluster.
#[cfg(feature = "host")]
#[async_trait]
pub trait LoadBalancer: Send + Sync + 'static {
    /// The backend's name.
    fn backend(&self) -> &str;
    /// Routes read-write traffic to `member` (`None`: to nobody) for `term`.
    async fn set_primary(&self, member: Option<&str>, term: Term) -> Result<(), LbError>;
    /// Routes read-only traffic to `members` for `term`.
    async fn set_replicas(&self, members: &[String], term: Term) -> Result<(), LbError>;
    /// What it routes now.
    async fn describe(&self) -> Result<LbState, LbError>;
}
