-- A bucket's turn: takes `cost` units if they conform now (and nobody in the caller waits
-- ahead), else writes nothing and tells how long until they would.
--
-- KEYS[1] the bucket. ARGV: 1 d, 2 T, 3 tau, 4 cost, 5 units waiting ahead in the caller,
--   6 deadline µs (0: none), 7 clock ('+0', see time.lua), 8 'peek' to decide without writing.
-- Reply: { taken (1/0, or -1 past the deadline), wait ms, remaining, reset ms }
--@include time
--@include gcra

local d, T, tau = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, waiting = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = server_now(ARGV[7], tonumber(ARGV[6]))
if not now then
  return { -1, 0, 0, 0 }
end
local ahead = bucket_ahead(KEYS[1], now, d, T)
if waiting == 0 then
  local next = ahead + cost * T
  if next <= tau then
    if ARGV[8] == 'peek' then
      return { 1, 0, gcra_remaining(ahead, T, tau), gcra_ms(ahead, d) }
    end
    bucket_store(KEYS[1], now, next, d, T)
    return { 1, 0, gcra_remaining(next, T, tau), gcra_ms(next, d) }
  end
end
local remaining = 0
if waiting == 0 then
  remaining = gcra_remaining(ahead, T, tau)
end
return { 0, gcra_ms(ahead + (waiting + cost) * T - tau, d), remaining, gcra_ms(ahead, d) }
