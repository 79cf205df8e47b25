"""The Redis engine's Lua scripts: every change of a lane, a hold or a reservation is one script,
so that it is atomic across all server processes.

Every key lives under one hash tag, the prefix (``{taskqueue}`` by default), so that all of a
script's keys are in one slot. The layout, for a prefix ``P``:

- ``P:s:<key>``, ``P:r:<key>``: the scheduled and retry lanes, sorted sets of run ids scored
  ``(100 - priority) * 1e13 + sequence`` (higher priority first, FIFO among equals); a run put
  back goes first among its priority, scored below every sequence.
- ``P:b:s:<key>``, ``P:b:r:<key>``: lists, accepted runs waiting for room in a full lane.
- ``P:deferred``: sorted set of run ids by due time (ms); ``P:dlane`` their lanes.
- ``P:rz:<lane>:<key>``: reservations (token by expiry), slots promised to creates in flight.
- ``P:gone:<id>``: a run cancelled before it arrived (its create still recording it), with a TTL.
- ``P:runs`` id -> the run's JSON; ``P:meta`` id -> ``"<priority>|<key>"``; ``P:keys`` every key.
- ``P:hz:<holder>`` (claim order) and ``P:hj:<holder>`` (its copies): what a connection holds;
  ``P:holders`` id -> holder, ``P:hstate`` id -> the held copy's state type.
- ``P:cfg``, ``P:kcfg``: bounds set by ``configure`` and by the ``KEYS`` setting, ``"s,r"``.
- ``P:conns`` holder -> JSON, ``P:act`` holder -> last activity; ``P:procs`` server processes,
  ``P:alive:<proc>`` their heartbeat, ``P:ph:<proc>`` their holders; ``P:restored``.
- ``P:wake:<key>``: a Pub/Sub channel, a hint that a run entered a lane of ``key``.
"""

from __future__ import annotations

# Shared functions, prepended to every script. ARGV[1] is always the prefix, ARGV[2] and ARGV[3]
# the default bounds (scheduled, retry) of this process's settings.
PRELUDE = """
local P = ARGV[1]
local DEFAULT_S, DEFAULT_R = tonumber(ARGV[2]), tonumber(ARGV[3])
local LEVEL = 1e13

local function bounds_of(spec)
  if not spec then return nil, nil end
  local s, r = string.match(spec, '^(%d*),(%d*)$')
  return tonumber(s), tonumber(r)
end

local function limit_of(key, lane)
  local cs, cr = bounds_of(redis.call('HGET', P .. ':cfg', key))
  local ks, kr = bounds_of(redis.call('HGET', P .. ':kcfg', key))
  if lane == 'r' then return cr or kr or DEFAULT_R end
  return cs or ks or DEFAULT_S
end

local function meta_of(id)
  local meta = redis.call('HGET', P .. ':meta', id)
  if not meta then return nil, nil end
  local prio, key = string.match(meta, '^(-?%d+)|(.*)$')
  return tonumber(prio), key
end

local function score(prio)
  return (100 - prio) * LEVEL + redis.call('INCR', P .. ':seq')
end

local function into_lane(id, key, lane, prio)
  -- An accepted run: into its lane while there is room, else behind the others in the backlog.
  local z, b = P .. ':' .. lane .. ':' .. key, P .. ':b:' .. lane .. ':' .. key
  if redis.call('LLEN', b) > 0 or redis.call('ZCARD', z) >= limit_of(key, lane) then
    redis.call('RPUSH', b, id)
  else
    redis.call('ZADD', z, score(prio), id)
    redis.call('PUBLISH', P .. ':wake:' .. key, lane)
  end
end

local function refill(key, lane)
  -- Room freed: the backlog's oldest runs move in, up to the bound.
  local z, b = P .. ':' .. lane .. ':' .. key, P .. ':b:' .. lane .. ':' .. key
  local limit = limit_of(key, lane)
  while redis.call('ZCARD', z) < limit do
    local id = redis.call('LPOP', b)
    if not id then return end
    local prio = meta_of(id)
    redis.call('ZADD', z, score(prio or 0), id)
    redis.call('PUBLISH', P .. ':wake:' .. key, lane)
  end
end

local function unhold(holder, id)
  redis.call('HDEL', P .. ':hj:' .. holder, id)
  redis.call('ZREM', P .. ':hz:' .. holder, id)
  redis.call('HDEL', P .. ':holders', id)
  redis.call('HDEL', P .. ':hstate', id)
end

local function hold(holder, id, json, state)
  local previous = redis.call('HGET', P .. ':holders', id)
  if previous and previous ~= holder then unhold(previous, id) end
  redis.call('HSET', P .. ':hj:' .. holder, id, json)
  if not redis.call('ZSCORE', P .. ':hz:' .. holder, id) then
    redis.call('ZADD', P .. ':hz:' .. holder, redis.call('INCR', P .. ':seq'), id)
  end
  redis.call('HSET', P .. ':holders', id, holder)
  redis.call('HSET', P .. ':hstate', id, state)
end

local function forget(id)
  redis.call('HDEL', P .. ':runs', id)
  redis.call('HDEL', P .. ':meta', id)
end

local function release(holder)
  -- Every run the holder holds, back first in line of its retry lane, in claim order.
  local ids = redis.call('ZRANGE', P .. ':hz:' .. holder, 0, -1)
  local base = redis.call('INCRBY', P .. ':front', #ids)
  local out = {}
  for i, id in ipairs(ids) do
    local json = redis.call('HGET', P .. ':hj:' .. holder, id)
    local prio, key = meta_of(id)
    if json and key then
      redis.call('HSET', P .. ':runs', id, json)
      redis.call('ZADD', P .. ':r:' .. key, (100 - prio) * LEVEL - (base - i + 1), id)
      redis.call('PUBLISH', P .. ':wake:' .. key, 'r')
      out[#out + 1] = json
    end
    unhold(holder, id)
  end
  redis.call('DEL', P .. ':hz:' .. holder, P .. ':hj:' .. holder)
  return out
end
"""

