//! Links the `spilo` daemon with its code laid out in the order it runs: the functions named
//! in `symbol-order.txt` (those a daemon runs from start through bootstrap, replication,
//! switchovers and hand-overs, the busiest first; written by `scripts/symbol-order.sh`) are
//! placed together at the start of `.text`. The kernel maps an executable's pages 64 KiB
//! around every page fault, so code that runs scattered among code that never does keeps
//! nearly the whole binary resident; gathered, the daemon's resident text is about the size
//! of the code it runs. A name the file lists that the binary lacks (code changed since the
//! file was written) is skipped; the cost is memory, never behaviour.
//!
//! Only release builds of the daemon for x86_64 Linux with Rust 1.90 or later, whose default
//! linker there (rust-lld) reads the file; not when RUSTFLAGS choose a linker of their own;
//! `SPILO_SYMBOL_ORDER=off` links without it.

use std::env;
use std::path::Path;
use std::process::Command;

/// Whether this rustc links x86_64 Linux binaries with rust-lld by default (1.90 and later).
fn rustc_links_with_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // The build script is not the daemon: the house rule on processes is about the daemon.
    #[allow(clippy::disallowed_methods)]
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().ok());
    matches!((numbers.next(), numbers.next()), (Some(Some(1)), Some(Some(minor))) if minor >= 90)
}

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=SPILO_SYMBOL_ORDER");
    let target = env::var("TARGET").unwrap_or_default();
    let profile = env::var("PROFILE").unwrap_or_default();
    let wanted = env::var("SPILO_SYMBOL_ORDER").as_deref() != Ok("off");
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let file = Path::new(&dir).join("symbol-order.txt");
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let own_linker = flags.contains("linker");
    if wanted
        && profile == "release"
        && target == "x86_64-unknown-linux-gnu"
        && file.is_file()
        && !own_linker
        && rustc_links_with_lld()
    {
        println!(
            "cargo:rustc-link-arg-bin=spilo=-Wl,--symbol-ordering-file={}",
            file.display()
        );
        println!("cargo:rustc-link-arg-bin=spilo=-Wl,--no-warn-symbol-ordering");
    }
}
