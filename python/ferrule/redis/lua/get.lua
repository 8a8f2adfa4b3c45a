-- Read-only. ARGV: prefix, id. The row (as find.lua's) if live, else false.
local now = now_us()
local id = ARGV[2]
local f = redis.call('HMGET', ekey(id), 'x', 'c', 'n', 'h', 'v', 'm', 'r')
if f[1] and tonumber(f[1]) > now then
  return {id, f[5], f[2], f[3], f[4], f[6], f[7], f[1]}
end
return false
