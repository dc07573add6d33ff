-- Creates or replaces a subscription, its dates stamped from Redis TIME. Re-subscribing keeps
-- the usage of the period unless asked to reset it.
--
-- KEYS[1] the user's record; KEYS[2] the ends index of the user's slot (see ended.lua).
-- ARGV: 1 profile; 2 starts ms ('' : now); 3 ends ms ('' : none); 4 duration ms ('' : none);
--   5 quota override ('' : none); 6 reset usage (1/0); 7 clock ('+0', see time.lua);
--   8 deadline µs (0: none); 9 the user's id (its member in the index).
-- Reply: the subscription fields (see user_reply), or { 'DATES' } when it would end before it
--   starts; past the deadline the LATE error (see codes.ts), nothing written.
--@include codes
--@include time
--@include user
--@include subscription
--@include ended

local now = server_now(ARGV[7], tonumber(ARGV[8]))
if not now then
  return redis.error_reply(LATE)
end
local now_ms = math.floor(now / 1000)
local sa = tonumber(ARGV[2]) or now_ms
local ea = tonumber(ARGV[3])
if not ea then
  local duration = tonumber(ARGV[4])
  if duration then
    ea = sa + duration
  else
    ea = -1
  end
end
if ea >= 0 and ea <= sa then
  return { 'DATES', num(sa), num(ea) }
end
local q = tonumber(ARGV[5]) or -1
local u = user_load(KEYS[1])
if not u then
  u = { n = 0, ps = sa, g = 0 }
elseif ARGV[6] == '1' then
  u.n = 0
  u.g = u.g + 1
end
u.p, u.s, u.sa, u.ea, u.q = ARGV[1], 0, sa, ea, q
user_save(KEYS[1], u)
ended_set(KEYS[2], ARGV[9], u.ea)
return user_reply(u, now_ms, 0)
