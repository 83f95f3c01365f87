//! The change counter and the thread that feeds it from an etcd watch.
//!
//! The thread holds one streaming `POST /v3/watch` over the cluster prefix and bumps the
//! counter (once per watch response) when `leader`, `config`, `failover` or `initialize`
//! changed; member keys change with every WAL position and would make every daemon cycle
//! continuously. When the watch breaks it is re-created (on the next endpoint after a transport
//! failure), resuming at the revision after the last one seen, and the counter is bumped once
//! more since changes may have been missed. A watch silent for [`IDLE`] is re-created the same
//! way, without a bump: that is how a half-open connection (a partitioned endpoint) is noticed.
//!
//! The thread reads in slices of [`READ_SLICE`] and checks its stop flag in between, so
//! stopping it (on drop of the plugin) takes at most about a second, or the rest of a connect
//! attempt ([`CONNECT_LIMIT`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spilo_sdk::plugin::PluginError;

use crate::client::{self, b64, flag, int, list, lock, Client, Failure};
use crate::http;

/// How long one read waits before the stop flag is checked again.
const READ_SLICE: Duration = Duration::from_millis(200);
/// A watch silent for this long is re-created.
const IDLE: Duration = Duration::from_secs(10);
/// The longest the thread spends connecting and creating a watch in one go.
const CONNECT_LIMIT: Duration = Duration::from_secs(2);
/// Pause before re-creating a failed watch.
const BACKOFF: Duration = Duration::from_millis(500);

/// Keys whose change must wake the HA loop early.
const WAKE_KEYS: [&str; 4] = ["leader", "config", "failover", "initialize"];

/// A counter with a condition variable, bumped on relevant changes.
#[derive(Default)]
pub(crate) struct Changes {
    counter: Mutex<u64>,
    changed: Condvar,
}

impl Changes {
    /// Adds one and wakes the waiters.
    pub(crate) fn bump(&self) {
        let mut n = lock(&self.counter);
        *n = n.wrapping_add(1);
        self.changed.notify_all();
    }

    /// Blocks until the counter exceeds `seen` or `timeout` passes; returns the counter.
    pub(crate) fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now().checked_add(timeout);
        let mut n = lock(&self.counter);
        while *n <= seen {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                break;
            }
            n = match self.changed.wait_timeout(n, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        *n
    }
}

/// The running watch thread; dropping it stops and joins the thread.
pub(crate) struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts the thread watching `prefix`.
    pub(crate) fn spawn(
        client: Arc<Client>,
        prefix: String,
        changes: Arc<Changes>,
        retry_timeout: Duration,
    ) -> Result<Watcher, PluginError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("etcd-gw-watch".into())
            .spawn(move || {
                let mut watch = Watch {
                    client,
                    prefix,
                    changes,
                    stop: flag,
                    connect_limit: retry_timeout.clamp(Duration::from_millis(100), CONNECT_LIMIT),
                    next_revision: 0,
                    recovering: false,
                };
                watch.run();
            })
            .map_err(|e| PluginError::invalid(format!("cannot start the watch thread: {e}")))?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How one watch ended.
enum Ended {
    Stopped,
    Idle,
    Failed(String),
}

/// The watch thread's state.
struct Watch {
    client: Arc<Client>,
    prefix: String,
    changes: Arc<Changes>,
    stop: Arc<AtomicBool>,
    connect_limit: Duration,
    /// The revision to resume at (0: from now).
    next_revision: i64,
    /// The previous watch failed: bump once the next one is created.
    recovering: bool,
}

