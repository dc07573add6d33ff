-- Reads a subscription (recording, once, that it passed its end), and with a bucket key also
-- what check(1) would say on the rate now. Charges nothing.
--
-- KEYS[1] the user's hash; KEYS[2] optional bucket. ARGV: 1 clock ('+0', see time.lua);
--   with a bucket: 2 d, 3 T, 4 tau.
-- Reply: the subscription fields (see user_reply), then with a bucket:
--   { ..., remaining, retry ms for one unit, reset ms }; nil when there is no subscription.
--@include time
--@include gcra
--@include user

local now = server_now(ARGV[1], 0)
local now_ms = math.floor(now / 1000)
local u = user_load(KEYS[1])
if not u then
  return nil
end
local reply = user_reply(u, now_ms, user_expire(KEYS[1], u, now_ms))
if KEYS[2] then
  local d, T, tau = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local ahead = bucket_ahead(KEYS[2], now, d, T)
  local over = ahead + T - tau
  if over < 0 then
    over = 0
  end
  table.insert(reply, gcra_remaining(ahead, T, tau))
  table.insert(reply, gcra_ms(over, d))
  table.insert(reply, gcra_ms(ahead, d))
end
return reply
