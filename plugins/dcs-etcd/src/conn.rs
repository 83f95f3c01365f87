//! The connection to one etcd endpoint at a time, with fail-over to the next one.
//!
//! etcd-client's own balanced channel picks an endpoint at random for every request and keeps
//! dead endpoints in the pool, so with one member down a share of all calls fails. Instead we
//! talk to one endpoint at a time (like Patroni does) and move to the next one in the list when
//! the current one stops answering. Every switch bumps a *generation* so that concurrent callers
//! that saw the same failure rotate only once.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

/// How an etcd-client error is handled.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The endpoint could not be reached or stopped answering: try another one.
    Transport(String),
    /// etcd answered that the lease does not exist (any more).
    LeaseGone(String),
    /// etcd answered with another error.
    Refused(String),
}

/// gRPC status codes (`tonic::Code` discriminants; tonic is not a direct dependency).
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const DEADLINE_EXCEEDED: i32 = 4;
const NOT_FOUND: i32 = 5;
const UNAVAILABLE: i32 = 14;

/// Sorts an etcd-client error into [`Failure`].
pub(crate) fn classify(error: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;

    let text = describe(error);
    match error {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::EndpointError(_) => {
            Failure::Transport(text)
        }
        E::LeaseKeepAliveError(message) => {
            if message.contains("lease not found") {
                Failure::LeaseGone(text)
            } else {
                Failure::Transport(text)
            }
        }
        E::GRpcStatus(status) => match status.code() as i32 {
            NOT_FOUND if status.message().contains("lease not found") => Failure::LeaseGone(text),
            // Unavailable covers connection failures as well as etcd's "no leader",
            // "request timed out" and "leader changed": all worth another endpoint.
            UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | UNKNOWN => Failure::Transport(text),
            _ => Failure::Refused(text),
        },
        _ => Failure::Refused(text),
    }
}

/// A one-line description of an etcd-client error: for gRPC statuses the code, message and
/// the chain of causes (e.g. `Unavailable: tcp connect error: Connection refused`), without
/// the debug dump tonic's `Display` adds.
pub(crate) fn describe(error: &etcd_client::Error) -> String {
    // A transport error prints only "transport error": its cause (connection refused, the TLS
    // alert, the DNS failure) is in the source chain, so the chain is always walked.
    let (mut text, mut source) = match error {
        etcd_client::Error::GRpcStatus(status) => (
            format!("{:?}: {}", status.code(), status.message()),
            std::error::Error::source(status),
        ),
        other => (other.to_string(), std::error::Error::source(other)),
    };
    while let Some(cause) = source {
        let line = cause.to_string();
        if !line.is_empty() && !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Which endpoint is in use, and its client once made.
struct State {
    index: usize,
    generation: u64,
    client: Option<Client>,
}

/// The client of the endpoint in use.
pub(crate) struct Conn {
    urls: Vec<String>,
    options: ConnectOptions,
    /// The deadline of one attempt against one endpoint.
    pub(crate) attempt_timeout: Duration,
    state: Mutex<State>,
}

impl Conn {
    /// A connection over `urls` (with scheme); nothing is dialled yet.
    pub(crate) fn new(urls: Vec<String>, options: ConnectOptions, attempt: Duration) -> Conn {
        Conn {
            urls,
            options,
            attempt_timeout: attempt,
            state: Mutex::new(State {
                index: 0,
                generation: 0,
                client: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of endpoints.
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }

    /// All endpoints, for messages.
    pub(crate) fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The current generation, endpoint, and client if one was made already.
    pub(crate) fn current(&self) -> (u64, String, Option<Client>) {
        let state = self.lock();
        let url = self.urls.get(state.index).cloned().unwrap_or_default();
        (state.generation, url, state.client.clone())
    }

    /// The current generation.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Makes the client of `url` (dialled lazily by tonic; with a user name this authenticates,
    /// which does reach the server) and caches it if `generation` is still current.
    pub(crate) async fn create(
        &self,
        generation: u64,
        url: &str,
    ) -> Result<Client, etcd_client::Error> {
        let client = Client::connect([url], Some(self.options.clone())).await?;
        let mut state = self.lock();
        if state.generation == generation {
            match &state.client {
                Some(existing) => return Ok(existing.clone()),
                None => state.client = Some(client.clone()),
            }
        }
        Ok(client)
    }

    /// Moves on to the next endpoint, unless someone did since `generation`.
    pub(crate) fn rotate(&self, generation: u64) {
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        let from = self.urls.get(state.index).cloned().unwrap_or_default();
        state.index = (state.index + 1) % self.urls.len().max(1);
        state.generation += 1;
        state.client = None;
        if self.urls.len() > 1 {
            tracing::warn!(
                from = %from,
                to = %self.urls[state.index],
                "etcd endpoint failed, switching"
            );
        }
    }
}
