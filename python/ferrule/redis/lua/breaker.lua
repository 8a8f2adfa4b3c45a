-- One circuit breaker's state in one hash, KEYS[1]; every admission that needs the
-- server, every recorded outcome, every read and every change is one run of this script.
-- ARGV: op, rule, limit, rate, window, reset_us, max_probes, success_threshold,
-- probe_us, idle_us, generation, token, outcome.
--   op: 'a' admit, 'r' record an outcome, 'q' read, 'x' reset, 'o' force open,
--       'k' force closed.
--   rule: 'n' consecutive failures (limit = failure_threshold), 't' failure rate over a
--       time window of `window` us in 20 buckets, 'w' failure rate over the last
--       `window` calls (limit = min_calls for both).
-- Fields: s state ('c' closed, 'o' open, 'h' half-open, 'fo', 'fc' forced; no hash:
-- closed, generation 0), g generation (+1 on every change of state and on reset), t the
-- end of the open period (server us), f the run of failures, b0..b19 time buckets
-- "<step>:<calls>:<failures>", r0.. the call ring ('1' failed, '0' not) with wi (next
-- slot), wn (slots filled) and wf (failures in it), pn probes in flight, ps probe
-- successes, p:<token> each probe's lease deadline (server us).
-- Times are whole microseconds of the server's TIME, below 2^53: exact in Lua's doubles,
-- formatted with %.0f (never Lua's %.14g).
-- Returns {state, generation, retry_us (-1: forced open), the changes this run made
-- ("<from>:<to>" joined by ','), admitted (0 no, 1 yes, 2 as a probe), and for 'q' on a
-- closed breaker the run of failures, the window's calls and its failures}.
local key = KEYS[1]
local op = ARGV[1]
local rule = ARGV[2]
local limit = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
local win = tonumber(ARGV[5])
local reset_us = tonumber(ARGV[6])
local max_probes = tonumber(ARGV[7])
local succ_need = tonumber(ARGV[8])
local probe_us = tonumber(ARGV[9])
local idle_us = tonumber(ARGV[10])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local function fmt(x) return string.format('%.0f', x) end

local s = redis.call('HGET', key, 's') or 'c'
local g = tonumber(redis.call('HGET', key, 'g') or '0')
local moves = {}
local retry = 0
local admitted = 0
local wrote = false

-- A new period: every field but s and g goes (the window holds one closed period only;
-- probes in flight from before no longer count).
local function become(new)
  local fields = redis.call('HKEYS', key)
  local gone = {}
  for _, f in ipairs(fields) do
    if f ~= 's' and f ~= 'g' then gone[#gone + 1] = f end
  end
  for i = 1, #gone, 1000 do
    redis.call('HDEL', key, unpack(gone, i, math.min(i + 999, #gone)))
  end
  if new ~= s then moves[#moves + 1] = s .. ':' .. new end
  s = new
  g = g + 1
  redis.call('HSET', key, 's', s, 'g', fmt(g))
  wrote = true
end

local function open()
  become('o')
  redis.call('HSET', key, 't', fmt(now + reset_us))
end

-- Opened at t0 with timeout d: open while now < t0 + d, then half-open.
local function tick()
  if s == 'o' then
    local till = tonumber(redis.call('HGET', key, 't') or '0')
    if now >= till then become('h') end
  end
end

-- Probes in flight; when every slot is taken, the leases that ran out are freed first.
local function probes()
  local pn = tonumber(redis.call('HGET', key, 'pn') or '0')
  if pn < max_probes then return pn end
  local kv = redis.call('HGETALL', key)
  for i = 1, #kv, 2 do
    if string.sub(kv[i], 1, 2) == 'p:' and tonumber(kv[i + 1]) <= now then
      redis.call('HDEL', key, kv[i])
      pn = pn - 1
      wrote = true
    end
  end
  if wrote then redis.call('HSET', key, 'pn', fmt(pn)) end
  return pn
end

-- The time window's calls and failures, the buckets of the last 20 steps.
local function time_window(step)
  local cur = math.floor(now / step)
  local names = {}
  for i = 0, 19 do names[i + 1] = 'b' .. i end
  local got = redis.call('HMGET', key, unpack(names))
  local calls, fails = 0, 0
  for i = 1, 20 do
    local b = got[i]
    if b then
      local a, c, f = string.match(b, '^(%d+):(%d+):(%d+)$')
      if tonumber(a) > cur - 20 then
        calls = calls + tonumber(c)
        fails = fails + tonumber(f)
      end
    end
  end
  return calls, fails
end

local function step_us() return math.max(1, math.floor(win / 20)) end

local function trips(calls, fails)
  return calls >= limit and fails / calls >= rate
end

-- An outcome of the current closed period ('s' success, 'f' failure).
local function closed_outcome(out)
  if rule == 'n' then
    if out == 'f' then
      wrote = true
      if redis.call('HINCRBY', key, 'f', 1) >= limit then open() end
    elseif redis.call('HDEL', key, 'f') == 1 then
      wrote = true
    end
    return
  end
  wrote = true
  if rule == 't' then
    local step = step_us()
    local cur = math.floor(now / step)
    local name = 'b' .. (cur % 20)
    local calls, fails = 0, 0
    local b = redis.call('HGET', key, name)
    if b then
      local a, c, f = string.match(b, '^(%d+):(%d+):(%d+)$')
      if tonumber(a) == cur then calls, fails = tonumber(c), tonumber(f) end
    end
    calls = calls + 1
    if out == 'f' then fails = fails + 1 end
    redis.call('HSET', key, name, fmt(cur) .. ':' .. calls .. ':' .. fails)
    if out == 'f' then
      local wc, wf = time_window(step)
      if trips(wc, wf) then open() end
    end
    return
  end
  local st = redis.call('HMGET', key, 'wi', 'wn', 'wf')
  local i = tonumber(st[1] or '0')
  local filled = tonumber(st[2] or '0')
  local wf = tonumber(st[3] or '0')
  local old = redis.call('HGET', key, 'r' .. i)
  if old == '1' then wf = wf - 1 elseif not old then filled = filled + 1 end
  local v = '0'
  if out == 'f' then v = '1'; wf = wf + 1 end
  redis.call('HSET', key, 'r' .. i, v, 'wi', fmt((i + 1) % win), 'wn', fmt(filled),
    'wf', fmt(wf))
  if out == 'f' and trips(filled, wf) then open() end
end

if op == 'a' then
  tick()
  if s == 'h' then
    local pn = probes()
    if pn < max_probes then
      redis.call('HSET', key, 'pn', fmt(pn + 1), 'p:' .. ARGV[12], fmt(now + probe_us))
      wrote = true
      admitted = 2
    end
  elseif s == 'c' or s == 'fc' then
    admitted = 1
  end
elseif op == 'r' then
  local out = ARGV[13]
  local token = ARGV[12]
  -- Only an outcome of the current period counts (no hash: a closed period nothing
  -- can be stale against).
  if tonumber(ARGV[11]) == g or redis.call('EXISTS', key) == 0 then
    if s == 'c' and out ~= 'i' then
      closed_outcome(out)
    elseif s == 'h' and token ~= '' and redis.call('HDEL', key, 'p:' .. token) == 1 then
      wrote = true
      local pn = tonumber(redis.call('HGET', key, 'pn') or '1') - 1
      if out == 'f' then
        open()
      elseif out == 's' and redis.call('HINCRBY', key, 'ps', 1) >= succ_need then
        become('c')
      else
        redis.call('HSET', key, 'pn', fmt(pn))
      end
    end
  end
elseif op == 'q' then
  tick()
elseif op == 'x' then
  -- From any state, closed included: a new period (calls in flight no longer count).
  become('c')
elseif op == 'o' then
  if s ~= 'fo' then become('fo') end
elseif op == 'k' then
  if s ~= 'fc' then become('fc') end
end

if wrote then
  if s == 'fo' or s == 'fc' then
    redis.call('PERSIST', key)
  else
    -- Idle for idle_us (after the end of an open period): the hash goes, and with it
    -- the breaker is closed with nothing counted.
    local till = now
    if s == 'o' then till = tonumber(redis.call('HGET', key, 't')) end
    redis.call('PEXPIRE', key, math.ceil((till - now + idle_us) / 1000))
  end
end

local run, wc, wf = 0, 0, 0
if s == 'c' and op == 'q' then
  if rule == 'n' then
    run = tonumber(redis.call('HGET', key, 'f') or '0')
  elseif rule == 't' then
    wc, wf = time_window(step_us())
  else
    local st = redis.call('HMGET', key, 'wn', 'wf')
    wc, wf = tonumber(st[1] or '0'), tonumber(st[2] or '0')
  end
end
if s == 'o' then
  retry = math.max(0, tonumber(redis.call('HGET', key, 't')) - now)
elseif s == 'fo' then
  retry = -1
end
return {s, g, retry, table.concat(moves, ','), admitted, run, wc, wf}
