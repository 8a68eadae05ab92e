-- postpone_rollovers.lua: while the safety brake holds nothing boots, so rollovers in progress
-- get the time back: their deadlines move later.
--
-- KEYS[1] rollovers hash
-- ARGV[1] seconds to add to the deadline of every rollover in progress
--
-- Returns how many were postponed.
local postponed = 0
local rollovers = redis.call('HGETALL', KEYS[1])
for i = 1, #rollovers, 2 do
  local r = cjson.decode(rollovers[i + 1])
  if r.state == 'rolling' then
    r.deadline = r.deadline + tonumber(ARGV[1])
    redis.call('HSET', KEYS[1], rollovers[i], cjson.encode(r))
    postponed = postponed + 1
  end
end
return postponed
