//! The conformance tests, written once, generic over the [`Backend`]. `main.rs` instantiates
//! every one of them per backend with the `conformance!` macro.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use spilo_sdk::{Cas, Dcs, DcsError, Snapshot};

use crate::backend::{blocking, Backend, ClientOpts};

/// Session time-to-live of most tests.
pub const TTL: Duration = Duration::from_secs(3);
/// Operation deadline of most tests.
pub const RETRY: Duration = Duration::from_secs(2);
/// How long past the deadline an operation may take to return.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(1);
/// How long past the ttl a session may take to vanish (the store's expiry slack).
pub const EXPIRY_SLACK: Duration = Duration::from_secs(5);
/// How long a watch may take to report a change.
pub const WAKE_WITHIN: Duration = Duration::from_secs(3);

/// A started backend plus the test's unique prefix.
pub struct Ctx<B: Backend> {
    /// The servers.
    pub backend: B,
    /// `/conformance/<test>-<pid>-<n>/`.
    pub prefix: String,
}

impl<B: Backend> Ctx<B> {
    /// Starts the backend for the test `test`.
    pub fn start(test: &str) -> Ctx<B> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("/conformance/{test}-{}-{n}/", std::process::id());
        let backend = blocking(B::start);
        Ctx { backend, prefix }
    }

    /// A client with the given settings; panics if it cannot be made.
    pub async fn client_with(
        &self,
        member: &str,
        ttl: Duration,
        retry_timeout: Duration,
        watch: bool,
    ) -> Box<dyn Dcs> {
        let opts = ClientOpts {
            prefix: self.prefix.clone(),
            member: member.to_string(),
            ttl,
            retry_timeout,
            watch,
        };
        self.backend
            .try_client(opts)
            .await
            .unwrap_or_else(|e| panic!("[{}] client {member}: {e}", B::NAME))
    }

    /// A client with the default timings and no watch.
    pub async fn client(&self, member: &str) -> Box<dyn Dcs> {
        self.client_with(member, TTL, RETRY, false).await
    }
}

/// The holder of the leader key (its bare value) and whether it is bound to `dcs`'s session.
pub async fn leader(dcs: &dyn Dcs) -> Option<(String, bool)> {
    let snap = dcs.snapshot().await.expect("snapshot");
    snap.get("leader").map(|e| {
        (
            String::from_utf8_lossy(&e.value).into_owned(),
            e.owned_by_us,
        )
    })
}

/// The raw value of `key`.
pub async fn value(dcs: &dyn Dcs, key: &str) -> Option<Vec<u8>> {
    let snap = dcs.snapshot().await.expect("snapshot");
    snap.get(key).map(|e| e.value.clone())
}

/// The version of `key` (panics when absent).
pub async fn version(dcs: &dyn Dcs, key: &str) -> i64 {
    let snap = dcs.snapshot().await.expect("snapshot");
    snap.get(key)
        .unwrap_or_else(|| panic!("{key} absent from {snap:?}"))
        .version
}

/// Retries `op` until it succeeds or `within` has passed; returns its value.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if started.elapsed() >= within => {
                panic!("{what}: not within {within:?}; last: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Asserts that `fut` fails, and within `bound`.
pub async fn fails_within<T: std::fmt::Debug>(
    what: &str,
    bound: Duration,
    fut: impl Future<Output = Result<T, DcsError>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(bound + Duration::from_secs(10), fut).await;
    let elapsed = started.elapsed();
    match result {
        Err(_) => panic!(
            "{what} hung for more than {:?}",
            bound + Duration::from_secs(10)
        ),
        Ok(Ok(v)) => panic!("{what} succeeded against an unreachable store: {v:?}"),
        Ok(Err(e)) => assert!(
            elapsed <= bound,
            "{what} failed only after {elapsed:?} (bound {bound:?}): {e}"
        ),
    }
}

/// Drains pending bumps of a change counter.
async fn settle(rx: &mut tokio::sync::watch::Receiver<u64>) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.borrow_and_update();
}

