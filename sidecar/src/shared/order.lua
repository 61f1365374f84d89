-- The ordering guard's memory of one object, shared: refuses an event older
-- than, or a state before, what was delivered for the object, whichever
-- sidecar delivered it; otherwise records the event as the latest.
-- KEYS: 1 the object's key. ARGV: 1 event time ('' if none), 2 state rank
-- ('' if none), 3 how long to remember the object (ms).
-- Returns {'deliver'} or {'time' | 'state', the latest recorded}.
local time, rank = tonumber(ARGV[1]), tonumber(ARGV[2])
local last = redis.call('HMGET', KEYS[1], 't', 'r')
local last_time, last_rank = tonumber(last[1]), tonumber(last[2])
if time and last_time and time < last_time then return {'time', last[1]} end
if rank and last_rank and rank < last_rank then return {'state', last[2]} end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 't', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'r', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'deliver'}
