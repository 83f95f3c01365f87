//! Loading the node configuration: built-in defaults < YAML file < environment, merged with
//! figment, then checked by [`validate`].
//!
//! Every error names where the bad value came from (the file, or the environment variable that
//! set it) and its dotted key path; keys spilo ignores only produce warnings.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use figment::error::Kind;
use figment::value::{Dict, Empty, Map, Tag, Value as FValue};
use figment::{Figment, Metadata, Profile, Provider};
use serde_yaml::{Mapping, Value as YValue};

use super::error::ConfigError;
use super::model::{Config, DEFAULT_NAMESPACE};
use super::schema::{self, key_text, DCS_SECTIONS};
use super::validate::validate;

/// The origin named for values that come from spilo's built-in defaults.
pub const DEFAULTS_ORIGIN: &str = "built-in defaults";

/// Environment variable prefixes, highest precedence first: `SPILO_X` wins over `PATRONI_X`.
pub const ENV_PREFIXES: [&str; 2] = ["SPILO_", "PATRONI_"];

/// A loaded and validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Non-fatal findings (ignored keys, adjusted timeouts…), one line each, naming the file
    /// or variable and the key.
    pub warnings: Vec<String>,
}

/// How the text of an environment variable becomes a configuration value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvKind {
    /// Taken as a string.
    Text,
    /// A list: `a:1,b:2`, or a YAML-style flow list `['a:1', 'b:2']`.
    List,
}

/// One environment override: `<prefix><suffix>` sets `key`.
#[derive(Clone, Copy, Debug)]
pub struct EnvOverride {
    /// Variable name without its `SPILO_`/`PATRONI_` prefix.
    pub suffix: &'static str,
    /// Dotted configuration key.
    pub key: &'static str,
    /// How the value is read.
    pub kind: EnvKind,
}

const fn text(suffix: &'static str, key: &'static str) -> EnvOverride {
    EnvOverride {
        suffix,
        key,
        kind: EnvKind::Text,
    }
}

/// The environment variables spilo reads (with either prefix of [`ENV_PREFIXES`]), mapped
/// explicitly because Patroni's names do not follow the key paths mechanically.
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    text("NAME", "name"),
    text("SCOPE", "scope"),
    text("NAMESPACE", "namespace"),
    text("RESTAPI_LISTEN", "restapi.listen"),
    text("RESTAPI_CONNECT_ADDRESS", "restapi.connect_address"),
    text("RESTAPI_USERNAME", "restapi.authentication.username"),
    text("RESTAPI_PASSWORD", "restapi.authentication.password"),
    EnvOverride {
        suffix: "ETCD3_HOSTS",
        key: "etcd3.hosts",
        kind: EnvKind::List,
    },
    text("ETCD3_HOST", "etcd3.host"),
    EnvOverride {
        suffix: "ZOOKEEPER_HOSTS",
        key: "zookeeper.hosts",
        kind: EnvKind::List,
    },
    text("ETCD3_PROTOCOL", "etcd3.protocol"),
    text("ETCD3_CACERT", "etcd3.cacert"),
    text("ETCD3_CERT", "etcd3.cert"),
    text("ETCD3_KEY", "etcd3.key"),
    text("ETCD3_USERNAME", "etcd3.username"),
    text("ETCD3_PASSWORD", "etcd3.password"),
    text("POSTGRESQL_LISTEN", "postgresql.listen"),
    text("POSTGRESQL_CONNECT_ADDRESS", "postgresql.connect_address"),
    text("POSTGRESQL_DATA_DIR", "postgresql.data_dir"),
    text("POSTGRESQL_BIN_DIR", "postgresql.bin_dir"),
    text("POSTGRESQL_PGPASS", "postgresql.pgpass"),
    text(
        "SUPERUSER_USERNAME",
        "postgresql.authentication.superuser.username",
    ),
    text(
        "SUPERUSER_PASSWORD",
        "postgresql.authentication.superuser.password",
    ),
    text(
        "REPLICATION_USERNAME",
        "postgresql.authentication.replication.username",
    ),
    text(
        "REPLICATION_PASSWORD",
        "postgresql.authentication.replication.password",
    ),
    text(
        "REWIND_USERNAME",
        "postgresql.authentication.rewind.username",
    ),
    text(
        "REWIND_PASSWORD",
        "postgresql.authentication.rewind.password",
    ),
];

/// `PATRONI_*` variable prefixes of Patroni features spilo does not implement: warned about.
const UNSUPPORTED_ENV: &[(&str, &str)] = &[
    ("ETCD_", "etcd"),
    ("CONSUL_", "consul"),
    ("KUBERNETES_", "kubernetes"),
    ("RAFT_", "raft"),
    ("EXHIBITOR_", "exhibitor"),
    ("LOG_", "log"),
    ("CTL_", "ctl"),
    ("CITUS_", "citus"),
    ("RESTAPI_CERTFILE", "restapi.certfile"),
    ("RESTAPI_KEYFILE", "restapi.keyfile"),
    ("RESTAPI_CAFILE", "restapi.cafile"),
];

/// A figment provider for one layer (defaults, the file, one environment variable) whose
/// metadata name is the origin reported in errors.
struct Layer {
    name: String,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut map = Map::new();
        map.insert(Profile::Default, self.dict.clone());
        Ok(map)
    }
}

/// Reads, merges and validates the configuration file at `path`, with overrides from the
/// process environment (see [`ENV_OVERRIDES`]).
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    load_str(&text, &path.display().to_string(), &env)
}

/// Merges built-in defaults < the YAML document `yaml` < the overrides found in `env`,
/// deserializes the result and [`validate`]s it. `origin` names the document in messages
/// (usually the file path).
///
/// A `null` value is treated as absent, as Patroni does, and YAML merge keys (`<<`) are
/// applied. When a key is set by both `SPILO_X` and `PATRONI_X`, `SPILO_X` wins; an empty
/// variable counts as set.
pub fn load_str(yaml: &str, origin: &str, env: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let doc = parse_document(yaml, origin)?;
    let mut warnings = schema::unknown_keys(&doc, origin);

    // Spilo's user variables first: a PATRONI_/SPILO_ variable for the same key wins.
    let mut env_layers = spilo_user_env_layers(env);
    env_layers.extend(env_layers_of(env, &mut warnings));
    check_single_dcs(&doc, &env_layers, origin)?;
    env_layers.extend(spilo_env_layers(&doc, env)?);
    env_layers.extend(clone_env_layers(env, &mut warnings)?);
    env_layers.extend(standby_env_layers(env)?);

    let mut defaults = Dict::new();
    defaults.insert("namespace".into(), FValue::from(DEFAULT_NAMESPACE));
    let mut figment = Figment::new()
        .merge(Layer {
            name: DEFAULTS_ORIGIN.into(),
            dict: defaults,
        })
        .merge(Layer {
            name: origin.into(),
            dict: to_dict(&doc, "", origin)?,
        });
    for layer in env_layers {
        figment = figment.merge(layer);
    }

    precheck_dynamic(&figment, &doc, origin)?;
    let config: Config = figment
        .extract()
        .map_err(|e| from_figment(e, None, &doc, origin))?;
    let more = validate(&config, origin).map_err(|e| attribute(e, &figment, &doc))?;
    warnings.extend(more);
    Ok(Loaded { config, warnings })
}

