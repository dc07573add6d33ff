-- The index keys of the dead-letter queue whose arrival key is `o` (see dlq.lua): a profile's
-- (p:<name>) and a user's (u:<id>), named like o.
local function letter_index(o, kind, name)
  return (string.gsub(o, ':o$', ':' .. kind .. ':')) .. name
end

-- Removes one dead letter from the queue's keys (see dlq.lua): e (entries), o (by arrival),
-- x (by expiry), and its profile's and its user's indexes. 1 when it was there, else 0.
local function letter_drop(e, o, x, id)
  local json = redis.call('HGET', e, id)
  if not json then
    return 0
  end
  local entry = cjson.decode(json)
  redis.call('HDEL', e, id)
  redis.call('ZREM', o, id)
  redis.call('ZREM', x, id)
  redis.call('ZREM', letter_index(o, 'p', entry.profileName), id)
  redis.call('ZREM', letter_index(o, 'u', entry.userId), id)
  return 1
end
