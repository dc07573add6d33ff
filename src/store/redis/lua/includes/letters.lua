-- Removes one dead letter from the queue's keys (see dlq.lua): e (entries), o (by arrival),
-- x (by expiry), and its profile's index, named like o. 1 when it was there, else 0.
local function letter_drop(e, o, x, id)
  local json = redis.call('HGET', e, id)
  if not json then
    return 0
  end
  local profile = cjson.decode(json).profileName
  redis.call('HDEL', e, id)
  redis.call('ZREM', o, id)
  redis.call('ZREM', x, id)
  redis.call('ZREM', string.gsub(o, ':o$', ':p:') .. profile, id)
  return 1
end
