//! The fence: with `shared_preload_libraries = 'spilo'` and `spilo.fence = on`, a primary whose
//! daemon has not renewed the leader lease in time acknowledges no more writes.
//!
//! The daemon writes `lease_deadline_monotonic_ns` into the state file each cycle: the instant
//! its lease renewal, sent at `renewed`, stops protecting it, minus a margin
//! (`renewed + ttl - 1 s`; `spilo-core/src/ha/state_file.rs` argues why no other node can be
//! promoted before `renewed + ttl`). Past that deadline, on a node that is not in recovery:
//! - a transaction that wrote anything fails at commit (a pre-commit callback), with an error
//!   naming the reason, so nothing it did is acknowledged;
//! - INSERT, UPDATE, DELETE and MERGE are refused when they start;
//! - read-only queries keep working;
//! - with `spilo.fence_action = shutdown`, the background worker stops PostgreSQL (fast
//!   shutdown) instead.
//!
//! When the daemon renews again, the deadline moves forward and writes work again (or the
//! daemon, having lost the lease, demotes the node as usual).
//!
//! Cost: a backend re-reads the state file only when its cached deadline has passed; a
//! deadline already read stays valid until it passes (a lease is only ever extended while it is
//! held, and the daemon gives it up only by stopping PostgreSQL first).

use std::cell::Cell;
use std::ffi::CStr;
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use pgrx::PostgresGucEnum;
use serde_json::Value;

use crate::state;

/// `spilo.fence` (superuser-settable, so that the daemon's own bootstrap session can turn it
/// off for itself before the first state file exists).
pub static FENCE: GucSetting<bool> = GucSetting::<bool>::new(false);
/// `spilo.fence_action`.
pub static FENCE_ACTION: GucSetting<FenceAction> =
    GucSetting::<FenceAction>::new(FenceAction::Reject);

/// What the fence does once engaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PostgresGucEnum)]
pub enum FenceAction {
    /// Refuse writes; reads go on.
    Reject,
    /// Fast shutdown of PostgreSQL.
    Shutdown,
}

thread_local! {
    /// The lease deadline this backend last read (monotonic ns; 0 = none).
    static CACHED_DEADLINE: Cell<u64> = const { Cell::new(0) };
}

/// Registers the GUCs (always) and, when preloaded, the hooks and the background worker.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"spilo.fence",
        c"Refuse writes on a primary whose spilo daemon stopped renewing its leader lease.",
        c"Needs shared_preload_libraries = 'spilo'.",
        &FENCE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"spilo.fence_action",
        c"What the fence does: reject writes, or shut PostgreSQL down (fast).",
        c"",
        &FENCE_ACTION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: reading a postmaster global during _PG_init.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    // SAFETY: hooks are installed once, in the postmaster, before any backend exists; the
    // previous ExecutorStart hook is kept and called.
    unsafe {
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
    }
    BackgroundWorkerBuilder::new("spilo fence")
        .set_function("spilo_fence_main")
        .set_library("spilo")
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;

/// Why writes are refused now, or `None` when they are allowed.
pub fn fenced() -> Option<String> {
    if !FENCE.get() {
        return None;
    }
    // SAFETY: a plain read of shared state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return None;
    }
    let now = state::monotonic_ns();
    if CACHED_DEADLINE.with(Cell::get) > now {
        return None;
    }
    let dir = crate::data_dir()?;
    match state::read(&dir, now) {
        state::Reading::Current(v) => {
            let deadline = v
                .get("lease_deadline_monotonic_ns")
                .and_then(Value::as_u64)
                .filter(|_| v.get("is_leader").and_then(Value::as_bool) == Some(true));
            match deadline {
                Some(d) if d > now => {
                    CACHED_DEADLINE.with(|c| c.set(d));
                    None
                }
                Some(d) => Some(format!(
                    "the spilo daemon has not renewed the leader lease: its deadline passed {} ms ago",
                    (now - d) / 1_000_000
                )),
                None => Some("the spilo daemon does not hold the leader lease".to_string()),
            }
        }
        state::Reading::Unknown(why) => Some(format!("no current spilo state ({why})")),
    }
}

fn refuse(why: &str) -> ! {
    ereport!(
        PgLogLevel::ERROR,
        PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
        format!("spilo fence: writes are refused on this primary: {why}"),
        "No write is acknowledged while the fence is engaged; reads keep working."
    );
    unreachable!("ereport(ERROR) does not return")
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32) {
    // SAFETY: PostgreSQL passes a valid QueryDesc.
    let op = unsafe { (*query_desc).operation };
    if matches!(
        op,
        pg_sys::CmdType::CMD_INSERT
            | pg_sys::CmdType::CMD_UPDATE
            | pg_sys::CmdType::CMD_DELETE
            | pg_sys::CmdType::CMD_MERGE
    ) {
        if let Some(why) = fenced() {
            refuse(&why);
        }
    }
    // SAFETY: chaining to the previous hook or the standard executor, as PostgreSQL expects.
    unsafe {
        match PREV_EXECUTOR_START {
            Some(prev) => prev(query_desc, eflags),
            None => pg_sys::standard_ExecutorStart(query_desc, eflags),
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if event != pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT {
        return;
    }
    // Only transactions that wrote something have an xid.
    // SAFETY: a plain read of the current transaction's state.
    if unsafe { pg_sys::GetTopTransactionIdIfAny() } == pg_sys::InvalidTransactionId {
        return;
    }
    if let Some(why) = fenced() {
        refuse(&why);
    }
}

/// The fence's background worker: logs when the fence engages and lifts, and carries out
/// `spilo.fence_action = shutdown`.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn spilo_fence_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let mut engaged = false;
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(100))) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: re-reading postgresql.conf in a background worker, as PostgreSQL's own do.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        CACHED_DEADLINE.with(|c| c.set(0));
        match fenced() {
            Some(why) => {
                if !engaged {
                    log!("spilo fence engaged: {why}");
                    engaged = true;
                }
                if FENCE_ACTION.get() == FenceAction::Shutdown {
                    log!("spilo fence: shutting PostgreSQL down (spilo.fence_action = shutdown)");
                    // SAFETY: SIGINT asks the postmaster for a fast shutdown.
                    unsafe { libc::kill(pg_sys::PostmasterPid, libc::SIGINT) };
                }
            }
            None => {
                if engaged {
                    log!("spilo fence lifted: the leader lease is renewed");
                    engaged = false;
                }
            }
        }
    }
}

/// Whether the fence is armed on this node (`spilo.fence = on` and the library preloaded).
#[pg_extern]
fn fence_armed() -> bool {
    // SAFETY: reading a global set at startup.
    let preloaded = unsafe { !pg_sys::shared_preload_libraries_string.is_null() }
        && unsafe { CStr::from_ptr(pg_sys::shared_preload_libraries_string) }
            .to_string_lossy()
            .split(',')
            .any(|l| l.trim().trim_matches('"') == "spilo");
    FENCE.get() && preloaded
}

/// Whether writes are refused right now, and why (NULL when they are not).
#[pg_extern]
fn fence_reason() -> Option<String> {
    CACHED_DEADLINE.with(|c| c.set(0));
    fenced()
}