/// Asserts that the counter moves within [`WAKE_WITHIN`].
async fn expect_bump(rx: &mut tokio::sync::watch::Receiver<u64>, what: &str) {
    tokio::time::timeout(WAKE_WITHIN, rx.changed())
        .await
        .unwrap_or_else(|_| panic!("changes() did not move within {WAKE_WITHIN:?} after {what}"))
        .expect("changes sender alive");
    rx.borrow_and_update();
}

// ---------------------------------------------------------------------------------------------
// 1. acquire only if absent
// ---------------------------------------------------------------------------------------------

/// The leader key is created only if absent, and holds the bare member name.
pub async fn acquire_only_if_absent<B: Backend>() {
    let ctx = Ctx::<B>::start("acquire");
    let a = ctx.client("a").await;
    let b = ctx.client("b").await;
    a.keepalive().await.expect("keepalive a");
    b.keepalive().await.expect("keepalive b");
    assert!(
        a.acquire_leader().await.expect("acquire a"),
        "a could not acquire a free key"
    );
    assert!(
        !b.acquire_leader().await.expect("acquire b"),
        "b acquired a key held by a"
    );
    let snap = b.snapshot().await.expect("snapshot");
    let entry = snap.get("leader").expect("leader key present");
    assert_eq!(
        entry.value, b"a",
        "the leader key must hold the bare member name"
    );
    assert!(!entry.owned_by_us, "b's snapshot claims a's leader key");
    assert_eq!(leader(a.as_ref()).await, Some(("a".to_string(), true)));
    // b's reattach must not steal the key either.
    assert!(
        !b.reattach_leader().await.expect("reattach b"),
        "b reattached a's leader key"
    );
    assert_eq!(leader(b.as_ref()).await, Some(("a".to_string(), false)));
}

/// The leader term (`created` of the leader key) of the current snapshot; panics when the
/// key is absent or the backend reports no creation counter.
async fn leader_term(dcs: &dyn Dcs, who: &str) -> i64 {
    let snap = dcs.snapshot().await.expect("snapshot");
    let e = snap
        .get("leader")
        .unwrap_or_else(|| panic!("[{who}] no leader key in {snap:?}"));
    e.created.unwrap_or_else(|| {
        panic!("[{who}] the leader key carries no creation counter: the backend reports no term")
    })
}

/// The term grows across terms: every new leadership's leader key has a strictly larger
/// creation counter than the one before, whoever takes it, and within one leadership the term
/// does not move when other keys are written or the session is renewed.
pub async fn term_grows_across_terms<B: Backend>() {
    let ctx = Ctx::<B>::start("term");
    let a = ctx.client("a").await;
    let b = ctx.client("b").await;
    a.keepalive().await.expect("keepalive a");
    b.keepalive().await.expect("keepalive b");
    assert!(a.acquire_leader().await.expect("acquire a"));
    let first = leader_term(a.as_ref(), B::NAME).await;
    // Other writes and a renewal are not a new term.
    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member");
    assert!(a.put("status", b"{}", Cas::Any).await.expect("put status"));
    a.keepalive().await.expect("keepalive a");
    assert_eq!(
        leader_term(b.as_ref(), B::NAME).await,
        first,
        "the term moved within one leadership"
    );
    // a hands over to b: a new term, larger.
    assert!(a.release_leader().await.expect("release a"));
    assert!(b.acquire_leader().await.expect("acquire b"));
    let second = leader_term(a.as_ref(), B::NAME).await;
    assert!(
        second > first,
        "b's term {second} is not larger than a's {first}"
    );
    // And back to a: larger again (the same member leading again is still a new term).
    assert!(b.release_leader().await.expect("release b"));
    assert!(a.acquire_leader().await.expect("acquire a again"));
    let third = leader_term(b.as_ref(), B::NAME).await;
    assert!(
        third > second,
        "a's second term {third} is not larger than b's {second}"
    );
}

