-- delete_pool.lua: a deleted pool's warmed VMs are recorded for deletion, never leaked.
--
-- KEYS[1] poolconfigs hash   KEYS[2] the pool's list   KEYS[3] orphaned list
-- KEYS[4] the pool's metrics hash   KEYS[5] the metrics hash of no pool
-- KEYS[6] policies hash   KEYS[7] sizing hash
-- ARGV[1] pool name
--
-- The pool's policy and counters go with it (see `delete_pool` in prelude.lua).
-- Returns the number of VMs moved to orphaned, or -1 when the pool did not exist.
local existed, moved = delete_pool(KEYS[1], KEYS[6], KEYS[7], KEYS[2], KEYS[4], KEYS[3], KEYS[5], ARGV[1])
if not existed and moved == 0 then
  return -1
end
return moved
