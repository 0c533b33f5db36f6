-- Store a job and make it ready (or delayed).
-- KEYS[1] jobs hash, KEYS[2] state hash, KEYS[3] ready list, KEYS[4] delayed zset.
-- ARGV[1] id, ARGV[2] job JSON, ARGV[3] max attempts, ARGV[4] delay ms.
local id = ARGV[1]
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('HSET', KEYS[2], 'm:' .. id, ARGV[3], 'a:' .. id, 0)
local delay = tonumber(ARGV[4])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[4], now + delay, id)
else
  redis.call('LPUSH', KEYS[3], id)
end
return 1