/// A keep-alive reports the session TTL the store granted (ZooKeeper negotiates it within the
/// server's bounds, so it may differ from the one asked for).
pub async fn keepalive_reports_the_granted_ttl<B: Backend>() {
    let ctx = Ctx::<B>::start("granted");
    let a = ctx.client("a").await;
    let info = a.keepalive().await.expect("keepalive");
    let granted = info
        .granted_ttl
        .unwrap_or_else(|| panic!("[{}] no granted TTL reported", B::NAME));
    assert!(
        granted >= Duration::from_secs(1) && granted <= Duration::from_secs(60),
        "[{}] granted TTL {granted:?} for an asked {TTL:?}",
        B::NAME
    );
}

// ---------------------------------------------------------------------------------------------
// 2. renew
// ---------------------------------------------------------------------------------------------

/// Keep-alives keep the session (and so the leader and member keys) past several ttls.
pub async fn keepalive_renews<B: Backend>() {
    let ctx = Ctx::<B>::start("renew");
    let a = ctx.client("a").await;
    let b = ctx.client("b").await;
    let first = a.keepalive().await.expect("keepalive");
    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));
    let started = Instant::now();
    while started.elapsed() < TTL * 3 {
        tokio::time::sleep(TTL / 3).await;
        let info = a.keepalive().await.expect("keepalive");
        assert!(
            !info.new_session,
            "session renewed in time was reported new"
        );
        assert_eq!(info.id, first.id, "session id changed");
    }
    let snap = b.snapshot().await.expect("snapshot");
    assert_eq!(
        snap.get("leader").map(|e| e.value.as_slice()),
        Some(&b"a"[..]),
        "leader key lost although renewed: {snap:?}"
    );
    assert!(snap.get("members/a").is_some(), "member key lost: {snap:?}");
    assert!(!b.acquire_leader().await.expect("acquire b"));
}

/// A TTL change (a new session with the new TTL) never leaves the cluster without the leader
/// key: the old session lives on until the daemon re-attached the key (one transaction), and
/// nobody else can take it at any point; afterwards the key lives on the new session alone.
pub async fn ttl_change_keeps_the_leader_key<B: Backend>() {
    let ctx = Ctx::<B>::start("ttl-change");
    let a = ctx.client("a").await;
    let b = ctx.client("b").await;
    let first = a.keepalive().await.expect("keepalive");
    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));
    b.keepalive().await.expect("keepalive b");

    a.set_ttl(TTL * 2);
    let second = a.keepalive().await.expect("keepalive with the new ttl");
    assert!(
        second.new_session && second.id != first.id,
        "a TTL change makes a new session: {first:?} -> {second:?}"
    );
    // The key is still there (on the old session) and nobody else can take it.
    assert_eq!(leader(b.as_ref()).await, Some(("a".to_string(), false)));
    assert!(
        !b.acquire_leader().await.expect("acquire b"),
        "b took the key"
    );
    // The daemon's next step: re-attach the key and rewrite the member key.
    assert!(a.reattach_leader().await.expect("reattach"));
    assert_eq!(leader(a.as_ref()).await, Some(("a".to_string(), true)));
    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member on the new session");
    // The next keep-alive retires the old session; the key stays, on the new one.
    let third = a.keepalive().await.expect("keepalive after the change");
    assert!(!third.new_session && third.id == second.id, "{third:?}");
    assert_eq!(leader(a.as_ref()).await, Some(("a".to_string(), true)));
    // Kept alive past the old TTL and its expiry slack: key and member key stay.
    let started = Instant::now();
    while started.elapsed() < TTL + EXPIRY_SLACK {
        tokio::time::sleep(TTL / 3).await;
        a.keepalive().await.expect("keepalive");
        assert!(
            !b.acquire_leader().await.expect("acquire b"),
            "b took the key"
        );
    }
    assert_eq!(leader(b.as_ref()).await, Some(("a".to_string(), false)));
    assert!(
        value(b.as_ref(), "members/a").await.is_some(),
        "member key lost"
    );
    // Closing ends the new session, and with it the keys, at once.
    a.close().await.expect("close");
    assert_eq!(leader(b.as_ref()).await, None, "the key outlived close");
}

