-- Resolves a call whose outcome its process does not know (no answer in time, a connection
-- lost, or a DUP refusal): whether it was applied, and for a call whose caller was told it
-- failed, takes it back. Once this has answered, the call can never apply any more: an entry
-- in the log says what became of it, and a copy of the call arriving later finds it (DUP).
--
-- KEYS: the call's own keys, then its operation log (see op.lua).
-- ARGV: 1-4 see op.lua (sequence '0': this call needs no entry of its own); 5 the call's
--   sequence number; 6 'undo' to take it back if it applied, 'keep' to leave it.
-- Reply: 'void' (it never applied, and now never will), 'applied' (kept), 'undone' (it applied
--   and was taken back, now or by an earlier settle), followed by ':' and the settled call's
--   sequence number (a client whose connection lost a reply pairs later replies with the wrong
--   calls, and this is how it knows).
--@include codes
--@include op
--@include refunds
--@include letters
--@include profile

local now, refused = op_begin()
if not now then
  return refused
end
local log, seq = KEYS[#KEYS], ARGV[5]
local entry = op_entry(log, seq)
if not entry then
  redis.call('ZADD', log, seq, seq .. ':V')
  redis.call('PEXPIRE', log, OP_LOG_TTL_MS)
  return 'void:' .. seq
end
local undo = string.sub(entry, #seq + 2)
if undo == 'V' then
  return 'void:' .. seq
end
if undo == 'U' then
  return 'undone:' .. seq
end
if ARGV[6] ~= 'undo' then
  return 'applied:' .. seq
end
local at = 1
while at <= #undo do
  local kind = string.sub(undo, at, at)
  if kind == 'Q' then
    local _, key, cost, g, period
    _, key, cost, g, period, at = struct.unpack('<c1Hddd', undo, at)
    refund_quota(KEYS[key], cost, g, period, now)
  elseif kind == 'R' then
    local _, key, shared, d, T, tau, cost, t, f, n
    _, key, shared, d, T, tau, cost, t, f, n, at = struct.unpack('<c1HBddddddd', undo, at)
    refund_units(shared == 1, KEYS[key], d, T, tau, string.format('%.0f:%.0f', d, T), cost, t, f, n, now)
  elseif kind == 'A' then
    -- An admission call (see undo_admit in op.lua): each decision's reply says what it charged.
    local _, P, count
    _, P, count, at = struct.unpack('<c1HI4', undo, at)
    local profiles = {}
    for i = 1, P do
      local fields
      fields, at = struct.unpack('<I4c0', undo, at)
      profiles[i] = profile_parse('', fields, i)
    end
    local codes, costs = {}, {}
    for i = 1, count do
      _, codes[i], costs[i], _, at = struct.unpack('<HBdd', undo, at)
    end
    -- Keys as admit.lua reads them: the user's, then its bucket's when it has a key of its own.
    local k = 1
    for i = 1, count do
      local user_index, bucket_index = k, k
      if codes[i] >= 4 then
        bucket_index = k + 1
        k = k + 2
      else
        k = k + 1
      end
      local verdict = struct.unpack('<d', undo, at)
      if verdict <= RATE_LIMITED or verdict == RESERVED then
        local g, pi, t, f, n
        _, _, g, _, _, _, pi, _, _, t, f, n, at = struct.unpack('<dddddddddddd', undo, at)
        if verdict ~= RATE_LIMITED then
          local p = profiles[pi]
          refund_quota(KEYS[user_index], costs[i], g, p.period, now)
          if verdict == ALLOWED then
            refund_units(p.shared, KEYS[bucket_index], p.d, p.T, p.tau, p.sig, costs[i], t, f, n, now)
          end
        end
      else
        -- Nothing charged: 11 doubles and the profile's name.
        local length = struct.unpack('<I4', undo, at + 88)
        at = at + 92 + length
      end
    end
  elseif kind == 'D' then
    local _, id
    _, id, at = struct.unpack('<c1I4c0', undo, at)
    letter_drop(KEYS[1], KEYS[2], KEYS[3], id)
  else
    return redis.error_reply('settle: unknown undo record ' .. kind)
  end
end
redis.call('ZREM', log, entry)
redis.call('ZADD', log, seq, seq .. ':U')
return 'undone:' .. seq
