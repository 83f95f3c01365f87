//! Whether PostgreSQL can archive through the spilo extension's archive module
//! (`archive_library = 'spilo'`, spilo-pgext), checked when the daemon starts.

use std::path::{Path, PathBuf};

/// What the check found.
#[derive(Debug, PartialEq, Eq)]
pub enum ModuleCheck {
    /// PostgreSQL can load the module.
    Ready,
    /// It cannot, and why (no library, one without the module, a PostgreSQL other than 15).
    Unavailable(String),
    /// The library on disk has the module, but the running postmaster preloaded an older copy
    /// (`shared_preload_libraries`), which its archiver would use: the module only once
    /// PostgreSQL has restarted.
    NotYet(String),
}

/// Checks PostgreSQL in `bin_dir`, running (or not) on `data_dir`. The module is built for
/// PostgreSQL 15's interface (16 changed it); the library must be in PostgreSQL's library
/// directory (`pg_config --pkglibdir`, else `bin_dir/../lib`) and define the module's entry
/// point (a library from before the module has the extension's SQL functions only).
pub fn check(bin_dir: &Path, data_dir: &Path) -> ModuleCheck {
    match super::ctl::server_major(bin_dir) {
        Ok(15) => {}
        Ok(v) => {
            return ModuleCheck::Unavailable(format!(
                "PostgreSQL {v}: the spilo extension's archive module is built for PostgreSQL 15"
            ))
        }
        Err(e) => {
            return ModuleCheck::Unavailable(format!("the PostgreSQL version is unknown: {e}"))
        }
    }
    let lib = pkglibdir(bin_dir).join("spilo.so");
    match file_contains(&lib, b"_PG_archive_module_init\0") {
        Ok(true) => {}
        Ok(false) => {
            return ModuleCheck::Unavailable(format!(
                "{} has no archive module (a spilo extension older than this daemon: install \
                 the current one, scripts/install-pgext.sh)",
                lib.display()
            ))
        }
        Err(e) => {
            return ModuleCheck::Unavailable(format!(
                "PostgreSQL has no spilo extension library ({}: {e}; scripts/install-pgext.sh \
                 installs it)",
                lib.display()
            ))
        }
    }
    if let Some(why) = preloaded_older(data_dir, &lib) {
        return ModuleCheck::NotYet(why);
    }
    ModuleCheck::Ready
}

/// Why the postmaster running on `data_dir` holds an older copy of `lib`, if it does: it has a
/// `spilo.so` mapped (preloaded) and started before the file on disk was last written.
fn preloaded_older(data_dir: &Path, lib: &Path) -> Option<String> {
    let pidfile = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = pidfile.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    let started: u64 = lines.nth(1)?.trim().parse().ok()?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    if !maps.lines().any(|l| l.contains("/spilo.so")) {
        return None;
    }
    let written = std::fs::metadata(lib)
        .and_then(|m| m.modified())
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    (written >= started).then(|| {
        format!(
            "the running PostgreSQL (pid {pid}) preloaded the spilo library before {} was \
             installed; its archiver would load the older copy",
            lib.display()
        )
    })
}

/// Whether `needle` occurs in the file at `path` (read 64 KiB at a time).
pub(crate) fn file_contains(path: &Path, needle: &[u8]) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let keep = needle.len().saturating_sub(1);
    let mut buf = vec![0u8; 64 * 1024 + keep];
    let mut have = 0;
    loop {
        let n = f.read(&mut buf[have..])?;
        if n == 0 {
            return Ok(false);
        }
        have += n;
        if buf[..have].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        // Keep the tail that could start a match across the boundary.
        let from = have.saturating_sub(keep);
        buf.copy_within(from..have, 0);
        have -= from;
    }
}

/// PostgreSQL's library directory: what `pg_config --pkglibdir` next to the server says, else
/// `bin_dir/../lib` (Debian's and PGDG's layout).
fn pkglibdir(bin_dir: &Path) -> PathBuf {
    let pg_config = bin_dir.join("pg_config");
    #[allow(clippy::disallowed_methods)] // PostgreSQL's own tool, once at start-up
    let out = std::process::Command::new(&pg_config)
        .arg("--pkglibdir")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(o) = out {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if o.status.success() && !dir.is_empty() {
            return PathBuf::from(dir);
        }
    }
    bin_dir.join("../lib")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_found_anywhere_in_a_file_across_read_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let needle = b"_PG_archive_module_init\0";
        // Every offset around the 64 KiB boundary, and at the very end.
        for at in [0usize, 65_530, 65_536 - 10, 65_536, 200_000 - needle.len()] {
            let mut bytes = vec![0x5au8; 200_000];
            bytes[at..at + needle.len()].copy_from_slice(needle);
            let p = dir.path().join(format!("lib{at}.so"));
            std::fs::write(&p, &bytes).expect("write");
            assert!(file_contains(&p, needle).expect("read"), "at {at}");
        }
        // Without its NUL (a longer name) it is not the entry point.
        let mut bytes = vec![0u8; 100_000];
        bytes[70_000..70_000 + 23].copy_from_slice(&needle[..23]);
        bytes[70_023] = b'x';
        let p = dir.path().join("other.so");
        std::fs::write(&p, &bytes).expect("write");
        assert!(!file_contains(&p, needle).expect("read"));
        assert!(file_contains(&dir.path().join("missing.so"), needle).is_err());
    }

    #[test]
    fn a_postmaster_that_preloaded_the_library_before_it_was_replaced_is_not_ready_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lib = dir.path().join("spilo.so");
        std::fs::write(&lib, vec![7u8; 4096]).expect("write");
        let pidfile = |started: u64| {
            std::fs::write(
                dir.path().join("postmaster.pid"),
                format!(
                    "{}\n{}\n{started}\n5432\n",
                    std::process::id(),
                    dir.path().display()
                ),
            )
            .expect("pidfile")
        };
        // This test process stands in for the postmaster. Mapping nothing named spilo.so, it
        // preloaded nothing.
        pidfile(0);
        assert_eq!(preloaded_older(dir.path(), &lib), None);
        // Now it maps the library, as a postmaster that preloaded it does.
        let f = std::fs::File::open(&lib).expect("open");
        // SAFETY: a read-only private mapping of a 4 KiB file, unmapped below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        // Started (1970) before the file was written: its copy is older.
        pidfile(0);
        let why = preloaded_older(dir.path(), &lib).expect("an older copy");
        assert!(why.contains("preloaded the spilo library"), "{why}");
        // Started after the file was written (2100): its copy is the current one.
        pidfile(4_102_444_800);
        assert_eq!(preloaded_older(dir.path(), &lib), None);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(at, 4096) };
        // No pidfile: nothing running.
        std::fs::remove_file(dir.path().join("postmaster.pid")).expect("rm");
        assert_eq!(preloaded_older(dir.path(), &lib), None);
    }
}
