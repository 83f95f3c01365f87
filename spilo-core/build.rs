//! Links the `spilo` daemon with its code laid out in the order it runs: the functions named
//! in `symbol-order.txt` (those a daemon runs from start through bootstrap, replication,
//! switchovers, hand-overs and failovers, the busiest first; written by
//! `scripts/symbol-order.sh`) are placed together at the start of `.text`. The kernel maps an
//! executable's pages 64 KiB around every page fault, so code that runs scattered among code
//! that never does keeps nearly the whole binary resident; gathered, the daemon's resident
//! text is about the size of the code it runs. A name the file lists that the binary lacks
//! (code changed since the file was written) is skipped; the cost is memory, never behaviour.
//!
//! Release builds of the daemon only, and only when the linker takes the option: the script
//! first links an empty program with the same rustc, target, RUSTFLAGS and linker and the two
//! options (rust-lld, rustup's default on x86_64 Linux since Rust 1.90, does; GNU ld does
//! not), and links the daemon without them otherwise. `SPILO_SYMBOL_ORDER=off` skips it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The linker options that apply the list.
fn options(file: &Path) -> [String; 2] {
    [
        format!("-Wl,--symbol-ordering-file={}", file.display()),
        "-Wl,--no-warn-symbol-ordering".to_string(),
    ]
}

/// Whether an empty program links with `options` the way the daemon would be linked.
fn linker_takes(options: &[String], target: &str, out_dir: &Path) -> bool {
    let source = out_dir.join("symbol_order_probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    // The build script is not the daemon: the house rule on processes is about the daemon.
    #[allow(clippy::disallowed_methods)]
    let mut cmd = Command::new(rustc);
    cmd.arg("--edition=2021")
        .arg("--crate-type=bin")
        .arg("--target")
        .arg(target)
        .arg("-o")
        .arg(out_dir.join("symbol_order_probe"))
        .arg(&source);
    // RUSTFLAGS as cargo hands them to every rustc (separated by 0x1f).
    if let Ok(flags) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    // A linker chosen in .cargo/config or CARGO_TARGET_<triple>_LINKER.
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut arg = std::ffi::OsString::from("-Clinker=");
        arg.push(linker);
        cmd.arg(arg);
    }
    for o in options {
        cmd.arg(format!("-Clink-arg={o}"));
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=SPILO_SYMBOL_ORDER");
    let wanted = env::var("SPILO_SYMBOL_ORDER").as_deref() != Ok("off");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let file = Path::new(&dir).join("symbol-order.txt");
    if !(wanted && release && file.is_file()) {
        return;
    }
    let target = env::var("TARGET").unwrap_or_default();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let options = options(&file);
    if linker_takes(&options, &target, &out_dir) {
        for o in &options {
            println!("cargo:rustc-link-arg-bin=spilo={o}");
        }
    } else {
        println!(
            "cargo:warning=the linker does not take --symbol-ordering-file: the daemon is linked \
             without its code layout (more resident memory, nothing else)"
        );
    }
}
