//! `aws:` (spilo's own section): the node's side of running in an Auto Scaling Group.
//!
//! ```yaml
//! aws:
//!   lifecycle_hook: spilo-handover   # the group's EC2_INSTANCE_TERMINATING hook: hand over, then complete it
//!   auto_scaling_group: orders       # default: the scope (what `spiloctl aws template` names it)
//!   # imds_endpoint: http://169.254.169.254
//!   # region: eu-central-1           # default: the instance's, from the metadata
//!   # autoscaling_endpoint: http://127.0.0.1:5000
//!   # lifecycle_poll: 5              # seconds between reads of the lifecycle state (1-60)
//!   # access_key_id / secret_access_key: static credentials (default: the instance role)
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::KeyProblem;

/// The instance metadata service on EC2.
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
/// Seconds between two reads of the lifecycle state.
pub const DEFAULT_POLL: u64 = 5;

/// `aws:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// The termination lifecycle hook to honour (none: the lifecycle is not watched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_hook: Option<String>,
    /// The Auto Scaling Group (default: the scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_scaling_group: Option<String>,
    /// The instance metadata service (default: [`DEFAULT_IMDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_endpoint: Option<String>,
    /// The region of the Auto Scaling call (default: the instance's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A custom Auto Scaling endpoint (a local API server in tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling_endpoint: Option<String>,
    /// Seconds between reads of the lifecycle state (1-60, default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_poll: Option<u64>,
    /// Static credentials for the Auto Scaling call (default: the standard chain: environment,
    /// profile, the instance role through `imds_endpoint`). Both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// See `access_key_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
}

impl AwsConfig {
    /// The metadata endpoint.
    pub fn imds(&self) -> &str {
        self.imds_endpoint.as_deref().unwrap_or(DEFAULT_IMDS)
    }

    /// Between two reads of the lifecycle state.
    pub fn poll(&self) -> Duration {
        Duration::from_secs(self.lifecycle_poll.unwrap_or(DEFAULT_POLL))
    }

    /// Checks the section: `(key, problem)` of the first bad value.
    pub fn check(&self) -> Result<(), KeyProblem> {
        let bad = |k: &str, m: String| Err(KeyProblem::new(format!("aws.{k}"), m));
        let name_ok = spilo_aws::autoscaling::name_ok;
        for (k, v) in [
            ("lifecycle_hook", &self.lifecycle_hook),
            ("auto_scaling_group", &self.auto_scaling_group),
        ] {
            if let Some(v) = v {
                if !name_ok(v) {
                    return bad(k, format!("{v:?}: 1-255 letters, digits, '-', '_', '/'"));
                }
            }
        }
        if self.auto_scaling_group.is_some() && self.lifecycle_hook.is_none() {
            return bad(
                "auto_scaling_group",
                "is set without aws.lifecycle_hook: nothing would use it".into(),
            );
        }
        for (k, v) in [
            ("imds_endpoint", &self.imds_endpoint),
            ("autoscaling_endpoint", &self.autoscaling_endpoint),
        ] {
            if let Some(v) = v {
                if !super::lb::url_ok(v) {
                    return bad(k, format!("{v:?} is not an http:// or https:// URL"));
                }
            }
        }
        if let Some(e) = &self.imds_endpoint {
            if e.starts_with("https://") {
                return bad(
                    "imds_endpoint",
                    format!("{e:?}: the instance metadata service speaks http only"),
                );
            }
        }
        if let Some(r) = &self.region {
            if !super::lb::region_ok(r) {
                return bad("region", format!("{r:?} is not a region like eu-central-1"));
            }
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return bad(
                "access_key_id",
                "access_key_id and secret_access_key go together".into(),
            );
        }
        if let Some(p) = self.lifecycle_poll {
            if !(1..=60).contains(&p) {
                return bad("lifecycle_poll", format!("{p} s; 1 to 60"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AwsConfig, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_checks() {
        let a = parse("lifecycle_hook: spilo-handover\n").unwrap();
        a.check().unwrap();
        assert_eq!(a.imds(), DEFAULT_IMDS);
        assert_eq!(a.poll(), Duration::from_secs(5));
        for (yaml, key) in [
            ("lifecycle_hook: 'a b'", "aws.lifecycle_hook"),
            ("auto_scaling_group: g", "aws.auto_scaling_group"),
            (
                "lifecycle_hook: h\nimds_endpoint: 169.254.169.254",
                "aws.imds_endpoint",
            ),
            (
                "lifecycle_hook: h\nimds_endpoint: https://x",
                "aws.imds_endpoint",
            ),
            (
                "lifecycle_hook: h\nautoscaling_endpoint: ftp://x",
                "aws.autoscaling_endpoint",
            ),
            ("lifecycle_hook: h\nregion: EU", "aws.region"),
            ("lifecycle_hook: h\nlifecycle_poll: 0", "aws.lifecycle_poll"),
            ("lifecycle_hook: h\naccess_key_id: AK", "aws.access_key_id"),
            (
                "lifecycle_hook: h\nlifecycle_poll: 9223372036854775807",
                "aws.lifecycle_poll",
            ),
        ] {
            let e = parse(yaml).unwrap().check().expect_err(yaml);
            assert_eq!(e.key, key, "{yaml}: {}", e.message);
        }
        assert!(parse("lifecycle_hok: x")
            .unwrap_err()
            .contains("lifecycle_hok"));
    }
}
