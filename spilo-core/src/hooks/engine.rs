//! The Lua state and the thread it lives on.
//!
//! One OS thread owns the state and serves requests in order from a bounded queue. The async
//! side never blocks: notifications are dropped (and counted) when the queue is full, and a
//! decision hook's answer is awaited under its own deadline, after which its `on_error` policy
//! applies. Inside the thread every handler call runs with an instruction hook that enforces
//! the call's budget and wall-clock deadline, and under the state's memory limit.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mlua::{Function, HookTriggers, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib, Table};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::config::OnError;
use crate::hooks::{Choice, Context, Event, Gate, HookError, HookSettings, HookStats, LoadError};

/// Requests waiting for the hook thread.
const QUEUE: usize = 64;
/// Instructions between two checks of the budget and the deadline.
const STEP: u32 = 10_000;
/// Extra time the async side waits beyond a decision hook's deadline (queueing, start-up).
const GRACE: Duration = Duration::from_secs(1);
/// The registry key of the handler table (`event name` → array of functions).
pub(crate) const HANDLERS: &str = "spilo.handlers";

enum Request {
    Notify(Event, Context),
    BeforePromote(Context, oneshot::Sender<Result<Gate, HookError>>),
    Choose(
        Context,
        Vec<String>,
        oneshot::Sender<Result<Option<String>, HookError>>,
    ),
    Reload(
        PathBuf,
        HookSettings,
        oneshot::Sender<Result<BTreeSet<Event>, LoadError>>,
    ),
}

/// The async side's handle.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Request>,
    handled: Arc<RwLock<BTreeSet<Event>>>,
    settings: Arc<RwLock<HookSettings>>,
    stats: Arc<HookStats>,
}

impl Engine {
    /// Loads `script` on a new thread; a syntax or load-time error is returned, naming the file
    /// and line.
    pub fn start(
        script: &Path,
        settings: HookSettings,
        stats: Arc<HookStats>,
    ) -> Result<Engine, LoadError> {
        let (tx, rx) = sync_channel::<Request>(QUEUE);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = script.to_path_buf();
        let thread_settings = settings.clone();
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("spilo-hooks".into())
            .spawn(move || {
                let mut host = match Host::load(&path, &thread_settings) {
                    Ok(h) => {
                        let _ = ready_tx.send(Ok(h.handled.clone()));
                        h
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(req) = rx.recv() {
                    host.serve(req, &thread_stats);
                }
            })
            .map_err(|e| LoadError::Thread(format!("cannot start the hook thread: {e}")))?;
        let handled = ready_rx.recv().map_err(|_| {
            LoadError::Thread("the hook thread ended while loading the script".into())
        })??;
        for e in &handled {
            tracing::info!(event = %e, script = %script.display(), "hook handler registered");
        }
        Ok(Engine {
            tx,
            handled: Arc::new(RwLock::new(handled)),
            settings: Arc::new(RwLock::new(settings)),
            stats,
        })
    }

    /// True when the script registered a handler for `event`.
    pub fn handles(&self, event: Event) -> bool {
        self.handled
            .read()
            .map(|h| h.contains(&event))
            .unwrap_or(false)
    }

    fn settings(&self) -> HookSettings {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn send(&self, req: Request) -> Result<(), HookError> {
        self.tx.try_send(req).map_err(|e| {
            self.stats
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => HookError::Unavailable("the hook queue is full".into()),
                TrySendError::Disconnected(_) => {
                    HookError::Unavailable("the hook thread has stopped".into())
                }
            }
        })
    }

    /// Queues the handlers of a notification event.
    pub fn notify(&self, event: Event, ctx: Context) {
        if !self.handles(event) {
            return;
        }
        if let Err(e) = self.send(Request::Notify(event, ctx)) {
            tracing::warn!(event = %event, "hook event dropped: {e}");
        }
    }

    async fn ask<T>(
        &self,
        event: Event,
        make: impl FnOnce(oneshot::Sender<Result<T, HookError>>) -> Request,
    ) -> Result<T, HookError> {
        let limit = self.settings().limits(event).timeout + GRACE;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.send(make(reply_tx))?;
        match tokio::time::timeout(limit, reply_rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(HookError::Unavailable("the hook thread has stopped".into())),
            Err(_) => Err(HookError::Timeout {
                event: event.name(),
                after: limit,
            }),
        }
    }

    /// `before_promote`, with `on_error` applied.
    pub async fn before_promote(&self, ctx: Context) -> Gate {
        let event = Event::BeforePromote;
        match self.ask(event, |tx| Request::BeforePromote(ctx, tx)).await {
            Ok(g) => g,
            Err(e) => match self.settings().on_error(event) {
                OnError::Allow => {
                    tracing::warn!("{e}; on_error is allow: promotion allowed");
                    Gate::Allow
                }
                OnError::Deny => {
                    tracing::warn!("{e}; on_error is deny: promotion vetoed");
                    Gate::Veto(format!("before_promote failed (on_error: deny): {e}"))
                }
            },
        }
    }

    /// `choose_failover_candidate`, with `on_error` applied.
    pub async fn choose_candidate(&self, ctx: Context, candidates: Vec<String>) -> Choice {
        let event = Event::ChooseFailoverCandidate;
        match self
            .ask(event, |tx| Request::Choose(ctx, candidates, tx))
            .await
        {
            Ok(Some(m)) => Choice::Member(m),
            Ok(None) => Choice::Default,
            Err(e) => match self.settings().on_error(event) {
                OnError::Allow => {
                    tracing::warn!("{e}; on_error is allow: the default candidate stands");
                    Choice::Default
                }
                OnError::Deny => {
                    tracing::warn!("{e}; on_error is deny: no candidate");
                    Choice::Nobody(format!(
                        "choose_failover_candidate failed (on_error: deny): {e}"
                    ))
                }
            },
        }
    }

    /// Loads `script` into a new state; on success it replaces the old one, on failure the old
    /// one stays and the error is returned.
    pub async fn reload(&self, script: PathBuf, settings: HookSettings) -> Result<(), LoadError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Reload(script.clone(), settings.clone(), tx))
            .map_err(|e| LoadError::Thread(e.to_string()))?;
        let handled = tokio::time::timeout(settings.defaults.timeout + GRACE, rx)
            .await
            .map_err(|_| LoadError::Thread("loading the new hook script timed out".into()))?
            .map_err(|_| LoadError::Thread("the hook thread has stopped".into()))??;
        if let Ok(mut h) = self.handled.write() {
            *h = handled;
        }
        if let Ok(mut s) = self.settings.write() {
            *s = settings;
        }
        tracing::info!(script = %script.display(), "hook script reloaded");
        Ok(())
    }
}

