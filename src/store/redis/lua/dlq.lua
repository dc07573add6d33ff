-- The dead-letter queue of one store, in one slot: e (hash id -> entry JSON), o (ids by
-- arrival), x (ids by expiry), per profile p:<name> (ids by arrival, for its bound) and per
-- user u:<id> (ids by arrival, for a list of one user's entries).
-- No call's work grows with the number of entries: an add touches its own profile's oldest
-- entries, a list reads at most `limit` entries (plus those it skips), and expired entries are
-- dropped from the oldest expiry, a bounded number per call, and by a list as it walks past
-- them (so that no later list walks past them again); an entry past its expiry is never
-- returned, dropped or not.
--
-- KEYS[1] e, KEYS[2] o, KEYS[3] x, KEYS[4] sequence counter, then for an add the p:<profile>
--   and u:<user> keys of the letters it adds, and the operation log (see op.lua); for a list of
--   one user's or one profile's entries, KEYS[5] its u:<user> or p:<profile>.
-- ARGV: 1-4 see op.lua (only an add has a sequence number); 5 op: 'add' (6 the number of
--   letters, then six arguments per letter: the indexes in KEYS of its profile's and its user's
--   keys, id, JSON, max entries, retention ms), 'list' (6 limit, -1: all; 7 a profile name the
--   entries must have, read from their JSON ('' : any; given only when KEYS[5] is a user's);
--   8 token), 'get' (6 id, 7 token), 'remove' (6 id, 7 token), 'forget' (6 token; KEYS[5...]
--   the u:<user> keys of the users whose entries go).
-- Replies, each naming its call (so that a reply meant for another call is never taken for this
--   one's): add: 'added:' and the call's sequence number; list: entry JSONs, oldest first, then
--   the token; get: { token, JSON } or { token }; remove: { token, 1/0 }.
--@include codes
--@include op
--@include letters

local now, refused = op_begin()
if not now then
  return refused
end
local op = ARGV[5]
local now_ms = math.floor(now / 1000)
-- Expired entries dropped per call at most (the rest on later calls; they are skipped meanwhile).
local PRUNE = 100

local function drop(id)
  return letter_drop(KEYS[1], KEYS[2], KEYS[3], id)
end

local function expired(id)
  local at = redis.call('ZSCORE', KEYS[3], id)
  return at and tonumber(at) <= now_ms
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms, 'LIMIT', 0, PRUNE)) do
  drop(id)
end

if op == 'add' then
  local undo = {}
  for i = 0, tonumber(ARGV[6]) - 1 do
    local at = 7 + i * 6
    local profile, user, id, max = KEYS[tonumber(ARGV[at])], KEYS[tonumber(ARGV[at + 1])], ARGV[at + 2], tonumber(ARGV[at + 4])
    local seq = redis.call('INCR', KEYS[4])
    redis.call('HSET', KEYS[1], id, ARGV[at + 3])
    redis.call('ZADD', KEYS[2], seq, id)
    redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[at + 5]), id)
    redis.call('ZADD', profile, seq, id)
    redis.call('ZADD', user, seq, id)
    local over = redis.call('ZCARD', profile) - max
    if over > 0 then
      for _, old in ipairs(redis.call('ZRANGE', profile, 0, over - 1)) do
        drop(old)
      end
    end
    undo[#undo + 1] = undo_letter(id)
  end
  op_end(undo)
  return 'added:' .. ARGV[1]
elseif op == 'list' then
  local limit, profile = tonumber(ARGV[6]), ARGV[7]
  local order = KEYS[5] or KEYS[2]
  local out, from, chunk = {}, 0, 64
  if limit >= 0 and limit < chunk then
    chunk = math.max(limit, 1)
  end
  while limit < 0 or #out < limit do
    local ids = redis.call('ZRANGE', order, from, from + chunk - 1)
    if #ids == 0 then
      break
    end
    from = from + #ids
    local jsons = redis.call('HMGET', KEYS[1], unpack(ids))
    for i, id in ipairs(ids) do
      local json = jsons[i]
      if json and expired(id) then
        -- Dropped as the list walks past it: no later call walks past it again.
        drop(id)
        from = from - 1
      elseif json and (profile == '' or cjson.decode(json).profileName == profile) then
        table.insert(out, json)
        if #out == limit then
          break
        end
      end
    end
  end
  out[#out + 1] = ARGV[8]
  return out
elseif op == 'get' then
  if expired(ARGV[6]) then
    return { ARGV[7] }
  end
  return { ARGV[7], redis.call('HGET', KEYS[1], ARGV[6]) }
elseif op == 'remove' then
  return { ARGV[7], drop(ARGV[6]) }
elseif op == 'forget' then
  -- Every entry of the users whose u:<id> keys follow the first four (their subscriptions were
  -- deleted): the ids dropped, then the token.
  local out = {}
  for k = 5, #KEYS do
    for _, id in ipairs(redis.call('ZRANGE', KEYS[k], 0, -1)) do
      if drop(id) == 1 then
        out[#out + 1] = id
      end
    end
    redis.call('DEL', KEYS[k])
  end
  out[#out + 1] = ARGV[6]
  return out
end
return redis.error_reply('unknown dlq op ' .. tostring(op))
