//! The node configuration: Patroni's YAML schema, as Rust types.
//!
//! The local file (plus `SPILO_*`/`PATRONI_*` environment overrides) gives a [`Config`]. The
//! *dynamic* settings ([`DynamicConfig`]) come from `bootstrap.dcs` until the cluster's `config`
//! key exists in the DCS; from then on the DCS value wins, as in Patroni.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default DCS namespace.
pub const DEFAULT_NAMESPACE: &str = "/service";

/// The whole local configuration of one node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// Cluster name.
    pub scope: String,
    /// DCS namespace (default `/service`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// This member's name, unique in the cluster.
    pub name: String,
    /// The REST API.
    pub restapi: RestApi,
    /// The etcd v3 section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd3: Option<Etcd3>,
    /// The ZooKeeper section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<Zookeeper>,
    /// Bootstrap settings, used once by the node that initialises the cluster.
    #[serde(default)]
    pub bootstrap: Bootstrap,
    /// The local PostgreSQL.
    pub postgresql: Postgresql,
    /// Member tags (`nofailover`, `failover_priority`, custom ones).
    #[serde(default)]
    pub tags: BTreeMap<String, Value>,
    /// Lua hooks (spilo's own section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
    /// Third-party backends to load from shared libraries at start-up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginSpec>,
    /// A DCS provided by a plugin: `{plugin: <name>, …its own settings…}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dcs: Option<BTreeMap<String, Value>>,
    /// Where WAL and base backups go (spilo's own section); nothing is archived without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<super::backup::StorageConfig>,
    /// How backups are taken and kept (spilo's own section; defaults apply with `storage:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<super::backup::BackupConfig>,
    /// The load balancers that follow the primary (spilo's own section).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancers: Vec<super::lb::LoadBalancerConfig>,
    /// Running in an Auto Scaling Group: the termination lifecycle hook (spilo's own section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<super::aws::AwsConfig>,
}

/// `plugins: [{name, path, kind}]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PluginSpec {
    /// The name the plugin declares, and that `dcs.plugin` refers to.
    pub name: String,
    /// The shared library.
    pub path: PathBuf,
    /// `dcs`, `storage` or `load_balancer`.
    pub kind: String,
}

impl Config {
    /// The `backup:` settings in force: the section, or its defaults when only `storage:` is
    /// set; `None` without storage.
    pub fn backup_settings(&self) -> Option<super::backup::BackupConfig> {
        self.storage.as_ref()?;
        Some(self.backup.clone().unwrap_or_default())
    }

    /// The plugin named in `dcs.plugin`, if the DCS comes from a plugin.
    pub fn dcs_plugin(&self) -> Option<&str> {
        self.dcs
            .as_ref()
            .and_then(|d| d.get("plugin"))
            .and_then(Value::as_str)
    }
}

/// `hooks:`: a Lua script with handlers for role changes and decisions.
///
/// ```yaml
/// hooks:
///   script: /etc/spilo/hooks.lua
///   timeout: 5                 # seconds per handler call
///   instruction_limit: 50000000
///   memory_limit_mb: 32
///   callback_timeout: 30       # postgresql.callbacks and pre_promote
///   events:
///     before_promote: {timeout: 2, on_error: deny}
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Hooks {
    /// The Lua script (`None`: only the shell callbacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<PathBuf>,
    /// Wall-clock seconds one handler call may take (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Lua VM instructions one handler call may run (default 50 million).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction_limit: Option<u64>,
    /// Memory the Lua state may hold, in MiB (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u64>,
    /// Seconds a `postgresql.callbacks` script or `pre_promote` may run (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_timeout: Option<f64>,
    /// Per-event overrides, by event name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub events: BTreeMap<String, HookEventSettings>,
}

/// `hooks.events.<event>`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HookEventSettings {
    /// Wall-clock seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Lua VM instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction_limit: Option<u64>,
    /// MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u64>,
    /// Decision hooks only: what an error or a timeout means (`allow`: as if the hook had not
    /// answered, the default; `deny`: veto the promotion / choose nobody).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
}

/// What a failing decision hook means.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail open: the default decision stands.
    #[default]
    Allow,
    /// Fail closed: no promotion.
    Deny,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

/// `restapi:`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RestApi {
    /// `host:port` to listen on.
    pub listen: String,
    /// `host:port` other nodes and clients use to reach us.
    pub connect_address: String,
    /// Basic auth for mutating endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<BasicAuth>,
    /// Hosts, addresses or CIDRs allowed to call mutating endpoints (empty: anyone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowlist: Vec<String>,
    /// Also allow the hosts of the members' `api_url`s.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allowlist_include_members: bool,
    /// Parameters that run a command or load code (`archive_command`, `*_command`,
    /// `shared_preload_libraries`, …) which `PATCH`/`PUT /config` may set on this node's
    /// say-so. Any other such parameter in a config change is refused with 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_command_parameters: Vec<String>,
}

/// A username and password pair.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A list of `host:port` given as a YAML list or a comma-separated string.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum HostList {
    /// `[h1:2379, h2:2379]`
    List(Vec<String>),
    /// `"h1:2379,h2:2379"`
    Csv(String),
}

