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

local function drop_seq(m, e, x, d, seq)
  local found = redis.call('ZRANGE', e, seq, seq, 'BYSCORE')
  local member = found[1]
  if not member then
    return false
  end
  redis.call('ZREMRANGEBYSCORE', e, seq, seq)
  redis.call('ZREM', x, seq)
  local at = string.find(member, ':', 1, true)
  local mid = string.sub(member, at + 1, at + 16)
  if redis.call('HGET', d, mid) == tostring(seq) then
    redis.call('HDEL', d, mid)
  end
  local size = #member - at - 32
  redis.call('HINCRBY', m, 'n', -1)
  redis.call('HINCRBY', m, 'b', -size)
  return true
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

-- keys: m e x d ; args: seqs. How many were held.
local function tern_ack(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then
    return 0
  end
  local count = 0
  for _, seq in ipairs(args) do
    if drop_seq(keys[1], keys[2], keys[3], keys[4], seq) then
      count = count + 1
    end
  end
  return count
end

-- keys: m e x d ; args: now ms. {removed, next expiry or -1}.
local function tern_sweep(keys, args)
  local removed = 0
  if redis.call('EXISTS', keys[1]) == 1 then
    local due = redis.call('ZRANGE', keys[3], '-inf', args[1], 'BYSCORE')
    for _, seq in ipairs(due) do
      if drop_seq(keys[1], keys[2], keys[3], keys[4], seq) then
        removed = removed + 1
      end
    end
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
redis.register_function('tern_ack', tern_ack)
redis.register_function('tern_sweep', tern_sweep)
redis.register_function('tern_add_token', tern_add_token)
redis.register_function('tern_drop_token', tern_drop_token)
