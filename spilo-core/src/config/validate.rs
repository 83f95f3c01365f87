//! Validation of the local configuration and of the dynamic (cluster-wide) configuration.

use std::net::Ipv6Addr;

use super::error::{ConfigError, KeyProblem};
use super::limits::{self, Limit};
use super::model::{Config, Credentials, DynamicConfig, Etcd3, Zookeeper};

/// The member name Patroni reserves for its strict synchronous mode bookkeeping.
pub const PLACEHOLDER_NAME: &str = "__patroni_strict_sync_replica_placeholder__";
/// Smallest accepted `ttl` (spilo's floor; Patroni's is 20).
pub const TTL_MIN: u64 = limits::TTL.min;
/// Smallest accepted `loop_wait`.
pub const LOOP_WAIT_MIN: u64 = limits::LOOP_WAIT.min;
/// Smallest accepted `retry_timeout`.
pub const RETRY_TIMEOUT_MIN: u64 = limits::RETRY_TIMEOUT.min;
/// PostgreSQL's default port, used when `postgresql.listen` has none.
pub const DEFAULT_PG_PORT: u16 = 5432;

/// PostgreSQL parameters that, as in Patroni, only the dynamic configuration (the DCS) may set:
/// local values are ignored because primary and replicas must agree on them.
pub const DCS_ONLY_PARAMETERS: &[&str] = &[
    "max_connections",
    "max_locks_per_transaction",
    "max_worker_processes",
    "max_prepared_transactions",
    "wal_level",
    "track_commit_timestamp",
    "max_wal_senders",
    "max_replication_slots",
    "wal_keep_segments",
    "wal_keep_size",
];

/// Whether `name` is one of [`DCS_ONLY_PARAMETERS`] (GUC names are case-insensitive).
pub fn is_dcs_only_parameter(name: &str) -> bool {
    DCS_ONLY_PARAMETERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(name))
}

/// Why an address (`host:port`) or an etcd endpoint is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No `:port`, or a port that is not a number.
    #[error("invalid address '{0}' (expected host:port)")]
    NotHostPort(String),
    /// A port of 0 or above 65535.
    #[error("invalid address '{0}' (port must be between 1 and 65535)")]
    PortOutOfRange(String),
    /// Nothing before the port.
    #[error("invalid address '{0}' (the host is empty; use * or 0.0.0.0 for all interfaces)")]
    EmptyHost(String),
    /// A host list where one host is expected.
    #[error("invalid address '{0}' (only one host may be given)")]
    SeveralHosts(String),
    /// A host that is neither a host name nor an IP address.
    #[error("invalid address '{addr}' (bad host '{host}')")]
    BadHost {
        /// The address.
        addr: String,
        /// Its bad host.
        host: String,
    },
    /// A connect address that other members cannot use (`*`, a list, nothing).
    #[error("invalid address '{0}' (expected one host other members can reach)")]
    NotOneHost(String),
    /// An etcd endpoint written as a URL.
    #[error(
        "invalid endpoint '{0}' (expected host:port without a scheme; set etcd3.protocol instead)"
    )]
    EndpointScheme(String),
    /// An etcd endpoint whose host is bad.
    #[error("invalid endpoint '{endpoint}' (bad host '{host}')")]
    EndpointHost {
        /// The endpoint.
        endpoint: String,
        /// Its bad host.
        host: String,
    },
}

/// Why a scope or member name is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum IdentError {
    #[error("must not be empty")]
    Empty,
    #[error("'{0}' must not contain '/'")]
    Slash(String),
}

/// A dynamic configuration value out of bounds, naming the key
/// (`ttl: must be at least 5 seconds (got 4)`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct DynamicError {
    /// The key (`ttl`, `standby_cluster`).
    pub key: &'static str,
    /// What is wrong with it.
    #[source]
    pub problem: DynamicProblem,
}

/// What is wrong with one key of a dynamic configuration.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DynamicProblem {
    /// Below the limit's minimum.
    #[error("must be at least {min} {unit} (got {got})")]
    TooSmall {
        /// The minimum.
        min: u64,
        /// Its unit (singular for a minimum of one second).
        unit: &'static str,
        /// The value.
        got: u64,
    },
    /// Above the limit's maximum.
    #[error("must be at most {max} {unit} (got {got})")]
    TooLarge {
        /// The maximum.
        max: u64,
        /// Its unit.
        unit: &'static str,
        /// The value.
        got: u64,
    },
    /// A malformed `standby_cluster` section.
    #[error("{0}")]
    StandbyCluster(#[source] super::standby::StandbyError),
}

/// Splits `host:port` at the last colon and checks the port (1–65535).
///
/// The host part is returned as written (it may be empty, `*`, a comma list or a bracketed
/// IPv6 address); callers check it according to their needs.
pub fn split_host_port(addr: &str) -> Result<(&str, u16), AddressError> {
    let addr = addr.trim();
    let bad = || AddressError::NotHostPort(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(AddressError::PortOutOfRange(addr.to_string())),
    }
}

fn valid_ipv6(s: &str) -> bool {
    let base = s.split_once('%').map_or(s, |(a, _)| a);
    base.parse::<Ipv6Addr>().is_ok()
}

/// A host name, an IPv4 address or an IPv6 address (bracketed or not).
fn valid_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return valid_ipv6(inner);
    }
    if h.contains(':') {
        return valid_ipv6(h);
    }
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn is_unspecified(h: &str) -> bool {
    matches!(h, "0.0.0.0" | "::" | "[::]")
}

