-- What a bucket remembers of the rate units given back to it: the twin of src/rate/refund-log.ts
-- (read its header for why). A refund reads the entries written since its charge to know how far
-- its slot moved; the log keeps the last LOG_ENTRIES and folds older ones into a summary.
--
-- The log is a binary string (struct, little-endian doubles), empty until a first refund: a
-- header { n refunds so far, folded (the number of the last entry folded), sum (ticks the folded
-- entries gave back; -1: unknown, the bucket changed rate), low (the lowest slot end among them,
-- ticks after folded_at; +inf: none), folded_at µs, until ms (when no receipt can need the log
-- any more: a shared bucket's key lives at least that long), count }, then per entry { seq, at
-- µs, lo and hi (bounds of the given-back slot's end, ticks after at), back ticks }. Every tick
-- value is kept relative to a time close to now, so that it stays well below 2^53.
--@include gcra

local LOG_ENTRIES = 32
local LOG_HEAD = '<ddddddd'
local LOG_ENTRY = '<ddddd'

-- The number of refunds a log has recorded (what a receipt holds).
local function log_n(blob)
  if not blob or blob == '' then
    return 0
  end
  return (struct.unpack('<d', blob))
end

local function log_parse(blob)
  if not blob or blob == '' then
    return { n = 0, folded = 0, sum = 0, low = math.huge, folded_at = 0, until_ms = 0, entries = {} }
  end
  local n, folded, sum, low, folded_at, until_ms, count, at = struct.unpack(LOG_HEAD, blob)
  local entries = {}
  for i = 1, count do
    local seq, when, lo, hi, back
    seq, when, lo, hi, back, at = struct.unpack(LOG_ENTRY, blob, at)
    entries[i] = { seq = seq, at = when, lo = lo, hi = hi, back = back }
  end
  return { n = n, folded = folded, sum = sum, low = low, folded_at = folded_at, until_ms = until_ms, entries = entries }
end

local function log_pack(L)
  local parts = { struct.pack(LOG_HEAD, L.n, L.folded, L.sum, L.low, L.folded_at, L.until_ms, #L.entries) }
  for i = 1, #L.entries do
    local e = L.entries[i]
    parts[i + 1] = struct.pack(LOG_ENTRY, e.seq, e.at, e.lo, e.hi, e.back)
  end
  return table.concat(parts)
end

-- The bucket changed rate at `now` (µs): receipts from before give nothing back.
local function log_void(blob, now)
  if not blob or blob == '' then
    return ''
  end
  local L = log_parse(blob)
  L.n = L.n + 1
  L.folded, L.sum, L.low, L.folded_at, L.entries = L.n, -1, -math.huge, now, {}
  return log_pack(L)
end

-- The log without its entries once no receipt can need them (`now_ms` past its until): a bucket
-- carries only its header (the refund count, which receipts hold) from then on. Cheap when there
-- is nothing to drop.
local function log_tidy(blob, now_ms)
  if not blob or #blob <= 56 then
    return blob
  end
  local _, _, _, _, _, until_ms = struct.unpack(LOG_HEAD, blob)
  if until_ms > now_ms then
    return blob
  end
  return string.sub(blob, 1, 48) .. struct.pack('<d', 0)
end

-- The ms until which a shared bucket's key must live for its log (0: no log).
local function log_until(blob)
  if not blob or blob == '' then
    return 0
  end
  local _, _, _, _, _, until_ms = struct.unpack(LOG_HEAD, blob)
  return until_ms
end

-- Gives back what `cost` units still hold of a bucket with `ahead` ticks in use at `now` (µs),
-- for a charge whose receipt lies `mine` ticks ahead of now (> 0) and was taken after refund
-- number `rseq`. Returns the ticks given back (0: none) and the log to write.
local function log_give_back(blob, ahead, mine, now, d, T, tau, cost, rseq)
  local L = log_parse(blob)
  -- Forget what no receipt can need any more (see refund-log.ts).
  local kept = {}
  for i = 1, #L.entries do
    local e = L.entries[i]
    if (now - e.at) * d < tau then
      kept[#kept + 1] = e
    end
  end
  L.entries = kept
  if (now - L.folded_at) * d >= tau then
    L.sum, L.low = 0, math.huge
  end
  -- Its own slot's end, as bounds, in ticks after now.
  local lo, hi = mine, mine
  if rseq < L.folded then
    -- Voided (a rate change): nothing of a charge from before comes back.
    if L.sum < 0 then
      return 0, blob
    end
    if hi > (L.folded_at - now) * d + L.low then
      lo = lo - L.sum
    end
  end
  for i = 1, #kept do
    local e = kept[i]
    if e.seq > rseq then
      local base = (e.at - now) * d
      -- Two slots never share an end: a bound equal to another slot's end tells which came first.
      if base + e.hi <= lo then
        lo, hi = lo - e.back, hi - e.back
      elseif base + e.lo < hi then
        lo = lo - e.back
      end
    end
  end
  -- Only the part of the slot still ahead of now, and only if the bucket holds it.
  if lo <= 0 or ahead < lo then
    return 0, blob
  end
  local back = cost * T
  if lo < back then
    back = lo
  end
  L.n = L.n + 1
  kept[#kept + 1] = { seq = L.n, at = now, lo = lo, hi = hi, back = back }
  if #kept > LOG_ENTRIES then
    local e = table.remove(kept, 1)
    local low = (L.folded_at - e.at) * d + L.low
    if L.low == math.huge or e.lo < low then
      low = e.lo
    end
    local sum = L.sum
    if sum >= 0 then
      sum = sum + e.back
    end
    L.folded, L.sum, L.low, L.folded_at = e.seq, sum, low, e.at
  end
  local until_ms = math.floor(now / 1000) + math.ceil(tau / (d * 1000)) + 1
  if until_ms > L.until_ms then
    L.until_ms = until_ms
  end
  return back, log_pack(L)
end
