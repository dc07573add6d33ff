-- GCRA in exact integers: the twin of src/rate/gcra.ts (both pass test/vectors/gcra.json).
--@include refund_log
-- A rate: d ticks per microsecond, T ticks per unit, tau = burst * T ticks; its signature
-- "d:T" tells which rate wrote a bucket.
-- A TAT is kept as whole microseconds `t` plus `f` ticks (0 <= f < d). Both are integers below
-- 2^53 for every rate the validation allows (d <= T <= tau <= 2^50), so doubles hold them
-- exactly, and only the distance from now (at most tau ticks) is ever multiplied by d. Written
-- as text they go through string.format('%.0f'): Lua's own number-to-text conversion keeps 14
-- digits and turns larger numbers into exponent form, which would not read back.

-- Ticks from now (µs) until the TAT (0 when the bucket is full or the TAT is absent).
local function gcra_ahead(t, f, now, d)
  if not t or t < now then
    return 0
  end
  return (t - now) * d + f
end

-- The TAT that lies `ahead` ticks after now, as whole microseconds and leftover ticks.
local function gcra_split(now, ahead, d)
  local us = math.floor(ahead / d)
  local rest = ahead - us * d
  if rest < 0 then
    us = us - 1
    rest = rest + d
  elseif rest >= d then
    us = us + 1
    rest = rest - d
  end
  return now + us, rest
end

-- Whole units that conform with `ahead` ticks in use.
local function gcra_remaining(ahead, T, tau)
  return math.floor((tau - ahead) / T)
end

-- Ticks to whole milliseconds, rounded up.
local function gcra_ms(ticks, d)
  if ticks <= 0 then
    return 0
  end
  return math.ceil(ticks / (d * 1000))
end

-- Ticks in use, in the rate (d, T, signature sig), of a bucket last written by rate `r`: a
-- bucket written under another rate (a profile change, a new deploy) keeps its units in use,
-- rounded up.
local function gcra_in_use(t, f, r, now, d, T, sig)
  if not t then
    return 0
  end
  if r == sig then
    return gcra_ahead(t, f, now, d)
  end
  local bd, bT = string.match(r, '^(%d+):(%d+)$')
  bd, bT = tonumber(bd), tonumber(bT)
  local a = gcra_ahead(t, f, now, bd)
  if a == 0 then
    return 0
  end
  -- units in use = a / bT; in the new ticks, rounded up (exact while a * T stays below 2^53).
  local x = a * T
  if x < 9007199254740992 then
    return math.ceil(x / bT)
  end
  return math.ceil(a / bT * T) + 1
end

-- A user's own bucket carried over to the rate (d, T: the texts of its arguments) of the
-- profile the user moves to, at `now`: its units in use are kept, rounded up, and written under
-- the new rate at once, so that they drain at the new rate from now on (read later under the
-- old rate, they would drain at the old one: a downgrade would grant capacity). d '' (a
-- profile with a shared bucket): left as it is.
local function gcra_carry(u, now, d, T)
  if d == '' or not u.t then
    return
  end
  local sig = d .. ':' .. T
  if u.r == sig then
    return
  end
  local dn = tonumber(d)
  local ahead = gcra_in_use(u.t, u.f, u.r, now, dn, tonumber(T), sig)
  if ahead <= 0 then
    u.t, u.f = nil, nil
  else
    u.t, u.f = gcra_split(now, ahead, dn)
  end
  u.r = sig
end

-- Writes a user's own bucket `ahead` ticks (> 0) after now under the rate (d, signature sig): a
-- refund log written under another rate is voided (its ticks meant something else). Answers the
-- bucket's refund count: what a receipt of units taken here holds.
local function own_store(u, now, ahead, d, sig)
  if u.r ~= sig then
    u.l = log_void(u.l, now)
  end
  u.t, u.f = gcra_split(now, ahead, d)
  u.r = sig
  return log_n(u.l)
end

-- A shared bucket is a string key "t:f:d:T" (integers in full), followed by ";" and its log when
-- it has had refunds (see refund_log.lua), that expires when the bucket is full again and its
-- log is no longer needed, so an idle bucket costs nothing. (A user's own bucket lives in the
-- user's record: t, f, r, l; see user.lua.)

-- A shared bucket's text: t, f (numbers), the signature of the rate that wrote it, its log ('').
local function shared_parse(v)
  local t, f, r = string.match(v, '^(%d+):(%d+):(%d+:%d+)')
  local head = #t + #f + #r + 2
  local blob = ''
  if #v > head then
    blob = string.sub(v, head + 2)
  end
  return tonumber(t), tonumber(f), r, blob
end

-- Ticks in use of a shared bucket, in the rate (d, T, signature sig), and its log (emptied of
-- what it says in the ticks of another rate, see log_void).
local function shared_in_use(key, now, d, T, sig)
  local v = redis.call('GET', key)
  if not v then
    return 0, ''
  end
  local t, f, r, blob = shared_parse(v)
  if r ~= sig then
    blob = log_void(blob, now)
  end
  return gcra_in_use(t, f, r, now, d, T, sig), blob
end

local function shared_store(key, now, ahead, d, sig, blob)
  local t, f = gcra_split(now, ahead, d)
  -- Relative expiry: the bucket is full again `ahead` ticks from now, and its log is needed
  -- until the time it names. Under a test's fixed clock real time does not move the bucket, so
  -- keep the key an hour longer.
  local ttl = gcra_ms(ahead, d) + 1
  local text = string.format('%.0f:%.0f:', t, f) .. sig
  blob = log_tidy(blob, math.floor(now / 1000))
  if blob and blob ~= '' then
    text = text .. ';' .. blob
    local needed = log_until(blob) - math.floor(now / 1000)
    if needed > ttl then
      ttl = needed
    end
  end
  if clock_fixed then
    ttl = ttl + 3600000
  end
  redis.call('SET', key, text, 'PX', ttl)
end
