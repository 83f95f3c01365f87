//! Built-in DCS backends, chosen by the config section present.

use std::sync::Arc;
use std::time::Duration;

use spilo_dcs_etcd::{EtcdDcs, EtcdSettings};
use spilo_dcs_zookeeper::{ZkDcs, ZkSettings, ZkTls};

use crate::config::Config;
use crate::dcs::{cluster_prefix, Dcs, DcsError};

/// How the backend will be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The daemon: a session and a watch.
    Daemon,
    /// The CLI: plain reads and writes.
    Cli,
}

/// Connect to the DCS named in the config.
pub async fn connect(
    cfg: &Config,
    ttl: Duration,
    retry_timeout: Duration,
    role: Role,
) -> Result<Arc<dyn Dcs>, DcsError> {
    let prefix = cluster_prefix(&cfg.namespace, &cfg.scope);
    if let Some(e) = &cfg.etcd3 {
        let https = e
            .protocol
            .as_deref()
            .map(|p| p.eq_ignore_ascii_case("https"))
            .unwrap_or(false);
        let settings = EtcdSettings {
            endpoints: e.endpoints(),
            https,
            cacert: e.cacert.clone(),
            cert: e.cert.clone(),
            key: e.key.clone(),
            username: e.username.clone(),
            password: e.password.clone(),
            prefix,
            member: cfg.name.clone(),
            ttl,
            retry_timeout,
            watch: role == Role::Daemon,
            session: role == Role::Daemon,
        };
        return Ok(Arc::new(EtcdDcs::connect(settings).await?));
    }
    if let Some(z) = &cfg.zookeeper {
        let settings = ZkSettings {
            hosts: z.hosts.hosts(),
            prefix,
            member: cfg.name.clone(),
            ttl,
            retry_timeout,
            watch: role == Role::Daemon,
            session: role == Role::Daemon,
            auth_data: z
                .auth_data
                .iter()
                .flatten()
                .map(|(scheme, cred)| (scheme.clone(), cred.clone()))
                .collect(),
            set_acls: z.set_acls.clone(),
            tls: z.use_ssl.then(|| ZkTls {
                cacert: z.cacert.clone(),
                cert: z.cert.clone(),
                key: z.key.clone(),
            }),
        };
        return Ok(Arc::new(ZkDcs::connect(settings).await?));
    }
    Err(DcsError::Refused {
        op: "connect",
        message: "no DCS section in the configuration (etcd3 or zookeeper)".into(),
    })
}
