//! KMS secrets: a value written `aws:kms:<base64 of a KMS ciphertext blob>` (as senza's Spilo
//! templates stored passwords) is opened with KMS `Decrypt` on the node that needs it, so the
//! secret itself is never written to disk or to a config file.
//!
//! Credentials and region come from the standard AWS chain (environment, profile, web identity,
//! the instance role through IMDSv2); the endpoint from `--endpoint`, `AWS_ENDPOINT_URL_KMS` or
//! `AWS_ENDPOINT_URL` (tests point it at moto). Every call is bounded by a timeout.

use std::time::Duration;

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use base64::Engine as _;

/// The prefix that marks a KMS secret.
pub const PREFIX: &str = "aws:kms:";

/// KMS refuses to encrypt more than this many bytes directly.
pub const MAX_PLAINTEXT: usize = 4096;
/// A ciphertext blob is at most 6 KiB; its base64 a little more.
const MAX_SECRET_TEXT: usize = 16 * 1024;

/// Where KMS is and how long to wait for it.
#[derive(Clone, Debug)]
pub struct Options {
    /// The region (else the AWS chain's).
    pub region: Option<String>,
    /// A custom endpoint (else the chain's `AWS_ENDPOINT_URL_KMS` / `AWS_ENDPOINT_URL`, else
    /// AWS's).
    pub endpoint: Option<String>,
    /// The longest one call may take, retries included.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            region: None,
            endpoint: None,
            timeout: Duration::from_secs(20),
        }
    }
}

/// Why a secret could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The text is not an `aws:kms:` secret.
    #[error("not a KMS secret: {0}")]
    Malformed(String),
    /// The plaintext is empty or longer than KMS accepts.
    #[error("the plaintext is {0} bytes; KMS encrypts 1 to 4096 bytes")]
    PlaintextSize(usize),
    /// No region anywhere.
    #[error("no AWS region: give --region, or set AWS_REGION or a profile's region")]
    NoRegion,
    /// KMS answered with an error (its code, e.g. `InvalidCiphertextException`,
    /// `AccessDeniedException`, `NotFoundException`).
    #[error("KMS {op}: {code}: {message}")]
    Service {
        /// The call.
        op: &'static str,
        /// KMS's error code.
        code: String,
        /// KMS's message.
        message: String,
    },
    /// KMS could not be reached, or did not answer in time.
    #[error("KMS {op}: {detail}")]
    Transport {
        /// The call.
        op: &'static str,
        /// What failed, with its causes.
        detail: String,
    },
}

/// Whether `text` is written as a KMS secret.
pub fn is_secret(text: &str) -> bool {
    text.trim_start().starts_with(PREFIX)
}

/// The ciphertext blob of an `aws:kms:<base64>` text.
pub fn parse_secret(text: &str) -> Result<Vec<u8>, KmsError> {
    let t = text.trim();
    if t.len() > MAX_SECRET_TEXT {
        return Err(KmsError::Malformed(format!(
            "{} bytes, more than a KMS ciphertext can be",
            t.len()
        )));
    }
    let Some(b64) = t.strip_prefix(PREFIX) else {
        return Err(KmsError::Malformed(format!(
            "it does not start with '{PREFIX}'"
        )));
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| {
            KmsError::Malformed(format!("the text after '{PREFIX}' is not base64: {e}"))
        })?;
    if blob.is_empty() {
        return Err(KmsError::Malformed(format!("nothing after '{PREFIX}'")));
    }
    Ok(blob)
}

