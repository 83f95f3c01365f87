//! The backend's settings: parsed from JSON (the plugin's `config`, or a section of the host's
//! configuration) with unknown keys refused, then checked value by value. Every error names
//! the setting.

use std::time::Duration;

use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use serde::Deserialize;

/// The smallest part S3 accepts (every part but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// The default multipart part size.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// The default number of parts uploaded at once.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;
/// The default per-request timeout, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 30.0;
/// The default number of attempts of one request (the first and the retries).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The settings as written (JSON or YAML turned into JSON).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The bucket (required).
    pub bucket: String,
    /// Prepended to every key with a `/` (`prefix: spilo/cluster1` puts `wal/1` at
    /// `spilo/cluster1/wal/1`). Leading and trailing slashes are ignored.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The AWS region; else `AWS_REGION`, the profile or the instance metadata; else
    /// `us-east-1` when `endpoint` is set.
    #[serde(default)]
    pub region: Option<String>,
    /// A custom endpoint URL (`http://127.0.0.1:9000`, an S3-compatible server).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); default true when `endpoint` is set.
    #[serde(default)]
    pub force_path_style: Option<bool>,
    /// Server-side encryption: `AES256` or `aws:kms`.
    #[serde(default)]
    pub sse: Option<String>,
    /// The KMS key of `sse: aws:kms` (else the bucket's or the account's default key).
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
    /// The storage class of new objects (`STANDARD`, `STANDARD_IA`, ...).
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Multipart part size in bytes (default 8 MiB, at least 5 MiB, at most 5 GiB). An object
    /// smaller than one part is one PutObject.
    #[serde(default)]
    pub part_size: Option<u64>,
    /// Allows `part_size` under 5 MiB: only for tests against local S3 servers told to accept
    /// small parts (AWS refuses them).
    #[serde(default)]
    pub allow_small_parts: bool,
    /// Parts uploaded at once (default 4, 1..=64); an upload holds at most
    /// `part_size × (upload_concurrency + 1)` bytes.
    #[serde(default)]
    pub upload_concurrency: Option<usize>,
    /// Per-request timeout in seconds (default 30).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Attempts per request, the first included (default 3, 1..=10), with exponential
    /// back-off between them.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Put-if-absent by S3 conditional writes (`If-None-Match: *`; default true). `false`
    /// checks with a HEAD before the put instead, which races with a concurrent writer: only
    /// for servers that ignore the header.
    #[serde(default)]
    pub conditional_writes: Option<bool>,
    /// Static credentials (else the standard AWS chain: environment, profile, instance role).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret of `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// The session token of temporary static credentials.
    #[serde(default)]
    pub session_token: Option<String>,
}

/// Bad settings: the message names the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("s3 storage settings: {0}")]
pub struct SettingsError(pub String);

fn bad(msg: impl Into<String>) -> SettingsError {
    SettingsError(msg.into())
}

/// The settings checked, defaults filled in.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The bucket.
    pub bucket: String,
    /// The key prefix without leading or trailing slashes, empty for none.
    pub prefix: String,
    /// The region, if set.
    pub region: Option<String>,
    /// The endpoint, if set.
    pub endpoint: Option<String>,
    /// Path-style addressing.
    pub force_path_style: bool,
    /// Server-side encryption.
    pub sse: Option<ServerSideEncryption>,
    /// The KMS key.
    pub sse_kms_key_id: Option<String>,
    /// The storage class.
    pub storage_class: Option<StorageClass>,
    /// The part size.
    pub part_size: usize,
    /// Parts in flight.
    pub upload_concurrency: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Attempts per request.
    pub max_attempts: u32,
    /// Put-if-absent by `If-None-Match: *`.
    pub conditional_writes: bool,
    /// Static credentials: key id, secret, session token.
    pub credentials: Option<(String, String, Option<String>)>,
}

