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
    /// A reader that follows changes without a session of its own (the proxy).
    Watcher,
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
        let mut https = e
            .protocol
            .as_deref()
            .map(|p| p.eq_ignore_ascii_case("https"))
            .unwrap_or(false);
        let mut endpoints = e.endpoints();
        // As Patroni: etcd3.srv first; the hosts, when given too, if discovery fails.
        if let Some(domain) = &e.srv {
            match super::srv::discover(domain, e.srv_suffix.as_deref()).await {
                Ok(found) => {
                    if role == Role::Daemon {
                        tracing::info!(
                            "etcd found through {}: {}{}",
                            found.name,
                            found.endpoints.join(", "),
                            if found.https { " (https)" } else { "" }
                        );
                    }
                    https |= found.https;
                    endpoints = found.endpoints;
                }
                Err(err) if endpoints.is_empty() => {
                    return Err(DcsError::Unreachable {
                        op: "connect",
                        message: format!("etcd3.srv {domain}: {}", crate::error_chain(&err)),
                    })
                }
                Err(err) => tracing::warn!(
                    "etcd3.srv {domain}: {}; using etcd3.hosts",
                    crate::error_chain(&err)
                ),
            }
        }
        let settings = EtcdSettings {
            endpoints,
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
            watch: role != Role::Cli,
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
            watch: role != Role::Cli,
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
    if let Some(name) = cfg.dcs_plugin() {
        let plugin = crate::plugin::get(name).ok_or_else(|| DcsError::Refused {
            op: "connect",
            message: format!("plugin '{name}' is not loaded"),
        })?;
        let mut settings = cfg.dcs.clone().unwrap_or_default();
        settings.remove("plugin");
        let host = crate::plugin::dcs::HostSettings {
            prefix,
            member: cfg.name.clone(),
            ttl,
            retry_timeout,
            watch: role != Role::Cli,
            session: role == Role::Daemon,
        };
        let settings = serde_json::Value::Object(settings.into_iter().collect());
        return Ok(Arc::new(
            crate::plugin::dcs::PluginDcs::connect(&plugin, settings, host).await?,
        ));
    }
    Err(DcsError::Refused {
        op: "connect",
        message: "no DCS section in the configuration (etcd3, zookeeper or a dcs plugin)".into(),
    })
}

/// Where the config points: `etcd3 at 127.0.0.1:2379, 127.0.0.2:2379` (for messages).
pub fn describe(cfg: &Config) -> String {
    if let Some(e) = &cfg.etcd3 {
        if let Some(d) = &e.srv {
            return format!("etcd3 found through DNS SRV records under {d}");
        }
        return format!("etcd3 at {}", e.endpoints().join(", "));
    }
    if let Some(z) = &cfg.zookeeper {
        return format!("zookeeper at {}", z.hosts.hosts().join(", "));
    }
    if let Some(name) = cfg.dcs_plugin() {
        return format!("dcs plugin {name}");
    }
    "no DCS".into()
}

/// Connect as the CLI would and read the cluster's keys once, giving up after `within`: proves
/// the DCS named in the config answers (and accepts our credentials). Returns how many keys
/// the cluster has.
pub async fn probe(cfg: &Config, within: Duration) -> Result<usize, DcsError> {
    let attempt = async {
        let dcs = connect(cfg, within, within, Role::Cli).await?;
        let snap = dcs.snapshot().await;
        let _ = dcs.close().await;
        snap.map(|s| s.entries.len())
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(r) => r,
        Err(_) => Err(DcsError::Timeout {
            op: "connect",
            after: within,
        }),
    }
}
