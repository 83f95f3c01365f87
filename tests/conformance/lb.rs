//! Load-balancer conformance: one set of tests, generic over an [`LbBackend`], run against two
//! plugins loaded through spilo's loader and adapter: `lb-memory` (Rust, the SDK's
//! `export_lb_plugin!`) and `memlb` (C, against `spilo_plugin.h`, compiled with `cc` here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use spilo_core::plugin::lb::PluginLb;
use spilo_core::plugin::loader;
use spilo_sdk::{LoadBalancer, Term};
use spilo_tests::bins::{build_c_plugin, plugin_lib};

/// One load-balancer backend under test: a fresh instance per test.
#[async_trait]
pub trait LbBackend: Sized + Send + Sync + 'static {
    /// Name used in messages.
    const NAME: &'static str;
    /// Makes an instance; `dir` is the test's scratch directory.
    async fn open(dir: &Path) -> Box<dyn LoadBalancer>;
}

async fn connect(path: &Path, name: &str) -> Box<dyn LoadBalancer> {
    connect_with(path, name, serde_json::json!({}), Duration::from_secs(5)).await
}

async fn connect_with(
    path: &Path,
    name: &str,
    settings: serde_json::Value,
    timeout: Duration,
) -> Box<dyn LoadBalancer> {
    let p = loader::load(path, name, "load_balancer").unwrap_or_else(|e| panic!("{e}"));
    Box::new(
        PluginLb::connect(&p, settings, timeout)
            .await
            .unwrap_or_else(|e| panic!("connect {name}: {e}")),
    )
}

/// The host's blocking-call adapter (shared by every plugin kind) on a load-balancer plugin:
/// a panic is an error naming the plugin's file and the instance keeps working; a hung call
/// is a timeout shortly after the deadline; and while four calls hang, further calls fail at
/// once instead of parking more threads.
pub async fn plugin_panics_and_hangs_are_errors() {
    let path = plugin_lib("libspilo_test_plugin_lb_memory.so");
    let lb = connect_with(
        &path,
        "lb-memory",
        serde_json::json!({"fault": "panic"}),
        Duration::from_secs(5),
    )
    .await;
    let e = lb
        .set_primary(Some("n1"), Term(1))
        .await
        .expect_err("a panic is an error")
        .to_string();
    assert!(
        e.contains("injected fault in set_primary")
            && e.contains("panicked")
            && e.contains(&path.display().to_string()),
        "{e}"
    );
    lb.describe()
        .await
        .expect("the instance survives the panic");

    let timeout = Duration::from_millis(300);
    let lb = connect_with(
        &path,
        "lb-memory",
        serde_json::json!({"fault": "hang"}),
        timeout,
    )
    .await;
    // Four calls at once (the adapter's limit), each hanging past its deadline: each is a
    // timeout shortly after it, while the plugin still holds all four threads.
    assert_eq!(spilo_core::plugin::adapter::MAX_IN_FLIGHT, 4);
    let started = std::time::Instant::now();
    let call = || lb.set_primary(Some("n1"), Term(1));
    let (a, b, c, d) = tokio::join!(call(), call(), call(), call());
    for (i, r) in [a, b, c, d].into_iter().enumerate() {
        assert!(
            matches!(r, Err(spilo_sdk::LbError::Timeout { .. })),
            "call {i}: {r:?}"
        );
    }
    assert!(started.elapsed() < timeout + Duration::from_secs(2));
    let started = std::time::Instant::now();
    let r = lb.describe().await;
    assert!(
        matches!(&r, Err(spilo_sdk::LbError::Unreachable { message, .. }) if message.contains("still hanging")),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "a call behind hung ones must fail at once"
    );
}

/// `tests/plugins/lb-memory`.
pub struct LbMemory;

#[async_trait]
impl LbBackend for LbMemory {
    const NAME: &'static str = "lb-memory (Rust plugin)";
    async fn open(_dir: &Path) -> Box<dyn LoadBalancer> {
        connect(
            &plugin_lib("libspilo_test_plugin_lb_memory.so"),
            "lb-memory",
        )
        .await
    }
}

/// `plugins/lb-elb` against moto: classic ELBs that hold EC2 instances. The conformance tests
/// speak of members `n1`, `n2`, …; the backend knows instances, so this wrapper maps each name
/// to an instance of its own (and back in `describe`), as the daemon does with the member
/// keys' `instance_id`. `n1` is the node the plugin runs on.
pub struct ElbMoto;

struct MappedElb {
    inner: Box<dyn LoadBalancer>,
    ids: std::collections::BTreeMap<String, String>,
    _moto: spilo_tests::aws::Moto,
}

