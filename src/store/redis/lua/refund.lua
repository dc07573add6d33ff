-- Gives back quota charged for a task that never started, unless the usage period moved on
-- (or usage was reset) since the charge.
--
-- KEYS[1] the user's record. ARGV: 1 cost, 2 period token, 3 period ms, 4 clock ('+0', see time.lua).
--@include time
--@include user
--@include subscription

local now = server_now(ARGV[4], 0)
local u = user_load(KEYS[1])
if not u then
  return 0
end
if user_roll(u, math.floor(now / 1000), tonumber(ARGV[3])) then
  return 0
end
if u.g ~= tonumber(ARGV[2]) then
  return 0
end
u.n = u.n - tonumber(ARGV[1])
if u.n < 0 then
  u.n = 0
end
user_save(KEYS[1], u)
return 1