// ---------------------------------------------------------------------------------------------
// 3. release only by the holder
// ---------------------------------------------------------------------------------------------

/// Only the holder's release deletes the leader key.
pub async fn release_only_by_holder<B: Backend>() {
    let ctx = Ctx::<B>::start("release");
    let a = ctx.client("a").await;
    let b = ctx.client("b").await;
    a.keepalive().await.expect("keepalive a");
    b.keepalive().await.expect("keepalive b");
    assert!(
        !b.release_leader().await.expect("release of an absent key"),
        "release of an absent key reported success"
    );
    assert!(a.acquire_leader().await.expect("acquire"));
    assert!(
        !b.release_leader().await.expect("release b"),
        "b released a's key"
    );
    assert_eq!(leader(b.as_ref()).await, Some(("a".to_string(), false)));
    assert!(
        a.release_leader().await.expect("release a"),
        "holder could not release"
    );
    assert_eq!(
        leader(b.as_ref()).await,
        None,
        "leader key still there after release"
    );
    assert!(
        !a.release_leader().await.expect("second release"),
        "a second release reported success"
    );
    assert!(b.acquire_leader().await.expect("acquire b after release"));
    assert_eq!(leader(a.as_ref()).await, Some(("b".to_string(), false)));
}

// ---------------------------------------------------------------------------------------------
// 4. expiry of an abandoned session
// ---------------------------------------------------------------------------------------------

/// A client dropped without `close` loses its keys within ttl + slack; another can then acquire.
pub async fn abandoned_session_expires<B: Backend>() {
    let ctx = Ctx::<B>::start("expiry");
    let a = ctx.client("a").await;
    let b = ctx.client("b").await;
    a.keepalive().await.expect("keepalive");
    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));
    let dropped_at = Instant::now();
    drop(a);
    let bound = TTL + EXPIRY_SLACK;
    let gone_after = eventually(
        "leader and member keys of a dropped client vanish",
        bound,
        || {
            let b = &b;
            async move {
                let snap = b.snapshot().await.map_err(|e| e.to_string())?;
                if snap.get("leader").is_none() && snap.get("members/a").is_none() {
                    Ok(dropped_at.elapsed())
                } else {
                    Err(format!(
                        "still there after {:?}: {snap:?}",
                        dropped_at.elapsed()
                    ))
                }
            }
        },
    )
    .await;
    assert!(
        gone_after <= bound + Duration::from_millis(500),
        "{gone_after:?}"
    );
    b.keepalive().await.expect("keepalive b");
    assert!(
        b.acquire_leader().await.expect("acquire b"),
        "b could not take over"
    );
    assert_eq!(leader(b.as_ref()).await, Some(("b".to_string(), true)));
}

// ---------------------------------------------------------------------------------------------
// 5. compare-and-set
// ---------------------------------------------------------------------------------------------