impl MappedElb {
    fn id(&self, name: &str) -> String {
        self.ids
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no instance for member {name}"))
    }
    fn name(&self, id: &str) -> String {
        self.ids
            .iter()
            .find(|(_, v)| v.as_str() == id)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| id.to_string())
    }
}

#[async_trait]
impl LoadBalancer for MappedElb {
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    async fn set_primary(
        &self,
        member: Option<&str>,
        term: Term,
    ) -> Result<(), spilo_sdk::LbError> {
        let id = member.map(|m| self.id(m));
        self.inner.set_primary(id.as_deref(), term).await
    }
    async fn set_replicas(&self, members: &[String], term: Term) -> Result<(), spilo_sdk::LbError> {
        let ids: Vec<String> = members.iter().map(|m| self.id(m)).collect();
        self.inner.set_replicas(&ids, term).await
    }
    async fn describe(&self) -> Result<spilo_sdk::LbState, spilo_sdk::LbError> {
        let mut s = self.inner.describe().await?;
        s.primary = s.primary.map(|p| self.name(&p));
        s.replicas = s.replicas.iter().map(|r| self.name(r)).collect();
        s.replicas.sort();
        Ok(s)
    }
}

/// Settings for the ELB plugin against `moto`, running on `me`.
pub fn elb_settings(moto: &spilo_tests::aws::Moto, me: &str) -> serde_json::Value {
    serde_json::json!({
        "primary_elb": spilo_tests::aws::PRIMARY_ELB,
        "replica_elb": spilo_tests::aws::REPLICA_ELB,
        "instance_id": me,
        "endpoint": moto.endpoint(),
        "region": spilo_tests::aws::REGION,
        "access_key_id": "test",
        "secret_access_key": "test",
    })
}

fn moto_with_elbs(n: usize) -> (spilo_tests::aws::Moto, Vec<String>) {
    spilo_tests::aws::Moto::with_elbs(n)
}

#[async_trait]
impl LbBackend for ElbMoto {
    const NAME: &'static str = "elb (plugin, moto)";
    async fn open(_dir: &Path) -> Box<dyn LoadBalancer> {
        let (moto, ids) = tokio::task::block_in_place(|| moto_with_elbs(4));
        let names = ["n1", "n2", "n3", "n9"];
        let ids: std::collections::BTreeMap<String, String> =
            names.iter().map(|n| n.to_string()).zip(ids).collect();
        let settings = elb_settings(&moto, &ids["n1"]);
        let inner = connect_with(
            &plugin_lib("libspilo_lb_elb_plugin.so"),
            "elb",
            settings,
            Duration::from_secs(20),
        )
        .await;
        Box::new(MappedElb {
            inner,
            ids,
            _moto: moto,
        })
    }
}

