-- Back to plain sets for the index entries (what data-layer wrote before
-- issue 6). ARGV[1] is the key prefix.
local cursor = '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. ':*:i:*', 'COUNT', 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    if redis.call('TYPE', key).ok == 'zset' then
      local members = redis.call('ZRANGE', key, 0, -1)
      local ttl = redis.call('PTTL', key)
      redis.call('DEL', key)
      for _, m in ipairs(members) do redis.call('SADD', key, m) end
      if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
    end
  end
until cursor == '0'
return 0
