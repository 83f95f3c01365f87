//! The ZooKeeper backends: one standalone server, one TLS-only server (client certificates
//! required), and a 3-server ensemble; plus the tests only these backends have.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use spilo_dcs_zookeeper::{ZkDcs, ZkSettings, ZkTls};
use spilo_sdk::{Cas, Dcs, DcsError};
use spilo_tests::etcd_cluster::{freeze_pid, make_certs};
use spilo_tests::util::{send_signal, TempRoot};
use spilo_tests::zookeeper::ZooKeeper;
use spilo_tests::zookeeper_ensemble::ZkEnsemble;

use crate::backend::{blocking, Backend, ClientOpts};
use crate::suite::{eventually, leader, Ctx, DEADLINE_SLACK, RETRY, TTL};

/// Plain settings for `hosts`.
fn settings(hosts: Vec<String>, opts: ClientOpts) -> ZkSettings {
    ZkSettings {
        hosts,
        prefix: opts.prefix,
        member: opts.member,
        ttl: opts.ttl,
        retry_timeout: opts.retry_timeout,
        watch: opts.watch,
        session: true,
        auth_data: Vec::new(),
        set_acls: None,
        tls: None,
    }
}

async fn connect(settings: ZkSettings) -> Result<Box<dyn Dcs>, DcsError> {
    Ok(Box::new(ZkDcs::connect(settings).await?))
}

/// One standalone ZooKeeper server.
pub struct ZkSingle(ZooKeeper);

#[async_trait]
impl Backend for ZkSingle {
    const NAME: &'static str = "zookeeper single server";
    const MEMBER_CHANGES_SILENT: bool = true;

    fn start() -> Self {
        ZkSingle(ZooKeeper::start())
    }

    async fn try_client(&self, opts: ClientOpts) -> Result<Box<dyn Dcs>, DcsError> {
        connect(settings(vec![self.0.host_port()], opts)).await
    }

    fn stop(&mut self) {
        self.0.stop();
    }

    fn start_again(&mut self) {
        self.0.start_again();
    }

    fn freeze(&self) {
        freeze_pid(self.0.pid().expect("ZooKeeper running"));
    }

    fn thaw(&self) {
        send_signal(self.0.pid().expect("ZooKeeper running"), libc::SIGCONT);
    }
}

/// One standalone ZooKeeper serving TLS only, client certificates required; the client
/// verifies the server with the test CA and presents the test client certificate.
pub struct ZkTlsSingle(ZooKeeper);

impl ZkTlsSingle {
    /// Settings with the server's TLS files.
    fn tls_settings(&self, opts: ClientOpts) -> ZkSettings {
        let files = self.0.tls.as_ref().expect("TLS server has certificates");
        ZkSettings {
            tls: Some(ZkTls {
                cacert: Some(files.ca.clone()),
                cert: Some(files.client_cert.clone()),
                key: Some(files.client_key.clone()),
            }),
            ..settings(vec![self.0.host_port()], opts)
        }
    }
}

#[async_trait]
impl Backend for ZkTlsSingle {
    const NAME: &'static str = "zookeeper single server, TLS";
    const MEMBER_CHANGES_SILENT: bool = true;

    fn start() -> Self {
        ZkTlsSingle(ZooKeeper::start_tls())
    }

    async fn try_client(&self, opts: ClientOpts) -> Result<Box<dyn Dcs>, DcsError> {
        connect(self.tls_settings(opts)).await
    }

    fn stop(&mut self) {
        self.0.stop();
    }

    fn start_again(&mut self) {
        self.0.start_again();
    }

    fn freeze(&self) {
        freeze_pid(self.0.pid().expect("ZooKeeper running"));
    }

    fn thaw(&self) {
        send_signal(self.0.pid().expect("ZooKeeper running"), libc::SIGCONT);
    }
}

/// Three ZooKeeper servers forming one ensemble; the client is given all three.
pub struct ZkEnsemble3(pub ZkEnsemble);

#[async_trait]
impl Backend for ZkEnsemble3 {
    const NAME: &'static str = "zookeeper 3-server ensemble";
    const MEMBER_CHANGES_SILENT: bool = true;

    fn start() -> Self {
        ZkEnsemble3(ZkEnsemble::start(3))
    }

    async fn try_client(&self, opts: ClientOpts) -> Result<Box<dyn Dcs>, DcsError> {
        connect(settings(self.0.host_ports(), opts)).await
    }

    fn stop(&mut self) {
        self.0.stop_all();
    }

    fn start_again(&mut self) {
        self.0.start_all();
    }

    fn freeze(&self) {
        self.0.freeze_all();
    }

    fn thaw(&self) {
        self.0.thaw_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Backend-specific tests
// ---------------------------------------------------------------------------------------------

/// Killing the server a client's session is connected to (quorum kept) keeps the session:
/// the client moves to another server, the leader key stays ours, every operation works.
pub async fn ensemble_survives_losing_its_server() {
    let mut ctx = Ctx::<ZkEnsemble3>::start("zk-server-kill");
    let ttl = Duration::from_secs(6);
    let a = ctx.client_with("a", ttl, RETRY, true).await;
    let b = ctx.client("b").await;
    let session = a.keepalive().await.expect("keepalive");
    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));