# ARGV 4..: id, key, lane, priority, json, now (ms), mode ("new", "accepted", "reserved").
ENQUEUE = """
local id, key, lane, prio, json = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local now, mode = tonumber(ARGV[9]), ARGV[10]
local rz = P .. ':rz:' .. lane .. ':' .. key
redis.call('ZREMRANGEBYSCORE', rz, '-inf', now)
if mode ~= 'new' and lane == 's' and redis.call('DEL', P .. ':gone:' .. id) == 1 then
  -- Cancelled before it arrived (its create was still recording it): kept out.
  if mode == 'reserved' then redis.call('ZPOPMIN', rz) end
  return 2
end
if mode == 'new' then
  local used = redis.call('ZCARD', P .. ':' .. lane .. ':' .. key) + redis.call('ZCARD', rz)
  if used >= limit_of(key, lane) then return 0 end
elseif mode == 'reserved' then
  redis.call('ZPOPMIN', rz)
end
redis.call('HSET', P .. ':runs', id, json)
redis.call('HSET', P .. ':meta', id, prio .. '|' .. key)
redis.call('SADD', P .. ':keys', key)
into_lane(id, key, lane, prio)
return 1
"""

# ARGV 4..: id, key, lane, priority, json, due (ms), reserved ("1" gives a reservation back),
# admitted ("1": an accepted run, kept out if cancelled before it arrived).
DEFER = """
local id, key, lane, prio, json = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
if ARGV[10] == '1' then redis.call('ZPOPMIN', P .. ':rz:' .. lane .. ':' .. key) end
if ARGV[11] == '1' and lane == 's' and redis.call('DEL', P .. ':gone:' .. id) == 1 then
  return 2  -- cancelled before it arrived: kept out
end
redis.call('HSET', P .. ':runs', id, json)
redis.call('HSET', P .. ':meta', id, prio .. '|' .. key)
redis.call('SADD', P .. ':keys', key)
redis.call('ZADD', P .. ':deferred', tonumber(ARGV[9]), id)
redis.call('HSET', P .. ':dlane', id, lane)
return 1
"""

