-- GCRA decision. KEYS[1] the bucket; ARGV interval_ns, tau_ns, cost, mode: 't' try
-- (returns 1 or 0), 'd' decide (returns {allowed, remaining, retry_after_ns,
-- reset_after_ns}), 'p' peek (returns remaining). The value is
-- "<unix seconds>:<nanoseconds>" (both below 2^53, so Lua's number-to-text conversion is
-- exact). Every quotient is corrected after the division: a rounded double quotient can
-- only come out above the true one, never below. A grant writes the new value with an
-- expiry of its reset_after (rounded up to a millisecond); denials and peeks write
-- nothing.
local t = redis.call('TIME')
local s = tonumber(t[1])
local ns = tonumber(t[2]) * 1000
local T = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local mode = ARGV[4]
local base = 0
local v = redis.call('GET', KEYS[1])
if v then
  local i = string.find(v, ':', 1, true)
  base = (tonumber(string.sub(v, 1, i - 1)) - s) * 1000000000
    + (tonumber(string.sub(v, i + 1)) - ns)
  if base < 0 then base = 0 end
end
local room = tau - base
if mode == 'p' then
  if room <= 0 then return 0 end
  local q = math.floor(room / T)
  if q * T > room then q = q - 1 end
  return q
end
local need = tonumber(ARGV[3]) * T
if need <= room then
  local debt = base + need
  local tot = ns + debt
  local carry = math.floor(tot / 1000000000)
  if carry * 1000000000 > tot then carry = carry - 1 end
  local ms = math.ceil(debt / 1000000)
  if ms * 1000000 < debt then ms = ms + 1 end
  redis.call('SET', KEYS[1], (s + carry) .. ':' .. (tot - carry * 1000000000), 'PX', ms)
  if mode == 't' then return 1 end
  local left = room - need
  local q = math.floor(left / T)
  if q * T > left then q = q - 1 end
  return {1, q, 0, debt}
end
if mode == 't' then return 0 end
local left = room
if left < 0 then left = 0 end
local q = math.floor(left / T)
if q * T > left then q = q - 1 end
return {0, q, need - room, base}
