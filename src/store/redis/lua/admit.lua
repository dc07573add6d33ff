-- One admission: subscription status, cost against the burst, quota, and bucket, decided at
-- Redis TIME and written together, or nothing written (but a subscription passing its end).
--
-- KEYS[1] the user's hash; KEYS[2] the bucket (the user's own, or a shared one on this node).
-- ARGV: 1 profile name the caller holds the parameters of; 2 d, 3 T, 4 tau, 5 burst;
--   6 quota limit (-1: none), 7 period ms (0: lifetime), 8 hard (1/0); 9 may queue (1/0);
--   10 max wait ms (-1: none); 11 cost; 12 units already waiting on this bucket in the caller;
--   13 deadline µs (0: none); 14 clock ('+0', see time.lua); 15 step: 'all', or 'quota' when the
--   bucket lives in another slot (check and reserve the quota only; see docs/redis.md).
-- Reply: { verdict, usage, quota limit, period token, remaining, retry ms, reset ms,
--          starts ms, ends ms, status, expired now (1/0), profile name }
--@include time
--@include gcra
--@include user

local ALLOWED, QUEUED, RATE_LIMITED, QUOTA_EXCEEDED, NOT_FOUND = 0, 1, 2, 3, 4
local CANCELED, EXPIRED, NOT_STARTED, COST_OVER_BURST = 5, 6, 7, 8
local PROFILE_MISMATCH, PAST_DEADLINE, RESERVED = 9, 10, 11

local d, T, tau, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local quota, period, hard = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1'
local may_queue, max_wait = ARGV[9] == '1', tonumber(ARGV[10])
local cost, waiting = tonumber(ARGV[11]), tonumber(ARGV[12])

local now = server_now(ARGV[14], tonumber(ARGV[13]))
if not now then
  return { PAST_DEADLINE }
end
local now_ms = math.floor(now / 1000)
local u = user_load(KEYS[1])
if not u then
  return { NOT_FOUND, 0, -1, 0, 0, 0, 0, 0, -1, 0, 0, '' }
end
local function reply(verdict, remaining, retry, reset, expired_now)
  local limit = quota
  if u.q >= 0 then
    limit = u.q
  end
  return { verdict, int(u.n), int(limit), int(u.g), remaining, retry, reset, int(u.sa), int(u.ea), u.s, expired_now, u.p }
end
if u.p ~= ARGV[1] then
  return reply(PROFILE_MISMATCH, 0, 0, 0, 0)
end
if cost > burst then
  return reply(COST_OVER_BURST, 0, 0, 0, 0)
end
if u.s == 1 then
  return reply(CANCELED, 0, 0, 0, 0)
end
if u.s == 2 then
  return reply(EXPIRED, 0, 0, 0, 0)
end
if u.ea >= 0 and now_ms >= u.ea then
  return reply(EXPIRED, 0, 0, 0, user_expire(KEYS[1], u, now_ms))
end
if now_ms < u.sa then
  return reply(NOT_STARTED, 0, u.sa - now_ms, 0, 0)
end
local rolled = user_roll(u, now_ms, period)
local limit = quota
if u.q >= 0 then
  limit = u.q
end
if limit >= 0 and hard and u.n + cost > limit then
  local retry = 0
  if period > 0 then
    retry = u.ps + period - now_ms
  end
  return reply(QUOTA_EXCEEDED, 0, retry, 0, 0)
end

-- Charges the quota (and writes a period that moved on).
local function charge()
  u.n = u.n + cost
  if rolled then
    redis.call('HSET', KEYS[1], 'n', int(u.n), 'ps', int(u.ps), 'g', int(u.g))
  else
    redis.call('HINCRBY', KEYS[1], 'n', cost)
  end
end

if ARGV[15] == 'quota' then
  charge()
  return reply(RESERVED, 0, 0, 0, 0)
end

local ahead = bucket_ahead(KEYS[2], now, d, T)
if waiting == 0 then
  local next = ahead + cost * T
  if next <= tau then
    bucket_store(KEYS[2], now, next, d, T)
    charge()
    return reply(ALLOWED, gcra_remaining(next, T, tau), 0, gcra_ms(next, d), 0)
  end
end
local over = ahead + (waiting + cost) * T - tau
local wait_ms = gcra_ms(over, d)
local remaining = 0
if waiting == 0 then
  remaining = gcra_remaining(ahead, T, tau)
end
if not may_queue or (max_wait >= 0 and wait_ms > max_wait) then
  return reply(RATE_LIMITED, remaining, wait_ms, gcra_ms(ahead, d), 0)
end
charge()
return reply(QUEUED, remaining, wait_ms, gcra_ms(ahead, d), 0)
