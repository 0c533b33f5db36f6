-- Push a held lease's end to now + ARGV[3] ms.
-- KEYS[1] state hash, KEYS[2] leased zset. ARGV[1] id, ARGV[2] token, ARGV[3] lease ms.
local id = ARGV[1]
if redis.call('HGET', KEYS[1], 't:' .. id) ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], 'XX', until_ms, id)
return until_ms
