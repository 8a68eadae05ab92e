-- delete_pool.lua: a deleted pool's warmed VMs are recorded for deletion, never leaked.
--
-- KEYS[1] poolconfigs hash   KEYS[2] the pool's list   KEYS[3] orphaned list
-- KEYS[4] the pool's metrics hash   KEYS[5] the metrics hash of no pool
-- KEYS[6] policies hash   KEYS[7] sizing hash
-- ARGV[1] pool name
--
-- The pool's policy and counters go with it (a pool created again under the name starts from zero); its
-- warmed VMs count as evictions|pool_deleted of no pool.
-- Returns the number of VMs moved to orphaned, or -1 when the pool did not exist.
local existed = redis.call('HDEL', KEYS[1], ARGV[1])
local entries = redis.call('LRANGE', KEYS[2], 0, -1)
for _, entry in ipairs(entries) do
  orphan_entry(KEYS[3], entry, 'pool_deleted')
end
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])
if #entries > 0 then
  count(KEYS[5], 'evictions|pool_deleted', #entries)
end
if existed == 0 and #entries == 0 then
  return -1
end
return #entries
