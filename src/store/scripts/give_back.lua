-- give_back.lua: a pending lease whose reply provably reached nobody returns its VM to the
-- *head* of its pool (it is still the oldest), or to orphaned if the pool was deleted meanwhile
-- or if the VM must not be reused.
--
-- KEYS[1] poolconfigs hash   KEYS[2] the pool's list   KEYS[3] leases hash
-- KEYS[4] lease deadlines zset   KEYS[5] orphaned list   KEYS[6] the pool's booting zset
-- KEYS[7] the pool's metrics hash
-- ARGV[1] request identity   ARGV[2] pool name   ARGV[3] "head", or the reason why the VM
-- must not be reused (an unreadable entry; a reply from an earlier delivery may have reached
-- the requester)   ARGV[4] the metrics field of the request's outcome, '' for none
--
-- Only a pending lease is given back (and its outcome counted, once): a handed-out VM is never returned to a pool, nor one the
-- pool no longer has room for (a replacement may be booting already: ready + booting <= target).
-- Returns {"head", entry}, {"orphaned", entry, reason} or {"none"}.
local raw = redis.call('HGET', KEYS[3], ARGV[1])
if not raw then
  return {'none'}
end
local lease = cjson.decode(raw)
if lease.state ~= 'pending' then
  return {'none'}
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if ARGV[4] ~= '' then
  count(KEYS[7], ARGV[4])
end
local reason = ARGV[3]
if reason == 'head' then
  local target = tonumber(redis.call('HGET', KEYS[1], ARGV[2]))
  if not target then
    reason = 'pool_deleted'
  elseif redis.call('LLEN', KEYS[2]) + redis.call('ZCARD', KEYS[6]) >= target then
    reason = 'surplus'
  else
    redis.call('LPUSH', KEYS[2], lease.entry)
    integrate(KEYS[7], 'idle_vm', redis.call('LLEN', KEYS[2]))
    return {'head', lease.entry}
  end
end
orphan_entry(KEYS[5], lease.entry, reason)
return {'orphaned', lease.entry, reason}
