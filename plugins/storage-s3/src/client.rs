//! The S3 client built from the settings, and the mapping of the SDK's errors to
//! [`StorageError`] that keeps what S3 said (its error code and message, the HTTP status).

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use spilo_sdk::storage::StorageError;

use crate::settings::Resolved;

/// What every call needs: the client and the settings.
pub(crate) struct Inner {
    pub client: Client,
    pub cfg: Resolved,
}

/// The region used with a custom endpoint when none is configured anywhere.
const ENDPOINT_DEFAULT_REGION: &str = "us-east-1";
/// Longest pause between two attempts of a request.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Inner {
    /// Builds the client. Credentials are resolved lazily (at the first request), from the
    /// static ones in the settings or else the standard AWS chain (environment, profile, web
    /// identity, ECS, IMDSv2 instance role).
    pub async fn build(cfg: Resolved) -> Result<Inner, StorageError> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .operation_attempt_timeout(cfg.timeout)
            .operation_timeout(cfg.timeout * cfg.max_attempts + MAX_BACKOFF * cfg.max_attempts)
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(cfg.max_attempts)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(MAX_BACKOFF);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(retries);
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some((key, secret, token)) = &cfg.credentials {
            loader = loader.credentials_provider(Credentials::new(
                key.clone(),
                secret.clone(),
                token.clone(),
                None,
                "spilo-s3-settings",
            ));
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(cfg.force_path_style);
        if sdk.region().is_none() {
            if cfg.endpoint.is_some() {
                b = b.region(Region::new(ENDPOINT_DEFAULT_REGION));
            } else {
                return Err(StorageError::Refused {
                    op: "connect",
                    message: "s3 storage settings: region: not set, and none found in \
                              AWS_REGION, the AWS profile or the instance metadata"
                        .into(),
                });
            }
        }
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e.clone());
        }
        Ok(Inner {
            client: Client::from_conf(b.build()),
            cfg,
        })
    }

    /// The object key of `key`: the prefix and the key joined by `/`.
    pub fn object(&self, key: &str) -> String {
        crate::keys::join(&self.cfg.prefix, key)
    }

    /// The SDK's error as a [`StorageError`]: `NoSuchKey` (or a 404 without a code, as HEAD
    /// answers) is `NotFound`; time-outs are `Timeout`; connection failures `Unreachable`;
    /// everything else `Refused` with S3's error code and message.
    pub fn error<E>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &e {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = se.err().code();
                if matches!(code, Some("NoSuchKey" | "NotFound"))
                    || (status == 404 && code.is_none())
                {
                    return StorageError::NotFound { key: key.into() };
                }
                let mut message = self.describe(code, se.err().message(), status);
                if code.is_none() {
                    // No code to name: say what the SDK saw instead.
                    message = format!("{message}: {}", DisplayErrorContext(&e));
                }
                StorageError::Refused { op, message }
            }
            SdkError::TimeoutError(_) => StorageError::Timeout {
                op,
                after: self.cfg.timeout,
            },
            SdkError::DispatchFailure(d) if d.is_timeout() => StorageError::Timeout {
                op,
                after: self.cfg.timeout,
            },
            SdkError::DispatchFailure(_) => StorageError::Unreachable {
                op,
                message: format!("{} ({})", DisplayErrorContext(&e), self.where_()),
            },
            SdkError::ResponseError(r) => StorageError::Unreachable {
                op,
                message: format!(
                    "unreadable answer, HTTP {}: {} ({})",
                    r.raw().status().as_u16(),
                    DisplayErrorContext(&e),
                    self.where_()
                ),
            },
            _ => StorageError::Refused {
                op,
                message: format!("{} ({})", DisplayErrorContext(&e), self.where_()),
            },
        }
    }

    /// `CODE: message (HTTP status, bucket B at endpoint E)`.
    pub fn describe(&self, code: Option<&str>, message: Option<&str>, status: u16) -> String {
        format!(
            "{}: {} (HTTP {status}, {})",
            code.unwrap_or("no error code"),
            message.unwrap_or("no message"),
            self.where_()
        )
    }

    fn where_(&self) -> String {
        match &self.cfg.endpoint {
            Some(e) => format!("bucket {} at {e}", self.cfg.bucket),
            None => format!("bucket {}", self.cfg.bucket),
        }
    }
}

