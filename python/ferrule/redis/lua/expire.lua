-- ARGV: prefix, batch size. How many expired entries were removed (at most the batch).
return reclaim(now_us(), tonumber(ARGV[2]))
