//! What every AWS client of this crate shares: the SDK configuration (the standard credential
//! chain, a region, an optional endpoint, one deadline with three attempts) and the reading of
//! an SDK error into the service's error code or the transport's causes.

use std::time::Duration;

// The SDK's shared types, through one service crate's re-exports (they are the same types in
// every service crate).
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::Region;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// The SDK configuration for `region`/`endpoint` (else the chain's), each call bounded by
/// `timeout` (retries included). None: no region anywhere.
pub async fn config(
    region: Option<&str>,
    endpoint: Option<&str>,
    timeout: Duration,
) -> Option<SdkConfig> {
    let attempts = 3;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .operation_attempt_timeout(timeout / attempts)
        .operation_timeout(timeout)
        .build();
    let retries = RetryConfig::standard()
        .with_max_attempts(attempts)
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(2));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(retries);
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e.to_string());
    }
    let sdk = loader.load().await;
    sdk.region().is_some().then_some(sdk)
}

/// How a call failed.
pub enum Failure {
    /// The service answered with an error: its code (or the HTTP status when it gave none)
    /// and message.
    Service {
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// The service could not be reached or did not answer in time: the causes.
    Transport(String),
}

/// Reads an SDK error.
pub fn failure<E>(e: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            Failure::Service {
                code: match s.err().code() {
                    Some(c) => c.to_string(),
                    None => format!("HTTP {status} without an error code"),
                },
                message: s.err().message().unwrap_or("no message").to_string(),
            }
        }
        _ => Failure::Transport(DisplayErrorContext(&e).to_string()),
    }
}
