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

