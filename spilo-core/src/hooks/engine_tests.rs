//! The hook engine on real Lua: registration, answers, limits, the sandbox, reloads.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::config::HookEventSettings;

struct Script {
    dir: tempfile::TempDir,
}

impl Script {
    fn new() -> Script {
        Script {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write script");
        p
    }
}

fn settings(timeout_ms: u64, instructions: u64) -> HookSettings {
    HookSettings {
        script: None,
        defaults: crate::hooks::HookLimits {
            timeout: Duration::from_millis(timeout_ms),
            instructions,
            memory_mb: 16,
        },
        per_event: Default::default(),
        on_error: Default::default(),
        callback_timeout: Duration::from_secs(5),
    }
}

fn start(path: &Path, s: HookSettings) -> (Engine, Arc<HookStats>) {
    let stats = Arc::new(HookStats::default());
    let e = Engine::start(path, s, stats.clone()).expect("script loads");
    (e, stats)
}

fn ctx() -> Value {
    json!({"event": "before_promote", "member": "n1", "scope": "demo", "role": "replica",
           "members": [{"name": "n1"}, {"name": "n2"}]})
}

#[test]
fn a_syntax_error_names_the_file_and_line() {
    let s = Script::new();
    let p = s.write(
        "broken.lua",
        "spilo.on('on_start', function(ctx)\n  x = = 1\nend)\n",
    );
    let err = Engine::start(&p, settings(1000, 1_000_000), Arc::default())
        .err()
        .expect("a syntax error must be refused");
    assert!(
        matches!(err, crate::hooks::LoadError::Script { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("broken.lua:2"),
        "the error must name file and line: {err}"
    );
}

#[test]
fn unknown_events_and_non_functions_are_refused_at_load() {
    let s = Script::new();
    let p = s.write("a.lua", "spilo.on('on_promotion', function() end)\n");
    let err = Engine::start(&p, settings(1000, 1_000_000), Arc::default())
        .err()
        .expect("unknown event");
    assert!(
        err.to_string().contains("unknown event 'on_promotion'"),
        "{err}"
    );
    let p = s.write("b.lua", "spilo.on('on_start', 42)\n");
    let err = Engine::start(&p, settings(1000, 1_000_000), Arc::default())
        .err()
        .expect("not a function");
    assert!(err.to_string().contains("must be a function"), "{err}");
}

#[test]
fn an_endless_script_body_is_cut_off_at_load() {
    let s = Script::new();
    let p = s.write("loop.lua", "while true do end\n");
    let started = crate::clock::now();
    let err = Engine::start(&p, settings(300, u64::MAX / 4), Arc::default())
        .err()
        .expect("must not load");
    assert!(err.to_string().contains("deadline"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn before_promote_handlers_run_in_order_and_the_first_veto_wins() {
    let s = Script::new();
    let p = s.write(
        "veto.lua",
        r#"
        spilo.on('before_promote', function(ctx) return true end)
        spilo.on('before_promote', function(ctx)
          if ctx.member == 'n1' then return false, 'n1 is in the backup site' end
        end)
        spilo.on('before_promote', function(ctx) error('never reached') end)
        "#,
    );
    let (e, stats) = start(&p, settings(2000, 10_000_000));
    assert!(e.handles(Event::BeforePromote));
    assert!(!e.handles(Event::OnStart));
    assert_eq!(
        e.before_promote(ctx()).await,
        Gate::Veto("before_promote: n1 is in the backup site".into())
    );
    let mut other = ctx();
    other["member"] = json!("n2");
    // n2: the second handler allows, the third raises: the error (on_error allow) allows.
    assert_eq!(e.before_promote(other).await, Gate::Allow);
    assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn on_error_deny_turns_a_failure_into_a_veto() {
    let s = Script::new();
    let p = s.write(
        "err.lua",
        "spilo.on('before_promote', function(ctx) return 'yes' end)\n",
    );
    let mut st = settings(2000, 10_000_000);
    st.on_error
        .insert(Event::BeforePromote, crate::config::OnError::Deny);
    let (e, _) = start(&p, st);
    match e.before_promote(ctx()).await {
        Gate::Veto(r) => assert!(r.contains("returned a string"), "{r}"),
        g => panic!("a bad answer with on_error deny allowed promotion: {g:?}"),
    }
}

#[tokio::test]
async fn choose_failover_candidate_can_only_pick_an_allowed_candidate() {
    let s = Script::new();
    let p = s.write(
        "choose.lua",
        r#"
        spilo.on('choose_failover_candidate', function(ctx, candidates)
          if ctx.member == 'pick-last' then return candidates[#candidates] end
          if ctx.member == 'pick-outsider' then return 'n9' end
          return nil
        end)
        "#,
    );
    let (e, _) = start(&p, settings(2000, 10_000_000));
    let cands = vec!["n2".to_string(), "n3".to_string()];
    let mut c = ctx();
    c["member"] = json!("pick-last");
    assert_eq!(
        e.choose_candidate(c.clone(), cands.clone()).await,
        Choice::Member("n3".into())
    );
    c["member"] = json!("nobody-in-particular");
    assert_eq!(
        e.choose_candidate(c.clone(), cands.clone()).await,
        Choice::Default
    );
    // A name outside the allowed list is an error: on_error allow keeps the default.
    c["member"] = json!("pick-outsider");
    assert_eq!(e.choose_candidate(c, cands).await, Choice::Default);
}

#[tokio::test]
async fn an_infinite_loop_is_cut_off_even_under_pcall() {
    let s = Script::new();
    let p = s.write(
        "loop.lua",
        r#"
        spilo.on('before_promote', function(ctx)
          while true do pcall(function() while true do end end) end
        end)
        "#,
    );
    // A budget far beyond the deadline: the deadline must stop it.
    let (e, stats) = start(&p, settings(300, u64::MAX / 4));
    let started = crate::clock::now();
    assert_eq!(e.before_promote(ctx()).await, Gate::Allow, "on_error allow");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 1);
    // The engine still answers afterwards.
    assert_eq!(e.before_promote(ctx()).await, Gate::Allow);
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn the_instruction_budget_stops_a_long_computation() {
    let s = Script::new();
    let p = s.write(
        "count.lua",
        r#"
        spilo.on('choose_failover_candidate', function(ctx, c)
          local n = 0
          for i = 1, 1e9 do n = n + i end
          return c[1]
        end)
        "#,
    );
    let (e, stats) = start(&p, settings(60_000, 1_000_000));
    let started = crate::clock::now();
    assert_eq!(
        e.choose_candidate(ctx(), vec!["n2".into()]).await,
        Choice::Default
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit() {
    let s = Script::new();
    let p = s.write(
        "bomb.lua",
        r#"
        spilo.on('before_promote', function(ctx)
          local t = {}
          for i = 1, 1e8 do t[i] = string.rep('x', 1024) .. i end
          return false, 'unreachable'
        end)
        "#,
    );
    let mut st = settings(30_000, u64::MAX / 4);
    st.on_error
        .insert(Event::BeforePromote, crate::config::OnError::Deny);
    let (e, stats) = start(&p, st);
    match e.before_promote(ctx()).await {
        Gate::Veto(r) => assert!(r.contains("memory limit"), "{r}"),
        g => panic!("{g:?}"),
    }
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_sleeping_exec_is_cut_off_at_the_handler_deadline() {
    let s = Script::new();
    let p = s.write(
        "sleep.lua",
        r#"
        spilo.on('before_promote', function(ctx)
          local code, out, err = spilo.exec({'sleep', '30'}, {timeout = 60})
          if code == nil then return false, 'exec: ' .. err end
          return true
        end)
        "#,
    );
    let (e, _) = start(&p, settings(500, u64::MAX / 4));
    let started = crate::clock::now();
    match e.before_promote(ctx()).await {
        Gate::Veto(r) => assert!(r.contains("killed after"), "{r}"),
        g => panic!("{g:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn exec_returns_status_and_output_and_env_reads_variables() {
    let s = Script::new();
    let p = s.write(
        "exec.lua",
        r#"
        spilo.on('before_promote', function(ctx)
          local code, out = spilo.exec({'sh', '-c', 'echo hello; exit 3'})
          return false, string.format('%s|%s|%s', code, out:gsub('%s+$', ''), tostring(spilo.env('PATH') ~= nil))
        end)
        "#,
    );
    let (e, _) = start(&p, settings(5000, 10_000_000));
    assert_eq!(
        e.before_promote(ctx()).await,
        Gate::Veto("before_promote: 3|hello|true".into())
    );
}

#[tokio::test]
async fn the_sandbox_has_no_io_no_os_exit_and_a_read_only_ctx() {
    let s = Script::new();
    let p = s.write(
        "sandbox.lua",
        r#"
        spilo.on('before_promote', function(ctx)
          local missing = {}
          if io ~= nil then table.insert(missing, 'io') end
          if os.exit ~= nil then table.insert(missing, 'os.exit') end
          if os.execute ~= nil then table.insert(missing, 'os.execute') end
          if os.remove ~= nil then table.insert(missing, 'os.remove') end
          if dofile ~= nil or loadfile ~= nil or load ~= nil then table.insert(missing, 'load') end
          local ok, err = pcall(function() ctx.role = 'primary' end)
          if ok then table.insert(missing, 'ctx writable') end
          if ctx.members[2].name ~= 'n2' then table.insert(missing, 'ctx.members') end
          if #missing > 0 then return false, table.concat(missing, ',') end
          return false, 'sandboxed'
        end)
        "#,
    );
    let (e, _) = start(&p, settings(2000, 10_000_000));
    assert_eq!(
        e.before_promote(ctx()).await,
        Gate::Veto("before_promote: sandboxed".into())
    );
}

#[tokio::test]
async fn notifications_run_every_handler_in_order() {
    let s = Script::new();
    let out = s.dir.path().join("events.log");
    let p = s.write(
        "notify.lua",
        &format!(
            r#"
            local out = '{}'
            local function note(line) spilo.exec({{'sh', '-c', 'echo "$1" >> "$2"', 'x', line, out}}) end
            spilo.on('on_role_change', function(ctx) note('first ' .. ctx.old_role .. '>' .. ctx.role) end)
            spilo.on('on_role_change', function(ctx) error('boom') end)
            spilo.on('on_role_change', function(ctx) note('third') end)
            "#,
            out.display()
        ),
    );
    let (e, stats) = start(&p, settings(2000, 10_000_000));
    e.notify(
        Event::OnRoleChange,
        json!({"role": "primary", "old_role": "replica"}),
    );
    let started = crate::clock::now();
    let text = loop {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        if t.lines().count() >= 2 || started.elapsed() > Duration::from_secs(10) {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(text, "first replica>primary\nthird\n");
    assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_broken_script_on_reload_is_refused_and_the_old_one_kept() {
    let s = Script::new();
    let p = s.write(
        "v1.lua",
        "spilo.on('before_promote', function() return false, 'v1' end)\n",
    );
    let (e, _) = start(&p, settings(2000, 10_000_000));
    let broken = s.write("v2.lua", "spilo.on('before_promote', function()\n");
    let err = e
        .reload(broken, settings(2000, 10_000_000))
        .await
        .expect_err("broken script");
    assert!(err.to_string().contains("v2.lua"), "{err}");
    assert_eq!(
        e.before_promote(ctx()).await,
        Gate::Veto("before_promote: v1".into())
    );
    let good = s.write(
        "v3.lua",
        "spilo.on('before_promote', function() return false, 'v3' end)\n",
    );
    e.reload(good, settings(2000, 10_000_000))
        .await
        .expect("good script");
    assert_eq!(
        e.before_promote(ctx()).await,
        Gate::Veto("before_promote: v3".into())
    );
}

#[test]
fn per_event_settings_are_checked() {
    let mut cfg: crate::config::Config = serde_yaml::from_str(
        "scope: s\nname: n\nrestapi: {listen: '127.0.0.1:8008', connect_address: '127.0.0.1:8008'}\n\
         postgresql:\n  listen: 127.0.0.1:5432\n  connect_address: 127.0.0.1:5432\n  data_dir: /d\n  \
         authentication:\n    superuser: {username: p, password: x}\n    replication: {username: r, password: y}\n",
    )
    .expect("config");
    let mut hooks = crate::config::Hooks::default();
    hooks.events.insert(
        "on_start".into(),
        HookEventSettings {
            on_error: Some(crate::config::OnError::Deny),
            ..Default::default()
        },
    );
    cfg.hooks = Some(hooks.clone());
    let err = HookSettings::from_config(&cfg).expect_err("on_error on a notification");
    assert!(
        err.to_string().contains("hooks.events.on_start.on_error"),
        "{err}"
    );
    hooks.events.clear();
    hooks
        .events
        .insert("on_begin".into(), HookEventSettings::default());
    cfg.hooks = Some(hooks.clone());
    let err = HookSettings::from_config(&cfg).expect_err("unknown event");
    assert!(err.to_string().contains("hooks.events.on_begin"), "{err}");
    hooks.events.clear();
    hooks.events.insert(
        "before_promote".into(),
        HookEventSettings {
            timeout: Some(1.5),
            on_error: Some(crate::config::OnError::Deny),
            ..Default::default()
        },
    );
    hooks.timeout = Some(0.0);
    cfg.hooks = Some(hooks.clone());
    let err = HookSettings::from_config(&cfg).expect_err("zero timeout");
    assert!(err.to_string().contains("hooks.timeout"), "{err}");
    hooks.timeout = None;
    cfg.hooks = Some(hooks);
    let s = HookSettings::from_config(&cfg).expect("valid");
    assert_eq!(
        s.limits(Event::BeforePromote).timeout,
        Duration::from_millis(1500)
    );
    assert_eq!(
        s.on_error(Event::BeforePromote),
        crate::config::OnError::Deny
    );
    assert_eq!(
        s.on_error(Event::ChooseFailoverCandidate),
        crate::config::OnError::Allow
    );
    assert_eq!(s.limits(Event::OnStart).timeout, Duration::from_secs(5));
}

#[test]
fn a_runtime_error_carries_the_lua_traceback() {
    let s = Script::new();
    let p = s.write(
        "err.lua",
        "local function inner() error('boom from inner') end\n\
         spilo.on('before_promote', function(ctx) inner() end)\n",
    );
    let host = Host::load(&p, &settings(2000, 10_000_000)).expect("load");
    let f = host
        .handlers(Event::BeforePromote)
        .pop()
        .expect("a handler");
    match host.call(Event::BeforePromote, &f, &ctx(), None) {
        Err(HookError::Runtime { message, .. }) => {
            assert!(message.contains("err.lua:1: boom from inner"), "{message}");
            assert!(
                message.contains("stack traceback"),
                "no traceback in: {message}"
            );
        }
        other => panic!("{other:?}"),
    }
}