/// A valid bucket name: 3..=63 characters of lowercase letters, digits, `.` and `-`, starting
/// and ending with a letter or digit (S3's rules; legacy names with capitals or `_` in
/// us-east-1 are allowed too).
fn check_bucket(b: &str) -> Result<(), SettingsError> {
    if b.is_empty() {
        return Err(bad("bucket: empty (the name of the S3 bucket)"));
    }
    let ok_chars = b
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
    let ok_ends = b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric();
    if !(3..=255).contains(&b.len()) || !ok_chars || !ok_ends {
        return Err(bad(format!(
            "bucket: {b:?} is not a bucket name (3 to 63 letters, digits, '.' and '-', \
             starting and ending with a letter or digit)"
        )));
    }
    Ok(())
}

impl S3Settings {
    /// Parses `v`: unknown keys and wrong types are refused, naming the key.
    pub fn from_json(v: &serde_json::Value) -> Result<S3Settings, SettingsError> {
        if v.is_null() {
            return Err(bad(
                "missing (an object with at least \"bucket\"; see plugins/storage-s3)",
            ));
        }
        S3Settings::deserialize(v).map_err(|e| bad(e.to_string()))
    }

    /// Checks every value and fills in the defaults.
    pub fn resolve(&self) -> Result<Resolved, SettingsError> {
        check_bucket(&self.bucket)?;
        let prefix = self
            .prefix
            .as_deref()
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        if !prefix.is_empty() && crate::keys::check_key(&prefix).is_err() {
            return Err(bad(format!(
                "prefix: {prefix:?} is not a plain relative path ([A-Za-z0-9._-] components \
                 separated by '/', no '.' or '..')"
            )));
        }
        if let Some(r) = &self.region {
            if r.is_empty() || !r.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                return Err(bad(format!("region: {r:?} is not a region name")));
            }
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                return Err(bad(format!(
                    "endpoint: {e:?} is not an http:// or https:// URL"
                )));
            }
        }
        let sse = match self.sse.as_deref() {
            None => None,
            Some("AES256") => Some(ServerSideEncryption::Aes256),
            Some("aws:kms") => Some(ServerSideEncryption::AwsKms),
            Some(other) => return Err(bad(format!("sse: {other:?} is not AES256 or aws:kms"))),
        };
        if self.sse_kms_key_id.is_some() && sse != Some(ServerSideEncryption::AwsKms) {
            return Err(bad("sse_kms_key_id: only with sse: aws:kms"));
        }
        let storage_class = match self.storage_class.as_deref() {
            None => None,
            Some(s) if StorageClass::values().contains(&s) => Some(StorageClass::from(s)),
            Some(s) => {
                return Err(bad(format!(
                    "storage_class: {s:?} is not one of {}",
                    StorageClass::values().join(", ")
                )))
            }
        };
        let part_size = self.part_size.unwrap_or(DEFAULT_PART_SIZE);
        let min = if self.allow_small_parts {
            1
        } else {
            MIN_PART_SIZE
        };
        if part_size < min || part_size > MAX_PART_SIZE {
            return Err(bad(format!(
                "part_size: {part_size} is out of range ({min} to {MAX_PART_SIZE} bytes; \
                 S3 refuses parts under 5 MiB but the last)"
            )));
        }
        let part_size = usize::try_from(part_size)
            .map_err(|_| bad(format!("part_size: {part_size} is too large here")))?;
        let upload_concurrency = self
            .upload_concurrency
            .unwrap_or(DEFAULT_UPLOAD_CONCURRENCY);
        if !(1..=64).contains(&upload_concurrency) {
            return Err(bad(format!(
                "upload_concurrency: {upload_concurrency} is out of range (1 to 64)"
            )));
        }
        let secs = self.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
            return Err(bad(format!(
                "timeout: {secs} is out of range (seconds, more than 0, at most 3600)"
            )));
        }
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=10).contains(&max_attempts) {
            return Err(bad(format!(
                "max_attempts: {max_attempts} is out of range (1 to 10)"
            )));
        }
        let credentials = match (&self.access_key_id, &self.secret_access_key) {
            (Some(k), Some(s)) if !k.is_empty() && !s.is_empty() => {
                Some((k.clone(), s.clone(), self.session_token.clone()))
            }
            (None, None) if self.session_token.is_none() => None,
            (None, None) => {
                return Err(bad(
                    "session_token: only with access_key_id and secret_access_key",
                ))
            }
            _ => {
                return Err(bad(
                    "access_key_id and secret_access_key: give both (non-empty) or neither",
                ))
            }
        };
        Ok(Resolved {
            bucket: self.bucket.clone(),
            prefix,
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            force_path_style: self.force_path_style.unwrap_or(self.endpoint.is_some()),
            sse,
            sse_kms_key_id: self.sse_kms_key_id.clone(),
            storage_class,
            part_size,
            upload_concurrency,
            timeout: Duration::from_secs_f64(secs),
            max_attempts,
            conditional_writes: self.conditional_writes.unwrap_or(true),
            credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: serde_json::Value) -> String {
        match S3Settings::from_json(&v).and_then(|s| s.resolve()) {
            Ok(r) => panic!("accepted {v}: {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let r = S3Settings::from_json(&json!({"bucket": "b-1"}))
            .and_then(|s| s.resolve())
            .expect("valid");
        assert_eq!(r.part_size, 8 << 20);
        assert_eq!(r.upload_concurrency, 4);
        assert_eq!(r.timeout, Duration::from_secs(30));
        assert!(!r.force_path_style);
        assert!(r.conditional_writes);
        assert_eq!(r.prefix, "");
        let r = S3Settings::from_json(
            &json!({"bucket": "b-1", "endpoint": "http://127.0.0.1:9000", "prefix": "/x/y/"}),
        )
        .and_then(|s| s.resolve())
        .expect("valid");
        assert!(r.force_path_style);
        assert_eq!(r.prefix, "x/y");
    }

    #[test]
    fn bad_settings_name_the_key() {
        let cases = [
            (json!({"bucket": "b-1", "buckett": "x"}), "buckett"),
            (json!({"prefix": "x"}), "bucket"),
            (json!({"bucket": 3}), "invalid type"),
            (json!({"bucket": "ab"}), "bucket"),
            (json!({"bucket": "b-1", "part_size": 1024}), "part_size"),
            (
                json!({"bucket": "b-1", "upload_concurrency": 0}),
                "upload_concurrency",
            ),
            (json!({"bucket": "b-1", "timeout": 0}), "timeout"),
            (json!({"bucket": "b-1", "sse": "DES"}), "sse"),
            (
                json!({"bucket": "b-1", "sse_kms_key_id": "k"}),
                "sse_kms_key_id",
            ),
            (
                json!({"bucket": "b-1", "storage_class": "CHEAP"}),
                "storage_class",
            ),
            (
                json!({"bucket": "b-1", "endpoint": "localhost:9000"}),
                "endpoint",
            ),
            (json!({"bucket": "b-1", "prefix": "a/../b"}), "prefix"),
            (
                json!({"bucket": "b-1", "access_key_id": "AK"}),
                "secret_access_key",
            ),
            (json!(null), "bucket"),
        ];
        for (v, want) in cases {
            let e = err(v.clone());
            assert!(e.contains(want), "{v}: {e:?} does not name {want:?}");
            assert!(e.starts_with("s3 storage settings: "), "{e}");
        }
    }

    #[test]
    fn small_parts_only_when_allowed() {
        let r = S3Settings::from_json(
            &json!({"bucket": "b-1", "part_size": 65536, "allow_small_parts": true}),
        )
        .and_then(|s| s.resolve())
        .expect("valid");
        assert_eq!(r.part_size, 65536);
    }
}
