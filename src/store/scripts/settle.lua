-- settle.lua: record that a lease's reply reached the broker: the VM is handed out.
--
-- KEYS[1] leases hash   KEYS[2] lease deadlines zset
-- ARGV[1] request identity   ARGV[2] now (ms)   ARGV[3] when the handed-out record expires (ms)
--
-- The record is kept (state "handed") so that a redelivered request gets the same VM again, and
-- until WARMER_MAX_HANDOUT_AGE, after which sweep.lua records the VM for deletion.
-- Returns 1 when settled now, 2 when it already was, 0 when the lease is gone (swept).
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local lease = cjson.decode(raw)
if lease.state == 'handed' then
  return 2
end
lease.state = 'handed'
lease.at = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(lease))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
