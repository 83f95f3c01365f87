//! The `spilo` extension: what the spilo daemon knows about the cluster, in SQL.
//!
//! ```sql
//! CREATE EXTENSION spilo;   -- the daemon does it when it bootstraps a cluster
//! SELECT spilo.role(), spilo.leader(), spilo.lag();
//! SELECT * FROM spilo.members();
//! ```
//!
//! The functions read the state file the daemon writes into the data directory every cycle
//! (`spilo.state`, see [`state`]) and combine it with PostgreSQL's own facts: a state the
//! daemon has not refreshed in time, or one that contradicts `pg_is_in_recovery()`, reads as
//! `unknown`, never as a stale `primary`. Nothing here raises an error for a bad state file:
//! the answer is `unknown`/NULL with a WARNING saying why.

use std::ffi::CStr;
use std::path::PathBuf;

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

pub mod archive;
pub mod fence;
pub mod state;

::pgrx::pg_module_magic!(name, version);

/// Registers the fence's and the archive module's settings, and with
/// `shared_preload_libraries`, the fence's hooks and worker.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    archive::init();
    fence::init();
}

/// The data directory of this PostgreSQL.
pub(crate) fn data_dir() -> Option<PathBuf> {
    // SAFETY: DataDir is set by the postmaster before any backend runs SQL, and never freed.
    let p = unsafe { pg_sys::DataDir };
    if p.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated C string owned by PostgreSQL.
    let s = unsafe { CStr::from_ptr(p) };
    Some(PathBuf::from(s.to_string_lossy().into_owned()))
}

/// The current state, or `None` after a WARNING saying why not.
fn current() -> Option<Value> {
    let Some(dir) = data_dir() else {
        pgrx::warning!("spilo: the data directory is unknown");
        return None;
    };
    match state::read(&dir, state::monotonic_ns()) {
        state::Reading::Current(v) => Some(v),
        state::Reading::Unknown(why) => {
            pgrx::warning!("spilo: state unknown: {why}");
            None
        }
    }
}

fn in_recovery() -> bool {
    // SAFETY: a plain query of shared state, valid in any backend.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// The role from a state, checked against PostgreSQL's own recovery status.
fn role_of(v: &Value) -> &'static str {
    let recovering = in_recovery();
    match (v.get("role").and_then(Value::as_str), recovering) {
        (Some("primary"), false) => "primary",
        (Some("replica"), true) => "replica",
        (Some("standby_leader"), true) => "standby_leader",
        _ => "unknown",
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// This node's role: `primary`, `replica`, `standby_leader` or `unknown`.
#[pg_extern]
fn role() -> &'static str {
    current().as_ref().map(role_of).unwrap_or("unknown")
}

/// True when this node holds the leader lock and runs as the primary (or standby leader).
#[pg_extern]
fn is_leader() -> bool {
    current()
        .map(|v| {
            v.get("is_leader").and_then(Value::as_bool).unwrap_or(false)
                && matches!(role_of(&v), "primary" | "standby_leader")
        })
        .unwrap_or(false)
}

/// The leader's member name.
#[pg_extern]
fn leader() -> Option<String> {
    current().and_then(|v| text(&v, "leader"))
}

/// This node's member name.
#[pg_extern]
fn member() -> Option<String> {
    current().and_then(|v| text(&v, "member"))
}

/// The cluster's name (Patroni's `scope`).
#[pg_extern]
fn scope() -> Option<String> {
    current().and_then(|v| text(&v, "scope"))
}

/// The timeline this node runs on, as the daemon last saw it.
#[pg_extern]
fn timeline() -> Option<i64> {
    current().and_then(|v| v.get("timeline").and_then(Value::as_i64))
}

/// The leader term as the daemon last saw it: the store's counter at the leader key's
/// creation, larger for every new leadership; NULL when unknown (no leader, a stale state, or
/// a DCS plugin built for ABI 1.0).
#[pg_extern]
fn term() -> Option<i64> {
    current().and_then(|v| v.get("term").and_then(Value::as_i64))
}

/// Bytes this node's replay is behind the leader's last published WAL position: 0 on the
/// primary, NULL when unknown.
#[pg_extern]
fn lag() -> Option<i64> {
    let v = current()?;
    match role_of(&v) {
        "primary" => Some(0),
        "unknown" => None,
        _ => {
            let leader = v.get("leader_wal_position").and_then(Value::as_u64)?;
            // SAFETY: reads the replay position from shared memory.
            let replayed = unsafe { pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut()) };
            Some(leader.saturating_sub(replayed) as i64)
        }
    }
}

/// Seconds since the last replayed transaction committed on the primary while this node is
/// behind; 0 when caught up or on the primary; NULL when unknown.
#[pg_extern]
fn lag_seconds() -> Option<f64> {
    let behind = lag()?;
    if behind == 0 {
        return Some(0.0);
    }
    // SAFETY: plain reads of shared state / the clock.
    let (latest, now) = unsafe { (pg_sys::GetLatestXTime(), pg_sys::GetCurrentTimestamp()) };
    if latest == 0 {
        return None;
    }
    Some(((now - latest) as f64 / 1_000_000.0).max(0.0))
}

/// Every member as the daemon last saw it.
// pgrx reads the column names from the signature itself, so no type alias here.
#[allow(clippy::type_complexity)]
#[pg_extern]
fn members() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(role, Option<String>),
        name!(state, Option<String>),
        name!(host, Option<String>),
        name!(port, Option<i32>),
        name!(timeline, Option<i64>),
        name!(lag, Option<i64>),
        name!(tags, Option<JsonB>),
    ),
> {
    let rows: Vec<_> = current()
        .and_then(|v| v.get("members").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let name = m.get("name").and_then(Value::as_str)?.to_string();
            Some((
                name,
                text(&m, "role"),
                text(&m, "state"),
                text(&m, "host"),
                m.get("port")
                    .and_then(Value::as_i64)
                    .and_then(|p| i32::try_from(p).ok()),
                m.get("timeline").and_then(Value::as_i64),
                m.get("lag").and_then(Value::as_i64),
                m.get("tags").cloned().map(JsonB),
            ))
        })
        .collect();
    TableIterator::new(rows)
}

/// The daemon's whole view (the state file), or `{"role": "unknown", "reason": …}`.
#[pg_extern]
fn state() -> JsonB {
    let Some(dir) = data_dir() else {
        return JsonB(serde_json::json!({"role": "unknown", "reason": "no data directory"}));
    };
    match state::read(&dir, state::monotonic_ns()) {
        state::Reading::Current(mut v) => {
            let role = role_of(&v);
            if let Some(o) = v.as_object_mut() {
                o.insert("role".into(), Value::from(role));
            }
            JsonB(v)
        }
        state::Reading::Unknown(why) => {
            pgrx::warning!("spilo: state unknown: {why}");
            JsonB(serde_json::json!({"role": "unknown", "reason": why}))
        }
    }
}

/// The daemon's last decision: its actions, their reasons and when.
#[pg_extern]
fn last_decision() -> TableIterator<
    'static,
    (
        name!(actions, Vec<String>),
        name!(reasons, Vec<String>),
        name!(at, Option<String>),
    ),
> {
    let list = |d: &Value, key: &str| -> Vec<String> {
        d.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let rows: Vec<_> = current()
        .and_then(|v| v.get("last_decision").cloned())
        .map(|d| vec![(list(&d, "actions"), list(&d, "reasons"), text(&d, "at"))])
        .unwrap_or_default();
    TableIterator::new(rows)
}
