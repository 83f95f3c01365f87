//! The state file the daemon writes into the data directory every cycle, and that the `spilo`
//! PostgreSQL extension reads (`SELECT spilo.role()`, its fence): one definition of its name,
//! format number, size limit and clock, and the one reader both sides trust.
//!
//! `<data_dir>/spilo.state`, JSON, format 1 (the daemon's `ha::state_file` writes it and
//! documents each field). Times named `*_monotonic_ns` are on `CLOCK_MONOTONIC`, which every
//! process on the host shares ([`monotonic_ns`]).
//!
//! The reader is defensive: a missing, unreadable, oversized, truncated, non-JSON,
//! future-format or expired file is [`Reading::Unknown`] with a reason, never an error that
//! aborts the caller's transaction and never a panic.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

/// The format written and understood.
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

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock the daemon writes deadlines on and readers
/// compare them with.
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
                "{FILE_NAME} has format {other}; this reader understands format {FORMAT}"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(extra: &str) -> Vec<u8> {
        format!(r#"{{"format": 1, "valid_until_monotonic_ns": 1000{extra}}}"#).into_bytes()
    }

    #[test]
    fn a_current_file_reads_and_a_stale_or_foreign_one_is_unknown() {
        assert!(matches!(parse(&file(""), 999), Reading::Current(_)));
        assert!(matches!(parse(&file(""), 1000), Reading::Unknown(w) if w.contains("stale")));
        assert!(
            matches!(parse(br#"{"format": 2, "valid_until_monotonic_ns": 5}"#, 1), Reading::Unknown(w) if w.contains("format 2"))
        );
        assert!(
            matches!(parse(b"{\"format\": 1", 1), Reading::Unknown(w) if w.contains("not valid JSON"))
        );
        assert!(
            matches!(parse(br#"{"format": 1}"#, 1), Reading::Unknown(w) if w.contains("validity"))
        );
        assert!(matches!(parse(b"[]", 1), Reading::Unknown(w) if w.contains("no format")));
    }

    #[test]
    fn a_missing_or_oversized_file_is_unknown() {
        let dir = std::env::temp_dir().join(format!("spilo-sdk-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert!(matches!(read(&dir, 1), Reading::Unknown(_)));
        std::fs::write(dir.join(FILE_NAME), vec![b' '; MAX_SIZE as usize + 1]).expect("write");
        assert!(matches!(read(&dir, 1), Reading::Unknown(w) if w.contains("larger than")));
        std::fs::write(dir.join(FILE_NAME), file("")).expect("write");
        assert!(matches!(read(&dir, 999), Reading::Current(_)));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(monotonic_ns() > 0);
    }
}
