-- Lease the next job from the first non-empty queue, after housekeeping every queue.
-- KEYS[1] jobs hash (id -> job JSON), KEYS[2] state hash (a:<id> attempts, m:<id> max
-- attempts, t:<id> lease token, e:<id> last error), then per queue four keys:
-- ready list, delayed zset (score = due ms), leased zset (score = lease end ms), dead list.
-- ARGV[1] lease ms, ARGV[2] lease token.
-- Returns false, or {queue index (0-based), id, job JSON, attempt, lease end ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local jobs, state = KEYS[1], KEYS[2]
local nq = (#KEYS - 2) / 4
for q = 0, nq - 1 do
  local ready, delayed, leased, dead = KEYS[3 + q * 4], KEYS[4 + q * 4], KEYS[5 + q * 4], KEYS[6 + q * 4]
  -- Retries whose backoff has passed become ready (bounded work per call).
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    redis.call('ZREM', delayed, id)
    redis.call('LPUSH', ready, id)
  end
  -- Leases that ran out: the consumer died or stalled. Redeliver first, or dead-letter.
  local expired = redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(expired) do
    redis.call('ZREM', leased, id)
    redis.call('HDEL', state, 't:' .. id)
    local attempts = tonumber(redis.call('HGET', state, 'a:' .. id) or '0')
    local max = tonumber(redis.call('HGET', state, 'm:' .. id) or '1')
    if attempts >= max then
      redis.call('HSET', state, 'e:' .. id, 'lease expired')
      redis.call('LPUSH', dead, id)
    else
      redis.call('RPUSH', ready, id)
    end
  end
end
for q = 0, nq - 1 do
  local ready, leased = KEYS[3 + q * 4], KEYS[5 + q * 4]
  local id = redis.call('RPOP', ready)
  if id then
    local body = redis.call('HGET', jobs, id)
    if body then
      local until_ms = now + lease
      redis.call('ZADD', leased, until_ms, id)
      local attempt = redis.call('HINCRBY', state, 'a:' .. id, 1)
      redis.call('HSET', state, 't:' .. id, ARGV[2])
      return {q, id, body, attempt, until_ms}
    end
  end
end
return false
