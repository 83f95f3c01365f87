//! Integration tests against a real ZooKeeper (Debian's `zookeeper` package) on a loopback
//! port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spilo_dcs_zookeeper::{ZkDcs, ZkSettings};
use spilo_sdk::{Cas, Dcs};

const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar";
const TTL: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_secs(2);

/// A throw-away standalone ZooKeeper, killed on drop.
struct Zk {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl Zk {
    fn start() -> Zk {
        let mut zk = Zk {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        zk.spawn();
        zk
    }

    /// Starts (or restarts, keeping the data) the server and waits until it answers `ruok`.
    fn spawn(&mut self) {
        let dir = self.dir.path();
        let cfg = dir.join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\n\
                 maxSessionTimeout=10000\nadmin.enableServer=false\n4lw.commands.whitelist=*\n",
                dir.join("data").display(),
                self.port
            ),
        )
        .expect("write zoo.cfg");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("zk.log"))
            .expect("log file");
        let log2 = log.try_clone().expect("log file");
        let child = Command::new("java")
            .args(["-Xmx256m", "-cp", CLASSPATH])
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("start zookeeper");
        self.child = Some(child);
        let started = Instant::now();
        while !self.ruok() {
            if started.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(dir.join("zk.log")).unwrap_or_default();
                panic!("ZooKeeper did not come up within 30 s; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ruok(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"ruok").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer == "imok"
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts the server; with `wipe`, as a fresh server that knows no session.
    fn restart(&mut self, wipe: bool) {
        self.stop();
        if wipe {
            let _ = std::fs::remove_dir_all(self.dir.path().join("data"));
        }
        self.spawn();
    }

    fn settings(&self, member: &str, watch: bool) -> ZkSettings {
        ZkSettings {
            hosts: vec![format!("127.0.0.1:{}", self.port)],
            prefix: "/service/batman/".to_string(),
            member: member.to_string(),
            ttl: TTL,
            retry_timeout: RETRY,
            watch,
            session: true,
            auth_data: Vec::new(),
            set_acls: None,
            tls: None,
        }
    }

    async fn client(&self, member: &str, watch: bool) -> ZkDcs {
        ZkDcs::connect(self.settings(member, watch))
            .await
            .expect("connect")
    }
}

impl Drop for Zk {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Calls `keepalive` until it succeeds or `within` passes.
async fn keepalive_within(dcs: &ZkDcs, within: Duration) -> Option<spilo_sdk::SessionInfo> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(info) = dcs.keepalive().await {
            return Some(info);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn leader_of(dcs: &ZkDcs) -> Option<String> {
    let snap = dcs.snapshot().await.expect("snapshot");
    snap.get("leader")
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_is_acquired_only_if_absent_and_released_only_by_holder() {
    let zk = Zk::start();
    let a = zk.client("a", false).await;
    let b = zk.client("b", false).await;

    let empty = a.snapshot().await.expect("snapshot of a missing prefix");
    assert!(empty.entries.is_empty());

    let info = a.keepalive().await.expect("keepalive");
    assert!(info.new_session);
    assert_ne!(info.id, 0);
    let again = a.keepalive().await.expect("keepalive");
    assert_eq!(
        again,
        spilo_sdk::SessionInfo {
            id: info.id,
            new_session: false,
            granted_ttl: info.granted_ttl,
        }
    );

    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("member a");
    b.put_member(b"{}").await.expect("member b");
    a.put_member(b"{\"role\":\"primary\",\"x\":1}")
        .await
        .expect("member a again");

    assert!(a.acquire_leader().await.expect("acquire a"));
    assert!(!b.acquire_leader().await.expect("acquire b"));
    assert!(!b.release_leader().await.expect("release by b"));
    assert!(!b.reattach_leader().await.expect("reattach by b"));
    assert!(a.reattach_leader().await.expect("reattach by a"));

    let snap = b.snapshot().await.expect("snapshot");
    let leader = snap.get("leader").expect("leader");
    assert_eq!(leader.value, b"a");
    assert!(!leader.owned_by_us);
    assert!(snap.get("members/b").expect("member b").owned_by_us);
    let snap = a.snapshot().await.expect("snapshot");
    assert!(snap.get("leader").expect("leader").owned_by_us);
    let member = snap.get("members/a").expect("member a");
    assert_eq!(member.value, b"{\"role\":\"primary\",\"x\":1}");
    assert!(member.owned_by_us);

    assert!(a.release_leader().await.expect("release by a"));
    assert!(!a.release_leader().await.expect("release twice"));
    assert!(b.acquire_leader().await.expect("acquire b"));
    assert_eq!(leader_of(&a).await.as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_session_loses_leader_and_member() {
    let zk = Zk::start();
    let b = zk.client("b", false).await;

    // Dropped without close: the znodes go when the server expires the session.
    let a = zk.client("a", false).await;
    a.keepalive().await.expect("keepalive");
    a.put_member(b"{}").await.expect("member");
    assert!(a.acquire_leader().await.expect("acquire"));
    drop(a);
    let started = Instant::now();
    let gone = eventually(TTL + Duration::from_secs(4), || async {
        let snap = b.snapshot().await.expect("snapshot");
        snap.get("leader").is_none() && snap.get("members/a").is_none()
    })
    .await;
    assert!(gone, "leader and member of a dropped client still there");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(b.acquire_leader().await.expect("acquire b"));

    // Closed: the znodes go at once.
    assert!(b.release_leader().await.expect("release"));
    let c = zk.client("c", false).await;
    c.put_member(b"{}").await.expect("member");
    assert!(c.acquire_leader().await.expect("acquire c"));
    c.close().await.expect("close");
    let snap = b.snapshot().await.expect("snapshot");
    assert!(snap.get("leader").is_none(), "leader of a closed session");
    assert!(
        snap.get("members/c").is_none(),
        "member of a closed session"
    );
    assert!(b.acquire_leader().await.expect("acquire b"));

    // A closed client makes a new session when used again.
    let info = c.keepalive().await.expect("keepalive after close");
    assert!(info.new_session);
    assert!(!c.acquire_leader().await.expect("acquire c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_and_values_round_trip() {
    let zk = Zk::start();
    let a = zk.client("a", false).await;
    let cli = ZkDcs::connect(ZkSettings {
        session: false,
        ..zk.settings("cli", false)
    })
    .await
    .expect("connect cli");

    let value: Vec<u8> = (0u8..=255).collect();
    assert!(a.put("config", &value, Cas::Absent).await.expect("create"));
    assert!(!a
        .put("config", b"x", Cas::Absent)
        .await
        .expect("create again"));
    let entry = cli
        .snapshot()
        .await
        .expect("snapshot")
        .get("config")
        .cloned();
    let entry = entry.expect("config");
    assert_eq!(entry.value, value);
    assert!(!entry.owned_by_us);
    let v = entry.version;

    assert!(cli
        .put("config", b"two", Cas::Version(v))
        .await
        .expect("cas"));
    assert!(!a
        .put("config", b"three", Cas::Version(v))
        .await
        .expect("stale cas"));
    assert!(!a
        .put("missing", b"x", Cas::Version(0))
        .await
        .expect("cas on missing"));
    assert!(!a
        .delete("config", Cas::Version(v))
        .await
        .expect("stale delete"));
    let snap = a.snapshot().await.expect("snapshot");
    let entry = snap.get("config").expect("config");
    assert_eq!(entry.value, b"two");
    assert!(a
        .delete("config", Cas::Version(entry.version))
        .await
        .expect("delete"));
    assert!(a
        .snapshot()
        .await
        .expect("snapshot")
        .get("config")
        .is_none());

    // Unconditional writes create parents (`makepath`) and overwrite.
    assert!(a.put("optime/leader", b"123", Cas::Any).await.expect("put"));
    assert!(a.put("optime/leader", b"456", Cas::Any).await.expect("put"));
    assert!(a.put("history", b"[]", Cas::Any).await.expect("put"));
    assert!(a.put("failover", b"", Cas::Any).await.expect("put"));
    let snap = cli.snapshot().await.expect("snapshot");
    assert_eq!(snap.get("optime/leader").expect("optime").value, b"456");
    assert_eq!(snap.get("history").expect("history").value, b"[]");
    assert_eq!(snap.get("failover").expect("failover").value, b"");
    assert!(snap.get("optime").is_none());
    assert!(a.delete("failover", Cas::Any).await.expect("delete"));
    assert!(a
        .delete("failover", Cas::Any)
        .await
        .expect("delete missing"));
    assert!(a
        .delete("failover", Cas::Absent)
        .await
        .expect("delete absent"));
    assert!(!a
        .delete("history", Cas::Absent)
        .await
        .expect("delete present"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_bumps_on_leader_and_config_changes() {
    let zk = Zk::start();
    let a = zk.client("a", true).await;
    let b = zk.client("b", false).await;
    let mut changes = a.changes();
    // Let the watch task arm its watches.
    tokio::time::sleep(Duration::from_millis(500)).await;
    changes.borrow_and_update();

    assert!(b.acquire_leader().await.expect("acquire"));
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("bump on leader creation")
        .expect("channel");

    assert!(b.put("config", b"{}", Cas::Any).await.expect("config"));
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("bump on config")
        .expect("channel");
    assert!(b
        .put("config", b"{\"a\":1}", Cas::Any)
        .await
        .expect("config"));
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("bump on config change (watch re-armed)")
        .expect("channel");

    assert!(b.release_leader().await.expect("release"));
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("bump on leader deletion")
        .expect("channel");

    // Member keys do not wake the loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    changes.borrow_and_update();
    b.put_member(b"{}").await.expect("member");
    assert!(
        tokio::time::timeout(Duration::from_millis(700), changes.changed())
            .await
            .is_err(),
        "member change bumped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_fails_in_time_and_sessions_recover() {
    let mut zk = Zk::start();
    let a = zk.client("a", true).await;
    let mut changes = a.changes();
    a.keepalive().await.expect("keepalive");
    a.put_member(b"{}").await.expect("member");
    assert!(a.acquire_leader().await.expect("acquire"));
    // A longer session, to outlive a quick server restart.
    let b = ZkDcs::connect(ZkSettings {
        ttl: Duration::from_secs(9),
        ..zk.settings("b", false)
    })
    .await
    .expect("connect b");
    let first_b = b.keepalive().await.expect("keepalive b");
    b.put_member(b"{}").await.expect("member b");

    // A restart keeping the data keeps the session when the client is back in time.
    zk.restart(false);
    let info = keepalive_within(&b, Duration::from_secs(8))
        .await
        .expect("keepalive did not recover after restart");
    assert_eq!(info.id, first_b.id);
    assert!(!info.new_session);
    let snap = b.snapshot().await.expect("snapshot");
    assert!(snap.get("members/b").expect("member b").owned_by_us);
    let before = keepalive_within(&a, Duration::from_secs(8))
        .await
        .expect("keepalive a after restart");
    a.put_member(b"{}").await.expect("member a");
    assert!(a.reattach_leader().await.expect("reattach"));

    zk.stop();
    let limit = RETRY + Duration::from_secs(1);
    let started = Instant::now();
    assert!(a.snapshot().await.is_err());
    assert!(
        started.elapsed() <= limit,
        "snapshot took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert!(a.put("config", b"{}", Cas::Any).await.is_err());
    assert!(
        started.elapsed() <= limit,
        "put took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert!(a.keepalive().await.is_err());
    assert!(
        started.elapsed() <= limit,
        "keepalive took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert!(a.acquire_leader().await.is_err());
    assert!(
        started.elapsed() <= limit,
        "acquire took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert!(a.keepalive().await.is_err());
    assert!(
        started.elapsed() <= limit,
        "keepalive took {:?}",
        started.elapsed()
    );

    // A fresh server knows no session: a new one is made and reported.
    zk.restart(true);
    changes.borrow_and_update();
    let info = keepalive_within(&a, TTL + Duration::from_secs(10))
        .await
        .expect("keepalive did not recover after a fresh server");
    assert!(info.new_session);
    assert_ne!(info.id, before.id);
    assert!(leader_of(&a).await.is_none());
    a.put_member(b"{}").await.expect("member again");
    assert!(a.reattach_leader().await.expect("reattach"));
    let snap = a.snapshot().await.expect("snapshot");
    assert!(snap.get("leader").expect("leader").owned_by_us);
    assert!(snap.get("members/a").expect("member").owned_by_us);
    // The watch task re-armed after the reconnection and saw the new leader.
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("bump after reconnect")
        .expect("channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_fails_in_time() {
    let port = free_port();
    let started = Instant::now();
    let result = ZkDcs::connect(ZkSettings {
        hosts: vec![format!("127.0.0.1:{port}")],
        prefix: "/service/x/".to_string(),
        member: "a".to_string(),
        ttl: TTL,
        retry_timeout: Duration::from_secs(1),
        watch: true,
        session: true,
        auth_data: Vec::new(),
        set_acls: None,
        tls: None,
    })
    .await;
    assert!(result.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_ttl_makes_a_new_session_and_acls_apply() {
    let zk = Zk::start();
    let mut settings = zk.settings("a", false);
    settings.auth_data = vec![("digest".to_string(), "spilo:secret".to_string())];
    settings.set_acls = Some(
        [("auth:".to_string(), vec!["ALL".to_string()])]
            .into_iter()
            .collect(),
    );
    let a = ZkDcs::connect(settings).await.expect("connect");
    let first = a.keepalive().await.expect("keepalive");
    a.put_member(b"{}").await.expect("member");
    assert!(a.put("config", b"{}", Cas::Any).await.expect("config"));

    // Without the credentials, the znodes cannot be read.
    let other = zk.client("o", false).await;
    assert!(other.snapshot().await.is_err());

    a.set_ttl(Duration::from_secs(4));
    let second = a.keepalive().await.expect("keepalive");
    assert!(second.new_session);
    assert_ne!(second.id, first.id);
    // The old session stays open until the next keep-alive: its member znode is still there,
    // so the daemon can move its znodes before anything vanishes.
    let snap = a.snapshot().await.expect("snapshot");
    assert!(!snap.get("members/a").expect("member kept").owned_by_us);
    a.put_member(b"{}").await.expect("member");
    let snap = a.snapshot().await.expect("snapshot");
    assert!(snap.get("members/a").expect("member").owned_by_us);
    assert_eq!(snap.get("config").expect("config").value, b"{}");
    // The next keep-alive closes the old session; the moved znode stays.
    assert!(!a.keepalive().await.expect("keepalive").new_session);
    let snap = a.snapshot().await.expect("snapshot");
    assert!(snap.get("members/a").expect("member").owned_by_us);
}
