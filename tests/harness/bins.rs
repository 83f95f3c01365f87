//! The spilo binaries under test, copied once per test process into a world-readable
//! directory so that the `postgres` OS user can run them even when the checkout is not
//! readable by it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::util::{chmod, run_with_timeout};

/// PostgreSQL 15's binaries.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// etcd.
pub const ETCD: &str = "/usr/bin/etcd";
/// etcdctl (v3 API).
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
/// The name prefix of the per-process copy directory.
const COPY_PREFIX: &str = "spilo-it-bin-";

/// Paths of the copied binaries.
#[derive(Debug)]
pub struct Bins {
    /// The world-readable directory holding the copies.
    pub dir: PathBuf,
    /// The daemon.
    pub spilo: PathBuf,
    /// The CLI.
    pub spiloctl: PathBuf,
}

/// Where the built binaries are: `SPILO_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else
/// `<workspace>/target/debug`.
pub fn source_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SPILO_BIN_DIR") {
        return PathBuf::from(d);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_absolute() {
            t
        } else {
            workspace_dir().join(t)
        };
        return t.join("debug");
    }
    workspace_dir().join("target").join("debug")
}

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate has a parent directory")
        .to_path_buf()
}

/// The copies, made on first use.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(copy_bins)
}

fn copy_bins() -> Bins {
    remove_stale_copies();
    let src = source_dir();
    let dir = PathBuf::from(format!("/tmp/{COPY_PREFIX}{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    chmod(&dir, 0o755);
    let copy = |name: &str| -> PathBuf {
        let from = src.join(name);
        if !from.is_file() {
            panic!(
                "{} not found: build it first (`cargo build -p spilo-core`) or set SPILO_BIN_DIR",
                from.display()
            );
        }
        let to = dir.join(name);
        fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        chmod(&to, 0o755);
        to
    };
    let spilo = copy("spilo");
    let spiloctl = copy("spiloctl");
    Bins {
        dir,
        spilo,
        spiloctl,
    }
}

/// Removes copy directories left by earlier test processes that no longer run.
fn remove_stale_copies() {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(COPY_PREFIX)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A plugin library built in this workspace (`lib<crate>.so`), copied next to the binaries so
/// that the `postgres` user can load it.
pub fn plugin_lib(file_name: &str) -> PathBuf {
    let from = source_dir().join(file_name);
    if !from.is_file() {
        panic!(
            "{} not found: build the workspace first (`cargo build --workspace`)",
            from.display()
        );
    }
    // One copy at a time, made under a temporary name and renamed into place: a test that has
    // the library mapped already must never see it truncated by another test's copy (SIGBUS).
    static COPYING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = COPYING.lock().unwrap_or_else(|p| p.into_inner());
    let to = bins().dir.join(file_name);
    if !to.is_file() {
        let tmp = bins().dir.join(format!(".{file_name}.copying"));
        fs::copy(&from, &tmp)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), tmp.display()));
        chmod(&tmp, 0o755);
        fs::rename(&tmp, &to)
            .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), to.display()));
    }
    to
}

/// Compiles the C plugin `source` (relative to the workspace) into `dir/file` with extra `-D`
/// flags, against the SDK's header (`plugins/sdk/include`) and the helpers the C test plugins
/// share (`tests/plugins/c-common`). Panics with the compiler's words when it fails.
pub fn build_c_plugin(dir: &Path, source: &str, file: &str, defines: &[&str]) -> PathBuf {
    let out = dir.join(file);
    let src = workspace_dir().join(source);
    let mut cmd = std::process::Command::new("cc");
    cmd.args(["-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-O2"])
        .args(defines)
        .arg("-I")
        .arg(workspace_dir().join("plugins/sdk/include"))
        .arg("-I")
        .arg(workspace_dir().join("tests/plugins/c-common"))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .arg("-lpthread");
    let r = run_with_timeout(cmd, std::time::Duration::from_secs(60)).expect("run cc");
    assert!(
        r.status.success(),
        "cc {}: {}",
        src.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    chmod(&out, 0o755);
    out
}
