-- claim_orphans.lua: a deleter takes records of orphaned to delete their VMs, so that deleters in
-- several processes never delete the same VM at once.
--
-- KEYS[1] orphaned list   KEYS[2] claims zset (record, exactly as stored → claim expiry, ms)
-- ARGV[1] now (ms)   ARGV[2] when the new claims expire (ms)   ARGV[3] at most this many
--
-- Invariant: a record is in orphaned or claimed, never neither: its VM stays accounted for. A
-- claim past its expiry belongs to a deleter that died or failed: it goes back to orphaned. A
-- record without a VM name (an unreadable pool entry kept for an operator) is never claimed: it
-- goes to the tail, so each record is looked at once per call.
-- Returns the claimed records.
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, record in ipairs(expired) do
  redis.call('RPUSH', KEYS[1], record)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
end
local claimed = {}
local want = tonumber(ARGV[3])
local left = redis.call('LLEN', KEYS[1])
while #claimed < want and left > 0 do
  left = left - 1
  local record = redis.call('LPOP', KEYS[1])
  local ok, vm = pcall(cjson.decode, record)
  if ok and type(vm) == 'table' and type(vm.name) == 'string' and vm.name ~= '' then
    redis.call('ZADD', KEYS[2], ARGV[2], record)
    table.insert(claimed, record)
  else
    redis.call('RPUSH', KEYS[1], record)
  end
end
return claimed
