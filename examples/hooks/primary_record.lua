-- Keep a DNS-style record file that names the primary, for a zone file include, a hosts file
-- fragment or a service that watches the file:
--
--   primary.<scope>. 30 IN CNAME <member>.   ; term <leader generation>
--
--   hooks:
--     script: /etc/spilo/hooks/primary_record.lua
--
-- SPILO_RECORD_FILE (default /var/lib/spilo/primary.zone). The file is replaced atomically
-- (written beside it, then renamed), and only by the node that just became the primary, so
-- readers never see a half-written or stale-term record from this node.

local path = spilo.env('SPILO_RECORD_FILE') or '/var/lib/spilo/primary.zone'

local function publish(ctx)
  local line = string.format('primary.%s. 30 IN CNAME %s. ; term %s timeline %s',
    ctx.scope, ctx.member, tostring(ctx.term), tostring(ctx.timeline))
  local code, _, err = spilo.exec(
    {'sh', '-c', 'printf "%s\\n" "$1" > "$2.tmp" && mv -f "$2.tmp" "$2"', 'record', line, path},
    {timeout = 5})
  if code ~= 0 then
    spilo.log('error', 'could not write ' .. path .. ': ' .. tostring(err))
  else
    spilo.log('info', 'record updated: ' .. line)
  end
end

spilo.on('on_promote', publish)
-- A primary that restarts in place (same role) keeps the record current too.
spilo.on('on_start', function(ctx)
  if ctx.role == 'primary' then publish(ctx) end
end)
