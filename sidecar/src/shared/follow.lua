-- Sets (or, with ARGV[1] = -1, lifts) the provider's budget on the limit
-- KEYS[1], read by admit.lua: until ARGV[3] microseconds from now, ARGV[1]
-- more admissions, ARGV[2] of them at once, the rest one per ARGV[4]
-- microseconds, from one interval after now. ARGV[5]: how long ago the
-- request the provider answered was admitted; what any sidecar admitted
-- since (counted in the limit's buckets, whole buckets: on the safe side)
-- is not in the provider's count yet and comes off. A later window's report
-- replaces the budget; within a window, only a lower count does. Like admissions, not written to the AOF or
-- replicas (see admit.lua): a budget lasts until the provider's reset.
redis.set_repl(redis.REPL_NONE)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local remaining = tonumber(ARGV[1])
if remaining < 0 then
  redis.call('HDEL', key, 'pu', 'pr', 'pd', 'pi', 'pn')
  return 1
end
local ready, reset, interval = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local age = tonumber(ARGV[5])
local function int(x) return string.format('%d', x) end
local bw = tonumber(redis.call('HGET', key, 'bw') or '0')
if bw > 0 then
  local last = math.floor(now / bw)
  -- One bucket before the admission's, so it is surely in (the pod read
  -- its clock after the admission); buckets older than a window are gone.
  local from = math.max(math.floor((now - age) / bw) - 1, last - 102)
  local since = -1 -- the answered request is in there too
  for k = from, last do
    since = since + tonumber(redis.call('HGET', key, 'b:' .. int(k)) or '0')
  end
  if since > 0 then
    remaining = math.max(remaining - since, 0)
    ready = math.min(ready, remaining)
  end
end
-- Within one window the provider's count only goes down: a report about
-- the same reset (within a second) that leaves more than the budget does
-- is an older one that arrived late, from another sidecar.
local f = redis.call('HMGET', key, 'pu', 'pr')
local pu, pr = tonumber(f[1]), tonumber(f[2])
if pu and pu > now and math.abs(now + reset - pu) <= 1000000 and remaining >= pr then
  return 0
end
redis.call('HSET', key, 'pu', int(now + reset), 'pr', int(remaining), 'pd', int(ready),
  'pi', int(interval), 'pn', int(now + interval))
local ms = math.ceil(reset / 1000) + 1000
if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
return 1
