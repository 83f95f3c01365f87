//! The etcd backends: a single member (the harness `Etcd`), a 3-member cluster, and a 3-member
//! cluster in production shape (TLS with client certificates, username/password auth); plus
//! the tests only these backends have.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use spilo_dcs_etcd::{EtcdDcs, EtcdSettings};
use spilo_sdk::{Cas, Dcs, DcsError};
use spilo_tests::etcd_cluster::{freeze_pid, EtcdCluster, SPILO_PASSWORD, SPILO_USER};
use spilo_tests::util::send_signal;
use spilo_tests::Etcd;

use crate::backend::{blocking, Backend, ClientOpts};
use crate::suite::{eventually, leader, Ctx, RETRY, TTL};

/// Plain settings for `endpoints`.
fn settings(endpoints: Vec<String>, opts: ClientOpts) -> EtcdSettings {
    EtcdSettings {
        endpoints,
        https: false,
        cacert: None,
        cert: None,
        key: None,
        username: None,
        password: None,
        prefix: opts.prefix,
        member: opts.member,
        ttl: opts.ttl,
        retry_timeout: opts.retry_timeout,
        watch: opts.watch,
        session: true,
    }
}

async fn connect(settings: EtcdSettings) -> Result<Box<dyn Dcs>, DcsError> {
    Ok(Box::new(EtcdDcs::connect(settings).await?))
}

// ---------------------------------------------------------------------------------------------
// Single member
// ---------------------------------------------------------------------------------------------

/// One etcd process (the integration tests' harness `Etcd`).
pub struct EtcdSingle(Etcd);

#[async_trait]
impl Backend for EtcdSingle {
    const NAME: &'static str = "etcd single member";
    const MEMBER_CHANGES_SILENT: bool = true;

    fn start() -> Self {
        EtcdSingle(Etcd::start())
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
        freeze_pid(self.0.pid().expect("etcd running"));
    }

    fn thaw(&self) {
        send_signal(self.0.pid().expect("etcd running"), libc::SIGCONT);
    }
}

// ---------------------------------------------------------------------------------------------
// Three members, plain
// ---------------------------------------------------------------------------------------------

/// Three etcd processes forming one cluster; the client is given all three endpoints.
pub struct EtcdCluster3(pub EtcdCluster);

#[async_trait]
impl Backend for EtcdCluster3 {
    const NAME: &'static str = "etcd 3-member cluster";
    const MEMBER_CHANGES_SILENT: bool = true;

