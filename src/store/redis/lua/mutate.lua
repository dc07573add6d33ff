-- One change to an existing subscription; nil when there is none.
--
-- KEYS[1] the user's record; KEYS[2] the ends index of the user's slot (see ended.lua).
-- ARGV: 1 op: 'extend' (2: ms), 'cancel', 'change' (2: profile), 'reset', 'quota' (2: limit,
--   '' : back to the profile's), 'charge' (2: units admitted while Redis was unreachable, added
--   to the usage); 3 clock ('+0', see time.lua); 4 deadline µs (0: none); 5 the user's id.
-- Reply: the subscription fields (see user_reply); past the deadline the LATE error (see
--   codes.ts), nothing written.
--@include codes
--@include time
--@include user
--@include subscription
--@include ended

local now = server_now(ARGV[3], tonumber(ARGV[4]))
if not now then
  return redis.error_reply(LATE)
end
local now_ms = math.floor(now / 1000)
local key = KEYS[1]
local u = user_load(key)
if not u then
  return nil
end
local op = ARGV[1]
if op == 'extend' then
  if u.s ~= 1 and u.ea >= 0 then
    local from = u.ea
    if from < now_ms then
      from = now_ms
    end
    u.ea = from + tonumber(ARGV[2])
    u.s = 0
    user_save(key, u)
    ended_set(KEYS[2], ARGV[5], u.ea)
  end
elseif op == 'cancel' then
  if u.s ~= 1 then
    -- A canceled subscription ended now: its index entry says so (a second cancel keeps the first time).
    ended_set(KEYS[2], ARGV[5], now_ms)
  end
  u.s = 1
  user_save(key, u)
elseif op == 'change' then
  u.p = ARGV[2]
  user_save(key, u)
elseif op == 'reset' then
  u.n = 0
  u.g = u.g + 1
  user_save(key, u)
elseif op == 'charge' then
  u.n = u.n + tonumber(ARGV[2])
  user_save(key, u)
elseif op == 'quota' then
  u.q = tonumber(ARGV[2]) or -1
  user_save(key, u)
end
return user_reply(u, now_ms, user_expire(key, u, now_ms))