    let victim = blocking(|| ctx.backend.0.server_of_session(session.id))
        .unwrap_or_else(|| panic!("no server lists session {:#x}", session.id));
    blocking(|| ctx.backend.0.stop_server(victim));
    let killed_at = Instant::now();

    // The client reconnects to another server within the session timeout, same session.
    let bound = ttl;
    let info = eventually("keepalive after its server died", bound, || async {
        a.keepalive().await.map_err(|e| e.to_string())
    })
    .await;
    assert!(!info.new_session, "the session was lost with its server");
    assert_eq!(info.id, session.id);
    eventually("put after its server died", bound, || async {
        a.put("config", b"{\"ttl\":30}", Cas::Any)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert!(killed_at.elapsed() < bound * 2);
    let moved_to = blocking(|| ctx.backend.0.server_of_session(session.id));
    assert!(
        moved_to.is_some_and(|i| i != victim),
        "session on server {moved_to:?} after server {victim} died"
    );

    // Keep renewing for a couple of ttls: the leader key stays ours.
    let started = Instant::now();
    while started.elapsed() < ttl * 2 {
        tokio::time::sleep(ttl / 4).await;
        let info = a
            .keepalive()
            .await
            .expect("keepalive on the surviving quorum");
        assert!(!info.new_session);
    }
    assert_eq!(leader(a.as_ref()).await, Some(("a".to_string(), true)));
    assert!(!b.acquire_leader().await.expect("acquire b"));
    let snap = b.snapshot().await.expect("snapshot b");
    assert!(snap.get("members/a").is_some(), "{snap:?}");

    // The killed server rejoins, and the client keeps working.
    blocking(|| ctx.backend.0.start_server(victim));
    a.keepalive()
        .await
        .expect("keepalive after the server rejoined");
    assert_eq!(leader(a.as_ref()).await, Some(("a".to_string(), true)));
}

/// Asserts that connecting with `settings` fails within the deadline (with an error whose
/// text contains `expect`), not a hang.
async fn refused_in_time(what: &str, settings: ZkSettings, expect: &str) {
    let bound = settings.retry_timeout + DEADLINE_SLACK;
    let started = Instant::now();
    let result = tokio::time::timeout(bound + Duration::from_secs(10), ZkDcs::connect(settings))
        .await
        .unwrap_or_else(|_| panic!("{what}: connect hung"));
    let elapsed = started.elapsed();
    match result {
        Ok(client) => panic!("{what}: connected ({client:?})"),
        Err(e) => {
            assert!(
                elapsed <= bound,
                "{what}: failed only after {elapsed:?}: {e}"
            );
            assert!(e.to_string().contains(expect), "{what}: {e}");
            eprintln!("{what}: {e}");
        }
    }
}

/// A TLS client that does not trust the server's CA, or presents no client certificate, or
/// names a missing file gets a clear error within its deadline; the right files work.
pub async fn tls_bad_client_is_an_error() {
    let ctx = Ctx::<ZkTlsSingle>::start("zk-tls-errors");
    let opts = |member: &str| ClientOpts {
        prefix: ctx.prefix.clone(),
        member: member.to_string(),
        ttl: TTL,
        retry_timeout: RETRY,
        watch: false,
    };
    let good = ctx.backend.tls_settings(opts("good"));
    let files = good.tls.clone().expect("TLS files");

    // A CA that did not sign the server certificate.
    let other = TempRoot::new("spilo-zk-other-ca-");
    let other_ca = make_certs(other.path()).ca;
    let mut wrong_ca = ctx.backend.tls_settings(opts("a"));
    wrong_ca.tls = Some(ZkTls {
        cacert: Some(other_ca),
        ..files.clone()
    });
    refused_in_time(
        "a client with the wrong CA",
        wrong_ca,
        "invalid peer certificate",
    )
    .await;

    // No client certificate: the server requires one.
    let mut anonymous = ctx.backend.tls_settings(opts("b"));
    anonymous.tls = Some(ZkTls {
        cert: None,
        key: None,
        ..files.clone()
    });
    refused_in_time(
        "a client without a certificate",
        anonymous,
        "TLS handshake with",
    )
    .await;

    // Plain TCP to the TLS port.
    let plain = settings(vec![ctx.backend.0.host_port()], opts("c"));
    refused_in_time("a plain client on the TLS port", plain, "cannot connect").await;

    // A missing file is named by its config key, at once.
    let mut missing = ctx.backend.tls_settings(opts("d"));
    missing.tls = Some(ZkTls {
        key: Some(other.path().join("nope.key")),
        ..files.clone()
    });
    refused_in_time("a missing key file", missing, "zookeeper.key").await;

    // The right files work.
    let client = ZkDcs::connect(good)
        .await
        .expect("connect with the right files");
    client.keepalive().await.expect("keepalive over TLS");
    assert!(client
        .put("config", b"{}", Cas::Any)
        .await
        .expect("put over TLS"));
}
