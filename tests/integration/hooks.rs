//! Lua hooks and shell callbacks on real clusters: the example scripts from `examples/hooks/`
//! (backup-DC veto, role log, primary record, webhook), events exactly once per transition,
//! `pre_promote` and `choose_failover_candidate` steering a failover, handlers cut off at their
//! limits while the failover proceeds, a broken script refused on reload.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use spilo_tests::bins::workspace_dir;
use spilo_tests::util::chmod;
use spilo_tests::{note, wait_for, ClusterOpts, NodeOpts, TestCluster};

use crate::ops::{call, expect, wait_replica_of};
use crate::{BOOTSTRAP, REJOIN, REPLICATION};

/// Writes `text` as a world-readable file.
fn write_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, 0o644);
}

/// An HTTP endpoint that answers 200 to everything and keeps the request bodies.
fn webhook_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
    let port = listener.local_addr().expect("local addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Ok(mut s) = keep.lock() {
                s.push(String::from_utf8_lossy(&buf).to_string());
            }
        }
    });
    (port, seen)
}

/// Lines of a node's role log that record `event` (`on_promote`, …).
fn events(log: &Path, event: &str) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some(event))
        .map(str::to_string)
        .collect()
}

/// Waits until `log` holds `n` lines for `event`, then a little longer to see no more come.
fn expect_events(log: &Path, event: &str, n: usize) {
    wait_for(
        &format!("{n} {event} line(s) in {}", log.display()),
        Duration::from_secs(30),
        || match events(log, event).len() {
            k if k >= n => Ok(()),
            k => Err(format!("{k} so far")),
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let lines = events(log, event);
    assert_eq!(
        lines.len(),
        n,
        "{event} must be reported once per transition; {}:\n{}",
        log.display(),
        lines.join("\n")
    );
}

/// Kills a node's daemon, then its postmaster (no hand-over).
fn crash(c: &mut TestCluster, name: &str) {
    let n = c.node_mut(name);
    n.kill_daemon(libc::SIGKILL);
    n.wait_daemon_exit(Duration::from_secs(10))
        .expect("SIGKILLed daemon exits");
    n.kill_postmaster(libc::SIGKILL);
    note(format!("{name}: daemon and postmaster killed"));
}

#[test]
fn example_hooks_veto_the_backup_dc_and_report_each_transition_once() {
    let mut c = TestCluster::start(0, ClusterOpts::named("hooks"));
    let root = c.root().to_path_buf();
    // The four example scripts, as one site script (each keeps its own locals).
    let mut script = String::new();
    for f in [
        "veto_backup_dc.lua",
        "log_role_changes.lua",
        "primary_record.lua",
        "webhook_on_promote.lua",
    ] {
        let p = workspace_dir().join("examples/hooks").join(f);
        script.push_str(&fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
        script.push('\n');
    }
    let script_path = root.join("site.lua");
    write_file(&script_path, &script);
    let callback = root.join("callback.sh");
    write_file(
        &callback,
        "#!/bin/sh\nout=$1; shift\necho \"$@\" >> \"$out\"\n",
    );
    let (hook_port, webhook) = webhook_receiver();

    let dir = |name: &str| -> PathBuf { root.join(name) };
    let base = c.opts.node.clone();
    let opts_for = |name: &str, dc: &str, priority: u32| {
        let mut o = base.clone();
        o.tags = vec![
            ("dc".into(), dc.into()),
            ("failover_priority".into(), priority.to_string()),
        ];
        o.extra_yaml = format!(
            "hooks:\n  script: {}\n  events:\n    before_promote: {{timeout: 3, on_error: allow}}\n",
            script_path.display()
        );
        o.extra_postgresql = format!(
            "  callbacks:\n    on_role_change: sh {} {}\n",
            callback.display(),
            dir(name).join("callbacks.log").display()
        );
        o.env = vec![
            (
                "SPILO_ROLE_LOG".into(),
                dir(name).join("roles.log").display().to_string(),
            ),
            (
                "SPILO_RECORD_FILE".into(),
                dir(name).join("primary.zone").display().to_string(),
            ),
            (
                "SPILO_WEBHOOK_URL".into(),
                format!("http://127.0.0.1:{hook_port}/hook"),
            ),
        ];
        o
    };
    // Two nodes in the main data centre first; the backup node, with the highest failover
    // priority (it would win a plain race), joins once they run.
    for name in ["n1", "n2"] {
        let o = opts_for(name, "main", 1);
        let i = c.add_node(name, name, o);
        c.nodes[i].start();
    }
    let first = c.wait_for_replicas_streaming(BOOTSTRAP);
    let o = opts_for("n3", "backup", 5);
    let i = c.add_node("n3", "n3", o);
    c.nodes[i].start();
    c.wait_for_replicas_streaming(BOOTSTRAP);
    let main = c
        .others(&first)
        .into_iter()
        .find(|n| n != "n3")
        .expect("the other main node");
    expect_events(&dir(&first).join("roles.log"), "on_start", 1);

    // The primary dies: the backup node is vetoed while the other main node is healthy, so the
    // main node takes over although the backup node has the higher priority.
    crash(&mut c, &first);
    let (new, took) = c.wait_for_writer(&[first.as_str()], Duration::from_secs(60));
    note(format!("{new} took over in {took:?}"));
    assert_eq!(
        new, main,
        "the backup-DC node must not win while a main node is healthy"
    );
    // What kept n3 out is one of the two hooks of the site script: its before_promote veto,
    // or, when n3 consulted choose_failover_candidate first, that hook picking the main node
    // (which one n3 meets first depends on which cycle sees the leader key gone).
    let n3_log = c.node("n3").log_text();
    assert!(
        n3_log.contains("promotion vetoed by a hook")
            || n3_log.contains("choose_failover_candidate"),
        "n3 never consulted its hooks; log tail:\n{}",
        c.node("n3").log_tail(40)
    );
    let roles = dir(&main).join("roles.log");
    expect_events(&roles, "on_promote", 1);
    expect_events(&roles, "on_role_change", 1);
    assert!(
        events(&roles, "on_promote")[0].contains("replica->primary"),
        "{:?}",
        events(&roles, "on_promote")
    );
    // The primary record, the Patroni-style callback and the webhook all saw it.
    let zone = fs::read_to_string(dir(&main).join("primary.zone")).unwrap_or_default();
    assert!(
        zone.contains(&format!("IN CNAME {main}.")),
        "primary.zone: {zone:?}"
    );
    // The hook context carries the leader term the node reports on /patroni.
    let v = c.node(&main).patroni().expect("/patroni");
    let t = v["term"]
        .as_u64()
        .unwrap_or_else(|| panic!("no term on {main}'s /patroni: {v}"));
    assert!(
        zone.contains(&format!("; term {t} ")),
        "primary.zone {zone:?} does not carry term {t}"
    );
    let cb = dir(&main).join("callbacks.log");
    wait_for(
        "the on_role_change callback",
        Duration::from_secs(20),
        || {
            let t = fs::read_to_string(&cb).unwrap_or_default();
            if t.contains(&format!("on_role_change primary {}", c.scope)) {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            }
        },
    );
    wait_for("the webhook", Duration::from_secs(20), || {
        let seen = webhook.lock().map(|s| s.clone()).unwrap_or_default();
        match seen.iter().find(|r| {
            r.starts_with("POST /hook") && r.contains(&format!("{main} is the new primary"))
        }) {
            Some(_) => Ok(()),
            None => Err(format!("{} requests so far", seen.len())),
        }
    });

    // The old primary comes back as a replica.
    c.node_mut(&first).restart_daemon();
    wait_replica_of(&c, &first, &main, REJOIN);
    wait_replica_of(&c, "n3", &main, REPLICATION);

    // Switchover main -> first: one on_demote on main, one on_promote on first.
    let r = call(
        c.node(&main),
        "POST",
        "/switchover",
        Some(&json!({"leader": main, "candidate": first})),
    );
    expect("POST /switchover", r, 200, None);
    assert_eq!(c.wait_for_primary(Duration::from_secs(60)), first);
    expect_events(&roles, "on_demote", 1);
    expect_events(&roles, "on_role_change", 2);
    expect_events(&dir(&first).join("roles.log"), "on_promote", 1);

    // A requested restart is one on_restart (no on_stop/on_start); a reload one on_reload.
    let n3_roles = dir("n3").join("roles.log");
    let starts = events(&n3_roles, "on_start").len();
    let r = call(c.node("n3"), "POST", "/restart", Some(&json!({})));
    expect("POST /restart", r, 200, None);
    expect_events(&n3_roles, "on_restart", 1);
    assert_eq!(
        events(&n3_roles, "on_start").len(),
        starts,
        "a restart is not a start"
    );
    assert!(
        events(&n3_roles, "on_stop").is_empty(),
        "a restart is not a stop"
    );
    let r = call(c.node("n3"), "POST", "/reload", Some(&json!({})));
    expect("POST /reload", r, 202, None);
    expect_events(&n3_roles, "on_reload", 1);

    // A broken script is refused on reload; the old one keeps working.
    write_file(&script_path, "spilo.on('on_promote', function(ctx)\n");
    let r = call(c.node(&main), "POST", "/reload", Some(&json!({})));
    expect("POST /reload", r, 202, None);
    wait_for("the refusal in the log", Duration::from_secs(20), || {
        if c.node(&main).log_text().contains("hooks not reloaded") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    wait_replica_of(&c, &main, &first, REPLICATION);
    let r = call(
        c.node(&first),
        "POST",
        "/switchover",
        Some(&json!({"leader": first, "candidate": main})),
    );
    expect("POST /switchover back", r, 200, None);
    assert_eq!(c.wait_for_primary(Duration::from_secs(60)), main);
    expect_events(&roles, "on_promote", 2);
}

#[test]
fn pre_promote_and_choose_failover_candidate_steer_a_failover_despite_runaway_handlers() {
    let mut c = TestCluster::start(1, ClusterOpts::named("hookchoice"));
    let p = c.wait_for_primary(BOOTSTRAP);
    let root = c.root().to_path_buf();
    let script_path = root.join("choose.lua");
    write_file(
        &script_path,
        r#"
-- Pick the last (least preferred) of the allowed candidates.
spilo.on('choose_failover_candidate', function(ctx, candidates)
  return candidates[#candidates]
end)
-- Runaway handlers: each is cut off at its limit, the failover goes on. Only the node the
-- hook picks sleeps in before_promote, so the others' answers (a's veto, b's pick) come first.
spilo.on('before_promote', function(ctx)
  if ctx.member == 'c' then spilo.exec({'sleep', '30'}, {timeout = 60}) end
  return true
end)
spilo.on('on_role_change', function(ctx) while true do end end)
spilo.on('on_promote', function(ctx)
  local t = {}
  for i = 1, 1e9 do t[i] = string.rep('x', 4096) .. i end
end)
spilo.on('on_promote', function(ctx) spilo.log('info', 'PROMOTED ' .. ctx.member) end)
"#,
    );
    let hooks_yaml = format!(
        "hooks:\n  script: {}\n  events:\n    before_promote: {{timeout: 2}}\n    \
         on_role_change: {{timeout: 1}}\n    on_promote: {{timeout: 5, memory_limit_mb: 16}}\n",
        script_path.display()
    );
    // a would win a plain race (priority 3) but pre_promote says no; of b (priority 2) and
    // c (priority 1) the hook picks the last, c.
    for (name, priority, pre_promote) in [("a", 3, true), ("b", 2, false), ("c", 1, false)] {
        let mut o: NodeOpts = c.opts.node.clone();
        o.tags = vec![("failover_priority".into(), priority.to_string())];
        o.extra_yaml = hooks_yaml.clone();
        if pre_promote {
            o.extra_postgresql = "  pre_promote: /bin/false\n".into();
        }
        let i = c.add_node(name, name, o);
        c.nodes[i].start();
    }
    for n in ["a", "b", "c"] {
        wait_replica_of(&c, n, &p, BOOTSTRAP);
    }
    crash(&mut c, &p);
    let bound = Duration::from_secs(c.opts.node.ttl + 40);
    let (new, took) = c.wait_for_writer(&[p.as_str()], bound);
    note(format!("{new} took over in {took:?}"));
    assert_eq!(
        new, "c",
        "choose_failover_candidate picked the last candidate"
    );
    assert!(
        c.node("a").log_text().contains("pre_promote exited with 1"),
        "a's veto is not in its log:\n{}",
        c.node("a").log_tail(40)
    );
    assert!(
        c.node("b")
            .log_text()
            .contains("choose_failover_candidate picked c"),
        "b did not defer to the hook's pick:\n{}",
        c.node("b").log_tail(40)
    );
    // The memory bomb was cut off and the next handler still ran.
    wait_for("PROMOTED c in c's log", Duration::from_secs(30), || {
        if c.node("c").log_text().contains("PROMOTED c") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    // Both the endless on_role_change and the memory bomb count as cut off in /metrics.
    wait_for(
        "spilo_hook_timeouts_total >= 2 on c",
        Duration::from_secs(30),
        || {
            let metrics = c.node("c").api("GET", "/metrics", None)?.text();
            let cut: u64 = metrics
                .lines()
                .find(|l| l.starts_with("spilo_hook_timeouts_total"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if cut >= 2 {
                Ok(())
            } else {
                Err(format!("spilo_hook_timeouts_total {cut}"))
            }
        },
    );
    c.node("c")
        .write_value("hook_rows", "after the failover")
        .expect("the new primary takes writes");
    for r in ["a", "b"] {
        c.wait_for_value(r, "hook_rows", "after the failover", REPLICATION);
    }
}