/// Why the instruction hook stopped a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trip {
    Deadline,
    Budget,
}

/// The limits of the call in progress, read by the instruction hook.
#[derive(Clone, Copy)]
struct Budget {
    deadline: Instant,
    instructions_left: i64,
    tripped: Option<Trip>,
}

/// The state owned by the hook thread.
struct Host {
    lua: Lua,
    settings: HookSettings,
    handled: BTreeSet<Event>,
    budget: Rc<Cell<Budget>>,
}

impl Host {
    /// A new state with `script` loaded.
    fn load(path: &Path, settings: &HookSettings) -> Result<Host, LoadError> {
        let src = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::OS;
        let lua = Lua::new_with(libs, LuaOptions::default())
            .map_err(|e| LoadError::Lua(e.to_string()))?;
        let budget = Rc::new(Cell::new(Budget {
            deadline: crate::clock::now() + settings.defaults.timeout,
            instructions_left: settings.defaults.instructions as i64,
            tripped: None,
        }));
        let host = Host {
            lua,
            settings: settings.clone(),
            handled: BTreeSet::new(),
            budget,
        };
        host.sandbox().map_err(|e| LoadError::Lua(e.to_string()))?;
        host.install_hook()
            .map_err(|e| LoadError::Lua(e.to_string()))?;
        crate::hooks::lua_api::install(&host.lua, host.budget_deadline_reader())
            .map_err(|e| LoadError::Lua(e.to_string()))?;
        let limits = settings.defaults;
        host.arm(limits);
        let chunk = host
            .lua
            .load(src.as_str())
            .set_name(format!("@{}", path.display()));
        let loaded = chunk.exec();
        let tripped = host.budget.get().tripped;
        host.disarm();
        if let Some(t) = tripped {
            return Err(LoadError::Limit {
                path: path.to_path_buf(),
                limit: match t {
                    Trip::Deadline => format!("{:?} deadline", limits.timeout),
                    Trip::Budget => format!("budget of {} instructions", limits.instructions),
                },
            });
        }
        loaded.map_err(|e| LoadError::Script {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut host = host;
        host.handled = host.registered();
        Ok(host)
    }

    /// Keeps only the safe parts of the standard library.
    fn sandbox(&self) -> mlua::Result<()> {
        let g = self.lua.globals();
        for name in ["dofile", "loadfile", "load", "collectgarbage", "require"] {
            g.raw_set(name, mlua::Value::Nil)?;
        }
        let os: Table = g.get("os")?;
        let safe_os = self.lua.create_table()?;
        for name in ["time", "clock", "date", "difftime"] {
            safe_os.raw_set(name, os.get::<mlua::Value>(name)?)?;
        }
        g.raw_set("os", safe_os)?;
        self.lua
            .set_named_registry_value(HANDLERS, self.lua.create_table()?)?;
        Ok(())
    }

    /// A reader of the current call's deadline, for `spilo.exec` and `spilo.http`.
    fn budget_deadline_reader(&self) -> impl Fn() -> Instant + 'static {
        let b = self.budget.clone();
        move || b.get().deadline
    }

    /// The instruction hook: counts instructions, checks the deadline, and once tripped keeps
    /// raising on every instruction so that a `pcall` cannot swallow the stop.
    fn install_hook(&self) -> mlua::Result<()> {
        let budget = self.budget.clone();
        self.lua.set_hook(
            HookTriggers::new().every_nth_instruction(STEP),
            move |lua, _| {
                let mut b = budget.get();
                if b.tripped.is_none() {
                    b.instructions_left -= i64::from(STEP);
                    if b.instructions_left < 0 {
                        b.tripped = Some(Trip::Budget);
                    } else if crate::clock::now() >= b.deadline {
                        b.tripped = Some(Trip::Deadline);
                    }
                    budget.set(b);
                    if b.tripped.is_some() {
                        // From now on, stop at the very next instruction, wherever it is.
                        let again = budget.clone();
                        lua.set_hook(HookTriggers::new().every_nth_instruction(1), move |_, _| {
                            match again.get().tripped {
                                Some(_) => Err(mlua::Error::runtime("hook limit reached")),
                                None => Ok(mlua::VmState::Continue),
                            }
                        })?;
                    }
                }
                match b.tripped {
                    Some(_) => Err(mlua::Error::runtime("hook limit reached")),
                    None => Ok(mlua::VmState::Continue),
                }
            },
        )
    }

    fn arm(&self, limits: crate::hooks::HookLimits) {
        self.budget.set(Budget {
            deadline: crate::clock::now() + limits.timeout,
            instructions_left: limits.instructions as i64,
            tripped: None,
        });
        let _ = self
            .lua
            .set_memory_limit((limits.memory_mb as usize).saturating_mul(1024 * 1024));
    }

    fn disarm(&self) {
        if self.budget.get().tripped.is_some() {
            // Back to the normal hook for the next call.
            let _ = self.install_hook();
        }
        self.budget.set(Budget {
            deadline: crate::clock::now() + Duration::from_secs(3600),
            instructions_left: i64::MAX,
            tripped: None,
        });
    }

    /// The events that have at least one handler.
    fn registered(&self) -> BTreeSet<Event> {
        let mut out = BTreeSet::new();
        if let Ok(t) = self.lua.named_registry_value::<Table>(HANDLERS) {
            for e in Event::ALL {
                if let Ok(list) = t.get::<Table>(e.name()) {
                    if list.raw_len() > 0 {
                        out.insert(e);
                    }
                }
            }
        }
        out
    }

    fn handlers(&self, event: Event) -> Vec<Function> {
        self.lua
            .named_registry_value::<Table>(HANDLERS)
            .and_then(|t| t.get::<Table>(event.name()))
            .map(|list| list.sequence_values::<Function>().flatten().collect())
            .unwrap_or_default()
    }

    /// A fresh read-only table over `ctx`.
    fn context(&self, ctx: &Value) -> mlua::Result<Table> {
        let data = self.lua.to_value(ctx)?;
        let proxy = self.lua.create_table()?;
        let meta = self.lua.create_table()?;
        meta.raw_set("__index", data)?;
        meta.raw_set(
            "__newindex",
            self.lua
                .create_function(|_, _: MultiValue| -> mlua::Result<()> {
                    Err(mlua::Error::runtime("ctx is read-only"))
                })?,
        )?;
        meta.raw_set("__metatable", "read-only")?;
        proxy.set_metatable(Some(meta))?;
        Ok(proxy)
    }

    /// Calls one handler under the event's limits.
    fn call(
        &self,
        event: Event,
        f: &Function,
        ctx: &Value,
        extra: Option<&[String]>,
    ) -> Result<MultiValue, HookError> {
        let limits = self.settings.limits(event);
        crate::hooks::lua_api::set_current_event(event);
        self.arm(limits);
        let result = (|| {
            let t = self.context(ctx)?;
            match extra {
                Some(list) => f.call::<MultiValue>((t, self.lua.to_value(list)?)),
                None => f.call::<MultiValue>(t),
            }
        })();
        let tripped = self.budget.get().tripped;
        self.disarm();
        let _ = self.lua.set_memory_limit(0);
        match (tripped, result) {
            (Some(Trip::Deadline), _) => Err(HookError::Timeout {
                event: event.name(),
                after: limits.timeout,
            }),
            (Some(Trip::Budget), _) => Err(HookError::Budget {
                event: event.name(),
                limit: limits.instructions,
            }),
            (None, Ok(v)) => Ok(v),
            (None, Err(e)) if is_memory_error(&e) => Err(HookError::Memory {
                event: event.name(),
                limit_mb: limits.memory_mb,
            }),
            (None, Err(e)) => Err(HookError::Runtime {
                event: event.name(),
                message: e.to_string(),
            }),
        }
    }

    fn serve(&mut self, req: Request, stats: &HookStats) {
        match req {
            Request::Notify(event, ctx) => {
                for f in self.handlers(event) {
                    let r = self.call(event, &f, &ctx, None);
                    stats.record(&r);
                    if let Err(e) = r {
                        tracing::error!("hook: {e}");
                    }
                }
            }
            Request::BeforePromote(ctx, reply) => {
                let _ = reply.send(self.before_promote(&ctx, stats));
            }
            Request::Choose(ctx, candidates, reply) => {
                let _ = reply.send(self.choose(&ctx, &candidates, stats));
            }
            Request::Reload(path, settings, reply) => {
                let r = Host::load(&path, &settings).map(|new| {
                    let handled = new.handled.clone();
                    *self = new;
                    handled
                });
                if let Err(e) = &r {
                    tracing::error!("hook script not reloaded, keeping the old one: {e}");
                }
                let _ = reply.send(r);
            }
        }
    }

    fn before_promote(&self, ctx: &Value, stats: &HookStats) -> Result<Gate, HookError> {
        let event = Event::BeforePromote;
        for f in self.handlers(event) {
            let r = self
                .call(event, &f, ctx, None)
                .and_then(|v| gate_answer(&v));
            stats.record(&r);
            match r {
                Ok(Gate::Allow) => {}
                Ok(veto) => return Ok(veto),
                Err(e) => {
                    tracing::error!("hook: {e}");
                    return Err(e);
                }
            }
        }
        Ok(Gate::Allow)
    }

    fn choose(
        &self,
        ctx: &Value,
        candidates: &[String],
        stats: &HookStats,
    ) -> Result<Option<String>, HookError> {
        let event = Event::ChooseFailoverCandidate;
        for f in self.handlers(event) {
            let r = self
                .call(event, &f, ctx, Some(candidates))
                .and_then(|v| choice_answer(&v, candidates));
            stats.record(&r);
            match r {
                Ok(None) => {}
                Ok(Some(m)) => return Ok(Some(m)),
                Err(e) => {
                    tracing::error!("hook: {e}");
                    return Err(e);
                }
            }
        }
        Ok(None)
    }
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// `nil`/`true` allow; `false[, reason]` vetoes.
fn gate_answer(v: &MultiValue) -> Result<Gate, HookError> {
    let mut it = v.iter();
    match it.next() {
        None | Some(mlua::Value::Nil) | Some(mlua::Value::Boolean(true)) => Ok(Gate::Allow),
        Some(mlua::Value::Boolean(false)) => {
            let reason = match it.next() {
                Some(mlua::Value::String(s)) => s.to_string_lossy().to_string(),
                _ => "no reason given".to_string(),
            };
            Ok(Gate::Veto(format!("before_promote: {reason}")))
        }
        Some(other) => Err(HookError::BadAnswer {
            event: Event::BeforePromote.name(),
            what: format!(
                "a {} (want true, nil, or false and a reason)",
                other.type_name()
            ),
        }),
    }
}

/// `nil` for the default; otherwise one of `candidates` by name.
fn choice_answer(v: &MultiValue, candidates: &[String]) -> Result<Option<String>, HookError> {
    match v.iter().next() {
        None | Some(mlua::Value::Nil) => Ok(None),
        Some(mlua::Value::String(s)) => {
            let name = s.to_string_lossy().to_string();
            if candidates.contains(&name) {
                Ok(Some(name))
            } else {
                Err(HookError::BadAnswer {
                    event: Event::ChooseFailoverCandidate.name(),
                    what: format!(
                        "'{name}', which is not one of the allowed candidates [{}]",
                        candidates.join(", ")
                    ),
                })
            }
        }
        Some(other) => Err(HookError::BadAnswer {
            event: Event::ChooseFailoverCandidate.name(),
            what: format!("a {} (want a member name or nil)", other.type_name()),
        }),
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
