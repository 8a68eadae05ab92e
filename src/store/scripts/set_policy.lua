-- set_policy.lua: replaces a pool's sizing policy, or removes it.
--
-- KEYS[1] poolconfigs hash   KEYS[2] policies hash   KEYS[3] sizing hash
-- ARGV[1] pool   ARGV[2] the policy (JSON), or "" to remove it
--
-- Invariant: only an existing pool has a policy (`pool set` creates pools; the sizer writes only
-- their targets). The target is not touched here: the sizer's next pass applies the policy.
-- Setting or removing it forgets the sizer's last decision: removed, the pool keeps its target,
-- static.
-- Returns 1, or 0 when the pool does not exist.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  -- The last decision was made under another policy: `warmer status` shows "pending" until
  -- a pass decides under this one.
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return 1
