-- ARGV: prefix, sweep budget, id, ttl_us ('' = the entry's own). 1 if renewed.
local now = now_us()
local id = ARGV[3]
reclaim(now, tonumber(ARGV[2]))
if not live(id, now) then return 0 end
local k = ekey(id)
local f = redis.call('HMGET', k, 'c', 'n', 'h', 't')
local ttl = tonumber(f[4])
if ARGV[4] ~= '' then ttl = tonumber(ARGV[4]) end
local keep = idiv(2 * ttl + 999, 1000)
redis.call('HSET', k, 'x', fmt(now + ttl), 't', fmt(ttl))
redis.call('PEXPIRE', k, fmt(keep))
redis.call('ZADD', DL, fmt(now + ttl), id)
extend(DL, keep)
for _, r in ipairs(rows(f[1], f[2] or nil, f[3])) do extend(r, keep) end
return 1
