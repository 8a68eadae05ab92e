-- start_rollover.lua: `warmer pool rollover <from> <to>`.
--
-- KEYS[1] poolconfigs hash   KEYS[2] policies hash   KEYS[3] rollovers hash
-- KEYS[4] <to>'s metrics hash
-- ARGV[1] from   ARGV[2] to   ARGV[3] now (s)   ARGV[4] deadline (s)
--
-- Refused, changing nothing, when <from> has no target above 0 ({"no_target"}), when <from> or
-- <to> already takes part in a rollover in progress ({"rolling", pool}), or when <to> has a
-- target above 0 ({"to_has_target", target}). Otherwise, in one step: <to> gets <from>'s
-- target and policy, and the rollover is recorded with <to>'s boot counts so far (failures
-- are judged from there). Returns {"started", target}.
local from, to = ARGV[1], ARGV[2]
local target = tonumber(redis.call('HGET', KEYS[1], from))
if not target or target <= 0 then
  return {'no_target'}
end
local rollovers = redis.call('HGETALL', KEYS[3])
for i = 1, #rollovers, 2 do
  local r = cjson.decode(rollovers[i + 1])
  if r.state == 'rolling' then
    for _, pool in ipairs({rollovers[i], r.to}) do
      if pool == from or pool == to then
        return {'rolling', pool}
      end
    end
  end
end
local to_target = tonumber(redis.call('HGET', KEYS[1], to))
if to_target and to_target > 0 then
  return {'to_has_target', tostring(to_target)}
end
local failed, ready = 0, 0
local metrics = redis.call('HGETALL', KEYS[4])
for i = 1, #metrics, 2 do
  local field = metrics[i]
  if string.match(field, '^boots|.*|failed') then
    failed = failed + tonumber(metrics[i + 1])
  elseif string.match(field, '^boots|.*|ready$') then
    ready = ready + tonumber(metrics[i + 1])
  end
end
redis.call('HSET', KEYS[1], to, target)
local policy = redis.call('HGET', KEYS[2], from)
if policy then
  redis.call('HSET', KEYS[2], to, policy)
else
  redis.call('HDEL', KEYS[2], to)
end
redis.call('HSET', KEYS[3], from, cjson.encode({
  to = to, state = 'rolling', started_at = tonumber(ARGV[3]), deadline = tonumber(ARGV[4]),
  failed_before = failed, ready_before = ready}))
return {'started', tostring(target)}
