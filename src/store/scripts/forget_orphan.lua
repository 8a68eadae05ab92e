-- forget_orphan.lua: a claimed orphan record is forgotten once its VM is deleted, and the
-- deletion counted.
--
-- KEYS[1] claims zset   KEYS[2] the metrics hash of no pool
-- ARGV[1] the record, as stored   ARGV[2] its reason
--
-- Idempotent: the deletion counts in deletions|<reason> only along with the claim it removes,
-- so a second run (a retry after a dropped connection) counts nothing more.
-- Returns 1 if the claim was still there.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  count(KEYS[2], 'deletions|' .. ARGV[2])
end
return removed
