//! The archive module: with `archive_library = 'spilo'`, PostgreSQL's archiver hands each WAL
//! file to the spilo daemon over the daemon's archive socket (`push NAME`, answered `ok` once
//! the file is durably stored, or `err MESSAGE`), from the archiver's own process: no shell and
//! no `spilo wal-push` process per file. The daemon writes `archive_library`,
//! `spilo.archive_socket` and `spilo.archive_timeout` itself (`backup.archive.method`).
//!
//! A failure is logged as a WARNING carrying the daemon's message and answered "not archived",
//! which PostgreSQL retries. Nothing here raises an ERROR: in PostgreSQL 15 an ERROR in an
//! archive module ends the archiver process (the callbacks are guarded all the same, so that
//! anything unforeseen is an ERROR that restarts the archiver, never an unwind into C).
//!
//! Built for PostgreSQL 15's archive module interface (16 changed it); the daemon uses the
//! module only on a PostgreSQL 15 (spilo-core/src/postgres/archive_module.rs).
//!
//! Tested through real clusters archiving with it (tests/integration/archive.rs).

use std::ffi::{CStr, CString};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;

/// `spilo.archive_socket`: the daemon's archive socket.
pub static SOCKET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// `spilo.archive_timeout`: seconds to wait for the daemon's answer.
pub static TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(65);

/// Registers the module's settings.
pub fn init() {
    GucRegistry::define_string_guc(
        c"spilo.archive_socket",
        c"The spilo daemon's archive socket (archive_library = 'spilo').",
        c"Written by the spilo daemon.",
        &SOCKET,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"spilo.archive_timeout",
        c"Seconds the archive module waits for the spilo daemon to store a WAL file.",
        c"Written by the spilo daemon.",
        &TIMEOUT,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

/// The entry point PostgreSQL looks up in an `archive_library`.
///
/// # Safety
/// Called by PostgreSQL's archiver with a valid callbacks struct to fill in.
#[no_mangle]
pub unsafe extern "C-unwind" fn _PG_archive_module_init(cb: *mut pg_sys::ArchiveModuleCallbacks) {
    if cb.is_null() {
        return;
    }
    // SAFETY: PostgreSQL passes its own, writable struct.
    unsafe {
        (*cb).check_configured_cb = Some(check_configured);
        (*cb).archive_file_cb = Some(archive_file);
        (*cb).shutdown_cb = None;
    }
}

/// The socket path, when set.
fn socket() -> Option<String> {
    SOCKET
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

#[pg_guard]
unsafe extern "C-unwind" fn check_configured() -> bool {
    socket().is_some()
}

#[pg_guard]
unsafe extern "C-unwind" fn archive_file(
    file: *const std::ffi::c_char,
    _path: *const std::ffi::c_char,
) -> bool {
    if file.is_null() {
        return false;
    }
    // SAFETY: PostgreSQL passes the WAL file's name as a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(file) }
        .to_string_lossy()
        .into_owned();
    let Some(socket) = socket() else {
        pgrx::warning!("spilo: {name} not archived: spilo.archive_socket is not set");
        return false;
    };
    let timeout = Duration::from_secs(u64::try_from(TIMEOUT.get()).unwrap_or(1).max(1));
    // Nothing below should panic; if it does, the file is reported as not archived rather
    // than taking the archiver down.
    let r = std::panic::catch_unwind(|| push(Path::new(&socket), &name, timeout));
    match r {
        Ok(Ok(())) => true,
        Ok(Err(why)) => {
            pgrx::warning!("spilo: {name} not archived: {why}");
            false
        }
        Err(_) => {
            pgrx::warning!("spilo: {name} not archived: the archive module failed");
            false
        }
    }
}

/// Asks the daemon at `socket` to archive the WAL file `name`, waiting at most `timeout` for
/// each step. The message of an error names the socket or carries the daemon's answer.
pub fn push(socket: &Path, name: &str, timeout: Duration) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
    {
        return Err(format!(
            "'{}' is not a WAL file name",
            name.escape_default()
        ));
    }
    let sock = socket.display();
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the spilo daemon's archive socket {sock}: {e}"))?;
    let no_answer = |e: std::io::Error| {
        format!("no answer from the spilo daemon within {timeout:?} ({sock}): {e}")
    };
    s.set_read_timeout(Some(timeout)).map_err(no_answer)?;
    s.set_write_timeout(Some(timeout)).map_err(no_answer)?;
    s.write_all(format!("push {name}\n").as_bytes())
        .map_err(no_answer)?;
    let mut line = String::new();
    BufReader::new(s.take(4096))
        .read_line(&mut line)
        .map_err(no_answer)?;
    match line.trim_end() {
        "ok" => Ok(()),
        "" => Err(format!(
            "the spilo daemon closed the connection without an answer ({sock})"
        )),
        other => match other.strip_prefix("err ") {
            Some(e) => Err(e.to_string()),
            None => Err(format!(
                "unexpected answer from the spilo daemon: '{}'",
                other.escape_default()
            )),
        },
    }
}
