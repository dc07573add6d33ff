-- GCRA in exact integers: the twin of src/rate/gcra.ts (both pass test/vectors/gcra.json).
-- A rate: d ticks per microsecond, T ticks per unit, tau = burst * T ticks.
-- A TAT is kept as whole microseconds `tu` plus `tf` ticks (0 <= tf < d): exact in doubles,
-- since only the distance from now (at most tau ticks) is ever multiplied by d.

-- Ticks from now until the TAT (0 when the bucket is full or the TAT is absent).
local function gcra_ahead(tu, tf, now, d)
  if tu == nil then
    return 0
  end
  local a = (tu - now) * d + tf
  if a < 0 then
    return 0
  end
  return a
end

-- The TAT that lies `ahead` ticks after now, as whole microseconds and leftover ticks.
local function gcra_split(now, ahead, d)
  local whole = math.floor(ahead / d)
  local frac = ahead - whole * d
  if frac < 0 then
    whole = whole - 1
    frac = frac + d
  elseif frac >= d then
    whole = whole + 1
    frac = frac - d
  end
  return now + whole, frac
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

-- A bucket key holds "tu:tf:d:T": its TAT and the rate that wrote it. It expires when the
-- bucket is full again, so an idle bucket costs nothing.

-- Ticks in use (of the rate d, T) of the bucket at `key`, at `now` µs. A bucket written under
-- another rate (a profile change, a new deploy) keeps its units in use, rounded up.
local function bucket_ahead(key, now, d, T)
  local v = redis.call('GET', key)
  if not v then
    return 0
  end
  local tu, tf, bd, bT = string.match(v, '^(%-?%d+):(%d+):(%d+):(%d+)$')
  tu, tf, bd, bT = tonumber(tu), tonumber(tf), tonumber(bd), tonumber(bT)
  local a = gcra_ahead(tu, tf, now, bd)
  if a == 0 or (bd == d and bT == T) then
    return a
  end
  -- units in use = a / bT; in the new ticks, rounded up (exact while a * T stays below 2^53).
  local x = a * T
  if x < 9007199254740992 then
    return math.ceil(x / bT)
  end
  return math.ceil(a / bT * T) + 1
end

-- Writes the TAT that lies `ahead` ticks after now, expiring when the bucket is full again.
local function bucket_store(key, now, ahead, d, T)
  local tu, tf = gcra_split(now, ahead, d)
  -- Relative expiry: the bucket is full again `ahead` ticks from now. Under a test's fixed
  -- clock real time does not move the bucket, so keep the key an hour longer.
  local ttl = gcra_ms(ahead, d) + 1
  if clock_fixed then
    ttl = ttl + 3600000
  end
  redis.call('SET', key, int(tu) .. ':' .. int(tf) .. ':' .. int(d) .. ':' .. int(T), 'PX', int(ttl))
end
