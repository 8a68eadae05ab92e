-- release_orphans.lua: a deleter gives back claims it will not use (it stops before it started
-- them), so another deleter can take them at once.
--
-- KEYS[1] orphaned list   KEYS[2] claims zset
-- ARGV[1..] the records, exactly as claimed
--
-- Invariant: each record goes from the claims back to orphaned, in the same step; a record no
-- longer claimed (its claim expired and another deleter took it) is left alone.
-- Returns the number released.
local released = 0
for _, record in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[2], record) == 1 then
    redis.call('RPUSH', KEYS[1], record)
    released = released + 1
  end
end
return released
