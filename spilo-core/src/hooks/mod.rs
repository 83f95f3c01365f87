//! Site hooks: a Lua script with handlers for role changes and two decision hooks, plus
//! Patroni's shell callbacks (`postgresql.callbacks`, `postgresql.pre_promote`).
//!
//! The Lua state lives on a thread of its own ([`engine`]): the HA loop only queues requests
//! (never blocking) and, for the decision hooks, reads the answer when it arrives, so a slow or
//! broken hook never delays a lease renewal or a demotion. Every handler call runs under an
//! instruction budget, a memory limit and a wall-clock deadline. A decision hook's answer, or
//! its configured `on_error` outcome, enters `decide()` as a plain input; hooks never compute
//! fencing.

pub mod callbacks;
pub mod engine;
mod lua_api;
mod settings;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use settings::{HookLimits, HookSettings, SettingError};

/// The events a script can register for with `spilo.on(event, handler)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    /// PostgreSQL was started by the daemon (or came up).
    OnStart,
    /// PostgreSQL stopped.
    OnStop,
    /// A requested restart finished.
    OnRestart,
    /// The configuration was reloaded.
    OnReload,
    /// The role PostgreSQL runs in changed (replica → primary or back).
    OnRoleChange,
    /// This node became the primary.
    OnPromote,
    /// This node stopped being the primary.
    OnDemote,
    /// Decision: may this node promote? `false, "reason"` vetoes.
    BeforePromote,
    /// Decision: which of the allowed failover candidates takes over.
    ChooseFailoverCandidate,
}

impl Event {
    /// Every event, in a fixed order.
    pub const ALL: [Event; 9] = [
        Event::OnStart,
        Event::OnStop,
        Event::OnRestart,
        Event::OnReload,
        Event::OnRoleChange,
        Event::OnPromote,
        Event::OnDemote,
        Event::BeforePromote,
        Event::ChooseFailoverCandidate,
    ];

