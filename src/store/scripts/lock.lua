-- lock.lua: take or renew a lock held by one owner at a time.
--
-- KEYS[1] lock key   ARGV[1] owner id   ARGV[2] time to live (ms)
-- Invariant: at most one owner holds the key; it expires unless its owner renews it, so a
-- crashed holder is replaced after at most the time to live. Returns 1 if ARGV[1] holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