/// `put` and `delete` honour `Cas::Absent` and `Cas::Version`.
pub async fn compare_and_set<B: Backend>() {
    let ctx = Ctx::<B>::start("cas");
    let a = ctx.client("a").await;
    let key = "config";
    assert!(a
        .put(key, b"{\"ttl\":30}", Cas::Absent)
        .await
        .expect("put absent"));
    assert!(
        !a.put(key, b"{\"ttl\":31}", Cas::Absent)
            .await
            .expect("put absent again"),
        "Cas::Absent on an existing key succeeded"
    );
    assert_eq!(
        value(a.as_ref(), key).await.as_deref(),
        Some(&b"{\"ttl\":30}"[..])
    );
    let v1 = version(a.as_ref(), key).await;
    assert!(
        a.put(key, b"{\"ttl\":32}", Cas::Version(v1))
            .await
            .expect("put version"),
        "Cas::Version with the current version failed"
    );
    let v2 = version(a.as_ref(), key).await;
    assert_ne!(v1, v2, "a write did not change the version");
    assert!(
        !a.put(key, b"{\"ttl\":33}", Cas::Version(v1))
            .await
            .expect("put stale"),
        "Cas::Version with a stale version succeeded"
    );
    assert_eq!(
        value(a.as_ref(), key).await.as_deref(),
        Some(&b"{\"ttl\":32}"[..])
    );

    assert!(
        !a.delete(key, Cas::Absent).await.expect("delete absent"),
        "delete with Cas::Absent of an existing key succeeded"
    );
    assert!(
        !a.delete(key, Cas::Version(v1)).await.expect("delete stale"),
        "delete with a stale version succeeded"
    );
    assert!(
        value(a.as_ref(), key).await.is_some(),
        "a failed CAS delete removed the key"
    );
    assert!(
        a.delete(key, Cas::Version(v2))
            .await
            .expect("delete version"),
        "delete with the current version failed"
    );
    assert!(
        value(a.as_ref(), key).await.is_none(),
        "key still there after delete"
    );
    assert!(
        !a.put(key, b"{}", Cas::Version(v2))
            .await
            .expect("put version of a missing key"),
        "Cas::Version on a missing key succeeded"
    );
    assert!(value(a.as_ref(), key).await.is_none());

    // Unconditional writes. (Arbitrary nested keys are not part of the contract: ZooKeeper
    // lists only the top level and the known directories such as `members/`.)
    assert!(a.put("failover", b"{}", Cas::Any).await.expect("put any"));
    assert!(a
        .put("failover", b"{\"leader\":\"a\"}", Cas::Any)
        .await
        .expect("put any"));
    assert_eq!(
        value(a.as_ref(), "failover").await.as_deref(),
        Some(&b"{\"leader\":\"a\"}"[..])
    );
    assert!(a.delete("failover", Cas::Any).await.expect("delete any"));
    assert!(value(a.as_ref(), "failover").await.is_none());
}

// ---------------------------------------------------------------------------------------------
// 6. watch wake-ups
// ---------------------------------------------------------------------------------------------

/// `changes()` moves on leader, config and failover changes (and, where the backend promises
/// it, not on member-key-only changes).
pub async fn watch_wakes<B: Backend>() {
    let ctx = Ctx::<B>::start("watch");
    let a = ctx.client_with("a", TTL, RETRY, true).await;
    let b = ctx.client("b").await;
    let mut rx = a.changes();

    // Wait until the watch is in place: write until a change is seen.
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        b.put("config", format!("{{\"ttl\":{n}}}").as_bytes(), Cas::Any)
            .await
            .expect("put config");
        if tokio::time::timeout(Duration::from_millis(500), rx.changed())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the watch never reported anything"
        );
    }

    settle(&mut rx).await;
    b.keepalive().await.expect("keepalive");
    assert!(b.acquire_leader().await.expect("acquire"));
    expect_bump(&mut rx, "acquire_leader").await;

    settle(&mut rx).await;
    b.put("config", b"{\"ttl\":30}", Cas::Any)
        .await
        .expect("put config");
    expect_bump(&mut rx, "a config change").await;

    settle(&mut rx).await;
    b.put("failover", b"{\"leader\":\"b\",\"member\":\"a\"}", Cas::Any)
        .await
        .expect("put failover");
    expect_bump(&mut rx, "a failover change").await;

    settle(&mut rx).await;
    b.delete("failover", Cas::Any)
        .await
        .expect("delete failover");
    expect_bump(&mut rx, "a failover delete").await;

    if B::MEMBER_CHANGES_SILENT {
        settle(&mut rx).await;
        let before = *rx.borrow();
        b.put_member(b"{\"role\":\"primary\",\"xlog_location\":1}")
            .await
            .expect("put_member");
        b.put_member(b"{\"role\":\"primary\",\"xlog_location\":2}")
            .await
            .expect("put_member");
        let moved = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        assert!(
            moved.is_err(),
            "changes() moved ({before} -> {}) on a member-key-only change",
            *rx.borrow()
        );
    }

    settle(&mut rx).await;
    assert!(b.release_leader().await.expect("release"));
    expect_bump(&mut rx, "release_leader").await;
}

