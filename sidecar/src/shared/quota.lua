-- Counts one request's cost against a quota's window, for every sidecar of
-- the integration: the shared counterpart of egress/quota/tally.rs.
--
-- KEYS[1]: the window's usage (a string: units used), named by the
-- window's start, so a new window starts from nothing.
-- ARGV: pending (units this sidecar counted while it could not reach the
-- shared state, or minus a refund: always applied, never below 0), cost
-- (added only if it fits), limit (-1: no check, the quota only warns),
-- expiry (Unix ms: the window's end and a margin for skewed clocks).
-- Returns {admitted (1 or 0), units used}.
--
-- Written to the AOF like any write: usage must outlive a restart.
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local pending, cost, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
used = math.max(used + pending, 0)
local admitted = 1
if limit >= 0 and used + cost > limit then
  admitted = 0
else
  used = used + cost
end
redis.call('SET', KEYS[1], string.format('%.0f', used))
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return {admitted, used}
