-- ARGV: prefix, sweep budget, id. 1 if a live entry was removed.
local now = now_us()
local was = live(ARGV[3], now)
drop(ARGV[3])
reclaim(now, tonumber(ARGV[2]))
if was then return 1 end
return 0
