-- This process is alive: records it, forgets processes silent for `ttl` ms, and tells how many
-- remain (the 'local' outage policy gives each process its share of every limit).
--
-- KEYS[1] the processes' sorted set. ARGV: 1 process id, 2 ttl ms, 3 clock ('+0', see time.lua).
-- Reply: the number of live processes.
--@include time

local now_ms = math.floor(server_now(ARGV[3], 0) / 1000)
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
