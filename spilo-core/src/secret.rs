//! Secrets written `aws:kms:<base64>` in the configuration's sources (a key file, an environment
//! variable): opened once, at start, with KMS `Decrypt`. The daemon does not link the AWS SDK: it
//! runs `spiloctl aws kms decrypt` (the `spiloctl` next to its own executable, else the one on
//! `PATH`), the sealed text on its standard input and the plaintext back on its standard output,
//! so the secret never appears in a command line or a file.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

pub use spilo_aws::kms::is_secret;

/// The longest the helper may take (its own KMS calls are bounded at 20 s).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a secret could not be opened; `place` names where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{place}: the aws:kms: secret could not be opened: {detail}")]
pub struct SecretError {
    /// The config key and file or variable.
    pub place: String,
    /// What failed (KMS's error code and message, or why the helper did not run).
    pub detail: String,
}

/// The `spiloctl` that opens KMS secrets and completes lifecycle actions.
pub(crate) fn helper() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|p| p.with_file_name("spiloctl"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("spiloctl"))
}

/// Opens an `aws:kms:` secret with KMS (`region` from the storage settings, else AWS's chain).
pub async fn open_kms(
    text: &str,
    place: &str,
    region: Option<&str>,
) -> Result<Vec<u8>, SecretError> {
    open_kms_with(text, place, region, None).await
}

/// [`open_kms`], the instance role read from `imds` when given (`aws.imds_endpoint`).
async fn open_kms_with(
    text: &str,
    place: &str,
    region: Option<&str>,
    imds: Option<&str>,
) -> Result<Vec<u8>, SecretError> {
    let fail = |detail: String| SecretError {
        place: place.to_string(),
        detail,
    };
    // Checked here too, so a malformed value is named without starting anything.
    spilo_aws::kms::parse_secret(text).map_err(|e| fail(e.to_string()))?;
    let helper = helper();
    #[allow(clippy::disallowed_methods)]
    // the one helper the daemon runs outside postgres/ and hooks/
    let mut cmd = tokio::process::Command::new(&helper);
    cmd.args(["aws", "kms", "decrypt"]);
    if let Some(r) = region {
        cmd.args(["--region", r]);
    }
    if let Some(e) = imds {
        cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", e);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", helper.display())))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| fail("no stdin pipe".into()))?;
    let sealed = text.trim().as_bytes().to_vec();
    let run = async move {
        stdin.write_all(&sealed).await?;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = match tokio::time::timeout(HELPER_TIMEOUT, run).await {
        Err(_) => {
            return Err(fail(format!(
                "{} aws kms decrypt did not finish in {} s",
                helper.display(),
                HELPER_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(fail(format!("{}: {e}", helper.display()))),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said.trim();
        let said = said.strip_prefix("spiloctl: ").unwrap_or(said);
        return Err(fail(if said.is_empty() {
            format!("{} aws kms decrypt: {}", helper.display(), out.status)
        } else {
            said.to_string()
        }));
    }
    Ok(out.stdout)
}

/// Every `aws:kms:<base64>` string value of the configuration (wherever it came from: the file,
/// `PATRONI_*`, Spilo's `PGPASSWORD_*`), found as `(dotted key, JSON pointer, text)`.
fn sealed_values(v: &serde_json::Value) -> Vec<(String, String, String)> {
    fn walk(v: &serde_json::Value, key: &str, ptr: &str, out: &mut Vec<(String, String, String)>) {
        match v {
            serde_json::Value::String(s) if is_secret(s) => {
                out.push((key.to_string(), ptr.to_string(), s.clone()));
            }
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let key = if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    };
                    let ptr = format!("{ptr}/{}", k.replace('~', "~0").replace('/', "~1"));
                    walk(x, &key, &ptr, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, &format!("{key}[{i}]"), &format!("{ptr}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, "", "", &mut out);
    out
}

/// Opens every `aws:kms:` value of `cfg` with KMS (one `spiloctl aws kms decrypt` per distinct
/// secret; the region is `aws.region`, else `storage.region`, else AWS's chain). The plaintexts
/// replace the sealed values in memory only and are never logged; a value KMS will not open
/// stops the start, naming its key and KMS's error code. Without such values `cfg` comes back
/// as it was.
pub async fn open_config(cfg: crate::config::Config) -> Result<crate::config::Config, SecretError> {
    let fail = |place: &str, detail: String| SecretError {
        place: place.to_string(),
        detail,
    };
    let mut tree = serde_json::to_value(&cfg)
        .map_err(|e| fail("the configuration", format!("cannot walk it: {e}")))?;
    let sealed = sealed_values(&tree);
    if sealed.is_empty() {
        return Ok(cfg);
    }
    let region = cfg
        .aws
        .as_ref()
        .and_then(|a| a.region.clone())
        .or_else(|| cfg.storage.as_ref().and_then(|s| s.region.clone()));
    let imds = cfg.aws.as_ref().and_then(|a| a.imds_endpoint.clone());
    let mut opened: Vec<(String, String)> = Vec::new();
    for (key, ptr, text) in &sealed {
        let plain = match opened.iter().find(|(t, _)| t == text) {
            Some((_, p)) => p.clone(),
            None => {
                let bytes = open_kms_with(text, key, region.as_deref(), imds.as_deref()).await?;
                let p = String::from_utf8(bytes)
                    .map_err(|_| fail(key, "the opened secret is not UTF-8 text".into()))?;
                opened.push((text.clone(), p.clone()));
                p
            }
        };
        if let Some(slot) = tree.pointer_mut(ptr) {
            *slot = serde_json::Value::String(plain);
        }
    }
    tracing::info!(
        "opened {} aws:kms: value(s) of the configuration with KMS: {}",
        sealed.len(),
        sealed
            .iter()
            .map(|(k, _, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    serde_json::from_value(tree).map_err(|e| {
        fail(
            "the configuration",
            format!("after opening its secrets: {e}"),
        )
    })
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn sealed_values_are_found_with_their_keys() {
        let v = serde_json::json!({
            "postgresql": {"authentication": {"superuser": {"password": "aws:kms:AAAA"}}},
            "load_balancers": [{"secret_access_key": "aws:kms:BBBB"}, {"x": "plain"}],
            "a/b": {"c": " aws:kms:CCCC"},
        });
        let mut found = sealed_values(&v);
        found.sort();
        assert_eq!(
            found,
            vec![
                ("a/b.c".into(), "/a~1b/c".into(), " aws:kms:CCCC".into()),
                (
                    "load_balancers[0].secret_access_key".into(),
                    "/load_balancers/0/secret_access_key".into(),
                    "aws:kms:BBBB".into()
                ),
                (
                    "postgresql.authentication.superuser.password".into(),
                    "/postgresql/authentication/superuser/password".into(),
                    "aws:kms:AAAA".into()
                ),
            ]
        );
        for (_, ptr, _) in &found {
            assert!(v.pointer(ptr).is_some(), "{ptr}");
        }
    }

    #[test]
    fn a_configuration_survives_the_walk_unchanged() {
        let yaml =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/node.yml"))
                .expect("examples/node.yml");
        let cfg = crate::config::load_str(&yaml, "node.yml", &[])
            .expect("loads")
            .config;
        let tree = serde_json::to_value(&cfg).expect("to a tree");
        let back: crate::config::Config = serde_json::from_value(tree).expect("from the tree");
        assert_eq!(back, cfg);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let same = rt
            .block_on(open_config(cfg.clone()))
            .expect("nothing sealed");
        assert_eq!(same, cfg);
    }
}
