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
//!
//! The storage suite (`storage.rs`, every test named `storage_*`) runs on the filesystem
//! backend and on the S3 backend against moto and s3s-fs, in-process and as a plugin
//! (`s3.rs`, which also holds the S3-specific tests): `cargo test -p spilo-tests --test
//! conformance storage_`.

mod backend;
mod etcd;
mod lb;
mod plugin;
mod s3;
mod storage;
mod suite;
mod zookeeper;

/// One `#[tokio::test]` per case, each calling `$suite::$case::<$backend>()`: the boilerplate of
/// every suite, written once.
macro_rules! cases {
    ($suite:ident, $backend:ty, [$($case:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $suite::$case::<$backend>().await;
            }
        )*
    };
}

/// Instantiates every DCS conformance test for one backend, in a module named `$name`.
macro_rules! conformance {
    ($name:ident, $backend:ty) => {
        mod $name {
            use super::suite;

            cases!(
                suite,
                $backend,
                [
                    acquire_only_if_absent,
                    term_grows_across_terms,
                    keepalive_reports_the_granted_ttl,
                    keepalive_renews,
                    ttl_change_keeps_the_leader_key,
                    release_only_by_holder,
                    abandoned_session_expires,
                    compare_and_set,
                    watch_wakes,
                    garbage_values_are_skipped,
                    reconnects_after_restart,
                    frozen_store_fails_fast,
                ]
            );
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

            cases!(
                storage,
                $backend,
                [
                    streamed_put_and_get_round_trip,
                    unfinished_uploads_are_invisible,
                    put_if_absent_never_replaces,
                    missing_objects_are_not_found,
                    list_paginates_by_prefix_in_key_order,
                    bad_keys_are_refused,
                ]
            );
        }
    };
}

/// Instantiates every load-balancer conformance test for one backend, in a module `$name`.
macro_rules! lb_conformance {
    ($name:ident, $backend:ty) => {
        mod $name {
            use super::lb;

            cases!(
                lb,
                $backend,
                [
                    routes_are_described,
                    stale_terms_are_refused_and_change_nothing,
                ]
            );
        }
    };
}

lb_conformance!(lb_memory_plugin, crate::lb::LbMemory);
lb_conformance!(lb_c_plugin, crate::lb::CMemLb);
lb_conformance!(lb_elb_moto, crate::lb::ElbMoto);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_elb_fences_across_nodes_and_repairs() {
    lb::elb_fences_across_nodes_and_repairs().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_elb_without_a_replica_elb_routes_no_replicas() {
    lb::elb_without_a_replica_elb_routes_no_replicas().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_elb_instance_id_comes_from_imdsv2() {
    lb::elb_instance_id_comes_from_imdsv2().await;
}

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
storage_conformance!(storage_s3_moto, crate::s3::S3MotoInProcess);
storage_conformance!(storage_s3_s3sfs, crate::s3::S3sFsInProcess);
storage_conformance!(storage_s3_moto_plugin, crate::s3::S3MotoThroughPlugin);
storage_conformance!(storage_s3_s3sfs_plugin, crate::s3::S3sFsThroughPlugin);

/// The S3 backend's own tests: `storage_s3_<what>_<server>[_plugin]`.
mod storage_s3 {
    use super::s3;
    use spilo_tests::s3::S3Kind::{Moto, S3sFs};

    macro_rules! s3_tests {
        ($($name:ident => $body:expr;)*) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $body.await;
                }
            )*
        };
    }

    s3_tests! {
        multipart_round_trip_moto => s3::multipart_round_trip(Moto, false);
        multipart_round_trip_s3sfs => s3::multipart_round_trip(S3sFs, false);
        multipart_round_trip_s3sfs_plugin => s3::multipart_round_trip(S3sFs, true);
        aborted_multipart_leaves_nothing_moto => s3::aborted_multipart_leaves_nothing(Moto, false);
        aborted_multipart_leaves_nothing_s3sfs => s3::aborted_multipart_leaves_nothing(S3sFs, false);
        aborted_multipart_leaves_nothing_moto_plugin => s3::aborted_multipart_leaves_nothing(Moto, true);
        put_if_absent_over_multipart_moto => s3::put_if_absent_over_multipart(Moto, false, true);
        put_if_absent_over_multipart_s3sfs => s3::put_if_absent_over_multipart(S3sFs, false, true);
        put_if_absent_over_multipart_moto_plugin => s3::put_if_absent_over_multipart(Moto, true, true);
        put_if_absent_head_fallback_moto => s3::put_if_absent_over_multipart(Moto, false, false);
        put_if_absent_head_fallback_s3sfs => s3::put_if_absent_over_multipart(S3sFs, false, false);
        missing_bucket_is_named_moto => s3::missing_bucket_is_named(Moto, false);
        missing_bucket_is_named_s3sfs => s3::missing_bucket_is_named(S3sFs, false);
        missing_bucket_is_named_moto_plugin => s3::missing_bucket_is_named(Moto, true);
        wrong_secret_is_named_s3sfs => s3::wrong_secret_is_named(false);
        wrong_secret_is_named_s3sfs_plugin => s3::wrong_secret_is_named(true);
        silent_server_times_out => s3::silent_server_times_out(false);
        silent_server_times_out_plugin => s3::silent_server_times_out(true);
        bad_settings_are_refused => s3::bad_settings_are_refused(false);
        bad_settings_are_refused_plugin => s3::bad_settings_are_refused(true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn if_none_match_moto() {
        let (put, complete) = s3::honours_if_none_match(Moto).await;
        assert!(
            put && complete,
            "moto: PutObject {put}, CompleteMultipartUpload {complete}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn if_none_match_s3sfs() {
        let (put, complete) = s3::honours_if_none_match(S3sFs).await;
        assert!(
            put && complete,
            "s3s-fs: PutObject {put}, CompleteMultipartUpload {complete}"
        );
    }
}

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
