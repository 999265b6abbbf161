#!lua name=tern
-- Tern's mailbox functions for the Redis Cluster engine
-- (relay/src/store/redis/). Every key one call touches carries the
-- mailbox's hash tag, so each call runs on one shard, atomically.
--
-- Keys of a mailbox H (hex id):
--   m:{H}  hash: a (owner key), s (next seq), n (held), b (bytes held),
--          k (live tokens), c (created ms), h (the highest expiry of an
--          envelope stored in expiry order, see x)
--   e:{H}  sorted set: score seq, member "<seq>:" .. message id (16 bytes)
--          .. received ms (8, big endian) .. expires ms (8) .. payload
--   x:{H}  sorted set: score expires ms, member seq, of the envelopes
--          stored out of expiry order only. An envelope expiring no
--          earlier than every one stored before it outside x (expiry >= h,
--          the common case: one TTL for all) is not put here, so the
--          envelopes outside x expire in seq order and a sweep finds the
--          due ones at the front of e.
--   d:{H}  hash: message id -> seq, for de-duplication while held
--   k:{H}  set: hashes of the live send tokens
--
-- Every call does a constant number of Redis commands however many
-- envelopes it stores or removes (variadic ZADD/HSET/HDEL, one range read
-- and range removals for an ack): inner calls, not envelopes, are what a
-- call costs Redis.

