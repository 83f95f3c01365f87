//! The daemon's code layout (spilo-core/build.rs): the list of functions the release link
//! gathers, and the reader of callgrind profiles that writes it (scripts/symbol-order.sh).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

use spilo_tests::bins::workspace_dir;

/// Runs scripts/lib/callgrind_symbols.py --costs on `profiles` (file contents) for objects
/// ending in `suffix` and returns the (cost, name) pairs it prints, in its order.
fn read_profiles(suffix: &str, profiles: &[&str]) -> Vec<(u64, String)> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut paths: Vec<PathBuf> = Vec::new();
    for (i, text) in profiles.iter().enumerate() {
        let p = dir.path().join(format!("cg.{i}"));
        std::fs::write(&p, text).expect("write a profile");
        paths.push(p);
    }
    let out = Command::new("python3")
        .arg(workspace_dir().join("scripts/lib/callgrind_symbols.py"))
        .arg("--costs")
        .arg(suffix)
        .args(&paths)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "callgrind_symbols.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 names")
        .lines()
        .map(|l| {
            let (cost, name) = l.split_once(' ').expect("COST NAME");
            (cost.parse().expect("a cost"), name.to_string())
        })
        .collect()
}

#[test]
fn the_profile_reader_orders_the_objects_functions_by_self_cost() {
    // Two profiles in callgrind's format with name compression: `fn=(id) name` defines a
    // name, `fn=(id)` reuses it; `calls=` is followed by the call's inclusive cost, which is
    // the callee's, not the caller's; `cfn=` may define a name first seen as a callee; a
    // recursive call's level is named `name'2`; the events are Ir then Dr here, so the
    // instruction count is the first number after the position.
    let first = "\
version: 1
events: Ir Dr
ob=(1) /tmp/x/spilo
fl=(1) ???
fn=(1) _ZN5spilo4main17h0000000000000001E
0 10 9999
cfn=(2) _ZN5spilo4loop17h0000000000000002E
calls=1 0
0 5000 1
fn=(2)
0 300
+2 200 4
ob=(2) /usr/lib/x86_64-linux-gnu/libc.so.6
fn=(3) memcpy
0 99999
ob=(1)
fn=(4) (below main)
0 7
fn=(5) 0x000000000023b670
0 8
fn=(6) _ZN5spilo4loop17h0000000000000002E'2
0 7
";
    // A second process of the same binary: main again, and a function the first never ran.
    let second = "\
version: 1
events: Ir
ob=(1) /tmp/y/spilo
fl=(1) ???
fn=(1) _ZN5spilo4main17h0000000000000001E
0 490
fn=(2) _RNvCs123_5spilo4idle
0 1
";
    let found = read_profiles("/spilo", &[first, second]);
    let expected = [
        // 300 + 200 + 7 (its recursion level): the busiest first.
        (507, "_ZN5spilo4loop17h0000000000000002E"),
        // 10 + 490 over the two processes; the 5000 of its call is loop's, not main's.
        (500, "_ZN5spilo4main17h0000000000000001E"),
        (1, "_RNvCs123_5spilo4idle"), // ran once, still listed
    ];
    assert_eq!(
        found,
        expected.map(|(c, n)| (c, n.to_string())),
        "libc's memcpy, valgrind's (below main) and bare addresses are not the daemon's symbols"
    );
}

#[test]
fn the_symbol_order_list_names_each_function_once() {
    let path = workspace_dir().join("spilo-core/symbol-order.txt");
    let text = std::fs::read_to_string(&path).expect("spilo-core/symbol-order.txt is there");
    let names: Vec<&str> = text.lines().collect();
    assert!(
        names.len() > 1000,
        "{} names: the list should name the daemon's running code (scripts/symbol-order.sh)",
        names.len()
    );
    let mut seen = HashSet::new();
    for (i, name) in names.iter().enumerate() {
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "line {}: {name:?} is not a symbol name",
            i + 1
        );
        assert!(seen.insert(*name), "line {}: {name} listed twice", i + 1);
    }
    assert!(
        !names.iter().any(|n| n.contains('\'')),
        "a recursion level (name'2) is not a symbol"
    );
    // The daemon's own loop is among them: a list written from another program would not be.
    assert!(
        names
            .iter()
            .any(|n| n.contains("spilo_core") && n.contains("runner")),
        "no function of spilo_core's HA runner in the list"
    );
}
