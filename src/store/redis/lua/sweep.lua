-- Deletes subscriptions that ended at least a retention ago, from one ends index (one slot),
-- in two calls: 'due' lists the index's oldest due ids (at most `max`: the work of a call is
-- bounded), 'delete' deletes those of them whose records still say they ended by then.
--
-- ARGV: 1 op, 2 retention ms, 3 clock ('+0', see time.lua), then:
-- 'due':    KEYS[1] the index. ARGV 4: max. Reply: user ids, oldest end first.
-- 'delete': KEYS[1] the index, KEYS[2..] the users' records. ARGV 4..: the users' ids (in KEYS'
--           order).
--           Reply: { id, profile name, ... } of the subscriptions deleted.
--@include time
--@include user

local cutoff = math.floor(server_now(ARGV[3], 0) / 1000) - tonumber(ARGV[2])
if ARGV[1] == 'due' then
  return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[4]))
end
-- Every record is read before anything is deleted: one of an unknown layout fails the call
-- (see user.lua) with nothing changed.
local records = {}
for i = 2, #KEYS do
  records[i] = user_load(KEYS[i]) or false
end
local out = {}
for i = 2, #KEYS do
  local user = ARGV[i + 2]
  local u = records[i]
  local score = tonumber(redis.call('ZSCORE', KEYS[1], user))
  if not u then
    redis.call('ZREM', KEYS[1], user)
  elseif score and score <= cutoff and (u.s == 1 or (u.ea >= 0 and u.ea <= cutoff)) then
    redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], user)
    table.insert(out, user)
    table.insert(out, u.p)
  elseif u.s ~= 1 and u.ea < 0 then
    -- No end any more (a later subscription without one): not ended.
    redis.call('ZREM', KEYS[1], user)
  elseif u.s ~= 1 then
    -- Ends later than the entry said: the entry follows the record.
    redis.call('ZADD', KEYS[1], u.ea, user)
  end
end
return out