impl Watch {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn run(&mut self) {
        while !self.stopped() {
            match self.watch_once() {
                Ended::Stopped => return,
                Ended::Idle => {}
                Ended::Failed(_why) => {
                    self.recovering = true;
                    let until = Instant::now() + BACKOFF;
                    while Instant::now() < until {
                        if self.stopped() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }

    /// Creates a watch and follows it until it fails, idles, or the thread is stopped.
    fn watch_once(&mut self) -> Ended {
        let (host, generation) = self.client.endpoint();
        let deadline = Instant::now() + self.connect_limit;
        let token = match self.client.token(&host, deadline) {
            Ok(token) => token,
            Err(failure) => return self.failed(generation, failure),
        };
        let key = self.prefix.as_bytes();
        let mut create = json!({"key": b64(key), "range_end": b64(&client::prefix_end(key))});
        if self.next_revision > 0 {
            create["start_revision"] = json!(self.next_revision.to_string());
        }
        let body = json!({ "create_request": create }).to_string();
        let mut response = match http::post(
            &host,
            "/v3/watch",
            token.as_deref(),
            body.as_bytes(),
            deadline,
        ) {
            Ok(r) => r,
            Err(e) => return self.failed(generation, e.into()),
        };
        if response.status != 200 {
            let status = response.status;
            let text = response.body(deadline).unwrap_or_default();
            return self.failed(generation, client::classify_answer(status, &text));
        }
        let mut pending: Vec<u8> = Vec::new();
        let mut heard = Instant::now();
        loop {
            if self.stopped() {
                return Ended::Stopped;
            }
            match response.next(Instant::now() + READ_SLICE) {
                Ok(Some(piece)) => {
                    heard = Instant::now();
                    pending.extend_from_slice(&piece);
                    if let Err(failure) = self.consume(&mut pending) {
                        return self.failed(generation, failure);
                    }
                }
                Ok(None) => {
                    return self.failed(
                        generation,
                        Failure::Transport {
                            message: "watch stream ended".into(),
                            timed_out: false,
                        },
                    )
                }
                Err(e) if e.timed_out => {
                    if heard.elapsed() >= IDLE {
                        return Ended::Idle;
                    }
                }
                Err(e) => return self.failed(generation, e.into()),
            }
        }
    }

    /// Handles a failure: a transport failure moves on to the next endpoint, a refused token
    /// is forgotten.
    fn failed(&mut self, generation: u64, failure: Failure) -> Ended {
        match &failure {
            Failure::Transport { .. } => self.client.rotate(generation),
            Failure::Unauthenticated(_) => self.client.forget_token(),
            Failure::LeaseGone(_) | Failure::Refused(_) => {}
        }
        Ended::Failed(failure.into_plugin_error().message)
    }

    /// Handles the complete JSON messages at the start of `pending` and removes them.
    fn consume(&mut self, pending: &mut Vec<u8>) -> Result<(), Failure> {
        let mut messages = serde_json::Deserializer::from_slice(pending).into_iter::<Value>();
        let mut used = 0;
        let mut outcome = Ok(());
        loop {
            match messages.next() {
                Some(Ok(message)) => {
                    used = messages.byte_offset();
                    if let Err(failure) = self.handle(&message) {
                        outcome = Err(failure);
                        break;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    outcome = Err(Failure::Transport {
                        message: format!("bad answer: invalid JSON in the watch stream: {e}"),
                        timed_out: false,
                    });
                    break;
                }
                None => break,
            }
        }
        pending.drain(..used);
        if pending.len() > http::MAX_BODY {
            return Err(Failure::Transport {
                message: "bad answer: watch message too large".into(),
                timed_out: false,
            });
        }
        outcome
    }

    /// Handles one message of the watch stream.
    fn handle(&mut self, message: &Value) -> Result<(), Failure> {
        if let Some(error) = message.get("error").filter(|e| !e.is_null()) {
            let text = error["message"]
                .as_str()
                .map_or_else(|| error.to_string(), String::from);
            if error["grpc_code"].as_i64() == Some(16) {
                return Err(Failure::Unauthenticated(text));
            }
            return Err(Failure::Transport {
                message: format!("watch: {text}"),
                timed_out: false,
            });
        }
        let result = &message["result"];
        if !result.is_object() {
            return Err(Failure::Transport {
                message: format!("bad answer: watch message without result: {message}"),
                timed_out: false,
            });
        }
        if flag(result, "canceled")? {
            if int(result, "compact_revision")? > 0 {
                self.next_revision = 0;
            }
            let reason = result["cancel_reason"].as_str().unwrap_or("no reason");
            return Err(Failure::Transport {
                message: format!("watch cancelled: {reason}"),
                timed_out: false,
            });
        }
        if flag(result, "created")? && self.recovering {
            self.recovering = false;
            self.changes.bump();
        }
        let mut wake = false;
        for event in list(result, "events")? {
            let key = client::bytes(&event["kv"], "key")?;
            if let Some(rel) = key.strip_prefix(self.prefix.as_bytes()) {
                wake |= WAKE_KEYS.iter().any(|k| k.as_bytes() == rel);
            }
        }
        if wake {
            self.changes.bump();
        }
        let revision = int(&result["header"], "revision")?;
        if revision > 0 {
            self.next_revision = self.next_revision.max(revision + 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_at_once_when_the_counter_is_ahead_and_after_the_timeout_otherwise() {
        let changes = Arc::new(Changes::default());
        let started = Instant::now();
        assert_eq!(changes.wait(0, Duration::from_millis(100)), 0);
        assert!(started.elapsed() >= Duration::from_millis(100));
        changes.bump();
        assert_eq!(changes.wait(0, Duration::from_secs(10)), 1);
        let bumper = changes.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            bumper.bump();
        });
        assert_eq!(changes.wait(1, Duration::from_secs(10)), 2);
        let _ = t.join();
        // A timeout far beyond what an Instant can hold does not panic.
        changes.bump();
        assert_eq!(changes.wait(0, Duration::MAX), 3);
    }
}
