//! The backend's settings (Patroni's `zookeeper:` section, turned into Rust types by the
//! daemon) and the ACL list built from `set_acls`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use spilo_sdk::DcsError;
use zookeeper_client::{Acl, AuthId, Permission};

/// How to reach ZooKeeper and which cluster to manage.
///
/// `Debug` output hides the credentials.
///
/// ```
/// use std::time::Duration;
/// use spilo_dcs_zookeeper::ZkSettings;
///
/// let settings = ZkSettings {
///     hosts: vec!["zk1:2281".into(), "zk2:2281".into()],
///     prefix: "/service/batman/".into(),
///     member: "n1".into(),
///     ttl: Duration::from_secs(30),
///     retry_timeout: Duration::from_secs(10),
///     watch: true,
///     session: true,
///     auth_data: vec![("digest".into(), "user:pass".into())],
///     set_acls: None,
///     tls: None,
/// };
/// assert!(!format!("{settings:?}").contains("pass"));
/// ```
#[derive(Clone)]
pub struct ZkSettings {
    /// The servers, `host:port`.
    pub hosts: Vec<String>,
    /// The cluster prefix, e.g. `/service/batman/` (a missing leading or trailing `/` is added).
    pub prefix: String,
    /// Our member name.
    pub member: String,
    /// Session timeout (the server may cap it to its `minSessionTimeout..maxSessionTimeout`).
    pub ttl: Duration,
    /// Deadline of every operation.
    pub retry_timeout: Duration,
    /// Start a task watching `leader`, `config`, `failover` and `initialize`, feeding
    /// [`spilo_sdk::Dcs::changes`] (false for the CLI).
    pub watch: bool,
    /// Whether this client uses its session for ephemeral znodes (false for the CLI, which only
    /// reads and writes plain keys).
    pub session: bool,
    /// Authentication sent on every connection: `(scheme, credential)`, e.g.
    /// `("digest", "user:pass")`.
    pub auth_data: Vec<(String, String)>,
    /// Patroni's `set_acls`: principal → permissions (`CREATE`, `READ`, `WRITE`, `DELETE`,
    /// `ADMIN`, `ALL`), applied to the znodes we create. A principal written `scheme:id` with a
    /// scheme of `world`, `auth`, `digest`, `ip`, `sasl` or `x509` uses that scheme; any other
    /// principal is an `x509` one, as in Patroni. `None`: open ACL (`world:anyone`, all).
    pub set_acls: Option<BTreeMap<String, Vec<String>>>,
    /// TLS to every server (Patroni's `use_ssl: true`); `None`: plain TCP.
    pub tls: Option<ZkTls>,
}

/// The PEM files of a TLS connection (Patroni's `cacert`, `cert`, `key`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZkTls {
    /// CA certificates that verify the servers; `None`: the system's CA bundle.
    pub cacert: Option<PathBuf>,
    /// Client certificate (chain), presented when the server asks for one.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1, unencrypted).
    pub key: Option<PathBuf>,
}

impl std::fmt::Debug for ZkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth: Vec<&str> = self.auth_data.iter().map(|(s, _)| s.as_str()).collect();
        f.debug_struct("ZkSettings")
            .field("hosts", &self.hosts)
            .field("prefix", &self.prefix)
            .field("member", &self.member)
            .field("ttl", &self.ttl)
            .field("retry_timeout", &self.retry_timeout)
            .field("watch", &self.watch)
            .field("session", &self.session)
            .field("auth_schemes", &auth)
            .field("set_acls", &self.set_acls)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Schemes a `set_acls` principal may name explicitly.
const SCHEMES: [&str; 6] = ["world", "auth", "digest", "ip", "sasl", "x509"];

/// The ACL list of Patroni's `set_acls`.
pub(crate) fn build_acls(
    set_acls: &Option<BTreeMap<String, Vec<String>>>,
) -> Result<Vec<Acl>, DcsError> {
    let open = || vec![Acl::new(Permission::ALL, AuthId::anyone())];
    let Some(map) = set_acls else {
        return Ok(open());
    };
    let mut acls = Vec::new();
    for (principal, perms) in map {
        let mut p = Permission::NONE;
        for perm in perms {
            p = p | match perm.to_ascii_uppercase().as_str() {
                "READ" => Permission::READ,
                "WRITE" => Permission::WRITE,
                "CREATE" => Permission::CREATE,
                "DELETE" => Permission::DELETE,
                "ADMIN" => Permission::ADMIN,
                "ALL" => Permission::ALL,
                other => {
                    return Err(DcsError::Refused {
                        op: "connect",
                        message: format!("unknown ZooKeeper permission {other:?} for {principal}"),
                    })
                }
            };
        }
        let (scheme, id) = match principal.split_once(':') {
            Some((scheme, id)) if SCHEMES.contains(&scheme) => (scheme, id),
            _ => ("x509", principal.as_str()),
        };
        acls.push(Acl::new(p, AuthId::new(scheme, id)));
    }
    if acls.is_empty() {
        return Ok(open());
    }
    Ok(acls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acls_follow_patroni() {
        let mut map = BTreeMap::new();
        map.insert("CN=admin".to_string(), vec!["all".to_string()]);
        map.insert(
            "digest:u:hash".to_string(),
            vec!["READ".to_string(), "create".to_string()],
        );
        let acls = build_acls(&Some(map)).expect("acls");
        assert_eq!(acls.len(), 2);
        assert_eq!(
            acls[0],
            Acl::new(Permission::ALL, AuthId::new("x509", "CN=admin"))
        );
        assert_eq!(
            acls[1],
            Acl::new(
                Permission::READ | Permission::CREATE,
                AuthId::new("digest", "u:hash")
            )
        );
        assert!(build_acls(&Some(BTreeMap::from([(
            "x".to_string(),
            vec!["FLY".to_string()]
        )])))
        .is_err());
        assert_eq!(
            build_acls(&None).expect("open"),
            vec![Acl::new(Permission::ALL, AuthId::anyone())]
        );
    }
}
