-- refuse_orphan.lua: a claimed orphan record that warmer must not act on — its name is not a
-- Compute Engine name, or the cloud shows the VM is not this deployment's — leaves the deleters
-- for good: it goes to the refused list, for an operator, and is counted.
--
-- KEYS[1] claims zset   KEYS[2] refused list   KEYS[3] the metrics hash of no pool
-- ARGV[1] the record, as stored   ARGV[2] why (invalid_name, foreign)   ARGV[3] now (ms)
-- ARGV[4] how many refused records are kept (the oldest go first)
--
-- Idempotent: only a record still claimed moves (and is counted), so a repeat does nothing.
-- Returns 1 if the record moved.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  local ok, record = pcall(cjson.decode, ARGV[1])
  if not (ok and type(record) == 'table') then record = {entry = ARGV[1]} end
  record.refused = ARGV[2]
  record.at = tonumber(ARGV[3])
  redis.call('RPUSH', KEYS[2], cjson.encode(record))
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
  count(KEYS[3], 'deletions_refused|' .. ARGV[2])
end
return removed
