//! A spilo DCS plugin speaking etcd's v3 HTTP/JSON gateway (`POST /v3/kv/range`, …), built as a
//! shared library against `spilo-sdk` alone: no async runtime, no gRPC, no dependency on the
//! daemon.
//!
//! It keeps the same contract as the built-in etcd backend:
//! - keys live below the cluster prefix (`/service/<scope>/leader`, `…/members/<name>`);
//! - one lease per daemon, granted by the first session operation; `keepalive` renews it, or
//!   grants a new one (reporting `new_session`) when etcd no longer knows it;
//! - `members/<name>` and `leader` are bound to the lease, so both vanish when it expires or
//!   `close` revokes it;
//! - the leader key is created only if absent (`create_revision == 0`) and deleted only while
//!   it holds our name; compare-and-set uses `mod_revision` as the version;
//! - every call returns by its deadline: each HTTP step is bounded by the time left, a silent
//!   endpoint gets a share of it, and the other endpoints are tried in order;
//! - with `watch`, a thread follows a watch of the prefix and bumps the change counter that
//!   `wait_changes` blocks on when `leader`, `config`, `failover` or `initialize` change (see
//!   [Threads](#threads)).
//!
//! # Threads
//! Calls run on the host's threads and block them until they finish or the deadline passes.
//! With `PluginConfig.watch` the plugin runs one thread of its own, `etcd-gw-watch`, stopped
//! and joined when the instance is destroyed (within about a second, or up to two while it is
//! connecting). Host names that are not IP addresses are resolved on short-lived helper threads
//! so that a hanging resolver cannot outlast the deadline.
//!
//! # Errors
//! Unreachable endpoints give `unavailable`, silence until the deadline `timeout`, errors etcd
//! answered with `refused`, bad settings `invalid` naming the key. Whatever the server sends
//! (garbage, bad base64, truncated streams) is an error, never a panic.

#![deny(missing_docs)]

mod client;
mod http;
mod session;
mod settings;
mod watcher;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spilo_sdk::plugin::{DcsPlugin, PluginConfig, PluginError};
use spilo_sdk::{Cas, Entry, SessionInfo, Snapshot};

use crate::client::{b64, flag, int, kv, list, Client, Failure};
use crate::session::Session;
pub use crate::settings::GatewaySettings;
use crate::watcher::{Changes, Watcher};

/// The longest `Drop` spends revoking the lease.
const DROP_REVOKE_LIMIT: Duration = Duration::from_secs(2);

/// One daemon's (or one CLI's) connection to etcd through the JSON gateway.
pub struct EtcdGateway {
    client: Arc<Client>,
    session: Session,
    changes: Arc<Changes>,
    /// The cluster prefix, ending in `/`.
    prefix: String,
    member: String,
    retry_timeout: Duration,
    /// The watch thread, when the host wants change notifications.
    watcher: Option<Watcher>,
}

impl std::fmt::Debug for EtcdGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdGateway")
            .field("prefix", &self.prefix)
            .field("member", &self.member)
            .field("watch", &self.watcher.is_some())
            .finish_non_exhaustive()
    }
}

/// The compare of a compare-and-set condition (`None` for [`Cas::Any`]).
fn cas_compare(key: &str, cas: Cas) -> Option<Value> {
    match cas {
        Cas::Any => None,
        Cas::Absent => Some(absent(key)),
        Cas::Version(version) => Some(json!({
            "target": "MOD", "key": key, "mod_revision": version.to_string(), "result": "EQUAL"
        })),
    }
}

/// The compare "`key` does not exist" (`key` in base64).
fn absent(key: &str) -> Value {
    json!({"target": "CREATE", "key": key, "create_revision": "0", "result": "EQUAL"})
}

/// The compare "`key` holds `value`" (both in base64).
fn holds(key: &str, value: &str) -> Value {
    json!({"target": "VALUE", "key": key, "value": value, "result": "EQUAL"})
}

/// A put of `key` bound to `lease` (both key and value in base64).
fn put_with(key: &str, value: &str, lease: i64) -> Value {
    json!({"request_put": {"key": key, "value": value, "lease": lease.to_string()}})
}

impl EtcdGateway {
    /// The etcd key (base64) of `key` below the prefix.
    fn key(&self, key: &str) -> String {
        b64(format!("{}{key}", self.prefix).as_bytes())
    }

    /// Runs the transaction `build(lease)` under the current lease, granting a new lease once
    /// if etcd lost it. Returns the answer and the lease used.
    fn txn_with_lease(
        &self,
        op: &str,
        deadline: Instant,
        build: impl Fn(i64) -> Value,
    ) -> Result<(Value, i64), Failure> {
        let mut lease = self.session.ensure(&self.client, deadline)?;
        for retry in [false, true] {
            match self.client.call(op, "/v3/kv/txn", &build(lease), deadline) {
                Ok(answer) => return Ok((answer, lease)),
                Err(Failure::LeaseGone(_)) if !retry => {
                    lease = self.session.replace(&self.client, lease, deadline)?;
                }
                Err(failure) => return Err(failure),
            }
        }
        Err(Failure::Refused(format!("{op}: lease vanished twice")))
    }

