-- reserve_boots.lua: reserve boot slots for a pool, never beyond its target.
--
-- KEYS[1] poolconfigs hash   KEYS[2] the pool's list   KEYS[3] the pool's booting zset
-- KEYS[4] orphaned list   KEYS[5] brake key
-- ARGV[1] pool name   ARGV[2] now (ms)   ARGV[3] when the new reservations expire (ms)
-- ARGV[4..] names for the new VMs, as many as this process can boot now
--
-- Invariant: ready + booting <= target, whatever the number of refill processes: the count and
-- the reservation are one step. A reservation past its expiry belongs to a booter that died;
-- its VM may exist, so it is recorded in orphaned (zone unknown) and its slot freed.
-- Idempotent: names of ARGV that already hold a reservation (this call ran before, and its
-- answer was lost with the connection) are returned as reserved again, not counted twice.
-- Returns {target (-1: no pool), ready, booting, braked (0/1), reserved names...}.
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
for _, name in ipairs(expired) do
  orphan(KEYS[4], name, nil, 'boot_abandoned')
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
end

local target = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local ready = redis.call('LLEN', KEYS[2])
local booting = redis.call('ZCARD', KEYS[3])
if not target then
  return {-1, ready, booting, 0}
end
local result = {target, ready, booting, 0}
local fresh = {}
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[3], ARGV[i]) then
    table.insert(result, ARGV[i])
  else
    table.insert(fresh, ARGV[i])
  end
end
if #result > 4 then
  return result
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  result[4] = 1
  return result
end
local deficit = target - ready - booting
local i = 1
while deficit > 0 and fresh[i] do
  redis.call('ZADD', KEYS[3], ARGV[3], fresh[i])
  table.insert(result, fresh[i])
  deficit = deficit - 1
  i = i + 1
end
return result