// ---------------------------------------------------------------------------------------------
// 7. unparseable values
// ---------------------------------------------------------------------------------------------

/// Garbage values are skipped (listed in the warnings) and the valid keys still decode.
pub async fn garbage_values_are_skipped<B: Backend>() {
    let ctx = Ctx::<B>::start("garbage");
    let a = ctx.client("a").await;
    let puts: [(&str, &[u8]); 8] = [
        ("config", b"{not json"),
        ("status", b"garbage"),
        ("members/x", b"\x00not json{"),
        ("failover", b"\xff\xfe\x00"),
        (
            "members/good",
            b"{\"conn_url\":\"postgres://127.0.0.1:5432/postgres\",\"api_url\":\"http://127.0.0.1:8008/patroni\",\"state\":\"running\",\"role\":\"primary\"}",
        ),
        ("members/legacy", b"postgres://127.0.0.1:5433/postgres?application_name=http://127.0.0.1:8009/patroni"),
        ("leader", b"good"),
        ("initialize", b"7000000000000000001"),
    ];
    for (key, value) in puts {
        assert!(a.put(key, value, Cas::Any).await.expect("put"), "put {key}");
    }
    let snap: Snapshot = a.snapshot().await.expect("snapshot");
    let cluster = std::panic::catch_unwind(|| spilo_core::dcs::decode_cluster(&snap))
        .unwrap_or_else(|_| panic!("decode_cluster panicked on {snap:?}"));
    let warned: BTreeSet<&str> = cluster.warnings.iter().map(|(k, _)| k.as_str()).collect();
    for key in ["config", "status", "members/x", "failover"] {
        assert!(
            warned.contains(key),
            "no warning for {key}: {:?}",
            cluster.warnings
        );
    }
    for key in ["members/good", "members/legacy", "leader", "initialize"] {
        assert!(
            !warned.contains(key),
            "valid {key} warned: {:?}",
            cluster.warnings
        );
    }
    assert!(cluster.config.is_none());
    assert!(cluster.status.is_none());
    assert!(cluster.failover.is_none());
    let names: Vec<&str> = cluster.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["good", "legacy"],
        "members decoded: {:?}",
        cluster.members
    );
    assert_eq!(cluster.members[0].data.role, "primary");
    assert_eq!(
        cluster.members[1].data.api_url,
        "http://127.0.0.1:8009/patroni"
    );
    assert_eq!(
        cluster.leader.as_ref().map(|l| l.name.as_str()),
        Some("good")
    );
    assert_eq!(cluster.initialize.as_deref(), Some("7000000000000000001"));
    assert_eq!(cluster.revision, snap.revision);
}

// ---------------------------------------------------------------------------------------------
// 8. reconnect after a restart
// ---------------------------------------------------------------------------------------------

