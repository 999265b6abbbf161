#!lua name=tern
-- Tern's mailbox functions for the Redis Cluster engine
-- (relay/src/store/redis/). Every key one call touches carries the
-- mailbox's hash tag, so each call runs on one shard, atomically.
--
-- Keys of a mailbox H (hex id):
--   m:{H}  hash: a (owner key), s (next seq), n (held), b (bytes held),
--          k (live tokens), c (created ms)
--   e:{H}  sorted set: score seq, member "<seq>:" .. message id (16 bytes)
--          .. received ms (8, big endian) .. expires ms (8) .. payload
--   x:{H}  sorted set: score expires ms, member seq
--   d:{H}  hash: message id -> seq, for de-duplication while held
--   k:{H}  set: hashes of the live send tokens

-- Remove seq's envelope; its payload size, or nil if it was not held.
-- The caller uncounts what it removed (once per call, not per envelope).
local function drop_seq(e, x, d, seq)
  local found = redis.call('ZRANGE', e, seq, seq, 'BYSCORE')
  local member = found[1]
  if not member then
    return nil
  end
  redis.call('ZREMRANGEBYSCORE', e, seq, seq)
  redis.call('ZREM', x, seq)
  local at = string.find(member, ':', 1, true)
  local mid = string.sub(member, at + 1, at + 16)
  if redis.call('HGET', d, mid) == tostring(seq) then
    redis.call('HDEL', d, mid)
  end
  return #member - at - 32
end

-- Remove the envelopes of `seqs` from a mailbox; how many were held.
local function drop_seqs(m, e, x, d, seqs)
  local count, bytes = 0, 0
  for _, seq in ipairs(seqs) do
    local size = drop_seq(e, x, d, seq)
    if size then
      count = count + 1
      bytes = bytes + size
    end
  end
  if count > 0 then
    redis.call('HINCRBY', m, 'n', -count)
    redis.call('HINCRBY', m, 'b', -bytes)
  end
  return count
end

-- keys: m ; args: owner key, created ms. 1 created, 0 taken.
local function tern_create(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then
    return 0
  end
  redis.call('HSET', keys[1], 'a', args[1], 's', 1, 'n', 0, 'b', 0, 'k', 0, 'c', args[2])
  return 1
end

-- keys: m e x d ; args: message id, packed envelope (without the seq
-- prefix), expires ms, payload bytes, max envelopes, max bytes.
-- {0}: no mailbox; {1, seq, earliest}: stored (earliest is 1 when it is now
-- the mailbox's earliest expiry); {2, seq}: duplicate; {3, n, b}: over quota.
local function tern_append(keys, args)
  local m, e, x, d = keys[1], keys[2], keys[3], keys[4]
  -- One read of the record answers "does it exist" too: s is set at
  -- creation. One write updates its three counters.
  local held = redis.call('HMGET', m, 's', 'n', 'b')
  if not held[1] then
    return {0}
  end
  local dup = redis.call('HGET', d, args[1])
  if dup then
    return {2, tonumber(dup)}
  end
  local seq, n, b = tonumber(held[1]), tonumber(held[2]), tonumber(held[3])
  local size = tonumber(args[4])
  if n >= tonumber(args[5]) or b + size > tonumber(args[6]) then
    return {3, n, b}
  end
  redis.call('HSET', m, 's', string.format('%d', seq + 1), 'n', string.format('%d', n + 1),
    'b', string.format('%d', b + size))
  redis.call('ZADD', e, seq, seq .. ':' .. args[2])
  local first = redis.call('ZRANGE', x, 0, 0, 'WITHSCORES')
  local earliest = 0
  if not first[2] or tonumber(args[3]) < tonumber(first[2]) then
    earliest = 1
  end
  redis.call('ZADD', x, args[3], seq)
  redis.call('HSET', d, args[1], seq)
  return {1, seq, earliest}
end

-- keys: m e x d ; args: six per envelope: message id, packed envelope,
-- expires ms, payload bytes, max envelopes, max bytes. One reply per
-- envelope, in order, each as tern_append's; envelopes stored in order
-- (a repeat of an earlier one is its duplicate). A stream's batch of
-- sends to one mailbox is one call: the record is read and written once.
local function tern_append_many(keys, args)
  local m, e, x, d = keys[1], keys[2], keys[3], keys[4]
  local count = math.floor(#args / 6)
  local out = {}
  local held = redis.call('HMGET', m, 's', 'n', 'b')
  if not held[1] then
    for i = 1, count do
      out[i] = {0}
    end
    return out
  end
  local seq, n, b = tonumber(held[1]), tonumber(held[2]), tonumber(held[3])
  local first = redis.call('ZRANGE', x, 0, 0, 'WITHSCORES')
  local earliest = nil
  if first[2] then
    earliest = tonumber(first[2])
  end
  local stored = false
  for i = 1, count do
    local j = (i - 1) * 6
    local mid, expires, size = args[j + 1], tonumber(args[j + 3]), tonumber(args[j + 4])
    local dup = redis.call('HGET', d, mid)
    if dup then
      out[i] = {2, tonumber(dup)}
    elseif n >= tonumber(args[j + 5]) or b + size > tonumber(args[j + 6]) then
      out[i] = {3, n, b}
    else
      redis.call('ZADD', e, seq, seq .. ':' .. args[j + 2])
      redis.call('ZADD', x, args[j + 3], seq)
      redis.call('HSET', d, mid, seq)
      local now_earliest = 0
      if not earliest or expires < earliest then
        now_earliest = 1
        earliest = expires
      end
      out[i] = {1, seq, now_earliest}
      seq, n, b = seq + 1, n + 1, b + size
      stored = true
    end
  end
  if stored then
    redis.call('HSET', m, 's', string.format('%d', seq), 'n', string.format('%d', n),
      'b', string.format('%d', b))
  end
  return out
end

-- keys: m e x d ; args: seqs. How many were held.
local function tern_ack(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then
    return 0
  end
  return drop_seqs(keys[1], keys[2], keys[3], keys[4], args)
end

-- keys: m e x d ; args: now ms. {removed, next expiry or -1}.
local function tern_sweep(keys, args)
  local removed = 0
  if redis.call('EXISTS', keys[1]) == 1 then
    local due = redis.call('ZRANGE', keys[3], '-inf', args[1], 'BYSCORE')
    removed = drop_seqs(keys[1], keys[2], keys[3], keys[4], due)
  end
  local first = redis.call('ZRANGE', keys[3], 0, 0, 'WITHSCORES')
  if first[2] then
    return {removed, first[2]}
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