/// A listen address: `host:port` where host may be `*`, `0.0.0.0`, or (when `multi`) a comma
/// list of hosts.
fn check_listen(addr: &str, multi: bool) -> Result<(), AddressError> {
    let (host, _) = split_host_port(addr)?;
    let addr = addr.trim();
    if host.trim().is_empty() {
        return Err(AddressError::EmptyHost(addr.to_string()));
    }
    let hosts: Vec<&str> = host.split(',').map(str::trim).collect();
    if !multi && hosts.len() > 1 {
        return Err(AddressError::SeveralHosts(addr.to_string()));
    }
    for h in hosts {
        if h != "*" && !valid_host(h) {
            return Err(AddressError::BadHost {
                addr: addr.to_string(),
                host: h.to_string(),
            });
        }
    }
    Ok(())
}

/// A connect address: `host:port` with one host other members can reach. Returns a warning
/// when the host is an unspecified address.
fn check_connect(addr: &str) -> Result<Option<String>, AddressError> {
    let (host, _) = split_host_port(addr)?;
    let addr = addr.trim();
    if host.is_empty() || host == "*" || host.contains(',') {
        return Err(AddressError::NotOneHost(addr.to_string()));
    }
    if !valid_host(host) {
        return Err(AddressError::BadHost {
            addr: addr.to_string(),
            host: host.to_string(),
        });
    }
    if is_unspecified(host) {
        return Ok(Some(format!(
            "'{addr}' is not reachable by other members (unspecified address)"
        )));
    }
    Ok(None)
}

/// An etcd endpoint: `host:port`, no scheme.
fn check_endpoint(ep: &str) -> Result<(), AddressError> {
    if ep.contains("://") {
        return Err(AddressError::EndpointScheme(ep.to_string()));
    }
    let (host, _) = split_host_port(ep)?;
    if host == "*" || host.contains(',') || !valid_host(host) {
        return Err(AddressError::EndpointHost {
            endpoint: ep.to_string(),
            host: host.to_string(),
        });
    }
    Ok(())
}

fn check_ident(value: &str) -> Result<(), IdentError> {
    if value.trim().is_empty() {
        return Err(IdentError::Empty);
    }
    if value.contains('/') {
        return Err(IdentError::Slash(value.to_string()));
    }
    Ok(())
}

fn check_credentials(c: &Credentials, key: &str, origin: &str) -> Result<(), ConfigError> {
    if c.username.trim().is_empty() {
        return Err(ConfigError::invalid(
            origin,
            &format!("{key}.username"),
            "must not be empty",
        ));
    }
    Ok(())
}

fn check_etcd3(etcd: &Etcd3, origin: &str, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| ConfigError::invalid(origin, key, msg);
    let protocol = etcd.protocol.as_deref().map(str::trim).unwrap_or("http");
    if !matches!(protocol, "http" | "https") {
        return Err(err(
            "etcd3.protocol",
            format!("invalid protocol '{protocol}' (expected http or https)"),
        ));
    }
    if let Some(hosts) = &etcd.hosts {
        for h in hosts.hosts() {
            check_endpoint(&h).map_err(|m| err("etcd3.hosts", m.to_string()))?;
        }
    }
    if let Some(h) = etcd
        .host
        .as_deref()
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        check_endpoint(h).map_err(|m| err("etcd3.host", m.to_string()))?;
    }
    if let Some(d) = &etcd.srv {
        let name = d.trim().trim_end_matches('.');
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !ok {
            return Err(err(
                "etcd3.srv",
                format!("'{d}' is not a DNS domain (the SRV records are looked up under it)"),
            ));
        }
    }
    match (&etcd.srv_suffix, &etcd.srv) {
        (Some(_), None) => {
            return Err(err(
                "etcd3.srv_suffix",
                "works only with etcd3.srv".to_string(),
            ))
        }
        (Some(s), Some(_))
            if s.is_empty()
                || s.len() > 46
                || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            return Err(err(
                "etcd3.srv_suffix",
                format!(
                    "'{s}': 1-46 letters, digits and '-' (it ends an SRV service name, \
                     _etcd-client-ssl-<suffix>, of at most 63)"
                ),
            ))
        }
        _ => {}
    }
    if etcd.endpoints().is_empty() && etcd.srv.is_none() {
        return Err(err(
            "etcd3",
            "no etcd endpoint: set etcd3.hosts, etcd3.host or etcd3.srv".to_string(),
        ));
    }
    match (&etcd.cert, &etcd.key) {
        (Some(_), None) => {
            return Err(err(
                "etcd3.key",
                "required when etcd3.cert is set".to_string(),
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "etcd3.cert",
                "required when etcd3.key is set".to_string(),
            ))
        }
        _ => {}
    }
    if protocol == "http" && (etcd.cacert.is_some() || etcd.cert.is_some()) {
        warnings.push(format!(
            "{origin}: etcd3: TLS files are set but etcd3.protocol is http (set protocol: https to use them)"
        ));
    }
    match (&etcd.username, &etcd.password) {
        (Some(_), None) => warnings.push(format!(
            "{origin}: etcd3.username is set without etcd3.password (authentication will fail)"
        )),
        (None, Some(_)) => warnings.push(format!(
            "{origin}: etcd3.password is set without etcd3.username (ignored)"
        )),
        _ => {}
    }
    Ok(())
}

