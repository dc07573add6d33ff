-- Charges back what a process admitted on its own while Redis was unreachable (the 'local'
-- outage policy): units of one user's usage, and units taken from a bucket, together when both
-- live in this slot. Forced: no status, quota or conformance check, since the units were
-- admitted already. A bucket's TAT is pushed forward as if the units had been taken from it
-- since `age` ago, when the process's own bucket started (empty): from max(TAT, now - age),
-- so units whose time has passed by now leave it no fuller than a bucket that admitted them as
-- they came.
--
-- KEYS[1] the user's record, when usage or the user's own bucket is charged; else the shared
--   bucket. KEYS[2] the shared bucket, when it is charged with the user's usage. Last, the
--   operation log (see op.lua).
-- ARGV: 1-4 see op.lua; 5 usage units (0: none); 6 the usage period's token they were admitted
--   under; 7 period ms (0: lifetime); 8 the bucket: '' none, 'h' the user's own (in KEYS[1]'s
--   record), 's' a shared key (the last key before the log); 9 d, 10 T (the rate the units were
--   taken under); 11 bucket units; 12 age µs; 13 tau (the rate's burst tolerance in ticks).
-- Reply: { usage charged (1; 0 when the user is gone or the period moved on since), bucket
--   charged (1, or 0 when none), the call's sequence number (see op.lua) }; past the deadline
--   the LATE error (see codes.ts), nothing written.
--@include codes
--@include op
--@include gcra
--@include user
--@include subscription

-- The largest distance ahead a bucket is written with: exact in a double (see gcra.lua).
local MAX_AHEAD = 4503599627370496

local now, refused = op_begin()
if not now then
  return refused
end
local units, token, period = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local kind = ARGV[8]
local d, T, taken, age, tau = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local sig = ARGV[9] .. ':' .. ARGV[10]
-- What takes this call back, should its caller be told it failed (see settle.lua).
local undo = {}

-- Ticks ahead of now once `taken` units are pushed onto a bucket (t, f, written by rate r; t nil:
-- full): from the later of its TAT and now - age. Never more than the units themselves hold,
-- so age is bounded by them (the products stay exact).
local function pushed(t, f, r)
  local span = taken * T
  local base = -span
  if age * d < span then
    base = -age * d
  end
  if t then
    local ahead
    if r == sig then
      ahead = (t - now) * d + f
    else
      -- Written under another rate: its units in use, re-expressed in this one (none: full).
      ahead = gcra_in_use(t, f, r, now, d, T, sig)
      if ahead == 0 then
        ahead = base
      end
    end
    if ahead > base then
      base = ahead
    end
  end
  local next = base + span
  if next > MAX_AHEAD then
    next = MAX_AHEAD
  end
  return next
end

local usage_charged, bucket_charged = 0, 0
if units > 0 or kind == 'h' then
  local u = user_load(KEYS[1])
  if u then
    local dirty = false
    if units > 0 then
      user_roll(u, math.floor(now / 1000), period)
      if u.g == token then
        u.n = u.n + units
        usage_charged = 1
        dirty = true
        undo[#undo + 1] = undo_quota(1, units, token, period)
      end
    end
    if kind == 'h' then
      local next = pushed(u.t, u.f, u.r)
      if next > 0 then
        local rn = own_store(u, now, next, d, sig)
        dirty = true
        undo[#undo + 1] = undo_rate(1, false, d, T, tau, taken, u.t, u.f, rn)
      end
      bucket_charged = 1
    end
    if dirty then
      user_save(KEYS[1], u)
    end
  end
end
if kind == 's' then
  local key = KEYS[#KEYS - 1]
  local v = redis.call('GET', key)
  local t, f, r, blob
  if v then
    t, f, r, blob = shared_parse(v)
    if r ~= sig then
      blob = log_void(blob, now)
    end
  end
  local next = pushed(t, f, r)
  if next > 0 then
    shared_store(key, now, next, d, sig, blob)
    local rt, rf = gcra_split(now, next, d)
    undo[#undo + 1] = undo_rate(#KEYS - 1, true, d, T, tau, taken, rt, rf, log_n(blob))
  end
  bucket_charged = 1
end
op_end(undo)
return { usage_charged, bucket_charged, op_number() }
