-- Gives back rate units taken for an attempt that never started: the part of them the bucket
-- still holds, so that it is never fuller than if they had never been taken. With A the TAT
-- right after they were taken (the receipt) and `mine` its distance from now, the bucket's
-- ticks in use go from `ahead` to ahead - min(cost * T, mine): later admissions each added at
-- least their own cost to the TAT, and only the part of these units' slot ahead of now comes
-- back. Nothing is given back if the slot is over, or if the bucket was written since by
-- another rate or holds less than the slot (a profile change, a reset).
--
-- KEYS[1] the bucket: a user's record (its own bucket) or a shared bucket key.
-- ARGV: 1 kind ('h' a user's record, 's' a shared key), 2 d, 3 T, 4 cost, 5 receipt µs,
--   6 receipt ticks, 7 clock ('+0', see time.lua).
-- Reply: 1 when units came back, else 0.
--@include time
--@include gcra
--@include user

local hash = ARGV[1] ~= 's'
local d, T, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local sig = ARGV[2] .. ':' .. ARGV[3]
local now = server_now(ARGV[7], 0)
local mine = gcra_ahead(tonumber(ARGV[5]), tonumber(ARGV[6]), now, d)
if mine <= 0 then
  return 0
end
local ahead, u
if hash then
  u = user_load(KEYS[1])
  if not u or not u.t or u.r ~= sig then
    return 0
  end
  ahead = gcra_ahead(u.t, u.f, now, d)
else
  local v = redis.call('GET', KEYS[1])
  if not v then
    return 0
  end
  local t, f, r = string.match(v, '^(%d+):(%d+):(.+)$')
  if r ~= sig then
    return 0
  end
  ahead = gcra_ahead(tonumber(t), tonumber(f), now, d)
end
if ahead < mine then
  return 0
end
local back = cost * T
if mine < back then
  back = mine
end
local next = ahead - back
if hash then
  if next <= 0 then
    u.t, u.f = nil, nil
  else
    u.t, u.f = gcra_split(now, next, d)
  end
  user_save(KEYS[1], u)
elseif next <= 0 then
  redis.call('DEL', KEYS[1])
else
  shared_store(KEYS[1], now, next, d, sig)
end
return 1
