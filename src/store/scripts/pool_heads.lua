-- pool_heads.lua: what `warmer status` and /metrics show of each pool besides its counts, without
-- the SSH keys: the age of its oldest VM and how many of its VMs are handed out.
--
-- KEYS[1] leases hash   KEYS[2 ..] the pools' lists
-- ARGV the pools' names, in the order of their lists
--
-- Reads only; `booted_at` is found at the end of the entry, where warmer writes it.
-- Returns {heads, handed}: heads per pool, "-" when it is empty, "" when the oldest VM's age is
-- unknown, else its `booted_at`; handed per pool, the number of handed-out leases.
local heads, handed, index = {}, {}, {}
for i, pool in ipairs(ARGV) do
  index[pool] = i
  handed[i] = 0
  local head = redis.call('LINDEX', KEYS[1 + i], 0)
  if not head then
    heads[i] = '-'
  else
    local tail = #head - 200
    if tail < 1 then tail = 1 end
    heads[i] = string.match(head, '"booted_at"%s*:%s*(%d+)', tail) or ''
  end
end
for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
  if string.find(raw, '"state":"handed"', 1, true) then
    local i = index[string.match(raw, '"pool"%s*:%s*"([^"\\]*)"')]
    if i then handed[i] = handed[i] + 1 end
  end
end
return {heads, handed}