fn check_zookeeper(
    zk: &Zookeeper,
    origin: &str,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| ConfigError::invalid(origin, key, msg);
    let hosts = zk.hosts.hosts();
    if hosts.is_empty() {
        return Err(err("zookeeper.hosts", "no ZooKeeper endpoint".to_string()));
    }
    for h in &hosts {
        check_endpoint(h).map_err(|m| err("zookeeper.hosts", m.to_string()))?;
    }
    match (&zk.cert, &zk.key) {
        (Some(_), None) => {
            return Err(err(
                "zookeeper.key",
                "required when zookeeper.cert is set".to_string(),
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "zookeeper.cert",
                "required when zookeeper.key is set".to_string(),
            ))
        }
        _ => {}
    }
    let files = [
        ("zookeeper.cacert", &zk.cacert),
        ("zookeeper.cert", &zk.cert),
        ("zookeeper.key", &zk.key),
    ];
    if !zk.use_ssl {
        if files.iter().any(|(_, f)| f.is_some()) {
            warnings.push(format!(
                "{origin}: zookeeper: TLS files are set but zookeeper.use_ssl is false (set use_ssl: true to use them)"
            ));
        }
        return Ok(());
    }
    for (key, file) in files {
        if let Some(path) = file {
            // Read now, as the user the daemon runs as, so a bad path is a config error naming
            // the key rather than a connection failure later.
            if let Err(e) = std::fs::File::open(path) {
                return Err(err(key, format!("cannot read '{}': {e}", path.display())));
            }
        }
    }
    Ok(())
}

