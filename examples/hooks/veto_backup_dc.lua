-- Keep the backup data centre in reserve: a node tagged `dc: backup` may not promote while any
-- node tagged `dc: main` is a healthy candidate (running, a replica, lag within the limit).
-- Then one of the main nodes takes over instead; if none is healthy, the backup node may.
--
--   tags:
--     dc: backup
--   hooks:
--     script: /etc/spilo/hooks/veto_backup_dc.lua
--     events:
--       before_promote: {timeout: 2, on_error: allow}
--
-- SPILO_MAX_LAG_BYTES (default 16 MiB) is the lag above which a main node no longer counts.

local max_lag = tonumber(spilo.env('SPILO_MAX_LAG_BYTES') or '') or 16 * 1024 * 1024

local function healthy(m)
  return m.state == 'running' and m.role == 'replica'
    and m.tags ~= nil and m.tags.nofailover ~= true
    and (m.lag == nil or m.lag <= max_lag)
end

spilo.on('before_promote', function(ctx)
  if ctx.tags == nil or ctx.tags.dc ~= 'backup' then return true end
  for _, m in ipairs(ctx.members) do
    if m.name ~= ctx.member and m.tags ~= nil and m.tags.dc == 'main' and healthy(m) then
      return false, string.format('%s is in dc backup and %s (dc main) is healthy', ctx.member, m.name)
    end
  end
  return true
end)

-- Among the allowed candidates, prefer the main data centre.
spilo.on('choose_failover_candidate', function(ctx, candidates)
  local dc = {}
  for _, m in ipairs(ctx.members) do
    dc[m.name] = m.tags and m.tags.dc
  end
  for _, name in ipairs(candidates) do
    if dc[name] == 'main' then return name end
  end
  return nil
end)
