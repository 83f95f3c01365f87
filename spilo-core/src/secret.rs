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

/// Why the `spiloctl` helper gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// It could not be started.
    #[error("cannot run {helper}: {source}")]
    Spawn {
        /// The helper's path.
        helper: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Talking to it failed.
    #[error("{what}: {source}")]
    Io {
        /// The command line.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran past its time (and was killed).
    #[error("{what} did not finish in {secs} s")]
    Timeout {
        /// The command line.
        what: String,
        /// The bound.
        secs: u64,
    },
    /// It failed and said why (its own message, without its `spiloctl: ` prefix).
    #[error("{0}")]
    Said(String),
    /// It failed without a word.
    #[error("{what}: {status}")]
    Failed {
        /// The command line.
        what: String,
        /// How it ended.
        status: std::process::ExitStatus,
    },
}

/// Runs `spiloctl <args>` (the one next to this executable): `input` on its standard input,
/// `env` added to its environment, all within `timeout`. Its standard output when it succeeds;
/// else what it said on standard error or how it ended.
pub(crate) async fn run_helper(
    args: &[&str],
    input: &[u8],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Vec<u8>, HelperError> {
    let helper = helper();
    let what = format!("{} {}", helper.display(), args.join(" "));
    #[allow(clippy::disallowed_methods)]
    // the one helper the daemon runs outside postgres/ and hooks/: spiloctl carries the AWS SDK
    let mut cmd = tokio::process::Command::new(&helper);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| HelperError::Spawn {
        helper: helper.display().to_string(),
        source,
    })?;
    let mut stdin = child.stdin.take().ok_or_else(|| HelperError::Io {
        what: what.clone(),
        source: std::io::Error::other("no standard input pipe"),
    })?;
    let input = input.to_vec();
    let run = async move {
        stdin.write_all(&input).await?;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            return Err(HelperError::Timeout {
                what,
                secs: timeout.as_secs(),
            })
        }
        Ok(Err(source)) => return Err(HelperError::Io { what, source }),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(out.stdout);
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said.trim();
    Err(match said.strip_prefix("spiloctl: ").unwrap_or(said) {
        "" => HelperError::Failed {
            what,
            status: out.status,
        },
        s => HelperError::Said(s.to_string()),
    })
}

/// Opens the sealed value `text` of `cfg` (named `place`) as bytes: a data key need not be
/// text. Where KMS is asked: as for every secret of the configuration ([`kms_place`]).
pub async fn open_bytes(
    text: &str,
    place: &str,
    cfg: &crate::config::Config,
) -> Result<Vec<u8>, SecretError> {
    let (region, imds) = kms_place(cfg);
    open_kms_with(text, place, region.as_deref(), imds.as_deref()).await
}

/// Opens an `aws:kms:` secret with KMS in `region` (else AWS's chain), the instance role read
/// from `imds` when given (`aws.imds_endpoint`).
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
    let mut args = vec!["aws", "kms", "decrypt"];
    if let Some(r) = region {
        args.extend(["--region", r]);
    }
    let env: Vec<(&str, &str)> = imds
        .map(|e| ("AWS_EC2_METADATA_SERVICE_ENDPOINT", e))
        .into_iter()
        .collect();
    run_helper(&args, text.trim().as_bytes(), &env, HELPER_TIMEOUT)
        .await
        .map_err(|e| fail(e.to_string()))
}

/// Where the configuration's secrets are opened: `aws.region`, else `storage.region` (else the
/// chain's), and the instance role from `aws.imds_endpoint`.
fn kms_place(cfg: &crate::config::Config) -> (Option<String>, Option<String>) {
    let region = cfg
        .aws
        .as_ref()
        .and_then(|a| a.region.clone())
        .or_else(|| cfg.storage.as_ref().and_then(|s| s.region.clone()));
    let imds = cfg.aws.as_ref().and_then(|a| a.imds_endpoint.clone());
    (region, imds)
}

/// Secrets opened by this process (sealed text, plaintext): a reload does not ask KMS again
/// for a value it has opened (the plaintext is in the running configuration anyway).
static OPENED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Opens one sealed value `text` of `cfg` named `place` (cached, see [`OPENED`]).
pub async fn open_value(
    text: &str,
    place: &str,
    cfg: &crate::config::Config,
) -> Result<String, SecretError> {
    let cached = OPENED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(t, _)| t == text)
        .map(|(_, p)| p.clone());
    if let Some(p) = cached {
        return Ok(p);
    }
    let bytes = open_bytes(text, place, cfg).await?;
    let plain = String::from_utf8(bytes).map_err(|_| SecretError {
        place: place.to_string(),
        detail: "the opened secret is not UTF-8 text".into(),
    })?;
    let mut cache = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if !cache.iter().any(|(t, _)| t == text) {
        cache.push((text.to_string(), plain.clone()));
    }
    Ok(plain)
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
/// secret not opened before; where: see [`kms_place`]). The plaintexts replace the sealed
/// values in memory only and are never logged; a value KMS will not open stops the start,
/// naming its key and KMS's error code. Without such values `cfg` comes back as it was.
pub async fn open_config(cfg: crate::config::Config) -> Result<crate::config::Config, SecretError> {
    open_config_where(cfg, |_| true).await
}

/// [`open_config`] for the keys `wanted` accepts (dotted: `etcd3.password`); the others stay
/// sealed (`spiloctl` opens only the DCS's and the REST API's credentials it uses).
pub async fn open_config_where(
    cfg: crate::config::Config,
    wanted: impl Fn(&str) -> bool,
) -> Result<crate::config::Config, SecretError> {
    let fail = |place: &str, detail: String| SecretError {
        place: place.to_string(),
        detail,
    };
    let mut tree = serde_json::to_value(&cfg)
        .map_err(|e| fail("the configuration", format!("cannot walk it: {e}")))?;
    let sealed: Vec<_> = sealed_values(&tree)
        .into_iter()
        .filter(|(k, _, _)| wanted(k))
        .collect();
    if sealed.is_empty() {
        return Ok(cfg);
    }
    for (key, ptr, text) in &sealed {
        let plain = open_value(text, key, &cfg).await?;
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
