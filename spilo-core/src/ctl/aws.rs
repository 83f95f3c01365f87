//! `spiloctl aws kms encrypt|generate-key|decrypt`: KMS secrets (`aws:kms:<base64>`), with no
//! configuration and no DCS. The daemon runs `spiloctl aws kms decrypt` to open a secret at
//! start (see [`crate::secret`]).

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use spilo_aws::kms::{format_secret, parse_secret, Kms, KmsError, Options};

/// What to do.
#[derive(Debug)]
pub enum KmsAction {
    /// Seal standard input under a key.
    Encrypt {
        /// Key id, ARN or alias.
        key_id: String,
    },
    /// A new 256-bit data key sealed under a key.
    GenerateKey {
        /// Key id, ARN or alias.
        key_id: String,
    },
    /// Open the secret on standard input.
    Decrypt,
}

/// The most a secret or a plaintext read from standard input may be.
const MAX_INPUT: u64 = 64 * 1024;

/// Runs the action; prints the result on standard output, errors on standard error.
pub fn run(action: KmsAction, opts: Options) -> ExitCode {
    let rt = match super::common::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(act(action, &opts)) {
        Ok(out) => match std::io::stdout().lock().write_all(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("spiloctl: standard output: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("spiloctl: {e}");
            ExitCode::from(1)
        }
    }
}

/// Why a KMS action gave no answer.
#[derive(Debug, thiserror::Error)]
enum ActError {
    #[error("standard input: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("standard input: more than {} KiB", MAX_INPUT / 1024)]
    TooLong,
    #[error("standard input: not text (an aws:kms:<base64> secret)")]
    NotText,
    #[error(transparent)]
    Kms(#[from] KmsError),
}

fn read_stdin() -> Result<Vec<u8>, ActError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_INPUT + 1)
        .read_to_end(&mut buf)
        .map_err(ActError::Stdin)?;
    if buf.len() as u64 > MAX_INPUT {
        return Err(ActError::TooLong);
    }
    Ok(buf)
}

/// The plaintext to seal: standard input without one final newline (what `echo` adds).
fn plaintext(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.ends_with(b"\n") {
        buf.pop();
        if buf.ends_with(b"\r") {
            buf.pop();
        }
    }
    buf
}

async fn act(action: KmsAction, opts: &Options) -> Result<Vec<u8>, ActError> {
    match action {
        KmsAction::Decrypt => {
            let input = read_stdin()?;
            let text = String::from_utf8(input).map_err(|_| ActError::NotText)?;
            let blob = parse_secret(&text)?;
            let kms = Kms::connect(opts).await?;
            Ok(kms.decrypt(&blob).await?)
        }
        KmsAction::Encrypt { key_id } => {
            let plain = plaintext(read_stdin()?);
            let kms = Kms::connect(opts).await?;
            let blob = kms.encrypt(&key_id, &plain).await?;
            Ok(format!("{}\n", format_secret(&blob)).into_bytes())
        }
        KmsAction::GenerateKey { key_id } => {
            let kms = Kms::connect(opts).await?;
            let blob = kms.generate_data_key(&key_id).await?;
            Ok(format!("{}\n", format_secret(&blob)).into_bytes())
        }
    }
}

/// `spiloctl aws complete-lifecycle-action`: completes an Auto Scaling lifecycle action (the
/// daemon runs it after handing over on a termination notice). Exit 0 done, 2 refused
/// settings, 1 Auto Scaling's error or no answer (the message carries its code).
pub fn run_lifecycle(c: spilo_aws::autoscaling::Completion) -> ExitCode {
    use spilo_aws::autoscaling::LifecycleError;
    let rt = match super::common::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(c.send()) {
        Ok(()) => {
            println!(
                "lifecycle action of {} completed ({}, hook {}, group {})",
                c.instance_id, c.result, c.hook, c.group
            );
            ExitCode::SUCCESS
        }
        Err(e @ LifecycleError::Invalid(_)) => {
            eprintln!("spiloctl: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("spiloctl: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plaintext;

    #[test]
    fn one_final_newline_is_not_part_of_the_secret() {
        assert_eq!(plaintext(b"pw\n".to_vec()), b"pw");
        assert_eq!(plaintext(b"pw\r\n".to_vec()), b"pw");
        assert_eq!(plaintext(b"pw\n\n".to_vec()), b"pw\n");
        assert_eq!(plaintext(b"pw".to_vec()), b"pw");
    }
}
