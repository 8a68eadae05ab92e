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
