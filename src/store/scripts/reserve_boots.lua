-- reserve_boots.lua: reserve boot slots for a pool, never beyond its target, and never beyond
-- the fleet cap.
--
-- KEYS[1] poolconfigs hash   KEYS[2] the pool's list   KEYS[3] the pool's booting zset
-- KEYS[4] orphaned list   KEYS[5] brake key   KEYS[6] leases hash   KEYS[7] fleet-capped key
-- KEYS[8] the pool's metrics hash
-- ARGV[1] pool name   ARGV[2] now (ms)   ARGV[3] when the new reservations expire (ms)
-- ARGV[4] the fleet cap (WARMER_MAX_VMS)   ARGV[5] the prefix of a pool's list key
-- ARGV[6] the prefix of a pool's booting key (the keys of every pool are built here: the cap
-- counts them all)   ARGV[7..] names for the new VMs, as many as this process can boot now
--
-- Invariant: ready + booting <= target, whatever the number of refill processes: the count and
-- the reservation are one step. And the fleet — every pool's ready and booting VMs plus every
-- lease (popped or handed out; the reconciler forgets handed-out leases whose VM is gone) —
-- never grows past the cap by a reservation, whatever the targets say: a target in Redis is
-- not trusted to bound the bill. A reservation the cap cuts short counts the boots it did not
-- reserve (fleet_capped) and sets the fleet-capped key (to the fleet's size); the first to set
-- it answers "newly capped" (2), so the process says so once; a reservation the cap does not
-- cut clears it.
-- A reservation past its expiry belongs to a booter that died; its VM may exist, so it is
-- recorded in orphaned (zone unknown) and its slot freed.
-- Idempotent: names of ARGV that already hold a reservation (this call ran before, and its
-- answer was lost with the connection) are returned as reserved again, not counted twice.
-- The pool's booting VMs are integrated as they change (see prelude.lua).
-- Returns {target (-1: no pool), ready, booting, braked (0/1), capped (0, 1, 2: newly),
--          reserved names...}.
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
for _, name in ipairs(expired) do
  orphan(KEYS[4], name, nil, 'boot_abandoned')
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
  integrate(KEYS[8], 'booting_vm', redis.call('ZCARD', KEYS[3]))
end

local target = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local ready = redis.call('LLEN', KEYS[2])
local booting = redis.call('ZCARD', KEYS[3])
if not target then
  return {-1, ready, booting, 0, 0}
end
local result = {target, ready, booting, 0, 0}
local fresh = {}
for i = 7, #ARGV do
  if redis.call('ZSCORE', KEYS[3], ARGV[i]) then
    table.insert(result, ARGV[i])
  else
    table.insert(fresh, ARGV[i])
  end
end
if #result > 5 then
  return result
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  result[4] = 1
  return result
end
local deficit = math.min(target - ready - booting, #fresh)
if deficit <= 0 then
  return result
end
local fleet = redis.call('HLEN', KEYS[6])
for _, pool in ipairs(redis.call('HKEYS', KEYS[1])) do
  fleet = fleet + redis.call('LLEN', ARGV[5] .. pool) + redis.call('ZCARD', ARGV[6] .. pool)
end
local room = tonumber(ARGV[4]) - fleet
if room < deficit then
  local granted = math.max(room, 0)
  count(KEYS[8], 'fleet_capped', deficit - granted)
  deficit = granted
  if redis.call('SET', KEYS[7], fleet, 'NX') then
    result[5] = 2
  else
    redis.call('SET', KEYS[7], fleet)
    result[5] = 1
  end
else
  redis.call('DEL', KEYS[7])
end
for i = 1, deficit do
  redis.call('ZADD', KEYS[3], ARGV[3], fresh[i])
  table.insert(result, fresh[i])
end
if deficit > 0 then
  integrate(KEYS[8], 'booting_vm', redis.call('ZCARD', KEYS[3]))
end
return result
