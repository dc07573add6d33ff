-- The dead-letter queue of one store, in one slot: e (hash id -> entry JSON), o (ids by
-- arrival), x (ids by expiry), and per profile p:<name> (ids by arrival, for its bound).
--
-- KEYS[1] e, KEYS[2] o, KEYS[3] x, KEYS[4] sequence counter, KEYS[5] p:<profile> (add only).
-- ARGV: 1 op: 'add' (2 id, 3 JSON, 4 max entries, 5 retention ms), 'list', 'get' (2 id),
--   'remove' (2 id); last: clock ('+0', see time.lua).
-- Replies: add: nothing; list: entry JSONs, oldest first; get: JSON or nil; remove: 1/0.
--@include time

local op = ARGV[1]
local now_ms = math.floor(server_now(ARGV[#ARGV], 0) / 1000)

local function drop(id)
  local json = redis.call('HGET', KEYS[1], id)
  if not json then
    return 0
  end
  local profile = cjson.decode(json).profileName
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', string.gsub(KEYS[2], ':o$', ':p:') .. profile, id)
  return 1
end

-- Entries past their retention go first, whatever the call.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)) do
  drop(id)
end

if op == 'add' then
  local id, max = ARGV[2], tonumber(ARGV[4])
  local seq = redis.call('INCR', KEYS[4])
  redis.call('HSET', KEYS[1], id, ARGV[3])
  redis.call('ZADD', KEYS[2], seq, id)
  redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[5]), id)
  redis.call('ZADD', KEYS[5], seq, id)
  local over = redis.call('ZCARD', KEYS[5]) - max
  if over > 0 then
    for _, old in ipairs(redis.call('ZRANGE', KEYS[5], 0, over - 1)) do
      drop(old)
    end
  end
  return nil
elseif op == 'list' then
  local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
  if #ids == 0 then
    return {}
  end
  return redis.call('HMGET', KEYS[1], unpack(ids))
elseif op == 'get' then
  return redis.call('HGET', KEYS[1], ARGV[2])
elseif op == 'remove' then
  return drop(ARGV[2])
end
return redis.error_reply('unknown dlq op ' .. tostring(op))
