//! The plugin against a real etcd, through the `DcsPlugin` trait: two members of one cluster,
//! each its own instance.

mod common;

use std::time::{Duration, Instant};

use common::{within, Etcd, Opts};
use spilo_sdk::abi::{STATUS_INVALID, STATUS_REFUSED, STATUS_TIMEOUT, STATUS_UNAVAILABLE};
use spilo_sdk::plugin::DcsPlugin;
use spilo_sdk::Cas;

#[test]
fn the_leader_key_is_created_only_if_absent_and_released_only_by_its_holder() {
    let etcd = Etcd::start();
    let n1 = Opts::new(&[etcd.host()], "n1").create();
    let n2 = Opts::new(&[etcd.host()], "n2").create();

    let s1 = n1.keepalive(within(3000)).expect("keepalive");
    assert!(s1.new_session && s1.id != 0);
    let again = n1.keepalive(within(3000)).expect("keepalive");
    assert_eq!((again.id, again.new_session), (s1.id, false));
    n1.put_member(b"{\"role\":\"primary\"}", within(3000))
        .expect("member n1");
    n2.put_member(b"{\"role\":\"replica\"}", within(3000))
        .expect("member n2");

    assert!(n1.acquire_leader(within(3000)).expect("acquire"));
    assert!(
        !n2.acquire_leader(within(3000)).expect("acquire"),
        "n1 holds it"
    );
    assert!(
        n1.acquire_leader(within(3000)).expect("acquire"),
        "our own key, same lease"
    );
    assert!(
        !n2.release_leader(within(3000)).expect("release"),
        "n2 does not hold it"
    );
    assert!(
        !n2.reattach_leader(within(3000)).expect("reattach"),
        "n1's name is on it"
    );
    assert!(n1.reattach_leader(within(3000)).expect("reattach"));

    let from_n1 = n1.snapshot(within(3000)).expect("snapshot");
    let from_n2 = n2.snapshot(within(3000)).expect("snapshot");
    assert!(from_n1.revision > 0);
    let leader = from_n1.get("leader").expect("leader key");
    assert_eq!(leader.value, b"n1");
    assert!(leader.owned_by_us);
    assert!(!from_n2.get("leader").expect("leader key").owned_by_us);
    assert_eq!(
        from_n2.get("members/n1").map(|e| e.value.as_slice()),
        Some(&b"{\"role\":\"primary\"}"[..])
    );
    assert!(from_n2.get("members/n2").expect("member").owned_by_us);

    assert!(n1.release_leader(within(3000)).expect("release"));
    assert!(n1
        .snapshot(within(3000))
        .expect("snapshot")
        .get("leader")
        .is_none());
    assert!(
        n2.acquire_leader(within(3000)).expect("acquire"),
        "free again"
    );
}

#[test]
fn compare_and_set_conflicts_are_reported_as_false() {
    let etcd = Etcd::start();
    let a = Opts::new(&[etcd.host()], "a").create();
    let b = Opts::new(&[etcd.host()], "b").create();

    assert!(a
        .put("config", b"v1", Cas::Absent, within(3000))
        .expect("put"));
    assert!(
        !b.put("config", b"v2", Cas::Absent, within(3000))
            .expect("put"),
        "exists"
    );
    let version = b
        .snapshot(within(3000))
        .expect("snapshot")
        .get("config")
        .expect("config")
        .version;
    assert!(a
        .put("config", b"v2", Cas::Version(version), within(3000))
        .expect("put"));
    assert!(
        !b.put("config", b"v3", Cas::Version(version), within(3000))
            .expect("put"),
        "stale"
    );
    assert!(
        !b.delete("config", Cas::Version(version), within(3000))
            .expect("delete"),
        "stale"
    );
    let config = b
        .snapshot(within(3000))
        .expect("snapshot")
        .get("config")
        .cloned()
        .expect("config");
    assert_eq!(config.value, b"v2");
    assert!(
        !config.owned_by_us,
        "persistent keys are not bound to a session"
    );
    assert!(b
        .delete("config", Cas::Version(config.version), within(3000))
        .expect("delete"));

    assert!(a
        .put("history", b"[]", Cas::Any, within(3000))
        .expect("put"));
    assert!(a
        .put("history", b"[1]", Cas::Any, within(3000))
        .expect("put"));
    assert!(b.delete("history", Cas::Any, within(3000)).expect("delete"));
    assert!(a
        .snapshot(within(3000))
        .expect("snapshot")
        .entries
        .is_empty());
    assert_eq!(
        a.put("", b"x", Cas::Any, within(3000))
            .map_err(|e| e.status),
        Err(STATUS_INVALID)
    );
}

