-- forget_leases.lua: the reconciler forgets handed-out leases whose VM the cloud no longer has
-- (the worker deleted it when its job ended), so that the leases count only VMs that exist
-- (the fleet cap counts them) and Redis does not keep them for WARMER_MAX_HANDOUT_AGE.
--
-- KEYS[1] leases hash   KEYS[2] lease deadlines zset   KEYS[3] lease keys zset
-- ARGV[1] the prefix of a pool's metrics hash (a lease's pool is known once it is read)
-- ARGV[2 ..]: pairs of request identity and the name of the VM the reconciler found gone
--
-- A lease is forgotten only while it is handed out and names that VM: one a checkout made or
-- changed since the snapshot is left alone. Past its request's deadline (the reconciler waits
-- for it), no redelivery can be sent the VM, so nothing needs the lease any more.
-- Each lease forgotten takes one from its pool's handed-out VMs (see prelude.lua).
-- Returns the number forgotten.
local forgotten = 0
for i = 2, #ARGV, 2 do
  local identity, vm = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', KEYS[1], identity)
  if raw then
    local ok, lease = pcall(cjson.decode, raw)
    if ok and type(lease) == 'table' and lease.state == 'handed' and type(lease.entry) == 'string' then
      local decoded, entry = pcall(cjson.decode, lease.entry)
      if decoded and type(entry) == 'table' and entry.name == vm then
        redis.call('HDEL', KEYS[1], identity)
        redis.call('ZREM', KEYS[2], identity)
        redis.call('ZREM', KEYS[3], identity)
        if type(lease.pool) == 'string' and lease.pool ~= '' then
          integrate(ARGV[1] .. lease.pool, 'handed_vm', nil, -1)
        end
        forgotten = forgotten + 1
      end
    end
  end
end
return forgotten
