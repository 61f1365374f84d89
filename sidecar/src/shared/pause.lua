-- Holds every limit in KEYS for ARGV[1] microseconds: the provider answered
-- 429 and said when to come back, so no sidecar may send before then.
-- ARGV[1 + i]: limit i's tolerance (us); admission needs tat <= now +
-- tolerance, so tat is set to the end of the pause plus the tolerance.
-- Like admissions, not written to the AOF or replicas (see admit.lua).
redis.set_repl(redis.REPL_NONE)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local hold = now + wait + tonumber(ARGV[1 + i])
  local tat = tonumber(redis.call('HGET', key, 'tat') or '0')
  if hold > tat then
    redis.call('HSET', key, 'tat', string.format('%d', hold))
  end
  local ms = math.ceil((hold - now) / 1000) + 1000
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
return 1
