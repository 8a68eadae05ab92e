-- finish_boot.lua: a booted VM joins its pool (at the tail: it is the youngest) and releases
-- its boot slot, in one step.
--
-- KEYS[1] poolconfigs hash   KEYS[2] the pool's list   KEYS[3] the pool's booting zset
-- KEYS[4] orphaned list   KEYS[5] the pool's metrics hash   KEYS[6] the metrics hash of no pool
-- KEYS[7] the pool's boot times list
-- ARGV[1] pool name   ARGV[2] VM name   ARGV[3] pool entry (JSON)   ARGV[4] zone   ARGV[5] now (ms)
-- ARGV[6] the bucket of the boot's duration   ARGV[7] the boot's duration (ms)
--
-- Invariant: the VM is pushed only if it still held an unexpired reservation and the pool wants
-- it (the target may have been lowered, or the pool deleted, while it booted); otherwise it is
-- recorded in orphaned, to be deleted. Either way it is never unaccounted for. Idempotent: run
-- again (a retry after a dropped connection), it finds its entry in the pool and says "ready"
-- instead of recording a pooled VM as an orphan, and counts nothing more.
--
-- Counts boots|<zone>|<result> (the result returned; a deleted pool's under no pool) and
-- observes the boot's duration in boot_duration|<zone>, whatever the result: the cloud took
-- that long. The duration also joins the pool's last 20 boot times, for the sizer (unless the
-- pool is gone); the list expires 9 days after the pool's last boot.
-- The pool's booting and idle VMs are integrated as they change (see prelude.lua).
-- Returns "ready", "expired", "no_pool" or "surplus".
local function counted(result, metrics)
  count(metrics or KEYS[5], 'boots|' .. ARGV[4] .. '|' .. result)
  if not metrics then
    redis.call('LPUSH', KEYS[7], ARGV[7])
    redis.call('LTRIM', KEYS[7], 0, 19)
    redis.call('EXPIRE', KEYS[7], 777600)
  end
  observe(KEYS[6], 'boot_duration|' .. ARGV[4], ARGV[6], ARGV[7])
  return result
end
local function orphaned(reason, metrics)
  orphan(KEYS[4], ARGV[2], ARGV[4], reason)
  return counted(reason, metrics)
end
-- A reservation past its expiry no longer protects the VM: the reconciler may have deleted it.
local expires = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[2]))
if not expires and redis.call('LPOS', KEYS[2], ARGV[3]) then
  return 'ready'
end
if redis.call('ZREM', KEYS[3], ARGV[2]) == 1 then
  integrate(KEYS[5], 'booting_vm', redis.call('ZCARD', KEYS[3]))
end
if not expires or expires < tonumber(ARGV[5]) then
  return orphaned('expired')
end
local target = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if not target then
  return orphaned('no_pool', KEYS[6])
end
if redis.call('LLEN', KEYS[2]) + redis.call('ZCARD', KEYS[3]) >= target then
  return orphaned('surplus')
end
redis.call('RPUSH', KEYS[2], ARGV[3])
integrate(KEYS[5], 'idle_vm', redis.call('LLEN', KEYS[2]))
return counted('ready')
