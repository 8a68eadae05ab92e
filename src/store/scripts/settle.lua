-- settle.lua: record that leases' replies reached the broker: their VMs are handed out. One call
-- settles a batch of requests (every request answered since the last call).
--
-- KEYS[1] leases hash   KEYS[2] lease deadlines zset   KEYS[3] the metrics hash of no pool
-- KEYS[4] lease keys zset   KEYS[5 ..] the metrics hashes of the batch's pools
-- ARGV[1] the metrics field of a handed-out checkout   ARGV[2] the checkout wait histogram's
-- family   ARGV[3 ..]: per lease, six values: request identity, when its handed-out record expires (ms), the
-- index in KEYS of its pool's metrics hash, the bucket of its checkout wait, the wait (ms), and
-- the request's deadline (ms), after which no redelivery is sent the VM again: its SSH key
-- leaves the lease then (sweep_leases.lua)
--
-- Each record is kept (state "handed") so that a redelivered request gets the same VM again, and
-- until WARMER_MAX_HANDOUT_AGE, after which sweep_leases.lua records the VM for deletion. The
-- state is rewritten in place, as checkout.lua's cjson wrote it, without decoding the record and
-- the pool entry it holds. A lease settled now counts as handed out (ARGV[1]) in its pool's
-- metrics and its wait is observed (ARGV[2]). Idempotent: a lease already handed out is left as it is
-- and counted no more.
-- A lease settled now adds one to its pool's handed-out VMs (integrated, see prelude.lua).
-- Returns, per identity: 1 settled now, 2 already settled, 0 the lease is gone (swept).
local pending, handed = '"state":"pending"', '"state":"handed"'
local results = {}
-- Leases settled now per pool metrics hash (by index in KEYS), integrated once each below.
local settled = {}
for i = 3, #ARGV, 6 do
  local identity = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], identity)
  if not raw then
    table.insert(results, 0)
  else
    local from, to = string.find(raw, pending, 1, true)
    if from then
      redis.call('HSET', KEYS[1], identity, string.sub(raw, 1, from - 1) .. handed .. string.sub(raw, to + 1))
      redis.call('ZADD', KEYS[2], ARGV[i + 1], identity)
      redis.call('ZADD', KEYS[4], ARGV[i + 5], identity)
      count(KEYS[tonumber(ARGV[i + 2])], ARGV[1])
      local index = tonumber(ARGV[i + 2])
      settled[index] = (settled[index] or 0) + 1
      observe(KEYS[3], ARGV[2], ARGV[i + 3], ARGV[i + 4])
      table.insert(results, 1)
    else
      table.insert(results, 2)
    end
  end
end
if next(settled) then
  local now = server_ms()
  for index, n in pairs(settled) do
    integrate(KEYS[index], 'handed_vm', nil, n, now)
  end
end
return results