# ARGV 4..: holder, now (ms), token, then the keys in order. Returns {id, json} or {false, due}.
CLAIM = """
local holder, now, token = ARGV[4], tonumber(ARGV[5]), ARGV[6]
-- Its caller was cancelled and gave up on it before it ran: take nothing.
if redis.call('EXISTS', P .. ':tok:' .. token) == 1 then return {false, false} end
local due = redis.call('ZRANGEBYSCORE', P .. ':deferred', '-inf', now, 'LIMIT', 0, 500)
for _, id in ipairs(due) do
  redis.call('ZREM', P .. ':deferred', id)
  local lane = redis.call('HGET', P .. ':dlane', id)
  redis.call('HDEL', P .. ':dlane', id)
  local prio, key = meta_of(id)
  if lane and key then into_lane(id, key, lane, prio) end
end
for i = 7, #ARGV do
  local key = ARGV[i]
  for _, lane in ipairs({'r', 's'}) do
    local got = redis.call('ZPOPMIN', P .. ':' .. lane .. ':' .. key)
    if got[1] then
      local id = got[1]
      refill(key, lane)
      local json = redis.call('HGET', P .. ':runs', id)
      hold(holder, id, json, 'SCHEDULED')
      -- What this claim took, should its caller be cancelled before it hears the answer.
      redis.call('SET', P .. ':tok:' .. token, id, 'PX', 60000)
      return {id, json}
    end
  end
end
local nxt = redis.call('ZRANGE', P .. ':deferred', 0, 0, 'WITHSCORES')
return {false, nxt[2] or false}
"""

# ARGV 4..: holder, token: give back what a cancelled claim took. It may run before the claim
# itself (two connections): then it leaves a mark that makes the claim take nothing.
UNCLAIM = """
local holder, token = ARGV[4], ARGV[5]
local id = redis.call('GET', P .. ':tok:' .. token)
if not id then
  redis.call('SET', P .. ':tok:' .. token, '!', 'PX', 60000)
  return 0
end
redis.call('DEL', P .. ':tok:' .. token)
if id == '!' or redis.call('HGET', P .. ':holders', id) ~= holder then return 0 end
local json = redis.call('HGET', P .. ':hj:' .. holder, id)
local prio, key = meta_of(id)
unhold(holder, id)
if json and key then
  redis.call('HSET', P .. ':runs', id, json)
  local base = redis.call('INCRBY', P .. ':front', 1)
  redis.call('ZADD', P .. ':r:' .. key, (100 - prio) * LEVEL - base, id)
  redis.call('PUBLISH', P .. ':wake:' .. key, 'r')
end
return 1
"""

# ARGV 4..: holder, id, json, state, priority, key.
HOLD = """
local holder, id, json, state = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
redis.call('HSET', P .. ':runs', id, json)
redis.call('HSET', P .. ':meta', id, ARGV[8] .. '|' .. ARGV[9])
hold(holder, id, json, state)
return 1
"""

# ARGV 4..: holder, id. Returns the held copy's JSON, or false.
ACK = """
local holder, id = ARGV[4], ARGV[5]
local json = redis.call('HGET', P .. ':hj:' .. holder, id)
if not json then return false end
unhold(holder, id)
forget(id)
return json
"""

# ARGV 4..: holder, id, the JSON it should hold, the new JSON ("" to forget the hold) and state.
# 1, or 0 (nothing changed) when the holder no longer holds exactly that copy.
SWAP = """
local holder, id, new = ARGV[4], ARGV[5], ARGV[7]
if redis.call('HGET', P .. ':hj:' .. holder, id) ~= ARGV[6] then return 0 end
if new == '' then
  unhold(holder, id)
  forget(id)
else
  redis.call('HSET', P .. ':runs', id, new)
  hold(holder, id, new, ARGV[8])
end
return 1
"""

# ARGV 4: id. {holder, json} of who holds it, or false: one round trip.
FIND = """
local holder = redis.call('HGET', P .. ':holders', ARGV[4])
if not holder then return false end
return {holder, redis.call('HGET', P .. ':hj:' .. holder, ARGV[4])}
"""

RELEASE = """
return release(ARGV[4])
"""

