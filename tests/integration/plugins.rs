//! Third-party plugins through the C ABI: a plugin written in C against the header runs a node;
//! plugins built for another ABI are refused at start naming the file and the versions; a
//! plugin that panics or hangs costs the primary its lease (it demotes) but never the daemon,
//! which recovers when the plugin does.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use spilo_tests::bins::{bins, build_c_plugin, plugin_lib};
use spilo_tests::util::{chmod, postgres_command, run_with_timeout};
use spilo_tests::{note, wait_for, DcsEndpoint, Node, NodeOpts, TempRoot};

use crate::BOOTSTRAP;

/// Compiles the C DCS plugin into `dir` with extra `-D` flags; the library's path.
fn build_memdcs(dir: &Path, file: &str, defines: &[&str]) -> PathBuf {
    build_c_plugin(dir, "tests/plugins/c-plugin/memdcs.c", file, defines)
}

fn plugin_endpoint(name: &str, path: &Path, settings: Vec<(String, String)>) -> DcsEndpoint {
    DcsEndpoint::Plugin {
        name: name.into(),
        path: path.to_path_buf(),
        settings,
    }
}

fn spiloctl_check(path: &Path) -> (bool, String) {
    let mut cmd = Command::new(&bins().spiloctl);
    cmd.args(["plugin", "check"]).arg(path);
    let out = run_with_timeout(cmd, Duration::from_secs(30)).expect("spiloctl plugin check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn wait_role(node: &Node, want: &str, timeout: Duration) {
    wait_for(
        &format!("{} to be {want}", node.name),
        timeout,
        || match node.role() {
            Some(r) if r == want => Ok(()),
            other => Err(format!("role {other:?}")),
        },
    );
}

#[test]
fn a_plugin_written_in_c_runs_a_node() {
    let root = TempRoot::new("spilo-plugin-");
    let lib = build_memdcs(root.path(), "libspilo_memdcs.so", &[]);
    let (ok, text) = spiloctl_check(&lib);
    assert!(ok, "spiloctl plugin check refused the C plugin:\n{text}");
    for needle in [
        "plugin:   memdcs 1.0-c",
        "kind:     dcs",
        "abi:      1.1",
        "accepted: yes",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let dcs = plugin_endpoint("memdcs", &lib, Vec::new());
    let mut node = Node::create(
        root.path(),
        "n1",
        "cplugin",
        "n1",
        &dcs,
        NodeOpts::default(),
    );
    node.start();
    wait_role(&node, "primary", BOOTSTRAP);
    node.write_value("plugin_rows", "written through a C plugin's DCS")
        .expect("the primary takes writes");
    assert!(
        node.log_text().contains("plugin loaded"),
        "{}",
        node.log_tail(20)
    );
    node.cleanup();
}

#[test]
fn plugins_built_for_another_abi_are_refused_at_start() {
    let root = TempRoot::new("spilo-plugin-");
    for (file, defines, needle) in [
        (
            "libmajor2.so",
            &["-DMEMDCS_ABI_MAJOR=2"][..],
            "built for plugin ABI 2.1, this spilo speaks 1.1",
        ),
        (
            "libminor9.so",
            &["-DMEMDCS_ABI_MINOR=9"][..],
            "needs plugin ABI 1.9, newer than this spilo's 1.1",
        ),
    ] {
        let lib = build_memdcs(root.path(), file, defines);
        let (ok, text) = spiloctl_check(&lib);
        assert!(!ok, "{file} accepted:\n{text}");
        assert!(text.contains(needle), "{file}: {text}");
        // The daemon refuses to start, naming the file and what differs.
        let dcs = plugin_endpoint("memdcs", &lib, Vec::new());
        let node = Node::create(
            root.path(),
            &format!("node-{file}"),
            "badabi",
            "n1",
            &dcs,
            NodeOpts::default(),
        );
        let mut cmd = postgres_command(&bins().spilo);
        cmd.arg(&node.config_path).current_dir(&node.dir);
        let out = run_with_timeout(cmd, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("spilo with {file} must exit at once: {e}"));
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "spilo started with {file}");
        assert!(
            text.contains(&lib.display().to_string()) && text.contains(needle),
            "the refusal must name {} and say {needle:?}: {text}",
            lib.display()
        );
        assert!(
            !node.data_dir.exists(),
            "{file}: data dir created before refusing"
        );
        // --validate says the same.
        let mut cmd = postgres_command(&bins().spilo);
        cmd.args(["--validate", "--offline"]).arg(&node.config_path);
        let out = run_with_timeout(cmd, Duration::from_secs(30)).expect("spilo --validate");
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle));
    }
    // A library that is not a plugin at all.
    let (ok, text) = spiloctl_check(Path::new("/usr/lib/x86_64-linux-gnu/libz.so.1"));
    assert!(!ok && text.contains("not a spilo plugin"), "{text}");
}

