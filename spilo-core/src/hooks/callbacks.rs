//! Patroni's shell callbacks: `postgresql.callbacks.<event>` run as
//! `<command…> <action> <role> <scope>` in the background under a timeout, and
//! `postgresql.pre_promote`, whose non-zero exit vetoes a promotion.
//!
//! As in Patroni, a new run of the same callback kills one still running, so a slow
//! `on_role_change` never reports a stale role after a newer one.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hooks::{Context, Gate, HookSettings, HookStats};

/// The configured commands.
#[derive(Default)]
pub struct Callbacks {
    /// Action name → argv prefix.
    pub commands: BTreeMap<String, Vec<String>>,
    /// `pre_promote`'s argv.
    pub pre_promote: Option<Vec<String>>,
    /// Deadline of one run.
    pub timeout: Duration,
    /// The run in progress per action, to be killed by the next.
    running: Mutex<BTreeMap<String, tokio::task::AbortHandle>>,
}

/// A command line split into words (no shell: quotes are not interpreted).
fn argv(command: &str) -> Vec<String> {
    command.split_whitespace().map(str::to_string).collect()
}

impl Callbacks {
    /// From the config (already checked by [`HookSettings::from_config`]).
    pub fn from_config(cfg: &crate::config::Config, settings: &HookSettings) -> Callbacks {
        Callbacks {
            commands: cfg
                .postgresql
                .callbacks
                .iter()
                .map(|(k, v)| (k.clone(), argv(v)))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
            pre_promote: cfg
                .postgresql
                .pre_promote
                .as_deref()
                .map(argv)
                .filter(|v| !v.is_empty()),
            timeout: settings.callback_timeout,
            running: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts the callback for `action`, if configured, on the current runtime; returns at
    /// once.
    pub fn spawn(&self, action: &str, ctx: &Context, stats: Arc<HookStats>) {
        let Some(cmd) = self.commands.get(action) else {
            return;
        };
        let mut argv = cmd.clone();
        argv.push(action.to_string());
        argv.push(ctx["role"].as_str().unwrap_or("unknown").to_string());
        argv.push(ctx["scope"].as_str().unwrap_or("").to_string());
        let timeout = self.timeout;
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = handle.spawn(async move {
            stats.callbacks.fetch_add(1, Ordering::Relaxed);
            match run_command(&argv, timeout).await {
                Ok(0) => tracing::info!(callback = %argv.join(" "), "callback finished"),
                Ok(code) => {
                    stats.callback_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(callback = %argv.join(" "), "callback exited with {code}");
                }
                Err(e) => {
                    stats.callback_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(callback = %argv.join(" "), "callback failed: {}", crate::error_chain(&e));
                }
            }
        });
        if let Ok(mut running) = self.running.lock() {
            if let Some(old) = running.insert(action.to_string(), task.abort_handle()) {
                // kill_on_drop ends the old child when its task is aborted.
                old.abort();
            }
        }
    }

    /// Runs `pre_promote` if configured: a non-zero exit, a failure to start or a timeout
    /// vetoes (Patroni's semantics: the script must say yes).
    pub async fn pre_promote(&self, ctx: &Context, stats: Arc<HookStats>) -> Gate {
        let Some(cmd) = &self.pre_promote else {
            return Gate::Allow;
        };
        let mut argv = cmd.clone();
        argv.push("pre_promote".into());
        argv.push(ctx["role"].as_str().unwrap_or("unknown").to_string());
        argv.push(ctx["scope"].as_str().unwrap_or("").to_string());
        stats.callbacks.fetch_add(1, Ordering::Relaxed);
        match run_command(&argv, self.timeout).await {
            Ok(0) => Gate::Allow,
            Ok(code) => Gate::Veto(format!("pre_promote exited with {code}")),
            Err(e) => {
                stats.callback_errors.fetch_add(1, Ordering::Relaxed);
                Gate::Veto(format!("pre_promote failed: {e}"))
            }
        }
    }
}

/// A callback command that did not run to an exit status.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The command could not be started.
    #[error("{command}: could not start")]
    Spawn {
        /// The program.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the command failed.
    #[error("{command}: could not wait for it")]
    Wait {
        /// The program.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command ran past its timeout and was killed.
    #[error("{command}: killed after {after:?}")]
    TimedOut {
        /// The program.
        command: String,
        /// The timeout.
        after: Duration,
    },
}

/// Runs `argv` with stdin closed and output discarded; its exit code (-1 for a signal).
async fn run_command(argv: &[String], timeout: Duration) -> Result<i32, CallbackError> {
    let command = || argv[0].clone();
    #[allow(clippy::disallowed_methods)] // Patroni's shell callbacks are commands by definition
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CallbackError::Spawn {
            command: command(),
            source,
        })?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Ok(status.code().unwrap_or(-1)),
        Ok(Err(source)) => Err(CallbackError::Wait {
            command: command(),
            source,
        }),
        Err(_) => {
            let _ = child.kill().await;
            Err(CallbackError::TimedOut {
                command: command(),
                after: timeout,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callbacks(pre: &str) -> Callbacks {
        Callbacks {
            pre_promote: Some(argv(pre)),
            timeout: Duration::from_secs(2),
            ..Callbacks::default()
        }
    }

    fn ctx() -> Context {
        serde_json::json!({"role": "replica", "scope": "demo"})
    }

    #[tokio::test]
    async fn pre_promote_exit_status_decides() {
        let stats = Arc::new(HookStats::default());
        assert_eq!(
            callbacks("true").pre_promote(&ctx(), stats.clone()).await,
            Gate::Allow
        );
        assert_eq!(
            callbacks("false").pre_promote(&ctx(), stats.clone()).await,
            Gate::Veto("pre_promote exited with 1".into())
        );
        // The arguments are Patroni's: action, role, scope.
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("check.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1 $2 $3\" = \"pre_promote replica demo\" ]\n",
        )
        .expect("write script");
        let g = callbacks(&format!("sh {}", script.display()))
            .pre_promote(&ctx(), stats.clone())
            .await;
        assert_eq!(g, Gate::Allow);
        let other = serde_json::json!({"role": "primary", "scope": "demo"});
        let g = callbacks(&format!("sh {}", script.display()))
            .pre_promote(&other, stats.clone())
            .await;
        assert_eq!(g, Gate::Veto("pre_promote exited with 1".into()));
    }

    #[tokio::test]
    async fn pre_promote_that_hangs_or_is_missing_vetoes() {
        let stats = Arc::new(HookStats::default());
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("slow.sh");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").expect("write script");
        let mut slow = callbacks(&format!("sh {}", script.display()));
        slow.timeout = Duration::from_millis(200);
        let started = crate::clock::now();
        match slow.pre_promote(&ctx(), stats.clone()).await {
            Gate::Veto(r) => assert!(r.contains("killed after"), "{r}"),
            g => panic!("a hanging pre_promote allowed promotion: {g:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        match callbacks("/nonexistent/pre-promote")
            .pre_promote(&ctx(), stats.clone())
            .await
        {
            Gate::Veto(r) => assert!(r.contains("/nonexistent/pre-promote"), "{r}"),
            g => panic!("a missing pre_promote allowed promotion: {g:?}"),
        }
        assert_eq!(stats.callback_errors.load(Ordering::Relaxed), 2);
    }
}
