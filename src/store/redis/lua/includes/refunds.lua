-- Giving back what a task that never started was charged (give_back.lua) or
-- what a call its caller was told had failed applied (settle.lua).
--@include gcra
--@include user
--@include subscription

-- Quota: `cost` back into the usage charged under period token `g`, unless the usage period
-- moved on (or usage was reset) since. True when given back.
local function refund_quota(key, cost, g, period_ms, now)
  local u = user_load(key)
  if not u then
    return false
  end
  if user_roll(u, math.floor(now / 1000), period_ms) then
    return false
  end
  if u.g ~= g then
    return false
  end
  u.n = u.n - cost
  if u.n < 0 then
    u.n = 0
  end
  user_save(key, u)
  return true
end

-- Rate units: the part of `cost` units taken with receipt (t µs, f ticks), the bucket's TAT
-- right after they were taken, that the bucket still holds, so that it is never fuller than if
-- they had never been taken. With `mine` the receipt's distance from now, the ticks in use go
-- from `ahead` to ahead - min(cost * T, mine): later admissions each added at least their own
-- cost to the TAT, and only the part of these units' slot ahead of now comes back. Nothing is
-- given back if the slot is over, or if the bucket was written since by another rate or holds
-- less than the slot (a profile change, a reset). `shared`: a shared bucket's key, else a
-- user's record. True when units came back.
local function refund_units(shared, key, d, T, sig, cost, t, f, now)
  local mine = gcra_ahead(t, f, now, d)
  if mine <= 0 then
    return false
  end
  local ahead, u
  if not shared then
    u = user_load(key)
    if not u or not u.t or u.r ~= sig then
      return false
    end
    ahead = gcra_ahead(u.t, u.f, now, d)
  else
    local v = redis.call('GET', key)
    if not v then
      return false
    end
    local bt, bf, r = string.match(v, '^(%d+):(%d+):(.+)$')
    if r ~= sig then
      return false
    end
    ahead = gcra_ahead(tonumber(bt), tonumber(bf), now, d)
  end
  if ahead < mine then
    return false
  end
  local back = cost * T
  if mine < back then
    back = mine
  end
  local next = ahead - back
  if not shared then
    if next <= 0 then
      u.t, u.f = nil, nil
    else
      u.t, u.f = gcra_split(now, next, d)
    end
    user_save(key, u)
  elseif next <= 0 then
    redis.call('DEL', key)
  else
    shared_store(key, now, next, d, sig)
  end
  return true
end
