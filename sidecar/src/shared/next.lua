-- The next event for this sidecar to deliver, from its webhook's stream
-- and consumer group (created here when missing):
--   1. one this sidecar already holds (it restarted mid-delivery);
--   2. with ARGV[4] == '1', one another sidecar has held without a sign of
--      life for ARGV[3] ms (that pod died): taken over;
--   3. a new one.
-- KEYS: 1 stream. ARGV: 1 group, 2 this sidecar, 3 takeover idle (ms), 4 look for idle.
-- Returns {} or {entry id, '1' if taken over else '0', field, value, ...}.
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local function first(reply)
  if not reply or not reply[1] then return nil end
  for _, entry in ipairs(reply[1][2]) do
    if entry[2] then return entry end
    -- Deleted while held: nothing left to deliver.
    redis.call('XACK', KEYS[1], ARGV[1], entry[1])
  end
  return nil
end
local entry = first(redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 10,
  'STREAMS', KEYS[1], '0'))
if entry then return {entry[1], '0', unpack(entry[2])} end
if ARGV[4] == '1' then
  local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0',
    'COUNT', 1)
  local taken = claimed[2] and claimed[2][1]
  if taken and taken[2] then return {taken[1], '1', unpack(taken[2])} end
end
entry = first(redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1,
  'STREAMS', KEYS[1], '>'))
if entry then return {entry[1], '0', unpack(entry[2])} end
return {}
