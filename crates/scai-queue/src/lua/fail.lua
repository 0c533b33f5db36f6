-- Record a failure: schedule a retry or dead-letter.
-- KEYS[1] state hash, KEYS[2] leased zset, KEYS[3] delayed zset, KEYS[4] dead list.
-- ARGV[1] id, ARGV[2] token, ARGV[3] error text, ARGV[4] retry delay ms or -1 (no retry).
local id = ARGV[1]
if redis.call('HGET', KEYS[1], 't:' .. id) ~= ARGV[2] then
  return 'lost'
end
redis.call('ZREM', KEYS[2], id)
redis.call('HDEL', KEYS[1], 't:' .. id)
redis.call('HSET', KEYS[1], 'e:' .. id, ARGV[3])
local attempts = tonumber(redis.call('HGET', KEYS[1], 'a:' .. id) or '0')
local max = tonumber(redis.call('HGET', KEYS[1], 'm:' .. id) or '1')
local delay = tonumber(ARGV[4])
if delay < 0 or attempts >= max then
  redis.call('LPUSH', KEYS[4], id)
  return 'dead'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], now + delay, id)
return 'retry'
