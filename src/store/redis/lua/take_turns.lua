-- Rate turns for the waiters of one bucket, in their order, at one Redis TIME: takes each
-- waiter's units while they conform, stops at the first that does not (nobody behind it is
-- taken, so nobody is overtaken), and writes the bucket once.
--
-- KEYS[1] the bucket: a user's record (its own bucket) or a shared bucket key (a take on a
--   shared bucket touches no user's record).
-- ARGV: 1 kind ('h' a user's record, 's' a shared key), 2 d, 3 T, 4 tau, 5 deadline µs (0:
--   none), 6 clock ('+0', see time.lua), then one cost per waiter, in turn order (7, 8, ...).
-- Reply: { taken, wait ms until the first waiter not taken conforms (0 when all were taken),
--   then for each waiter taken, in order, the bucket's TAT right after its units as whole µs
--   and leftover ticks (its receipt for refund_rate.lua) }. A user's record that no longer
--   exists: every waiter taken, no receipts, nothing written (nothing to limit). Past the
--   deadline: the LATE error (see codes.ts), nothing written.
--@include codes
--@include time
--@include gcra
--@include user

local hash = ARGV[1] == 'h'
local d, T, tau = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local sig = ARGV[2] .. ':' .. ARGV[3]
local now = server_now(ARGV[6], tonumber(ARGV[5]))
if not now then
  return redis.error_reply(LATE)
end
local n = #ARGV - 6
local ahead, u
if hash then
  u = user_load(KEYS[1])
  if not u then
    return { n, 0 }
  end
  ahead = gcra_in_use(u.t, u.f, u.r, now, d, T, sig)
else
  ahead = shared_in_use(KEYS[1], now, d, T, sig)
end
local reply = { 0, 0 }
local taken = 0
for i = 1, n do
  local next = ahead + tonumber(ARGV[6 + i]) * T
  if next > tau then
    reply[2] = gcra_ms(next - tau, d)
    break
  end
  ahead = next
  taken = taken + 1
  -- Redis turns a Lua number into an integer reply: exact, as both stay below 2^53.
  reply[2 * taken + 1], reply[2 * taken + 2] = gcra_split(now, ahead, d)
end
reply[1] = taken
if taken > 0 then
  if hash then
    u.t, u.f = gcra_split(now, ahead, d)
    u.r = sig
    user_save(KEYS[1], u)
  else
    shared_store(KEYS[1], now, ahead, d, sig)
  end
end
return reply
