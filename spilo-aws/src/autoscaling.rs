//! Auto Scaling lifecycle actions: a node told by the instance metadata that its group is
//! terminating it hands over, then completes the `autoscaling:EC2_INSTANCE_TERMINATING`
//! lifecycle action so that the group goes on at once instead of waiting for the hook's
//! heartbeat timeout. The daemon runs `spiloctl aws complete-lifecycle-action` for this.

use std::time::Duration;

use aws_sdk_autoscaling::config::http::HttpResponse;
use aws_sdk_autoscaling::error::{ProvideErrorMetadata, SdkError};

/// Where Auto Scaling is and what to complete.
#[derive(Clone, Debug)]
pub struct Completion {
    /// The group.
    pub group: String,
    /// The lifecycle hook.
    pub hook: String,
    /// The instance being terminated.
    pub instance_id: String,
    /// `CONTINUE` (go on terminating) or `ABANDON`.
    pub result: String,
    /// The region (else the AWS chain's).
    pub region: Option<String>,
    /// A custom endpoint (else `AWS_ENDPOINT_URL_AUTO_SCALING` / `AWS_ENDPOINT_URL`, else
    /// AWS's).
    pub endpoint: Option<String>,
    /// The longest the call may take, retries included.
    pub timeout: Duration,
}

/// Why the action could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// A setting Auto Scaling would refuse anyway.
    #[error("{0}")]
    Invalid(String),
    /// No region anywhere.
    #[error("no AWS region: give --region, or set AWS_REGION or a profile's region")]
    NoRegion,
    /// Auto Scaling answered with an error (`ValidationError` for an unknown hook or an
    /// action already completed, `AccessDenied`, …).
    #[error("Auto Scaling CompleteLifecycleAction: {code}: {message}")]
    Service {
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// Auto Scaling could not be reached, or did not answer in time.
    #[error("Auto Scaling CompleteLifecycleAction: {0}")]
    Transport(String),
}

/// Auto Scaling's names (group, hook) and instance ids: 1-255 letters, digits, '-', '_', '/'.
pub fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c))
}

impl Completion {
    /// Refuses what the API would: empty or odd names, an unknown result.
    pub fn check(&self) -> Result<(), LifecycleError> {
        for (what, v) in [
            ("group", &self.group),
            ("hook", &self.hook),
            ("instance id", &self.instance_id),
        ] {
            if !name_ok(v) {
                return Err(LifecycleError::Invalid(format!(
                    "{what} {v:?}: 1-255 letters, digits and - _ /"
                )));
            }
        }
        if self.result != "CONTINUE" && self.result != "ABANDON" {
            return Err(LifecycleError::Invalid(format!(
                "result {:?}: CONTINUE or ABANDON",
                self.result
            )));
        }
        Ok(())
    }

    /// Completes the lifecycle action.
    pub async fn send(&self) -> Result<(), LifecycleError> {
        self.check()?;
        let sdk = crate::sdk::config(
            self.region.as_deref(),
            self.endpoint.as_deref(),
            self.timeout,
        )
        .await
        .ok_or(LifecycleError::NoRegion)?;
        let client = aws_sdk_autoscaling::Client::new(&sdk);
        client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(&self.hook)
            .instance_id(&self.instance_id)
            .lifecycle_action_result(&self.result)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }
}

fn sdk_error<E>(e: SdkError<E, HttpResponse>) -> LifecycleError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match crate::sdk::failure(e) {
        crate::sdk::Failure::Service { code, message } => LifecycleError::Service { code, message },
        crate::sdk::Failure::Transport(d) => LifecycleError::Transport(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion() -> Completion {
        Completion {
            group: "orders".into(),
            hook: "spilo-handover".into(),
            instance_id: "i-0123456789abcdef0".into(),
            result: "CONTINUE".into(),
            region: Some("eu-west-1".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn odd_settings_are_refused_before_any_call() {
        completion().check().expect("valid");
        for c in [
            Completion {
                group: String::new(),
                ..completion()
            },
            Completion {
                hook: "a b".into(),
                ..completion()
            },
            Completion {
                result: "continue".into(),
                ..completion()
            },
        ] {
            assert!(
                matches!(c.check(), Err(LifecycleError::Invalid(_))),
                "{c:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_transport_error_not_a_hang() {
        let e = completion().send().await.expect_err("nothing on port 9");
        assert!(matches!(e, LifecycleError::Transport(_)), "{e:?}");
    }
}