    /// Puts `key` bound to the lease, granting a new lease once if etcd lost it.
    fn put_with_lease(
        &self,
        op: &str,
        key: &str,
        value: &[u8],
        deadline: Instant,
    ) -> Result<(), Failure> {
        let value = b64(value);
        let mut lease = self.session.ensure(&self.client, deadline)?;
        for retry in [false, true] {
            let request = json!({"key": key, "value": value, "lease": lease.to_string()});
            match self.client.call(op, "/v3/kv/put", &request, deadline) {
                Ok(_) => return Ok(()),
                Err(Failure::LeaseGone(_)) if !retry => {
                    lease = self.session.replace(&self.client, lease, deadline)?;
                }
                Err(failure) => return Err(failure),
            }
        }
        Err(Failure::Refused(format!("{op}: lease vanished twice")))
    }

    /// Runs a transaction without lease; whether its compare held.
    fn plain_txn(&self, op: &str, txn: &Value, deadline: Instant) -> Result<bool, Failure> {
        let answer = self.client.call(op, "/v3/kv/txn", txn, deadline)?;
        flag(&answer, "succeeded")
    }

    /// Rejects keys that would not name a key below the prefix.
    fn check_key(key: &str) -> Result<(), PluginError> {
        if key.is_empty() {
            Err(PluginError::invalid("key: empty"))
        } else {
            Ok(())
        }
    }
}

/// Whether `answer`'s transaction, or a transaction nested in its `else` branch, succeeded.
fn nested_succeeded(answer: &Value) -> Result<bool, Failure> {
    if flag(answer, "succeeded")? {
        return Ok(true);
    }
    for response in list(answer, "responses")? {
        let inner = &response["response_txn"];
        if inner.is_object() && flag(inner, "succeeded")? {
            return Ok(true);
        }
    }
    Ok(false)
}

impl DcsPlugin for EtcdGateway {
    /// Reads the settings and starts the watch thread if asked; does not contact etcd (the
    /// first call does, authenticating first when a username is set).
    fn create(config: &PluginConfig) -> Result<Self, PluginError> {
        let settings = GatewaySettings::parse(&config.config)?;
        let mut prefix = config.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        if config.member.is_empty() {
            return Err(PluginError::invalid("member: empty"));
        }
        let client = Arc::new(Client::new(settings));
        let changes = Arc::new(Changes::default());
        let watcher = if config.watch {
            Some(Watcher::spawn(
                client.clone(),
                prefix.clone(),
                changes.clone(),
                config.retry_timeout,
            )?)
        } else {
            None
        };
        Ok(EtcdGateway {
            client,
            session: Session::new(config.ttl),
            changes,
            prefix,
            member: config.member.clone(),
            retry_timeout: config.retry_timeout,
            watcher,
        })
    }

    /// One linearizable range read over the prefix.
    fn snapshot(&self, deadline: Instant) -> Result<Snapshot, PluginError> {
        let prefix = self.prefix.as_bytes();
        let request = json!({"key": b64(prefix), "range_end": b64(&client::prefix_end(prefix))});
        let read = || -> Result<Snapshot, Failure> {
            let answer = self
                .client
                .call("snapshot", "/v3/kv/range", &request, deadline)?;
            let ours = self.session.current();
            let revision = int(&answer["header"], "revision")?;
            let mut entries = Vec::new();
            for item in list(&answer, "kvs")? {
                let kv = kv(item)?;
                let Some(key) = kv.key.strip_prefix(prefix) else {
                    continue;
                };
                if key.is_empty() {
                    continue;
                }
                let key = String::from_utf8_lossy(key).into_owned();
                entries.push(entry(key, kv, ours));
            }
            Ok(Snapshot { revision, entries })
        };
        read().map_err(|f| f.during("snapshot"))
    }

    fn keepalive(&self, deadline: Instant) -> Result<SessionInfo, PluginError> {
        self.session.keepalive(&self.client, deadline)
    }

    fn put_member(&self, value: &[u8], deadline: Instant) -> Result<(), PluginError> {
        let key = self.key(&format!("members/{}", self.member));
        self.put_with_lease("put_member", &key, value, deadline)
            .map_err(|f| f.during("put_member"))
    }

