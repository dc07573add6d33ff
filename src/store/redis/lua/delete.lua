-- Deletes a user: the record (subscription, usage and own bucket) and its ends index entry go.
--
-- KEYS[1] the user's record; KEYS[2] the ends index of the user's slot (see ended.lua); KEYS[3]
--   the operation log (see op.lua).
-- ARGV: 1-4 see op.lua; 5 the user's id.
-- Reply: { the deleted subscription's profile name, if there was one; the call's sequence
--   number (see op.lua) }; past the deadline the LATE error (see codes.ts), nothing deleted.
--@include codes
--@include op
--@include user

local now, refused = op_begin()
if not now then
  return refused
end
local u = user_load(KEYS[1])
if not u then
  return { op_number() }
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[5])
op_end()
return { u.p, op_number() }
