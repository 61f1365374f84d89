-- Takes or renews a webhook's polling lease: one sidecar polls at a time.
-- KEYS[1] the lease; ARGV[1] this sidecar's identity, ARGV[2] its ttl (ms).
-- Returns 1 when this sidecar holds the lease now, else 0.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
