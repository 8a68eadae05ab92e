-- reconcile_view.lua: what a reconcile pass decides on, read in one atomic step, without the
-- SSH keys: a few dozen bytes per VM instead of the whole entries.
--
-- KEYS[1] leases hash   KEYS[2] orphaned list   KEYS[3] claims zset   KEYS[4] suspects set
-- KEYS[5] brake key   KEYS[6] refill hints zset
-- KEYS[7 .. 6+n] the pools' lists   KEYS[7+n .. 6+2n] the pools' booting zsets
-- ARGV[1] now (ms)   ARGV[2] n, the number of pools
--
-- Reads only. Fields are found with patterns, not by decoding: `name` and `zone` near the start
-- of an entry, `booted_at` at its end (where warmer writes it; an entry without it there has no
-- known age, as travis-ci/warmer's have none); an entry whose name cannot be found this way is
-- decoded, and one that cannot be decoded either is reported with an empty name (unreadable).
-- Returns {leases, orphans, claimed, suspects, brake, hints, pools, booting}:
--   leases: flat {identity, state, pool, at, deadline ('' if unknown), vm name, ...}
--   orphans, claimed: the records as stored
--   hints: flat {pool, since (ms), ...}   pools: per pool, flat {name, zone, booted_at, ...}
--   booting: per pool, the names of unexpired reservations
local function text(s, key)
  return string.match(s, '"' .. key .. '"%s*:%s*"([^"\\]*)"')
end

local function entry_fields(entry)
  local name, zone = text(entry, 'name'), text(entry, 'zone')
  if not name then
    local ok, vm = pcall(cjson.decode, entry)
    if ok and type(vm) == 'table' and type(vm.name) == 'string' then
      name = vm.name
      if type(vm.zone) == 'string' then zone = vm.zone end
    end
  end
  local tail = #entry - 200
  if tail < 1 then tail = 1 end
  local booted = string.match(entry, '"booted_at"%s*:%s*(%d+)', tail)
  return name or '', zone or '', booted or ''
end

local leases = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local identity, raw = all[i], all[i + 1]
  local state, pool = text(raw, 'state'), text(raw, 'pool')
  local at = string.match(raw, '"at"%s*:%s*(%d+)')
  local deadline = string.match(raw, '"deadline"%s*:%s*(%d+)')
  -- The entry is a JSON string inside the lease: its quotes are escaped.
  local vm = string.match(raw, '\\"name\\"%s*:%s*\\"([^"\\]*)\\"')
  if not (state and pool and at and vm) then
    local ok, lease = pcall(cjson.decode, raw)
    if ok and type(lease) == 'table' and type(lease.entry) == 'string' then
      state, pool, at = lease.state, lease.pool, tostring(lease.at)
      if type(lease.deadline) == 'number' then deadline = tostring(lease.deadline) end
      vm = entry_fields(lease.entry)
    end
  end
  if state and pool and at and vm and vm ~= '' then
    for _, field in ipairs({identity, state, pool, at, deadline or '', vm}) do
      table.insert(leases, field)
    end
  end
end

local n = tonumber(ARGV[2])
local pools, booting = {}, {}
for i = 1, n do
  local fields = {}
  for _, entry in ipairs(redis.call('LRANGE', KEYS[6 + i], 0, -1)) do
    local name, zone, booted = entry_fields(entry)
    table.insert(fields, name)
    table.insert(fields, zone)
    table.insert(fields, booted)
  end
  pools[i] = fields
  booting[i] = redis.call('ZRANGEBYSCORE', KEYS[6 + n + i], ARGV[1], '+inf')
end

return {
  leases,
  redis.call('LRANGE', KEYS[2], 0, -1),
  redis.call('ZRANGE', KEYS[3], 0, -1),
  redis.call('SMEMBERS', KEYS[4]),
  redis.call('EXISTS', KEYS[5]),
  redis.call('ZRANGE', KEYS[6], 0, -1, 'WITHSCORES'),
  pools,
  booting,
}
