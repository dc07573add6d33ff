-- Server time in whole microseconds. `clock` is '+<µs>' (an offset added to Redis TIME; '+0' in
-- production) or, for tests only, '=<µs>' (a fixed time). Returns nil once past the caller's
-- deadline, so that a call the client already reported as failed never writes anything: the
-- script then answers redis.error_reply(LATE), nothing written (see codes.ts).
local clock_fixed = false
local function server_now(clock, deadline_us)
  local now
  if clock == '+0' then
    local t = redis.call('TIME')
    now = t[1] * 1000000 + t[2]
  elseif string.sub(clock, 1, 1) == '=' then
    clock_fixed = true
    now = tonumber(string.sub(clock, 2))
  else
    local t = redis.call('TIME')
    now = t[1] * 1000000 + t[2] + tonumber(string.sub(clock, 2))
  end
  if deadline_us > 0 and now > deadline_us then
    return nil
  end
  return now
end
