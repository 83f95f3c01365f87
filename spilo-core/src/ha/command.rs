//! Requests from the REST API (and SIGHUP) to the HA loop. The loop executes them between
//! cycles and answers on the enclosed channel with an HTTP-like status and message, so the API
//! never touches PostgreSQL itself.

use tokio::sync::oneshot;

/// The answer to a command: Patroni's status code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandReply {
    /// HTTP status (200, 202, 409, 503, …).
    pub status: u16,
    /// The message body (plain text, as Patroni sends).
    pub message: String,
}

impl CommandReply {
    /// A reply.
    pub fn new(status: u16, message: impl Into<String>) -> CommandReply {
        CommandReply {
            status,
            message: message.into(),
        }
    }
}

/// `POST /restart` conditions (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartRequest {
    /// When to restart (RFC 3339 with a timezone); None: now.
    pub schedule: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Restart only if this node's role is this (`primary`, `replica`, `standby_leader`).
    pub role: Option<String>,
    /// Restart only if the running server version is below this (`server_version_num` form).
    pub postgres_version: Option<i64>,
    /// Seconds to wait for PostgreSQL to come back.
    pub timeout: Option<u64>,
    /// Restart only when a restart is pending.
    pub restart_pending: bool,
}

/// One request to the loop.
#[derive(Debug)]
pub enum Command {
    /// Restart PostgreSQL now, or schedule it.
    Restart {
        /// Conditions.
        request: RestartRequest,
        /// Where to answer.
        reply: oneshot::Sender<CommandReply>,
    },
    /// Forget a scheduled restart.
    CancelRestart {
        /// Where to answer.
        reply: oneshot::Sender<CommandReply>,
    },
    /// Wipe the data directory and copy it again from the leader (or a `clonefrom` member).
    Reinitialize {
        /// Cancel a running job first.
        force: bool,
        /// Copy from the leader even if a `clonefrom` member exists.
        from_leader: bool,
        /// Where to answer.
        reply: oneshot::Sender<CommandReply>,
    },
    /// Re-read the configuration file and apply what changed.
    Reload {
        /// Where to answer (None for SIGHUP).
        reply: Option<oneshot::Sender<CommandReply>>,
    },
}

/// The sending side the API holds.
pub type CommandTx = tokio::sync::mpsc::Sender<Command>;
/// The receiving side the loop holds.
pub type CommandRx = tokio::sync::mpsc::Receiver<Command>;
