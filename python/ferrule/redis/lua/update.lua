-- ARGV: prefix, sweep budget, id, caps ('' unchanged or json), node ('' unchanged, '-'
-- None, '.'..node), health ('' or '.'..health), metadata ('' or json). 0 if not live.
local now = now_us()
local id = ARGV[3]
reclaim(now, tonumber(ARGV[2]))
if not live(id, now) then return 0 end
local k = ekey(id)
local f = redis.call('HMGET', k, 'c', 'n', 'h', 'm', 'v', 'r', 'x', 't')
local caps, node, health, m = f[1], f[2] or nil, f[3], f[4]
for _, r in ipairs(rows(caps, node, health)) do redis.call('SREM', r, id) end
if ARGV[4] ~= '' then caps = ARGV[4] end
if ARGV[5] == '-' then node = nil elseif ARGV[5] ~= '' then node = opt(ARGV[5]) end
if ARGV[6] ~= '' then health = opt(ARGV[6]) end
if ARGV[7] ~= '' then m = ARGV[7] end
local x, ttl = tonumber(f[7]), tonumber(f[8])
-- the lease is unchanged: put() from (x - ttl) writes the same deadline and expiry
redis.call('DEL', k)
put(id, f[5], caps, node, health, m, ttl, x - ttl, tonumber(f[6]))
local left = redis.call('PTTL', k)
if left > 0 then
  local want = idiv(x - now + ttl + 999, 1000)
  redis.call('PEXPIRE', k, fmt(want))
end
return 1
