-- Admits one request under every limit at the same instant, or says when to
-- ask again: the shared counterpart of egress/ratelimit.rs's has_room and
-- consume, run atomically by the server, on the server's clock.
--
-- Limit i has two keys: KEYS[2i-1], its state (a hash):
--   tat        the GCRA's theoretical arrival time (microseconds)
--   bw         the width of the buckets (microseconds)
--   n          admissions in the live buckets
--   o          the oldest bucket that may be live
--   b:<k>      admissions in bucket k, times [k*bw, (k+1)*bw); an admission
--              is remembered until its bucket's end plus the window, never
--              less than exactly
--   pu, pr, pd, pi, pn   the provider's budget (follow.lua), until pu: pr
--              more admissions, pd of them at once, the rest one per pi
--              from pn
-- and KEYS[2i], who waits (a hash): <id> -> "<priority>:<expires>", sidecars
-- with requests queued at that priority; lower priorities elsewhere wait.
--
-- ARGV: identity, priority, priority still waiting at this sidecar after
-- this request (-1: none), registration lifetime (us), then five per limit:
-- requests, window (us), bucket width (us), interval (us), tolerance (us).
-- Returns {1} when admitted, else {0, wait (us) for each limit}.
--
-- Not written to the AOF or replicas: a limit's state lasts one window, so
-- it is not worth an fsync per admission (after a Redis restart the limits
-- start empty, at most one window's worth early).
redis.set_repl(redis.REPL_NONE)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local id, priority = ARGV[1], tonumber(ARGV[2])
local still, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local function int(x) return string.format('%d', x) end
-- Scanning more dead buckets than this one by one costs more than one HKEYS.
local scan_limit = 400

local limits, admit = {}, true
for i = 1, #KEYS / 2 do
  local key, waiting = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 4 + (i - 1) * 5
  local l = {
    key = key, waiting = waiting,
    requests = tonumber(ARGV[a + 1]), window = tonumber(ARGV[a + 2]),
    bucket = tonumber(ARGV[a + 3]), interval = tonumber(ARGV[a + 4]),
    tolerance = tonumber(ARGV[a + 5]),
  }
  local f = redis.call('HMGET', key, 'tat', 'bw', 'n', 'o', 'pu', 'pr', 'pd', 'pi', 'pn')
  l.tat = tonumber(f[1]) or now
  local width, count, oldest = tonumber(f[2]), tonumber(f[3]) or 0, tonumber(f[4])
  -- The bucket ids at or below this one are forgotten.
  local dead = math.floor((now - l.window) / l.bucket) - 1
  if width and width ~= l.bucket then
    -- The limit changed: every admission still counted moves to the
    -- current bucket (remembered a window from now: on the safe side).
    for _, field in ipairs(redis.call('HKEYS', key)) do
      if string.sub(field, 1, 2) == 'b:' then redis.call('HDEL', key, field) end
    end
    if count > 0 then
      oldest = math.floor(now / l.bucket)
      redis.call('HSET', key, 'b:' .. int(oldest), count, 'o', int(oldest))
    else
      oldest = nil
    end
    redis.call('HSET', key, 'bw', int(l.bucket))
  elseif oldest and oldest <= dead then
    if dead - oldest > scan_limit then
      for _, field in ipairs(redis.call('HKEYS', key)) do
        if string.sub(field, 1, 2) == 'b:' and tonumber(string.sub(field, 3)) <= dead then
          count = count - tonumber(redis.call('HGET', key, field))
          redis.call('HDEL', key, field)
        end
      end
    else
      for k = oldest, dead do
        local field = 'b:' .. int(k)
        local c = redis.call('HGET', key, field)
        if c then
          count = count - tonumber(c)
          redis.call('HDEL', key, field)
        end
      end
    end
    if count < 0 then count = 0 end
    oldest = dead + 1
    redis.call('HSET', key, 'n', count, 'o', int(oldest))
  end
  l.count, l.oldest = count, oldest

  local at = now
  if count >= l.requests then
    -- Room comes back when enough of the oldest admissions are forgotten.
    local excess = count - l.requests + 1
    local k, last = oldest or dead + 1, math.floor(now / l.bucket)
    while k <= last and excess > 0 do
      local c = tonumber(redis.call('HGET', key, 'b:' .. int(k)) or '0')
      excess = excess - c
      if excess <= 0 then at = (k + 1) * l.bucket + l.window end
      k = k + 1
    end
  end
  if l.tat > now + l.tolerance then at = math.max(at, l.tat - l.tolerance) end
  -- The provider's budget, while it binds.
  local pu = tonumber(f[5])
  if pu and pu > now then
    l.pu, l.pr, l.pd = pu, tonumber(f[6]), tonumber(f[7])
    l.pi, l.pn = tonumber(f[8]), tonumber(f[9])
    if l.pr <= 0 then
      at = math.max(at, pu)
    elseif l.pd <= 0 and l.pn > now then
      at = math.max(at, l.pn)
    end
  end
  if at <= now then
    -- Room, unless a higher priority waits at another sidecar: it goes first.
    local others = redis.call('HGETALL', waiting)
    for j = 1, #others, 2 do
      local p, expires = string.match(others[j + 1], '^(%d+):(%d+)$')
      if p == nil or tonumber(expires) <= now then
        redis.call('HDEL', waiting, others[j])
      elseif others[j] ~= id and tonumber(p) > priority then
        at = now + math.max(math.floor(l.interval / 4), 1000)
      end
    end
  end
  l.wait = math.max(at - now, 0)
  if at > now then admit = false end
  limits[i] = l
end

local function register(l, p)
  if p >= 0 then
    redis.call('HSET', l.waiting, id, int(p) .. ':' .. int(now + ttl))
    redis.call('PEXPIRE', l.waiting, math.ceil(ttl / 1000))
  else
    redis.call('HDEL', l.waiting, id)
  end
end

if admit then
  for _, l in ipairs(limits) do
    local current = math.floor(now / l.bucket)
    local tat = math.max(l.tat, now) + l.interval
    redis.call('HINCRBY', l.key, 'b:' .. int(current), 1)
    redis.call('HSET', l.key, 'tat', int(tat), 'bw', int(l.bucket), 'n', l.count + 1,
      'o', int(l.oldest or current))
    if l.pr then
      if l.pd > 0 then
        redis.call('HSET', l.key, 'pr', l.pr - 1, 'pd', l.pd - 1)
      else
        redis.call('HSET', l.key, 'pr', l.pr - 1, 'pn', int(math.max(l.pn, now) + l.pi))
      end
    end
    local keep = tat - now + l.window + l.bucket
    if l.pu then keep = math.max(keep, l.pu - now) end
    redis.call('PEXPIRE', l.key, math.ceil(keep / 1000))
    register(l, still)
  end
  return {1}
end
local out = {0}
for _, l in ipairs(limits) do
  register(l, math.max(priority, still))
  out[#out + 1] = l.wait
end
return out
