-- Stores one verified webhook event in its webhook's stream, unless its id
-- was accepted before (shared de-duplication) or the webhook's stored bytes
-- would pass their bound. Atomic, so two sidecars receiving the same
-- provider retry store it once.
--
-- KEYS: 1 stream, 2 the id's de-duplication key, 3 stored-bytes counter.
-- ARGV: 1 de-duplication lifetime (ms; 0: replay, no de-duplication),
--       2 bound (bytes), 3 this event's size (bytes), then the entry's
--       fields and values.
-- Returns {'accepted', entry id}, {'duplicate', entry id} or {'full', used}.
local ttl, bound, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if ttl > 0 then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {'duplicate', seen} end
end
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if used + size > bound then return {'full', tostring(used)} end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local entry = redis.call('XADD', KEYS[1], '*', unpack(fields))
if ttl > 0 then redis.call('SET', KEYS[2], entry, 'PX', ttl) end
redis.call('INCRBY', KEYS[3], size)
return {'accepted', entry}
