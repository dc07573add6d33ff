-- A bucket's turn: takes `cost` units if they conform now together with the units waiting ahead
-- in the caller, else writes nothing and tells how long until they would.
--
-- KEYS[1] the bucket: a user's record (its own bucket) or a shared bucket key.
-- ARGV: 1 kind ('h' a user's record, 's' a shared key), 2 d, 3 T, 4 tau, 5 cost, 6 units waiting
--   ahead in the caller, 7 deadline µs (0: none), 8 clock ('+0', see time.lua), 9 'peek' to
--   decide without writing.
-- Reply: { taken (1/0), wait ms, remaining, reset ms, and when taken
--   the bucket's TAT right after as whole µs and leftover ticks (the receipt refund_rate.lua takes) },
--   or past the deadline the LATE error (see codes.ts), nothing written.
--@include codes
--@include time
--@include gcra
--@include user

local hash = ARGV[1] == 'h'
local d, T, tau = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cost, waiting = tonumber(ARGV[5]), tonumber(ARGV[6])
local sig = ARGV[2] .. ':' .. ARGV[3]
local now = server_now(ARGV[8], tonumber(ARGV[7]))
if not now then
  return redis.error_reply(LATE)
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
  if ARGV[9] == 'peek' then
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
  -- Redis turns a Lua number into an integer reply: exact, as both stay below 2^53.
  return { 1, 0, gcra_remaining(held, T, tau), gcra_ms(held, d), rt, rf }
end
local remaining = 0
if waiting == 0 then
  remaining = gcra_remaining(ahead, T, tau)
end
return { 0, gcra_ms(ahead + (waiting + cost) * T - tau, d), remaining, gcra_ms(ahead, d) }
