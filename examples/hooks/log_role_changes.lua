-- Append one line per role change, promotion, demotion, start, stop, restart and reload to a
-- log file.
--
--   hooks:
--     script: /etc/spilo/hooks/log_role_changes.lua
--
-- The file defaults to /var/log/spilo/roles.log; set SPILO_ROLE_LOG to change it. The hook
-- sandbox has no io library: files are written through spilo.exec, without a shell
-- interpreting the values (they are passed as arguments).

local path = spilo.env('SPILO_ROLE_LOG') or '/var/log/spilo/roles.log'

local function append(line)
  local code, _, err = spilo.exec(
    {'sh', '-c', 'printf "%s\\n" "$1" >> "$2"', 'append', line, path},
    {timeout = 5})
  if code ~= 0 then
    spilo.log('warn', 'could not append to ' .. path .. ': ' .. tostring(err))
  end
end

local function record(ctx)
  append(string.format('%s %s/%s %s %s->%s timeline=%s leader=%s term=%s',
    os.date('!%Y-%m-%dT%H:%M:%SZ'), ctx.scope, ctx.member, ctx.event,
    tostring(ctx.old_role), tostring(ctx.role), tostring(ctx.timeline),
    tostring(ctx.leader), tostring(ctx.term)))
end

for _, event in ipairs({'on_start', 'on_stop', 'on_restart', 'on_reload', 'on_role_change',
                        'on_promote', 'on_demote'}) do
  spilo.on(event, record)
end