/// Checks a loaded configuration. `origin` (the file name) prefixes errors and warnings.
///
/// Errors: empty or reserved `scope`/`name`; listen and connect addresses that are not
/// `host:port` with a valid port; an empty or relative `postgresql.data_dir`; no `etcd3` or
/// `zookeeper` section (or both), an etcd or ZooKeeper endpoint that is not `host:port`, a
/// protocol other than http/https, a client certificate without its key (or the reverse); with
/// `zookeeper.use_ssl`, a `cacert`, `cert` or `key` file that cannot be read; an empty
/// superuser or replication user name; a `bootstrap.dcs` that fails [`validate_dynamic`].
///
/// Warnings (returned): unreachable connect addresses, TLS files with plain http (or without
/// `zookeeper.use_ssl`), local
/// PostgreSQL parameters spilo ignores, and what [`adjust_timeouts`] would change in
/// `bootstrap.dcs`.
pub fn validate(cfg: &Config, origin: &str) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    let err = |key: &str, msg: String| ConfigError::invalid(origin, key, msg);

    check_ident(&cfg.scope).map_err(|m| err("scope", m.to_string()))?;
    check_ident(&cfg.name).map_err(|m| err("name", m.to_string()))?;
    if cfg.name == PLACEHOLDER_NAME {
        return Err(err(
            "name",
            format!("'{PLACEHOLDER_NAME}' is reserved by Patroni"),
        ));
    }
    if cfg.namespace.trim().is_empty() {
        return Err(err("namespace", "must not be empty".to_string()));
    }

    check_listen(&cfg.restapi.listen, false).map_err(|m| err("restapi.listen", m.to_string()))?;
    if let Some(w) = check_connect(&cfg.restapi.connect_address)
        .map_err(|m| err("restapi.connect_address", m.to_string()))?
    {
        warnings.push(format!("{origin}: restapi.connect_address: {w}"));
    }
    if let Some(auth) = &cfg.restapi.authentication {
        if auth.username.trim().is_empty() {
            return Err(err(
                "restapi.authentication.username",
                "must not be empty".to_string(),
            ));
        }
        if auth.password.is_empty() {
            warnings.push(format!(
                "{origin}: restapi.authentication.password is empty"
            ));
        }
    }

    let pg = &cfg.postgresql;
    check_listen(&pg.listen, true).map_err(|m| err("postgresql.listen", m.to_string()))?;
    if let Some(w) = check_connect(&pg.connect_address)
        .map_err(|m| err("postgresql.connect_address", m.to_string()))?
    {
        warnings.push(format!("{origin}: postgresql.connect_address: {w}"));
    }
    if pg.data_dir.as_os_str().is_empty() {
        return Err(err("postgresql.data_dir", "must not be empty".to_string()));
    }
    if !pg.data_dir.is_absolute() {
        return Err(err(
            "postgresql.data_dir",
            format!("'{}' must be an absolute path", pg.data_dir.display()),
        ));
    }
    check_credentials(
        &pg.authentication.superuser,
        "postgresql.authentication.superuser",
        origin,
    )?;
    check_credentials(
        &pg.authentication.replication,
        "postgresql.authentication.replication",
        origin,
    )?;
    if let Some(rewind) = &pg.authentication.rewind {
        check_credentials(rewind, "postgresql.authentication.rewind", origin)?;
    }
    for name in pg.parameters.keys() {
        if is_dcs_only_parameter(name) {
            warnings.push(format!(
                "{origin}: postgresql.parameters.{name}: ignored, it must be the same on all members \
                 (set it in bootstrap.dcs.postgresql.parameters or the DCS)"
            ));
        } else if name.eq_ignore_ascii_case("port") || name.eq_ignore_ascii_case("listen_addresses")
        {
            warnings.push(format!(
                "{origin}: postgresql.parameters.{name}: overridden by postgresql.listen"
            ));
        }
    }
    if let Some(methods) = &pg.create_replica_methods {
        use super::model::{METHOD_BASEBACKUP, METHOD_RESTORE};
        if methods.is_empty() {
            return Err(err(
                "postgresql.create_replica_methods",
                "an empty list leaves no way to build a replica (leave it out for the default)"
                    .to_string(),
            ));
        }
        for m in methods {
            if m != METHOD_RESTORE && m != METHOD_BASEBACKUP {
                warnings.push(format!(
                    "{origin}: postgresql.create_replica_methods: '{m}' is not supported yet \
                     (skipped; spilo builds replicas with {METHOD_RESTORE} and {METHOD_BASEBACKUP})"
                ));
            } else if m == METHOD_RESTORE && cfg.storage.is_none() {
                warnings.push(format!(
                    "{origin}: postgresql.create_replica_methods: {METHOD_RESTORE} needs a storage: \
                     section (skipped)"
                ));
            }
        }
    }
    let r = &pg.spilo_restore;
    if r.threshold_megabytes > 1 << 40 {
        return Err(err(
            "postgresql.spilo_restore.threshold_megabytes",
            format!("{} is more than 2^40 MiB", r.threshold_megabytes),
        ));
    }
    if r.threshold_percentage > 100_000 {
        return Err(err(
            "postgresql.spilo_restore.threshold_percentage",
            format!("{} is more than 100000", r.threshold_percentage),
        ));
    }

    match (&cfg.etcd3, &cfg.zookeeper) {
        (Some(etcd), None) => check_etcd3(etcd, origin, &mut warnings)?,
        (None, Some(zk)) => check_zookeeper(zk, origin, &mut warnings)?,
        (Some(_), Some(_)) => {
            return Err(err(
                "zookeeper",
                "only one DCS may be configured, found etcd3, zookeeper".to_string(),
            ))
        }
        (None, None) if cfg.dcs.is_some() => {
            check_plugins(cfg).map_err(|p| err(&p.key, p.message))?
        }
        (None, None) => {
            return Err(err(
                "etcd3",
                "no DCS configured (an etcd3 or zookeeper section with hosts is required)"
                    .to_string(),
            ))
        }
    }

    if cfg.dcs.is_none() {
        check_plugins(cfg).map_err(|p| err(&p.key, p.message))?;
    }
    let storage_plugins: Vec<&str> = cfg
        .plugins
        .iter()
        .filter(|p| p.kind == "storage")
        .map(|p| p.name.as_str())
        .collect();
    super::backup::check(cfg.storage.as_ref(), cfg.backup.as_ref(), &storage_plugins)
        .map_err(|p| err(&p.key, p.message))?;
    let lb_plugins: Vec<&str> = cfg
        .plugins
        .iter()
        .filter(|p| p.kind == "load_balancer")
        .map(|p| p.name.as_str())
        .collect();
    super::lb::check(&cfg.load_balancers, &lb_plugins).map_err(|p| err(&p.key, p.message))?;
    if let Some(a) = &cfg.aws {
        a.check().map_err(|p| err(&p.key, p.message))?;
    }
    match cfg.bootstrap.method.as_deref() {
        None | Some("initdb") => {}
        Some("clone") => match &cfg.bootstrap.clone {
            Some(c) => c
                .check(cfg.storage.as_ref(), &cfg.scope)
                .map_err(|p| err(&p.key, p.message))?,
            None => {
                return Err(err(
                    "bootstrap.clone",
                    "bootstrap.method is clone, and there is no bootstrap.clone section".into(),
                ))
            }
        },
        // Patroni's custom methods run a command of the site's: not supported yet, and
        // ignored as before (with a warning), so a Patroni configuration still loads.
        Some(other) => warnings.push(format!(
            "{origin}: bootstrap.method: '{other}' is not supported yet (ignored: spilo runs \
             initdb; it knows initdb and clone)"
        )),
    }
    check_dynamic(&cfg.bootstrap.dcs)
        .map_err(|e| err(&format!("bootstrap.dcs.{}", e.key), e.problem.to_string()))?;
    if let Ok(Some(sc)) = super::standby::StandbyCluster::from_dynamic(&cfg.bootstrap.dcs.extra) {
        sc.check_place(cfg.storage.as_ref(), &cfg.scope)
            .map_err(|m| err("bootstrap.dcs.standby_cluster", m.to_string()))?;
        if cfg.bootstrap.clone_source().is_some() {
            return Err(err(
                "bootstrap.dcs.standby_cluster",
                "a cluster is either a clone (bootstrap.method: clone) or a standby cluster, not both".into(),
            ));
        }
    }
    let mut dcs = cfg.bootstrap.dcs.clone();
    for w in adjust_timeouts(&mut dcs) {
        warnings.push(format!("{origin}: bootstrap.dcs: {w}"));
    }
    Ok(warnings)
}