/// After the server restarts on the same data, the client works again within a bound.
pub async fn reconnects_after_restart<B: Backend>() {
    let mut ctx = Ctx::<B>::start("restart");
    let a = ctx.client("a").await;
    a.keepalive().await.expect("keepalive");
    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));
    a.put("config", b"{\"ttl\":30}", Cas::Any)
        .await
        .expect("put");

    blocking(|| ctx.backend.stop());
    fails_within(
        "keepalive against a stopped store",
        RETRY + DEADLINE_SLACK,
        a.keepalive(),
    )
    .await;
    fails_within(
        "snapshot against a stopped store",
        RETRY + DEADLINE_SLACK,
        a.snapshot(),
    )
    .await;
    blocking(|| ctx.backend.start_again());

    let info = eventually(
        "keepalive after the restart",
        Duration::from_secs(20),
        || async { a.keepalive().await.map_err(|e| e.to_string()) },
    )
    .await;
    if info.new_session {
        // The old session expired meanwhile: the daemon writes its keys again.
        a.put_member(b"{\"role\":\"primary\"}")
            .await
            .expect("put_member again");
        assert!(
            a.reattach_leader().await.expect("reattach"),
            "could not reattach the leader key after a new session"
        );
    }
    assert_eq!(
        leader(a.as_ref()).await,
        Some(("a".to_string(), true)),
        "leader key not ours after the restart (new_session {})",
        info.new_session
    );
    let snap = a.snapshot().await.expect("snapshot");
    assert!(snap.get("members/a").is_some(), "{snap:?}");
    assert_eq!(
        snap.get("config").map(|e| e.value.as_slice()),
        Some(&b"{\"ttl\":30}"[..]),
        "persistent key lost in the restart"
    );
    assert!(a
        .put("config", b"{\"ttl\":31}", Cas::Any)
        .await
        .expect("put after restart"));
    let again = a.keepalive().await.expect("keepalive");
    assert!(!again.new_session);
}

// ---------------------------------------------------------------------------------------------
// 9. partition
// ---------------------------------------------------------------------------------------------

/// Against a frozen server every operation fails within retry_timeout + 1 s; after the thaw
/// the client works again.
pub async fn frozen_store_fails_fast<B: Backend>() {
    let retry = Duration::from_secs(1);
    let ttl = Duration::from_secs(4);
    let ctx = Ctx::<B>::start("partition");
    let a = ctx.client_with("a", ttl, retry, true).await;
    a.keepalive().await.expect("keepalive");
    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member");
    assert!(a.acquire_leader().await.expect("acquire"));
    a.put("config", b"{\"ttl\":30}", Cas::Any)
        .await
        .expect("put");

    blocking(|| ctx.backend.freeze());
    let bound = retry + DEADLINE_SLACK;
    fails_within("snapshot", bound, a.snapshot()).await;
    fails_within("keepalive", bound, a.keepalive()).await;
    fails_within("put_member", bound, a.put_member(b"{}")).await;
    fails_within("acquire_leader", bound, a.acquire_leader()).await;
    fails_within("reattach_leader", bound, a.reattach_leader()).await;
    fails_within("release_leader", bound, a.release_leader()).await;
    fails_within("put", bound, a.put("config", b"{}", Cas::Any)).await;
    fails_within("put cas", bound, a.put("config", b"{}", Cas::Absent)).await;
    fails_within("delete", bound, a.delete("failover", Cas::Any)).await;
    blocking(|| ctx.backend.thaw());

    let info = eventually(
        "keepalive after the thaw",
        Duration::from_secs(20),
        || async { a.keepalive().await.map_err(|e| e.to_string()) },
    )
    .await;
    let _ = info;
    // Requests sent into the frozen server may still be applied after the thaw (a release
    // among them), so write the keys again as the daemon would.
    a.put_member(b"{\"role\":\"primary\"}")
        .await
        .expect("put_member after thaw");
    assert!(a.reattach_leader().await.expect("reattach after thaw"));
    assert_eq!(leader(a.as_ref()).await, Some(("a".to_string(), true)));
    assert!(a
        .put("config", b"{\"ttl\":31}", Cas::Any)
        .await
        .expect("put after thaw"));
    assert!(a.release_leader().await.expect("release after thaw"));
}
