//! The `spilo` table scripts see: `spilo.on`, `spilo.log`, `spilo.exec`, `spilo.http`,
//! `spilo.env`. `print` goes to the log too.
//!
//! `spilo.exec` and `spilo.http` block the hook thread (never the HA loop) and are cut off at
//! the smaller of their own timeout and what is left of the calling handler's deadline.

use std::cell::Cell;
use std::time::{Duration, Instant};

use mlua::{Function, Lua, MultiValue, Table, Value as LuaValue};

use crate::hooks::Event;

/// `spilo.exec`'s and `spilo.http`'s default timeout.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most output `spilo.exec` keeps of each stream.
const MAX_OUTPUT: usize = 1 << 20;

thread_local! {
    static CURRENT: Cell<Option<Event>> = const { Cell::new(None) };
}

/// Records which event's handler runs (for log lines).
pub(crate) fn set_current_event(e: Event) {
    CURRENT.with(|c| c.set(Some(e)));
}

fn current() -> &'static str {
    CURRENT.with(|c| c.get().map(Event::name).unwrap_or("load"))
}

/// Installs `spilo` and `print` into `lua`. `deadline` tells the current call's deadline.
pub(crate) fn install(lua: &Lua, deadline: impl Fn() -> Instant + 'static) -> mlua::Result<()> {
    let rt = std::rc::Rc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| mlua::Error::runtime(format!("cannot start the hook runtime: {e}")))?,
    );
    let deadline = std::rc::Rc::new(deadline);
    let spilo = lua.create_table()?;

    spilo.set(
        "on",
        lua.create_function(|lua, (event, handler): (String, LuaValue)| {
            let Some(e) = Event::from_name(&event) else {
                return Err(mlua::Error::runtime(format!(
                    "spilo.on: unknown event '{event}' (known: {})",
                    Event::ALL.map(Event::name).join(", ")
                )));
            };
            let LuaValue::Function(f) = handler else {
                return Err(mlua::Error::runtime(format!(
                    "spilo.on('{event}', …): the handler must be a function, not a {}",
                    handler.type_name()
                )));
            };
            let all: Table = lua.named_registry_value(crate::hooks::engine::HANDLERS)?;
            let list: Table = match all.get::<Option<Table>>(e.name())? {
                Some(t) => t,
                None => {
                    let t = lua.create_table()?;
                    all.set(e.name(), &t)?;
                    t
                }
            };
            list.raw_push(f)?;
            Ok(())
        })?,
    )?;

    spilo.set(
        "log",
        lua.create_function(|_, (level, msg): (String, LuaValue)| {
            let msg = display(&msg);
            let hook = current();
            match level.to_ascii_lowercase().as_str() {
                "debug" => tracing::debug!(hook, "{msg}"),
                "info" => tracing::info!(hook, "{msg}"),
                "warn" | "warning" => tracing::warn!(hook, "{msg}"),
                "error" => tracing::error!(hook, "{msg}"),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "spilo.log: unknown level '{other}' (debug, info, warn, error)"
                    )))
                }
            }
            Ok(())
        })?,
    )?;

    let print: Function = lua.create_function(|_, args: MultiValue| {
        let line: Vec<String> = args.iter().map(display).collect();
        tracing::info!(hook = current(), "{}", line.join("\t"));
        Ok(())
    })?;
    lua.globals().set("print", print)?;

    spilo.set(
        "env",
        lua.create_function(|_, name: String| Ok(std::env::var(name).ok()))?,
    )?;

    {
        let rt = rt.clone();
        let deadline = deadline.clone();
        spilo.set(
            "exec",
            lua.create_function(move |lua, (argv, opts): (Table, Option<Table>)| {
                let argv: Vec<String> = argv
                    .sequence_values::<String>()
                    .collect::<mlua::Result<_>>()
                    .map_err(|e| {
                        mlua::Error::runtime(format!("spilo.exec: argv must be strings: {e}"))
                    })?;
                if argv.is_empty() {
                    return Err(mlua::Error::runtime("spilo.exec: argv is empty"));
                }
                let timeout = bounded(option_secs(&opts, "timeout")?, deadline());
                let (code, out, err) = rt.block_on(run(&argv, timeout));
                let out_s = lua.create_string(&out)?;
                let err_s = lua.create_string(&err)?;
                Ok((code, out_s, err_s))
            })?,
        )?;
    }

    {
        let rt = rt.clone();
        let deadline = deadline.clone();
        spilo.set(
            "http",
            lua.create_function(
                move |lua, (method, url, opts): (String, String, Option<Table>)| {
                    let timeout = bounded(option_secs(&opts, "timeout")?, deadline());
                    let body: Option<mlua::LuaString> = match &opts {
                        Some(o) => o.get("body")?,
                        None => None,
                    };
                    let mut headers = Vec::new();
                    if let Some(o) = &opts {
                        if let Some(h) = o.get::<Option<Table>>("headers")? {
                            for pair in h.pairs::<String, String>() {
                                headers.push(pair?);
                            }
                        }
                    }
                    let body = body.map(|b| b.as_bytes().to_vec());
                    match rt.block_on(crate::api::client::request(
                        &method, &url, body, &headers, timeout,
                    )) {
                        Ok((status, body)) => Ok((
                            LuaValue::Integer(i64::from(status)),
                            lua.create_string(&body)?,
                        )),
                        Err(e) => Ok((
                            LuaValue::Nil,
                            lua.create_string(format!("{method} {url}: {e}"))?,
                        )),
                    }
                },
            )?,
        )?;
    }

    lua.globals().set("spilo", spilo)?;
    Ok(())
}

