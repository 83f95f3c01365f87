//! `spiloctl show-config`: the `config` key as YAML.

use serde_json::Value;

use super::common::{fail, CtlResult, Ctx};
use super::output::to_yaml;
use crate::dcs::Cluster;

/// The dynamic configuration as YAML; `{}` when the key is absent. An unreadable key is an
/// error.
pub fn render(c: &Cluster) -> CtlResult<String> {
    if let Some(raw) = &c.config_raw {
        return Ok(to_yaml(&raw.value));
    }
    if let Some((_, why)) = c.warnings.iter().find(|(k, _)| k == "config") {
        return fail(format!("the config key is unreadable: {why}"));
    }
    Ok(to_yaml(&Value::Object(Default::default())))
}

/// What the daemons do with the stored value where it is out of range or mistyped: one line per
/// clamped or dropped key (from decoding the key, then from the timing rules), empty when the
/// value is used as written.
pub fn adjustments(c: &Cluster) -> Vec<String> {
    let mut out: Vec<String> = c
        .warnings
        .iter()
        .filter(|(k, _)| k == "config")
        .map(|(_, w)| w.clone())
        .collect();
    if let Some(cfg) = &c.config {
        let mut d = cfg.value.clone();
        out.extend(crate::config::adjust_timeouts(&mut d));
    }
    out
}

/// `spiloctl show-config`: the stored YAML on stdout (so it can be piped and edited), and on
/// stderr what the daemons run with instead where a stored value is out of range.
pub async fn run(ctx: &Ctx) -> CtlResult {
    let c = ctx.cluster().await?;
    print!("{}", render(&c)?);
    for w in adjustments(&c) {
        eprintln!("warning: config: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::dcs::Versioned;

    #[test]
    fn an_absurd_ttl_is_shown_as_stored_and_reported_as_clamped() {
        let snap = spilo_sdk::Snapshot {
            revision: 1,
            entries: vec![spilo_sdk::Entry {
                key: "config".into(),
                value: br#"{"ttl": 9223372036854775807, "loop_wait": 2, "retry_timeout": 4}"#
                    .to_vec(),
                version: 1,
                owned_by_us: false,
                created: None,
            }],
        };
        let c = crate::dcs::decode_cluster(&snap);
        assert!(render(&c).unwrap().contains("ttl: 9223372036854775807"));
        let adj = adjustments(&c);
        assert_eq!(adj.len(), 1, "{adj:?}");
        assert!(adj[0].starts_with("ttl: 9223372036854775807 is outside 5..=86400"));
        assert_eq!(c.config.as_ref().unwrap().value.ttl, 86_400);
    }

    #[test]
    fn shows_the_raw_config() {
        let mut c = Cluster::default();
        assert_eq!(render(&c).unwrap(), "{}\n");
        c.warnings.push(("config".into(), "invalid JSON".into()));
        assert!(render(&c).unwrap_err().0.contains("invalid JSON"));
        c.config_raw = Some(Versioned {
            value: json!({"loop_wait": 10, "postgresql": {"parameters": {"wal_level": "replica"}},
                          "custom_key": [1]}),
            version: 3,
        });
        assert_eq!(
            render(&c).unwrap(),
            "custom_key:\n- 1\nloop_wait: 10\npostgresql:\n  parameters:\n    wal_level: replica\n"
        );
    }
}
