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