    fn acquire_leader(&self, deadline: Instant) -> Result<bool, PluginError> {
        let key = self.key("leader");
        let member = b64(self.member.as_bytes());
        let acquire = || -> Result<bool, Failure> {
            let (answer, lease) = self.txn_with_lease("acquire_leader", deadline, |lease| {
                json!({
                    "compare": [absent(&key)],
                    "success": [put_with(&key, &member, lease)],
                    "failure": [{"request_range": {"key": key}}],
                })
            })?;
            if flag(&answer, "succeeded")? {
                return Ok(true);
            }
            // A retried request that had been applied already finds our own key.
            for response in list(&answer, "responses")? {
                for item in list(&response["response_range"], "kvs")? {
                    let kv = kv(item)?;
                    if kv.value == self.member.as_bytes() && kv.lease == lease {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        };
        acquire().map_err(|f| f.during("acquire_leader"))
    }

    fn reattach_leader(&self, deadline: Instant) -> Result<bool, PluginError> {
        let key = self.key("leader");
        let member = b64(self.member.as_bytes());
        let reattach = || -> Result<bool, Failure> {
            let (answer, _) = self.txn_with_lease("reattach_leader", deadline, |lease| {
                let create = json!({
                    "compare": [absent(&key)],
                    "success": [put_with(&key, &member, lease)],
                });
                json!({
                    "compare": [holds(&key, &member)],
                    "success": [put_with(&key, &member, lease)],
                    "failure": [{"request_txn": create}],
                })
            })?;
            nested_succeeded(&answer)
        };
        reattach().map_err(|f| f.during("reattach_leader"))
    }

    fn release_leader(&self, deadline: Instant) -> Result<bool, PluginError> {
        let key = self.key("leader");
        let txn = json!({
            "compare": [holds(&key, &b64(self.member.as_bytes()))],
            "success": [{"request_delete_range": {"key": key}}],
        });
        self.plain_txn("release_leader", &txn, deadline)
            .map_err(|f| f.during("release_leader"))
    }

    fn put(
        &self,
        key: &str,
        value: &[u8],
        cas: Cas,
        deadline: Instant,
    ) -> Result<bool, PluginError> {
        Self::check_key(key)?;
        let key = self.key(key);
        let value = b64(value);
        let result = match cas_compare(&key, cas) {
            None => self
                .client
                .call(
                    "put",
                    "/v3/kv/put",
                    &json!({"key": key, "value": value}),
                    deadline,
                )
                .map(|_| true),
            Some(compare) => {
                let txn = json!({
                    "compare": [compare],
                    "success": [{"request_put": {"key": key, "value": value}}],
                });
                self.plain_txn("put", &txn, deadline)
            }
        };
        result.map_err(|f| f.during("put"))
    }

    fn delete(&self, key: &str, cas: Cas, deadline: Instant) -> Result<bool, PluginError> {
        Self::check_key(key)?;
        let key = self.key(key);
        let result = match cas_compare(&key, cas) {
            None => self
                .client
                .call(
                    "delete",
                    "/v3/kv/deleterange",
                    &json!({"key": key}),
                    deadline,
                )
                .map(|_| true),
            Some(compare) => {
                let txn = json!({
                    "compare": [compare],
                    "success": [{"request_delete_range": {"key": key}}],
                });
                self.plain_txn("delete", &txn, deadline)
            }
        };
        result.map_err(|f| f.during("delete"))
    }

    /// Blocks on the counter the watch thread bumps. Without `watch` (or before the first
    /// change) it simply waits out `timeout`.
    fn wait_changes(&self, seen: u64, timeout: Duration) -> u64 {
        self.changes.wait(seen, timeout)
    }

    fn set_ttl(&self, ttl: Duration) {
        self.session.set_ttl(ttl);
    }

    fn close(&self, deadline: Instant) -> Result<(), PluginError> {
        self.session.close(&self.client, deadline)
    }
}

impl Drop for EtcdGateway {
    /// Stops and joins the watch thread, then revokes the lease (best effort, briefly), as the
    /// ABI's `destroy` asks.
    fn drop(&mut self) {
        drop(self.watcher.take());
        if self.session.current() != 0 {
            let limit = self.retry_timeout.min(DROP_REVOKE_LIMIT);
            let _ = self.session.close(&self.client, Instant::now() + limit);
        }
    }
}

spilo_sdk::export_dcs_plugin!(
    EtcdGateway,
    name = "etcd-gateway",
    version = env!("CARGO_PKG_VERSION")
);

/// A snapshot entry from an etcd key-value; `created` is its `create_revision`, which makes
/// the leader key's the leader term (ABI 1.1).
#[cfg(not(feature = "abi-1-0"))]
fn entry(key: String, kv: client::Kv, ours: i64) -> Entry {
    Entry {
        key,
        value: kv.value,
        version: kv.mod_revision,
        owned_by_us: ours != 0 && kv.lease == ours,
        created: Some(kv.create_revision).filter(|c| *c > 0),
    }
}

/// The same under the ABI 1.0 SDK (the test fixture build), which has no `created`.
#[cfg(feature = "abi-1-0")]
fn entry(key: String, kv: client::Kv, ours: i64) -> Entry {
    Entry {
        key,
        value: kv.value,
        version: kv.mod_revision,
        owned_by_us: ours != 0 && kv.lease == ours,
    }
}
