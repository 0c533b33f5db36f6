-- Move a dead job back to ready with a fresh attempt count.
-- KEYS[1] state hash, KEYS[2] dead list, KEYS[3] ready list. ARGV[1] id.
local id = ARGV[1]
if redis.call('LREM', KEYS[2], 1, id) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'a:' .. id, 0)
redis.call('HDEL', KEYS[1], 'e:' .. id)
redis.call('LPUSH', KEYS[3], id)
return 1
