//! The known shape of the configuration file, used to warn about keys spilo ignores.
//!
//! Unknown keys are never errors: a Patroni configuration must load even when it carries
//! settings spilo does not implement. Each ignored key gives one warning naming the file and the
//! dotted key path.

use serde_yaml::{Mapping, Value};

/// How a key's value is checked.
#[derive(Clone, Copy)]
enum Shape {
    /// A scalar or list interpreted by spilo (its type is checked by deserialization).
    Value,
    /// A mapping whose keys are free-form (GUCs, tags…): not descended into.
    Free,
    /// A mapping with a known set of keys.
    Section(&'static [Key], Unknown),
    /// A Patroni setting spilo does not implement yet.
    Unsupported,
}

/// What to say about an unknown key inside a section.
#[derive(Clone, Copy, PartialEq)]
enum Unknown {
    /// The key is dropped.
    Ignored,
    /// The key is carried over as is (the dynamic configuration keeps every key).
    Kept,
}

#[derive(Clone, Copy)]
struct Key {
    name: &'static str,
    shape: Shape,
}

const fn k(name: &'static str, shape: Shape) -> Key {
    Key { name, shape }
}

const fn v(name: &'static str) -> Key {
    Key {
        name,
        shape: Shape::Value,
    }
}

const fn u(name: &'static str) -> Key {
    Key {
        name,
        shape: Shape::Unsupported,
    }
}

/// The DCS sections Patroni knows; spilo implements only `etcd3`.
pub(crate) const DCS_SECTIONS: &[&str] = &[
    "etcd3",
    "etcd",
    "zookeeper",
    "consul",
    "kubernetes",
    "raft",
    "exhibitor",
];

const TOP: &[Key] = &[
    v("scope"),
    v("namespace"),
    v("name"),
    k("restapi", Shape::Section(RESTAPI, Unknown::Ignored)),
    k("etcd3", Shape::Section(ETCD3, Unknown::Ignored)),
    k("zookeeper", Shape::Section(ZOOKEEPER, Unknown::Ignored)),
    k("bootstrap", Shape::Section(BOOTSTRAP, Unknown::Ignored)),
    k("postgresql", Shape::Section(POSTGRESQL, Unknown::Ignored)),
    k("tags", Shape::Free),
    k("hooks", Shape::Section(HOOKS, Unknown::Ignored)),
    v("plugins"),
    k("dcs", Shape::Free),
    k("storage", Shape::Free),
    k("backup", Shape::Free),
    v("load_balancers"),
    k("aws", Shape::Free),
    u("etcd"),
    u("consul"),
    u("kubernetes"),
    u("raft"),
    u("exhibitor"),
    u("watchdog"),
    u("log"),
    u("ctl"),
    u("citus"),
];

const BASIC_AUTH: &[Key] = &[v("username"), v("password")];

const HOOKS: &[Key] = &[
    v("script"),
    v("timeout"),
    v("instruction_limit"),
    v("memory_limit_mb"),
    v("callback_timeout"),
    k("events", Shape::Section(HOOK_EVENTS, Unknown::Ignored)),
];

const HOOK_LIMITS: &[Key] = &[
    v("timeout"),
    v("instruction_limit"),
    v("memory_limit_mb"),
    v("on_error"),
];

const HOOK_EVENTS: &[Key] = &[
    k("on_start", Shape::Section(HOOK_LIMITS, Unknown::Ignored)),
    k("on_stop", Shape::Section(HOOK_LIMITS, Unknown::Ignored)),
    k("on_restart", Shape::Section(HOOK_LIMITS, Unknown::Ignored)),
    k("on_reload", Shape::Section(HOOK_LIMITS, Unknown::Ignored)),
    k(
        "on_role_change",
        Shape::Section(HOOK_LIMITS, Unknown::Ignored),
    ),
    k("on_promote", Shape::Section(HOOK_LIMITS, Unknown::Ignored)),
    k("on_demote", Shape::Section(HOOK_LIMITS, Unknown::Ignored)),
    k(
        "before_promote",
        Shape::Section(HOOK_LIMITS, Unknown::Ignored),
    ),
    k(
        "choose_failover_candidate",
        Shape::Section(HOOK_LIMITS, Unknown::Ignored),
    ),
];

const CALLBACKS: &[Key] = &[
    v("on_start"),
    v("on_stop"),
    v("on_restart"),
    v("on_reload"),
    v("on_role_change"),
];

const RESTAPI: &[Key] = &[
    v("listen"),
    v("connect_address"),
    k(
        "authentication",
        Shape::Section(BASIC_AUTH, Unknown::Ignored),
    ),
    u("certfile"),
    u("keyfile"),
    u("keyfile_password"),
    u("cafile"),
    u("ciphers"),
    u("verify_client"),
    v("allowlist"),
    v("allowlist_include_members"),
    v("allowed_command_parameters"),
    u("http_extra_headers"),
    u("https_extra_headers"),
    u("request_queue_size"),
    u("server_tokens"),
    u("proxy_address"),
];

const ZOOKEEPER: &[Key] = &[
    v("hosts"),
    v("use_ssl"),
    v("cacert"),
    v("cert"),
    v("key"),
    v("set_acls"),
    v("auth_data"),
    u("key_password"),
    u("verify"),
];

const ETCD3: &[Key] = &[
    v("hosts"),
    v("host"),
    v("protocol"),
    v("cacert"),
    v("cert"),
    v("key"),
    v("username"),
    v("password"),
    u("url"),
    u("proxy"),
    v("srv"),
    v("srv_suffix"),
    u("use_proxies"),
    u("key_password"),
];

const BOOTSTRAP: &[Key] = &[
    k("dcs", Shape::Section(DCS, Unknown::Kept)),
    v("initdb"),
    v("pg_hba"),
    v("method"),
    v("clone"),
    u("post_bootstrap"),
    u("post_init"),
    u("users"),
];

/// `bootstrap.dcs`: the fields spilo interprets plus the other dynamic settings Patroni
/// defines, which are kept as is.
const DCS: &[Key] = &[
    v("ttl"),
    v("loop_wait"),
    v("retry_timeout"),
    v("maximum_lag_on_failover"),
    v("primary_start_timeout"),
    v("master_start_timeout"),
    v("check_timeline"),
    v("pause"),
    k("postgresql", Shape::Section(DCS_POSTGRESQL, Unknown::Kept)),
    v("maximum_lag_on_syncnode"),
    v("max_timelines_history"),
    v("primary_stop_timeout"),
    v("master_stop_timeout"),
    v("primary_race_backoff"),
    v("synchronous_mode"),
    v("synchronous_mode_strict"),
    v("synchronous_node_count"),
    v("failsafe_mode"),
    v("member_slots_ttl"),
    k("standby_cluster", Shape::Free),
    k("slots", Shape::Free),
    v("ignore_slots"),
];

const DCS_POSTGRESQL: &[Key] = &[
    v("use_pg_rewind"),
    v("use_slots"),
    k("parameters", Shape::Free),
    v("pg_hba"),
    v("pg_ident"),
    k("recovery_conf", Shape::Free),
    v("remove_data_directory_on_rewind_failure"),
    v("remove_data_directory_on_diverged_timelines"),
];

const POSTGRESQL: &[Key] = &[
    v("listen"),
    v("connect_address"),
    v("data_dir"),
    v("bin_dir"),
    v("pgpass"),
    k(
        "authentication",
        Shape::Section(AUTHENTICATION, Unknown::Ignored),
    ),
    k("parameters", Shape::Free),
    v("pg_hba"),
    v("use_pg_rewind"),
    v("remove_data_directory_on_rewind_failure"),
    v("pg_ctl_timeout"),
    k("callbacks", Shape::Section(CALLBACKS, Unknown::Ignored)),
    v("create_replica_methods"),
    v("spilo_restore"),
    u("basebackup"),
    u("config_dir"),
    u("proxy_address"),
    u("pg_ident"),
    v("use_unix_socket"),
    v("use_unix_socket_repl"),
    u("recovery_conf"),
    u("custom_conf"),
    u("bin_name"),
    v("pre_promote"),
    u("before_stop"),
    u("use_slots"),
    u("remove_data_directory_on_diverged_timelines"),
];

const AUTHENTICATION: &[Key] = &[
    k("superuser", Shape::Section(CREDENTIALS, Unknown::Ignored)),
    k("replication", Shape::Section(CREDENTIALS, Unknown::Ignored)),
    k("rewind", Shape::Section(CREDENTIALS, Unknown::Ignored)),
];

const CREDENTIALS: &[Key] = &[
    v("username"),
    v("password"),
    u("sslmode"),
    u("sslkey"),
    u("sslpassword"),
    u("sslcert"),
    u("sslrootcert"),
    u("sslcrl"),
    u("sslcrldir"),
    u("gssencmode"),
    u("channel_binding"),
];

/// A mapping key as text (YAML allows non-string keys).
pub(crate) fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        Value::Tagged(t) => key_text(&t.value),
        Value::Sequence(_) | Value::Mapping(_) => "<complex key>".to_string(),
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Names of sections that belong to a configured custom method: `bootstrap.<method>` and
/// `postgresql.<replica method>`. They are reported as unsupported, not unknown.
fn method_sections(map: &Mapping, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let str_of = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    if path == "bootstrap" {
        if let Some(m) = map.get("method").and_then(str_of) {
            out.push(m);
        }
    }
    if path == "postgresql" {
        if let Some(Value::Sequence(methods)) = map.get("create_replica_methods") {
            out.extend(methods.iter().filter_map(str_of));
        }
    }
    out
}

fn walk(
    map: &Mapping,
    keys: &[Key],
    unknown: Unknown,
    path: &str,
    origin: &str,
    out: &mut Vec<String>,
) {
    let methods = method_sections(map, path);
    for (key, value) in map {
        let name = key_text(key);
        let full = join(path, &name);
        match keys.iter().find(|k| k.name == name) {
            Some(Key {
                shape: Shape::Section(sub, sub_unknown),
                ..
            }) => {
                if let Value::Mapping(m) = value {
                    walk(m, sub, *sub_unknown, &full, origin, out);
                }
            }
            Some(Key {
                shape: Shape::Value | Shape::Free,
                ..
            }) => {}
            Some(Key {
                shape: Shape::Unsupported,
                ..
            }) => {
                out.push(format!(
                    "{origin}: key '{full}' is not supported yet (ignored)"
                ));
            }
            None if methods.contains(&name) => {
                out.push(format!(
                    "{origin}: key '{full}' (custom method) is not supported yet (ignored)"
                ));
            }
            None if unknown == Unknown::Kept => {
                out.push(format!(
                    "{origin}: unknown key '{full}' (kept as is, not interpreted)"
                ));
            }
            None => out.push(format!("{origin}: unknown key '{full}' (ignored)")),
        }
    }
}

/// Warnings for every key of `doc` that spilo ignores: unknown keys and Patroni settings spilo
/// does not support yet. `bootstrap.dcs` is checked loosely (Patroni's dynamic keys are
/// accepted) and free-form mappings (`tags`, `*.parameters`) are not descended into.
pub(crate) fn unknown_keys(doc: &Mapping, origin: &str) -> Vec<String> {
    let mut out = Vec::new();
    walk(doc, TOP, Unknown::Ignored, "", origin, &mut out);
    out
}

/// Whether the document has a value at the dotted `path`.
pub(crate) fn has_path(doc: &Mapping, path: &[String]) -> bool {
    let mut cur = doc;
    for (i, part) in path.iter().enumerate() {
        let Some(v) = cur
            .iter()
            .find(|(k, _)| key_text(k) == *part)
            .map(|(_, v)| v)
        else {
            return false;
        };
        if i + 1 == path.len() {
            return !v.is_null();
        }
        match v {
            Value::Mapping(m) => cur = m,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(yaml: &str) -> Vec<String> {
        let doc: Mapping = serde_yaml::from_str(yaml).unwrap();
        unknown_keys(&doc, "c.yml")
    }

    #[test]
    fn unknown_and_unsupported_keys_are_reported_with_paths() {
        let w = warnings(
            "scope: a\nfoo: 1\nzookeeper: {hosts: [z:2181], verify: true}\nrestapi: {certfile: /x, bar: 2}\n\
             postgresql:\n  parameters: {anything: 1}\n  authentication:\n    superuser: {username: p, sslmode: require, x: 1}\n\
             bootstrap:\n  method: mine\n  mine: {command: /bin/true}\n  dcs:\n    synchronous_mode: true\n    nope: 1\n    postgresql:\n      parameters: {whatever: 1}\n      other: 2\n\
             tags: {custom: 1}\n",
        );
        assert_eq!(
            w,
            vec![
                "c.yml: unknown key 'foo' (ignored)",
                "c.yml: key 'zookeeper.verify' is not supported yet (ignored)",
                "c.yml: key 'restapi.certfile' is not supported yet (ignored)",
                "c.yml: unknown key 'restapi.bar' (ignored)",
                "c.yml: key 'postgresql.authentication.superuser.sslmode' is not supported yet (ignored)",
                "c.yml: unknown key 'postgresql.authentication.superuser.x' (ignored)",
                "c.yml: key 'bootstrap.mine' (custom method) is not supported yet (ignored)",
                "c.yml: unknown key 'bootstrap.dcs.nope' (kept as is, not interpreted)",
                "c.yml: unknown key 'bootstrap.dcs.postgresql.other' (kept as is, not interpreted)",
            ]
        );
    }

    #[test]
    fn has_path_follows_mappings() {
        let doc: Mapping = serde_yaml::from_str("a: {b: {c: 1}, n: null}").unwrap();
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert!(has_path(&doc, &p("a.b.c")));
        assert!(has_path(&doc, &p("a.b")));
        assert!(!has_path(&doc, &p("a.n")));
        assert!(!has_path(&doc, &p("a.x")));
        assert!(!has_path(&doc, &p("a.b.c.d")));
    }
}
