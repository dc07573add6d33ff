-- Rate turns for the waiters of one bucket, in their order, at one Redis TIME: takes each
-- waiter's units while they conform, stops at the first that does not (nobody behind it is
-- taken, so nobody is overtaken), and writes the bucket once.
--
-- KEYS[1] the bucket: a user's record (its own bucket) or a shared bucket key (a take on a
--   shared bucket touches no user's record).
--   Last, the operation log (see op.lua).
-- ARGV: 1-4 see op.lua; 5 kind ('h' a user's record, 's' a shared key), 6 d, 7 T, 8 tau, then
--   one cost per waiter, in turn order (9, 10, ...).
-- Reply: { taken, wait ms until the first waiter not taken conforms (0 when all were taken),
--   then for each waiter taken, in order, the bucket's TAT right after its units as whole µs
--   and leftover ticks, and the bucket's refunds so far (its receipt for give_back.lua), and last the call's sequence number
--   (see op.lua) }. A user's record that no longer
--   exists: every waiter taken, no receipts, nothing written (nothing to limit). Past the
--   deadline: the LATE error (see codes.ts), nothing written.
--@include codes
--@include op
--@include gcra
--@include user

local hash = ARGV[5] == 'h'
local d, T, tau = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local sig = ARGV[6] .. ':' .. ARGV[7]
local now, refused = op_begin()
if not now then
  return refused
end
local n = #ARGV - 8
local ahead, u, blob
if hash then
  u = user_load(KEYS[1])
  if not u then
    return { n, 0, op_number() }
  end
  ahead = gcra_in_use(u.t, u.f, u.r, now, d, T, sig)
  blob = u.l
  if u.r ~= sig then
    blob = log_void(blob, now)
  end
else
  ahead, blob = shared_in_use(KEYS[1], now, d, T, sig)
end
-- The refunds so far, for the receipts.
local rn = log_n(blob)
local reply = { 0, 0 }
local taken = 0
for i = 1, n do
  local next = ahead + tonumber(ARGV[8 + i]) * T
  if next > tau then
    reply[2] = gcra_ms(next - tau, d)
    break
  end
  ahead = next
  taken = taken + 1
  -- Redis turns a Lua number into an integer reply: exact, as both stay below 2^53.
  reply[3 * taken], reply[3 * taken + 1] = gcra_split(now, ahead, d)
  reply[3 * taken + 2] = rn
end
reply[1] = taken
if taken > 0 then
  if hash then
    u.t, u.f = gcra_split(now, ahead, d)
    u.r = sig
    u.l = blob
    user_save(KEYS[1], u)
  else
    shared_store(KEYS[1], now, ahead, d, sig, blob)
  end
  -- Taken back latest first, should the caller be told this call failed (see settle.lua): each
  -- refund then finds its slot still at the bucket's end.
  local undo = {}
  for i = taken, 1, -1 do
    undo[#undo + 1] = undo_rate(1, not hash, d, T, tau, tonumber(ARGV[8 + i]), reply[3 * i], reply[3 * i + 1], rn)
  end
  op_end(undo)
end
reply[#reply + 1] = op_number()
return reply
