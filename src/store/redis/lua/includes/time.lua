-- Server time in whole microseconds, plus a test-only offset (ARGV position given by the caller).
-- Refuses (returns nil) once past the caller's deadline, so that a call the client already
-- reported as failed never writes anything when Redis runs it late.
local function server_now(offset_us, deadline_us)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) + offset_us
  if deadline_us > 0 and now > deadline_us then
    return nil
  end
  return now
end

-- Integers up to 2^53 as exact decimal strings (tostring would round past 14 digits).
local function int(x)
  return string.format('%.0f', x)
end
