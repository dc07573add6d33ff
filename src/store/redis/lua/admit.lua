-- Admissions: for each, subscription status, cost against the burst, quota, and bucket, decided
-- at one Redis TIME and written together, or nothing written (but a subscription passing its
-- end). One call carries a micro-batch of decisions, decided in order.
--
-- ARGV: 1-4 see op.lua; 5 P, the number of profiles;
--   then per profile 2 fields: its name, and "d:T:tau:burst:quota:period:bits:max wait" (quota
--   limit -1: none; period ms 0: lifetime; bits: 1 hard quota, 2 waits for its turn, 4 shared
--   bucket; max wait ms -1: none; "d:T" is the rate's signature);
--   then the decisions as one string of 19-byte records (struct '<HBdd'): profile index the
--   caller expects (1-based; 0: any), a code (flags: 1 may wait as its profile says, 2 reserve
--   the quota only, its bucket lives in another slot, see docs/redis.md; plus 4 when its bucket
--   has a key of its own, a shared bucket on this node), cost, units already waiting on its
--   bucket in the caller; or, for a single decision, 3 text fields: expected * 8 + code, cost,
--   units waiting.
-- KEYS: per decision, the user's record, then its bucket's key when it has one; last the
--   operation log (see op.lua).
-- Reply: one string, the decisions' records one after the other (struct, little-endian
--   doubles). Allowed, queued, rate limited or reserved: 12 doubles { verdict, usage, period
--   token, remaining, retry ms, reset ms, profile index, ms until the usage period ends (-1: no
--   period), quota limit in force (-1: none), and for an allowed decision the bucket's TAT
--   right after the charge as whole µs and leftover ticks and the bucket's refunds so far (the
--   receipt give_back.lua takes, see refund_log.lua),
--   for a rate-limited one the µs (rounded down) the bucket alone refuses `cost` and until it
--   is full (what the caller's cache of refusals keeps), -1, 0 otherwise }; anything else: 11 doubles { verdict, usage, quota
--   limit, period token, 0, retry ms, 0, starts ms, ends ms, status, expired now (1/0) } and the
--   profile's name (uint32 length, bytes); for a user's record of another layout (UNKNOWN_RECORD)
--   the version found (-1: an empty string) and the version read stand in the usage and quota
--   limit. Past the deadline: the LATE error, nothing decided.
-- Verdicts and LATE: see codes.ts.
--@include codes
--@include op
--@include gcra
--@include user
--@include profile

-- Replies are packed binary records (struct), concatenated into one string for the call.
local COMPACT = '<dddddddddddd'

-- Written for a call that decides one admission as much as for a batch: everything runs in this
-- chunk, in one loop, and the few helpers capture almost nothing (in Redis a script's closures
-- are created at every call, and each captured variable costs a search).

