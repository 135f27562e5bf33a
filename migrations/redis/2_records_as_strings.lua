-- Records become strings (data-layer 0.1, issue 6).
--
-- Each `<prefix>:<entity>:r:<key>` was a hash of `d` (the record as JSON),
-- `rev`, `ix` and `u`. The backend now keeps it as a string of two lines,
-- the index entries (`ix`) and the unique claims (`u`) the record owns,
-- then the record JSON: a read is one GET, many reads one MGET, and the
-- record and what it owns are one key. The revision is gone: a
-- compare-and-set compares the stored value itself.
-- Converts every such hash, keeping its TTL. Keys that are already strings
-- are left alone, so running it on a new or converted keyspace changes
-- nothing. ARGV[1] is the key prefix.
local converted = 0
local cursor = '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. ':*:r:*', 'COUNT', 1000, 'TYPE', 'hash')
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    local got = redis.call('HMGET', key, 'd', 'ix', 'u')
    if got[1] then
      local ttl = redis.call('PTTL', key)
      redis.call('DEL', key)
      redis.call('SET', key, (got[2] or '[]') .. '\n' .. (got[3] or '[]') .. '\n' .. got[1])
      if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
      converted = converted + 1
    end
  end
until cursor == '0'
return converted
