//! Reading the daemon's state file (`<data_dir>/spilo.state`, format 1; the daemon's
//! `spilo-core/src/ha/state_file.rs` documents it).
//!
//! Everything here is defensive: a missing, unreadable, oversized, truncated, non-JSON,
//! future-format or expired file is [`Reading::Unknown`] with a reason, never an error that
//! aborts the caller's transaction and never a panic.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

/// The format this extension understands.
pub const FORMAT: u64 = 1;
/// The file name in the data directory.
pub const FILE_NAME: &str = "spilo.state";
/// The largest file read (a real one is a few KiB).
pub const MAX_SIZE: u64 = 1 << 20;

/// What the file says, if it can be trusted now.
#[derive(Debug)]
pub enum Reading {
    /// A current state.
    Current(Value),
    /// No usable state, and why.
    Unknown(String),
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the daemon writes deadlines on the same clock).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Reads and checks the state file in `data_dir` at monotonic time `now_ns`.
pub fn read(data_dir: &Path, now_ns: u64) -> Reading {
    let path = data_dir.join(FILE_NAME);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return Reading::Unknown(format!("{}: {e}", path.display())),
    };
    let mut body = Vec::new();
    if let Err(e) = file.take(MAX_SIZE + 1).read_to_end(&mut body) {
        return Reading::Unknown(format!("{}: {e}", path.display()));
    }
    if body.len() as u64 > MAX_SIZE {
        return Reading::Unknown(format!("{}: larger than {MAX_SIZE} bytes", path.display()));
    }
    parse(&body, now_ns)
}

/// Checks a state file's bytes at monotonic time `now_ns`.
pub fn parse(body: &[u8], now_ns: u64) -> Reading {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Reading::Unknown(format!("{FILE_NAME} is not valid JSON: {e}")),
    };
    match v.get("format").and_then(Value::as_u64) {
        Some(FORMAT) => {}
        Some(other) => {
            return Reading::Unknown(format!(
                "{FILE_NAME} has format {other}; this extension reads format {FORMAT}"
            ))
        }
        None => return Reading::Unknown(format!("{FILE_NAME} has no format number")),
    }
    match v.get("valid_until_monotonic_ns").and_then(Value::as_u64) {
        Some(until) if until > now_ns => Reading::Current(v),
        Some(_) => Reading::Unknown(format!(
            "{FILE_NAME} is stale: the daemon has not refreshed it in time"
        )),
        None => Reading::Unknown(format!("{FILE_NAME} has no validity deadline")),
    }
}