fn check_dynamic(d: &DynamicConfig) -> Result<(), DynamicError> {
    let in_range = |limit: &Limit, v: u64| -> Result<(), DynamicError> {
        let unit = if limit.min == 1 && limit.unit == "seconds" {
            "second"
        } else {
            limit.unit
        };
        let problem = if v < limit.min {
            DynamicProblem::TooSmall {
                min: limit.min,
                unit,
                got: v,
            }
        } else if v > limit.max {
            DynamicProblem::TooLarge {
                max: limit.max,
                unit: limit.unit,
                got: v,
            }
        } else {
            return Ok(());
        };
        Err(DynamicError {
            key: limit.key,
            problem,
        })
    };
    in_range(&limits::TTL, d.ttl)?;
    in_range(&limits::LOOP_WAIT, d.loop_wait)?;
    in_range(&limits::RETRY_TIMEOUT, d.retry_timeout)?;
    in_range(&limits::PRIMARY_START_TIMEOUT, d.primary_start_timeout)?;
    in_range(&limits::MAXIMUM_LAG_ON_FAILOVER, d.maximum_lag_on_failover)?;
    super::standby::StandbyCluster::from_dynamic(&d.extra).map_err(|e| DynamicError {
        key: "standby_cluster",
        problem: DynamicProblem::StandbyCluster(e),
    })?;
    Ok(())
}

/// `plugins:` and `dcs:`: names unique, kinds known, paths absolute, `dcs.plugin` naming a
/// DCS plugin.
fn check_plugins(cfg: &Config) -> Result<(), KeyProblem> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in cfg.plugins.iter().enumerate() {
        let key = |k: &str| format!("plugins[{i}].{k}");
        if p.name.trim().is_empty() {
            return Err(KeyProblem::new(key("name"), "must not be empty"));
        }
        if !seen.insert(p.name.as_str()) {
            return Err(KeyProblem::new(
                key("name"),
                format!("'{}' is listed twice", p.name),
            ));
        }
        if !matches!(p.kind.as_str(), "dcs" | "storage" | "load_balancer") {
            return Err(KeyProblem::new(
                key("kind"),
                format!(
                    "'{}' is not a plugin kind spilo loads (dcs, storage, load_balancer)",
                    p.kind
                ),
            ));
        }
        if !p.path.is_absolute() {
            return Err(KeyProblem::new(
                key("path"),
                format!("{} must be an absolute path", p.path.display()),
            ));
        }
    }
    if let Some(d) = &cfg.dcs {
        let Some(name) = cfg.dcs_plugin() else {
            return Err(KeyProblem::new(
                "dcs.plugin",
                if d.contains_key("plugin") {
                    "must be a plugin name"
                } else {
                    "missing: a dcs section names the plugin that provides the DCS"
                },
            ));
        };
        match cfg.plugins.iter().find(|p| p.name == name) {
            Some(p) if p.kind == "dcs" => {}
            Some(p) => {
                return Err(KeyProblem::new(
                    "dcs.plugin",
                    format!("plugin '{name}' is a {} plugin, not a dcs one", p.kind),
                ))
            }
            None => {
                return Err(KeyProblem::new(
                    "dcs.plugin",
                    format!("no plugin named '{name}' in plugins"),
                ))
            }
        }
    }
    Ok(())
}

/// Checks the bounds of a dynamic configuration ([`limits`]: `ttl` 5..=86400, `loop_wait`
/// and `retry_timeout` 1..=3600, `primary_start_timeout` 0..=604800,
/// `maximum_lag_on_failover` up to `i64::MAX`). The error names the field, e.g.
/// `ttl: must be at least 5 seconds (got 4)`.
///
/// The relation `loop_wait + 2*retry_timeout <= ttl` is not checked here: [`adjust_timeouts`]
/// repairs it.
pub fn validate_dynamic(d: &DynamicConfig) -> Result<(), DynamicError> {
    check_dynamic(d)
}

fn into_range(value: &mut u64, limit: &Limit, warnings: &mut Vec<String>) {
    if *value < limit.min {
        warnings.push(format!(
            "{} raised from {} to the minimum {}",
            limit.key, *value, limit.min
        ));
        *value = limit.min;
    } else if *value > limit.max {
        warnings.push(format!(
            "{} lowered from {} to the maximum {}",
            limit.key, *value, limit.max
        ));
        *value = limit.max;
    }
}

/// Makes the timeouts of `d` usable, never failing (it also runs on values read from the DCS).
///
/// Values outside their range ([`limits`]: `ttl` 5..=86400, `loop_wait` and `retry_timeout`
/// 1..=3600, `primary_start_timeout` 0..=604800) are brought to the nearest end of it. Then,
/// as in Patroni, `loop_wait + 2*retry_timeout <= ttl` is enforced: `loop_wait` is lowered first
/// (to `max(1, ttl - 2*retry_timeout)`), and if that is not enough `retry_timeout` becomes
/// `(ttl - 1) / 2`. Returns one warning per change.
pub fn adjust_timeouts(d: &mut DynamicConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    into_range(&mut d.ttl, &limits::TTL, &mut warnings);
    into_range(&mut d.loop_wait, &limits::LOOP_WAIT, &mut warnings);
    into_range(&mut d.retry_timeout, &limits::RETRY_TIMEOUT, &mut warnings);
    into_range(
        &mut d.primary_start_timeout,
        &limits::PRIMARY_START_TIMEOUT,
        &mut warnings,
    );
    into_range(
        &mut d.maximum_lag_on_failover,
        &limits::MAXIMUM_LAG_ON_FAILOVER,
        &mut warnings,
    );

    // In u128 so that absurd values read from the DCS cannot overflow.
    let fits = |d: &DynamicConfig| {
        u128::from(d.loop_wait) + 2 * u128::from(d.retry_timeout) <= u128::from(d.ttl)
    };
    if fits(d) {
        return warnings;
    }
    let loop_wait = d
        .ttl
        .saturating_sub(d.retry_timeout.saturating_mul(2))
        .max(LOOP_WAIT_MIN);
    if loop_wait < d.loop_wait {
        warnings.push(format!(
            "loop_wait lowered from {} to {loop_wait} so that loop_wait + 2*retry_timeout <= ttl \
             (ttl={}, retry_timeout={})",
            d.loop_wait, d.ttl, d.retry_timeout
        ));
        d.loop_wait = loop_wait;
    }
    if !fits(d) {
        let retry_timeout = ((d.ttl - 1) / 2).max(RETRY_TIMEOUT_MIN);
        warnings.push(format!(
            "retry_timeout lowered from {} to {retry_timeout} so that loop_wait + 2*retry_timeout \
             <= ttl (ttl={}, loop_wait={})",
            d.retry_timeout, d.ttl, d.loop_wait
        ));
        d.retry_timeout = retry_timeout;
    }
    warnings
}

