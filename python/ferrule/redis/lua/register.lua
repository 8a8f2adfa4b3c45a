-- ARGV: prefix, sweep budget, then groups of 7: id, value json, caps json, node ('' or
-- '.'..node), health, metadata json, ttl_us. All or nothing: {0, id} if an id is taken,
-- else {1, n}.
local now = now_us()
reclaim(now, tonumber(ARGV[2]))
local n = (#ARGV - 2) / 7
for i = 0, n - 1 do
  local id = ARGV[3 + i * 7]
  if live(id, now) then return {0, id} end
end
for i = 0, n - 1 do
  local b = 3 + i * 7
  drop(ARGV[b])
  put(ARGV[b], ARGV[b + 1], ARGV[b + 2], opt(ARGV[b + 3]), ARGV[b + 4], ARGV[b + 5],
      tonumber(ARGV[b + 6]), now, now)
end
return {1, n}
