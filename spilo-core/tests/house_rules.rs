//! House rules that `clippy.toml` cannot scope to a directory, checked over the sources:
//! the HA loop (`src/ha/`) does no filesystem IO and no blocking sleep of its own (it goes
//! through `postgres/`), and only `postgres/` and `hooks/` start processes. Test modules are
//! exempt (everything from a file's first `#[cfg(test)]` on).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The non-test part of every `.rs` file under `src/<sub>`.
fn sources(sub: &str) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(sub);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read a source file");
            let code = match text.find("#[cfg(test)]") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            (p, code)
        })
        .collect()
}

/// Lines of `code` (comments skipped) containing any of `needles`.
fn offending(code: &str, needles: &[&str]) -> Vec<String> {
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn the_ha_loop_does_no_filesystem_io_or_blocking_sleep_of_its_own() {
    let mut bad = Vec::new();
    for (path, code) in sources("ha") {
        for line in offending(&code, &["std::fs", "fs::", "thread::sleep", "File::"]) {
            bad.push(format!("{}: {line}", path.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "filesystem IO or blocking sleep in ha/ (move it to postgres/):\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_postgres_and_hooks_start_processes() {
    let mut bad = Vec::new();
    for sub in ["ha", "api", "dcs", "config", "plugin"] {
        for (path, code) in sources(sub) {
            for line in offending(&code, &["Command::new", "process::Command"]) {
                bad.push(format!("{}: {line}", path.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "processes started outside postgres/ and hooks/:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scan_sees_the_code_it_checks() {
    // The rules above would pass vacuously if the scan found nothing.
    let ha = sources("ha");
    assert!(ha.len() >= 10, "found only {} files under src/ha", ha.len());
    assert!(ha.iter().any(|(_, c)| c.contains("fn decide(")));
    let pg = sources("postgres");
    assert!(pg
        .iter()
        .any(|(_, c)| !offending(c, &["std::fs"]).is_empty()));
}