/// `aws:kms:<base64>` of a ciphertext blob.
pub fn format_secret(blob: &[u8]) -> String {
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// A KMS client.
pub struct Kms {
    client: aws_sdk_kms::Client,
}

impl Kms {
    /// Builds the client (credentials are resolved at the first call).
    pub async fn connect(o: &Options) -> Result<Kms, KmsError> {
        let sdk = crate::sdk::config(o.region.as_deref(), o.endpoint.as_deref(), o.timeout)
            .await
            .ok_or(KmsError::NoRegion)?;
        Ok(Kms {
            client: aws_sdk_kms::Client::new(&sdk),
        })
    }

    /// Opens a ciphertext blob (KMS finds the key from the blob).
    pub async fn decrypt(&self, blob: &[u8]) -> Result<Vec<u8>, KmsError> {
        let out = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(blob))
            .send()
            .await
            .map_err(|e| sdk_error("Decrypt", e))?;
        out.plaintext
            .map(|p| p.into_inner())
            .ok_or_else(|| KmsError::Transport {
                op: "Decrypt",
                detail: "the answer carries no plaintext".into(),
            })
    }

    /// Seals `plain` under `key_id` (a key id, ARN or `alias/…`).
    pub async fn encrypt(&self, key_id: &str, plain: &[u8]) -> Result<Vec<u8>, KmsError> {
        if plain.is_empty() || plain.len() > MAX_PLAINTEXT {
            return Err(KmsError::PlaintextSize(plain.len()));
        }
        let out = self
            .client
            .encrypt()
            .key_id(key_id)
            .plaintext(Blob::new(plain))
            .send()
            .await
            .map_err(|e| sdk_error("Encrypt", e))?;
        blob_of(out.ciphertext_blob, "Encrypt")
    }

    /// A new random 256-bit data key sealed under `key_id`; only the sealed form is returned,
    /// the plaintext never leaves KMS here.
    pub async fn generate_data_key(&self, key_id: &str) -> Result<Vec<u8>, KmsError> {
        let out = self
            .client
            .generate_data_key_without_plaintext()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await
            .map_err(|e| sdk_error("GenerateDataKeyWithoutPlaintext", e))?;
        blob_of(out.ciphertext_blob, "GenerateDataKeyWithoutPlaintext")
    }
}

fn blob_of(b: Option<Blob>, op: &'static str) -> Result<Vec<u8>, KmsError> {
    b.map(|b| b.into_inner())
        .ok_or_else(|| KmsError::Transport {
            op,
            detail: "the answer carries no ciphertext".into(),
        })
}

fn sdk_error<E>(op: &'static str, e: SdkError<E, HttpResponse>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match crate::sdk::failure(e) {
        crate::sdk::Failure::Service { code, message } => KmsError::Service { op, code, message },
        crate::sdk::Failure::Transport(detail) => KmsError::Transport { op, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_bad_ones_are_named() {
        let s = format_secret(b"\x01\x02blob");
        assert!(s.starts_with("aws:kms:"));
        assert!(is_secret(&format!("  {s}\n")));
        assert_eq!(parse_secret(&format!("{s}\n")).unwrap(), b"\x01\x02blob");
        for (text, says) in [
            ("aws:kms:", "nothing after"),
            ("aws:kms:***", "not base64"),
            ("kms:AAAA", "does not start with"),
        ] {
            let e = parse_secret(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        let huge = format!("aws:kms:{}", "A".repeat(20_000));
        assert!(parse_secret(&huge)
            .unwrap_err()
            .to_string()
            .contains("more than"));
        assert!(!is_secret("0123abcd"));
    }

    #[tokio::test]
    async fn a_plaintext_kms_cannot_take_is_refused_before_any_call() {
        let k = Kms::connect(&Options {
            region: Some("eu-west-1".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            timeout: Duration::from_secs(1),
        })
        .await
        .unwrap();
        for n in [0, MAX_PLAINTEXT + 1] {
            match k.encrypt("alias/x", &vec![7; n]).await {
                Err(KmsError::PlaintextSize(m)) => assert_eq!(m, n),
                other => panic!("{n} bytes: {other:?}"),
            }
        }
        // Nothing listens on port 9: a transport error naming the call, not a hang.
        let e = k.decrypt(b"blob").await.unwrap_err();
        assert!(
            matches!(e, KmsError::Transport { op: "Decrypt", .. }),
            "{e:?}"
        );
    }
}
