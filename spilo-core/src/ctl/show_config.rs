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

/// `spiloctl show-config`.
pub async fn run(ctx: &Ctx) -> CtlResult {
    let c = ctx.cluster().await?;
    print!("{}", render(&c)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::dcs::Versioned;

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
