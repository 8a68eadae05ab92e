-- sweep_leases.lua: leases whose time is up become orphans to delete.
--
-- KEYS[1] leases hash   KEYS[2] lease deadlines zset   KEYS[3] orphaned list
-- KEYS[4] the metrics hash of no pool   KEYS[5] lease keys zset
-- ARGV[1] now (ms)   ARGV[2] at most this many leases per call
-- ARGV[3] the prefix of a pool's metrics hash: the one key built here, as a lease's pool is
-- known only once it is read   ARGV[4] the metrics field of a lease-expired checkout
--
-- A lease still pending at its deadline belongs to a request that was never answered for sure
-- (its consumer crashed and the request was dead-lettered): the VM's fate is unknown, so it is
-- deleted, never reused (reason "lease_expired"). A handed-out lease past WARMER_MAX_HANDOUT_AGE
-- belongs to a worker that never deleted its VM ("handout_expired"). An expired pending lease is
-- its request's outcome: lease_expired (ARGV[4]) in its pool's metrics.
--
-- A handed-out lease whose request's deadline has passed (lease keys zset) is sent to no
-- redelivery again (see checkout.lua): its entry is cut down to the VM's name and zone, so the
-- SSH key leaves Redis; the lease stays, to account for the VM, until its time is up.
-- A handed-out lease removed takes one from its pool's handed-out VMs (see prelude.lua).
-- Returns {pending orphaned, handed expired, keys removed}.
local stripped = 0
local unkeyed = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, identity in ipairs(unkeyed) do
  local raw = redis.call('HGET', KEYS[1], identity)
  if raw then
    local lease = cjson.decode(raw)
    if lease.state == 'handed' and not lease.stripped then
      local ok, vm = pcall(cjson.decode, lease.entry)
      local kept = {}
      if ok and type(vm) == 'table' then kept = {name = vm.name, zone = vm.zone} end
      lease.entry = cjson.encode(kept)
      lease.stripped = true
      redis.call('HSET', KEYS[1], identity, cjson.encode(lease))
      stripped = stripped + 1
    end
  end
  redis.call('ZREM', KEYS[5], identity)
end

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
      count(metrics, ARGV[4])
      pending = pending + 1
    else
      orphan_entry(KEYS[3], lease.entry, 'handout_expired')
      if type(lease.pool) == 'string' and lease.pool ~= '' then
        integrate(ARGV[3] .. lease.pool, 'handed_vm', nil, -1)
      end
      handed = handed + 1
    end
    redis.call('HDEL', KEYS[1], identity)
  end
  redis.call('ZREM', KEYS[2], identity)
  redis.call('ZREM', KEYS[5], identity)
end
return {pending, handed, stripped}
