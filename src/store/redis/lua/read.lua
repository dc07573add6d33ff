-- Reads a subscription (recording, once, that it passed its end), and with a rate also what
-- check(1) would say on it now. Charges nothing.
--
-- KEYS[1] the user's record; KEYS[2] optional shared bucket. ARGV: 1 clock ('+0', see
--   time.lua); with a rate: 2 d, 3 T, 4 tau.
-- Reply: the subscription fields (see user_reply), then with a rate: remaining, retry ms for one
--   unit, reset ms; none when there is no subscription; last, KEYS[1] (so that a reply meant for
--   another call is never read as this one's: see ops.ts).
--@include time
--@include gcra
--@include user
--@include subscription

local now = server_now(ARGV[1], 0)
local now_ms = math.floor(now / 1000)
local u = user_load(KEYS[1])
if not u then
  return { KEYS[1] }
end
local reply = user_reply(u, now_ms, user_expire(KEYS[1], u, now_ms))
if ARGV[2] then
  local d, T, tau = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local sig = ARGV[2] .. ':' .. ARGV[3]
  local ahead
  if KEYS[2] then
    ahead = shared_in_use(KEYS[2], now, d, T, sig)
  else
    ahead = gcra_in_use(u.t, u.f, u.r, now, d, T, sig)
  end
  local over = ahead + T - tau
  if over < 0 then
    over = 0
  end
  table.insert(reply, gcra_remaining(ahead, T, tau))
  table.insert(reply, gcra_ms(over, d))
  table.insert(reply, gcra_ms(ahead, d))
end
table.insert(reply, KEYS[1])
return reply
