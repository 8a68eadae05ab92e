-- finish_rollover.lua: a rollover in progress completes or is aborted.
--
-- KEYS[1] poolconfigs hash   KEYS[2] policies hash   KEYS[3] rollovers hash   KEYS[4] sizing hash
-- ARGV[1] from   ARGV[2] "completed" | "aborted"   ARGV[3] now (s)   ARGV[4] reason ("" if none)
--
-- Completed: <from> goes to target 0 (its warmed VMs are then evicted as surplus; handed-out
-- VMs are untouched) and its policy moves to <to>. Aborted: <to> goes to target 0 with no
-- policy, and <from> is left as it was. Either way the record keeps the outcome (for `warmer
-- status` and so that <to>'s sizer reads <from>'s demand). Idempotent: a rollover no longer in
-- progress is not touched, and 0 is returned; otherwise 1.
local from = ARGV[1]
local record = redis.call('HGET', KEYS[3], from)
if not record then return 0 end
local r = cjson.decode(record)
if r.state ~= 'rolling' then return 0 end
if ARGV[2] == 'completed' then
  if redis.call('HEXISTS', KEYS[1], from) == 1 then
    redis.call('HSET', KEYS[1], from, 0)
  end
  local policy = redis.call('HGET', KEYS[2], from)
  if policy and redis.call('HEXISTS', KEYS[1], r.to) == 1 then
    redis.call('HSET', KEYS[2], r.to, policy)
  end
  redis.call('HDEL', KEYS[2], from)
  redis.call('HDEL', KEYS[4], from)
else
  if redis.call('HEXISTS', KEYS[1], r.to) == 1 then
    redis.call('HSET', KEYS[1], r.to, 0)
  end
  redis.call('HDEL', KEYS[2], r.to)
  redis.call('HDEL', KEYS[4], r.to)
end
r.state = ARGV[2]
r.finished_at = tonumber(ARGV[3])
if ARGV[4] ~= '' then r.reason = ARGV[4] end
redis.call('HSET', KEYS[3], from, cjson.encode(r))
return 1