/// Writes `what` to the fault file (world-readable).
fn set_fault(file: &Path, what: &str) {
    fs::write(file, what).expect("write the fault file");
    chmod(file, 0o644);
    note(format!("fault: {what:?}"));
}

fn fault_cycle(fault: &str) {
    let root = TempRoot::new("spilo-plugin-");
    let fault_file = root.path().join("fault");
    set_fault(&fault_file, "none");
    let lib = plugin_lib("libspilo_test_plugin_faulty.so");
    let dcs = plugin_endpoint(
        "faulty",
        &lib,
        vec![("fault_file".into(), fault_file.display().to_string())],
    );
    let opts = NodeOpts::default();
    let ttl = opts.ttl;
    let mut node = Node::create(root.path(), "n1", "faulty", "n1", &dcs, opts);
    node.start();
    wait_role(&node, "primary", BOOTSTRAP);
    assert!(node.try_write("fault_rows"), "the primary takes writes");

    // Every DCS call now panics (or hangs): the primary can no longer renew its lease and
    // stops taking writes within ttl; the daemon stays up and keeps answering.
    set_fault(&fault_file, fault);
    wait_for(
        &format!("the primary to stop taking writes once the plugin calls {fault}"),
        Duration::from_secs(ttl + 15),
        || {
            if node.try_write("fault_rows") {
                Err("still takes writes".into())
            } else {
                Ok(())
            }
        },
    );
    assert!(
        node.daemon_running(),
        "the daemon died with the plugin's {fault}"
    );
    assert!(
        node.api_get("/liveness").is_ok(),
        "the REST API stopped answering"
    );
    let log = node.log_text();
    let expected = if fault == "panic" {
        "plugin panicked: injected fault"
    } else {
        "timed out"
    };
    assert!(
        log.contains(expected),
        "no {expected:?} in the log:\n{}",
        node.log_tail(30)
    );

    // The plugin recovers: so does the node (the in-memory store kept its keys).
    set_fault(&fault_file, "none");
    wait_for(
        "writes again after the fault ended",
        Duration::from_secs(60),
        || {
            if node.try_write("fault_rows") {
                Ok(())
            } else {
                Err(format!("role {:?}", node.role()))
            }
        },
    );
    node.cleanup();
}

#[test]
fn a_panicking_plugin_costs_the_lease_not_the_daemon() {
    fault_cycle("panic");
}

#[test]
fn a_hanging_plugin_is_timed_out_like_an_unreachable_dcs() {
    fault_cycle("hang");
}

