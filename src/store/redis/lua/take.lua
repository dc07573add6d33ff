-- A bucket's turn: takes `cost` units if they conform now together with the units waiting ahead
-- in the caller, else writes nothing and tells how long until they would.
--
-- KEYS[1] the bucket: a user's record (its own bucket) or a shared bucket key; KEYS[2] the
--   operation log (see op.lua; none for a peek, which writes nothing and has sequence '0').
-- ARGV: 1-4 see op.lua; 5 kind ('h' a user's record, 's' a shared key), 6 d, 7 T, 8 tau, 9 cost,
--   10 units waiting ahead in the caller, 11 'peek' to decide without writing.
-- Reply: { taken (1/0), wait ms, remaining, reset ms, and when taken
--   the bucket's TAT right after as whole µs and leftover ticks (the receipt refund_rate.lua takes) },
--   or past the deadline the LATE error (see codes.ts), nothing written.
--@include codes
--@include op
--@include gcra
--@include user

local hash = ARGV[5] == 'h'
local d, T, tau = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local cost, waiting = tonumber(ARGV[9]), tonumber(ARGV[10])
local sig = ARGV[6] .. ':' .. ARGV[7]
local now, refused = op_begin()
if not now then
  return refused
end
local ahead, u
if hash then
  u = user_load(KEYS[1])
  if not u then
    -- No such user any more: nothing to limit, and nothing to write.
    return { 1, 0, 0, 0 }
  end
  ahead = gcra_in_use(u.t, u.f, u.r, now, d, T, sig)
else
  ahead = shared_in_use(KEYS[1], now, d, T, sig)
end
local next = ahead + cost * T
-- Taken when these units and those waiting ahead in the caller conform together (it takes
-- nothing they need).
local held = next + waiting * T
if held <= tau then
  if ARGV[11] == 'peek' then
    return { 1, 0, gcra_remaining(ahead, T, tau), gcra_ms(ahead, d) }
  end
  local rt, rf = gcra_split(now, next, d)
  if hash then
    u.t, u.f = rt, rf
    u.r = sig
    user_save(KEYS[1], u)
  else
    shared_store(KEYS[1], now, next, d, sig)
  end
  op_end(undo_rate(1, not hash, d, T, cost, rt, rf))
  -- Redis turns a Lua number into an integer reply: exact, as both stay below 2^53.
  return { 1, 0, gcra_remaining(held, T, tau), gcra_ms(held, d), rt, rf }
end
local remaining = 0
if waiting == 0 then
  remaining = gcra_remaining(ahead, T, tau)
end
return { 0, gcra_ms(ahead + (waiting + cost) * T - tau, d), remaining, gcra_ms(ahead, d) }
