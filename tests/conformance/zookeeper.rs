//! The ZooKeeper backend: one standalone server.

use async_trait::async_trait;
use spilo_dcs_zookeeper::{ZkDcs, ZkSettings};
use spilo_sdk::{Dcs, DcsError};
use spilo_tests::etcd_cluster::freeze_pid;
use spilo_tests::util::send_signal;
use spilo_tests::zookeeper::ZooKeeper;

use crate::backend::{Backend, ClientOpts};

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
        let settings = ZkSettings {
            hosts: vec![self.0.host_port()],
            prefix: opts.prefix,
            member: opts.member,
            ttl: opts.ttl,
            retry_timeout: opts.retry_timeout,
            watch: opts.watch,
            session: true,
            auth_data: Vec::new(),
            set_acls: None,
            tls: None,
        };
        Ok(Box::new(ZkDcs::connect(settings).await?))
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
