//! Backends loaded as plugins through the C ABI: the example `etcd-gateway` plugin
//! (`examples/plugin-etcd-gateway`, built as a `cdylib`), loaded by spilo's own loader and
//! adapted to the `Dcs` trait exactly as the daemon does.

use async_trait::async_trait;
use spilo_core::plugin::dcs::{HostSettings, PluginDcs};
use spilo_core::plugin::loader;
use spilo_sdk::{Dcs, DcsError};
use spilo_tests::bins::plugin_lib;
use spilo_tests::etcd_cluster::freeze_pid;
use spilo_tests::util::send_signal;
use spilo_tests::Etcd;

use crate::backend::{Backend, ClientOpts};

/// One etcd process, reached through the etcd-gateway plugin.
pub struct EtcdGatewayPlugin(Etcd);

#[async_trait]
impl Backend for EtcdGatewayPlugin {
    const NAME: &'static str = "etcd single member through the etcd-gateway plugin";
    const MEMBER_CHANGES_SILENT: bool = true;

    fn start() -> Self {
        EtcdGatewayPlugin(Etcd::start())
    }

    async fn try_client(&self, opts: ClientOpts) -> Result<Box<dyn Dcs>, DcsError> {
        let path = plugin_lib("libspilo_plugin_etcd_gateway.so");
        let plugin = loader::load(&path, "etcd-gateway", "dcs").map_err(|e| DcsError::Refused {
            op: "connect",
            message: e.to_string(),
        })?;
        let host = HostSettings {
            prefix: opts.prefix,
            member: opts.member,
            ttl: opts.ttl,
            retry_timeout: opts.retry_timeout,
            watch: opts.watch,
            session: true,
        };
        let settings = serde_json::json!({ "hosts": [self.0.host_port()] });
        Ok(Box::new(PluginDcs::connect(&plugin, settings, host).await?))
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