local function full(verdict, n, limit, g, retry, sa, ea, s, expired_now, name)
  return struct.pack('<dddddddddddI4c0', verdict, n, limit, g, 0, retry, 0, sa, ea, s, expired_now, #name, name)
end

local now, refused = op_begin()
if not now then
  return refused
end
local now_ms = math.floor(now / 1000)

local profiles, by_name = {}, nil
local P = tonumber(ARGV[5])
for i = 1, P do
  local a = 4 + 2 * i
  profiles[i] = profile_parse(ARGV[a], ARGV[a + 1], i)
end

local b = 6 + P * 2
local D, count = nil, 1
if not ARGV[b + 1] then
  D = ARGV[b]
  count = #D / 19
end
local replies = {}
local k, at = 1, 1
for i = 1, count do
  -- code: 4 when the bucket has a key of its own, plus the flags.
  local expected, code, cost, waiting
  if D then
    expected, code, cost, waiting, at = struct.unpack('<HBdd', D, at)
  else
    -- One decision, as text: expected * 8 + code, cost, waiting.
    code = tonumber(ARGV[b])
    expected, code = math.floor(code / 8), code % 8
    cost, waiting = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  end
  local flags = code % 4
  local user_key = KEYS[k]
  local user_index, bucket_index = k, k
  local bucket_key = user_key
  if code >= 4 then
    bucket_index = k + 1
    bucket_key = KEYS[k + 1]
    k = k + 2
  else
    k = k + 1
  end
  local out
  repeat
    local v = redis.call('GET', user_key)
    if not v then
      out = full(NOT_FOUND, 0, -1, 0, 0, 0, -1, 0, 0, '')
      break
    end
    local s, sa, ea, q, ps, g, n, t, f, r, name, l = user_unpack(v)
    if not s then
      -- A record of another layout (see user.lua): this decision fails, nothing is written.
      out = full(UNKNOWN_RECORD, string.byte(v) or -1, USER_VERSION, 0, 0, 0, -1, 0, 0, '')
      break
    end
    local p
    if expected > 0 and profiles[expected].name == name then
      p = profiles[expected]
    else
      if not by_name then
        by_name = {}
        for j = 1, P do
          by_name[profiles[j].name] = profiles[j]
        end
      end
      p = by_name[name]
    end
    -- Not the profile the caller sent keys for (or none it knows): it asks again.
    if not p or (expected > 0 and profiles[expected] ~= p) or (expected == 0 and p.shared) then
      out = full(PROFILE_MISMATCH, n, -1, g, 0, sa, ea, s, 0, name)
      break
    end
    local limit = p.quota
    if q >= 0 then
      limit = q
    end
    if cost > p.burst then
      out = full(COST_OVER_BURST, n, limit, g, 0, sa, ea, s, 0, name)
      break
    end
    if s ~= 0 then
      out = full(s == 1 and CANCELED or EXPIRED, n, limit, g, 0, sa, ea, s, 0, name)
      break
    end
    if ea >= 0 and now_ms >= ea then
      out = full(EXPIRED, n, limit, g, 0, sa, ea, s, user_expire(user_key, user_load(user_key), now_ms), name)
      break
    end
    if now_ms < sa then
      out = full(NOT_STARTED, n, limit, g, sa - now_ms, sa, ea, s, 0, name)
      break
    end
    local period = p.period
    local period_left = -1
    if period > 0 then
      if now_ms >= ps + period then
        -- A new usage period (written only when something is charged).
        ps = ps + math.floor((now_ms - ps) / period) * period
        n = 0
        g = g + 1
      end
      period_left = ps + period - now_ms
    end
    if limit >= 0 and p.hard and n + cost > limit then
      local retry = 0
      if period > 0 then
        retry = period_left
      end
      out = full(QUOTA_EXCEEDED, n, limit, g, retry, sa, ea, s, 0, name)
      break
    end
    if flags >= 2 then
      -- The quota only: reserve it; the bucket is taken in its own slot.
      n = n + cost
      redis.call('SET', user_key, user_pack(s, sa, ea, q, ps, g, n, t, f, r, name, l))
      out = struct.pack(COMPACT, RESERVED, n, g, 0, 0, 0, p.i, period_left, limit, -1, 0, 0)
      break
    end

    local d, T, tau = p.d, p.T, p.tau
    local ahead, blob = 0, l
    if p.shared then
      ahead, blob = shared_in_use(bucket_key, now, d, T, p.sig)
    elseif t >= 0 then
      ahead = gcra_in_use(t, f, r, now, d, T, p.sig)
    end
    local next = ahead + cost * T
    -- Allowed when its units and those the caller's waiting tasks reserved conform together: it
    -- takes nothing they need (their turn takes them), so it overtakes nobody.
    local held = next + waiting * T
    if held <= tau then
      n = n + cost
      local rt, rf = gcra_split(now, next, d)
      local rn
      if p.shared then
        shared_store(bucket_key, now, next, d, p.sig, blob)
        rn = log_n(blob)
      else
        if r ~= p.sig then
          -- Written under another rate: what its log says is in other ticks.
          l = log_void(l, now)
        else
          l = log_tidy(l, now_ms)
        end
        t, f = rt, rf
        r = p.sig
        rn = log_n(l)
      end
      redis.call('SET', user_key, user_pack(s, sa, ea, q, ps, g, n, t, f, r, name, l))
      out = struct.pack(COMPACT, ALLOWED, n, g, gcra_remaining(held, T, tau), 0, gcra_ms(held, d), p.i, period_left, limit, rt, rf, rn)
      break
    end
    local wait_ms = gcra_ms(ahead + (waiting + cost) * T - tau, d)
    -- Units reserved by the caller's waiting tasks are as good as taken (as peek counts them).
    local reserved = ahead + waiting * T
    local remaining = gcra_remaining(reserved, T, tau)
    if remaining < 0 then
      remaining = 0
    end
    if flags % 2 == 0 or not p.waits or (p.max_wait >= 0 and wait_ms > p.max_wait) then
      -- For the caller's cache of refusals, in whole µs rounded down: how long the bucket alone
      -- refuses `cost` (0: only the caller's waiting units stand in the way), and until it is full.
      local alone = ahead + cost * T - tau
      local alone_us = 0
      if alone > 0 then
        alone_us = math.floor(alone / d)
      end
      out = struct.pack(COMPACT, RATE_LIMITED, n, g, remaining, wait_ms, gcra_ms(reserved, d), p.i, period_left, limit, alone_us, math.floor(ahead / d), 0)
      break
    end
    -- Waits its turn in the caller: its quota is charged now, its bucket when the turn comes.
    n = n + cost
    redis.call('SET', user_key, user_pack(s, sa, ea, q, ps, g, n, t, f, r, name, l))
    out = struct.pack(COMPACT, QUEUED, n, g, remaining, wait_ms, gcra_ms(reserved, d), p.i, period_left, limit, -1, 0, 0)
  until true
  replies[i] = out
end
local body = D and table.concat(replies) or replies[1]
-- What takes this call back, should its caller be told it failed (see settle.lua): the call's
-- profiles and decisions, and its replies, from which settle.lua reads every charge made. Nothing
-- is packed per decision for it.
if op_seq then
  local records = D
  if not records then
    records = struct.pack('<HBdd', 0, tonumber(ARGV[b]) % 8, tonumber(ARGV[b + 1]), 0)
  end
  op_end(undo_admit(P, count, records, body))
end
-- The call's own sequence number closes the reply: a client whose connection lost a reply pairs
-- later replies with the wrong calls, and this is how it knows (see ops.ts).
return body .. struct.pack('<d', tonumber(ARGV[1]))
