-- Admissions: for each, subscription status, cost against the burst, quota, and bucket, decided
-- at one Redis TIME and written together, or nothing written (but a subscription passing its
-- end). One call may carry many decisions (a micro-batch); they are decided in order.
--
-- ARGV: 1 deadline µs (0: none); 2 clock ('+0', see time.lua); then per decision i (0-based),
--   at 3 + 13i: profile name the caller holds the parameters of; d; T; tau; burst;
--   quota limit (-1: none); period ms (0: lifetime); hard (1/0); may queue (1/0);
--   max wait ms (-1: none); cost; units already waiting on this bucket in the caller;
--   step: 'all', or 'quota' when the bucket lives in another slot (check and reserve the quota
--   only; see docs/redis.md).
-- KEYS: per decision i, 2i+1 the user's hash and 2i+2 the bucket (the user's own, or a shared
--   one on this node).
-- Reply: per decision { verdict, usage, quota limit, period token, remaining, retry ms,
--   reset ms, starts ms, ends ms, status, expired now (1/0), profile name }
--@include time
--@include gcra
--@include user

local ALLOWED, QUEUED, RATE_LIMITED, QUOTA_EXCEEDED, NOT_FOUND = 0, 1, 2, 3, 4
local CANCELED, EXPIRED, NOT_STARTED, COST_OVER_BURST = 5, 6, 7, 8
local PROFILE_MISMATCH, PAST_DEADLINE, RESERVED = 9, 10, 11
local FIELDS = 13

local now = server_now(ARGV[2], tonumber(ARGV[1]))
local count = #KEYS / 2
if not now then
  local late = {}
  for i = 1, count do
    late[i] = { PAST_DEADLINE }
  end
  return late
end
local now_ms = math.floor(now / 1000)

local function decide(user_key, bucket_key, a)
  local d, T, tau, burst = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local quota, period, hard = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), ARGV[a + 7] == '1'
  local may_queue, max_wait = ARGV[a + 8] == '1', tonumber(ARGV[a + 9])
  local cost, waiting = tonumber(ARGV[a + 10]), tonumber(ARGV[a + 11])

  local u = user_load(user_key)
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
  if u.p ~= ARGV[a] then
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
    return reply(EXPIRED, 0, 0, 0, user_expire(user_key, u, now_ms))
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
      redis.call('HSET', user_key, 'n', int(u.n), 'ps', int(u.ps), 'g', int(u.g))
    else
      redis.call('HINCRBY', user_key, 'n', cost)
    end
  end

  if ARGV[a + 12] == 'quota' then
    charge()
    return reply(RESERVED, 0, 0, 0, 0)
  end

  local ahead = bucket_ahead(bucket_key, now, d, T)
  if waiting == 0 then
    local next = ahead + cost * T
    if next <= tau then
      bucket_store(bucket_key, now, next, d, T)
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
end

local replies = {}
for i = 1, count do
  replies[i] = decide(KEYS[2 * i - 1], KEYS[2 * i], 3 + FIELDS * (i - 1))
end
return replies
