-- checkout.lua: take the oldest warmed VM of a pool for one request, at most once.
--
-- KEYS[1] poolconfigs hash   KEYS[2] the pool's list   KEYS[3] leases hash
-- KEYS[4] lease deadlines zset   KEYS[5] orphaned list   KEYS[6] refill hints zset
-- KEYS[7] the pool's metrics hash   KEYS[8] the metrics hash of no pool
-- KEYS[9] the pool's demand hash of today
-- ARGV[1] request identity   ARGV[2] pool name   ARGV[3] now (ms)
-- ARGV[4] the request's deadline (ms)   ARGV[5] when an unsettled lease is given up (ms)
-- ARGV[6] now's demand bucket within the day   ARGV[7] this delivery's nonce (unique per
-- delivery)   ARGV[8] 1 if the broker redelivered the request, else 0
-- ARGV[9..12] the metrics fields of the outcomes counted here: unsettled, expired, no_pool,
-- pool_empty
--
-- Invariant: a VM leaves the pool only into a lease keyed by the request's identity, in the same
-- step. A request that comes again finds its lease and gets the same VM: no request ever takes
-- two, no VM ever goes to two requests.
--
-- Who may be given an existing lease: the identity is bound to the request's reply address (see
-- checkout/request.rs), so a lease's VM can only ever be sent where its first reply went. Of the
-- deliveries with that identity, only the same request gets the lease: the delivery that made it
-- (a retry of its own step after an I/O error: same nonce) or one the broker *redelivered*. A
-- fresh publish reusing the identity is a replay ("replayed": nothing popped, nothing sent). The
-- lease's own deadline (its first delivery's) bounds every repeat: past it, a pending lease's VM
-- has an unknown fate and is orphaned, and a handed one is sent no more ("late"), so a handed
-- lease's key can leave Redis at that deadline (sweep_leases.lua strips it).
--
-- A pop or a miss means the pool may want VMs: unless a refill hint for the pool is pending
-- already (the refill consumer clears it before it looks at the pool, so no drop is missed), the
-- hint is recorded and the answer says to send one ("hint" = 1): at most one pending hint per
-- pool, however many checkouts.
--
-- Counts the request's outcome when it is decided here (the fields of ARGV[9..12]): pool_empty,
-- no_pool, expired (nothing popped), unsettled; a popped VM is counted handed_out by settle.lua
-- once its reply is confirmed. Repeats of a request are not counted again.
--
-- A pop changes the pool's idle VMs: integrated (see `integrate` in prelude.lua).
--
-- Records the request as demand for the sizer when it first takes or misses a VM: h:<bucket>
-- (a hit) or m:<bucket> (a miss) in the pool's demand hash of the day, which expires 9 days
-- after its last write (the sizer reads at most 8 days back).
--
-- Returns {"popped", entry, hint} | {"lease", entry} | {"orphaned", entry} | {"expired"}
--       | {"late"} | {"replayed"} | {"no_pool"} | {"empty", hint}
local identity, pool = ARGV[1], ARGV[2]
local now, deadline = tonumber(ARGV[3]), tonumber(ARGV[4])
local nonce, redelivered = ARGV[7], ARGV[8] == '1'
local unsettled, expired, no_pool, pool_empty = ARGV[9], ARGV[10], ARGV[11], ARGV[12]

local existing = redis.call('HGET', KEYS[3], identity)
if existing then
  local lease = cjson.decode(existing)
  local own = lease.nonce == nonce
  if not own and not redelivered then
    return {'replayed'}
  end
  if type(lease.deadline) == 'number' and lease.deadline < deadline then
    deadline = lease.deadline
  end
  if now > deadline then
    if lease.state ~= 'pending' then
      return {'late'}
    end
    -- The requester's deadline passed while its reply may or may not have gone out: the VM's
    -- fate is unknown, so it is never reused.
    orphan_entry(KEYS[5], lease.entry, 'checkout_unsettled')
    count(KEYS[7], unsettled)
    redis.call('HDEL', KEYS[3], identity)
    redis.call('ZREM', KEYS[4], identity)
    return {'orphaned', lease.entry}
  end
  if lease.stripped then
    return {'late'}
  end
  if own then
    return {'popped', lease.entry, '0'}
  end
  return {'lease', lease.entry}
end

-- Past its deadline by the server's own clock too (more than a second, for clock skew): a
-- script that waited in a stalled server's buffer until its requester had given up takes
-- nothing.
local clock = redis.call('TIME')
local server_now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local exists = redis.call('HEXISTS', KEYS[1], pool) == 1
if now > deadline or server_now > deadline + 1000 then
  count(exists and KEYS[7] or KEYS[8], expired)
  return {'expired'}
end
if not exists then
  count(KEYS[8], no_pool)
  return {'no_pool'}
end
local function arrived(kind)
  redis.call('HINCRBY', KEYS[9], kind .. ':' .. ARGV[6], 1)
  redis.call('EXPIRE', KEYS[9], 777600)
end
local function hint()
  if redis.call('ZADD', KEYS[6], 'NX', now, pool) == 1 then return '1' end
  return '0'
end
local entry = redis.call('LPOP', KEYS[2])
if entry then
  integrate(KEYS[7], 'idle_vm', redis.call('LLEN', KEYS[2]), nil, server_now)
else
  count(KEYS[7], pool_empty)
  arrived('m')
  return {'empty', hint()}
end
redis.call('HSET', KEYS[3], identity, cjson.encode(
  {state = 'pending', pool = pool, entry = entry, at = now, deadline = deadline, nonce = nonce}))
redis.call('ZADD', KEYS[4], ARGV[5], identity)
arrived('h')
return {'popped', entry, hint()}
