-- The ends index of a slot: a sorted set, user id -> when the subscription ends or ended (ms;
-- a cancel ends it then). The scripts that set or clear a user's end keep it up to date in the
-- same step; sweep.lua reads it.
local function ended_set(key, user, end_ms)
  if end_ms >= 0 then
    redis.call('ZADD', key, end_ms, user)
  else
    redis.call('ZREM', key, user)
  end
end
