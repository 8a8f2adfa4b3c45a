-- GCRA decision over one or more windows, all of which must allow it. KEYS[1] the
-- bucket; ARGV cost, mode, then each window's interval_ns and tau_ns. mode: 't' try
-- (returns 1 or 0), 'd' decide (returns {allowed, remaining, retry_after_ns,
-- reset_after_ns}: the fewest tokens any window has, the longest wait any window needs,
-- the longest until every window is full), 'p' peek (returns remaining). The value is
-- each window's "<unix seconds>:<nanoseconds>" (both below 2^53, so Lua's number-to-text
-- conversion is exact), joined by ','; a window missing from it is full. Every quotient
-- is corrected after the division: a rounded double quotient can only come out above
-- the true one, never below. A grant writes every window (all or none) with an expiry
-- of the longest reset_after (rounded up to a millisecond); denials and peeks write
-- nothing.
local t = redis.call('TIME')
local s = tonumber(t[1])
local ns = tonumber(t[2]) * 1000
local cost = tonumber(ARGV[1])
local mode = ARGV[2]
local n = (#ARGV - 2) / 2
local T, tau, base = {}, {}, {}
for i = 1, n do
  T[i] = tonumber(ARGV[1 + 2 * i])
  tau[i] = tonumber(ARGV[2 + 2 * i])
  base[i] = 0
end
local v = redis.call('GET', KEYS[1])
if v then
  local i = 1
  for part in string.gmatch(v, '[^,]+') do
    if i > n then break end
    local c = string.find(part, ':', 1, true)
    local b = (tonumber(string.sub(part, 1, c - 1)) - s) * 1000000000
      + (tonumber(string.sub(part, c + 1)) - ns)
    if b > 0 then base[i] = b end
    i = i + 1
  end
end
-- Whole tokens in `left` ns of window i (0 when none).
local function tokens(left, i)
  if left <= 0 then return 0 end
  local q = math.floor(left / T[i])
  if q * T[i] > left then q = q - 1 end
  return q
end
local remaining = nil
if mode == 'p' then
  for i = 1, n do
    local q = tokens(tau[i] - base[i], i)
    if remaining == nil or q < remaining then remaining = q end
  end
  return remaining
end
local allowed = true
for i = 1, n do
  if cost * T[i] > tau[i] - base[i] then allowed = false end
end
local reset = 0
if allowed then
  local parts = {}
  for i = 1, n do
    local need = cost * T[i]
    local debt = base[i] + need
    local tot = ns + debt
    local carry = math.floor(tot / 1000000000)
    if carry * 1000000000 > tot then carry = carry - 1 end
    parts[i] = (s + carry) .. ':' .. (tot - carry * 1000000000)
    if debt > reset then reset = debt end
    local q = tokens(tau[i] - debt, i)
    if remaining == nil or q < remaining then remaining = q end
  end
  local ms = math.ceil(reset / 1000000)
  if ms * 1000000 < reset then ms = ms + 1 end
  redis.call('SET', KEYS[1], table.concat(parts, ','), 'PX', ms)
  if mode == 't' then return 1 end
  return {1, remaining, 0, reset}
end
if mode == 't' then return 0 end
local retry = 0
for i = 1, n do
  local room = tau[i] - base[i]
  local wait = cost * T[i] - room
  if wait > retry then retry = wait end
  if base[i] > reset then reset = base[i] end
  local q = tokens(room, i)
  if remaining == nil or q < remaining then remaining = q end
end
return {0, remaining, retry, reset}