/// Text for a log line.
fn display(v: &LuaValue) -> String {
    match v {
        LuaValue::String(s) => s.to_string_lossy().to_string(),
        LuaValue::Nil => "nil".into(),
        LuaValue::Boolean(b) => b.to_string(),
        LuaValue::Integer(i) => i.to_string(),
        LuaValue::Number(n) => n.to_string(),
        other => format!("<{}>", other.type_name()),
    }
}

/// `opts[key]` as seconds.
fn option_secs(opts: &Option<Table>, key: &str) -> mlua::Result<Option<Duration>> {
    let Some(o) = opts else { return Ok(None) };
    match o.get::<Option<f64>>(key)? {
        None => Ok(None),
        Some(s) if s > 0.0 && s <= 3600.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(mlua::Error::runtime(format!(
            "{key} = {s}: must be between 0 and 3600 seconds"
        ))),
    }
}

/// The requested timeout (or the default), never past the handler's deadline.
fn bounded(requested: Option<Duration>, deadline: Instant) -> Duration {
    let left = deadline.saturating_duration_since(crate::clock::now());
    requested
        .unwrap_or(DEFAULT_CALL_TIMEOUT)
        .min(left)
        .max(Duration::from_millis(1))
}

/// Runs `argv` without a shell: `(exit code or nil, stdout, stderr)`; on a timeout the child is
/// killed and stderr says so.
async fn run(argv: &[String], timeout: Duration) -> (Option<i64>, Vec<u8>, Vec<u8>) {
    #[allow(clippy::disallowed_methods)] // spilo.exec, the hooks' bounded command runner
    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return (None, Vec::new(), format!("{}: {e}", argv[0]).into_bytes()),
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let mut o = out.stdout;
            let mut e = out.stderr;
            o.truncate(MAX_OUTPUT);
            e.truncate(MAX_OUTPUT);
            (out.status.code().map(i64::from), o, e)
        }
        Ok(Err(e)) => (None, Vec::new(), format!("{}: {e}", argv[0]).into_bytes()),
        Err(_) => (
            None,
            Vec::new(),
            format!("{}: killed after {timeout:?}", argv[0]).into_bytes(),
        ),
    }
}
