-- Deletes a user: the record (subscription, usage and own bucket) goes.
--
-- KEYS[1] the user's record. ARGV: 1 clock ('+0', see time.lua); 2 deadline µs (0: none).
-- Reply: the deleted subscription's profile name, nil when there was none, or { 'LATE' }.
--@include time
--@include user

if not server_now(ARGV[1], tonumber(ARGV[2])) then
  return { 'LATE' }
end
local u = user_load(KEYS[1])
if not u then
  return nil
end
redis.call('DEL', KEYS[1])
return u.p