    /// The name scripts use.
    pub fn name(self) -> &'static str {
        match self {
            Event::OnStart => "on_start",
            Event::OnStop => "on_stop",
            Event::OnRestart => "on_restart",
            Event::OnReload => "on_reload",
            Event::OnRoleChange => "on_role_change",
            Event::OnPromote => "on_promote",
            Event::OnDemote => "on_demote",
            Event::BeforePromote => "before_promote",
            Event::ChooseFailoverCandidate => "choose_failover_candidate",
        }
    }

    /// The event called `name`.
    pub fn from_name(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == name)
    }

    /// A decision hook (its answer matters), not a notification.
    pub fn is_decision(self) -> bool {
        matches!(self, Event::BeforePromote | Event::ChooseFailoverCandidate)
    }

    /// Patroni's callback action name, for the events that have a shell callback.
    pub fn callback_action(self) -> Option<&'static str> {
        match self {
            Event::OnStart => Some("on_start"),
            Event::OnStop => Some("on_stop"),
            Event::OnRestart => Some("on_restart"),
            Event::OnReload => Some("on_reload"),
            Event::OnRoleChange => Some("on_role_change"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the hooks could not be loaded, or reloaded (then the running ones are kept).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A `hooks:` or callback setting is wrong; the message names the key.
    #[error("{0}")]
    Setting(#[source] settings::SettingError),
    /// The script could not be read.
    #[error("hooks.script {}: {source}", path.display())]
    Read {
        /// The script.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The script does not load: a syntax error, or an error it raised while running.
    #[error("hooks.script {}: {message}", path.display())]
    Script {
        /// The script.
        path: std::path::PathBuf,
        /// Lua's message (it names the file and line; Lua's error value cannot leave the hook
        /// thread, so its text does).
        message: String,
    },
    /// Loading the script ran past its deadline or its instruction budget.
    #[error("hooks.script {}: loading the script ran past its {limit}", path.display())]
    Limit {
        /// The script.
        path: std::path::PathBuf,
        /// Which limit.
        limit: String,
    },
    /// The Lua state could not be set up (Lua's message).
    #[error("cannot prepare the Lua state: {0}")]
    Lua(String),
    /// The hook thread could not be started, has stopped, or did not answer in time.
    #[error("{0}")]
    Thread(String),
    /// The change needs a daemon restart.
    #[error("{0}")]
    NeedsRestart(&'static str),
}

/// Why a handler call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The handler raised an error (the message carries the Lua traceback).
    #[error("{event} handler failed: {message}")]
    Runtime {
        /// The event.
        event: &'static str,
        /// Lua's message and traceback.
        message: String,
    },
    /// The handler ran past its wall-clock deadline.
    #[error("{event} handler exceeded its {after:?} deadline")]
    Timeout {
        /// The event.
        event: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The handler ran past its instruction budget.
    #[error("{event} handler exceeded its budget of {limit} instructions")]
    Budget {
        /// The event.
        event: &'static str,
        /// The budget.
        limit: u64,
    },
    /// The handler ran out of memory.
    #[error("{event} handler exceeded the memory limit of {limit_mb} MiB")]
    Memory {
        /// The event.
        event: &'static str,
        /// The limit.
        limit_mb: u64,
    },
    /// The handler returned something the hook does not accept.
    #[error("{event} handler returned {what}")]
    BadAnswer {
        /// The event.
        event: &'static str,
        /// What it returned.
        what: String,
    },
    /// The hook thread is gone or its queue is full.
    #[error("hook engine unavailable: {0}")]
    Unavailable(String),
}

/// Counters shown in `/metrics`.
#[derive(Debug, Default)]
pub struct HookStats {
    /// Handler calls made.
    pub calls: AtomicU64,
    /// Handler calls that raised an error or returned a bad answer.
    pub errors: AtomicU64,
    /// Handler calls cut off at a limit (time, instructions, memory).
    pub timeouts: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Shell callbacks run.
    pub callbacks: AtomicU64,
    /// Shell callbacks that failed or timed out.
    pub callback_errors: AtomicU64,
}

impl HookStats {
    /// Counts the outcome of one call.
    pub(crate) fn record<T>(&self, r: &Result<T, HookError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(_) => {}
            Err(HookError::Timeout { .. })
            | Err(HookError::Budget { .. })
            | Err(HookError::Memory { .. }) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `(calls, errors, timeouts, dropped, callbacks, callback_errors)`.
    pub fn snapshot(&self) -> [u64; 6] {
        [
            self.calls.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.timeouts.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.callbacks.load(Ordering::Relaxed),
            self.callback_errors.load(Ordering::Relaxed),
        ]
    }
}

/// `before_promote`'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Promotion allowed (every handler returned true or nothing).
    Allow,
    /// A handler (or `pre_promote`) vetoed, with its reason.
    Veto(String),
}

/// `choose_failover_candidate`'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// No preference: the default order stands.
    Default,
    /// This member.
    Member(String),
    /// Nobody may take over (`on_error: deny` after a failure).
    Nobody(String),
}

/// The context a handler gets, as JSON (turned into a read-only Lua table).
pub type Context = Value;

/// Shared handle to the hooks of one daemon: the Lua engine (if a script is configured), the
/// shell callbacks and the counters.
#[derive(Clone)]
pub struct Hooks {
    engine: Option<engine::Engine>,
    callbacks: Arc<std::sync::RwLock<Arc<callbacks::Callbacks>>>,
    /// Counters.
    pub stats: Arc<HookStats>,
}

impl Hooks {
    /// Hooks from the config: loads and checks the script (a syntax error is returned, naming
    /// the file and line) and prepares the callbacks.
    pub fn start(cfg: &crate::config::Config) -> Result<Hooks, LoadError> {
        let settings = HookSettings::from_config(cfg)?;
        let stats = Arc::new(HookStats::default());
        let engine = match &settings.script {
            Some(path) => Some(engine::Engine::start(
                path,
                settings.clone(),
                stats.clone(),
            )?),
            None => None,
        };
        Ok(Hooks {
            engine,
            callbacks: Arc::new(std::sync::RwLock::new(Arc::new(
                callbacks::Callbacks::from_config(cfg, &settings),
            ))),
            stats,
        })
    }

    /// No hooks at all.
    pub fn none() -> Hooks {
        Hooks {
            engine: None,
            callbacks: Arc::default(),
            stats: Arc::new(HookStats::default()),
        }
    }

    fn callbacks(&self) -> Arc<callbacks::Callbacks> {
        match self.callbacks.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// True when a Lua handler is registered for `event`.
    pub fn handles(&self, event: Event) -> bool {
        self.engine
            .as_ref()
            .map(|e| e.handles(event))
            .unwrap_or(false)
    }

    /// True when promotion needs an answer from a hook (a `before_promote` handler or a
    /// `pre_promote` command).
    pub fn gates_promotion(&self) -> bool {
        self.handles(Event::BeforePromote) || self.callbacks().pre_promote.is_some()
    }

    /// Reports a notification event: queues the Lua handlers and starts the shell callback;
    /// never waits for either.
    pub fn notify(&self, event: Event, ctx: Context) {
        if let Some(action) = event.callback_action() {
            self.callbacks().spawn(action, &ctx, self.stats.clone());
        }
        if let Some(e) = &self.engine {
            e.notify(event, ctx);
        }
    }

    /// Asks `before_promote` (then `pre_promote`): the answer, with `on_error` applied to a
    /// failure. Runs on the hook thread and a child process; the caller should not await this
    /// on the HA loop's task.
    pub async fn before_promote(&self, ctx: Context) -> Gate {
        if let Some(e) = &self.engine {
            if e.handles(Event::BeforePromote) {
                let gate = e.before_promote(ctx.clone()).await;
                if gate != Gate::Allow {
                    return gate;
                }
            }
        }
        let callbacks = self.callbacks();
        callbacks.pre_promote(&ctx, self.stats.clone()).await
    }

    /// Asks `choose_failover_candidate` which of `candidates` (in the default order) takes
    /// over.
    pub async fn choose_candidate(&self, ctx: Context, candidates: Vec<String>) -> Choice {
        match &self.engine {
            Some(e) if e.handles(Event::ChooseFailoverCandidate) => {
                e.choose_candidate(ctx, candidates).await
            }
            _ => Choice::Default,
        }
    }

    /// Loads the script again (after a reload of the config); a broken script is refused and
    /// the old one kept.
    pub async fn reload(&self, cfg: &crate::config::Config) -> Result<(), LoadError> {
        let settings = HookSettings::from_config(cfg)?;
        let new_callbacks = Arc::new(callbacks::Callbacks::from_config(cfg, &settings));
        if let Ok(mut c) = self.callbacks.write() {
            *c = new_callbacks;
        }
        match (&self.engine, &settings.script) {
            (Some(e), Some(path)) => e.reload(path.clone(), settings.clone()).await,
            (None, Some(_)) => Err(LoadError::NeedsRestart(
                "hooks.script was added: restart the daemon to start the hook engine",
            )),
            (Some(_), None) => Err(LoadError::NeedsRestart(
                "hooks.script was removed: restart the daemon to stop the hooks",
            )),
            (None, None) => Ok(()),
        }
    }
}