impl HostList {
    /// The hosts, trimmed, empty entries dropped.
    pub fn hosts(&self) -> Vec<String> {
        match self {
            HostList::List(v) => v
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            HostList::Csv(s) => s
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

/// `etcd3:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Etcd3 {
    /// Several endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<HostList>,
    /// One endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `http` (default) or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// CA certificate file for https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// Client certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Client key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// etcd user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// etcd password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A domain whose DNS SRV records name the etcd cluster (used when no host is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    /// Told apart several etcd clusters under one `srv` domain: `_etcd-client-<suffix>._tcp…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv_suffix: Option<String>,
}

impl Etcd3 {
    /// Every configured endpoint as `host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        let mut out = self.hosts.as_ref().map(HostList::hosts).unwrap_or_default();
        if let Some(h) = &self.host {
            if !h.trim().is_empty() && !out.contains(&h.trim().to_string()) {
                out.push(h.trim().to_string());
            }
        }
        out
    }
}

/// `zookeeper:` (Patroni's keys).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Zookeeper {
    /// `host:port` endpoints (a list or a comma-separated string).
    pub hosts: HostList,
    /// TLS to ZooKeeper.
    #[serde(default)]
    pub use_ssl: bool,
    /// CA certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// Client certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Client key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Principals and their permissions on the znodes spilo creates:
    /// `{"digest:user:hash": ["ALL"]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_acls: Option<BTreeMap<String, Vec<String>>>,
    /// Authentication added to the session: `{scheme: credential}`, e.g. `{digest: "user:pass"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_data: Option<BTreeMap<String, String>>,
}

impl Default for HostList {
    fn default() -> Self {
        HostList::List(Vec::new())
    }
}

/// `bootstrap:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Bootstrap {
    /// Initial dynamic configuration, written to the DCS `config` key by the bootstrap node.
    #[serde(default)]
    pub dcs: DynamicConfig,
    /// initdb options: `data-checksums` or `{encoding: UTF8}`.
    #[serde(default)]
    pub initdb: Vec<Value>,
    /// Lines added to `pg_hba.conf` at bootstrap.
    #[serde(default)]
    pub pg_hba: Vec<String>,
    /// How a new cluster is made: `initdb` (the default) or `clone` (a point-in-time copy of
    /// another cluster from its backups and archived WAL, `bootstrap.clone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `bootstrap.clone`: the source and the target of a clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<super::backup::CloneConfig>,
}

impl Bootstrap {
    /// The clone settings when `method` is `clone`.
    pub fn clone_source(&self) -> Option<&super::backup::CloneConfig> {
        match self.method.as_deref() {
            Some("clone") => self.clone.as_ref(),
            _ => None,
        }
    }
}

/// `postgresql:` (local).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Postgresql {
    /// `host:port` (host may be a comma list) PostgreSQL listens on.
    pub listen: String,
    /// `host:port` other nodes use to reach this PostgreSQL.
    pub connect_address: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Directory of `postgres`, `pg_ctl`, `initdb`…; found on `PATH` or in the Debian location
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
    /// The passfile spilo writes for replication and rewind connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgpass: Option<PathBuf>,
    /// Roles spilo uses.
    pub authentication: Authentication,
    /// GUCs (local values override the DCS ones).
    #[serde(default)]
    pub parameters: BTreeMap<String, Value>,
    /// `pg_hba.conf` lines (local; when empty the DCS `postgresql.pg_hba` applies).
    #[serde(default)]
    pub pg_hba: Vec<String>,
    /// Use `pg_rewind` to bring a former primary back (local override of the DCS value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_pg_rewind: Option<bool>,
    /// Wipe the data directory and copy it again when `pg_rewind` fails.
    #[serde(default)]
    pub remove_data_directory_on_rewind_failure: bool,
    /// Seconds to wait for `pg_ctl` start/stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_ctl_timeout: Option<u64>,
    /// Patroni's shell callbacks, by event (`on_start`, `on_stop`, `on_restart`, `on_reload`,
    /// `on_role_change`): a command line, run as `<command> <action> <role> <scope>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub callbacks: BTreeMap<String, String>,
    /// A command run before this node promotes; a non-zero exit vetoes the promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promote: Option<String>,
    /// Reach the local PostgreSQL over its UNIX socket (the first absolute directory of
    /// `unix_socket_directories`) instead of TCP to `listen`, as in Patroni.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_unix_socket: bool,
    /// Use the UNIX socket for replication connections to the local PostgreSQL (Patroni's key;
    /// spilo makes none today, so it is accepted and has no effect).
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_unix_socket_repl: bool,
    /// Patroni's `create_replica_methods`: how a new replica is built, tried in order until one
    /// works — `spilo_restore` (the newest suitable backup in the store, then WAL from the
    /// archive, then streaming) and `basebackup` (`pg_basebackup` from the leader). Default:
    /// both in that order with a `storage:` section, else `basebackup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_replica_methods: Option<Vec<String>>,
    /// Settings of the `spilo_restore` method.
    #[serde(default)]
    pub spilo_restore: RestoreMethod,
}