fn parse_document(yaml: &str, origin: &str) -> Result<Mapping, ConfigError> {
    let mut value: YValue = if yaml.trim().is_empty() {
        YValue::Null
    } else {
        serde_yaml::from_str(yaml)
            .map_err(|e| ConfigError::parse(origin, "", format!("invalid YAML: {e}")))?
    };
    value
        .apply_merge()
        .map_err(|e| ConfigError::parse(origin, "", format!("invalid YAML merge key: {e}")))?;
    match value {
        YValue::Mapping(m) => Ok(m),
        YValue::Null => Ok(Mapping::new()),
        _ => Err(ConfigError::parse(
            origin,
            "",
            "the document must be a mapping of keys to values",
        )),
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Converts a YAML mapping to a figment dictionary, dropping `null` values.
fn to_dict(map: &Mapping, path: &str, origin: &str) -> Result<Dict, ConfigError> {
    let mut dict = Dict::new();
    for (k, v) in map {
        if matches!(k, YValue::Sequence(_) | YValue::Mapping(_)) {
            return Err(ConfigError::parse(
                origin,
                path,
                "mapping keys must be scalars",
            ));
        }
        if v.is_null() {
            continue;
        }
        let name = key_text(k);
        let value = to_value(v, &join(path, &name), origin)?;
        dict.insert(name, value);
    }
    Ok(dict)
}

fn to_value(v: &YValue, path: &str, origin: &str) -> Result<FValue, ConfigError> {
    Ok(match v {
        YValue::Null => FValue::from(Empty::None),
        YValue::Bool(b) => FValue::from(*b),
        YValue::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => FValue::from(u),
            (None, Some(i)) => FValue::from(i),
            (None, None) => FValue::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        YValue::String(s) => FValue::from(s.clone()),
        YValue::Sequence(seq) => FValue::from(
            seq.iter()
                .enumerate()
                .map(|(i, item)| to_value(item, &join(path, &i.to_string()), origin))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        YValue::Mapping(m) => FValue::Dict(Tag::Default, to_dict(m, path, origin)?),
        YValue::Tagged(t) => to_value(&t.value, path, origin)?,
    })
}

/// Splits a list given in one variable: `a:1, b:2`, `[a:1, b:2]` or `['a:1', "b:2"]`.
fn parse_env_list(raw: &str) -> Vec<String> {
    let s = raw.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    s.split(',')
        .map(|item| {
            item.trim()
                .trim_matches(|c| c == '\'' || c == '"')
                .trim()
                .to_string()
        })
        .filter(|item| !item.is_empty())
        .collect()
}

/// One figment layer per overriding variable, so that errors can name the variable.
fn env_layers_of(env: &[(String, String)], warnings: &mut Vec<String>) -> Vec<Layer> {
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut layers = Vec::new();
    for o in ENV_OVERRIDES {
        let found = ENV_PREFIXES.iter().find_map(|prefix| {
            let var = format!("{prefix}{}", o.suffix);
            lookup.get(var.as_str()).map(|value| (var, *value))
        });
        let Some((var, raw)) = found else { continue };
        let value = match o.kind {
            EnvKind::Text => FValue::from(raw.to_string()),
            EnvKind::List => FValue::from(parse_env_list(raw)),
        };
        if let FValue::Dict(_, dict) = figment::util::nest(o.key, value) {
            layers.push(Layer { name: var, dict });
        }
    }
    let mut unsupported: Vec<String> = env
        .iter()
        .filter_map(|(k, _)| {
            let rest = k.strip_prefix("PATRONI_")?;
            let (_, what) = UNSUPPORTED_ENV.iter().find(|(p, _)| rest.starts_with(p))?;
            Some(format!("{k}: '{what}' is not supported yet (ignored)"))
        })
        .collect();
    unsupported.sort();
    unsupported.dedup();
    warnings.extend(unsupported);
    layers
}

/// Spilo's names for the PostgreSQL users (its `PGPASSWORD_*` may be `aws:kms:<base64>`, opened
/// at start like any such value): the superuser and the replication ("standby") user.
const SPILO_USER_ENV: &[(&str, &str)] = &[
    (
        "PGUSER_SUPERUSER",
        "postgresql.authentication.superuser.username",
    ),
    (
        "PGPASSWORD_SUPERUSER",
        "postgresql.authentication.superuser.password",
    ),
    (
        "PGUSER_STANDBY",
        "postgresql.authentication.replication.username",
    ),
    (
        "PGPASSWORD_STANDBY",
        "postgresql.authentication.replication.password",
    ),
];

/// Layers for [`SPILO_USER_ENV`].
fn spilo_user_env_layers(env: &[(String, String)]) -> Vec<Layer> {
    let mut layers = Vec::new();
    for &(var, key) in SPILO_USER_ENV {
        let Some(v) = env
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        if let FValue::Dict(_, dict) = figment::util::nest(key, FValue::from(v)) {
            layers.push(Layer {
                name: var.to_string(),
                dict,
            });
        }
    }
    layers
}

/// Spilo's environment names for backups and WAL that set one text key each (no prefix). The
/// others — `WAL_S3_BUCKET`, `WALE_S3_PREFIX`/`WALG_S3_PREFIX` (bucket and prefix),
/// `BACKUP_NUM_TO_RETAIN`, `WALG_UPLOAD_CONCURRENCY` (numbers), `WALG_BACKUP_FROM_REPLICA` (a
/// boolean) — are read by [`spilo_env_layers`] itself.
const SPILO_TEXT_ENV: &[(&str, &str)] = &[
    ("WAL_BUCKET_SCOPE_PREFIX", "storage.scope_prefix"),
    ("WAL_BUCKET_SCOPE_SUFFIX", "storage.scope_suffix"),
    ("AWS_ENDPOINT", "storage.endpoint"),
    ("AWS_REGION", "storage.region"),
    ("WALG_S3_SSE", "storage.sse"),
    ("WALG_S3_SSE_KMS_ID", "storage.sse_kms_key_id"),
    ("BACKUP_SCHEDULE", "backup.schedule"),
];

/// Layers for Spilo's environment names. They apply when the document has a `storage:` section
/// or the environment names a bucket (`WAL_S3_BUCKET`, `WALE_S3_PREFIX`, `WALG_S3_PREFIX`):
/// `AWS_REGION` alone must not turn archiving on.
fn spilo_env_layers(doc: &Mapping, env: &[(String, String)]) -> Result<Vec<Layer>, ConfigError> {
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let bucket_vars = ["WAL_S3_BUCKET", "WALE_S3_PREFIX", "WALG_S3_PREFIX"];
    let names_bucket = bucket_vars.iter().any(|v| get(v).is_some());
    if !names_bucket && !doc.contains_key("storage") {
        return Ok(Vec::new());
    }
    let mut layers = Vec::new();
    let mut set = |var: &str, key: &str, value: FValue| {
        if let FValue::Dict(_, dict) = figment::util::nest(key, value) {
            layers.push(Layer {
                name: var.to_string(),
                dict,
            });
        }
    };
    if names_bucket {
        set("WAL_S3_BUCKET", "storage.type", FValue::from("s3"));
    }
    if let Some(b) = get("WAL_S3_BUCKET") {
        set("WAL_S3_BUCKET", "storage.bucket", FValue::from(b));
    }
    for var in ["WALE_S3_PREFIX", "WALG_S3_PREFIX"] {
        let Some(url) = get(var) else { continue };
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(ConfigError::invalid(
                var,
                "storage.prefix",
                format!("'{url}' is not an s3://bucket/prefix URL"),
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        set(var, "storage.bucket", FValue::from(bucket.to_string()));
        if !prefix.trim_matches('/').is_empty() {
            set(var, "storage.prefix", FValue::from(prefix.to_string()));
        }
    }
    for &(var, key) in SPILO_TEXT_ENV {
        if let Some(v) = get(var) {
            set(var, key, FValue::from(v));
        }
    }
    let numbers = [
        ("BACKUP_NUM_TO_RETAIN", "backup.retain.count"),
        ("WALG_UPLOAD_CONCURRENCY", "backup.upload_concurrency"),
        (
            "WALE_BACKUP_THRESHOLD_MEGABYTES",
            "postgresql.spilo_restore.threshold_megabytes",
        ),
        (
            "WALE_BACKUP_THRESHOLD_PERCENTAGE",
            "postgresql.spilo_restore.threshold_percentage",
        ),
    ];
    for (var, key) in numbers {
        if let Some(v) = get(var) {
            let n: u32 = v.parse().map_err(|_| {
                ConfigError::invalid(var, key, format!("'{v}' is not a whole number"))
            })?;
            set(var, key, FValue::from(n));
        }
    }
    if let Some(v) = get("WALG_BACKUP_FROM_REPLICA") {
        let b = env_bool("WALG_BACKUP_FROM_REPLICA", "backup.from_replica", &v)?;
        set(
            "WALG_BACKUP_FROM_REPLICA",
            "backup.from_replica",
            FValue::from(b),
        );
    }
    Ok(layers)
}

/// A boolean environment value (true/yes/on/1, false/no/off/0); `var` and `key` name it.
fn env_bool(var: &str, key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(ConfigError::invalid(
            var,
            key,
            format!("'{v}' is not true or false"),
        )),
    }
}

/// Spilo's clone variables: `CLONE_METHOD=CLONE_WITH_WALE` (or `CLONE_WITH_WALG`) makes the
/// bootstrap a clone of `CLONE_SCOPE` to `CLONE_TARGET_TIME` (`CLONE_TARGET_TIMELINE`,
/// `CLONE_TARGET_INCLUSIVE`), from `CLONE_WAL_S3_BUCKET` (`CLONE_AWS_ENDPOINT`,
/// `CLONE_AWS_REGION`) or else this cluster's own store.
fn clone_env_layers(
    env: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<Vec<Layer>, ConfigError> {
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(method) = get("CLONE_METHOD") else {
        return Ok(Vec::new());
    };
    if method != "CLONE_WITH_WALE" && method != "CLONE_WITH_WALG" {
        // Spilo's CLONE_WITH_BASEBACKUP and the like: not supported yet, ignored as before.
        warnings.push(format!(
            "CLONE_METHOD: '{method}' is not supported yet (ignored; spilo clones with \
             CLONE_WITH_WALE or CLONE_WITH_WALG)"
        ));
        return Ok(Vec::new());
    }
    let mut layers = Vec::new();
    let mut set = |var: &str, key: &str, value: FValue| {
        if let FValue::Dict(_, dict) = figment::util::nest(key, value) {
            layers.push(Layer {
                name: var.to_string(),
                dict,
            });
        }
    };
    set("CLONE_METHOD", "bootstrap.method", FValue::from("clone"));
    for (var, key) in [
        ("CLONE_SCOPE", "bootstrap.clone.scope"),
        ("CLONE_TARGET_TIME", "bootstrap.clone.target_time"),
        ("CLONE_TARGET_TIMELINE", "bootstrap.clone.target_timeline"),
        ("CLONE_AWS_ENDPOINT", "bootstrap.clone.storage.endpoint"),
        ("CLONE_AWS_REGION", "bootstrap.clone.storage.region"),
    ] {
        if let Some(v) = get(var) {
            set(var, key, FValue::from(v));
        }
    }
    if let Some(b) = get("CLONE_WAL_S3_BUCKET") {
        set(
            "CLONE_WAL_S3_BUCKET",
            "bootstrap.clone.storage.type",
            FValue::from("s3"),
        );
        set(
            "CLONE_WAL_S3_BUCKET",
            "bootstrap.clone.storage.bucket",
            FValue::from(b),
        );
    }
    if let Some(v) = get("CLONE_TARGET_INCLUSIVE") {
        let b = env_bool("CLONE_TARGET_INCLUSIVE", "bootstrap.clone.inclusive", &v)?;
        set(
            "CLONE_TARGET_INCLUSIVE",
            "bootstrap.clone.inclusive",
            FValue::from(b),
        );
    }
    Ok(layers)
}

/// Spilo's standby variables, into `bootstrap.dcs.standby_cluster`: `STANDBY_HOST`,
/// `STANDBY_PORT`, `STANDBY_PRIMARY_SLOT_NAME` (streaming from the source's primary), and the
/// source's archive: `STANDBY_SCOPE` in `STANDBY_WAL_S3_BUCKET` (or `STANDBY_WALE_S3_PREFIX` /
/// `STANDBY_WALG_S3_PREFIX`; `STANDBY_AWS_ENDPOINT`, `STANDBY_AWS_REGION`), or in this
/// cluster's own store when no bucket is named. A bucket needs `STANDBY_SCOPE` unless a prefix
/// URL names the whole place.
fn standby_env_layers(env: &[(String, String)]) -> Result<Vec<Layer>, ConfigError> {
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut layers = Vec::new();
    let mut set = |var: &str, key: &str, value: FValue| {
        let key = format!("bootstrap.dcs.standby_cluster.{key}");
        if let FValue::Dict(_, dict) = figment::util::nest(&key, value) {
            layers.push(Layer {
                name: var.to_string(),
                dict,
            });
        }
    };
    for (var, key) in [
        ("STANDBY_HOST", "host"),
        ("STANDBY_PRIMARY_SLOT_NAME", "primary_slot_name"),
        ("STANDBY_SCOPE", "scope"),
        ("STANDBY_AWS_ENDPOINT", "storage.endpoint"),
        ("STANDBY_AWS_REGION", "storage.region"),
    ] {
        if let Some(v) = get(var) {
            set(var, key, FValue::from(v));
        }
    }
    if let Some(v) = get("STANDBY_PORT") {
        let port: u16 = v.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            ConfigError::invalid(
                "STANDBY_PORT",
                "bootstrap.dcs.standby_cluster.port",
                format!("'{v}' is not a port"),
            )
        })?;
        set("STANDBY_PORT", "port", FValue::from(port));
    }
    let mut bucket = false;
    if let Some(b) = get("STANDBY_WAL_S3_BUCKET") {
        set("STANDBY_WAL_S3_BUCKET", "storage.bucket", FValue::from(b));
        bucket = true;
    }
    for var in ["STANDBY_WALE_S3_PREFIX", "STANDBY_WALG_S3_PREFIX"] {
        let Some(url) = get(var) else { continue };
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(ConfigError::invalid(
                var,
                "bootstrap.dcs.standby_cluster.storage.prefix",
                format!("'{url}' is not an s3://bucket/prefix URL"),
            ));
        };
        let (b, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        set(var, "storage.bucket", FValue::from(b.to_string()));
        if !prefix.trim_matches('/').is_empty() {
            set(var, "storage.prefix", FValue::from(prefix.to_string()));
        }
        bucket = true;
    }
    if bucket {
        set("STANDBY_WAL_S3_BUCKET", "storage.type", FValue::from("s3"));
    }
    Ok(layers)
}

/// Exactly one DCS may be configured (spilo supports only etcd3; the others are warned about).
fn check_single_dcs(doc: &Mapping, env: &[Layer], origin: &str) -> Result<(), ConfigError> {
    let mut found: Vec<&str> = DCS_SECTIONS
        .iter()
        .copied()
        .filter(|s| doc.get(*s).is_some_and(|v| !v.is_null()))
        .collect();
    if !found.contains(&"etcd3") && env.iter().any(|l| l.dict.contains_key("etcd3")) {
        found.insert(0, "etcd3");
    }
    if doc.get("dcs").is_some_and(|v| !v.is_null()) {
        found.push("dcs");
    }
    if found.len() > 1 {
        return Err(ConfigError::invalid(
            origin,
            found[1],
            format!("only one DCS may be configured, found {}", found.join(", ")),
        ));
    }
    Ok(())
}

/// figment's error is large: boxed to keep these results small.
type Check = fn(&Figment, &str) -> Result<(), Box<figment::Error>>;

fn is_u64(f: &Figment, path: &str) -> Result<(), Box<figment::Error>> {
    f.extract_inner::<u64>(path).map(drop).map_err(Box::new)
}

fn is_bool(f: &Figment, path: &str) -> Result<(), Box<figment::Error>> {
    f.extract_inner::<bool>(path).map(drop).map_err(Box::new)
}

fn is_map(f: &Figment, path: &str) -> Result<(), Box<figment::Error>> {
    f.extract_inner::<BTreeMap<String, serde_json::Value>>(path)
        .map(drop)
        .map_err(Box::new)
}

fn is_string_list(f: &Figment, path: &str) -> Result<(), Box<figment::Error>> {
    f.extract_inner::<Vec<String>>(path)
        .map(drop)
        .map_err(Box::new)
}

/// The typed fields of `bootstrap.dcs`. [`DynamicConfig`](super::DynamicConfig) keeps unknown
/// keys (`#[serde(flatten)]`), which hides the key of a type error from serde; checking these
/// fields one by one first gives errors with their exact key.
const DYNAMIC_CHECKS: &[(&str, Check)] = &[
    ("bootstrap.dcs", is_map),
    ("bootstrap.dcs.ttl", is_u64),
    ("bootstrap.dcs.loop_wait", is_u64),
    ("bootstrap.dcs.retry_timeout", is_u64),
    ("bootstrap.dcs.maximum_lag_on_failover", is_u64),
    ("bootstrap.dcs.primary_start_timeout", is_u64),
    ("bootstrap.dcs.master_start_timeout", is_u64),
    ("bootstrap.dcs.check_timeline", is_bool),
    ("bootstrap.dcs.pause", is_bool),
    ("bootstrap.dcs.postgresql", is_map),
    ("bootstrap.dcs.postgresql.use_pg_rewind", is_bool),
    ("bootstrap.dcs.postgresql.use_slots", is_bool),
    ("bootstrap.dcs.postgresql.parameters", is_map),
    ("bootstrap.dcs.postgresql.pg_hba", is_string_list),
];

fn precheck_dynamic(figment: &Figment, doc: &Mapping, origin: &str) -> Result<(), ConfigError> {
    for (path, check) in DYNAMIC_CHECKS {
        if figment.contains(path) {
            check(figment, path).map_err(|e| from_figment(*e, Some(path), doc, origin))?;
        }
    }
    Ok(())
}

fn expected(exp: &str) -> String {
    match exp {
        e if e.starts_with("struct ") || e == "a map" => "a mapping".to_string(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".to_string(),
        "a sequence" => "a list".to_string(),
        e => e.to_string(),
    }
}

fn describe(kind: &Kind) -> String {
    match kind {
        Kind::InvalidType(actual, exp) => {
            format!("invalid type: found {actual}, expected {}", expected(exp))
        }
        Kind::InvalidValue(actual, exp) => {
            format!("invalid value: found {actual}, expected {}", expected(exp))
        }
        Kind::Message(m) if m.contains("untagged enum HostList") => {
            "expected a list of host:port or a comma-separated string".to_string()
        }
        other => other.to_string(),
    }
}

/// Turns figment's error into one [`ConfigError::Parse`] naming the origin and the key.
///
/// `key` replaces the error's path when the caller knows it better. A missing key is
/// reported against the file, the place where it should be written.
fn from_figment(
    err: figment::Error,
    key: Option<&str>,
    doc: &Mapping,
    origin: &str,
) -> ConfigError {
    let Some(e) = err.into_iter().next() else {
        return ConfigError::parse(origin, key.unwrap_or(""), "invalid configuration");
    };
    let mut path: Vec<String> = match key {
        Some(k) => k.split('.').map(String::from).collect(),
        None => e.path.clone(),
    };
    let source = e
        .metadata
        .as_ref()
        .map(|m| m.name.to_string())
        .filter(|n| n != DEFAULTS_ORIGIN);
    match &e.kind {
        Kind::MissingField(field) => {
            let parent = path.join(".");
            let parent_in_file = path.is_empty() || schema::has_path(doc, &path);
            path.push(field.to_string());
            let message = match source.filter(|s| !parent_in_file && s != origin) {
                Some(var) => format!("missing required key ('{parent}' is set only by {var})"),
                None => "missing required key".to_string(),
            };
            ConfigError::parse(origin, &path.join("."), message)
        }
        kind => {
            let origin = source.unwrap_or_else(|| origin.to_string());
            ConfigError::parse(&origin, &path.join("."), describe(kind))
        }
    }
}

/// Names the environment variable in a validation error when the offending value came from
/// one (validation itself only knows the file).
fn attribute(err: ConfigError, figment: &Figment, doc: &Mapping) -> ConfigError {
    let ConfigError::Invalid {
        origin,
        key,
        message,
    } = err
    else {
        return err;
    };
    let from_env = figment.find_value(&key).ok().and_then(|value| {
        let path: Vec<String> = key.split('.').map(String::from).collect();
        // A section both in the file and touched by a variable stays the file's.
        if matches!(value, FValue::Dict(..)) && schema::has_path(doc, &path) {
            return None;
        }
        figment
            .get_metadata(value.tag())
            .map(|m| m.name.to_string())
    });
    let origin = from_env.filter(|n| n != DEFAULTS_ORIGIN).unwrap_or(origin);
    ConfigError::Invalid {
        origin,
        key,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    const NODE: &str = r#"
scope: batman
namespace: /service/
name: postgresql0

restapi:
  listen: 0.0.0.0:8008
  connect_address: 10.0.0.10:8008
  authentication:
    username: admin
    password: secret

etcd3:
  hosts: 10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379
  protocol: https
  cacert: /etc/etcd/ca.pem
  cert: /etc/etcd/client.pem
  key: /etc/etcd/client-key.pem

bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    master_start_timeout: 120
    synchronous_mode: false
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_connections: 100
        wal_keep_size: 128MB
      pg_hba:
        - host replication replicator 10.0.0.0/24 scram-sha-256
  initdb:
    - encoding: UTF8
    - data-checksums
  pg_hba:
    - host all all 0.0.0.0/0 scram-sha-256

postgresql:
  listen: 127.0.0.1,10.0.0.10:5432
  connect_address: 10.0.0.10:5432
  data_dir: /var/lib/postgresql/16/main
  bin_dir: /usr/lib/postgresql/16/bin
  pgpass: /tmp/pgpass0
  authentication:
    superuser:
      username: postgres
      password: zalando
    replication:
      username: replicator
      password: rep-pass
    rewind:
      username: rewind_user
      password: rewind_password
  parameters:
    unix_socket_directories: /var/run/postgresql
    work_mem: 8MB
  use_pg_rewind: true
  remove_data_directory_on_rewind_failure: true
  pg_ctl_timeout: 60

tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
  failover_priority: 1
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(yaml: &str) -> Result<Loaded, ConfigError> {
        load_str(yaml, "node.yml", &[])
    }

    fn err(yaml: &str) -> String {
        load(yaml).unwrap_err().to_string()
    }

    #[test]
    fn full_patroni_node_yaml_loads() {
        let loaded = load(NODE).unwrap();
        assert_eq!(loaded.warnings, Vec::<String>::new());
        let c = &loaded.config;
        assert_eq!(
            (c.scope.as_str(), c.name.as_str(), c.namespace.as_str()),
            ("batman", "postgresql0", "/service/")
        );
        assert_eq!(c.restapi.authentication.as_ref().unwrap().username, "admin");
        let etcd = c.etcd3.as_ref().unwrap();
        assert_eq!(
            etcd.endpoints(),
            vec!["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]
        );
        assert_eq!(etcd.protocol.as_deref(), Some("https"));
        let dcs = &c.bootstrap.dcs;
        assert_eq!((dcs.ttl, dcs.loop_wait, dcs.retry_timeout), (30, 10, 10));
        assert_eq!(dcs.primary_start_timeout, 120);
        assert_eq!(dcs.extra["synchronous_mode"], json!(false));
        assert!(dcs.postgresql.use_pg_rewind);
        assert_eq!(dcs.postgresql.parameters["max_connections"], json!(100));
        assert_eq!(dcs.postgresql.parameters["hot_standby"], json!("on"));
        assert_eq!(
            c.bootstrap.initdb,
            vec![json!({"encoding": "UTF8"}), json!("data-checksums")]
        );
        assert_eq!(
            c.postgresql
                .authentication
                .rewind
                .as_ref()
                .unwrap()
                .username,
            "rewind_user"
        );
        assert_eq!(c.postgresql.parameters["work_mem"], json!("8MB"));
        assert_eq!(c.postgresql.pg_ctl_timeout, Some(60));
        assert_eq!(c.tags["failover_priority"], json!(1));
        assert_eq!(c.listen_port(), 5432);
        assert_eq!(c.api_url(), "http://10.0.0.10:8008/patroni");
    }

    #[test]
    fn namespace_defaults_and_null_sections_are_tolerated() {
        let yaml = NODE
            .replace("namespace: /service/\n", "")
            .replace("tags:\n  nofailover: false\n", "tags:\n  nofailover: ~\n")
            + "log:\n";
        let c = load(&yaml).unwrap().config;
        assert_eq!(c.namespace, DEFAULT_NAMESPACE);
        assert!(!c.tags.contains_key("nofailover"));
    }

    #[test]
    fn load_file_reads_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(NODE.as_bytes())
            .unwrap();
        assert_eq!(load_file(&path).unwrap().config.name, "postgresql0");

        let missing = dir.path().join("nope.yml");
        let e = load_file(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read", missing.display())),
            "{e}"
        );
    }

    #[test]
    fn missing_required_key_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yml");
        std::fs::write(
            &path,
            NODE.replace("  data_dir: /var/lib/postgresql/16/main\n", ""),
        )
        .unwrap();
        let e = load_file(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: postgresql.data_dir: missing required key",
                path.display()
            )
        );
        assert_eq!(e.key(), "postgresql.data_dir");

        assert_eq!(
            err(&NODE.replace("scope: batman\n", "")),
            "node.yml: scope: missing required key"
        );
        let no_user = NODE.replace("      username: replicator\n", "");
        assert_eq!(
            err(&no_user),
            "node.yml: postgresql.authentication.replication.username: missing required key"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        assert_eq!(
            err(&NODE.replace("    ttl: 30\n", "    ttl: \"abc\"\n")),
            "node.yml: bootstrap.dcs.ttl: invalid type: found string \"abc\", expected a non-negative integer"
        );
        assert_eq!(
            err(&NODE.replace("    loop_wait: 10\n", "    loop_wait: -1\n")),
            "node.yml: bootstrap.dcs.loop_wait: invalid value: found signed int `-1`, expected a non-negative integer"
        );
        assert_eq!(
            err(&NODE.replace("      use_slots: true\n", "      use_slots: [1]\n")),
            "node.yml: bootstrap.dcs.postgresql.use_slots: invalid type: found sequence, expected a boolean"
        );
        let restapi_5 = NODE.replace(
            "restapi:\n  listen: 0.0.0.0:8008\n  connect_address: 10.0.0.10:8008\n  authentication:\n    username: admin\n    password: secret\n",
            "restapi: 5\n",
        );
        assert_eq!(
            err(&restapi_5),
            "node.yml: restapi: invalid type: found unsigned int `5`, expected a mapping"
        );
        assert_eq!(
            err(&NODE.replace("  pg_ctl_timeout: 60\n", "  pg_ctl_timeout: soon\n")),
            "node.yml: postgresql.pg_ctl_timeout: invalid type: found string \"soon\", expected a non-negative integer"
        );
        assert_eq!(
            err(&NODE.replace(
                "  hosts: 10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379\n",
                "  hosts: {a: 1}\n"
            )),
            "node.yml: etcd3.hosts: expected a list of host:port or a comma-separated string"
        );
    }

    #[test]
    fn plugins_of_every_kind_may_be_listed_and_unknown_kinds_are_named() {
        let with = |kind: &str| {
            format!("{NODE}plugins:\n- {{name: p, path: /usr/lib/spilo/libp.so, kind: {kind}}}\n")
        };
        for kind in ["dcs", "storage", "load_balancer"] {
            let c = load(&with(kind)).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(c.config.plugins[0].kind, kind);
        }
        assert_eq!(
            err(&with("cache")),
            "node.yml: plugins[0].kind: 'cache' is not a plugin kind spilo loads (dcs, storage, load_balancer)"
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        assert_eq!(
            err(&NODE.replace("  listen: 0.0.0.0:8008\n", "  listen: abc\n")),
            "node.yml: restapi.listen: invalid address 'abc' (expected host:port)"
        );
        assert_eq!(
            err(&NODE.replace("  connect_address: 10.0.0.10:5432\n", "  connect_address: 10.0.0.10:0\n")),
            "node.yml: postgresql.connect_address: invalid address '10.0.0.10:0' (port must be between 1 and 65535)"
        );
        assert_eq!(
            err(&NODE.replace("    ttl: 30\n", "    ttl: 4\n")),
            "node.yml: bootstrap.dcs.ttl: must be at least 5 seconds (got 4)"
        );
    }

    #[test]
    fn env_overrides_patroni_and_spilo_names() {
        let e = env(&[
            ("PATRONI_NAME", "from-patroni"),
            ("PATRONI_SCOPE", "patroni-scope"),
            ("SPILO_SCOPE", "spilo-scope"),
            ("PATRONI_RESTAPI_CONNECT_ADDRESS", "10.1.1.1:8008"),
            ("PATRONI_RESTAPI_PASSWORD", "env-secret"),
            ("PATRONI_ETCD3_HOSTS", "['e1:2379', 'e2:2379']"),
            ("SPILO_POSTGRESQL_DATA_DIR", "/data/pg"),
            ("PATRONI_SUPERUSER_PASSWORD", "su-pass"),
            ("PATRONI_REWIND_USERNAME", "rw"),
            ("UNRELATED", "x"),
        ]);
        let c = load_str(NODE, "node.yml", &e).unwrap().config;
        assert_eq!(c.name, "from-patroni");
        assert_eq!(c.scope, "spilo-scope");
        assert_eq!(c.restapi.connect_address, "10.1.1.1:8008");
        let auth = c.restapi.authentication.unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("admin", "env-secret")
        );
        assert_eq!(
            c.etcd3.as_ref().unwrap().endpoints(),
            vec!["e1:2379", "e2:2379"]
        );
        assert_eq!(c.etcd3.as_ref().unwrap().protocol.as_deref(), Some("https"));
        assert_eq!(c.postgresql.data_dir, std::path::PathBuf::from("/data/pg"));
        assert_eq!(
            c.postgresql.authentication.superuser.password.as_deref(),
            Some("su-pass")
        );
        assert_eq!(c.postgresql.authentication.superuser.username, "postgres");
        let rewind = c.postgresql.authentication.rewind.unwrap();
        assert_eq!(
            (rewind.username.as_str(), rewind.password.as_deref()),
            ("rw", Some("rewind_password"))
        );
    }

    #[test]
    fn env_alone_can_supply_required_keys() {
        let yaml = "bootstrap: {dcs: {ttl: 30}}\n";
        let e = env(&[
            ("PATRONI_SCOPE", "s"),
            ("PATRONI_NAME", "n"),
            ("PATRONI_RESTAPI_LISTEN", "*:8008"),
            ("PATRONI_RESTAPI_CONNECT_ADDRESS", "h:8008"),
            ("PATRONI_ETCD3_HOST", "e:2379"),
            ("PATRONI_POSTGRESQL_LISTEN", "*:5432"),
            ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "h:5432"),
            ("PATRONI_POSTGRESQL_DATA_DIR", "/pg"),
            ("PATRONI_SUPERUSER_USERNAME", "postgres"),
            ("PATRONI_REPLICATION_USERNAME", "repl"),
        ]);
        let loaded = load_str(yaml, "c.yml", &e).unwrap();
        assert_eq!(
            loaded.config.etcd3.as_ref().unwrap().endpoints(),
            vec!["e:2379"]
        );
        assert_eq!(
            loaded.config.pgpass_path(),
            std::path::PathBuf::from("/pgpass.n")
        );
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let e = load_str(NODE, "node.yml", &env(&[("PATRONI_RESTAPI_LISTEN", "abc")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PATRONI_RESTAPI_LISTEN: restapi.listen: invalid address 'abc' (expected host:port)"
        );
        assert_eq!(e.origin(), "PATRONI_RESTAPI_LISTEN");

        let e = load_str(
            NODE,
            "node.yml",
            &env(&[
                ("PATRONI_ETCD3_HOSTS", "e1:2379"),
                ("SPILO_ETCD3_HOSTS", "http://e1:2379"),
            ]),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SPILO_ETCD3_HOSTS: etcd3.hosts: invalid endpoint 'http://e1:2379'"),
            "{e}"
        );

        let e = load_str(NODE, "node.yml", &env(&[("PATRONI_SCOPE", "")])).unwrap_err();
        assert_eq!(e.to_string(), "PATRONI_SCOPE: scope: must not be empty");

        // A section in the file touched by a variable still blames the file for what is missing there.
        let yaml = NODE.replace("  key: /etc/etcd/client-key.pem\n", "");
        let e = load_str(
            &yaml,
            "node.yml",
            &env(&[("PATRONI_ETCD3_PROTOCOL", "https")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "node.yml: etcd3.key: required when etcd3.cert is set"
        );
    }

    #[test]
    fn missing_key_in_section_set_only_by_env_names_the_variable() {
        let yaml = NODE.replace(
            "  authentication:\n    username: admin\n    password: secret\n",
            "",
        );
        let e = load_str(
            &yaml,
            "node.yml",
            &env(&[("PATRONI_RESTAPI_PASSWORD", "pw")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "node.yml: restapi.authentication.username: missing required key \
             ('restapi.authentication' is set only by PATRONI_RESTAPI_PASSWORD)"
        );
    }

    #[test]
    fn unknown_keys_warn_with_their_path() {
        let yaml = NODE.replace(
            "  pg_ctl_timeout: 60\n",
            "  pg_ctl_timeout: 60\n  foo: 1\n  basebackup: {checkpoint: fast}\n  callbacks: {on_start: /x, on_begin: /y}\n",
        ) + "ctl:\n  insecure: true\nwatchdog:\n  mode: off\n";
        let loaded = load_str(&yaml, "config.yml", &[]).unwrap();
        assert_eq!(
            loaded.warnings,
            vec![
                "config.yml: unknown key 'postgresql.foo' (ignored)",
                "config.yml: key 'postgresql.basebackup' is not supported yet (ignored)",
                "config.yml: unknown key 'postgresql.callbacks.on_begin' (ignored)",
                "config.yml: key 'ctl' is not supported yet (ignored)",
                "config.yml: key 'watchdog' is not supported yet (ignored)",
            ]
        );
    }

    #[test]
    fn unsupported_dcs_warns_and_several_dcs_are_rejected() {
        let zk = NODE.replace("etcd3:", "zookeeper:");
        let loaded = load(&zk).expect("a zookeeper section is a DCS");
        assert!(loaded.config.zookeeper.is_some() && loaded.config.etcd3.is_none());
        let none = NODE.replace("etcd3:", "consul:");
        let e = load(&none).unwrap_err().to_string();
        assert_eq!(
            e,
            "node.yml: etcd3: no DCS configured (an etcd3 or zookeeper section with hosts is required)"
        );

        let both = NODE.to_string() + "consul:\n  host: c:8500\n";
        assert_eq!(
            err(&both),
            "node.yml: consul: only one DCS may be configured, found etcd3, consul"
        );

        let loaded = load_str(NODE, "node.yml", &env(&[("PATRONI_LOG_LEVEL", "DEBUG")])).unwrap();
        assert_eq!(
            loaded.warnings,
            vec!["PATRONI_LOG_LEVEL: 'log' is not supported yet (ignored)"]
        );
    }

    #[test]
    fn document_level_errors() {
        assert!(err("scope: [unclosed\n").starts_with("node.yml: invalid YAML: "));
        assert_eq!(
            err("- a\n- b\n"),
            "node.yml: the document must be a mapping of keys to values"
        );
        assert_eq!(err(""), "node.yml: scope: missing required key");
        assert!(!err("scope: a\nscope: b\n").contains('\n'));
    }

    #[test]
    fn yaml_merge_keys_and_timeout_warnings() {
        let yaml = NODE.replace(
            "bootstrap:\n  dcs:\n    ttl: 30\n    loop_wait: 10\n    retry_timeout: 10\n",
            "timeouts: &t {ttl: 10, loop_wait: 10, retry_timeout: 10}\nbootstrap:\n  dcs:\n    <<: *t\n",
        );
        let loaded = load(&yaml).unwrap();
        assert_eq!(loaded.config.bootstrap.dcs.ttl, 10);
        assert_eq!(
            loaded.warnings[0],
            "node.yml: unknown key 'timeouts' (ignored)"
        );
        assert!(loaded.warnings[1]
            .starts_with("node.yml: bootstrap.dcs: loop_wait lowered from 10 to 1"));
        assert!(loaded.warnings[2]
            .starts_with("node.yml: bootstrap.dcs: retry_timeout lowered from 10 to 4"));
    }

    #[test]
    fn env_list_formats() {
        assert_eq!(parse_env_list("a:1,b:2"), vec!["a:1", "b:2"]);
        assert_eq!(parse_env_list(" [ 'a:1' , \"b:2\" ] "), vec!["a:1", "b:2"]);
        assert_eq!(parse_env_list("a:1,"), vec!["a:1"]);
        assert!(parse_env_list("").is_empty());
    }

    #[test]
    fn spilo_backup_variables_map_onto_storage_and_backup() {
        let e = env(&[
            ("WAL_S3_BUCKET", "team-backups"),
            ("WAL_BUCKET_SCOPE_PREFIX", "eu-"),
            ("AWS_REGION", "eu-central-1"),
            ("AWS_ENDPOINT", "http://127.0.0.1:9000"),
            ("WALG_S3_SSE", "aws:kms"),
            ("WALG_S3_SSE_KMS_ID", "alias/spilo"),
            ("BACKUP_SCHEDULE", "30 2 * * *"),
            ("BACKUP_NUM_TO_RETAIN", "5"),
            ("WALG_BACKUP_FROM_REPLICA", "true"),
            ("WALG_UPLOAD_CONCURRENCY", "8"),
            ("WALE_BACKUP_THRESHOLD_MEGABYTES", "2048"),
            ("WALE_BACKUP_THRESHOLD_PERCENTAGE", "50"),
        ]);
        let c = load_str(NODE, "node.yml", &e).unwrap().config;
        assert_eq!(c.postgresql.spilo_restore.threshold_megabytes, 2048);
        assert_eq!(c.postgresql.spilo_restore.threshold_percentage, 50);
        assert_eq!(
            c.postgresql.replica_methods(true),
            ["spilo_restore", "basebackup"]
        );
        let s = c.storage.clone().expect("storage from WAL_S3_BUCKET");
        assert_eq!(s.kind, "s3");
        assert_eq!(s.bucket.as_deref(), Some("team-backups"));
        assert_eq!(s.region.as_deref(), Some("eu-central-1"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.sse_kms_key_id.as_deref(), Some("alias/spilo"));
        assert_eq!(
            s.base_prefix(&c.scope, 15),
            format!("spilo/eu-{}/wal/15", c.scope)
        );
        let b = c.backup_settings().expect("backup settings");
        assert_eq!(b.schedule, "30 2 * * *");
        assert_eq!(b.retain.count, Some(5));
        assert!(b.from_replica);
        assert_eq!(b.upload_concurrency, 8);

        // Spilo's clone variables.
        let e = env(&[
            ("WAL_S3_BUCKET", "team-backups"),
            ("CLONE_METHOD", "CLONE_WITH_WALE"),
            ("CLONE_SCOPE", "orders"),
            ("CLONE_TARGET_TIME", "2026-12-01 10:00:00+00"),
            ("CLONE_TARGET_INCLUSIVE", "false"),
            ("CLONE_WAL_S3_BUCKET", "old-backups"),
        ]);
        let c = load_str(NODE, "node.yml", &e).unwrap().config;
        let cl = c.bootstrap.clone_source().expect("clone");
        assert_eq!(cl.scope, "orders");
        assert_eq!(cl.target_time.as_deref(), Some("2026-12-01 10:00:00+00"));
        assert!(!cl.inclusive);
        let src = cl.storage.as_ref().expect("source storage");
        assert_eq!(
            (src.kind.as_str(), src.bucket.as_deref()),
            ("s3", Some("old-backups"))
        );
        let l = load_str(
            NODE,
            "node.yml",
            &env(&[
                ("WAL_S3_BUCKET", "b-1"),
                ("CLONE_METHOD", "CLONE_WITH_BASEBACKUP"),
            ]),
        )
        .unwrap();
        assert!(l.config.bootstrap.clone_source().is_none());
        assert!(
            l.warnings
                .iter()
                .any(|w| w.contains("CLONE_WITH_BASEBACKUP")),
            "{:?}",
            l.warnings
        );
        let e = load_str(
            NODE,
            "node.yml",
            &env(&[
                ("WAL_S3_BUCKET", "b-1"),
                ("CLONE_METHOD", "CLONE_WITH_WALE"),
                ("CLONE_SCOPE", "orders"),
                ("CLONE_TARGET_TIME", "2026-12-01 10:00:00"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no time zone"), "{e}");

        // Spilo's standby variables.
        let e = env(&[
            ("WAL_S3_BUCKET", "team-backups"),
            ("STANDBY_HOST", "10.0.0.7"),
            ("STANDBY_PORT", "5433"),
            ("STANDBY_PRIMARY_SLOT_NAME", "standby_b"),
            ("STANDBY_SCOPE", "orders"),
            ("STANDBY_WAL_S3_BUCKET", "orders-backups"),
            ("STANDBY_AWS_REGION", "eu-west-1"),
        ]);
        let c = load_str(NODE, "node.yml", &e).unwrap().config;
        let sc = crate::config::standby::StandbyCluster::from_dynamic(&c.bootstrap.dcs.extra)
            .expect("valid")
            .expect("a standby_cluster section");
        assert_eq!(
            (
                sc.host.as_deref(),
                sc.port(),
                sc.primary_slot_name.as_deref()
            ),
            (Some("10.0.0.7"), 5433, Some("standby_b"))
        );
        let a = sc.archive().expect("an archive source");
        let st = a.storage.expect("its store");
        assert_eq!(
            (a.scope.as_str(), st.kind.as_str(), st.bucket.as_deref()),
            ("orders", "s3", Some("orders-backups"))
        );
        assert_eq!(st.region.as_deref(), Some("eu-west-1"));
        let e = load_str(
            NODE,
            "node.yml",
            &env(&[("STANDBY_HOST", "h"), ("STANDBY_PORT", "x")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("STANDBY_PORT"), "{e}");
        // A bucket that is this cluster's own, scope and all: refused at load.
        let e = load_str(
            NODE,
            "node.yml",
            &env(&[
                ("WAL_S3_BUCKET", "team-backups"),
                ("STANDBY_WAL_S3_BUCKET", "team-backups"),
                ("STANDBY_SCOPE", c.scope.as_str()),
            ]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("would archive into its source"),
            "{e}"
        );

        // WAL-G's prefix URL: bucket and prefix.
        let e = env(&[("WALG_S3_PREFIX", "s3://other/spilo/x/wal/15")]);
        let s = load_str(NODE, "node.yml", &e)
            .unwrap()
            .config
            .storage
            .unwrap();
        assert_eq!(s.bucket.as_deref(), Some("other"));
        assert_eq!(s.base_prefix("ignored", 15), "spilo/x/wal/15");

        // AWS_REGION alone (no bucket, no storage: section) turns nothing on.
        let c = load_str(NODE, "node.yml", &env(&[("AWS_REGION", "us-east-1")]))
            .unwrap()
            .config;
        assert!(c.storage.is_none() && c.backup_settings().is_none());

        // Bad values name the variable.
        let e = load_str(NODE, "node.yml", &env(&[("WALE_S3_PREFIX", "gs://b/p")])).unwrap_err();
        assert!(e.to_string().contains("WALE_S3_PREFIX"), "{e}");
        let e = load_str(
            NODE,
            "node.yml",
            &env(&[("WAL_S3_BUCKET", "b-1"), ("BACKUP_NUM_TO_RETAIN", "five")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("BACKUP_NUM_TO_RETAIN"), "{e}");
        let e = load_str(
            NODE,
            "node.yml",
            &env(&[("WAL_S3_BUCKET", "b-1"), ("BACKUP_SCHEDULE", "0 25 * * *")]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("BACKUP_SCHEDULE") && e.to_string().contains("hour"),
            "{e}"
        );
    }

    #[test]
    fn storage_and_backup_sections_from_the_file() {
        let yaml = format!(
            "{NODE}storage:\n  type: fs\n  path: /var/lib/spilo/backups\nbackup:\n  retain:\n    pitr_window: 7d\n"
        );
        let c = load_str(&yaml, "node.yml", &[]).unwrap().config;
        assert_eq!(c.storage.unwrap().kind, "fs");
        assert_eq!(c.backup.unwrap().retain.pitr_window.as_deref(), Some("7d"));
        let bad =
            format!("{NODE}storage:\n  type: fs\n  path: /b\nbackup:\n  retian: {{count: 3}}\n");
        let e = load_str(&bad, "node.yml", &[]).unwrap_err();
        assert!(e.to_string().contains("retian"), "{e}");
        let relative = format!("{NODE}storage:\n  type: fs\n  path: backups\n");
        let e = load_str(&relative, "node.yml", &[]).unwrap_err();
        assert!(e.to_string().contains("storage.path"), "{e}");
    }
}
