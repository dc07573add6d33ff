-- What the subscription scripts share beyond the record itself (admit.lua does without them).

-- Integers up to 2^53 as exact decimal strings (tostring rounds past 14 digits).
local function int(x)
  if x < 1e14 and x > -1e14 then
    return x .. ''
  end
  return string.format('%.0f', x)
end

-- Moves the usage period forward in the table only (callers write it when they charge).
local function user_roll(u, now_ms, period_ms)
  if period_ms > 0 and now_ms >= u.ps + period_ms then
    u.ps = u.ps + math.floor((now_ms - u.ps) / period_ms) * period_ms
    u.n = 0
    u.g = u.g + 1
    return true
  end
  return false
end

-- The reply every subscription script gives: the fields of a Subscription.
local function user_reply(u, now_ms, expired_now)
  return { u.p, u.s, int(u.sa), int(u.ea), int(u.n), int(u.q), int(u.ps), int(u.g), expired_now, int(now_ms) }
end
