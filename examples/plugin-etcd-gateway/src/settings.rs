//! The plugin's own settings: the `dcs:` section of the node configuration (minus `plugin`),
//! which the host passes as `PluginConfig.config`.
//!
//! ```yaml
//! dcs:
//!   plugin: etcd-gateway
//!   hosts: ["10.0.0.1:2379", "10.0.0.2:2379"]   # or "10.0.0.1:2379,10.0.0.2:2379"
//!   username: spilo        # optional, etcd authentication
//!   password: secret
//! ```
//!
//! Other keys of the section (`ttl`, `loop_wait`, …) belong to the host and are ignored.

use serde_json::Value;
use spilo_sdk::plugin::PluginError;

/// Where etcd is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// `host:port` of every etcd member, tried in this order.
    pub hosts: Vec<String>,
    /// etcd user name and password, when etcd authentication is enabled.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for GatewaySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySettings")
            .field("hosts", &self.hosts)
            .field("username", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl GatewaySettings {
    /// Reads the settings; an error names the offending key (`hosts: …`).
    ///
    /// ```
    /// use spilo_plugin_etcd_gateway::GatewaySettings;
    /// let s = GatewaySettings::parse(&serde_json::json!({"hosts": "a:2379, http://b:2379"})).unwrap();
    /// assert_eq!(s.hosts, ["a:2379", "b:2379"]);
    /// assert!(GatewaySettings::parse(&serde_json::json!({"hosts": ["a"]}))
    ///     .unwrap_err().message.starts_with("hosts: "));
    /// ```
    pub fn parse(config: &Value) -> Result<GatewaySettings, PluginError> {
        let invalid = |key: &str, what: String| PluginError::invalid(format!("{key}: {what}"));
        if !config.is_object() {
            return Err(PluginError::invalid(
                "plugin settings must be a map (the dcs: section)",
            ));
        }
        let raw: Vec<String> = match config.get("hosts") {
            None | Some(Value::Null) => {
                return Err(invalid("hosts", "missing (a list of host:port)".into()))
            }
            Some(Value::String(s)) => s.split(',').map(str::to_string).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| invalid("hosts", format!("{item} is not a string")))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(invalid(
                    "hosts",
                    format!("{other} is neither a list nor a string"),
                ))
            }
        };
        let mut hosts = Vec::new();
        for host in raw {
            let host = host.trim();
            if host.is_empty() {
                continue;
            }
            hosts.push(check_host(host).map_err(|what| invalid("hosts", what))?);
        }
        if hosts.is_empty() {
            return Err(invalid("hosts", "empty".into()));
        }
        let text = |key: &str| match config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(key, format!("{other} is not a string"))),
        };
        let credentials = match (text("username")?, text("password")?) {
            (Some(user), password) if !user.is_empty() => {
                Some((user, password.unwrap_or_default()))
            }
            (_, Some(_)) => {
                return Err(invalid("password", "given without a username".into()));
            }
            _ => None,
        };
        Ok(GatewaySettings { hosts, credentials })
    }
}

/// `host:port` without scheme; `http://` is accepted and dropped, `https://` refused.
fn check_host(host: &str) -> Result<String, String> {
    if host.starts_with("https://") {
        return Err(format!("{host}: https is not supported (plain http only)"));
    }
    let bare = host
        .strip_prefix("http://")
        .unwrap_or(host)
        .trim_end_matches('/');
    let Some((name, port)) = bare.rsplit_once(':') else {
        return Err(format!("{host}: expected host:port"));
    };
    if name.is_empty() || name.contains('/') || name.contains(char::is_whitespace) {
        return Err(format!("{host}: expected host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(bare.to_string()),
        _ => Err(format!("{host}: bad port {port:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hosts_come_as_a_list_or_a_comma_separated_string() {
        let list = GatewaySettings::parse(&json!({"hosts": ["127.0.0.1:2379", "[::1]:2380"]}));
        assert_eq!(
            list.map(|s| s.hosts),
            Ok(vec!["127.0.0.1:2379".to_string(), "[::1]:2380".to_string()])
        );
        let text = GatewaySettings::parse(&json!({"hosts": "a:1,,http://b:2/", "ttl": 30}));
        assert_eq!(
            text.map(|s| s.hosts),
            Ok(vec!["a:1".to_string(), "b:2".to_string()])
        );
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (config, key) in [
            (json!({}), "hosts: "),
            (json!({"hosts": []}), "hosts: "),
            (json!({"hosts": 5}), "hosts: "),
            (json!({"hosts": [1]}), "hosts: "),
            (json!({"hosts": ["a:x"]}), "hosts: "),
            (json!({"hosts": ["https://a:1"]}), "hosts: "),
            (json!({"hosts": ["a:1"], "username": 3}), "username: "),
            (json!({"hosts": ["a:1"], "password": "p"}), "password: "),
        ] {
            let e = GatewaySettings::parse(&config).expect_err("invalid");
            assert_eq!(e.status, spilo_sdk::abi::STATUS_INVALID);
            assert!(e.message.starts_with(key), "{config}: {}", e.message);
        }
        assert!(GatewaySettings::parse(&json!(null)).is_err());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let s = GatewaySettings::parse(&json!({"hosts": "a:1", "username": "u", "password": "pw"}))
            .expect("valid");
        assert_eq!(s.credentials, Some(("u".to_string(), "pw".to_string())));
        assert!(!format!("{s:?}").contains("pw"));
    }
}
