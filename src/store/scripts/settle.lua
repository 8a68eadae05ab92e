-- settle.lua: record that leases' replies reached the broker: their VMs are handed out. One call
-- settles a batch of requests (every request answered since the last call).
--
-- KEYS[1] leases hash   KEYS[2] lease deadlines zset
-- ARGV[1] now (ms, unused: `at` stays the time of the pop)   then pairs: ARGV[2k] request
-- identity, ARGV[2k+1] when its handed-out record expires (ms)
--
-- Each record is kept (state "handed") so that a redelivered request gets the same VM again, and
-- until WARMER_MAX_HANDOUT_AGE, after which sweep_leases.lua records the VM for deletion. The
-- state is rewritten in place, as checkout.lua's cjson wrote it, without decoding the record and
-- the pool entry it holds. Idempotent: a lease already handed out is left as it is.
-- Returns, per identity: 1 settled now, 2 already settled, 0 the lease is gone (swept).
local pending, handed = '"state":"pending"', '"state":"handed"'
local results = {}
for i = 2, #ARGV, 2 do
  local identity = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], identity)
  if not raw then
    table.insert(results, 0)
  else
    local from, to = string.find(raw, pending, 1, true)
    if from then
      redis.call('HSET', KEYS[1], identity, string.sub(raw, 1, from - 1) .. handed .. string.sub(raw, to + 1))
      redis.call('ZADD', KEYS[2], ARGV[i + 1], identity)
      table.insert(results, 1)
    else
      table.insert(results, 2)
    end
  end
end
return results
