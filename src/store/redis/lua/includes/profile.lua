-- A profile's parameters as an admission call carries them (batch.ts, profileFields): its name,
-- then "d:T:tau:burst:quota:period:bits:max wait" as text; "d:T" is its rate's signature. Read
-- by admit.lua for each call and by settle.lua from an admission's log entry.
local function profile_parse(name, fields, i)
  local sig, d, T, tau, burst, quota, period, bits, max_wait = string.match(fields, '^((%d+):(%d+)):(%d+):(%d+):(%-?%d+):(%d+):(%d+):(%-?%d+)$')
  bits = tonumber(bits)
  return {
    name = name, d = tonumber(d), T = tonumber(T), tau = tonumber(tau), burst = tonumber(burst),
    quota = tonumber(quota), period = tonumber(period), hard = bits % 2 == 1, waits = bits % 4 >= 2,
    shared = bits >= 4, max_wait = tonumber(max_wait), sig = sig, i = i,
  }
end
