//! DCS conformance suite: one set of tests (`suite.rs`), generic over a [`backend::Backend`],
//! instantiated for every DCS backend by the `conformance!` macro.
//!
//! Run with `cargo test -p spilo-tests --test conformance -- --test-threads=1`.
//!
//! Backends:
//! - `etcd_single`: one etcd process;
//! - `etcd_cluster3`: three etcd processes on loopback, the client given all three endpoints;
//! - `etcd_secure`: three etcd processes serving TLS with client certificates required and
//!   username/password authentication enabled;
//! - `zookeeper_single`: one standalone ZooKeeper server;
//! - `zookeeper_tls`: one standalone ZooKeeper server serving TLS only, client certificates
//!   required;
//! - `zookeeper_ensemble`: three ZooKeeper servers, the client given all three;
//! - `plugin_etcd_gateway`: one etcd process reached through the example `etcd-gateway` plugin
//!   (a `cdylib` loaded through the C ABI by spilo's loader).

mod backend;
mod etcd;
mod lb;
mod plugin;
mod storage;
mod suite;
mod zookeeper;

/// Instantiates every conformance test for one backend, in a module named `$name`.
macro_rules! conformance {
    ($name:ident, $backend:ty) => {
        mod $name {
            use super::suite;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn acquire_only_if_absent() {
                suite::acquire_only_if_absent::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn term_grows_across_terms() {
                suite::term_grows_across_terms::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keepalive_reports_the_granted_ttl() {
                suite::keepalive_reports_the_granted_ttl::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keepalive_renews() {
                suite::keepalive_renews::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ttl_change_keeps_the_leader_key() {
                suite::ttl_change_keeps_the_leader_key::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn release_only_by_holder() {
                suite::release_only_by_holder::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn abandoned_session_expires() {
                suite::abandoned_session_expires::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn compare_and_set() {
                suite::compare_and_set::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_wakes() {
                suite::watch_wakes::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn garbage_values_are_skipped() {
                suite::garbage_values_are_skipped::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reconnects_after_restart() {
                suite::reconnects_after_restart::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn frozen_store_fails_fast() {
                suite::frozen_store_fails_fast::<$backend>().await;
            }
        }
    };
}

conformance!(etcd_single, crate::etcd::EtcdSingle);
conformance!(etcd_cluster3, crate::etcd::EtcdCluster3);
conformance!(etcd_secure, crate::etcd::EtcdSecure);
conformance!(zookeeper_single, crate::zookeeper::ZkSingle);
conformance!(zookeeper_tls, crate::zookeeper::ZkTlsSingle);
conformance!(zookeeper_ensemble, crate::zookeeper::ZkEnsemble3);
conformance!(plugin_etcd_gateway, crate::plugin::EtcdGatewayPlugin);

/// Instantiates every storage conformance test for one backend, in a module named `$name`.
macro_rules! storage_conformance {
    ($name:ident, $backend:ty) => {
        mod $name {
            use super::storage;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn streamed_put_and_get_round_trip() {
                storage::streamed_put_and_get_round_trip::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unfinished_uploads_are_invisible() {
                storage::unfinished_uploads_are_invisible::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn put_if_absent_never_replaces() {
                storage::put_if_absent_never_replaces::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn missing_objects_are_not_found() {
                storage::missing_objects_are_not_found::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn list_paginates_by_prefix_in_key_order() {
                storage::list_paginates_by_prefix_in_key_order::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_keys_are_refused() {
                storage::bad_keys_are_refused::<$backend>().await;
            }
        }
    };
}

/// Instantiates every load-balancer conformance test for one backend, in a module `$name`.
macro_rules! lb_conformance {
    ($name:ident, $backend:ty) => {
        mod $name {
            use super::lb;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn routes_are_described() {
                lb::routes_are_described::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stale_terms_are_refused_and_change_nothing() {
                lb::stale_terms_are_refused_and_change_nothing::<$backend>().await;
            }
        }
    };
}

lb_conformance!(lb_memory_plugin, crate::lb::LbMemory);
lb_conformance!(lb_c_plugin, crate::lb::CMemLb);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_plugin_panics_and_hangs_are_errors() {
    lb::plugin_panics_and_hangs_are_errors().await;
}

#[test]
fn lb_c_plugin_with_a_null_entry_point_is_refused_naming_it() {
    lb::a_null_entry_point_is_refused_naming_it();
}

storage_conformance!(storage_fs, crate::storage::FsInProcess);
storage_conformance!(storage_fs_plugin, crate::storage::FsThroughPlugin);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster3_survives_losing_its_raft_leader() {
    etcd::cluster_survives_losing_its_raft_leader().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_secure_wrong_password_is_an_error() {
    etcd::secure_wrong_password_is_an_error().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_ensemble_survives_losing_its_server() {
    zookeeper::ensemble_survives_losing_its_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_tls_bad_client_is_an_error() {
    zookeeper::tls_bad_client_is_an_error().await;
}
