-- abandon_boot.lua: a boot that failed gives its slot back; if its VM may exist it is
-- recorded in orphaned, in the same step.
--
-- KEYS[1] the pool's booting zset   KEYS[2] orphaned list   KEYS[3] the pool's metrics hash
-- ARGV[1] VM name   ARGV[2] zone ('' if unknown)   ARGV[3] reason, or '' if no VM was created
-- ARGV[4] the failure's result label (boots|<zone>|<result>)
--
-- Idempotent: the VM is recorded only along with the reservation it releases, so a second run
-- (a retry after a dropped connection) records and counts nothing more. A reservation already gone was
-- swept past its expiry by reserve_boots.lua, which recorded the VM then.
-- Returns 1 if the reservation was still held.
local held = redis.call('ZREM', KEYS[1], ARGV[1])
if held == 1 then
  integrate(KEYS[3], 'booting_vm', redis.call('ZCARD', KEYS[1]))
  count(KEYS[3], 'boots|' .. ARGV[2] .. '|' .. ARGV[4])
  if ARGV[3] ~= '' then
    orphan(KEYS[2], ARGV[1], ARGV[2], ARGV[3])
  end
end
return held
