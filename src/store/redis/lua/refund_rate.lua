-- Gives back rate units taken for an attempt that never started, as much of them as the bucket
-- still holds (see refund_units in refunds.lua).
--
-- KEYS[1] the bucket: a user's record (its own bucket) or a shared bucket key; KEYS[2] the
--   operation log (see op.lua).
-- ARGV: 1-4 see op.lua; 5 kind ('h' a user's record, 's' a shared key), 6 d, 7 T, 8 cost,
--   9 receipt µs, 10 receipt ticks.
-- Reply: { 1 when units came back, else 0; the call's sequence number (see op.lua) }.
--@include codes
--@include op
--@include refunds

local now, refused = op_begin()
if not now then
  return refused
end
local back = refund_units(ARGV[5] == 's', KEYS[1], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[6] .. ':' .. ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), now)
op_end('')
if back then
  return { 1, op_number() }
end
return { 0, op_number() }
