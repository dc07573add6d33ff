-- Gives back quota charged for a task that never started, unless the usage period moved on
-- (or usage was reset) since the charge.
--
-- KEYS[1] the user's record; KEYS[2] the operation log (see op.lua).
-- ARGV: 1-4 see op.lua; 5 cost, 6 period token, 7 period ms.
-- Reply: { 1 when given back, else 0; the call's sequence number (see op.lua) }.
--@include codes
--@include op
--@include refunds

local now, refused = op_begin()
if not now then
  return refused
end
local back = refund_quota(KEYS[1], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), now)
op_end('')
if back then
  return { 1, op_number() }
end
return { 0, op_number() }
