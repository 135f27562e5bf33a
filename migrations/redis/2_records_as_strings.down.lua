-- Back to records as hashes of `d`, `rev`, `ix` and `u` (what data-layer
-- wrote before records became strings), keeping TTLs. The revision starts
-- again at 1. ARGV[1] is the key prefix.
local cursor = '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. ':*:r:*', 'COUNT', 1000, 'TYPE', 'string')
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    local v = redis.call('GET', key)
    local a = string.find(v, '\n', 1, true)
    local b = a and string.find(v, '\n', a + 1, true)
    if b then
      local ttl = redis.call('PTTL', key)
      redis.call('DEL', key)
      redis.call('HSET', key, 'd', string.sub(v, b + 1), 'rev', 1,
        'ix', string.sub(v, 1, a - 1), 'u', string.sub(v, a + 1, b - 1))
      if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
    end
  end
until cursor == '0'
return 0
