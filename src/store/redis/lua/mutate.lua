-- One change to an existing subscription.
--
-- KEYS[1] the user's record; KEYS[2] the ends index of the user's slot (see ended.lua); KEYS[3]
--   the operation log (see op.lua).
-- ARGV: 1-4 see op.lua; 5 op: 'extend' (6: ms), 'cancel', 'change' (6: profile; 8 and 9 its
--   rate's d and T, '' for a shared bucket: the user's own bucket is carried over), 'reset',
--   'quota' (6: limit, '' : back to the profile's), 'charge' (6: units admitted while Redis was
--   unreachable, added to the usage); 7 the user's id.
-- Reply: the subscription fields (see user_reply), none when there is no subscription, then
--   the call's sequence number (see op.lua); past the deadline the LATE error (see codes.ts),
--   nothing written.
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
local key = KEYS[1]
local u = user_load(key)
if not u then
  return { op_number() }
end
local op = ARGV[5]
if op == 'extend' then
  if u.s ~= 1 and u.ea >= 0 then
    local from = u.ea
    if from < now_ms then
      from = now_ms
    end
    u.ea = from + tonumber(ARGV[6])
    u.s = 0
    user_save(key, u)
    ended_set(KEYS[2], ARGV[7], u.ea)
  end
elseif op == 'cancel' then
  if u.s ~= 1 then
    -- A canceled subscription ended now: its index entry says so (a second cancel keeps the first time).
    ended_set(KEYS[2], ARGV[7], now_ms)
  end
  u.s = 1
  user_save(key, u)
elseif op == 'change' then
  gcra_carry(u, now, ARGV[8], ARGV[9])
  u.p = ARGV[6]
  user_save(key, u)
elseif op == 'reset' then
  u.n = 0
  u.g = u.g + 1
  user_save(key, u)
elseif op == 'charge' then
  u.n = u.n + tonumber(ARGV[6])
  user_save(key, u)
elseif op == 'quota' then
  u.q = tonumber(ARGV[6]) or -1
  user_save(key, u)
end
local expired_now = user_expire(key, u, now_ms)
op_end()
local reply = user_reply(u, now_ms, expired_now)
reply[#reply + 1] = op_number()
return reply
