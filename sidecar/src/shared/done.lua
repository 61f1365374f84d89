-- Finishes one event (delivered, dropped, out of order, or dead-lettered
-- with ARGV[4] set): acknowledged, removed from the stream, its bytes given
-- back; a dead letter is stored under the next number in the same step.
-- KEYS: 1 stream, 2 stored-bytes counter, 3 dead letters (hash), 4 their counter.
-- ARGV: 1 group, 2 entry id, 3 size (bytes), 4 the dead letter's JSON or ''.
-- Returns the dead letter's number, or 0.
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
local removed = redis.call('XDEL', KEYS[1], ARGV[2])
if removed == 1 then
  local left = redis.call('DECRBY', KEYS[2], tonumber(ARGV[3]))
  if left < 0 then redis.call('SET', KEYS[2], 0) end
end
if ARGV[4] ~= '' then
  local seq = redis.call('INCR', KEYS[4])
  redis.call('HSET', KEYS[3], seq, ARGV[4])
  return seq
end
return 0