#[test]
fn the_leader_key_vanishes_within_ttl_after_its_holder_stops_keeping_alive() {
    let etcd = Etcd::start();
    let mut opts = Opts::new(&[etcd.host()], "n1");
    opts.ttl = Duration::from_secs(2);
    let n1 = opts.create();
    let n2 = Opts::new(&[etcd.host()], "n2").create();
    n1.put_member(b"n1", within(3000)).expect("member");
    assert!(n1.acquire_leader(within(3000)).expect("acquire"));
    let last_renewal = Instant::now();

    // n1 stops keeping alive; etcd expires the lease after its TTL (plus its own slack).
    let gone = loop {
        let snapshot = n2.snapshot(within(3000)).expect("snapshot");
        if snapshot.get("leader").is_none() {
            assert!(
                snapshot.get("members/n1").is_none(),
                "the member key shares the lease"
            );
            break last_renewal.elapsed();
        }
        assert!(
            last_renewal.elapsed() < Duration::from_secs(2 + 4),
            "leader key outlived its lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        gone >= Duration::from_millis(1500),
        "expired too early: {gone:?}"
    );
    assert!(n2.acquire_leader(within(3000)).expect("acquire"));

    let session = n1.keepalive(within(3000)).expect("keepalive");
    assert!(session.new_session, "the old lease expired");
    assert!(
        !n1.reattach_leader(within(3000)).expect("reattach"),
        "n2 holds it now"
    );
    n1.put_member(b"n1 again", within(3000)).expect("member");
    assert!(
        n1.snapshot(within(3000))
            .expect("snapshot")
            .get("members/n1")
            .expect("member")
            .owned_by_us
    );
}

#[test]
fn close_revokes_the_session_and_a_ttl_change_makes_a_new_one() {
    let etcd = Etcd::start();
    let n1 = Opts::new(&[etcd.host()], "n1").create();
    let first = n1.keepalive(within(3000)).expect("keepalive");
    n1.set_ttl(Duration::from_secs(3));
    let second = n1.keepalive(within(3000)).expect("keepalive");
    assert!(second.new_session && second.id != first.id);

    n1.put_member(b"n1", within(3000)).expect("member");
    assert!(n1.acquire_leader(within(3000)).expect("acquire"));
    n1.close(within(3000)).expect("close");
    let snapshot = n1.snapshot(within(3000)).expect("snapshot");
    assert!(snapshot.get("leader").is_none() && snapshot.get("members/n1").is_none());
    n1.close(within(3000)).expect("closing twice is fine");

    // After a close the next session operation makes a new lease.
    assert!(
        n1.reattach_leader(within(3000)).expect("reattach"),
        "absent, so created"
    );
    assert!(n1.keepalive(within(3000)).expect("keepalive").new_session);
}

/// Waits until the watch is up: writes `config` until the counter moves.
fn wait_for_watch(plugin: &impl DcsPlugin) -> u64 {
    let until = Instant::now() + Duration::from_secs(15);
    let mut n = 0u64;
    while Instant::now() < until {
        plugin
            .put("config", n.to_string().as_bytes(), Cas::Any, within(3000))
            .expect("put");
        let seen = plugin.wait_changes(0, Duration::from_millis(300));
        if seen > 0 {
            // Let the bumps of the other writes arrive, then settle.
            std::thread::sleep(Duration::from_millis(300));
            return plugin.wait_changes(0, Duration::ZERO);
        }
        n += 1;
    }
    panic!("the watch never reported a change");
}

#[test]
fn the_change_counter_moves_on_leader_and_config_changes_but_not_on_member_changes() {
    let etcd = Etcd::start();
    let mut opts = Opts::new(&[etcd.host()], "n1");
    opts.watch = true;
    let n1 = opts.create();
    let n2 = Opts::new(&[etcd.host()], "n2").create();
    let mut seen = wait_for_watch(&n1);

    n1.put_member(b"wal 1", within(3000)).expect("member");
    n2.put_member(b"wal 2", within(3000)).expect("member");
    n2.put("status", b"{}", Cas::Any, within(3000))
        .expect("status");
    let started = Instant::now();
    assert_eq!(
        n1.wait_changes(seen, Duration::from_millis(1000)),
        seen,
        "member keys do not wake"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited out the timeout"
    );

    for (what, change) in [
        (
            "leader acquired",
            Box::new(|| assert!(n2.acquire_leader(within(3000)).expect("acquire")))
                as Box<dyn Fn()>,
        ),
        (
            "config",
            Box::new(|| {
                assert!(n2
                    .put("config", b"new", Cas::Any, within(3000))
                    .expect("put"))
            }),
        ),
        (
            "failover",
            Box::new(|| {
                assert!(n2
                    .put("failover", b"{}", Cas::Absent, within(3000))
                    .expect("put"))
            }),
        ),
        (
            "initialize",
            Box::new(|| {
                assert!(n2
                    .put("initialize", b"1", Cas::Absent, within(3000))
                    .expect("put"))
            }),
        ),
        (
            "leader released",
            Box::new(|| assert!(n2.release_leader(within(3000)).expect("release"))),
        ),
    ] {
        change();
        let now = n1.wait_changes(seen, Duration::from_secs(5));
        assert!(now > seen, "{what} should bump the counter");
        seen = now;
    }
}

#[test]
fn the_watch_comes_back_after_etcd_restarts_and_bumps_once() {
    let mut etcd = Etcd::start();
    let mut opts = Opts::new(&[etcd.host()], "n1");
    opts.watch = true;
    let n1 = opts.create();
    let seen = wait_for_watch(&n1);

    etcd.restart();
    let now = n1.wait_changes(seen, Duration::from_secs(15));
    assert!(now > seen, "a re-created watch bumps the counter");
    // And it works again afterwards.
    n1.put("leader", b"x", Cas::Any, within(3000)).expect("put");
    assert!(n1.wait_changes(now, Duration::from_secs(5)) > now);
}

#[test]
fn a_stopped_etcd_gives_an_error_within_the_deadline() {
    let mut etcd = Etcd::start();
    let n1 = Opts::new(&[etcd.host()], "n1").create();
    n1.keepalive(within(3000)).expect("keepalive");
    etcd.stop();

    let started = Instant::now();
    let e = n1.snapshot(within(1000)).expect_err("etcd is down");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(e.status, STATUS_UNAVAILABLE, "{}", e.message);
    assert!(e.message.contains("snapshot"), "{}", e.message);

    let started = Instant::now();
    assert!(n1.keepalive(within(700)).is_err());
    assert!(n1.acquire_leader(within(700)).is_err());
    assert!(started.elapsed() < Duration::from_millis(2000));
    // Dropping (which revokes the lease, best effort) does not hang either.
    let started = Instant::now();
    drop(n1);
    assert!(started.elapsed() < Duration::from_millis(3500));
}

#[test]
fn a_silent_endpoint_times_out_and_the_next_one_is_tried() {
    let etcd = Etcd::start();
    // Accepts connections (the kernel does) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_host = silent.local_addr().expect("addr").to_string();

    let alone = Opts::new(std::slice::from_ref(&silent_host), "n1").create();
    let started = Instant::now();
    let e = alone.snapshot(within(800)).expect_err("nobody answers");
    assert_eq!(e.status, STATUS_TIMEOUT, "{}", e.message);
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "took {:?}",
        started.elapsed()
    );

    // A call stuck on the session (a keep-alive nobody answers) does not make another session
    // call miss its own deadline.
    std::thread::scope(|scope| {
        let stuck = scope.spawn(|| alone.keepalive(within(1500)));
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let e = alone
            .put_member(b"x", within(300))
            .expect_err("nobody answers");
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(e.status, STATUS_TIMEOUT, "{}", e.message);
        assert!(stuck.join().expect("no panic").is_err());
    });

    let dead = format!("127.0.0.1:{}", common::free_port());
    let both = Opts::new(&[silent_host, dead, etcd.host()], "n1").create();
    assert!(both
        .put("config", b"x", Cas::Any, within(6000))
        .expect("reaches the third host"));
    let started = Instant::now();
    assert!(both
        .snapshot(within(1000))
        .expect("stays on it")
        .get("config")
        .is_some());
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[test]
fn authentication_works_and_a_wrong_password_is_refused() {
    let etcd = Etcd::start();
    let host = etcd.host();
    for (path, body) in [
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"rootpw"}"#,
        ),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let (status, answer) = common::request(&host, "POST", path, body).expect(path);
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let anonymous = Opts::new(std::slice::from_ref(&host), "n0").create();
    let e = anonymous.snapshot(within(2000)).expect_err("auth is on");
    assert_eq!(e.status, STATUS_REFUSED, "{}", e.message);

    let mut opts = Opts::new(std::slice::from_ref(&host), "n1");
    opts.extra = serde_json::json!({"username": "root", "password": "rootpw"});
    opts.watch = true;
    let n1 = opts.create();
    wait_for_watch(&n1);
    assert!(n1
        .put("initialize", b"x", Cas::Absent, within(3000))
        .expect("put"));
    assert!(n1.acquire_leader(within(3000)).expect("acquire"));
    assert!(
        n1.snapshot(within(3000))
            .expect("snapshot")
            .get("leader")
            .expect("leader")
            .owned_by_us
    );

    opts.extra = serde_json::json!({"username": "root", "password": "wrong"});
    let e = opts
        .create()
        .snapshot(within(2000))
        .expect_err("wrong password");
    assert_eq!(e.status, STATUS_REFUSED, "{}", e.message);
}

