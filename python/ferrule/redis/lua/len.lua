-- Read-only. ARGV: prefix. Live entries.
return redis.call('ZCOUNT', DL, '(' .. fmt(now_us()), '+inf')
