-- evict.lua: take warmed VMs out of a pool and record them for deletion, in one step.
--
-- KEYS[1] the pool's list   KEYS[2] orphaned list   KEYS[3] a scratch list (warmer's own)
-- KEYS[4] the pool's metrics hash
-- ARGV: triples {VM name, zone, reason}; the name '' stands for every entry that cannot be read
--
-- Each entry is looked at once, in order: those named go to orphaned (an unreadable one whole,
-- for an operator), the others stay, in the order they were. Invariant: a VM is either still in
-- the pool (a checkout took it meanwhile: then it is not evicted) or recorded in orphaned; never
-- both, never neither. Each eviction counts in evictions|<reason>. Its cost is one pass over the pool, whatever the number evicted.
-- Returns the names evicted ('' for each unreadable entry).
local wanted = {}
for i = 1, #ARGV, 3 do
  wanted[ARGV[i]] = {zone = ARGV[i + 1], reason = ARGV[i + 2]}
end
local evicted = {}
local length = redis.call('LLEN', KEYS[1])
local kept = 0
redis.call('DEL', KEYS[3])
for _ = 1, length do
  local entry = redis.call('LPOP', KEYS[1])
  local name = string.match(entry, '"name"%s*:%s*"([^"\\]*)"')
  if not name then
    local ok, vm = pcall(cjson.decode, entry)
    if ok and type(vm) == 'table' and type(vm.name) == 'string' then name = vm.name else name = '' end
  end
  local eviction = wanted[name]
  if eviction then
    if name == '' then
      orphan_entry(KEYS[2], entry, eviction.reason)
    else
      orphan(KEYS[2], name, eviction.zone, eviction.reason)
    end
    count(KEYS[4], 'evictions|' .. eviction.reason)
    table.insert(evicted, name)
  else
    redis.call('RPUSH', KEYS[3], entry)
    kept = kept + 1
  end
end
if kept > 0 then
  redis.call('RENAME', KEYS[3], KEYS[1])
end
if #evicted > 0 then
  integrate(KEYS[4], 'idle_vm', kept)
end
return evicted
