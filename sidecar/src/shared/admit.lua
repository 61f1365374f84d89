-- Admits one request under every limit in KEYS at the same instant, or says
-- when to ask again: the shared counterpart of egress/ratelimit.rs's
-- has_room/consume, run atomically by the server, on the server's clock.
--
-- Each limit is one hash:
--   tat        the GCRA's theoretical arrival time (microseconds)
--   bw         the width of the buckets below (microseconds)
--   b:<n>      admissions in bucket n, times [n*bw, (n+1)*bw); an admission
--              is remembered until its bucket's end plus the window, never
--              less than exactly
--   w:<id>     "<priority>:<expires>": sidecar <id> has requests waiting at
--              that priority; lower priorities elsewhere wait behind them
--
-- ARGV: identity, priority, priority still waiting at this sidecar after
-- this request (-1: none), registration lifetime (us), then five per limit:
-- requests, window (us), bucket width (us), interval (us), tolerance (us).
-- Returns {1} when admitted, else {0, wait (us) for each limit}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local id, priority = ARGV[1], tonumber(ARGV[2])
local still, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local function int(x) return string.format('%d', x) end

local waits, tats, admit = {}, {}, true
for i, key in ipairs(KEYS) do
  local a = 4 + (i - 1) * 5
  local requests, window = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local bucket, interval = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local tolerance = tonumber(ARGV[a + 5])
  local fields = redis.call('HGETALL', key)
  local tat, width = now, bucket
  for j = 1, #fields, 2 do
    if fields[j] == 'tat' then tat = tonumber(fields[j + 1])
    elseif fields[j] == 'bw' then width = tonumber(fields[j + 1]) end
  end
  local count, live, dead, moved, ahead = 0, {}, {}, {}, false
  for j = 1, #fields, 2 do
    local f, v = fields[j], fields[j + 1]
    local kind = string.sub(f, 1, 2)
    if kind == 'b:' then
      local n, c = tonumber(string.sub(f, 3)), tonumber(v)
      if width ~= bucket then
        -- The limit changed: recount in the new width, each bucket ending
        -- no earlier than it did.
        dead[#dead + 1] = f
        n = math.ceil((n + 1) * width / bucket) - 1
        moved[n] = (moved[n] or 0) + c
      end
      local ends = (n + 1) * bucket + window
      if ends <= now then
        if width == bucket then dead[#dead + 1] = f end
      else
        count = count + c
        live[#live + 1] = {ends, c}
      end
    elseif kind == 'w:' then
      local p, expires = string.match(v, '^(%d+):(%d+)$')
      if p == nil or tonumber(expires) <= now then
        dead[#dead + 1] = f
      elseif string.sub(f, 3) ~= id and tonumber(p) > priority then
        ahead = true
      end
    end
  end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  for n, c in pairs(moved) do
    if (n + 1) * bucket + window > now then
      redis.call('HINCRBY', key, 'b:' .. int(n), c)
    end
  end
  if width ~= bucket then redis.call('HSET', key, 'bw', int(bucket)) end

  local at = now
  if count >= requests then
    -- Room comes back when enough of the oldest admissions are forgotten.
    table.sort(live, function(x, y) return x[1] < y[1] end)
    local excess = count - requests + 1
    for _, b in ipairs(live) do
      excess = excess - b[2]
      if excess <= 0 then at = b[1]; break end
    end
  end
  if tat > now + tolerance then at = math.max(at, tat - tolerance) end
  if at <= now and ahead then
    -- Room, but a higher priority waits at another sidecar: it goes first.
    at = now + math.max(math.floor(interval / 4), 1000)
  end
  waits[i] = math.max(at - now, 0)
  if at > now then admit = false end
  tats[i] = tat
end

local function register(key, p)
  if p >= 0 then
    redis.call('HSET', key, 'w:' .. id, int(p) .. ':' .. int(now + ttl))
  else
    redis.call('HDEL', key, 'w:' .. id)
  end
end

local function keep(key, us)
  local ms = math.ceil(us / 1000)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

if admit then
  for i, key in ipairs(KEYS) do
    local a = 4 + (i - 1) * 5
    local window, bucket = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local interval = tonumber(ARGV[a + 4])
    local tat = math.max(tats[i], now) + interval
    redis.call('HINCRBY', key, 'b:' .. int(math.floor(now / bucket)), 1)
    redis.call('HSET', key, 'tat', int(tat), 'bw', int(bucket))
    register(key, still)
    keep(key, tat - now + window + bucket + ttl)
  end
  return {1}
end
local out = {0}
for i, key in ipairs(KEYS) do
  register(key, math.max(priority, still))
  keep(key, ttl)
  out[#out + 1] = waits[i]
end
return out
