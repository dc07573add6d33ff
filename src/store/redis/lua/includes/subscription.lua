-- What the subscription scripts share beyond the record itself (admit.lua does without them).

-- A number as decimal text that reads back as the same double: integers in full, others (a
-- date given with a fraction of a ms) with 17 significant digits. Lua's own conversion keeps
-- 14 digits, which rounds them, and writes exponent form from 10^14 on.
local function num(x)
  if x == math.floor(x) then
    return string.format('%.0f', x)
  end
  return string.format('%.17g', x)
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
  return { u.p, u.s, num(u.sa), num(u.ea), num(u.n), num(u.q), num(u.ps), num(u.g), expired_now, num(now_ms) }
end
