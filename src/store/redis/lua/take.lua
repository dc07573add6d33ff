-- Rate turns on one placement unit, in order: each takes its `cost` units from its bucket if
-- they conform now together with the units waiting ahead of it in the caller, else writes
-- nothing for it and tells how long until they would. Turns on one bucket see each other's
-- writes, in order. Many turns go in one call under load (the store gathers them).
--
-- KEYS: one bucket per turn (a user's record, its own bucket, or a shared bucket key; a bucket
--   may appear for several turns), then the operation log (see op.lua; none for a peek, which
--   writes nothing and has sequence '0').
-- ARGV: 1-4 see op.lua; 5 'take' or 'peek' (decide without writing); then six per turn: kind
--   ('h' a user's record, 's' a shared key), d, T, tau, cost, units waiting ahead in the caller.
-- Reply: seven numbers per turn: taken (1/0), wait ms, remaining, reset ms, and when taken the
--   bucket's TAT right after as whole µs and leftover ticks and its refunds so far (the receipt
--   give_back.lua takes; -1, 0 and 0 when there is none: not taken, a peek, or a user's record that no longer exists,
--   which has nothing to limit and is taken without a write); then the call's sequence number
--   (so that a reply meant for another call is never read as this one's). Past the deadline: the
--   LATE error (see codes.ts), nothing written.
--@include codes
--@include op
--@include gcra
--@include user

local now, refused = op_begin()
if not now then
  return refused
end
local peek = ARGV[5] == 'peek'
local out, undo = {}, {}
for i = 1, (#ARGV - 5) / 6 do
  local at = 6 + (i - 1) * 6
  local hash = ARGV[at] == 'h'
  local d, T, tau = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local cost, waiting = tonumber(ARGV[at + 4]), tonumber(ARGV[at + 5])
  local sig = ARGV[at + 1] .. ':' .. ARGV[at + 2]
  local key = KEYS[i]
  local ahead, u, gone, blob
  if hash then
    u = user_load(key)
    gone = not u
    if u then
      ahead = gcra_in_use(u.t, u.f, u.r, now, d, T, sig)
    end
  else
    ahead, blob = shared_in_use(key, now, d, T, sig)
  end
  local n = #out
  if gone then
    -- No such user any more: nothing to limit, and nothing to write.
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6], out[n + 7] = 1, 0, 0, 0, -1, 0, 0
  else
    local next = ahead + cost * T
    -- Taken when these units and those waiting ahead in the caller conform together (it takes
    -- nothing they need).
    local held = next + waiting * T
    if held <= tau and peek then
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6], out[n + 7] = 1, 0, gcra_remaining(ahead, T, tau), gcra_ms(ahead, d), -1, 0, 0
    elseif held <= tau then
      local rt, rf = gcra_split(now, next, d)
      local rn
      if hash then
        rn = own_store(u, now, next, d, sig)
        user_save(key, u)
      else
        shared_store(key, now, next, d, sig, blob)
        rn = log_n(blob)
      end
      undo[#undo + 1] = undo_rate(i, not hash, d, T, tau, cost, rt, rf, rn)
      -- Redis turns a Lua number into an integer reply: exact, as both stay below 2^53.
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6], out[n + 7] = 1, 0, gcra_remaining(held, T, tau), gcra_ms(held, d), rt, rf, rn
    else
      local remaining = 0
      if waiting == 0 then
        remaining = gcra_remaining(ahead, T, tau)
      end
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6], out[n + 7] = 0, gcra_ms(ahead + (waiting + cost) * T - tau, d), remaining, gcra_ms(ahead, d), -1, 0, 0
    end
  end
end
if not peek then
  op_end(undo)
end
out[#out + 1] = tonumber(ARGV[1])
return out