/// A plugin binary built before ABI 1.1 — `examples/plugin-etcd-gateway`'s source compiled
/// against the frozen 1.0 SDK (`tests/plugins/abi-1.0`) — is accepted by `spiloctl plugin check`
/// and runs a node on this host; having no creation counters, it gives no term (null), never a
/// made-up one.
#[test]
fn a_plugin_built_for_abi_1_0_keeps_loading_and_runs_a_node() {
    let lib = plugin_lib("libspilo_plugin_etcd_gateway_abi10.so");
    let (ok, text) = spiloctl_check(&lib);
    assert!(ok, "spiloctl plugin check refused the 1.0 plugin:\n{text}");
    for needle in [
        "plugin:   etcd-gateway",
        "kind:     dcs",
        "abi:      1.0 (this spilo: 1.1)",
        "terms:    unknown",
        "accepted: yes",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let root = TempRoot::new("spilo-plugin-");
    let mut etcd = spilo_tests::Etcd::start_in(root.path());
    let dcs = plugin_endpoint(
        "etcd-gateway",
        &lib,
        vec![("hosts".into(), format!("[\"{}\"]", etcd.host_port()))],
    );
    let mut node = Node::create(root.path(), "n1", "abi10", "n1", &dcs, NodeOpts::default());
    node.start();
    wait_role(&node, "primary", BOOTSTRAP);
    node.write_value("abi10_rows", "written through a 1.0 plugin")
        .expect("the primary takes writes");
    let v = node.patroni().expect("/patroni");
    assert!(
        v["term"].is_null(),
        "a 1.0 DCS plugin reports no creation counter, so the term must be null: {v}"
    );
    assert!(
        node.log_text().contains("plugin loaded (ABI 1.0)"),
        "{}",
        node.log_tail(20)
    );
    node.cleanup();
    etcd.stop();
}

/// The current etcd-gateway plugin (ABI 1.1) reports the leader term on `/patroni`.
#[test]
fn a_1_1_dcs_plugin_gives_the_leader_term() {
    let lib = plugin_lib("libspilo_plugin_etcd_gateway.so");
    let (ok, text) = spiloctl_check(&lib);
    assert!(ok && text.contains("terms:    yes"), "{text}");
    let root = TempRoot::new("spilo-plugin-");
    let mut etcd = spilo_tests::Etcd::start_in(root.path());
    let dcs = plugin_endpoint(
        "etcd-gateway",
        &lib,
        vec![("hosts".into(), format!("[\"{}\"]", etcd.host_port()))],
    );
    let mut node = Node::create(root.path(), "n1", "abi11", "n1", &dcs, NodeOpts::default());
    node.start();
    wait_role(&node, "primary", BOOTSTRAP);
    wait_for("a term on /patroni", Duration::from_secs(30), || {
        node.term()
            .filter(|t| *t > 0)
            .ok_or_else(|| "no term yet".to_string())
    });
    node.cleanup();
    etcd.stop();
}

/// `spiloctl plugin check` describes each kind: a storage plugin, a load-balancer plugin in
/// Rust and one in C, and a DCS plugin built for 1.0 by the C header (`-DMEMDCS_ABI_MINOR=0`).
#[test]
fn spiloctl_plugin_check_describes_each_kind() {
    let root = TempRoot::new("spilo-plugin-");
    let c_lb = build_c_plugin(
        root.path(),
        "tests/plugins/c-lb/memlb.c",
        "libmemlb.so",
        &[],
    );
    let c_dcs10 = build_memdcs(root.path(), "libmemdcs10.so", &["-DMEMDCS_ABI_MINOR=0"]);
    for (lib, needles) in [
        (
            plugin_lib("libspilo_storage_fs_plugin.so"),
            vec![
                "plugin:   fs ",
                "kind:     storage",
                "vtable:   storage 1.1: put_open, put_write, put_finish, put_abort",
                "accepted: yes",
            ],
        ),
        (
            plugin_lib("libspilo_test_plugin_lb_memory.so"),
            vec![
                "plugin:   lb-memory ",
                "kind:     load_balancer",
                "vtable:   load balancer 1.1: set_primary(member, term)",
                "accepted: yes",
            ],
        ),
        (
            c_lb,
            vec![
                "plugin:   memlb 1.1-c",
                "kind:     load_balancer",
                "accepted: yes",
            ],
        ),
        (
            c_dcs10,
            vec![
                "kind:     dcs",
                "abi:      1.0 (this spilo: 1.1)",
                "terms:    unknown",
                "accepted: yes",
            ],
        ),
    ] {
        let (ok, text) = spiloctl_check(&lib);
        assert!(ok, "{} refused:\n{text}", lib.display());
        for needle in needles {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
