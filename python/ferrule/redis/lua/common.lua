-- Shared by the registry scripts: floor division that is exact for integers below 2^53
-- (a / b in doubles can round up to the next integer), and integer formatting without
-- Lua's %.14g.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function fmt(x) return string.format('%.0f', x) end
