-- finish_boot.lua: a booted VM joins its pool (at the tail: it is the youngest) and releases
-- its boot slot, in one step.
--
-- KEYS[1] poolconfigs hash   KEYS[2] the pool's list   KEYS[3] the pool's booting zset
-- KEYS[4] orphaned list
-- ARGV[1] pool name   ARGV[2] VM name   ARGV[3] pool entry (JSON)   ARGV[4] zone   ARGV[5] now (ms)
--
-- Invariant: the VM is pushed only if it still held an unexpired reservation and the pool wants
-- it (the target may have been lowered, or the pool deleted, while it booted); otherwise it is
-- recorded in orphaned, to be deleted. Either way it is never unaccounted for. Idempotent: run
-- again (a retry after a dropped connection), it finds its entry in the pool and says "ready"
-- instead of recording a pooled VM as an orphan.
-- Returns "ready", "expired", "no_pool" or "surplus".
local function orphaned(reason)
  orphan(KEYS[4], ARGV[2], ARGV[4], reason)
  return reason
end
-- A reservation past its expiry no longer protects the VM: the reconciler may have deleted it.
local expires = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[2]))
if not expires and redis.call('LPOS', KEYS[2], ARGV[3]) then
  return 'ready'
end
redis.call('ZREM', KEYS[3], ARGV[2])
if not expires or expires < tonumber(ARGV[5]) then
  return orphaned('expired')
end
local target = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if not target then
  return orphaned('no_pool')
end
if redis.call('LLEN', KEYS[2]) + redis.call('ZCARD', KEYS[3]) >= target then
  return orphaned('surplus')
end
redis.call('RPUSH', KEYS[2], ARGV[3])
return 'ready'
