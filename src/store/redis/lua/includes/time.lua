-- Server time in whole microseconds. `clock` is '+<µs>' (an offset added to Redis TIME; '+0' in
-- production) or, for tests only, '=<µs>' (a fixed time). Returns nil once past the caller's
-- deadline, so that a call the client already reported as failed never writes anything.
local clock_fixed = false
local function server_now(clock, deadline_us)
  local now
  local value = tonumber(string.sub(clock, 2))
  if string.sub(clock, 1, 1) == '=' then
    clock_fixed = true
    now = value
  else
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2]) + value
  end
  if deadline_us > 0 and now > deadline_us then
    return nil
  end
  return now
end

-- Integers up to 2^53 as exact decimal strings (tostring rounds past 14 digits).
local function int(x)
  if x < 1e14 and x > -1e14 then
    return x .. ''
  end
  return string.format('%.0f', x)
end
