-- Delete a job whose lease the caller still holds.
-- KEYS[1] jobs hash, KEYS[2] state hash, KEYS[3] leased zset. ARGV[1] id, ARGV[2] token.
local id = ARGV[1]
if redis.call('HGET', KEYS[2], 't:' .. id) ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', KEYS[1], id)
redis.call('HDEL', KEYS[2], 'a:' .. id, 'm:' .. id, 't:' .. id, 'e:' .. id)
return 1
