-- A key arrives on the shard that owns it now (see migrate.ts): its copy was restored next to
-- it under a temporary name. In one step on this shard, the copy becomes the key (none here
-- yet), or is merged into the key here (written since the new shards went live), and its
-- arrival is recorded, so that a run interrupted before it deleted the key on the shard it left
-- can run again without counting the copy twice.
--
-- Merging: a user's record here keeps its subscription (profile, status, dates, quota
-- override); its usage gains the copy's usage of the current period (each record's period is
-- its profile's; usage of an earlier period is over and adds nothing); its own bucket becomes
-- the fuller of the two now. A shared bucket becomes the fuller of the two. Other keys (the
-- dead-letter queue, configurations) take the copy's entries this key lacks.
--
-- KEYS[1] the key; KEYS[2] the restored copy; KEYS[3] the record of the copy's arrival.
-- ARGV: 1 kind ('user', 'shared', 'other'); 2 the copy's fingerprint; 3 the key's PTTL on the
--   shard it left (ms; -1: none); 4 clock ('+0', see time.lua); for a user, then per registered
--   profile 2 fields: its name, and "d:T:period ms" (its rate's signature, its usage period).
-- Reply: 'moved' (the key was not here), 'merged', or what the run that first saw this copy
--   answered; an error starting with TASKVALVE_PROFILE and the name of a profile a record
--   names that the caller did not give (nothing written).
--@include time
--@include gcra
--@include user
--@include subscription

local key, copy, arrival = KEYS[1], KEYS[2], KEYS[3]
local fingerprint = ARGV[2]
local seen = redis.call('GET', arrival)
if seen and string.sub(seen, 1, #fingerprint) == fingerprint then
  redis.call('DEL', copy)
  return string.sub(seen, #fingerprint + 2)
end
local now = server_now(ARGV[4], 0)
local outcome = 'merged'
if redis.call('EXISTS', key) == 0 then
  redis.call('RENAME', copy, key)
  local ttl = tonumber(ARGV[3])
  if ttl > 0 then
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('PERSIST', key)
  end
  outcome = 'moved'
elseif ARGV[1] == 'user' then
  local profiles = {}
  for i = 5, #ARGV, 2 do
    local sig, d, T, period = string.match(ARGV[i + 1], '^((%d+):(%d+)):(%d+)$')
    profiles[ARGV[i]] = { sig = sig, d = tonumber(d), T = tonumber(T), period = tonumber(period) }
  end
  local here, there = user_load(key), user_load(copy)
  local p, q = profiles[here.p], profiles[there.p]
  if not p or not q then
    return redis.error_reply('TASKVALVE_PROFILE ' .. ((not p and here.p) or there.p))
  end
  local now_ms = math.floor(now / 1000)
  user_roll(here, now_ms, p.period)
  user_roll(there, now_ms, q.period)
  here.n = here.n + there.n
  if gcra_in_use(there.t, there.f, there.r, now, p.d, p.T, p.sig) > gcra_in_use(here.t, here.f, here.r, now, p.d, p.T, p.sig) then
    here.t, here.f, here.r, here.l = there.t, there.f, there.r, there.l
  end
  user_save(key, here)
elseif ARGV[1] == 'shared' then
  local t, f, sig = shared_parse(redis.call('GET', key))
  local value = redis.call('GET', copy)
  local ct, cf, csig = shared_parse(value)
  local d, T = string.match(sig, '^(%d+):(%d+)$')
  d, T = tonumber(d), tonumber(T)
  -- The fuller one, with its log (see refund_log.lua).
  if gcra_in_use(ct, cf, csig, now, d, T, sig) > gcra_in_use(t, f, sig, now, d, T, sig) then
    local ttl = tonumber(ARGV[3])
    if ttl > 0 then
      redis.call('SET', key, value, 'PX', ttl)
    else
      redis.call('SET', key, value)
    end
  end
else
  local kind = redis.call('TYPE', key)['ok']
  if kind == redis.call('TYPE', copy)['ok'] then
    if kind == 'hash' then
      local all = redis.call('HGETALL', copy)
      for i = 1, #all, 2 do
        redis.call('HSETNX', key, all[i], all[i + 1])
      end
    elseif kind == 'zset' then
      local all = redis.call('ZRANGE', copy, 0, -1, 'WITHSCORES')
      for i = 1, #all, 2 do
        if not redis.call('ZSCORE', key, all[i]) then
          redis.call('ZADD', key, all[i + 1], all[i])
        end
      end
    elseif kind == 'set' then
      redis.call('SUNIONSTORE', key, key, copy)
    elseif kind == 'string' then
      -- A counter (the dead-letter queue's sequence): the larger one.
      local a, b = tonumber(redis.call('GET', key)), tonumber(redis.call('GET', copy))
      if a and b and b > a then
        redis.call('SET', key, redis.call('GET', copy), 'KEEPTTL')
      end
    end
  end
end
redis.call('DEL', copy)
redis.call('SET', arrival, fingerprint .. ' ' .. outcome, 'PX', 86400000)
return outcome
