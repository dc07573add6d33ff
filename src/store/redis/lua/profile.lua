-- Records a profile's (or a shared bucket's) configuration and returns the one on record before,
-- so that processes sharing one Redis with different configurations are told apart. The latest
-- registration wins: after a rolling deploy, nobody keeps warning.
--
-- KEYS[1] the configurations' hash. ARGV: 1 name, 2 configuration JSON.
-- Reply: the configuration on record before (nil when none).
local before = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return before