/// Serves every connection the same `reply`.
fn fake_gateway(reply: String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut scratch = [0u8; 8192];
            let _ = conn.read(&mut scratch);
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    host
}

#[test]
fn garbage_from_the_server_is_an_error_not_a_panic() {
    let ok = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    for reply in [
        ok("not json!"),
        ok(r#"{"kvs":[{"key":"%%%","mod_revision":"1"}]}"#),
        ok(r#"{"kvs":[{"key":"a2V5","mod_revision":"one"}]}"#),
        ok(r#"{"header":{"revision":"seven"}}"#),
        ok(r#"{"kvs":{"not":"a list"}}"#),
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"truncated\":".to_string(),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n"
            .to_string(),
        "HTTP/1.1 500 Oops\r\n\r\n<html>".to_string(),
        "\u{0}\u{1}garbage".to_string(),
    ] {
        let host = fake_gateway(reply.clone());
        let mut opts = Opts::new(&[host], "n1");
        opts.watch = true;
        let plugin = opts.create();
        let started = Instant::now();
        let e = plugin.snapshot(within(600)).expect_err(&reply);
        assert!(
            started.elapsed() < Duration::from_millis(1100),
            "{reply}: {:?}",
            started.elapsed()
        );
        assert_eq!(e.status, STATUS_UNAVAILABLE, "{reply}: {}", e.message);
        assert!(
            e.message.starts_with("snapshot: "),
            "{reply}: {}",
            e.message
        );
        assert!(plugin.keepalive(within(300)).is_err());
        assert!(plugin.acquire_leader(within(300)).is_err());
        assert_eq!(plugin.wait_changes(0, Duration::from_millis(50)), 0);
    }
}

#[test]
fn bad_settings_are_refused_naming_the_key() {
    let mut opts = Opts::new(&["nowhere".to_string()], "n1");
    let e = opts.try_create().expect_err("no port");
    assert_eq!(e.status, STATUS_INVALID);
    assert!(e.message.starts_with("hosts: "), "{}", e.message);
    opts.hosts = serde_json::json!("127.0.0.1:1");
    opts.extra = serde_json::json!({"password": "x"});
    assert!(opts
        .try_create()
        .expect_err("password alone")
        .message
        .starts_with("password: "));
}
