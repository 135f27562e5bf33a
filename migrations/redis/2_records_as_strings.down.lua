-- Back to records as hashes of `d`, `rev`, `ix` and `u` (what data-layer
-- wrote before records became strings), keeping TTLs. The revision starts
-- again at 1. ARGV[1] is the key prefix.
local cursor = '0'
local from = #ARGV[1] + 2
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. ':*:r:*', 'COUNT', 1000, 'TYPE', 'string')
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    local at = string.find(key, ':r:', from, true)
    local meta = string.sub(key, 1, at - 1) .. ':m:' .. string.sub(key, at + 3)
    local d = redis.call('GET', key)
    local m = redis.call('HMGET', meta, 'ix', 'u')
    local ttl = redis.call('PTTL', key)
    redis.call('DEL', key, meta)
    redis.call('HSET', key, 'd', d, 'rev', 1, 'ix', m[1] or '[]', 'u', m[2] or '[]')
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  end
until cursor == '0'
return 0