    fn start() -> Self {
        EtcdCluster3(EtcdCluster::start(3))
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
// Three members, TLS + authentication
// ---------------------------------------------------------------------------------------------

/// Three etcd processes serving TLS (client certificates required) with authentication on;
/// the client logs in as `spilo` (read-write on `/`).
pub struct EtcdSecure(pub EtcdCluster);

impl EtcdSecure {
    /// Client settings with the TLS files and the given credentials.
    fn secure_settings(&self, opts: ClientOpts, user: &str, password: &str) -> EtcdSettings {
        let tls = self.0.tls.as_ref().expect("secure cluster has TLS files");
        EtcdSettings {
            https: true,
            cacert: Some(tls.ca.clone()),
            cert: Some(tls.client_cert.clone()),
            key: Some(tls.client_key.clone()),
            username: Some(user.to_string()),
            password: Some(password.to_string()),
            ..settings(self.0.host_ports(), opts)
        }
    }
}

#[async_trait]
impl Backend for EtcdSecure {
    const NAME: &'static str = "etcd 3-member cluster, TLS + auth";
    const MEMBER_CHANGES_SILENT: bool = true;

    fn start() -> Self {
        EtcdSecure(EtcdCluster::start_secure(3))
    }

    async fn try_client(&self, opts: ClientOpts) -> Result<Box<dyn Dcs>, DcsError> {
        connect(self.secure_settings(opts, SPILO_USER, SPILO_PASSWORD)).await
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

/// Killing the raft leader of a 3-member cluster keeps the client working (quorum kept), and a
/// leader key it holds is not lost.
pub async fn cluster_survives_losing_its_raft_leader() {
    let mut ctx = Ctx::<EtcdCluster3>::start("raft-leader-kill");
    let ttl = Duration::from_secs(4);
    let a = ctx.client_with("a", ttl, RETRY, true).await;
    let b = ctx.client("b").await;
    let session = a.keepalive().await.expect("keepalive");
    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));

    let victim = blocking(|| ctx.backend.0.leader_index()).expect("find the raft leader");
    blocking(|| ctx.backend.0.kill_member(victim));
    let killed_at = Instant::now();

    // Every operation works again within a bound (a new raft leader is elected in ~1-2 s).
    let bound = Duration::from_secs(10);
    let info = eventually("keepalive after the raft leader died", bound, || async {
        a.keepalive().await.map_err(|e| e.to_string())
    })
    .await;
    assert!(
        !info.new_session,
        "the session was lost with the raft leader"
    );
    assert_eq!(info.id, session.id);
    eventually("put after the raft leader died", bound, || async {
        a.put("config", b"{\"ttl\":30}", Cas::Any)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    eventually("snapshot after the raft leader died", bound, || async {
        a.snapshot().await.map_err(|e| e.to_string())
    })
    .await;
    assert!(killed_at.elapsed() < bound * 2);

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

    // The killed member rejoins, and the client keeps working.
    blocking(|| ctx.backend.0.start_member(victim));
    a.keepalive()
        .await
        .expect("keepalive after the member rejoined");
    assert_eq!(leader(a.as_ref()).await, Some(("a".to_string(), true)));
}

/// A wrong password (or an unknown user) is an error within the deadline, not a hang; the
/// right one works and a client without credentials is refused.
pub async fn secure_wrong_password_is_an_error() {
    let ctx = Ctx::<EtcdSecure>::start("wrong-password");
    let opts = |member: &str| ClientOpts {
        prefix: ctx.prefix.clone(),
        member: member.to_string(),
        ttl: TTL,
        retry_timeout: RETRY,
        watch: false,
    };
    let bound = RETRY + Duration::from_secs(1);
    for (user, password) in [(SPILO_USER, "wrong"), ("nobody", "whatever")] {
        let started = Instant::now();
        let result = tokio::time::timeout(
            bound + Duration::from_secs(10),
            EtcdDcs::connect(ctx.backend.secure_settings(opts("a"), user, password)),
        )
        .await
        .unwrap_or_else(|_| panic!("connect as {user} with a bad password hung"));
        let elapsed = started.elapsed();
        match result {
            Ok(client) => {
                // Tolerated only if the very first operation fails instead.
                let r = client.snapshot().await;
                assert!(r.is_err(), "{user}:{password} was let in");
            }
            Err(e) => {
                assert!(
                    elapsed <= bound,
                    "bad login failed only after {elapsed:?}: {e}"
                );
            }
        }
    }

    // The right password works.
    let good = ctx.client("a").await;
    good.keepalive()
        .await
        .expect("keepalive with the right password");
    assert!(good.put("config", b"{}", Cas::Any).await.expect("put"));

    // No credentials at all (TLS only): the cluster refuses the request, within the deadline.
    let mut anonymous = settings(ctx.backend.0.host_ports(), opts("b"));
    let tls = ctx.backend.0.tls.as_ref().expect("TLS files");
    anonymous.https = true;
    anonymous.cacert = Some(tls.ca.clone());
    anonymous.cert = Some(tls.client_cert.clone());
    anonymous.key = Some(tls.client_key.clone());
    let anonymous = EtcdDcs::connect(anonymous)
        .await
        .expect("connect without a user");
    let started = Instant::now();
    let result = anonymous.put("config", b"{\"x\":1}", Cas::Any).await;
    assert!(result.is_err(), "a write without credentials was accepted");
    assert!(started.elapsed() <= bound, "{:?}", started.elapsed());
}
