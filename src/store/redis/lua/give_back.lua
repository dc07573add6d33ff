-- Gives back what tasks that never started were charged, many parts in one call (the store
-- gathers them per placement unit): quota into a user's usage, unless the usage period moved on
-- (or usage was reset) since the charge; rate units into a bucket, as much of them as it still
-- holds (see refunds.lua).
--
-- KEYS: one per part (a user's record for quota and for a user's own bucket, or a shared bucket
--   key), then the operation log (see op.lua).
-- ARGV: 1-4 see op.lua; then eight per part: 'Q' (quota: cost, period token, period ms, then
--   four 0) or 'h' / 's' (rate units of a user's own bucket / of a shared bucket: d, T, tau,
--   cost, and the receipt: µs, ticks, refunds).
-- Reply: per part 1 when it came back, else 0; then the call's sequence number.
--@include codes
--@include op
--@include refunds

local now, refused = op_begin()
if not now then
  return refused
end
local out = {}
for i = 1, (#ARGV - 4) / 8 do
  local at = 5 + (i - 1) * 8
  local kind = ARGV[at]
  local back
  if kind == 'Q' then
    back = refund_quota(KEYS[i], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), now)
  else
    back = refund_units(kind == 's', KEYS[i], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), ARGV[at + 1] .. ':' .. ARGV[at + 2], tonumber(ARGV[at + 4]), tonumber(ARGV[at + 5]), tonumber(ARGV[at + 6]), tonumber(ARGV[at + 7]), now)
  end
  if back then
    out[i] = 1
  else
    out[i] = 0
  end
end
op_end()
out[#out + 1] = op_number()
return out
