-- A user's hash has three fields, so that an admission reads and writes few of them (a small
-- hash is a flat list: each field looked up or written costs a scan):
--   p  the profile's name;
--   m  "s:sa:ea:q:ps:g:r": status (0 active, 1 canceled, 2 expired), start and end (ms; end -1:
--      none), quota override (-1: none), period start (ms), usage generation (bumped at every
--      reset: the refund token), signature of the rate that wrote the user's own bucket;
--   h  "n:t:f": usage, and the user's own bucket's TAT (see gcra.lua; empty when full).
local function user_load(key)
  local v = redis.call('HMGET', key, 'p', 'm', 'h')
  if not v[1] then
    return nil
  end
  local s, sa, ea, q, ps, g, r = string.match(v[2], '^(%d+):(%-?%d+):(%-?%d+):(%-?%d+):(%-?%d+):(%d+):(.*)$')
  local n, t, f = string.match(v[3], '^(%d+):(%d*):(%d*)$')
  return {
    p = v[1], s = tonumber(s), sa = tonumber(sa), ea = tonumber(ea), q = tonumber(q), ps = tonumber(ps),
    g = tonumber(g), r = r, n = tonumber(n), t = tonumber(t), f = tonumber(f),
  }
end

local function user_meta(u)
  return u.s .. ':' .. int(u.sa) .. ':' .. int(u.ea) .. ':' .. int(u.q) .. ':' .. int(u.ps) .. ':' .. int(u.g) .. ':' .. (u.r or '')
end

local function user_hot(u)
  local t, f = '', ''
  if u.t then
    t, f = u.t, u.f
  end
  return int(u.n) .. ':' .. t .. ':' .. f
end

-- Writes the usage and bucket, and the rest when it changed.
local function user_save(key, u, meta_changed)
  if meta_changed then
    redis.call('HSET', key, 'm', user_meta(u), 'h', user_hot(u))
  else
    redis.call('HSET', key, 'h', user_hot(u))
  end
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
    redis.call('HSET', key, 'm', user_meta(u))
    return 1
  end
  return 0
end

-- The reply every subscription script gives: the fields of a Subscription.
local function user_reply(u, now_ms, expired_now)
  return { u.p, u.s, int(u.sa), int(u.ea), int(u.n), int(u.q), int(u.ps), int(u.g), expired_now, int(now_ms) }
end
