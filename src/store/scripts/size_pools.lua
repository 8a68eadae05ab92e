-- size_pools.lua: the sizer's decisions become pools' targets.
--
-- KEYS[1] poolconfigs hash   KEYS[2] sizing hash (pool → last decision)
-- ARGV: triples of (pool, target, decision JSON)
--
-- Invariant: a target is written only for a pool that exists: a pool deleted while the sizer
-- decided stays deleted. Idempotent. Returns how many pools were written.
local written = 0
for i = 1, #ARGV, 3 do
  local pool = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], pool) == 1 then
    redis.call('HSET', KEYS[1], pool, ARGV[i + 1])
    redis.call('HSET', KEYS[2], pool, ARGV[i + 2])
    written = written + 1
  end
end
return written
