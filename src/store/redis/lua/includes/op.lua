-- At most once (docs/redis.md, "Faults"). Every call that writes names its process's operation
-- log on its placement unit as its LAST key, and brings four arguments first:
--   ARGV[1] its sequence number ('0': a call that needs no log entry: it writes nothing, or
--     writes the same whatever the number of times it runs);
--   ARGV[2] the floor: every number of this process below it on this log is settled (its answer
--     read, or its doubt resolved by settle.lua), so their entries can go;
--   ARGV[3] its deadline, µs of server time (0: none); ARGV[4] the clock (see time.lua).
-- The log is a sorted set: '<seq>:<undo>' scored seq for each call applied (or voided by
-- settle.lua) and not yet settled, where undo says how to take the call back (see settle.lua);
-- and '~' scored with the floor. A log untouched for a day goes (its process is gone).
--@include time
local OP_LOG_TTL_MS = 86400000
local OP_ARGS = 4
local op_log, op_seq = nil, nil

-- The call's entry in its log, if any (applied, undone or voided).
local function op_entry(log, seq)
  local found = redis.call('ZRANGEBYSCORE', log, seq, seq, 'LIMIT', 0, 2)
  for i = 1, #found do
    if found[i] ~= '~' then
      return found[i]
    end
  end
  return nil
end

-- Call first. Returns the server time (µs), or nil and the error reply to answer with: LATE for
-- a call past its deadline or already settled, DUP for one that ran before (its reply was lost).
-- Either way nothing is written.
local function op_begin()
  local seq = ARGV[1]
  if seq ~= '0' then
    local log = KEYS[#KEYS]
    local floor = tonumber(ARGV[2])
    local known = tonumber(redis.call('ZSCORE', log, '~') or 0)
    if floor > known then
      redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. ARGV[2])
      redis.call('ZADD', log, ARGV[2], '~')
      known = floor
    end
    if tonumber(seq) < known then
      return nil, redis.error_reply(LATE .. ' (call ' .. seq .. ')')
    end
    if op_entry(log, seq) then
      return nil, redis.error_reply(DUP .. ' (call ' .. seq .. ')')
    end
    op_log, op_seq = log, seq
  end
  local now = server_now(ARGV[4], tonumber(ARGV[3]))
  if not now then
    return nil, redis.error_reply(LATE .. ' (call ' .. seq .. ')')
  end
  return now
end

-- The call's sequence number, which every reply of a call that writes ends with: a client that
-- lost a reply on a connection that stayed open pairs each later reply with the wrong call, and
-- this is how it knows (ops.ts). Error replies (LATE, DUP) end with '(call <number>)'.
local function op_number()
  return tonumber(ARGV[1])
end

-- Call last, once the call has applied: records it with what takes it back, `parts` (a list of
-- undo records, concatenated here into the entry in one step; none or empty: nothing to).
local function op_end(parts)
  if op_seq then
    local entry = op_seq .. ':'
    if parts and #parts > 0 then
      table.insert(parts, 1, entry)
      entry = table.concat(parts)
    end
    redis.call('ZADD', op_log, op_seq, entry)
    redis.call('PEXPIRE', op_log, OP_LOG_TTL_MS)
  end
end

-- Undo records (see settle.lua): give back quota, rate units, or a dead letter.
local function undo_quota(key_index, cost, g, period_ms)
  return struct.pack('<c1Hddd', 'Q', key_index, cost, g, period_ms)
end
local function undo_rate(key_index, shared, d, T, tau, cost, t, f, n)
  local kind = 0
  if shared then
    kind = 1
  end
  return struct.pack('<c1HBddddddd', 'R', key_index, kind, d, T, tau, cost, t, f, n)
end
-- An admission call's undo (see admit.lua), as parts for op_end: a header, its P profiles'
-- parameters (the text ARGV[7], ARGV[9], ... carry, each after its length), its decisions'
-- records ('<HBdd' each) and its replies, one after the other; settle.lua takes back the quota of
-- each decision its reply says was charged (allowed, queued, reserved) and the rate units of
-- each allowed one.
local function undo_admit(P, count, records, replies)
  local parts = { struct.pack('<c1HI4', 'A', P, count) }
  for i = 1, P do
    local fields = ARGV[5 + 2 * i]
    parts[i + 1] = struct.pack('<I4c0', #fields, fields)
  end
  parts[P + 2] = records
  parts[P + 3] = replies
  return parts
end
local function undo_letter(id)
  return struct.pack('<c1I4c0', 'D', #id, id)
end
