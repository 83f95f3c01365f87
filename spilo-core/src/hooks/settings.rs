//! The `hooks:` section, checked and with defaults filled in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, OnError};
use crate::hooks::Event;

/// Default wall-clock deadline of one handler call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default instruction budget of one handler call.
pub const DEFAULT_INSTRUCTIONS: u64 = 50_000_000;
/// Default memory limit of the Lua state, MiB.
pub const DEFAULT_MEMORY_MB: u64 = 32;
/// Default deadline of a shell callback.
pub const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The limits of one handler call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookLimits {
    /// Wall-clock deadline.
    pub timeout: Duration,
    /// VM instructions.
    pub instructions: u64,
    /// Memory of the whole Lua state, MiB.
    pub memory_mb: u64,
}

/// The checked `hooks:` section.
#[derive(Clone, Debug, PartialEq)]
pub struct HookSettings {
    /// The script, if any.
    pub script: Option<PathBuf>,
    /// Limits when an event has no override.
    pub defaults: HookLimits,
    /// Per-event overrides.
    pub per_event: BTreeMap<Event, HookLimits>,
    /// Decision hooks' failure policy.
    pub on_error: BTreeMap<Event, OnError>,
    /// Deadline of shell callbacks and `pre_promote`.
    pub callback_timeout: Duration,
}

/// A `hooks:` or callback setting that is not acceptable; the message names the key.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SettingError {
    /// A timeout outside (0, 3600] seconds.
    #[error("{key}: {value} is not between 0 and 3600 seconds")]
    Seconds {
        /// The key.
        key: String,
        /// The value.
        value: f64,
    },
    /// A limit of 0.
    #[error("{key}: must be greater than 0")]
    Zero {
        /// The key.
        key: String,
    },
    /// An event name spilo does not know.
    #[error(
        "hooks.events.{0}: unknown event (known: {known})",
        known = Event::ALL.map(Event::name).join(", ")
    )]
    UnknownEvent(String),
    /// `on_error` on a hook that decides nothing.
    #[error(
        "{0}: only decision hooks (before_promote, choose_failover_candidate) have an on_error policy"
    )]
    OnErrorNotDecision(String),
    /// A callback without a command.
    #[error("postgresql.callbacks.{0}: empty command")]
    EmptyCallback(String),
    /// `pre_promote` without a command.
    #[error("postgresql.pre_promote: empty command")]
    EmptyPrePromote,
}

fn seconds(key: &str, v: f64) -> Result<Duration, SettingError> {
    if !(v > 0.0 && v <= 3600.0) {
        return Err(SettingError::Seconds {
            key: key.to_string(),
            value: v,
        });
    }
    Ok(Duration::from_secs_f64(v))
}

fn positive(key: &str, v: u64) -> Result<u64, SettingError> {
    if v == 0 {
        return Err(SettingError::Zero {
            key: key.to_string(),
        });
    }
    Ok(v)
}

impl HookSettings {
    /// From the config; errors name the key.
    pub fn from_config(cfg: &Config) -> Result<HookSettings, crate::hooks::LoadError> {
        Self::parse(cfg).map_err(crate::hooks::LoadError::Setting)
    }

    fn parse(cfg: &Config) -> Result<HookSettings, SettingError> {
        let h = cfg.hooks.clone().unwrap_or_default();
        let defaults = HookLimits {
            timeout: match h.timeout {
                Some(t) => seconds("hooks.timeout", t)?,
                None => DEFAULT_TIMEOUT,
            },
            instructions: positive(
                "hooks.instruction_limit",
                h.instruction_limit.unwrap_or(DEFAULT_INSTRUCTIONS),
            )?,
            memory_mb: positive(
                "hooks.memory_limit_mb",
                h.memory_limit_mb.unwrap_or(DEFAULT_MEMORY_MB),
            )?,
        };
        let mut per_event = BTreeMap::new();
        let mut on_error = BTreeMap::new();
        for (name, e) in &h.events {
            let event =
                Event::from_name(name).ok_or_else(|| SettingError::UnknownEvent(name.clone()))?;
            let key = |k: &str| format!("hooks.events.{name}.{k}");
            let limits = HookLimits {
                timeout: match e.timeout {
                    Some(t) => seconds(&key("timeout"), t)?,
                    None => defaults.timeout,
                },
                instructions: match e.instruction_limit {
                    Some(n) => positive(&key("instruction_limit"), n)?,
                    None => defaults.instructions,
                },
                memory_mb: match e.memory_limit_mb {
                    Some(n) => positive(&key("memory_limit_mb"), n)?,
                    None => defaults.memory_mb,
                },
            };
            per_event.insert(event, limits);
            if let Some(policy) = e.on_error {
                if !event.is_decision() {
                    return Err(SettingError::OnErrorNotDecision(key("on_error")));
                }
                on_error.insert(event, policy);
            }
        }
        // Unknown callback names were warned about by the schema check; they never fire.
        for (name, command) in &cfg.postgresql.callbacks {
            if command.split_whitespace().next().is_none() {
                return Err(SettingError::EmptyCallback(name.clone()));
            }
        }
        if let Some(p) = &cfg.postgresql.pre_promote {
            if p.split_whitespace().next().is_none() {
                return Err(SettingError::EmptyPrePromote);
            }
        }
        Ok(HookSettings {
            script: h.script.clone(),
            defaults,
            per_event,
            on_error,
            callback_timeout: match h.callback_timeout {
                Some(t) => seconds("hooks.callback_timeout", t)?,
                None => DEFAULT_CALLBACK_TIMEOUT,
            },
        })
    }

    /// The limits of `event`.
    pub fn limits(&self, event: Event) -> HookLimits {
        self.per_event.get(&event).copied().unwrap_or(self.defaults)
    }

    /// The failure policy of a decision hook (`allow` unless configured).
    pub fn on_error(&self, event: Event) -> OnError {
        self.on_error.get(&event).copied().unwrap_or_default()
    }
}
