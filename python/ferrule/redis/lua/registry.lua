-- The registry's shared part, after common.lua. ARGV[1] is the prefix P, KEYS[1] the
-- deadline set DL. An entry is the hash P..'e:'..id with fields v (value json),
-- c (capabilities json), n (node, absent for none), h (health), m (metadata json),
-- r (registered, server microseconds), x (lease deadline), t (lease, microseconds).
local P = ARGV[1]
local DL = KEYS[1]
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function ekey(id) return P .. 'e:' .. id end
-- the index sets an entry with these fields sits in
local function rows(caps, node, health)
  local ks = {}
  for _, c in ipairs(cjson.decode(caps)) do ks[#ks + 1] = P .. 'c:' .. c end
  if node then ks[#ks + 1] = P .. 'n:' .. node end
  ks[#ks + 1] = P .. 'h:' .. health
  return ks
end
-- keep key k for at least ms more milliseconds (never shortens an expiry)
local function extend(k, ms)
  if redis.call('PTTL', k) < ms then redis.call('PEXPIRE', k, fmt(ms)) end
end
local function live(id, now)
  local x = redis.call('HGET', ekey(id), 'x')
  return x and tonumber(x) > now
end
-- remove an entry, its index rows and its deadline
local function drop(id)
  local k = ekey(id)
  local f = redis.call('HMGET', k, 'c', 'n', 'h')
  if f[1] then
    for _, r in ipairs(rows(f[1], f[2] or nil, f[3])) do redis.call('SREM', r, id) end
    redis.call('DEL', k)
  end
  redis.call('ZREM', DL, id)
end
-- remove up to n entries whose lease is over (deadline <= now); how many
local function reclaim(now, n)
  local ids = redis.call('ZRANGEBYSCORE', DL, '-inf', fmt(now), 'LIMIT', 0, n)
  for _, id in ipairs(ids) do drop(id) end
  return #ids
end
-- write an entry and its rows; ttl in microseconds; the keys live a lease of grace
-- past the deadline so that a sweep can still read the rows of an expired entry
local function put(id, v, caps, node, health, m, ttl, now, reg)
  local k = ekey(id)
  local keep = idiv(2 * ttl + 999, 1000)
  local f = {'v', v, 'c', caps, 'h', health, 'm', m, 'r', fmt(reg), 'x', fmt(now + ttl),
             't', fmt(ttl)}
  if node then f[#f + 1] = 'n'; f[#f + 1] = node end
  redis.call('HSET', k, unpack(f))
  redis.call('PEXPIRE', k, fmt(keep))
  redis.call('ZADD', DL, fmt(now + ttl), id)
  extend(DL, keep)
  for _, r in ipairs(rows(caps, node, health)) do
    redis.call('SADD', r, id)
    extend(r, keep)
  end
end
local function opt(s) if s == '' then return nil end return string.sub(s, 2) end
