-- Creates or replaces a subscription, its dates stamped from Redis TIME. Re-subscribing keeps
-- the usage of the period unless asked to reset it.
--
-- KEYS[1] the user's record; KEYS[2] the ends index of the user's slot (see ended.lua); KEYS[3]
--   the operation log (see op.lua).
-- ARGV: 1-4 see op.lua; 5 profile; 6 starts ms ('' : now); 7 ends ms ('' : none); 8 duration
--   ms ('' : none); 9 quota override ('' : none); 10 reset usage (1/0); 11 the user's id (its
--   member in the index); 12 and 13 the profile's rate d and T ('' for a shared bucket: a
--   user's own bucket is carried over to the profile's rate, see gcra_carry).
-- Reply: the subscription fields (see user_reply), or { 'DATES', starts, ends } when it would
--   end before it starts; then
--   the call's sequence number (see op.lua). Past the deadline the
--   LATE error (see codes.ts), nothing written.
--@include codes
--@include op
--@include gcra
--@include user
--@include subscription
--@include ended

local now, refused = op_begin()
if not now then
  return refused
end
local now_ms = math.floor(now / 1000)
local sa = tonumber(ARGV[6]) or now_ms
local ea = tonumber(ARGV[7])
if not ea then
  local duration = tonumber(ARGV[8])
  if duration then
    ea = sa + duration
  else
    ea = -1
  end
end
if ea >= 0 and ea <= sa then
  return { 'DATES', num(sa), num(ea), op_number() }
end
local q = tonumber(ARGV[9]) or -1
local u = user_load(KEYS[1])
if not u then
  -- A new record's usage generation is the time it was made: a refund of a charge made before
  -- the user was deleted and subscribed again never matches it.
  u = { n = 0, ps = sa, g = now }
elseif ARGV[10] == '1' then
  u.n = 0
  u.g = u.g + 1
end
gcra_carry(u, now, ARGV[12], ARGV[13])
u.p, u.s, u.sa, u.ea, u.q = ARGV[5], 0, sa, ea, q
user_save(KEYS[1], u)
ended_set(KEYS[2], ARGV[11], u.ea)
op_end()
local reply = user_reply(u, now_ms, 0)
reply[#reply + 1] = op_number()
return reply
