-- Index entries become sorted sets (data-layer 0.1, issue 6).
--
-- Each `<prefix>:<entity>:i:<field>:<value>` key, the entity keys holding a
-- value of an #[indexed] field, was a set; the backend now keeps it as a
-- sorted set (score 0, members in key order) so that a filter on one
-- indexed field reads a page of keys in order with ZRANGEBYLEX ... LIMIT.
-- Converts every such set, keeping its members. Keys that are already
-- sorted sets are left alone, so running it on a new or converted keyspace
-- changes nothing. ARGV[1] is the key prefix.
local converted = 0
local cursor = '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. ':*:i:*', 'COUNT', 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    if redis.call('TYPE', key).ok == 'set' then
      local members = redis.call('SMEMBERS', key)
      local ttl = redis.call('PTTL', key)
      redis.call('DEL', key)
      for _, m in ipairs(members) do redis.call('ZADD', key, 0, m) end
      if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
      converted = converted + 1
    end
  end
until cursor == '0'
return converted