/// The ELB backend's own behaviour on moto: the term lives in the primary ELB's tag, so a
/// second node's plugin (a deposed leader) is refused by what the first one wrote; a hand
/// registration and a double registration are cleaned up by the next `set_primary`; an
/// unknown ELB name stops `create` with AWS's error code; `set_primary(nobody)` takes out
/// only the calling node.
pub async fn elb_fences_across_nodes_and_repairs() {
    let (moto, ids) = tokio::task::block_in_place(|| moto_with_elbs(3));
    let plugin = plugin_lib("libspilo_lb_elb_plugin.so");
    let a = connect_with(
        &plugin,
        "elb",
        elb_settings(&moto, &ids[0]),
        Duration::from_secs(20),
    )
    .await;
    let b = connect_with(
        &plugin,
        "elb",
        elb_settings(&moto, &ids[1]),
        Duration::from_secs(20),
    )
    .await;
    let d = a.describe().await.expect("describe");
    assert_eq!(d.raw["addressing"], "instance_id");
    assert_eq!(d.raw["self"], ids[0].as_str());
    a.set_primary(Some(&ids[0]), Term(10))
        .await
        .expect("a leads in term 10");
    a.set_replicas(&[ids[1].clone(), ids[2].clone()], Term(10))
        .await
        .expect("replicas");
    let m = tokio::task::block_in_place(|| moto.elb_instances("spilo-primary"));
    assert_eq!(m, vec![ids[0].clone()]);
    let tag = tokio::task::block_in_place(|| moto.term_tag("spilo-primary"));
    assert_eq!(tag, Some(10));
    // b takes over with term 11; a's late call with term 10 is refused by the tag b wrote.
    b.set_primary(Some(&ids[1]), Term(11))
        .await
        .expect("b leads in term 11");
    let late = a.set_primary(Some(&ids[0]), Term(10)).await;
    assert!(late.as_ref().is_err_and(|e| e.is_stale_term()), "{late:?}");
    let late = a.set_primary(None, Term(10)).await;
    assert!(late.as_ref().is_err_and(|e| e.is_stale_term()), "{late:?}");
    let m = tokio::task::block_in_place(|| moto.elb_instances("spilo-primary"));
    assert_eq!(m, vec![ids[1].clone()]);
    // Someone registers instances by hand, one twice: b's next set_primary leaves only b.
    tokio::task::block_in_place(|| {
        moto.register("spilo-primary", &ids[2]);
        moto.register("spilo-primary", &ids[1]);
    });
    let d = b.describe().await.expect("describe");
    assert_eq!(d.primary, None, "two instances are no primary: {:?}", d.raw);
    b.set_primary(Some(&ids[1]), Term(11))
        .await
        .expect("repair");
    let m = tokio::task::block_in_place(|| moto.elb_instances("spilo-primary"));
    assert!(!m.contains(&ids[2]), "{m:?}");
    assert_eq!(
        b.describe().await.expect("describe").primary.as_deref(),
        Some(ids[1].as_str())
    );
    // Stepping down takes out the caller only.
    b.set_primary(None, Term(11)).await.expect("b steps down");
    let m = tokio::task::block_in_place(|| moto.elb_instances("spilo-primary"));
    assert!(m.is_empty(), "{m:?}");
    // An unknown ELB name is refused at create, with AWS's error code.
    let p = loader::load(&plugin, "elb", "load_balancer").unwrap_or_else(|e| panic!("{e}"));
    let mut bad = elb_settings(&moto, &ids[0]);
    bad["primary_elb"] = "no-such-elb".into();
    let e = match PluginLb::connect(&p, bad, Duration::from_secs(20)).await {
        Ok(_) => panic!("an unknown ELB must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("LoadBalancerNotFound") && e.contains("no-such-elb"),
        "{e}"
    );
}

/// Without `instance_id` the ELB plugin asks the instance metadata service, IMDSv2 (a token
/// first, never a tokenless request); a metadata service that does not answer stops `create`
/// with a message naming `instance_id` and the endpoint.
pub async fn elb_instance_id_comes_from_imdsv2() {
    let (moto, ids) = tokio::task::block_in_place(|| moto_with_elbs(1));
    let imds = spilo_tests::imds::Imds::start(&ids[0]);
    let plugin = plugin_lib("libspilo_lb_elb_plugin.so");
    let mut settings = elb_settings(&moto, &ids[0]);
    settings
        .as_object_mut()
        .expect("object")
        .remove("instance_id");
    settings["imds_endpoint"] = imds.endpoint().into();
    let lb = connect_with(&plugin, "elb", settings.clone(), Duration::from_secs(20)).await;
    let d = lb.describe().await.expect("describe");
    assert_eq!(d.raw["self"], ids[0].as_str(), "{:?}", d.raw);
    assert!(imds.tokens.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(
        imds.tokenless.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "IMDSv1 (no token) was tried"
    );
    let dead = format!("http://127.0.0.1:{}", spilo_tests::util::free_port());
    settings["imds_endpoint"] = dead.clone().into();
    let p = loader::load(&plugin, "elb", "load_balancer").unwrap_or_else(|e| panic!("{e}"));
    let e = match PluginLb::connect(&p, settings, Duration::from_secs(30)).await {
        Ok(_) => panic!("no instance id anywhere must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("instance_id") && e.contains(&dead), "{e}");
}

/// Without `replica_elb` the ELB plugin routes no read-only side and says so, so the driver
/// does not "repair" replicas it cannot hold; `set_replicas` still fences by term.
pub async fn elb_without_a_replica_elb_routes_no_replicas() {
    let (moto, ids) = tokio::task::block_in_place(|| moto_with_elbs(2));
    let mut settings = elb_settings(&moto, &ids[0]);
    settings
        .as_object_mut()
        .expect("object")
        .remove("replica_elb");
    let lb = connect_with(
        &plugin_lib("libspilo_lb_elb_plugin.so"),
        "elb",
        settings,
        Duration::from_secs(40),
    )
    .await;
    lb.set_primary(Some(&ids[0]), Term(3))
        .await
        .expect("primary");
    lb.set_replicas(std::slice::from_ref(&ids[1]), Term(3))
        .await
        .expect("replicas: nothing to route, admitted");
    let d = lb.describe().await.expect("describe");
    assert_eq!(d.raw["replicas_routed"], false, "{:?}", d.raw);
    assert!(d.replicas.is_empty());
    let stale = lb
        .set_replicas(std::slice::from_ref(&ids[1]), Term(2))
        .await;
    assert!(
        stale.as_ref().is_err_and(|e| e.is_stale_term()),
        "{stale:?}"
    );
}

/// Compiles `tests/plugins/c-lb/memlb.c` into `dir` with extra `-D` flags.
pub fn build_c_lb(dir: &Path, file: &str, defines: &[&str]) -> PathBuf {
    build_c_plugin(dir, "tests/plugins/c-lb/memlb.c", file, defines)
}

/// `tests/plugins/c-lb` (C).
pub struct CMemLb;

#[async_trait]
impl LbBackend for CMemLb {
    const NAME: &'static str = "memlb (C plugin)";
    async fn open(dir: &Path) -> Box<dyn LoadBalancer> {
        let lib = tokio::task::block_in_place(|| build_c_lb(dir, "libspilo_memlb.so", &[]));
        connect(&lib, "memlb").await
    }
}

async fn instance<B: LbBackend>() -> (tempfile::TempDir, Box<dyn LoadBalancer>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let lb = B::open(dir.path()).await;
    (dir, lb)
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// What was set is what `describe` reports, with the newest term.
pub async fn routes_are_described<B: LbBackend>() {
    let (_dir, lb) = instance::<B>().await;
    let fresh = lb.describe().await.expect("describe");
    assert_eq!((fresh.primary, fresh.term), (None, None), "[{}]", B::NAME);
    lb.set_primary(Some("n1"), Term(5))
        .await
        .expect("set_primary");
    lb.set_replicas(&names(&["n2", "n3"]), Term(5))
        .await
        .expect("set_replicas");
    let s = lb.describe().await.expect("describe");
    assert_eq!(s.primary.as_deref(), Some("n1"), "[{}]", B::NAME);
    assert_eq!(s.replicas, names(&["n2", "n3"]), "[{}]", B::NAME);
    assert_eq!(s.term, Some(Term(5)), "[{}]", B::NAME);
    // Read-write traffic to nobody (a primary leaving before it demotes).
    lb.set_primary(None, Term(5))
        .await
        .expect("set_primary none");
    assert_eq!(lb.describe().await.expect("describe").primary, None);
}

/// A call with an older term than the newest seen is refused as stale and changes nothing;
/// the same term again and newer terms are admitted.
pub async fn stale_terms_are_refused_and_change_nothing<B: LbBackend>() {
    let (_dir, lb) = instance::<B>().await;
    lb.set_primary(Some("n1"), Term(7)).await.expect("term 7");
    lb.set_replicas(&names(&["n2"]), Term(7))
        .await
        .expect("term 7");
    let stale = lb.set_primary(Some("n9"), Term(6)).await;
    assert!(
        stale.as_ref().is_err_and(|e| e.is_stale_term()),
        "[{}] a stale set_primary: {stale:?}",
        B::NAME
    );
    let stale = lb.set_replicas(&names(&["n9"]), Term(3)).await;
    assert!(
        stale.as_ref().is_err_and(|e| e.is_stale_term()),
        "[{}] a stale set_replicas: {stale:?}",
        B::NAME
    );
    let s = lb.describe().await.expect("describe");
    assert_eq!(
        (s.primary.as_deref(), s.replicas, s.term),
        (Some("n1"), names(&["n2"]), Some(Term(7))),
        "[{}] a refused call changed the routes",
        B::NAME
    );
    lb.set_primary(Some("n1"), Term(7))
        .await
        .expect("the same term again");
    lb.set_primary(Some("n2"), Term(8))
        .await
        .expect("a newer term");
    let s = lb.describe().await.expect("describe");
    assert_eq!((s.primary.as_deref(), s.term), (Some("n2"), Some(Term(8))));
}

/// A C plugin with a NULL entry point is refused at load, naming the file and the entry.
pub fn a_null_entry_point_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build_c_lb(dir.path(), "libnulldescribe.so", &["-DMEMLB_NULL_DESCRIBE"]);
    let e = loader::load(&lib, "memlb", "load_balancer")
        .expect_err("a NULL describe must be refused")
        .to_string();
    assert!(
        e.contains(&lib.display().to_string())
            && e.contains("the load-balancer vtable has NULL entry points: describe"),
        "{e}"
    );
    // And a kind mismatch with the configuration is named too.
    let ok = build_c_lb(dir.path(), "libmemlb.so", &[]);
    let e = loader::load(&ok, "memlb", "dcs")
        .expect_err("kind mismatch")
        .to_string();
    assert!(
        e.contains("is a load_balancer plugin, the configuration says dcs"),
        "{e}"
    );
}
