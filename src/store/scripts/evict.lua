-- evict.lua: take one warmed VM out of its pool and record it for deletion, in one step.
--
-- KEYS[1] the pool's list   KEYS[2] orphaned list
-- ARGV[1] the entry, exactly as stored   ARGV[2] VM name   ARGV[3] zone   ARGV[4] reason
--
-- Invariant: the VM is either still in the pool (a checkout took it meanwhile: then it is not
-- evicted) or recorded in orphaned; never both, never neither. Returns 1 if evicted.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  orphan(KEYS[2], ARGV[2], ARGV[3], ARGV[4])
  return 1
end
return 0