-- Most arguments one variadic command is given (Lua's stack bound).
local CHUNK = 1000

-- redis.call(cmd, key, items...) in chunks of CHUNK items.
local function variadic(cmd, key, items)
  for i = 1, #items, CHUNK do
    redis.call(cmd, key, unpack(items, i, math.min(i + CHUNK - 1, #items)))
  end
end

-- HMGET key fields..., in chunks of CHUNK fields; the values in order.
local function hmget(key, fields)
  local out = {}
  for i = 1, #fields, CHUNK do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for _, v in ipairs(part) do
      out[#out + 1] = v
    end
  end
  return out
end

-- A stored member's seq (as the string it starts with), message id,
-- expiry (ms) and payload size.
local function parse_member(member)
  local at = string.find(member, ':', 1, true)
  local ex = at + 25
  local expires = 0
  for i = ex, ex + 7 do
    expires = expires * 256 + string.byte(member, i)
  end
  return string.sub(member, 1, at - 1), string.sub(member, at + 1, at + 16), expires,
    #member - at - 32
end

-- Remove the held envelopes among `members` (of e, in seq order) whose
-- seqs are in `wanted` (seq string -> true) or all of them if `wanted` is
-- nil; uncount them once. How many were removed. With `whole`, `members`
-- is every held envelope from its first to its last, so each run of
-- removed ones is one removal by score range; otherwise one per envelope.
local function drop_members(m, e, x, d, members, wanted, whole)
  local seqs, mids, runs = {}, {}, {}
  local bytes = 0
  local run_lo, run_hi = nil, nil
  for _, member in ipairs(members) do
    local seq, mid, _, size = parse_member(member)
    if wanted == nil or wanted[seq] then
      seqs[#seqs + 1] = seq
      mids[#mids + 1] = mid
      bytes = bytes + size
      if not whole then
        runs[#runs + 1] = {seq, seq}
      elseif run_lo == nil then
        run_lo = seq
      end
      run_hi = seq
    elseif run_lo ~= nil then
      -- A held envelope not removed ends a run of removals.
      runs[#runs + 1] = {run_lo, run_hi}
      run_lo = nil
    end
  end
  if run_lo ~= nil then
    runs[#runs + 1] = {run_lo, run_hi}
  end
  if #seqs == 0 then
    return 0
  end
  -- Each run is contiguous among the held envelopes: one removal by score.
  for _, r in ipairs(runs) do
    redis.call('ZREMRANGEBYSCORE', e, r[1], r[2])
  end
  if redis.call('EXISTS', x) == 1 then
    variadic('ZREM', x, seqs)
  end
  -- d holds each held envelope's message id with its seq (an append never
  -- stores a message id d already has), so these are the removed ones'.
  variadic('HDEL', d, mids)
  redis.call('HINCRBY', m, 'n', -#seqs)
  redis.call('HINCRBY', m, 'b', -bytes)
  return #seqs
end

-- Remove the envelopes of `seqs` from a mailbox; how many were held.
local function drop_seqs(m, e, x, d, seqs)
  local wanted, count = {}, 0
  local lo, hi = nil, nil
  for _, s in ipairs(seqs) do
    local n = tonumber(s)
    if n then
      local key = string.format('%d', n)
      if not wanted[key] then
        wanted[key] = true
        count = count + 1
        if lo == nil or n < lo then lo = n end
        if hi == nil or n > hi then hi = n end
      end
    end
  end
  if count == 0 then
    return 0
  end
  local members, whole
  if hi - lo < 4 * count + 64 then
    whole = true
    -- Close together (a window's acks): one range read.
    members = redis.call('ZRANGE', e, string.format('%d', lo), string.format('%d', hi), 'BYSCORE')
  else
    whole = false
    members = {}
    for key in pairs(wanted) do
      local found = redis.call('ZRANGE', e, key, key, 'BYSCORE')
      if found[1] then
        members[#members + 1] = found[1]
      end
    end
    table.sort(members, function(a, b)
      return tonumber(string.match(a, '^%d+')) < tonumber(string.match(b, '^%d+'))
    end)
  end
  return drop_members(m, e, x, d, members, wanted, whole)
end

-- keys: m ; args: owner key, created ms. 1 created, 0 taken.
local function tern_create(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then
    return 0
  end
  redis.call('HSET', keys[1], 'a', args[1], 's', 1, 'n', 0, 'b', 0, 'k', 0, 'c', args[2])
  return 1
end

-- keys: m e x d ; args: six per envelope: message id, packed envelope
-- (without the seq prefix), expires ms, payload bytes, max envelopes, max
-- bytes. One reply per envelope, in order: {0}: no mailbox; {1, seq,
-- earliest}: stored (earliest is 1 when it may now be the mailbox's
-- earliest expiry, so the expiry index must learn it); {2, seq}: duplicate
-- (a repeat of an earlier one of the same call too); {3, n, b}: over
-- quota. Envelopes are stored in order. A stream's batch of sends to one
-- mailbox is one call: the record is read and written once, the
-- de-duplication hash read once, and the envelopes added with one ZADD.
local function tern_append_many(keys, args)
  local m, e, x, d = keys[1], keys[2], keys[3], keys[4]
  local count = math.floor(#args / 6)
  local out = {}
  local held = redis.call('HMGET', m, 's', 'n', 'b', 'h')
  if not held[1] then
    for i = 1, count do
      out[i] = {0}
    end
    return out
  end
  if count == 0 then
    return out
  end
  local seq, n, b = tonumber(held[1]), tonumber(held[2]), tonumber(held[3])
  local high = tonumber(held[4])
  -- Held envelopes outside x all expire at or before `high`; if some are
  -- held (n > #x), an envelope expiring at or after `high` is not the
  -- earliest. Otherwise the index is told (ZADD LT: never harmful).
  local in_x = redis.call('ZCARD', x)
  local mids = {}
  for i = 1, count do
    mids[i] = args[(i - 1) * 6 + 1]
  end
  local known = hmget(d, mids)
  local seen = {}
  local zadd, xadd, dset = {}, {}, {}
  for i = 1, count do
    local j = (i - 1) * 6
    local mid, expires, size = args[j + 1], tonumber(args[j + 3]), tonumber(args[j + 4])
    local dup = known[i] or seen[mid]
    if dup then
      out[i] = {2, tonumber(dup)}
    elseif n >= tonumber(args[j + 5]) or b + size > tonumber(args[j + 6]) then
      out[i] = {3, n, b}
    else
      local s = string.format('%d', seq)
      zadd[#zadd + 1] = s
      zadd[#zadd + 1] = s .. ':' .. args[j + 2]
      dset[#dset + 1] = mid
      dset[#dset + 1] = s
      seen[mid] = s
      local earliest = 1
      if high == nil or expires >= high then
        if high ~= nil and n > in_x then
          earliest = 0
        end
        high = expires
      else
        xadd[#xadd + 1] = args[j + 3]
        xadd[#xadd + 1] = s
        in_x = in_x + 1
      end
      out[i] = {1, seq, earliest}
      seq, n, b = seq + 1, n + 1, b + size
    end
  end
  if #zadd > 0 then
    variadic('ZADD', e, zadd)
    variadic('HSET', d, dset)
    if #xadd > 0 then
      variadic('ZADD', x, xadd)
    end
    redis.call('HSET', m, 's', string.format('%d', seq), 'n', string.format('%d', n),
      'b', string.format('%d', b), 'h', string.format('%.0f', high))
  end
  return out
end

-- keys: m e x d ; args: message id, packed envelope (without the seq
-- prefix), expires ms, payload bytes, max envelopes, max bytes. As
-- tern_append_many's one reply.
local function tern_append(keys, args)
  return tern_append_many(keys, args)[1]
end

-- keys: m e x d ; args: seqs. How many were held.
local function tern_ack(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then
    return 0
  end
  return drop_seqs(keys[1], keys[2], keys[3], keys[4], args)
end

-- The envelopes of e outside x, from the front, in seq (so expiry)
-- order, while due at `now`; and the expiry of the first one not due
-- (nil if none is held). Envelopes in x met on the way are skipped (the
-- caller takes the due ones from x).
local function due_front(e, x, now)
  local due, at, page = {}, 0, 64
  while true do
    local members = redis.call('ZRANGE', e, at, at + page - 1)
    if #members == 0 then
      return due, nil
    end
    for _, member in ipairs(members) do
      local seq, _, expires = parse_member(member)
      if expires <= now then
        due[#due + 1] = member
      elseif not redis.call('ZSCORE', x, seq) then
        return due, expires
      end
    end
    at = at + page
  end
end

-- keys: m e x d ; args: now ms. {removed, next expiry or -1}.
local function tern_sweep(keys, args)
  local m, e, x, d = keys[1], keys[2], keys[3], keys[4]
  local removed = 0
  local next_front = nil
  if redis.call('EXISTS', m) == 1 then
    local now = tonumber(args[1])
    local front
    front, next_front = due_front(e, x, now)
    removed = drop_members(m, e, x, d, front, nil, false)
    local due = redis.call('ZRANGE', x, '-inf', args[1], 'BYSCORE')
    removed = removed + drop_seqs(m, e, x, d, due)
  end
  local first = redis.call('ZRANGE', x, 0, 0, 'WITHSCORES')
  local next_x = tonumber(first[2])
  if next_x and (next_front == nil or next_x < next_front) then
    return {removed, first[2]}
  end
  if next_front then
    return {removed, string.format('%.0f', next_front)}
  end
  return {removed, '-1'}
end

-- keys: m k ; args: token hash, max tokens. 1 added (or already live),
-- 0 no mailbox, -1 over the limit.
local function tern_add_token(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then
    return 0
  end
  if redis.call('SISMEMBER', keys[2], args[1]) == 1 then
    return 1
  end
  if tonumber(redis.call('HGET', keys[1], 'k')) >= tonumber(args[2]) then
    return -1
  end
  redis.call('SADD', keys[2], args[1])
  redis.call('HINCRBY', keys[1], 'k', 1)
  return 1
end

-- keys: m k ; args: token hash. Uncounts a live token once.
local function tern_drop_token(keys, args)
  if redis.call('SREM', keys[2], args[1]) == 1 and redis.call('EXISTS', keys[1]) == 1 then
    redis.call('HINCRBY', keys[1], 'k', -1)
  end
  return 1
end

redis.register_function('tern_create', tern_create)
redis.register_function('tern_append', tern_append)
redis.register_function('tern_append_many', tern_append_many)
redis.register_function('tern_ack', tern_ack)
redis.register_function('tern_sweep', tern_sweep)
redis.register_function('tern_add_token', tern_add_token)
redis.register_function('tern_drop_token', tern_drop_token)
