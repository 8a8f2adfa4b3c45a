-- Read-only. ARGV: prefix, what ('a' rows, 'i' ids, 'n' count), limit ('' none),
-- capability, node, health (each '' or '.'..value). A row: id, value, caps, node|nil,
-- health, metadata, registered_us, expires_us.
local now = now_us()
local what = ARGV[2]
local limit = tonumber(ARGV[3])
local cap, node, health = opt(ARGV[4]), opt(ARGV[5]), opt(ARGV[6])
local sets = {}
if cap then sets[#sets + 1] = P .. 'c:' .. cap end
if node then sets[#sets + 1] = P .. 'n:' .. node end
if health then sets[#sets + 1] = P .. 'h:' .. health end
local ids
if #sets == 0 then
  ids = redis.call('ZRANGEBYSCORE', DL, '(' .. fmt(now), '+inf')
else
  ids = redis.call('SINTER', unpack(sets))
end
local out, n = {}, 0
for _, id in ipairs(ids) do
  if limit and n >= limit then break end
  local f = redis.call('HMGET', ekey(id), 'x', 'c', 'n', 'h', 'v', 'm', 'r')
  local ok = f[1] and tonumber(f[1]) > now
  if ok and node and f[3] ~= node then ok = false end
  if ok and health and f[4] ~= health then ok = false end
  if ok and cap then
    ok = false
    for _, c in ipairs(cjson.decode(f[2])) do if c == cap then ok = true; break end end
  end
  if ok then
    n = n + 1
    if what == 'a' then
      out[n] = {id, f[5], f[2], f[3], f[4], f[6], f[7], f[1]}
    elseif what == 'i' then
      out[n] = id
    end
  end
end
if what == 'n' then return n end
return out
