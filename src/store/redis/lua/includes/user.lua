-- A user's record is one string key, read with one GET and written with one SET, packed with
-- Redis's struct library (a binary record decodes in C, with no parsing in Lua):
--   one byte: the layout's version (USER_VERSION);
--   nine doubles: s status (0 active, 1 canceled, 2 expired), sa start ms, ea end ms (-1: none),
--   q quota override (-1: none), ps period start ms, g usage generation (bumped at every reset:
--   the refund token), n usage, t and f the user's own bucket's TAT (see gcra.lua; t -1: full);
--   then three length-prefixed strings: r the signature of the rate that wrote that bucket, p the
--   profile's name, l what that bucket remembers of its refunds (see refund_log.lua; empty
--   until a first refund). Version 1, without l, is still read (as an empty l) and written
--   again as version 2.
-- A record of another version is never read as this one: user_load fails the script with
-- user_unknown's text (before the script writes anything), which the client reports as
-- INVALID_CONFIG; admit.lua answers that decision alone with UNKNOWN_RECORD instead.
local USER_VERSION = 2
local USER = '<BdddddddddI4c0I4c0I4c0'
local USER_V1 = '<BdddddddddI4c0I4c0'

local function user_pack(s, sa, ea, q, ps, g, n, t, f, r, p, l)
  l = l or ''
  return struct.pack(USER, USER_VERSION, s, sa, ea, q, ps, g, n, t or -1, f or 0, #r, r, #p, p, #l, l)
end

-- A record's fields (version 2 or 1), nil for a record of any other version.
local function user_unpack(v)
  local version = string.byte(v)
  if version == USER_VERSION then
    local _, s, sa, ea, q, ps, g, n, t, f, r, p, l = struct.unpack(USER, v)
    return s, sa, ea, q, ps, g, n, t, f, r, p, l
  elseif version == 1 then
    local _, s, sa, ea, q, ps, g, n, t, f, r, p = struct.unpack(USER_V1, v)
    return s, sa, ea, q, ps, g, n, t, f, r, p, ''
  end
  return nil
end

local function user_unknown(key, v)
  return 'TASKVALVE_RECORD ' .. key .. ' has layout version ' .. (string.byte(v) or 'none') .. '; this code reads version ' .. USER_VERSION
end

local function user_load(key)
  local v = redis.call('GET', key)
  if not v then
    return nil
  end
  local s, sa, ea, q, ps, g, n, t, f, r, p, l = user_unpack(v)
  if not s then
    error(user_unknown(key, v), 0)
  end
  if t < 0 then
    t, f = nil, nil
  end
  return { p = p, s = s, sa = sa, ea = ea, q = q, ps = ps, g = g, r = r, n = n, t = t, f = f, l = l }
end

local function user_save(key, u)
  redis.call('SET', key, user_pack(u.s, u.sa, u.ea, u.q, u.ps, u.g, u.n, u.t, u.f, u.r or '', u.p, u.l))
end

-- Records that an active subscription passed its end; 1 the first time, so the event fires once.
local function user_expire(key, u, now_ms)
  if u.s == 0 and u.ea >= 0 and now_ms >= u.ea then
    u.s = 2
    user_save(key, u)
    return 1
  end
  return 0
end
