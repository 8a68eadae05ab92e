-- sweep_leases.lua: leases whose time is up become orphans to delete.
--
-- KEYS[1] leases hash   KEYS[2] lease deadlines zset   KEYS[3] orphaned list
-- KEYS[4] the metrics hash of no pool
-- ARGV[1] now (ms)   ARGV[2] at most this many leases per call
-- ARGV[3] the prefix of a pool's metrics hash: the one key built here, as a lease's pool is
-- known only once it is read
--
-- A lease still pending at its deadline belongs to a request that was never answered for sure
-- (its consumer crashed and the request was dead-lettered): the VM's fate is unknown, so it is
-- deleted, never reused (reason "lease_expired"). A handed-out lease past WARMER_MAX_HANDOUT_AGE
-- belongs to a worker that never deleted its VM ("handout_expired"). An expired pending lease is
-- its request's outcome: checkouts|lease_expired of its pool.
-- Returns {pending orphaned, handed expired}.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local pending, handed = 0, 0
for _, identity in ipairs(due) do
  local raw = redis.call('HGET', KEYS[1], identity)
  if raw then
    local lease = cjson.decode(raw)
    if lease.state == 'pending' then
      orphan_entry(KEYS[3], lease.entry, 'lease_expired')
      local metrics = KEYS[4]
      if type(lease.pool) == 'string' and lease.pool ~= '' then metrics = ARGV[3] .. lease.pool end
      count(metrics, 'checkouts|lease_expired')
      pending = pending + 1
    else
      orphan_entry(KEYS[3], lease.entry, 'handout_expired')
      handed = handed + 1
    end
    redis.call('HDEL', KEYS[1], identity)
  end
  redis.call('ZREM', KEYS[2], identity)
end
return {pending, handed}
