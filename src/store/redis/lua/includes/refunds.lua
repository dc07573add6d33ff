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

-- Rate units: the part of `cost` units taken with receipt (t µs, f ticks: the bucket's TAT
-- right after they were taken; n: its refunds so far) that the bucket still holds, wherever the
-- refunds since have moved their slot (see refund_log.lua), so that it is never emptier than if
-- they had never been taken. Nothing is given back if the slot is over, or if the bucket was
-- written since by another rate or holds less than the slot (a profile change, a reset).
-- `shared`: a shared bucket's key, else a user's record; tau the rate's burst tolerance in
-- ticks. True when units came back.
local function refund_units(shared, key, d, T, tau, sig, cost, t, f, n, now)
  local mine = gcra_ahead(t, f, now, d)
  if mine <= 0 then
    return false
  end
  local ahead, u, blob
  if not shared then
    u = user_load(key)
    if not u or not u.t or u.r ~= sig then
      return false
    end
    ahead, blob = gcra_ahead(u.t, u.f, now, d), u.l
  else
    local v = redis.call('GET', key)
    if not v then
      return false
    end
    local bt, bf, r
    bt, bf, r, blob = shared_parse(v)
    if r ~= sig then
      return false
    end
    ahead = gcra_ahead(bt, bf, now, d)
  end
  local back
  back, blob = log_give_back(blob, ahead, mine, now, d, T, tau, cost, n)
  if back <= 0 then
    return false
  end
  local next = ahead - back
  if not shared then
    if next <= 0 then
      u.t, u.f = nil, nil
    else
      u.t, u.f = gcra_split(now, next, d)
    end
    u.l = blob
    user_save(key, u)
  else
    -- Kept even when empty now: the log outlives the units (see shared_store).
    shared_store(key, now, next, d, sig, blob)
  end
  return true
end
