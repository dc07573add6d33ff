-- A user's hash: p profile, s status (0 active, 1 canceled, 2 expired), sa/ea start and end
-- (ms; ea -1: no end), n usage, q quota override (-1: none), ps period start (ms), g usage
-- generation (bumped at every reset: the refund token); and the user's own bucket: t, f (its
-- TAT, see gcra.lua) and r (the signature of the rate that wrote it).
local function user_load(key)
  local v = redis.call('HMGET', key, 'p', 's', 'sa', 'ea', 'n', 'q', 'ps', 'g', 't', 'f', 'r')
  if not v[1] then
    return nil
  end
  return {
    p = v[1], s = tonumber(v[2]), sa = tonumber(v[3]), ea = tonumber(v[4]),
    n = tonumber(v[5]), q = tonumber(v[6]), ps = tonumber(v[7]), g = tonumber(v[8]),
    t = tonumber(v[9]), f = tonumber(v[10]), r = v[11],
  }
end

-- Moves the usage period forward in the table only (callers write it when they charge).
local function user_roll(u, now_ms, period_ms)
  if period_ms > 0 and now_ms >= u.ps + period_ms then
    u.ps = u.ps + math.floor((now_ms - u.ps) / period_ms) * period_ms
    u.n = 0
    u.g = u.g + 1
    return true
  end
  return false
end

-- Records that an active subscription passed its end; 1 the first time, so the event fires once.
local function user_expire(key, u, now_ms)
  if u.s == 0 and u.ea >= 0 and now_ms >= u.ea then
    u.s = 2
    redis.call('HSET', key, 's', 2)
    return 1
  end
  return 0
end

-- The reply every subscription script gives: the fields of a Subscription.
local function user_reply(u, now_ms, expired_now)
  return { u.p, u.s, int(u.sa), int(u.ea), int(u.n), int(u.q), int(u.ps), int(u.g), expired_now, int(now_ms) }
end