/// `postgresql.spilo_restore`: when a new replica is restored from a backup rather than copied
/// from the leader (Spilo's rule: only when the WAL written since the backup started is small
/// both in bytes and against the backup's size).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestoreMethod {
    /// At most this many MiB of WAL between the backup's start and the leader's position.
    #[serde(default = "d_threshold_mb")]
    pub threshold_megabytes: u64,
    /// At most this percentage of the backup's size.
    #[serde(default = "d_threshold_pct")]
    pub threshold_percentage: u64,
    /// Patroni's `no_leader` (as Spilo sets it for its backup method): a node with an empty
    /// data directory restores the newest backup even while the cluster has no leader, and
    /// starts as a replica following nobody until one appears.
    #[serde(default = "d_true", alias = "no_master")]
    pub no_leader: bool,
}

fn d_threshold_mb() -> u64 {
    102_400
}

fn d_threshold_pct() -> u64 {
    30
}

impl Default for RestoreMethod {
    fn default() -> Self {
        RestoreMethod {
            threshold_megabytes: d_threshold_mb(),
            threshold_percentage: d_threshold_pct(),
            no_leader: true,
        }
    }
}

/// The built-in replica method restoring a backup.
pub const METHOD_RESTORE: &str = "spilo_restore";
/// Patroni's replica method copying the leader.
pub const METHOD_BASEBACKUP: &str = "basebackup";

impl Postgresql {
    /// The replica methods in force (see [`Postgresql::create_replica_methods`]).
    pub fn replica_methods(&self, has_storage: bool) -> Vec<String> {
        match &self.create_replica_methods {
            Some(m) => m.clone(),
            None if has_storage => vec![METHOD_RESTORE.into(), METHOD_BASEBACKUP.into()],
            None => vec![METHOD_BASEBACKUP.into()],
        }
    }
}

/// `postgresql.authentication`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Authentication {
    /// The superuser (created by initdb).
    pub superuser: Credentials,
    /// The replication role.
    pub replication: Credentials,
    /// The role pg_rewind connects as (the superuser when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<Credentials>,
}

/// One role's name and password.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Credentials {
    /// Role name.
    pub username: String,
    /// Password (written only to the passfile, never inline in a connection string).
    #[serde(default)]
    pub password: Option<String>,
}

/// The dynamic (cluster-wide) configuration kept in the DCS `config` key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DynamicConfig {
    /// Session/leader-key time-to-live, seconds.
    #[serde(default = "d_ttl")]
    pub ttl: u64,
    /// Seconds between HA cycles.
    #[serde(default = "d_loop_wait")]
    pub loop_wait: u64,
    /// DCS and PostgreSQL operation deadline, seconds.
    #[serde(default = "d_retry_timeout")]
    pub retry_timeout: u64,
    /// A replica further behind `status.optime` than this many bytes does not race for leader.
    #[serde(default = "d_max_lag")]
    pub maximum_lag_on_failover: u64,
    /// Seconds a crashed primary holding the lease may take to start again before failing over.
    #[serde(default = "d_primary_start_timeout", alias = "master_start_timeout")]
    pub primary_start_timeout: u64,
    /// Refuse to promote a node whose timeline is behind the cluster's.
    #[serde(default)]
    pub check_timeline: bool,
    /// Maintenance mode.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pause: bool,
    /// PostgreSQL settings shared by all nodes.
    #[serde(default)]
    pub postgresql: DynamicPostgresql,
    /// Every other key, kept as is so that a round trip through spilo loses nothing.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn d_ttl() -> u64 {
    30
}
fn d_loop_wait() -> u64 {
    10
}
fn d_retry_timeout() -> u64 {
    10
}
fn d_max_lag() -> u64 {
    1_048_576
}
fn d_primary_start_timeout() -> u64 {
    300
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            ttl: d_ttl(),
            loop_wait: d_loop_wait(),
            retry_timeout: d_retry_timeout(),
            maximum_lag_on_failover: d_max_lag(),
            primary_start_timeout: d_primary_start_timeout(),
            check_timeline: false,
            pause: false,
            postgresql: DynamicPostgresql::default(),
            extra: BTreeMap::new(),
        }
    }
}

/// `postgresql:` inside the dynamic configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DynamicPostgresql {
    /// Use pg_rewind for former primaries.
    #[serde(default)]
    pub use_pg_rewind: bool,
    /// One physical slot per member on the primary.
    #[serde(default = "d_true")]
    pub use_slots: bool,
    /// GUCs.
    #[serde(default)]
    pub parameters: BTreeMap<String, Value>,
    /// `pg_hba.conf` lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pg_hba: Vec<String>,
    /// Every other key, kept as is.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn d_true() -> bool {
    true
}

impl Default for DynamicPostgresql {
    fn default() -> Self {
        DynamicPostgresql {
            use_pg_rewind: false,
            use_slots: true,
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
            extra: BTreeMap::new(),
        }
    }
}
