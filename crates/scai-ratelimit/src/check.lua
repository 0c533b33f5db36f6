-- Sliding-window-counter check over several dimensions, atomic (one script = one Redis step).
-- KEYS[i]  base key of check i ("<prefix>:<dimension>:<key>"); the fixed-window counters are
--          "<base>:<window index>" (derived here because the window depends on the clock).
-- ARGV[1]  cost (units), ARGV[2] window length (ms), ARGV[3] now (ms) or "" for Redis TIME,
-- ARGV[3+i] limit of check i.
-- Returns {counted (0|1), now_ms, prev_1, curr_1, prev_2, curr_2, ...} with the counters as
-- they were before this request; the caller computes remaining/reset/retry-after from them.
local cost = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[3])
end
local w = math.floor(now / window)
local elapsed = now - w * window
local out = {0, now}
local ok = 1
-- One MGET for every counter: current and previous window of each key.
local names = {}
for i, base in ipairs(KEYS) do
  names[2 * i - 1] = base .. ':' .. string.format('%d', w)
  names[2 * i] = base .. ':' .. string.format('%d', w - 1)
end
local vals = redis.call('MGET', unpack(names))
for i = 1, #KEYS do
  local curr = tonumber(vals[2 * i - 1] or '0')
  local prev = tonumber(vals[2 * i] or '0')
  local used = curr + math.floor(prev * (window - elapsed) / window)
  if used + cost > tonumber(ARGV[3 + i]) then
    ok = 0
  end
  out[#out + 1] = prev
  out[#out + 1] = curr
end
if ok == 1 then
  for i = 1, #KEYS do
    local k = names[2 * i - 1]
    redis.call('INCRBY', k, cost)
    -- Kept while it can still matter: this window and the next one.
    redis.call('PEXPIRE', k, window * 2 + 1000)
  end
end
out[1] = ok
return out
