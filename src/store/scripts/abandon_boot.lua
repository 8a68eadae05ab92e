-- abandon_boot.lua: a boot that failed gives its slot back; if its VM may exist it is
-- recorded in orphaned, in the same step.
--
-- KEYS[1] the pool's booting zset   KEYS[2] orphaned list
-- ARGV[1] VM name   ARGV[2] zone ('' if unknown)   ARGV[3] reason, or '' if no VM was created
--
-- Idempotent: the VM is recorded only along with the reservation it releases, so a second run
-- (a retry after a dropped connection) records nothing more. A reservation already gone was
-- swept past its expiry by reserve_boots.lua, which recorded the VM then.
-- Returns 1 if the reservation was still held.
local held = redis.call('ZREM', KEYS[1], ARGV[1])
if held == 1 and ARGV[3] ~= '' then
  orphan(KEYS[2], ARGV[1], ARGV[2], ARGV[3])
end
return held