# ARGV 4..: id, how long (ms) to keep out a run not here yet (0: not at all). Takes a waiting
# (queued, backlogged or deferred) run out; its JSON, or false.
CANCEL = """
local id = ARGV[4]
if redis.call('HGET', P .. ':holders', id) then return false end
local json = redis.call('HGET', P .. ':runs', id)
if not json then
  -- Nowhere here: a create may be recording it. Its admit will find this and keep it out.
  if tonumber(ARGV[5]) > 0 then redis.call('SET', P .. ':gone:' .. id, '1', 'PX', ARGV[5]) end
  return false
end
local taken = redis.call('ZREM', P .. ':deferred', id) == 1
redis.call('HDEL', P .. ':dlane', id)
local _, key = meta_of(id)
if key and not taken then
  for _, lane in ipairs({'r', 's'}) do
    if redis.call('ZREM', P .. ':' .. lane .. ':' .. key, id) == 1 then
      refill(key, lane)
      taken = true
      break
    end
    if redis.call('LREM', P .. ':b:' .. lane .. ':' .. key, 1, id) == 1 then
      taken = true
      break
    end
  end
end
if not taken then return false end
forget(id)
return json
"""

# ARGV 4..: key, lane, token, expiry (ms), now (ms). 1, or 0 when the lane is full.
RESERVE = """
local key, lane = ARGV[4], ARGV[5]
local rz = P .. ':rz:' .. lane .. ':' .. key
redis.call('ZREMRANGEBYSCORE', rz, '-inf', tonumber(ARGV[8]))
local used = redis.call('ZCARD', P .. ':' .. lane .. ':' .. key) + redis.call('ZCARD', rz)
if used >= limit_of(key, lane) then return 0 end
redis.call('ZADD', rz, tonumber(ARGV[7]), ARGV[6])
redis.call('SADD', P .. ':keys', key)
return 1
"""

# ARGV 4..: key, "s,r" (empty for the default).
CONFIGURE = """
local key = ARGV[4]
redis.call('HSET', P .. ':cfg', key, ARGV[5])
redis.call('SADD', P .. ':keys', key)
refill(key, 's')
refill(key, 'r')
return 1
"""

# ARGV 4: a dead process. Unacked runs of its holders go back first in line (their JSON is
# returned); acked and started ones are dropped from the hold, for the orphan sweep (their
# records say PENDING or RUNNING).
REAP = """
local proc = ARGV[4]
local holders = redis.call('SMEMBERS', P .. ':ph:' .. proc)
local back = {}
for _, holder in ipairs(holders) do
  local ids = redis.call('ZRANGE', P .. ':hz:' .. holder, 0, -1)
  for _, id in ipairs(ids) do
    if redis.call('HGET', P .. ':hstate', id) ~= 'SCHEDULED' then
      unhold(holder, id)
      forget(id)
    end
  end
  for _, json in ipairs(release(holder)) do back[#back + 1] = json end
  redis.call('HDEL', P .. ':conns', holder)
  redis.call('HDEL', P .. ':act', holder)
end
redis.call('DEL', P .. ':ph:' .. proc)
redis.call('SREM', P .. ':procs', proc)
return back
"""

# ARGV[4..]: task keys. For each key, scheduled then retry: when the oldest waiting run became
# due (the ISO time of its JSON), or "" for an empty lane. The oldest run of a lane is the first
# of one of its priority levels (FIFO within a level), so the walk visits one run per level.
OLDEST = """
local out = {}
for i = 4, #ARGV do
  for _, lane in ipairs({'s', 'r'}) do
    local zkey, best, start = P .. ':' .. lane .. ':' .. ARGV[i], '', '-inf'
    for _ = 1, 402 do
      local head = redis.call('ZRANGEBYSCORE', zkey, start, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
      if #head == 0 then break end
      local payload = redis.call('HGET', P .. ':runs', head[1])
      if payload then
        local run = cjson.decode(payload)
        local due = run['expected_start_time'] or run['created'] or ''
        if due ~= '' and (best == '' or due < best) then best = due end
      end
      start = '(' .. string.format('%.0f', (math.floor(tonumber(head[2]) / LEVEL) + 1) * LEVEL)
    end
    table.insert(out, best)
  end
end
return out
"""

SCRIPTS = {
    "enqueue": ENQUEUE,
    "defer": DEFER,
    "claim": CLAIM,
    "unclaim": UNCLAIM,
    "hold": HOLD,
    "ack": ACK,
    "swap": SWAP,
    "release": RELEASE,
    "find": FIND,
    "cancel": CANCEL,
    "reserve": RESERVE,
    "configure": CONFIGURE,
    "reap": REAP,
    "oldest": OLDEST,
}
