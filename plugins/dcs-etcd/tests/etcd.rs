//! Integration tests against a real etcd (`/usr/bin/etcd`) on loopback ports.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spilo_dcs_etcd::{EtcdDcs, EtcdSettings};
use spilo_sdk::{Cas, Dcs, DcsError};

const ETCD: &str = "/usr/bin/etcd";

/// A throw-away single-member etcd, killed on drop.
struct Etcd {
    child: Option<Child>,
    port: u16,
    peer: u16,
    dir: tempfile::TempDir,
    /// Serve clients over TLS, requiring client certificates.
    tls: bool,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl Etcd {
    async fn start() -> Etcd {
        Etcd::start_with(false).await
    }

    async fn start_with(tls: bool) -> Etcd {
        let mut etcd = Etcd {
            child: None,
            port: free_port(),
            peer: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            tls,
        };
        if tls {
            make_certs(etcd.dir.path());
        }
        etcd.spawn().await;
        etcd
    }

    /// Client settings for this etcd, with the TLS files when it serves TLS.
    fn settings(&self, member: &str, ttl: Duration, watch: bool) -> EtcdSettings {
        let mut settings = settings(&[self.endpoint()], member, ttl, watch);
        if self.tls {
            let dir = self.dir.path();
            settings.https = true;
            settings.cacert = Some(dir.join("ca.crt"));
            settings.cert = Some(dir.join("client.crt"));
            settings.key = Some(dir.join("client.key"));
        }
        settings
    }

    /// Starts (or restarts, keeping the data) the etcd process and waits until it answers.
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("log file");
        let log2 = log.try_clone().expect("log file");
        let scheme = if self.tls { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", self.port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer);
        let mut command = Command::new(ETCD);
        if self.tls {
            let dir = self.dir.path();
            command
                .arg("--cert-file")
                .arg(dir.join("server.crt"))
                .arg("--key-file")
                .arg(dir.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(dir.join("ca.crt"))
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        self.wait_ready().await;
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        let probe = EtcdDcs::connect(self.settings("probe", Duration::from_secs(10), false))
            .await
            .expect("connect");
        let started = Instant::now();
        loop {
            if probe.snapshot().await.is_ok() {
                return;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                panic!("etcd did not come up within 30 s; log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the etcd process.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("etcd running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
        if signal == "STOP" {
            // Wait until every thread is stopped: /proc/<pid>/task/*/stat show state `T`.
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|dir| dir.flatten().map(|t| t.path()).collect::<Vec<_>>())
                    .unwrap_or_default();
                let stopped = tasks.iter().all(|task| {
                    std::fs::read_to_string(task.join("stat"))
                        .ok()
                        .and_then(|stat| {
                            let state = stat.rsplit_once(") ")?.1.chars().next()?;
                            Some(state == 'T' || state == 't')
                        })
                        .unwrap_or(true)
                });
                if stopped && !tasks.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn make_certs(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext file");
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subject = format!("/CN={name}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(dir, &req);
        let ext = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

fn settings(endpoints: &[String], member: &str, ttl: Duration, watch: bool) -> EtcdSettings {
    EtcdSettings {
        endpoints: endpoints.to_vec(),
        https: false,
        cacert: None,
        cert: None,
        key: None,
        username: None,
        password: None,
        prefix: "/service/batman/".to_string(),
        member: member.to_string(),
        ttl,
        retry_timeout: Duration::from_secs(2),
        watch,
        session: true,
    }
}

async fn client(endpoints: &[String], member: &str, ttl: Duration, watch: bool) -> EtcdDcs {
    EtcdDcs::connect(settings(endpoints, member, ttl, watch))
        .await
        .expect("connect")
}

async fn leader(dcs: &EtcdDcs) -> Option<String> {
    let snapshot = dcs.snapshot().await.expect("snapshot");
    snapshot
        .get("leader")
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
}

#[tokio::test]
async fn leader_lock_keepalive_and_release() {
    let etcd = Etcd::start().await;
    let eps = [etcd.endpoint()];
    let a = client(&eps, "a", Duration::from_secs(10), false).await;
    let b = client(&eps, "b", Duration::from_secs(10), false).await;
    assert_eq!(a.backend(), "etcd3");

    let first = a.keepalive().await.expect("keepalive");
    assert!(first.new_session);
    assert_ne!(first.id, 0);
    for _ in 0..3 {
        let again = a.keepalive().await.expect("keepalive");
        assert_eq!(again.id, first.id);
        assert!(!again.new_session);
    }

    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member");
    b.put_member(b"{\"role\":\"replica\"}")
        .await
        .expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire a"));
    assert!(!b.acquire_leader().await.expect("acquire b"));

    let seen_by_a = a.snapshot().await.expect("snapshot");
    let seen_by_b = b.snapshot().await.expect("snapshot");
    assert!(seen_by_a.revision > 0);
    let l = seen_by_a.get("leader").expect("leader key");
    assert_eq!(l.value, b"a");
    assert!(l.owned_by_us);
    assert!(seen_by_a.get("members/a").expect("member a").owned_by_us);
    assert!(!seen_by_a.get("members/b").expect("member b").owned_by_us);
    assert!(!seen_by_b.get("leader").expect("leader key").owned_by_us);
    assert!(seen_by_b.get("members/b").expect("member b").owned_by_us);
    assert_eq!(
        seen_by_b.get("members/a").expect("member a").value,
        b"{\"role\":\"primary\"}"
    );

    // Only the holder may release; others' reattach fails while it is held.
    assert!(!b.release_leader().await.expect("release b"));
    assert!(!b.reattach_leader().await.expect("reattach b"));
    assert!(a.reattach_leader().await.expect("reattach a"));
    assert_eq!(leader(&b).await.as_deref(), Some("a"));
    assert!(a.release_leader().await.expect("release a"));
    assert_eq!(leader(&b).await, None);
    assert!(!a.release_leader().await.expect("release a again"));

    // reattach creates the key when absent.
    assert!(b.reattach_leader().await.expect("reattach b"));
    assert_eq!(leader(&a).await.as_deref(), Some("b"));
    assert!(!a.acquire_leader().await.expect("acquire a"));
}

#[tokio::test]
async fn expired_session_loses_keys() {
    let etcd = Etcd::start().await;
    let eps = [etcd.endpoint()];
    let ttl = Duration::from_secs(2);
    let a = client(&eps, "a", ttl, false).await;
    let b = client(&eps, "b", ttl, false).await;

    let session = a.keepalive().await.expect("keepalive");
    a.put_member(b"a").await.expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));
    let started = Instant::now();

    // a stops renewing: both keys vanish within ttl + 2 s.
    loop {
        let snapshot = b.snapshot().await.expect("snapshot");
        if snapshot.get("leader").is_none() && snapshot.get("members/a").is_none() {
            break;
        }
        assert!(
            started.elapsed() < ttl + Duration::from_secs(2),
            "keys still there after {:?}: {snapshot:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.acquire_leader().await.expect("acquire b"));

    // a notices the lost session and cannot take the key back.
    let renewed = a.keepalive().await.expect("keepalive");
    assert!(renewed.new_session);
    assert_ne!(renewed.id, session.id);
    assert!(!a.reattach_leader().await.expect("reattach a"));
    assert_eq!(leader(&a).await.as_deref(), Some("b"));
}

#[tokio::test]
async fn lost_lease_is_replaced_by_writes() {
    let etcd = Etcd::start().await;
    let eps = [etcd.endpoint()];
    let a = client(&eps, "a", Duration::from_secs(2), false).await;
    a.keepalive().await.expect("keepalive");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The lease expired meanwhile: the write grants a new one and succeeds.
    a.put_member(b"x").await.expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));
    let info = a.keepalive().await.expect("keepalive");
    assert!(info.new_session);
    let snapshot = a.snapshot().await.expect("snapshot");
    assert!(snapshot.get("leader").expect("leader").owned_by_us);
}

#[tokio::test]
async fn compare_and_set() {
    let etcd = Etcd::start().await;
    let eps = [etcd.endpoint()];
    let c = client(&eps, "cli", Duration::from_secs(10), false).await;

    assert!(c.put("config", b"{}", Cas::Absent).await.expect("put"));
    assert!(!c
        .put("config", b"{\"x\":1}", Cas::Absent)
        .await
        .expect("put"));
    let v1 = c
        .snapshot()
        .await
        .expect("snapshot")
        .get("config")
        .expect("config")
        .version;
    assert!(!c
        .put("config", b"{\"x\":1}", Cas::Version(v1 + 100))
        .await
        .expect("put"));
    assert!(c
        .put("config", b"{\"x\":1}", Cas::Version(v1))
        .await
        .expect("put"));
    let snapshot = c.snapshot().await.expect("snapshot");
    let entry = snapshot.get("config").expect("config");
    assert_eq!(entry.value, b"{\"x\":1}");
    assert!(!entry.owned_by_us);
    let v2 = entry.version;
    assert!(v2 > v1);

    assert!(!c.delete("config", Cas::Version(v1)).await.expect("delete"));
    assert!(c.delete("config", Cas::Version(v2)).await.expect("delete"));
    assert!(c
        .snapshot()
        .await
        .expect("snapshot")
        .get("config")
        .is_none());

    assert!(c.put("initialize", b"123", Cas::Any).await.expect("put"));
    assert!(c.put("initialize", b"456", Cas::Any).await.expect("put"));
    assert!(c.delete("initialize", Cas::Any).await.expect("delete"));
    assert!(c
        .delete("initialize", Cas::Any)
        .await
        .expect("delete absent"));
    assert!(c.snapshot().await.expect("snapshot").entries.is_empty());
}

#[tokio::test]
async fn watch_wakes_on_leader_change() {
    let etcd = Etcd::start().await;
    let eps = [etcd.endpoint()];
    let a = client(&eps, "a", Duration::from_secs(10), true).await;
    let b = client(&eps, "b", Duration::from_secs(10), false).await;
    let mut changes = a.changes();
    // Give the watch task time to establish the watch.
    tokio::time::sleep(Duration::from_secs(1)).await;
    changes.borrow_and_update();

    assert!(b.acquire_leader().await.expect("acquire"));
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("no change seen within 3 s")
        .expect("watch sender alive");
    let first = *changes.borrow_and_update();

    assert!(b.release_leader().await.expect("release"));
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("no change seen within 3 s")
        .expect("watch sender alive");
    assert!(*changes.borrow() > first);

    // Dropping the client ends the watch task, which drops the sender.
    drop(a);
    tokio::time::timeout(Duration::from_secs(3), async {
        while changes.changed().await.is_ok() {}
    })
    .await
    .expect("watch task did not stop after drop");
}

#[tokio::test]
async fn close_removes_keys_at_once() {
    let etcd = Etcd::start().await;
    let eps = [etcd.endpoint()];
    let a = client(&eps, "a", Duration::from_secs(30), false).await;
    let b = client(&eps, "b", Duration::from_secs(30), false).await;
    a.keepalive().await.expect("keepalive");
    a.put_member(b"a").await.expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));
    a.close().await.expect("close");
    let snapshot = b.snapshot().await.expect("snapshot");
    assert!(snapshot.get("leader").is_none(), "{snapshot:?}");
    assert!(snapshot.get("members/a").is_none(), "{snapshot:?}");
    assert!(b.acquire_leader().await.expect("acquire b"));
    // Closing twice is harmless.
    a.close().await.expect("close again");
}

#[tokio::test]
async fn set_ttl_makes_a_new_session() {
    let etcd = Etcd::start().await;
    let eps = [etcd.endpoint()];
    let a = client(&eps, "a", Duration::from_secs(10), false).await;
    let first = a.keepalive().await.expect("keepalive");
    a.put_member(b"a").await.expect("put_member");
    a.set_ttl(Duration::from_millis(2500));
    let second = a.keepalive().await.expect("keepalive");
    assert!(second.new_session);
    assert_ne!(second.id, first.id);
    // The old lease lives on until the next keep-alive: the member key is still there, bound
    // to it, so the daemon can move its keys before anything vanishes.
    let member = a.snapshot().await.expect("snapshot");
    let member = member.get("members/a").expect("member key kept");
    assert!(!member.owned_by_us);
    a.put_member(b"a").await.expect("put_member");
    assert!(
        a.snapshot()
            .await
            .expect("snapshot")
            .get("members/a")
            .expect("member")
            .owned_by_us
    );
    assert!(!a.keepalive().await.expect("keepalive").new_session);
    // That keep-alive revoked the old lease (the member key had moved off it).
    let old = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect")
        .lease_time_to_live(first.id, None)
        .await
        .expect("lease_time_to_live");
    assert!(old.ttl() <= 0, "old lease still alive: ttl {}", old.ttl());
}

#[tokio::test]
async fn fails_over_to_a_live_endpoint() {
    let etcd = Etcd::start().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let eps = [dead, etcd.endpoint()];
    let a = client(&eps, "a", Duration::from_secs(10), true).await;
    for _ in 0..5 {
        a.snapshot().await.expect("snapshot");
    }
    a.keepalive().await.expect("keepalive");
    assert!(a.acquire_leader().await.expect("acquire"));
    assert!(a.put("config", b"{}", Cas::Any).await.expect("put"));
}

fn assert_bounded(started: Instant, what: &str, result: Result<impl std::fmt::Debug, DcsError>) {
    let elapsed = started.elapsed();
    eprintln!("{what}: {elapsed:?} {result:?}");
    assert!(
        result.is_err(),
        "{what} succeeded against a dead etcd: {result:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "{what} took {elapsed:?} to fail (retry_timeout is 2 s)"
    );
}

#[tokio::test]
async fn stopped_etcd_fails_within_retry_timeout() {
    let mut etcd = Etcd::start().await;
    let eps = [etcd.endpoint()];
    let a = client(&eps, "a", Duration::from_secs(10), true).await;
    a.keepalive().await.expect("keepalive");
    a.put_member(b"a").await.expect("put_member");
    etcd.stop();

    let t = Instant::now();
    assert_bounded(t, "snapshot", a.snapshot().await);
    let t = Instant::now();
    assert_bounded(t, "keepalive", a.keepalive().await);
    let t = Instant::now();
    assert_bounded(t, "put_member", a.put_member(b"a").await);
    let t = Instant::now();
    assert_bounded(t, "acquire_leader", a.acquire_leader().await);
    let t = Instant::now();
    assert_bounded(t, "reattach_leader", a.reattach_leader().await);
    let t = Instant::now();
    assert_bounded(t, "release_leader", a.release_leader().await);
    let t = Instant::now();
    assert_bounded(t, "put", a.put("config", b"{}", Cas::Absent).await);
    let t = Instant::now();
    assert_bounded(t, "delete", a.delete("config", Cas::Any).await);
    let t = Instant::now();
    assert_bounded(t, "close", a.close().await);

    // A client that never reached etcd fails just as fast, naming the endpoint.
    let t = Instant::now();
    let fresh = client(&eps, "b", Duration::from_secs(10), false).await;
    let result = fresh.snapshot().await;
    let elapsed = t.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "fresh snapshot took {elapsed:?}"
    );
    let message = result.expect_err("snapshot of a dead etcd").to_string();
    assert!(message.contains(&etcd.endpoint()), "{message}");
}

#[tokio::test]
async fn recovers_after_etcd_restart() {
    let mut etcd = Etcd::start().await;
    let eps = [etcd.endpoint()];
    let a = client(&eps, "a", Duration::from_secs(30), true).await;
    let b = client(&eps, "b", Duration::from_secs(30), false).await;
    let session = a.keepalive().await.expect("keepalive");
    a.keepalive().await.expect("keepalive over the stream");
    a.put_member(b"a").await.expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));
    let mut changes = a.changes();
    tokio::time::sleep(Duration::from_millis(500)).await;
    changes.borrow_and_update();

    etcd.stop();
    assert!(a.keepalive().await.is_err());
    etcd.spawn().await;

    // The broken keep-alive stream is replaced; the lease survived the restart.
    let renewed = a.keepalive().await.expect("keepalive after restart");
    assert_eq!(renewed.id, session.id);
    assert!(!renewed.new_session);
    assert_eq!(leader(&a).await.as_deref(), Some("a"));

    // The watch is re-created (bumping once) and sees new events.
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("no bump after the watch came back")
        .expect("watch sender alive");
    tokio::time::sleep(Duration::from_millis(200)).await;
    changes.borrow_and_update();
    assert!(b.put("config", b"{}", Cas::Any).await.expect("put"));
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("no change seen after restart")
        .expect("watch sender alive");
}

#[tokio::test]
async fn frozen_etcd_fails_within_retry_timeout() {
    let etcd = Etcd::start().await;
    let eps = [etcd.endpoint()];
    let a = client(&eps, "a", Duration::from_secs(30), true).await;
    a.keepalive().await.expect("keepalive");
    a.keepalive().await.expect("keepalive over the stream");
    assert!(a.acquire_leader().await.expect("acquire"));

    // A frozen server accepts connections but never answers.
    etcd.signal("STOP");
    let t = Instant::now();
    assert_bounded(t, "snapshot", a.snapshot().await);
    let t = Instant::now();
    assert_bounded(t, "keepalive", a.keepalive().await);
    let t = Instant::now();
    assert_bounded(t, "acquire_leader", a.acquire_leader().await);
    let t = Instant::now();
    assert_bounded(t, "put", a.put("config", b"{}", Cas::Any).await);
    etcd.signal("CONT");

    let info = a.keepalive().await.expect("keepalive after thaw");
    assert!(!info.new_session);
    assert!(
        a.snapshot()
            .await
            .expect("snapshot")
            .get("leader")
            .expect("leader")
            .owned_by_us
    );
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let etcd = Etcd::start_with(true).await;
    let a = EtcdDcs::connect(etcd.settings("a", Duration::from_secs(10), true))
        .await
        .expect("connect");
    let mut changes = a.changes();
    a.keepalive().await.expect("keepalive");
    a.put_member(b"a").await.expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));
    assert_eq!(leader(&a).await.as_deref(), Some("a"));
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("watch over TLS saw nothing")
        .expect("watch sender alive");

    // Without a client certificate the server refuses us, within the deadline.
    let mut anonymous = etcd.settings("b", Duration::from_secs(10), false);
    anonymous.cert = None;
    anonymous.key = None;
    let b = EtcdDcs::connect(anonymous).await.expect("connect");
    let t = Instant::now();
    assert_bounded(t, "snapshot without client cert", b.snapshot().await);

    // A missing CA file is reported at connect.
    let mut broken = etcd.settings("c", Duration::from_secs(10), false);
    broken.cacert = Some(etcd.dir.path().join("missing.crt"));
    let error = EtcdDcs::connect(broken).await.expect_err("connect");
    assert!(error.to_string().contains("missing.crt"), "{error}");
}
