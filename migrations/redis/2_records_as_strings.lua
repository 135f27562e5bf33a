-- Records become strings (data-layer 0.1, issue 6).
--
-- Each `<prefix>:<entity>:r:<key>` was a hash of `d` (the record as JSON),
-- `rev`, `ix` and `u`. The backend now keeps the record JSON as a string,
-- so a read is one GET and many reads one MGET, and `ix` and `u` (the index
-- entries and unique claims the record owns) in a hash beside it,
-- `<prefix>:<entity>:m:<key>`, when the record has any. The revision is
-- gone: a compare-and-set compares the record text itself.
-- Converts every such hash, keeping its TTL. Keys that are already strings
-- are left alone, so running it on a new or converted keyspace changes
-- nothing. ARGV[1] is the key prefix.
local converted = 0
local cursor = '0'
local from = #ARGV[1] + 2
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. ':*:r:*', 'COUNT', 1000, 'TYPE', 'hash')
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    local got = redis.call('HMGET', key, 'd', 'ix', 'u')
    -- (A meta hash whose key has `:r:` in its member has no `d`.)
    if got[1] then
      -- The entity name has no colon: the first `:r:` after the prefix
      -- ends it.
      local at = string.find(key, ':r:', from, true)
      local meta = string.sub(key, 1, at - 1) .. ':m:' .. string.sub(key, at + 3)
      local ttl = redis.call('PTTL', key)
      redis.call('DEL', key)
      redis.call('SET', key, got[1])
      local ix, u = got[2] or '[]', got[3] or '[]'
      if ix ~= '[]' or u ~= '[]' then redis.call('HSET', meta, 'ix', ix, 'u', u) end
      if ttl > 0 then
        redis.call('PEXPIRE', key, ttl)
        redis.call('PEXPIRE', meta, ttl)
      end
      converted = converted + 1
    end
  end
until cursor == '0'
return converted
