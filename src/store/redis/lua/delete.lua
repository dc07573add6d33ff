-- Deletes a user: the record (subscription, usage and own bucket) and its ends index entry go.
--
-- KEYS[1] the user's record; KEYS[2] the ends index of the user's slot (see ended.lua).
-- ARGV: 1 clock ('+0', see time.lua); 2 deadline µs (0: none); 3 the user's id.
-- Reply: the deleted subscription's profile name, nil when there was none; past the deadline
--   the LATE error (see codes.ts), nothing deleted.
--@include codes
--@include time
--@include user

if not server_now(ARGV[1], tonumber(ARGV[2])) then
  return redis.error_reply(LATE)
end
local u = user_load(KEYS[1])
if not u then
  return nil
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
return u.p
