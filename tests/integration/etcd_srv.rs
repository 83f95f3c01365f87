//! etcd found through DNS SRV records (Patroni's `etcd3.srv`, `etcd3.srv_suffix`), against a
//! stub nameserver (`tests/harness/dns.rs`; the daemons are pointed at it with
//! `SPILO_DNS_SERVERS`): a node with `_etcd-client-<suffix>` records bootstraps, one whose
//! domain has only `_etcd-server` (peer) records finds the clients through the peers' member
//! list and replicates; the names are asked in Patroni's order and no further than the first
//! that answers; a domain with no records keeps the daemon retrying, saying so, until the
//! records appear.

use std::collections::BTreeMap;
use std::time::Duration;

use spilo_tests::dcs::{DcsEndpoint, DcsServer};
use spilo_tests::dns::DnsStub;
use spilo_tests::{ClusterOpts, TestCluster};

use crate::{BOOTSTRAP, REPLICATION};

#[test]
fn etcd_is_found_through_srv_records() {
    let mut c = TestCluster::start(0, ClusterOpts::named("srv"));
    let (client, peer) = match &c.dcs {
        DcsServer::Etcd(e) => (e.client_port, e.peer_port),
        _ => panic!("this test runs on a single etcd (SPILO_TEST_DCS unset)"),
    };
    let zone = BTreeMap::from([
        (
            "_etcd-client-prod._tcp.spilo.test".to_string(),
            vec![(10, 0, client, "127.0.0.1".to_string())],
        ),
        (
            "_etcd-server._tcp.peers.test".to_string(),
            vec![(10, 0, peer, "127.0.0.1".to_string())],
        ),
    ]);
    let dns = DnsStub::start(zone);
    let env = vec![("SPILO_DNS_SERVERS".to_string(), dns.addr.to_string())];
    for (name, dcs) in [
        (
            "node1",
            DcsEndpoint::EtcdSrv {
                domain: "spilo.test".into(),
                suffix: Some("prod".into()),
            },
        ),
        (
            "node2",
            DcsEndpoint::EtcdSrv {
                domain: "peers.test".into(),
                suffix: None,
            },
        ),
    ] {
        let mut o = c.opts.node.clone();
        o.env = env.clone();
        let idx = c.add_node(name, name, o);
        c.nodes[idx].config.dcs = dcs;
        c.nodes[idx].rewrite_config(|_| {});
        c.nodes[idx].start();
    }
    let primary = c.wait_for_primary(BOOTSTRAP);
    c.wait_for_replicas_streaming(REPLICATION);
    // Patroni's order: -ssl first, then the plain client name, which answers; nothing after.
    assert!(dns.asked("_etcd-client-ssl-prod._tcp.spilo.test") >= 1);
    assert!(dns.asked("_etcd-client-prod._tcp.spilo.test") >= 1);
    assert_eq!(dns.asked("_etcd-ssl-prod._tcp.spilo.test"), 0);
    // Peer records: the names asked in Patroni's order (the first discovery's questions).
    let order: Vec<String> = dns
        .questions()
        .into_iter()
        .filter(|q| q.ends_with("._tcp.peers.test"))
        .take(6)
        .collect();
    let want: Vec<String> = [
        "_etcd-client-ssl",
        "_etcd-client",
        "_etcd-ssl",
        "_etcd",
        "_etcd-server-ssl",
        "_etcd-server",
    ]
    .iter()
    .map(|n| format!("{n}._tcp.peers.test"))
    .collect();
    assert_eq!(order, want);
    let log1 = c.node("node1").log_text();
    assert!(
        log1.contains(&format!(
            "etcd found through _etcd-client-prod._tcp.spilo.test: 127.0.0.1:{client}"
        )),
        "{log1}"
    );
    let log2 = c.node("node2").log_text();
    assert!(
        log2.contains(&format!(
            "etcd found through _etcd-server._tcp.peers.test: 127.0.0.1:{client}"
        )),
        "{log2}"
    );
    c.node(&primary)
        .write_value("srv_rows", "found")
        .expect("write");
    for r in c.others(&primary) {
        c.wait_for_value(&r, "srv_rows", "found", REPLICATION);
    }

    // A domain without records: the daemon keeps trying and says what it asked.
    let mut o = c.opts.node.clone();
    o.env = env.clone();
    let idx = c.add_node("node3", "node3", o);
    c.nodes[idx].config.dcs = DcsEndpoint::EtcdSrv {
        domain: "nothing.test".into(),
        suffix: None,
    };
    c.nodes[idx].rewrite_config(|_| {});
    c.nodes[idx].start();
    spilo_tests::wait_for(
        "node3 says it found no records",
        Duration::from_secs(30),
        || {
            let log = c.node("node3").log_text();
            if log.contains("no SRV records for etcd under nothing.test") {
                Ok(())
            } else {
                Err(c.node("node3").log_tail(5))
            }
        },
    );
    assert!(c.node_mut("node3").daemon_running(), "the daemon gave up");
    // The records appear: the daemon finds etcd and joins as a replica.
    dns.set(
        "_etcd._tcp.nothing.test",
        vec![(10, 0, client, "127.0.0.1".to_string())],
    );
    c.wait_for_value("node3", "srv_rows", "found", Duration::from_secs(120));
}