/// The dynamic configuration this node runs with.
///
/// Starts from the cluster's value in the DCS when there is one, else from the local
/// `bootstrap.dcs`; overlays the local `postgresql.parameters` (local wins, except for the
/// [`DCS_ONLY_PARAMETERS`], which are silently kept from the dynamic configuration as in
/// Patroni — [`validate`] warns about them once at load), replaces `pg_hba` by the local one
/// when that is non-empty, and applies the local `use_pg_rewind` when set; finally runs
/// [`adjust_timeouts`]. The warnings are recomputed on every call: callers running this each
/// cycle should log them only when they change.
pub fn effective_dynamic(
    cluster_config: Option<&DynamicConfig>,
    local: &Config,
) -> (DynamicConfig, Vec<String>) {
    let mut d = cluster_config
        .cloned()
        .unwrap_or_else(|| local.bootstrap.dcs.clone());
    let pg = &local.postgresql;
    for (name, value) in &pg.parameters {
        if !is_dcs_only_parameter(name) {
            d.postgresql.parameters.insert(name.clone(), value.clone());
        }
    }
    if !pg.pg_hba.is_empty() {
        d.postgresql.pg_hba = pg.pg_hba.clone();
    }
    if let Some(rewind) = pg.use_pg_rewind {
        d.postgresql.use_pg_rewind = rewind;
    }
    let warnings = adjust_timeouts(&mut d);
    (d, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dynamic(ttl: u64, loop_wait: u64, retry_timeout: u64) -> DynamicConfig {
        DynamicConfig {
            ttl,
            loop_wait,
            retry_timeout,
            ..DynamicConfig::default()
        }
    }

    fn config() -> Config {
        serde_yaml::from_str(
            "scope: demo\nname: n1\nrestapi: {listen: '0.0.0.0:8008', connect_address: '10.0.0.1:8008'}\n\
             etcd3: {hosts: 'e1:2379,e2:2379'}\n\
             postgresql:\n  listen: '*:5433'\n  connect_address: '10.0.0.1:5433'\n  data_dir: /var/lib/pg/data\n\
             \x20 authentication: {superuser: {username: postgres}, replication: {username: repl}}\n",
        )
        .unwrap()
    }

    #[test]
    fn split_host_port_cases() {
        assert_eq!(split_host_port("h:5432"), Ok(("h", 5432)));
        assert_eq!(split_host_port("[::1]:8008"), Ok(("[::1]", 8008)));
        assert_eq!(split_host_port("a,b:1"), Ok(("a,b", 1)));
        assert_eq!(
            split_host_port("abc").unwrap_err().to_string(),
            "invalid address 'abc' (expected host:port)"
        );
        assert!(split_host_port("h:").is_err());
        assert!(split_host_port("h:x1").is_err());
        assert!(split_host_port("h:0")
            .unwrap_err()
            .to_string()
            .contains("between 1 and 65535"));
        assert!(split_host_port("h:65536")
            .unwrap_err()
            .to_string()
            .contains("between 1 and 65535"));
    }

    #[test]
    fn listen_and_connect_rules() {
        assert!(check_listen("*:5432", true).is_ok());
        assert!(check_listen("0.0.0.0:5432", true).is_ok());
        assert!(check_listen("127.0.0.1, 10.0.0.1:5432", true).is_ok());
        assert!(check_listen("[::]:5432", true).is_ok());
        assert!(check_listen("::1:5432", true).is_ok());
        assert!(check_listen("a,b:8008", false).is_err());
        assert!(check_listen(":8008", false).is_err());
        assert!(check_listen("bad host:8008", false).is_err());
        assert!(check_connect("*:5432").is_err());
        assert!(check_connect("a,b:5432").is_err());
        assert_eq!(check_connect("db1.example.com:5432"), Ok(None));
        assert!(check_connect("0.0.0.0:5432").unwrap().is_some());
        assert!(check_endpoint("http://e1:2379")
            .unwrap_err()
            .to_string()
            .contains("without a scheme"));
    }

    #[test]
    fn validate_accepts_a_good_config() {
        assert_eq!(validate(&config(), "c.yml").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn validate_rejects_bad_values_naming_the_key() {
        type Case = (fn(&mut Config), &'static str);
        let cases: Vec<Case> = vec![
            (|c| c.scope = " ".into(), "c.yml: scope: must not be empty"),
            (|c| c.name = String::new(), "c.yml: name: must not be empty"),
            (|c| c.name = PLACEHOLDER_NAME.into(), "c.yml: name: '__patroni_strict_sync_replica_placeholder__' is reserved by Patroni"),
            (|c| c.restapi.listen = "abc".into(), "c.yml: restapi.listen: invalid address 'abc' (expected host:port)"),
            (|c| c.postgresql.connect_address = "h:99999".into(), "c.yml: postgresql.connect_address: invalid address 'h:99999' (port must be between 1 and 65535)"),
            (|c| c.postgresql.data_dir = "data".into(), "c.yml: postgresql.data_dir: 'data' must be an absolute path"),
            (|c| c.postgresql.data_dir = "".into(), "c.yml: postgresql.data_dir: must not be empty"),
            (|c| c.postgresql.authentication.replication.username = String::new(), "c.yml: postgresql.authentication.replication.username: must not be empty"),
            (|c| c.etcd3 = None, "c.yml: etcd3: no DCS configured (an etcd3 or zookeeper section with hosts is required)"),
            (|c| c.postgresql.create_replica_methods = Some(vec![]), "c.yml: postgresql.create_replica_methods: an empty list leaves no way to build a replica (leave it out for the default)"),
            (|c| c.postgresql.spilo_restore.threshold_megabytes = u64::MAX, "c.yml: postgresql.spilo_restore.threshold_megabytes: 18446744073709551615 is more than 2^40 MiB"),
            (|c| c.etcd3.as_mut().unwrap().protocol = Some("ftp".into()), "c.yml: etcd3.protocol: invalid protocol 'ftp' (expected http or https)"),
            (|c| c.etcd3.as_mut().unwrap().hosts = None, "c.yml: etcd3: no etcd endpoint: set etcd3.hosts, etcd3.host or etcd3.srv"),
            (|c| c.etcd3.as_mut().unwrap().host = Some("e3".into()), "c.yml: etcd3.host: invalid address 'e3' (expected host:port)"),
            (|c| c.etcd3.as_mut().unwrap().cert = Some("/c.pem".into()), "c.yml: etcd3.key: required when etcd3.cert is set"),
            (|c| c.bootstrap.dcs.ttl = 4, "c.yml: bootstrap.dcs.ttl: must be at least 5 seconds (got 4)"),
        ];
        for (mutate, expected) in cases {
            let mut c = config();
            mutate(&mut c);
            assert_eq!(validate(&c, "c.yml").unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn zookeeper_tls_files_must_be_readable_and_paired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").expect("write ca");
        let zk = |use_ssl: bool,
                  cacert: Option<&std::path::Path>,
                  cert: Option<&str>,
                  key: Option<&str>| {
            let mut c = config();
            c.etcd3 = None;
            c.zookeeper = Some(Zookeeper {
                hosts: super::super::model::HostList::List(vec!["z1:2281".into()]),
                use_ssl,
                cacert: cacert.map(Into::into),
                cert: cert.map(Into::into),
                key: key.map(Into::into),
                ..Zookeeper::default()
            });
            validate(&c, "c.yml")
        };
        assert_eq!(
            zk(true, Some(&ca), None, None).unwrap(),
            Vec::<String>::new()
        );
        let missing = dir.path().join("missing.pem");
        let e = zk(true, Some(&missing), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "c.yml: zookeeper.cacert: cannot read '{}': ",
                missing.display()
            )),
            "{e}"
        );
        let e = zk(
            true,
            Some(&ca),
            Some("/nonexistent/c.pem"),
            Some("/nonexistent/k.pem"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("c.yml: zookeeper.cert: cannot read '/nonexistent/c.pem'"),
            "{e}"
        );
        assert_eq!(
            zk(true, Some(&ca), Some("/c.pem"), None)
                .unwrap_err()
                .to_string(),
            "c.yml: zookeeper.key: required when zookeeper.cert is set"
        );
        // Without use_ssl the files are not used (nor read): a warning says so.
        let w = zk(false, Some(&missing), None, None).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("zookeeper.use_ssl is false"), "{w:?}");
    }

    #[test]
    fn validate_warns_about_ignored_parameters_and_timeouts() {
        let mut c = config();
        c.postgresql
            .parameters
            .insert("max_connections".into(), json!(500));
        c.bootstrap.dcs = dynamic(10, 10, 10);
        let w = validate(&c, "c.yml").unwrap();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("c.yml: postgresql.parameters.max_connections: ignored"));
        assert!(w[1].starts_with("c.yml: bootstrap.dcs: loop_wait lowered from 10 to 1"));
        assert!(w[2].starts_with("c.yml: bootstrap.dcs: retry_timeout lowered from 10 to 4"));
    }

    #[test]
    fn validate_dynamic_bounds() {
        assert_eq!(
            validate_dynamic(&dynamic(4, 1, 1)).unwrap_err().to_string(),
            "ttl: must be at least 5 seconds (got 4)"
        );
        assert!(validate_dynamic(&dynamic(5, 2, 2)).is_ok());
        assert!(validate_dynamic(&dynamic(30, 0, 10))
            .unwrap_err()
            .to_string()
            .starts_with("loop_wait:"));
        assert!(validate_dynamic(&dynamic(30, 10, 0))
            .unwrap_err()
            .to_string()
            .starts_with("retry_timeout:"));
        assert!(validate_dynamic(&DynamicConfig::default()).is_ok());
    }

    #[test]
    fn adjust_timeouts_keeps_valid_values() {
        let mut d = dynamic(30, 10, 10);
        assert!(adjust_timeouts(&mut d).is_empty());
        assert_eq!((d.ttl, d.loop_wait, d.retry_timeout), (30, 10, 10));
    }

    #[test]
    fn adjust_timeouts_lowers_loop_wait_first() {
        let mut d = dynamic(20, 10, 5);
        let w = adjust_timeouts(&mut d);
        assert_eq!((d.ttl, d.loop_wait, d.retry_timeout), (20, 10, 5));
        assert!(w.is_empty());

        let mut d = dynamic(20, 15, 5);
        let w = adjust_timeouts(&mut d);
        assert_eq!((d.ttl, d.loop_wait, d.retry_timeout), (20, 10, 5));
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("loop_wait lowered from 15 to 10"), "{w:?}");
    }

    #[test]
    fn adjust_timeouts_lowers_retry_timeout_when_loop_wait_is_one() {
        let mut d = dynamic(10, 10, 10);
        let w = adjust_timeouts(&mut d);
        assert_eq!((d.ttl, d.loop_wait, d.retry_timeout), (10, 1, 4));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[1].starts_with("retry_timeout lowered from 10 to 4"));

        let mut d = dynamic(5, 1, 3);
        let w = adjust_timeouts(&mut d);
        assert_eq!((d.loop_wait, d.retry_timeout), (1, 2));
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn adjust_timeouts_raises_values_below_floors_and_never_panics() {
        let mut d = dynamic(0, 0, 0);
        let w = adjust_timeouts(&mut d);
        assert_eq!((d.ttl, d.loop_wait, d.retry_timeout), (5, 1, 1));
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("ttl raised from 0 to the minimum 5"));

        // Absurd values are brought down to their ceilings (see config::limits), which meet
        // the timing relation as they are.
        let mut d = dynamic(u64::MAX, u64::MAX, u64::MAX);
        let w = adjust_timeouts(&mut d);
        assert_eq!(
            (d.ttl, d.loop_wait, d.retry_timeout),
            (86_400, 3_600, 3_600)
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("ttl lowered from 18446744073709551615 to the maximum 86400"));
        let mut d = dynamic(9_223_372_036_854_775_807, 2, 4);
        adjust_timeouts(&mut d);
        assert_eq!((d.ttl, d.loop_wait, d.retry_timeout), (86_400, 2, 4));
        assert!(validate_dynamic(&dynamic(86_401, 2, 4))
            .unwrap_err()
            .to_string()
            .starts_with("ttl: must be at most 86400 seconds"));
        for ttl in 0..50 {
            for lw in 0..30 {
                for rt in 0..30 {
                    let mut d = dynamic(ttl, lw, rt);
                    adjust_timeouts(&mut d);
                    assert!(
                        d.loop_wait + 2 * d.retry_timeout <= d.ttl,
                        "{ttl} {lw} {rt}"
                    );
                    assert!(validate_dynamic(&d).is_ok());
                }
            }
        }
    }

    #[test]
    fn effective_dynamic_overlays_local_settings() {
        let mut local = config();
        local
            .bootstrap
            .dcs
            .postgresql
            .parameters
            .insert("work_mem".into(), json!("4MB"));
        local
            .postgresql
            .parameters
            .insert("work_mem".into(), json!("64MB"));
        local
            .postgresql
            .parameters
            .insert("Max_Connections".into(), json!(1000));
        local.postgresql.pg_hba = vec!["host all all 0.0.0.0/0 md5".into()];
        local.postgresql.use_pg_rewind = Some(true);

        // No cluster config yet: bootstrap.dcs is the base.
        let (d, w) = effective_dynamic(None, &local);
        assert!(w.is_empty());
        assert_eq!(d.postgresql.parameters["work_mem"], json!("64MB"));
        assert!(!d.postgresql.parameters.contains_key("Max_Connections"));
        assert_eq!(d.postgresql.pg_hba, local.postgresql.pg_hba);
        assert!(d.postgresql.use_pg_rewind);

        // The DCS value wins over bootstrap.dcs, local settings still win over it.
        let mut cluster = dynamic(12, 10, 10);
        cluster
            .postgresql
            .parameters
            .insert("max_connections".into(), json!(200));
        cluster
            .postgresql
            .parameters
            .insert("shared_buffers".into(), json!("1GB"));
        cluster.postgresql.pg_hba = vec!["local all all trust".into()];
        let (d, w) = effective_dynamic(Some(&cluster), &local);
        assert_eq!(d.ttl, 12);
        assert_eq!((d.loop_wait, d.retry_timeout), (1, 5));
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(d.postgresql.parameters["max_connections"], json!(200));
        assert_eq!(d.postgresql.parameters["shared_buffers"], json!("1GB"));
        assert_eq!(d.postgresql.parameters["work_mem"], json!("64MB"));
        assert_eq!(d.postgresql.pg_hba, local.postgresql.pg_hba);

        // Empty local pg_hba and unset use_pg_rewind keep the cluster's values.
        local.postgresql.pg_hba.clear();
        local.postgresql.use_pg_rewind = None;
        cluster.postgresql.use_pg_rewind = true;
        let (d, _) = effective_dynamic(Some(&cluster), &local);
        assert_eq!(d.postgresql.pg_hba, vec!["local all all trust".to_string()]);
        assert!(d.postgresql.use_pg_rewind);
    }
}
