-- Tell a chat or paging system when this node becomes the primary.
--
--   hooks:
--     script: /etc/spilo/hooks/webhook_on_promote.lua
--
-- SPILO_WEBHOOK_URL (http://…) receives a JSON POST; without it the hook only logs. A failed
-- call is logged and never affects the promotion (on_promote is a notification).

local url = spilo.env('SPILO_WEBHOOK_URL')

local function json_string(s)
  return '"' .. tostring(s):gsub('[%c"\\]', function(c)
    return string.format('\\u%04x', c:byte())
  end) .. '"'
end

spilo.on('on_promote', function(ctx)
  local text = string.format('%s: %s is the new primary (timeline %s, was %s)',
    ctx.scope, ctx.member, tostring(ctx.timeline), tostring(ctx.old_role))
  spilo.log('info', text)
  if not url then return end
  local body = string.format('{"text": %s, "scope": %s, "member": %s, "timeline": %s}',
    json_string(text), json_string(ctx.scope), json_string(ctx.member),
    tostring(ctx.timeline or 'null'))
  local status, answer = spilo.http('POST', url, {
    body = body,
    headers = {['Content-Type'] = 'application/json'},
    timeout = 3,
  })
  if status == nil or status >= 300 then
    spilo.log('warn', 'webhook ' .. url .. ' failed: ' .. tostring(status) .. ' ' .. tostring(answer))
  end
end)
