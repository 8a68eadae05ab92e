-- prelude.lua: written once, put in front of every script when the scripts are loaded.
--
-- An orphan record, the one shape of every entry of the orphaned list:
--   {"name": <VM name>, "zone": <zone or null>, "reason": <why it must be deleted>}
-- and, for a pool entry that cannot be read, {"name": null, "zone": null,
-- "reason": "unreadable", "entry": <the entry as stored>}, left for an operator.

-- Records the VM `name` (in `zone`, '' or nil when unknown) for deletion, for `reason`.
local function orphan(list, name, zone, reason)
  if zone == nil or zone == '' then zone = cjson.null end
  redis.call('RPUSH', list, cjson.encode({name = name, zone = zone, reason = reason}))
end

-- Records the VM of a pool entry (JSON, as stored) for deletion, for `reason`.
local function orphan_entry(list, entry, reason)
  local ok, vm = pcall(cjson.decode, entry)
  if ok and type(vm) == 'table' and type(vm.name) == 'string' and vm.name ~= '' then
    local zone = vm.zone
    if type(zone) ~= 'string' then zone = nil end
    orphan(list, vm.name, zone, reason)
  else
    redis.call('RPUSH', list,
      cjson.encode({name = cjson.null, zone = cjson.null, reason = 'unreadable', entry = entry}))
  end
end


-- Metrics: counters live in hashes, `<ns>:_metrics:<pool>` for a pool's figures and
-- `<ns>:_metrics` for the others (and for a pool's figures when the pool does not exist: they
-- are exported with pool=""). A field is `<family>|<label value>|...`, the label values in the
-- order `src/metrics.rs` declares for the family; a histogram has a field per bucket (its index
-- among the bounds, which only warmer's Rust code knows: it computes it) and `<family>|sum_ms`.

-- Adds `by` (default 1) to the counter `field` of the metrics hash `hash`.
local function count(hash, field, by)
  redis.call('HINCRBY', hash, field, by or 1)
end

-- Records one observation of `ms` milliseconds in bucket `bucket` of the histogram `family`
-- (its name and label values, '|'-joined) of the metrics hash `hash`.
local function observe(hash, family, bucket, ms)
  redis.call('HINCRBY', hash, family .. '|' .. bucket, 1)
  redis.call('HINCRBY', hash, family .. '|sum_ms', ms)
end

-- Deletes the pool `pool` (its target, list, policy, last decision and counters): its warmed VMs
-- are recorded in `orphaned` for deletion, never leaked, and count as evictions|pool_deleted of
-- no pool (a pool created again under the name starts from zero). Returns whether the pool
-- existed and how many VMs it had.
local function delete_pool(poolconfigs, policies, sizing, list, pool_metrics, orphaned, metrics, pool)
  local existed = redis.call('HDEL', poolconfigs, pool)
  local entries = redis.call('LRANGE', list, 0, -1)
  for _, entry in ipairs(entries) do
    orphan_entry(orphaned, entry, 'pool_deleted')
  end
  redis.call('DEL', list, pool_metrics)
  redis.call('HDEL', policies, pool)
  redis.call('HDEL', sizing, pool)
  if #entries > 0 then
    count(metrics, 'evictions|pool_deleted', #entries)
  end
  return existed == 1, #entries
end

-- The server's clock, in milliseconds: the one clock of the VM-seconds below.
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- VM-seconds. In a pool's metrics hash, `<name>|ms` is the integral over time of one of the
-- pool's levels (`idle_vm`: warmed VMs waiting; `booting_vm`; `handed_vm`: handed out), in
-- VM-milliseconds by the server's clock, and `<name>|level` the level since `<name>|since`.
-- Called after every change of the level, with the new `level` (or `delta`, the change): what
-- the old level accumulated since the last change is added first. `/metrics` adds
-- level × (now − since), from the same hash. Exact for every change made by warmer's scripts; a
-- change made by another writer (travis-ci/warmer) counts from warmer's next change of that pool.
-- `now` is the server's clock if the caller read it already (else it is read here).
local function integrate(hash, name, level, delta, now)
  now = now or server_ms()
  local fields = redis.call('HMGET', hash, name .. '|since', name .. '|level', name .. '|ms')
  local since, before, ms = tonumber(fields[1]), tonumber(fields[2]) or 0, tonumber(fields[3]) or 0
  if since and now > since and before > 0 then
    ms = ms + before * (now - since)
  end
  if delta then level = math.max(0, before + delta) end
  redis.call('HSET', hash, name .. '|since', math.max(now, since or 0), name .. '|level', level,
    name .. '|ms', ms)
end
