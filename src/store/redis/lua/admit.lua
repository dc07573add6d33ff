-- Admissions: for each, subscription status, cost against the burst, quota, and bucket, decided
-- at one Redis TIME and written together, or nothing written (but a subscription passing its
-- end). One call carries a micro-batch of decisions, decided in order.
--
-- ARGV: 1 deadline µs (0: none); 2 clock ('+0', see time.lua); 3 P, the number of profiles;
--   then P profiles of 11 fields: name, d, T, tau, burst, quota limit (-1: none), period ms
--   (0: lifetime), hard (1/0), waits for its turn (1/0), max wait ms (-1: none), shared (1/0);
--   then per decision 4 fields: profile index the caller expects (1-based; 0: any), cost, units
--   already waiting on its bucket in the caller, flags (1: may wait as its profile says;
--   2: reserve the quota only, its bucket lives in another slot, see docs/redis.md).
-- KEYS: per decision, the user's hash and its bucket (the hash itself for the user's own
--   bucket, else a shared bucket on this node).
-- Reply per decision: allowed, queued, rate limited or reserved:
--   { verdict, usage, period token, remaining, retry ms, reset ms, profile index,
--     ms until the usage period ends (-1: no period), quota limit in force (-1: none) };
--   anything else: { verdict, usage, quota limit, period token, 0, retry ms, 0, starts ms,
--   ends ms, status, expired now (1/0), profile name }.
--@include time
--@include gcra
--@include user

local ALLOWED, QUEUED, RATE_LIMITED, QUOTA_EXCEEDED, NOT_FOUND = 0, 1, 2, 3, 4
local CANCELED, EXPIRED, NOT_STARTED, COST_OVER_BURST = 5, 6, 7, 8
local PROFILE_MISMATCH, PAST_DEADLINE, RESERVED = 9, 10, 11

local count = #KEYS / 2
local now = server_now(ARGV[2], tonumber(ARGV[1]))
if not now then
  local late = {}
  for i = 1, count do
    late[i] = { PAST_DEADLINE }
  end
  return late
end
local now_ms = math.floor(now / 1000)

local profiles, by_name = {}, {}
local P = tonumber(ARGV[3])
for i = 1, P do
  local a = 3 + (i - 1) * 11
  local p = {
    name = ARGV[a + 1], d = tonumber(ARGV[a + 2]), T = tonumber(ARGV[a + 3]), tau = tonumber(ARGV[a + 4]),
    burst = tonumber(ARGV[a + 5]), quota = tonumber(ARGV[a + 6]), period = tonumber(ARGV[a + 7]),
    hard = ARGV[a + 8] == '1', waits = ARGV[a + 9] == '1', max_wait = tonumber(ARGV[a + 10]),
    shared = ARGV[a + 11] == '1',
  }
  p.sig = ARGV[a + 2] .. ':' .. ARGV[a + 3]
  p.i = i
  profiles[i] = p
  by_name[p.name] = p
end

local function full(verdict, u, limit, retry, expired_now)
  return { verdict, u.n, limit, u.g, 0, retry, 0, u.sa, u.ea, u.s, expired_now, u.p }
end

local function decide(user_key, bucket_key, expected, cost, waiting, flags)
  local u = user_load(user_key)
  if not u then
    return { NOT_FOUND, 0, -1, 0, 0, 0, 0, 0, -1, 0, 0, '' }
  end
  local p = by_name[u.p]
  -- Not the profile the caller sent keys for (or none it knows): it asks again.
  if not p or (expected > 0 and profiles[expected] ~= p) or (expected == 0 and p.shared) then
    return full(PROFILE_MISMATCH, u, -1, 0, 0)
  end
  local limit = p.quota
  if u.q >= 0 then
    limit = u.q
  end
  if cost > p.burst then
    return full(COST_OVER_BURST, u, limit, 0, 0)
  end
  if u.s == 1 then
    return full(CANCELED, u, limit, 0, 0)
  end
  if u.s == 2 then
    return full(EXPIRED, u, limit, 0, 0)
  end
  if u.ea >= 0 and now_ms >= u.ea then
    return full(EXPIRED, u, limit, 0, user_expire(user_key, u, now_ms))
  end
  if now_ms < u.sa then
    return full(NOT_STARTED, u, limit, u.sa - now_ms, 0)
  end
  local rolled = user_roll(u, now_ms, p.period)
  local period_left = -1
  if p.period > 0 then
    period_left = u.ps + p.period - now_ms
  end
  if limit >= 0 and p.hard and u.n + cost > limit then
    local retry = 0
    if p.period > 0 then
      retry = u.ps + p.period - now_ms
    end
    return full(QUOTA_EXCEEDED, u, limit, retry, 0)
  end
  if flags >= 2 then
    -- The quota only: reserve it; the bucket is taken in its own slot.
    u.n = u.n + cost
    user_save(user_key, u, rolled)
    return { RESERVED, u.n, u.g, 0, 0, 0, p.i, period_left, limit }
  end

  local d, T, tau = p.d, p.T, p.tau
  local ahead
  if p.shared then
    ahead = shared_in_use(bucket_key, now, d, T, p.sig)
  else
    ahead = gcra_in_use(u.t, u.f, u.r, now, d, T, p.sig)
  end
  if waiting == 0 then
    local next = ahead + cost * T
    if next <= tau then
      u.n = u.n + cost
      if p.shared then
        shared_store(bucket_key, now, next, d, p.sig)
        user_save(user_key, u, rolled)
      else
        u.t, u.f = gcra_split(now, next, d)
        local resigned = u.r ~= p.sig
        u.r = p.sig
        user_save(user_key, u, rolled or resigned)
      end
      return { ALLOWED, u.n, u.g, gcra_remaining(next, T, tau), 0, gcra_ms(next, d), p.i, period_left, limit }
    end
  end
  local wait_ms = gcra_ms(ahead + (waiting + cost) * T - tau, d)
  local remaining = 0
  if waiting == 0 then
    remaining = gcra_remaining(ahead, T, tau)
  end
  if flags % 2 == 0 or not p.waits or (p.max_wait >= 0 and wait_ms > p.max_wait) then
    return { RATE_LIMITED, u.n, u.g, remaining, wait_ms, gcra_ms(ahead, d), p.i, period_left, limit }
  end
  -- Waits its turn in the caller: its quota is charged now, its bucket when the turn comes.
  u.n = u.n + cost
  user_save(user_key, u, rolled)
  return { QUEUED, u.n, u.g, remaining, wait_ms, gcra_ms(ahead, d), p.i, period_left, limit }
end

local replies = {}
local a = 4 + P * 11
for i = 1, count do
  local b = a + (i - 1) * 4
  replies[i] = decide(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]))
end
return replies
