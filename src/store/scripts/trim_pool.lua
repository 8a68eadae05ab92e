-- trim_pool.lua: a pool above its target (the target was lowered) gives up its surplus warmed
-- VMs, oldest first, into orphaned, to be deleted.
--
-- KEYS[1] poolconfigs hash   KEYS[2] the pool's list   KEYS[3] the pool's booting zset
-- KEYS[4] orphaned list   KEYS[5] refill hints zset   KEYS[6] the pool's metrics hash
-- ARGV[1] pool name
--
-- The refill consumer runs it first when it looks at a pool, so it also clears the pool's
-- pending refill hint: a checkout from now on records a new one (see checkout.lua).
-- Invariant: afterwards ready + booting <= target, or ready == 0 (boots in flight cannot be
-- cancelled; finish_boot.lua orphans them on arrival). Counts evictions|surplus. Returns the number of VMs trimmed.
redis.call('ZREM', KEYS[5], ARGV[1])
local target = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if not target then
  return 0
end
local ready = redis.call('LLEN', KEYS[2])
local surplus = math.min(ready + redis.call('ZCARD', KEYS[3]) - target, ready)
local trimmed = 0
while trimmed < surplus do
  local entry = redis.call('LPOP', KEYS[2])
  if not entry then break end
  orphan_entry(KEYS[4], entry, 'surplus')
  trimmed = trimmed + 1
end
if trimmed > 0 then
  count(KEYS[6], 'evictions|surplus', trimmed)
  integrate(KEYS[6], 'idle_vm', redis.call('LLEN', KEYS[2]))
end
return trimmed
