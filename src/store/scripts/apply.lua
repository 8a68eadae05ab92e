-- apply.lua: applies pool changes (`warmer apply`) all or nothing, and records them in the history.
--
-- KEYS[1] poolconfigs hash   KEYS[2] policies hash   KEYS[3] sizing hash   KEYS[4] rollovers hash
-- KEYS[5] orphaned list   KEYS[6] the metrics hash of no pool   KEYS[7] history list
-- KEYS[6 + 2i], KEYS[7 + 2i]: the i-th change's (from 1) pool list and pool metrics hash
-- ARGV[1] the history's bound   ARGV[2] n, then n history entries (JSON, oldest first)
-- then five arguments per change: the pool; its target and its policy's JSON as the diff saw
-- them ('' for none); the new target ('=' keep, '-' delete the pool, else the number); the new
-- policy ('=' keep, '-' remove, else its JSON).
--
-- Invariant: nothing changes unless every pool is still as the diff saw it and none takes part
-- in a rollover in progress (the next pass would undo the change); a deleted pool's warmed VMs
-- are recorded for deletion as `delete_pool.lua` records them. A new or changed policy forgets
-- the sizer's last decision (`warmer status` shows "pending" until a pass decides).
-- Returns {'ok', changes} or {'changed', pool} or {'rolling', pool, from, to}.
local entries = tonumber(ARGV[2])
local first = 3 + entries

local rolling = {}
local rollovers = redis.call('HGETALL', KEYS[4])
for i = 1, #rollovers, 2 do
  local ok, rollover = pcall(cjson.decode, rollovers[i + 1])
  if ok and type(rollover) == 'table' and rollover.state == 'rolling' then
    local to = tostring(rollover.to)
    rolling[rollovers[i]] = {rollovers[i], to}
    rolling[to] = {rollovers[i], to}
  end
end

local changes = (#ARGV - first + 1) / 5
for i = 0, changes - 1 do
  local a = first + 5 * i
  local pool = ARGV[a]
  local target = redis.call('HGET', KEYS[1], pool) or ''
  local policy = redis.call('HGET', KEYS[2], pool) or ''
  if target ~= ARGV[a + 1] or policy ~= ARGV[a + 2] then
    return {'changed', pool}
  end
  if rolling[pool] then
    return {'rolling', pool, rolling[pool][1], rolling[pool][2]}
  end
end

for i = 0, changes - 1 do
  local a = first + 5 * i
  local pool, target, policy = ARGV[a], ARGV[a + 3], ARGV[a + 4]
  if target == '-' then
    delete_pool(KEYS[1], KEYS[2], KEYS[3], KEYS[8 + 2 * i], KEYS[9 + 2 * i], KEYS[5], KEYS[6], pool)
  else
    if target ~= '=' then
      redis.call('HSET', KEYS[1], pool, target)
    end
    if policy == '-' then
      redis.call('HDEL', KEYS[2], pool)
      redis.call('HDEL', KEYS[3], pool)
    elseif policy ~= '=' then
      redis.call('HSET', KEYS[2], pool, policy)
      redis.call('HDEL', KEYS[3], pool)
    end
  end
end

for i = 3, first - 1 do
  redis.call('LPUSH', KEYS[7], ARGV[i])
end
redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[1]) - 1)
return {'ok', tostring(changes)}