/// True for an answer that a conditional write lost: 412 `PreconditionFailed` (the object
/// exists) or 409 `ConditionalRequestConflict` (a concurrent conditional write is in progress).
pub(crate) fn precondition<E: ProvideErrorMetadata>(
    e: &SdkError<E, HttpResponse>,
) -> Option<Precondition> {
    let SdkError::ServiceError(se) = e else {
        return None;
    };
    match (se.raw().status().as_u16(), se.err().code()) {
        (412, _) | (_, Some("PreconditionFailed")) => Some(Precondition::Exists),
        (409, Some("ConditionalRequestConflict")) => Some(Precondition::Conflict),
        _ => None,
    }
}

/// How a conditional write lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Precondition {
    /// The object exists.
    Exists,
    /// Another conditional write to the key is in progress: retry.
    Conflict,
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    fn inner() -> Inner {
        let cfg = crate::S3Settings {
            bucket: "b-1".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        }
        .resolve()
        .expect("settings");
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .build();
        Inner {
            client: Client::from_conf(conf),
            cfg,
        }
    }

    /// An S3 answer with `status` and, if given, an error code and message.
    fn answer(
        status: u16,
        code: Option<&str>,
        msg: &str,
    ) -> SdkError<PutObjectError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message(msg);
        if let Some(c) = code {
            meta = meta.code(c);
        }
        let status = status.try_into().expect("status code");
        SdkError::service_error(
            PutObjectError::generic(meta.build()),
            HttpResponse::new(status, SdkBody::empty()),
        )
    }

    #[test]
    fn lost_conditional_writes_are_recognised() {
        let cases = [
            (412, Some("PreconditionFailed"), Some(Precondition::Exists)),
            (412, None, Some(Precondition::Exists)),
            (
                409,
                Some("ConditionalRequestConflict"),
                Some(Precondition::Conflict),
            ),
            (409, Some("OperationAborted"), None),
            (403, Some("AccessDenied"), None),
            (404, Some("NoSuchBucket"), None),
        ];
        for (status, code, want) in cases {
            assert_eq!(
                precondition(&answer(status, code, "m")),
                want,
                "{status} {code:?}"
            );
        }
        let other: SdkError<PutObjectError, HttpResponse> =
            SdkError::timeout_error("slow".to_string());
        assert_eq!(precondition(&other), None);
    }

    #[test]
    fn errors_keep_what_s3_said() {
        let i = inner();
        let e = i.error("get_open", "wal/1", answer(404, Some("NoSuchKey"), "gone"));
        assert!(
            matches!(e, StorageError::NotFound { ref key } if key == "wal/1"),
            "{e:?}"
        );
        let e = i.error("head", "wal/1", answer(404, None, ""));
        assert!(matches!(e, StorageError::NotFound { .. }), "{e:?}");
        let e = i.error(
            "list",
            "",
            answer(
                404,
                Some("NoSuchBucket"),
                "The specified bucket does not exist",
            ),
        );
        let msg = e.to_string();
        assert!(matches!(e, StorageError::Refused { .. }), "{e:?}");
        assert!(
            msg.contains("NoSuchBucket: The specified bucket does not exist (HTTP 404, bucket b-1")
                && !msg.contains("service error"),
            "{msg}"
        );
        let msg = i
            .error("put_finish", "k", answer(403, Some("AccessDenied"), "nope"))
            .to_string();
        assert!(msg.contains("AccessDenied: nope (HTTP 403"), "{msg}");
        let msg = i
            .error("put_finish", "k", answer(500, None, ""))
            .to_string();
        assert!(
            msg.contains("no error code") && msg.contains("HTTP 500"),
            "{msg}"
        );
    }

    #[test]
    fn timeouts_and_connection_failures() {
        let i = inner();
        let t: SdkError<PutObjectError, HttpResponse> = SdkError::timeout_error("slow".to_string());
        assert!(matches!(
            i.error("head", "k", t),
            StorageError::Timeout { op: "head", .. }
        ));
        let t: SdkError<PutObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::timeout("read timed out".into()));
        assert!(matches!(
            i.error("head", "k", t),
            StorageError::Timeout { .. }
        ));
        let refused: SdkError<PutObjectError, HttpResponse> = SdkError::dispatch_failure(
            ConnectorError::io("Connection refused (os error 111)".into()),
        );
        match i.error("head", "k", refused) {
            StorageError::Unreachable { message, .. } => {
                assert!(message.contains("Connection refused"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
