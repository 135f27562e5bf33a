//! The Redis backend (redis-rs, async, one multiplexed connection manager).
//!
//! Layout under `<prefix>:<entity>`:
//! - `:r:<key>` — a string per entity: two lines, the index entries and
//!   the unique claims the record owns (JSON arrays, so a write can move
//!   them atomically), then the record as JSON. A read is one `GET`, many
//!   reads one `MGET`, and the record and what it owns are one key: they
//!   are written, expire and are deleted together;
//! - `:k` — a sorted set of every key in an order-preserving encoding, read
//!   with `ZRANGEBYLEX` for listing in key order and for cursors;
//! - `:i:<field>:<value>` — the keys with that value of an `#[indexed]`
//!   field, a sorted set in the same order-preserving encoding as `:k`, so
//!   a filter on one indexed field reads its keys in order, a page at a
//!   time (`ZRANGEBYLEX ... LIMIT`);
//! - `:u:<field>` — a hash of value → key per `#[indexed(unique)]` field.
//!
//! Every write is one Lua script that checks (duplicates, unique claims,
//! the record read for a compare-and-set) and writes record, key order and
//! index entries atomically. `insert` and `update` by patch are one script
//! each (one round trip; the patch script splices the stored JSON text, so
//! no number goes through Lua's doubles); `replace` and `upsert` read,
//! compute the new record, and write only if the stored text is still the
//! one read (optimistic compare-and-set on the record itself, retried).
//! `insert_many` is one all-or-nothing script; `get_many` one `MGET`.
//! Filters: `eq` and `in` on the key and on `#[indexed]` fields (set
//! operations); anything else is `Unsupported`. No `KEYS` command anywhere.
//!
//! Every key a script touches is passed in its `KEYS` (as Redis Cluster
//! and ACL rules require): the keys the client computes go there up front;
//! the ones a script finds in stored data (the index entries a record
//! owns, the record of a unique claim's owner) it asks for before writing
//! anything (`{'keys', ...}`), and the client calls again with them
//! declared. An update that moves an indexed field and a delete of a record
//! with index entries are therefore two calls; the common update and every
//! insert are one. An entity's keys do not yet share one hash slot, so
//! Redis Cluster is not served: single-node Redis (or a primary/replica
//! set).
//!
//! Keyspaces written before: `migrations/redis/` converts them
//! (`data-layer migrate up --store redis`); until then the backend answers
//! `SchemaNotReady`.

mod feed;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use dl_models::{EntitySchema, FieldType, Record, Value};
use redis::aio::ConnectionManager;

use crate::backend::{Capabilities, FilterSupport, Read};
use crate::error::{ConflictKind, Error, Operation, Result, Store};
use crate::query::{CmpOp, Cond, Direction, ListRequest, ValidPatch};
use crate::versions::{bumped, check_expected, patched, version_of};

use feed::{FeedKeys, RedisFeed};

/// How many times a compare-and-set write re-reads after a concurrent write.
const CAS_ATTEMPTS: usize = 64;

/// How many times a script is called again with the keys it found in
/// stored data and asked to have declared (`{'keys', ...}`): once is the
/// usual; more only when concurrent writes keep moving what it owns.
const KEY_ROUNDS: usize = 8;

/// The keys a script asked for (`{'keys', k...}`), when that is its answer.
fn asked_keys(reply: &redis::Value) -> Option<Vec<String>> {
    let redis::Value::Array(items) = reply else {
        return None;
    };
    match items.first() {
        Some(redis::Value::BulkString(tag)) if tag.as_slice() == b"keys" => Some(
            items[1..]
                .iter()
                .filter_map(|k| match k {
                    redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// The index keys and claims hashes a stored value says its record owns
/// (its first two lines), to declare them to a script that will move them.
fn owned_keys(stored: &str) -> Vec<String> {
    let mut lines = stored.splitn(3, '\n');
    let ix: Vec<String> = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    let claims: Vec<(String, String, String)> = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    ix.into_iter()
        .chain(claims.into_iter().map(|(hash, _, _)| hash))
        .collect()
}

/// The start of every script that can touch a key it finds in stored data
/// (the index entries a record owns, the record of a claim's owner):
/// `want(k)` notes such a key when the call did not pass it in `KEYS`, and
/// `missing()` answers the ones noted (`{'keys', k...}`) before anything
/// is written, so the client calls again with them declared. No script
/// touches a key it was not given in `KEYS` (Redis Cluster routes a script
/// by them, and ACL rules are written against them).
macro_rules! declared_keys {
    () => {
        r#"
local dl_declared, dl_missing = nil, {}
local function want(k)
  if not dl_declared then
    dl_declared = {}
    for i = 1, #KEYS do dl_declared[KEYS[i]] = true end
  end
  if not dl_declared[k] then
    dl_declared[k] = true
    dl_missing[#dl_missing + 1] = k
  end
end
local function missing()
  if #dl_missing == 0 then return nil end
  local r = {'keys'}
  for i, k in ipairs(dl_missing) do r[i + 1] = k end
  return r
end
"#
    };
}

/// The change feed's part of a write script, for an entity that is not
/// captured: nothing (`dl_feed` does nothing, `dl_on` is false).
macro_rules! no_feed {
    () => {
        r#"
local dl_on = false
local function dl_feed() end
local function dl_ids() return {} end
"#
    };
}

/// The change feed's part of a write script, for a captured entity: the
/// event is appended to the feed's stream by the same script as the write
/// (so it is there exactly when the write is), before the script writes
/// anything else. The last six ARGV: the stream, the clock (the last
/// position given), the entity's sequence hash (key token → the key's last
/// sequence), the entity, its shape version and the key's id (for
/// `insert_many`, a JSON array of the items' ids); the three keys are in
/// `KEYS` too. Positions come from the clock, so they are gap-free and in
/// commit order (Redis runs one script at a time); the stream id is
/// `<position>-0`. `dl_feed(op, member, key id or nil, value, stored)`:
/// `value` is the stored value (its third line is the record) when
/// `stored`, else the record itself; nil for a delete.
macro_rules! feed {
    () => {
        r#"
local dl_on = true
local dl_f = #ARGV - 6
local dl_ms
local function dl_feed(op, member, key_id, value, stored)
  if not dl_ms then
    local t = redis.call('TIME')
    dl_ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  end
  local pos = redis.call('INCR', ARGV[dl_f + 2])
  local seq = redis.call('HINCRBY', ARGV[dl_f + 3], member, 1)
  local id = string.format('%d-0', pos)
  local k = key_id or ARGV[dl_f + 6]
  if value then
    if stored then
      local a = string.find(value, '\n', 1, true)
      local b = string.find(value, '\n', a + 1, true)
      value = string.sub(value, b + 1)
    end
    redis.call('XADD', ARGV[dl_f + 1], id, 'e', ARGV[dl_f + 4], 'o', op, 'k', k,
      's', seq, 't', dl_ms, 'v', ARGV[dl_f + 5], 'a', value)
  else
    redis.call('XADD', ARGV[dl_f + 1], id, 'e', ARGV[dl_f + 4], 'o', op, 'k', k,
      's', seq, 't', dl_ms, 'v', ARGV[dl_f + 5])
  end
end
local function dl_ids() return cjson.decode(ARGV[dl_f + 6]) end
"#
    };
}

/// A write of a whole record (replace, upsert, and updates the patch
/// script cannot do): only if the stored value is still the one read (the
/// record itself is the compare-and-set token: equal text, equal record,
/// equal index entries). KEYS: record, key order, then every index key and
/// claims hash of the new record and of the stored one (the client reads
/// the stored one's from the text it expects). ARGV: expected stored
/// value ('' when read as absent), must exist, new stored value, index
/// keys JSON, claims JSON, member, record key prefix, TTL ms.
macro_rules! write_body {
    () => {
        r#"
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[1] then return {'retry'} end
if ARGV[2] == '1' and not cur then return {'missing'} end
local ix = cjson.decode(ARGV[4])
local claims = cjson.decode(ARGV[5])
local old_ix, old_claims = {}, {}
if cur then
  local a = string.find(cur, '\n', 1, true)
  local b = a and string.find(cur, '\n', a + 1, true)
  if not b then return {'layout'} end
  old_ix = cjson.decode(string.sub(cur, 1, a - 1))
  old_claims = cjson.decode(string.sub(cur, a + 1, b - 1))
end
for _, k in ipairs(ix) do want(k) end
for _, c in ipairs(claims) do want(c[1]) end
for _, k in ipairs(old_ix) do want(k) end
for _, c in ipairs(old_claims) do want(c[1]) end
local m = missing()
if m then return m end
local owners = {}
for i, c in ipairs(claims) do
  local owner = redis.call('HGET', c[1], c[2])
  if owner and owner ~= ARGV[6] then
    owners[i] = ARGV[7] .. owner
    want(owners[i])
  end
end
m = missing()
if m then return m end
for i, c in ipairs(claims) do
  if owners[i] and redis.call('EXISTS', owners[i]) == 1 then return {'unique', c[3]} end
end
dl_feed(cur and 'updated' or 'created', ARGV[6], nil, ARGV[3], true)
for _, k in ipairs(old_ix) do redis.call('ZREM', k, ARGV[6]) end
for _, c in ipairs(old_claims) do
  if redis.call('HGET', c[1], c[2]) == ARGV[6] then redis.call('HDEL', c[1], c[2]) end
end
for _, k in ipairs(ix) do redis.call('ZADD', k, 0, ARGV[6]) end
for _, c in ipairs(claims) do redis.call('HSET', c[1], c[2], ARGV[6]) end
redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
if tonumber(ARGV[8]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[8]) end
redis.call('ZADD', KEYS[2], 0, ARGV[6])
return {'ok'}
"#
    };
}

/// A single insert. The index keys and claims hashes come in `KEYS` (and
/// in the stored value, for later writes), so the script decodes nothing.
/// KEYS: record, key order, the index keys, the claims hashes (then the
/// records of claim owners, when the script asked for them). ARGV: stored
/// value, member, record key prefix, TTL ms, number of index keys, number
/// of claims, per claim: token, field.
macro_rules! insert_body {
    () => {
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'dup'} end
local nix = tonumber(ARGV[5])
local nc = tonumber(ARGV[6])
local c0 = 3 + nix
local owners = {}
for j = 0, nc - 1 do
  local owner = redis.call('HGET', KEYS[c0 + j], ARGV[7 + 2 * j])
  if owner and owner ~= ARGV[2] then
    owners[j] = ARGV[3] .. owner
    want(owners[j])
  end
end
local m = missing()
if m then return m end
for j = 0, nc - 1 do
  if owners[j] and redis.call('EXISTS', owners[j]) == 1 then return {'unique', ARGV[8 + 2 * j]} end
end
dl_feed('created', ARGV[2], nil, ARGV[1], true)
for j = 3, 2 + nix do redis.call('ZADD', KEYS[j], 0, ARGV[2]) end
for j = 0, nc - 1 do redis.call('HSET', KEYS[c0 + j], ARGV[7 + 2 * j], ARGV[2]) end
redis.call('SET', KEYS[1], ARGV[1])
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return {'ok'}
"#
    };
}

/// All or nothing: every check first, then the writes. Calls into Redis
/// are what a script pays for, so keys are checked with one `EXISTS` per
/// 500 and index entries are added with one `ZADD` per index key (and per
/// 500 members), not one per entity. Every key is named by its place in
/// `KEYS`: KEYS: key order, the record of each item in order, then each
/// index key and claims hash once (then the records of claim owners, when
/// the script asked for them). ARGV: record key prefix, TTL ms, the items
/// as JSON (`[member, stored value, [index key places], [[claims hash
/// place, token, field]...]]` each).
macro_rules! insert_many_body {
    () => {
        r#"
local items = cjson.decode(ARGV[3])
local n = #items
for s = 1, n, 500 do
  local ks = {}
  for i = s, math.min(s + 499, n) do ks[#ks + 1] = KEYS[1 + i] end
  if redis.call('EXISTS', unpack(ks)) > 0 then return {'dup'} end
end
local claimed, owners = {}, {}
for _, it in ipairs(items) do
  for _, c in ipairs(it[4]) do
    local slot = c[1] .. '\0' .. c[2]
    if claimed[slot] then return {'unique', c[3]} end
    claimed[slot] = true
    local owner = redis.call('HGET', KEYS[c[1]], c[2])
    if owner then
      local ok = ARGV[1] .. owner
      want(ok)
      owners[#owners + 1] = {ok, c[3]}
    end
  end
end
local m = missing()
if m then return m end
for _, o in ipairs(owners) do
  if redis.call('EXISTS', o[1]) == 1 then return {'unique', o[2]} end
end
if dl_on then
  local ids = dl_ids()
  for i, it in ipairs(items) do dl_feed('created', it[1], ids[i], it[2], true) end
end
local groups, order = {}, {}
local everyone = {}
for i, it in ipairs(items) do
  local rk = KEYS[1 + i]
  for _, p in ipairs(it[3]) do
    local g = groups[p]
    if not g then g = {}; groups[p] = g; order[#order + 1] = p end
    g[#g + 1] = 0
    g[#g + 1] = it[1]
  end
  for _, c in ipairs(it[4]) do redis.call('HSET', KEYS[c[1]], c[2], it[1]) end
  redis.call('SET', rk, it[2])
  if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', rk, ARGV[2]) end
  everyone[#everyone + 1] = 0
  everyone[#everyone + 1] = it[1]
end
local function zadd(key, args)
  for s = 1, #args, 1000 do
    redis.call('ZADD', key, unpack(args, s, math.min(s + 999, #args)))
  end
end
for _, p in ipairs(order) do zadd(KEYS[p], groups[p]) end
zadd(KEYS[1], everyone)
return {'ok'}
"#
    };
}

/// An update by patch in one script (one round trip, or two when an
/// indexed field moves: its old index key is found in the stored value,
/// and is declared on the second call). One pass over the
/// top level of the stored JSON finds where the patched fields' values
/// (and the version's) start and end; the new record is the stored text
/// with those spans replaced by the JSON the client encoded (fields the
/// text lacks are added), so no stored number goes through Lua's doubles.
/// The version is checked and bumped as decimal text. Only the patched
/// fields' index entries and unique claims move. Text this cannot read
/// exactly, or a version it cannot bump as text, answers `fallback` (the
/// client then reads, patches and compares-and-sets).
///
/// KEYS: record, then the new index keys and the claims hashes of the
/// patched fields (then what the script asked for: old index keys, claim
/// owners' records). ARGV: member, record key prefix, TTL ms, version
/// field, expected version, number of sets; then per set: field, JSON
/// text, index prefix, new index key (empty for null), unique claims hash,
/// claim token.
macro_rules! patch_body {
    () => {
        r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'missing'} end
local find, match, byte, sub = string.find, string.match, string.byte, string.sub
local n1 = find(v, '\n', 1, true)
local n2 = n1 and find(v, '\n', n1 + 1, true)
if not n2 then return {'fallback'} end
local n = tonumber(ARGV[6])
-- The record as the backend writes it (compact, one object with no object
-- or array inside) lets each field be found by name: a quote after `{` or
-- `,` outside any string opens a key. `span` answers where a top-level
-- field's value starts and ends, or nil at any doubt (absent, twice, a
-- space, an escape in a string), and the whole pass below decides.
-- (Plain finds: a Lua pattern with a class costs ~10 ns a byte.)
local r0 = n2 + 1
local flat = byte(v, r0) == 123 and byte(v, #v) == 125
  and not find(v, '{', r0 + 1, true) and not find(v, '[', r0, true)
local function span(name)
  local pat = '"' .. name .. '":'
  local s = find(v, pat, r0, true)
  if not s then return nil end
  local b = byte(v, s - 1)
  if (b ~= 123 and b ~= 44) or find(v, pat, s + #pat, true) then return nil end
  local vs = s + #pat
  local e
  if byte(v, vs) == 34 then e = match(v, '^"[^"\\]*"()', vs) else e = match(v, '^[^,}%]%s"]+()', vs) end
  local c = e and byte(v, e)
  if c ~= 44 and c ~= 125 then return nil end
  return vs, e - 1
end
-- The common update in a few string operations: nothing nested, no index
-- entry or claim to move, a version of at most 15 digits.
local quick = flat
for s = 0, n - 1 do
  local a = 7 + s * 6
  if ARGV[a + 2] ~= '' or ARGV[a + 4] ~= '' then quick = false end
end
if quick then
  local at, ed, tx, k = {}, {}, {}, 0
  if ARGV[4] ~= '' then
    local vs, ve = span(ARGV[4])
    local cur = vs and sub(v, vs, ve)
    if cur and #cur <= 15 and (cur == '0' or find(cur, '^[1-9]%d*$')) then
      if ARGV[5] ~= '' and cur ~= ARGV[5] then return {'version', cur} end
      k = 1
      at[1], ed[1], tx[1] = vs, ve, string.format('%d', tonumber(cur) + 1)
    else
      quick = false
    end
  end
  for s = 0, n - 1 do
    if not quick then break end
    local a = 7 + s * 6
    local vs, ve = span(ARGV[a])
    if vs then
      k = k + 1
      at[k], ed[k], tx[k] = vs, ve, ARGV[a + 1]
    else
      quick = false
    end
  end
  if quick then
    for i = 2, k do
      local x, y, z, j = at[i], ed[i], tx[i], i - 1
      while j > 0 and at[j] > x do
        at[j + 1], ed[j + 1], tx[j + 1] = at[j], ed[j], tx[j]
        j = j - 1
      end
      at[j + 1], ed[j + 1], tx[j + 1] = x, y, z
    end
    local nv
    if k == 2 then
      nv = sub(v, 1, at[1] - 1) .. tx[1] .. sub(v, ed[1] + 1, at[2] - 1) .. tx[2] .. sub(v, ed[2] + 1)
    else
      local parts = {sub(v, 1, at[1] - 1)}
      for i = 1, k do
        parts[#parts + 1] = tx[i]
        parts[#parts + 1] = sub(v, ed[i] + 1, (at[i + 1] or #v + 1) - 1)
      end
      nv = table.concat(parts)
    end
    dl_feed('updated', ARGV[1], nil, nv, true)
    redis.call('SET', KEYS[1], nv, 'KEEPTTL')
    if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
    -- (The whole stored value, as a string: the client reads the record
    -- line itself, which spares building a reply table here.)
    return nv
  end
end
local d = sub(v, r0)
local wanted = {}
for s = 0, n - 1 do wanted[ARGV[7 + s * 6]] = true end
if ARGV[4] ~= '' then wanted[ARGV[4]] = true end
-- One pass over the top level: where each wanted field's value starts
-- and ends (the last one, if a name repeats: that is the one read).
local function string_end(p)
  local e = match(d, '^"[^"\\]*"()', p)
  if e then return e end
  local q = p + 1
  while true do
    local x = find(d, '["\\]', q)
    if not x then return nil end
    if byte(d, x) == 34 then return x + 1 end
    q = x + 2
  end
end
local function nested_end(p)
  local depth, q = 0, p
  while true do
    local x = find(d, '["{}%[%]]', q)
    if not x then return nil end
    local c = byte(d, x)
    if c == 34 then
      q = string_end(x)
      if not q then return nil end
    else
      if c == 123 or c == 91 then depth = depth + 1 else depth = depth - 1 end
      q = x + 1
      if depth == 0 then return q end
    end
  end
end
local spans = {}
-- Flat text: each wanted field by name (positions in `d`, not `v`).
local close
if flat then
  close = #d
  for name in pairs(wanted) do
    local vs, ve = span(name)
    if not vs then
      close = nil
      spans = {}
      break
    end
    spans[name] = {vs - n2, ve - n2}
  end
end
local p = close or match(d, '^%s*{%s*()')
if not p then return {'fallback'} end
if not close and byte(d, p) == 125 then close = p end
while not close do
  local name, v = match(d, '^"([^"\\]*)"%s*:%s*()', p)
  if not name then return {'fallback'} end
  local c, e = byte(d, v)
  if c == 34 then
    e = string_end(v)
  elseif c == 123 or c == 91 then
    e = nested_end(v)
  else
    e = match(d, '^[^,}%]%s"]+()', v)
  end
  if not e then return {'fallback'} end
  if wanted[name] then spans[name] = {v, e - 1} end
  local at, sep, nxt = match(d, '^%s*()([,}])%s*()', e)
  if not sep then return {'fallback'} end
  if sep == '}' then
    if nxt <= #d then return {'fallback'} end
    close = at
  else
    p = nxt
  end
end
local edits = {}
local added = {}
if ARGV[4] ~= '' and spans[ARGV[4]] then
  local span = spans[ARGV[4]]
  local v = sub(d, span[1], span[2])
  if v ~= 'null' then
    local digits = string.gsub(v, '^%-', '')
    local canonical = v == '0' or find(v, '^%-?[1-9]%d*$')
    if not canonical or #digits > 19 or (#digits == 19 and digits > '9223372036854775807') then
      return {'fallback'}
    end
    if ARGV[5] ~= '' and v ~= ARGV[5] then return {'version', v} end
    local bumped = v
    if #v <= 15 then
      bumped = string.format('%d', tonumber(v) + 1)
    elseif byte(v, 1) == 45 then
      return {'fallback'}
    elseif v ~= '9223372036854775807' then
      local b = {byte(v, 1, -1)}
      local k = #b
      while k > 0 and b[k] == 57 do b[k] = 48; k = k - 1 end
      if k == 0 then
        bumped = '1' .. string.char(unpack(b))
      else
        b[k] = b[k] + 1
        bumped = string.char(unpack(b))
      end
    end
    edits[#edits + 1] = {span[1], span[2], bumped}
  end
end
-- Every key the writes below touch, declared first: the patched fields'
-- old and new index keys, their claims hashes, claim owners' records.
local ix, u
for s = 0, n - 1 do
  local a = 7 + s * 6
  local ipre, ikey, uh = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  if ipre ~= '' then
    ix = ix or cjson.decode(sub(v, 1, n1 - 1))
    for _, k in ipairs(ix) do
      if sub(k, 1, #ipre) == ipre then want(k) end
    end
    if ikey ~= '' then want(ikey) end
  end
  if uh ~= '' then
    u = u or cjson.decode(sub(v, n1 + 1, n2 - 1))
    for _, c in ipairs(u) do
      if c[3] == ARGV[a] then want(c[1]) end
    end
    want(uh)
  end
end
local m = missing()
if m then return m end
local owners = {}
for s = 0, n - 1 do
  local a = 7 + s * 6
  if ARGV[a + 4] ~= '' and ARGV[a + 3] ~= '' then
    local owner = redis.call('HGET', ARGV[a + 4], ARGV[a + 5])
    if owner and owner ~= ARGV[1] then
      owners[s] = ARGV[2] .. owner
      want(owners[s])
    end
  end
end
m = missing()
if m then return m end
for s = 0, n - 1 do
  if owners[s] and redis.call('EXISTS', owners[s]) == 1 then
    return {'unique', ARGV[7 + s * 6]}
  end
end
for s = 0, n - 1 do
  local a = 7 + s * 6
  local name, text = ARGV[a], ARGV[a + 1]
  local span = spans[name]
  if span then
    edits[#edits + 1] = {span[1], span[2], text}
  else
    added[#added + 1] = '"' .. name .. '":' .. text
  end
end
-- In text order (an insertion sort: a patch edits a few spans, and
-- table.sort with a comparator costs more than the splice).
for i = 2, #edits do
  local ed, j = edits[i], i - 1
  while j > 0 and edits[j][1] > ed[1] do
    edits[j + 1] = edits[j]
    j = j - 1
  end
  edits[j + 1] = ed
end
local parts, at = {}, 1
for _, ed in ipairs(edits) do
  parts[#parts + 1] = sub(d, at, ed[1] - 1)
  parts[#parts + 1] = ed[3]
  at = ed[2] + 1
end
parts[#parts + 1] = sub(d, at, close - 1)
if #added > 0 then
  if match(d, '^%s*{%s*}') then
    parts[#parts + 1] = table.concat(added, ',')
  else
    parts[#parts + 1] = ',' .. table.concat(added, ',')
  end
end
parts[#parts + 1] = sub(d, close)
local out = table.concat(parts)
-- The event first, then the index entries and claims move.
dl_feed('updated', ARGV[1], nil, out, false)
for s = 0, n - 1 do
  local a = 7 + s * 6
  local name, ipre, ikey, uh, tok = ARGV[a], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  if ipre ~= '' then
    ix = ix or cjson.decode(sub(v, 1, n1 - 1))
    local kept, had = {}, false
    for _, k in ipairs(ix) do
      if sub(k, 1, #ipre) ~= ipre then
        kept[#kept + 1] = k
      elseif k == ikey then
        had = true
        kept[#kept + 1] = k
      else
        redis.call('ZREM', k, ARGV[1])
      end
    end
    if ikey ~= '' and not had then
      redis.call('ZADD', ikey, 0, ARGV[1])
      kept[#kept + 1] = ikey
    end
    ix = kept
  end
  if uh ~= '' then
    u = u or cjson.decode(sub(v, n1 + 1, n2 - 1))
    local kept = {}
    for _, c in ipairs(u) do
      if c[3] ~= name then
        kept[#kept + 1] = c
      elseif (c[1] ~= uh or c[2] ~= tok or ikey == '') and redis.call('HGET', c[1], c[2]) == ARGV[1] then
        redis.call('HDEL', c[1], c[2])
      end
    end
    if ikey ~= '' then
      redis.call('HSET', uh, tok, ARGV[1])
      kept[#kept + 1] = {uh, tok, name}
    end
    u = kept
  end
end
local head
if ix or u then
  local function list(t)
    local items = {}
    for i, x in ipairs(t) do items[i] = cjson.encode(x) end
    return '[' .. table.concat(items, ',') .. ']'
  end
  head = (ix and list(ix) or sub(v, 1, n1 - 1)) .. '\n' .. (u and list(u) or sub(v, n1 + 1, n2 - 1)) .. '\n'
else
  head = sub(v, 1, n2)
end
redis.call('SET', KEYS[1], head .. out, 'KEEPTTL')
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {'ok', out}
"#
    };
}

/// KEYS: record, key order (then the index keys and claims hashes the
/// record owns, when the script asked for them). ARGV: member. A stored
/// value this cannot split is still deleted (its index entries, if any,
/// are skipped on read as pointing nowhere).
macro_rules! delete_body {
    () => {
        r#"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local a = string.find(v, '\n', 1, true)
local b = a and string.find(v, '\n', a + 1, true)
local ix, claims = {}, {}
if b then
  ix = cjson.decode(string.sub(v, 1, a - 1))
  claims = cjson.decode(string.sub(v, a + 1, b - 1))
  for _, k in ipairs(ix) do want(k) end
  for _, c in ipairs(claims) do want(c[1]) end
  local m = missing()
  if m then return m end
end
dl_feed('deleted', ARGV[1], nil, nil, false)
for _, k in ipairs(ix) do redis.call('ZREM', k, ARGV[1]) end
for _, c in ipairs(claims) do
  if redis.call('HGET', c[1], c[2]) == ARGV[1] then redis.call('HDEL', c[1], c[2]) end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"#
    };
}

/// Removes, from one sorted set (an index entry set or the key order),
/// the members whose record is gone (expired), atomically with the check,
/// so a record written again meanwhile keeps its entry. KEYS: the set, then
/// the record of each member. ARGV: the members to check. Answers how many
/// went.
const SWEEP_SET: &str = r#"
local gone = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    gone = gone + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return gone
"#;

/// The same for one claims hash: a claim whose owner record is gone is
/// removed (if it still names that owner). KEYS: the hash, then the owner's
/// record of each pair. ARGV: value token and owner pairs.
const SWEEP_CLAIMS: &str = r#"
local gone = 0
for j = 1, #ARGV / 2 do
  local token, owner = ARGV[2 * j - 1], ARGV[2 * j]
  if redis.call('HGET', KEYS[1], token) == owner and redis.call('EXISTS', KEYS[j + 1]) == 0 then
    gone = gone + redis.call('HDEL', KEYS[1], token)
  end
end
return gone
"#;

/// What one [`RedisBackend::sweep_expired`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Sweep {
    /// Keys of the entity looked at (index sets, the key order, claims).
    pub keys: usize,
    /// Index entries, key-order members and claims removed (their record
    /// had expired).
    pub removed: usize,
    /// Where the next call goes on (`0`: this call finished a pass over
    /// the entity's keys).
    pub cursor: u64,
}

/// The Redis backend.
#[derive(Clone)]
pub struct RedisBackend {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    ttl: HashMap<&'static str, Duration>,
    /// The write scripts of entities that are not captured.
    plain: Scripts,
    /// The same scripts with their change-feed part.
    captured: Scripts,
    /// Which entities' writes append to the change feed.
    capture: Option<std::sync::Arc<crate::feed::Capture>>,
    /// Keyed tokens for the index keys and claims of `#[phi]` fields.
    privacy: Option<std::sync::Arc<dl_privacy::Privacy>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("phi_token_key", &self.privacy.as_ref().map(|p| p.key_id()))
            .finish_non_exhaustive()
    }
}

/// The write scripts, built from one body each: with the change feed's
/// part ([`feed!`]) or without it ([`no_feed!`]).
#[derive(Clone)]
struct Scripts {
    write: redis::Script,
    insert: redis::Script,
    insert_many: redis::Script,
    patch: redis::Script,
    delete: redis::Script,
}

macro_rules! scripts {
    ($feed:ident) => {
        Scripts {
            write: redis::Script::new(concat!(declared_keys!(), $feed!(), write_body!())),
            insert: redis::Script::new(concat!(declared_keys!(), $feed!(), insert_body!())),
            insert_many: redis::Script::new(concat!(
                declared_keys!(),
                $feed!(),
                insert_many_body!()
            )),
            patch: redis::Script::new(concat!(declared_keys!(), $feed!(), patch_body!())),
            delete: redis::Script::new(concat!(declared_keys!(), $feed!(), delete_body!())),
        }
    };
}

impl Scripts {
    fn plain() -> Self {
        scripts!(no_feed)
    }

    fn captured() -> Self {
        scripts!(feed)
    }
}

/// The outcome of a write script.
enum Written {
    Ok,
    Retry,
    Missing,
    Unique(String),
}

impl RedisBackend {
    /// A backend over a connection manager (see `dl_connections::redis`),
    /// writing every key under `prefix` (`[a-z_][a-z0-9_]*`). `timeout` is
    /// the request timeout the connection enforces, reported in errors.
    ///
    /// # Errors
    /// `Invalid` for a bad prefix.
    pub fn new(conn: ConnectionManager, prefix: &str, timeout: Duration) -> Result<Self> {
        if !dl_models::is_valid_identifier(prefix) {
            return Err(Error::invalid(
                "redis",
                Some(prefix),
                "a key prefix must match [a-z_][a-z0-9_]* (at most 48 bytes)",
            ));
        }
        Ok(RedisBackend {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            ttl: HashMap::new(),
            plain: Scripts::plain(),
            captured: Scripts::captured(),
            capture: None,
            privacy: None,
        })
    }

    /// Removes what expired records of `schema` left behind: their index
    /// entries, their place in the key order and their unique claims
    /// (Redis expires a record's key, not the entries that point at it;
    /// reads skip them, but they would stay forever). Bounded: one call
    /// walks about `keys_per_call` of the entity's keys with `SCAN` (never
    /// `KEYS`), from `cursor` (0 to start), and says where to go on; each
    /// removal is checked and done in one script, so an entity written
    /// again meanwhile keeps its entries. Run it periodically for an
    /// entity with a TTL ([`RedisBackend::with_ttl`]).
    ///
    /// # Errors
    /// The store's fault.
    pub async fn sweep_expired(
        &self,
        schema: &'static EntitySchema,
        cursor: u64,
        keys_per_call: usize,
    ) -> Result<Sweep> {
        let op = Operation::Delete;
        let mut conn = self.conn.clone();
        let record_prefix = self.record_prefix(schema);
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(self.key(schema, &[":*"]))
            .arg("COUNT")
            .arg(keys_per_call.max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        let index_prefix = self.key(schema, &[":i:"]);
        let claims_prefix = self.key(schema, &[":u:"]);
        let order = self.keys_key(schema);
        let sweep_set = redis::Script::new(SWEEP_SET);
        let sweep_claims = redis::Script::new(SWEEP_CLAIMS);
        let mut done = Sweep {
            cursor: next,
            ..Sweep::default()
        };
        for key in keys {
            // An index set or the key order: its members, from ZSCAN's
            // member/score pairs. A claims hash: HSCAN's token/owner pairs
            // as they come.
            let (scan, script, pairs) = if key == order || key.starts_with(&index_prefix) {
                ("ZSCAN", &sweep_set, false)
            } else if key.starts_with(&claims_prefix) {
                ("HSCAN", &sweep_claims, true)
            } else {
                continue;
            };
            done.keys += 1;
            let mut at: u64 = 0;
            loop {
                let (n, page): (u64, Vec<String>) = redis::cmd(scan)
                    .arg(&key)
                    .arg(at)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.err(schema, op, e))?;
                // The members (or token/owner pairs), and the record each
                // one names, declared in KEYS.
                let (args, owners): (Vec<&String>, Vec<&String>) = if pairs {
                    (
                        page.iter().collect(),
                        page.iter().skip(1).step_by(2).collect(),
                    )
                } else {
                    let members: Vec<&String> = page.iter().step_by(2).collect();
                    (members.clone(), members)
                };
                if !args.is_empty() {
                    let mut call = script.prepare_invoke();
                    call.key(&key);
                    for m in owners {
                        call.key(format!("{record_prefix}{m}"));
                    }
                    let gone: usize = call
                        .arg(args)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|e| self.err(schema, op, e))?;
                    done.removed += gone;
                }
                if n == 0 {
                    break;
                }
                at = n;
            }
        }
        Ok(done)
    }

    /// Entities of `entity` (its store name) expire `ttl` after their last
    /// write. Index entries of expired entities are skipped when read;
    /// [`RedisBackend::sweep_expired`] removes them.
    #[must_use]
    pub fn with_ttl(mut self, entity: &'static str, ttl: Duration) -> Self {
        self.ttl.insert(entity, ttl);
        self
    }

    /// `<prefix>:<entity>` and then `parts`. Keys are built on every call,
    /// so by concatenation rather than through `format!`'s machinery.
    fn key(&self, schema: &EntitySchema, parts: &[&str]) -> String {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        let mut k = String::with_capacity(self.prefix.len() + 1 + schema.name.len() + len);
        k.push_str(&self.prefix);
        k.push(':');
        k.push_str(schema.name);
        for p in parts {
            k.push_str(p);
        }
        k
    }

    fn record_key(&self, schema: &EntitySchema, member: &str) -> String {
        self.key(schema, &[":r:", member])
    }

    /// The prefix of every record key (scripts append a member).
    fn record_prefix(&self, schema: &EntitySchema) -> String {
        self.key(schema, &[":r:"])
    }

    fn keys_key(&self, schema: &EntitySchema) -> String {
        self.key(schema, &[":k"])
    }

    /// The index key of field `i` holding `v`: `:i:<field>:<value>`, or
    /// for a `#[phi]` field `:i:<field>:<keyed token of the value>`, so no
    /// PHI value is ever a key name (equality lookups work the same).
    fn index_key(&self, schema: &EntitySchema, i: usize, v: &Value) -> String {
        let f = &schema.fields[i];
        self.key(
            schema,
            &[":i:", f.name, ":", &self.value_part(schema, i, v)],
        )
    }

    /// A value as it appears in a key name or a claim: as is, or for a
    /// `#[phi]` field its keyed token (`prepare` refuses such an entity
    /// when no key was given).
    fn value_part(&self, schema: &EntitySchema, i: usize, v: &Value) -> String {
        let f = &schema.fields[i];
        if !f.sensitivity.is_phi() {
            return value_token(v);
        }
        match &self.privacy {
            Some(p) => {
                let mut domain = String::with_capacity(schema.name.len() + 1 + f.name.len());
                domain.push_str(schema.name);
                domain.push('.');
                domain.push_str(f.name);
                p.token(&domain, value_token(v).as_bytes())
            }
            // Unreachable through a repository (`prepare` refuses); never
            // the value.
            None => "phi-without-key".to_owned(),
        }
    }

    /// Index keys and unique claims of `#[phi]` fields are keyed tokens
    /// made with `privacy` (a key from settings: `privacy.key`), never the
    /// values. Without it, an entity with an indexed `#[phi]` field is
    /// refused (`Unsupported`). The key must stay the same for a keyspace
    /// (tokens made under another key are not found).
    #[must_use]
    pub fn with_privacy(mut self, privacy: std::sync::Arc<dl_privacy::Privacy>) -> Self {
        self.privacy = Some(privacy);
        self
    }

    /// Writes of the entities `capture` names append one event each to
    /// this keyspace's change feed (a Redis Stream, `<prefix>:~feed`), in
    /// the same script as the write (see [`crate::feed`]).
    #[must_use]
    pub fn with_capture(mut self, capture: std::sync::Arc<crate::feed::Capture>) -> Self {
        self.capture = Some(capture);
        self
    }

    /// The scripts for writes of `schema`, and whether they capture.
    fn scripts_for(&self, schema: &EntitySchema) -> (&Scripts, bool) {
        if crate::feed::captured(self.capture.as_ref(), schema) {
            (&self.captured, true)
        } else {
            (&self.plain, false)
        }
    }

    /// The keys of this keyspace's change feed.
    fn feed_keys(&self) -> FeedKeys {
        FeedKeys::new(&self.prefix)
    }

    /// The change feed's part of a captured write's call (see [`feed!`]):
    /// its three keys, declared, and the six last arguments. `key_id` is
    /// the key's id (for `insert_many`, the items' ids as a JSON array).
    fn add_feed(
        &self,
        call: &mut redis::ScriptInvocation<'_>,
        schema: &EntitySchema,
        key_id: &str,
    ) {
        let keys = self.feed_keys();
        let seq = keys.seq(schema.name);
        call.key(&keys.stream).key(&keys.clock).key(&seq);
        call.arg(&keys.stream)
            .arg(&keys.clock)
            .arg(seq)
            .arg(schema.name)
            .arg(schema.shape_version())
            .arg(key_id);
    }

    /// The id of `key` in events (its JSON text: a Redis key is never PHI).
    fn key_id(&self, schema: &EntitySchema, key: &Value) -> String {
        self.capture
            .as_ref()
            .map_or_else(String::new, |c| c.key_id(schema, key))
    }

    /// Runs a script, declaring again, with what it asked for, as long as
    /// it answers that it needs keys it found in stored data (it wrote
    /// nothing then). The answer is the script's first other reply.
    async fn invoke_declaring(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        call: &mut redis::ScriptInvocation<'_>,
    ) -> Result<redis::Value> {
        let mut conn = self.conn.clone();
        for _ in 0..KEY_ROUNDS {
            let reply: redis::Value = call
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.err(schema, op, e))?;
            match asked_keys(&reply) {
                None => return Ok(reply),
                Some(keys) if keys.is_empty() => {
                    return Err(protocol(op, "a script asked for no keys"));
                }
                Some(keys) => {
                    for k in keys {
                        call.key(k);
                    }
                }
            }
        }
        Err(Error::Backend {
            store: Store::Redis,
            operation: op,
            message: format!(
                "gave up after {KEY_ROUNDS} calls: concurrent writes kept moving the keys the write touches"
            ),
            retryable: true,
            source: None,
        })
    }

    fn ttl_ms(&self, schema: &EntitySchema) -> u64 {
        self.ttl
            .get(schema.name)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn err(&self, schema: &'static EntitySchema, op: Operation, e: redis::RedisError) -> Error {
        // A key of the entity holds another type than this layout's: data
        // written by an older layout that its migration has not converted.
        let wrong_type =
            e.code() == Some("WRONGTYPE") || e.detail().is_some_and(|d| d.contains("WRONGTYPE"));
        if wrong_type {
            return Error::SchemaNotReady {
                store: Store::Redis,
                entity: schema.name,
                reason: "a key of this entity holds an older layout (records as hashes, or index entries as plain sets); run `data-layer migrate up --store redis`".into(),
            };
        }
        map_redis_error(op, self.timeout, e)
    }

    /// The index entries and unique claims a record owns.
    fn entries(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> (Vec<String>, Vec<(String, String, &'static str)>) {
        let mut ix = Vec::new();
        let mut claims = Vec::new();
        for (i, f) in schema.fields.iter().enumerate() {
            let v = record.get(i);
            if i == schema.key || !f.indexed || v.is_null() || f.ty == FieldType::Json {
                continue;
            }
            ix.push(self.index_key(schema, i, v));
            if f.unique {
                claims.push((
                    self.key(schema, &[":u:", f.name]),
                    self.value_part(schema, i, v),
                    f.name,
                ));
            }
        }
        (ix, claims)
    }

    async fn run_write(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        expected: &str,
        must_exist: bool,
        record: &Record,
        capture: bool,
    ) -> Result<Written> {
        let member = key_token(record.get(schema.key));
        let (ix, claims) = self.entries(schema, record);
        let ix_json = serde_json::to_string(&ix).unwrap_or_default();
        let claims_json = serde_json::to_string(&claims).unwrap_or_default();
        let (scripts, captured) = if capture {
            self.scripts_for(schema)
        } else {
            (&self.plain, false)
        };
        let mut call = scripts.write.prepare_invoke();
        call.key(self.record_key(schema, &member))
            .key(self.keys_key(schema));
        for k in ix.iter().chain(claims.iter().map(|(hash, _, _)| hash)) {
            call.key(k);
        }
        for k in owned_keys(expected) {
            call.key(k);
        }
        call.arg(expected)
            .arg(if must_exist { "1" } else { "0" })
            .arg(stored_value(
                &ix_json,
                &claims_json,
                &encode_record(schema, record),
            ))
            .arg(&ix_json)
            .arg(&claims_json)
            .arg(&member)
            .arg(self.record_prefix(schema))
            .arg(self.ttl_ms(schema));
        if captured {
            self.add_feed(
                &mut call,
                schema,
                &self.key_id(schema, record.get(schema.key)),
            );
        }
        let reply: Vec<String> =
            self.script_reply(op, self.invoke_declaring(schema, op, &mut call).await?)?;
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => Written::Ok,
            Some("retry") => Written::Retry,
            Some("missing") => Written::Missing,
            Some("unique") => Written::Unique(reply.get(1).cloned().unwrap_or_default()),
            Some("layout") => return Err(protocol(op, NOT_THIS_LAYOUT)),
            _ => return Err(protocol(op, "unexpected reply from the write script")),
        })
    }

    /// Reads a record and its stored text (the compare-and-set token).
    async fn read(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        key: &Value,
    ) -> Result<Option<(Record, String)>> {
        let mut conn = self.conn.clone();
        let d: Option<String> = redis::cmd("GET")
            .arg(self.record_key(schema, &key_token(key)))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        d.map(|d| Ok((decode_stored(schema, op, &d)?, d)))
            .transpose()
    }

    /// Reads records by key token, with one `MGET`; absent ones are `None`.
    async fn read_many(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        members: &[String],
    ) -> Result<Vec<Option<Record>>> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for m in members {
            mget.arg(self.record_key(schema, m));
        }
        let mut conn = self.conn.clone();
        let raw: Vec<Option<String>> = mget
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        raw.iter()
            .map(|d| {
                d.as_deref()
                    .map(|d| decode_stored(schema, op, d))
                    .transpose()
            })
            .collect()
    }

    /// A script's reply as strings.
    fn script_reply(&self, op: Operation, reply: redis::Value) -> Result<Vec<String>> {
        redis::FromRedisValue::from_redis_value(reply)
            .map_err(|_| protocol(op, "unexpected reply from a script"))
    }

    fn unique_conflict(schema: &'static EntitySchema, field: &str) -> Error {
        Error::Conflict {
            entity: schema.name,
            kind: ConflictKind::Unique {
                field: schema.field(field).map(|f| f.name),
            },
        }
    }

    /// The answer of the insert scripts: `ok`, `dup`, or `unique` and the
    /// field.
    fn inserted(schema: &'static EntitySchema, op: Operation, reply: &[String]) -> Result<()> {
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("dup") => Err(Error::Conflict {
                entity: schema.name,
                kind: ConflictKind::DuplicateKey,
            }),
            Some("unique") => Err(Self::unique_conflict(
                schema,
                reply.get(1).map_or("", String::as_str),
            )),
            _ => Err(protocol(op, "unexpected reply from an insert script")),
        }
    }

    /// Compare-and-set: `compute` gets the current record (if any) and
    /// returns the record to write (or an early answer); the write applies
    /// only if nobody wrote in between, else it starts over.
    async fn cas<F>(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        key: &Value,
        must_exist: bool,
        compute: F,
    ) -> Result<Option<Record>>
    where
        F: Fn(Option<&Record>) -> Result<Option<Record>> + Send + Sync,
    {
        for _ in 0..CAS_ATTEMPTS {
            let current = self.read(schema, op, key).await?;
            let Some(next) = compute(current.as_ref().map(|(r, _)| r))? else {
                return Ok(None);
            };
            let read = current.as_ref().map_or("", |(_, text)| text.as_str());
            match self
                .run_write(schema, op, read, must_exist, &next, true)
                .await?
            {
                Written::Ok => return Ok(Some(next)),
                Written::Retry => {}
                Written::Missing => return Ok(None),
                Written::Unique(f) => return Err(Self::unique_conflict(schema, &f)),
            }
        }
        Err(Error::Backend {
            store: Store::Redis,
            operation: op,
            message: format!("gave up after {CAS_ATTEMPTS} concurrent writes to the same entity"),
            retryable: true,
            source: None,
        })
    }

    /// An update by patch in one round trip (the `PATCH` script). `None`
    /// when the stored record needs the general path (read, patch in the
    /// client, compare-and-set): text the script cannot split exactly, or a
    /// version it cannot bump as text.
    async fn patch_in_place(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Option<Read>>> {
        let op = Operation::Update;
        let member = key_token(key);
        let (scripts, captured) = self.scripts_for(schema);
        let mut call = scripts.patch.prepare_invoke();
        call.key(self.record_key(schema, &member))
            .arg(&member)
            .arg(self.record_prefix(schema))
            .arg(self.ttl_ms(schema))
            .arg(schema.version.map_or("", |vi| schema.fields[vi].name))
            .arg(
                patch
                    .expected_version
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )
            .arg(patch.sets.len());
        for (i, v) in &patch.sets {
            let f = &schema.fields[*i];
            call.arg(f.name).arg(crate::json_record::value_text(v));
            if f.indexed && f.ty != FieldType::Json {
                let ikey = if v.is_null() {
                    String::new()
                } else {
                    let k = self.index_key(schema, *i, v);
                    call.key(&k);
                    k
                };
                call.arg(self.key(schema, &[":i:", f.name, ":"])).arg(ikey);
            } else {
                call.arg("").arg("");
            }
            if f.unique && f.indexed && f.ty != FieldType::Json {
                let hash = self.key(schema, &[":u:", f.name]);
                call.key(&hash);
                call.arg(hash).arg(self.value_part(schema, *i, v));
            } else {
                call.arg("").arg("");
            }
        }
        if captured {
            self.add_feed(&mut call, schema, &self.key_id(schema, key));
        }
        let reply = self.invoke_declaring(schema, op, &mut call).await?;
        // The quick path answers the new stored value itself; every other
        // answer is a status and its details.
        let reply: Vec<String> = match reply {
            redis::Value::BulkString(stored) => {
                let stored = String::from_utf8(stored)
                    .map_err(|_| protocol(op, "a stored value is not UTF-8"))?;
                return Ok(Some(Some(Read::Json(record_line(op, stored)?))));
            }
            other => redis::FromRedisValue::from_redis_value(other)
                .map_err(|_| protocol(op, "unexpected reply from the patch script"))?,
        };
        match reply.first().map(String::as_str) {
            Some("ok") => {
                let d = reply
                    .into_iter()
                    .nth(1)
                    .ok_or_else(|| protocol(op, "no record in the reply"))?;
                Ok(Some(Some(Read::Json(d))))
            }
            Some("missing") => Ok(Some(None)),
            Some("fallback") => Ok(None),
            Some("unique") => Err(Self::unique_conflict(
                schema,
                reply.get(1).map_or("", String::as_str),
            )),
            Some("version") => {
                let actual = reply
                    .get(1)
                    .and_then(|v| v.parse::<i64>().ok())
                    .ok_or_else(|| protocol(op, "unreadable version in the reply"))?;
                Err(Error::Conflict {
                    entity: schema.name,
                    kind: ConflictKind::VersionMismatch {
                        expected: patch.expected_version.unwrap_or_default(),
                        actual,
                    },
                })
            }
            _ => Err(protocol(op, "unexpected reply from the patch script")),
        }
    }

    /// The index a condition can be walked by, in key order: an `eq` on an
    /// indexed field that every match satisfies (the whole condition, or a
    /// term of a top-level `and`). The rest of the condition is checked on
    /// each record read.
    fn driving_index(&self, schema: &EntitySchema, cond: &Cond) -> Option<String> {
        let eq = |c: &Cond| match c {
            Cond::Cmp(i, CmpOp::Eq, v)
                if *i != schema.key
                    && schema.fields[*i].indexed
                    && schema.fields[*i].ty != FieldType::Json
                    && !v.is_null() =>
            {
                Some(self.index_key(schema, *i, v))
            }
            _ => None,
        };
        match cond {
            Cond::And(cs) => cs.iter().find_map(eq),
            c => eq(c),
        }
    }

    /// The keys a condition narrows to, from the index sets; `None` when it
    /// does not narrow (the whole key order is read and filtered).
    async fn candidates(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        cond: &Cond,
    ) -> Result<Option<BTreeSet<String>>> {
        let mut sets = Vec::new();
        collect_sets(self, schema, cond, &mut sets);
        let mut fetched: HashMap<String, BTreeSet<String>> = HashMap::new();
        if !sets.is_empty() {
            let mut pipe = redis::pipe();
            for s in &sets {
                pipe.cmd("ZRANGE").arg(s).arg(0).arg(-1);
            }
            let mut conn = self.conn.clone();
            let members: Vec<Vec<String>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(schema, op, e))?;
            fetched = sets
                .into_iter()
                .zip(members)
                .map(|(k, m)| (k, m.into_iter().collect()))
                .collect();
        }
        Ok(narrow(self, schema, cond, &fetched))
    }
}

/// Collects the index sets a condition reads.
fn collect_sets(b: &RedisBackend, schema: &EntitySchema, cond: &Cond, out: &mut Vec<String>) {
    match cond {
        Cond::Cmp(i, CmpOp::Eq, v) if *i != schema.key => out.push(b.index_key(schema, *i, v)),
        Cond::In(i, vs) if *i != schema.key => {
            out.extend(vs.iter().map(|v| b.index_key(schema, *i, v)));
        }
        Cond::And(cs) | Cond::Or(cs) => cs.iter().for_each(|c| collect_sets(b, schema, c, out)),
        _ => {}
    }
}

/// Evaluates a condition over index sets: `None` means "no narrowing".
fn narrow(
    b: &RedisBackend,
    schema: &EntitySchema,
    cond: &Cond,
    sets: &HashMap<String, BTreeSet<String>>,
) -> Option<BTreeSet<String>> {
    let set = |i: usize, v: &Value| {
        sets.get(&b.index_key(schema, i, v))
            .cloned()
            .unwrap_or_default()
    };
    match cond {
        Cond::Cmp(i, CmpOp::Eq, v) if *i == schema.key => Some(BTreeSet::from([key_token(v)])),
        Cond::In(i, vs) if *i == schema.key => Some(vs.iter().map(key_token).collect()),
        Cond::Cmp(i, CmpOp::Eq, v) => Some(set(*i, v)),
        Cond::In(i, vs) => Some(vs.iter().flat_map(|v| set(*i, v)).collect()),
        Cond::And(cs) => cs
            .iter()
            .filter_map(|c| narrow(b, schema, c, sets))
            .reduce(|a, c| a.intersection(&c).cloned().collect()),
        Cond::Or(cs) => {
            let mut all = BTreeSet::new();
            for c in cs {
                all.extend(narrow(b, schema, c, sets)?);
            }
            Some(all)
        }
        _ => None,
    }
}

/// The key bound a cursor put into the condition: `key > v` (ascending) or
/// `key < v` (descending), as `after_anchor` writes it for a key-only sort.
fn key_bound(schema: &EntitySchema, cond: &Cond) -> Option<(CmpOp, Value)> {
    match cond {
        Cond::Cmp(i, op @ (CmpOp::Gt | CmpOp::Lt), v) if *i == schema.key => Some((*op, v.clone())),
        Cond::And(cs) => cs.iter().find_map(|c| key_bound(schema, c)),
        Cond::Or(cs) => match cs.as_slice() {
            [one] => key_bound(schema, one),
            [first, Cond::IsNull(i)] if *i == schema.key => key_bound(schema, first),
            _ => None,
        },
        _ => None,
    }
}

/// A key as a member of the key order: byte order of the token is the
/// order of the keys (text as is, integers offset-binary hex, UUIDs
/// hyphenated lower-case).
fn key_token(v: &Value) -> String {
    match v {
        Value::Int(i) => format!("{:016x}", i.cast_unsigned() ^ 0x8000_0000_0000_0000),
        other => value_token(other),
    }
}

/// A value as part of an index key (exact: equal values, equal tokens).
fn value_token(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
        Value::Int(i) => i.to_string(),
        Value::Float(x) => format!("{:016x}", x.to_bits()),
        Value::Text(s) => s.clone(),
        Value::Date(d) => dl_models::date_text(d).as_str().to_owned(),
        Value::Timestamp(t) => t.timestamp_millis().to_string(),
        Value::Uuid(u) => u.hyphenated().to_string(),
        Value::Json(j) => j.to_string(),
    }
}

/// What a write stores: the index keys and the claims the record owns
/// (compact JSON, which never holds a raw newline), one line each, then
/// the record JSON.
fn stored_value(ix: &str, claims: &str, record: &str) -> String {
    let mut v = String::with_capacity(ix.len() + claims.len() + record.len() + 2);
    v.push_str(ix);
    v.push('\n');
    v.push_str(claims);
    v.push('\n');
    v.push_str(record);
    v
}

const NOT_THIS_LAYOUT: &str = "a stored value is not in this layout (two lines of index entries and claims, then the record); run `data-layer migrate up --store redis`";

/// Where the record line of a stored value starts (after the lines of
/// index entries and claims).
fn record_start(op: Operation, stored: &str) -> Result<usize> {
    stored
        .split_once('\n')
        .and_then(|(ix, rest)| rest.find('\n').map(|claims| ix.len() + claims + 2))
        .ok_or_else(|| protocol(op, NOT_THIS_LAYOUT))
}

/// The record line of a stored value, in place.
fn record_line(op: Operation, mut stored: String) -> Result<String> {
    let at = record_start(op, &stored)?;
    stored.drain(..at);
    Ok(stored)
}

/// The record of a stored value, decoded.
fn decode_stored(schema: &'static EntitySchema, op: Operation, stored: &str) -> Result<Record> {
    let at = record_start(op, stored)?;
    decode_record(schema, op, &stored[at..])
}

fn encode_record(schema: &EntitySchema, record: &Record) -> String {
    crate::json_record::encode(schema, record)
}

pub(crate) fn decode_record(
    schema: &'static EntitySchema,
    op: Operation,
    d: &str,
) -> Result<Record> {
    crate::json_record::decode_record(Store::Redis, schema, op, d)
}

fn protocol(op: Operation, why: &str) -> Error {
    Error::Backend {
        store: Store::Redis,
        operation: op,
        message: why.to_owned(),
        retryable: false,
        source: None,
    }
}

/// Maps a redis-rs error: timeouts and connection faults first (they decide
/// retry and breaker behaviour), then the driver's own retry advice.
fn map_redis_error(operation: Operation, timeout: Duration, e: redis::RedisError) -> Error {
    if e.is_timeout() {
        return Error::Timeout {
            store: Store::Redis,
            operation,
            after: timeout,
        };
    }
    if e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error() {
        return Error::Unavailable {
            store: Store::Redis,
            operation,
            reason: "connection to Redis failed".into(),
            // A refused connection sent nothing; a dropped one may have.
            sent: !e.is_connection_refusal(),
            source: Some(redis_summary(&e)),
        };
    }
    let retryable = match e.retry_method() {
        redis::RetryMethod::NoRetry => false,
        redis::RetryMethod::Reconnect
        | redis::RetryMethod::RetryImmediately
        | redis::RetryMethod::WaitAndRetry
        | redis::RetryMethod::AskRedirect
        | redis::RetryMethod::MovedRedirect
        | redis::RetryMethod::ReconnectFromInitialConnections
        | redis::RetryMethod::RefreshSlotsAndRetry => true,
        _ => false,
    };
    Error::Backend {
        store: Store::Redis,
        operation,
        message: format!("redis error ({:?})", e.kind()),
        retryable,
        source: Some(redis_summary(&e)),
    }
}

/// What is kept of a redis-rs error: its kind, the server's error code
/// (`WRONGTYPE`, `ERR`...) and an I/O kind; never the server's message (a
/// script error can quote the arguments it was given).
fn redis_summary(e: &redis::RedisError) -> crate::error::DriverError {
    let mut d = crate::error::DriverError::new("redis", format!("{:?}", e.kind()));
    if let Some(code) = e.code() {
        d = d.code(code);
    }
    d.io_from(e)
}

impl RedisBackend {
    pub(crate) fn store(&self) -> Store {
        Store::Redis
    }

    /// The change feed of this keyspace, when capture is on.
    pub(crate) fn feed_of_store(&self) -> Result<std::sync::Arc<dyn crate::feed::ChangeFeed>> {
        match &self.capture {
            Some(_) => Ok(std::sync::Arc::new(RedisFeed {
                conn: self.conn.clone(),
                keys: self.feed_keys(),
                timeout: self.timeout,
            })),
            None => Err(crate::feed::no_feed(
                Store::Redis,
                "no entity is captured: name entities in cdc.entities",
            )),
        }
    }

    pub(crate) async fn begin_transaction(&self) -> Result<Box<dyn crate::backend::Transaction>> {
        Err(crate::backend::no_transactions(
            Store::Redis,
            "Redis has no transaction that reads inside it (MULTI queues writes and answers at EXEC); each write here is already one atomic script",
        ))
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities {
            transactions: false,
            filter: FilterSupport::IndexedEquality,
            sort: false,
            prefix: false,
            atomic_batch: true,
            native_batch: true,
            ttl: true,
            change_feed: self.capture.is_some(),
            unique: true,
            ordered: true,
            native_cursor: false,
        }
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| map_redis_error(Operation::Ping, self.timeout, e))?;
        Ok(())
    }

    pub(crate) async fn prepare(&self, schema: &'static EntitySchema) -> Result<()> {
        // A key is a key name, in the key order and in every index entry:
        // a `#[phi]` key would put PHI in key names.
        let key = schema.key_field();
        if key.sensitivity.is_phi() {
            return Err(Error::unsupported(
                Store::Redis,
                Operation::Prepare,
                format!(
                    "the key `{}` of {} is #[phi], and a Redis key is a key name (visible to SCAN, MONITOR and the slowlog): use a surrogate key (a UUID) and index the PHI field",
                    key.name, schema.rust_name
                ),
            ));
        }
        if self.privacy.is_none()
            && let Some(f) = schema
                .fields
                .iter()
                .find(|f| f.indexed && f.sensitivity.is_phi() && f.ty != FieldType::Json)
        {
            return Err(Error::unsupported(
                Store::Redis,
                Operation::Prepare,
                format!(
                    "`{}` of {} is #[phi] and indexed: its Redis index keys are keyed tokens, and no key was given (set privacy.key / DL_PRIVACY__KEY)",
                    f.name, schema.rust_name
                ),
            ));
        }
        // Nothing to create; make sure the server answers and runs scripts.
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(schema, Operation::Prepare, e))?;
        self.check_phi_tokens(schema).await
    }

    /// Whether the entity has index entries or claims of `#[phi]` fields
    /// (made as keyed tokens).
    fn has_phi_entries(schema: &EntitySchema) -> bool {
        schema.fields.iter().enumerate().any(|(i, f)| {
            i != schema.key && f.indexed && f.sensitivity.is_phi() && f.ty != FieldType::Json
        })
    }

    /// The key that says under which privacy key the entity's PHI index
    /// entries were made (`:phi` → key id).
    fn phi_marker(&self, schema: &EntitySchema) -> String {
        self.key(schema, &[":phi"])
    }

    /// An entity with PHI index entries: they must have been made under
    /// this backend's key. A keyspace written before tokens (entries named
    /// by raw values), or under another key, answers `SchemaNotReady`
    /// until [`RedisBackend::rekey_phi_entries`] converts it (`data-layer
    /// migrate up --store redis` does, for the entities it knows). A new
    /// keyspace is marked with the key now.
    async fn check_phi_tokens(&self, schema: &'static EntitySchema) -> Result<()> {
        let (Some(privacy), true) = (&self.privacy, Self::has_phi_entries(schema)) else {
            return Ok(());
        };
        let op = Operation::Prepare;
        let mut conn = self.conn.clone();
        let marker: Option<String> = redis::cmd("GET")
            .arg(self.phi_marker(schema))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        let reason = match marker {
            Some(id) if id == privacy.key_id() => return Ok(()),
            Some(id) => format!(
                "its PHI index entries were made under privacy key `{id}`, not `{}`: re-key them",
                privacy.key_id()
            ),
            None => {
                let written: bool = redis::cmd("EXISTS")
                    .arg(self.keys_key(schema))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.err(schema, op, e))?;
                if !written {
                    let _: Option<String> = redis::cmd("SET")
                        .arg(self.phi_marker(schema))
                        .arg(privacy.key_id())
                        .arg("NX")
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| self.err(schema, op, e))?;
                    return Ok(());
                }
                "its PHI index entries are from before keyed tokens (named by values): convert them"
                    .to_owned()
            }
        };
        Err(Error::SchemaNotReady {
            store: Store::Redis,
            entity: schema.name,
            reason,
        })
    }

    /// Re-makes every record's index entries and unique claims of `schema`
    /// under this backend's privacy key: a keyspace written before keyed
    /// tokens (PHI values in key names), or under a key rotated out. Each
    /// record is rewritten by compare-and-set with the same record (its
    /// TTL kept), which moves its entries; then the entity is marked as
    /// made under this key. Records are walked with `SCAN`, never `KEYS`.
    /// Returns how many records were rewritten. Safe to run again.
    ///
    /// # Errors
    /// The store's fault; a record that does not decode (`Backend`, naming
    /// the field, never the value).
    pub async fn rekey_phi_entries(&self, schema: &'static EntitySchema) -> Result<usize> {
        let op = Operation::Update;
        if !Self::has_phi_entries(schema) {
            return Ok(0);
        }
        let Some(privacy) = &self.privacy else {
            return Err(Error::unsupported(
                Store::Redis,
                op,
                "re-keying PHI index entries needs privacy.key",
            ));
        };
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut rewritten = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.key(schema, &[":r:*"]))
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(schema, op, e))?;
            for key in keys {
                for _ in 0..CAS_ATTEMPTS {
                    let text: Option<String> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| self.err(schema, op, e))?;
                    let Some(text) = text else { break };
                    let at = record_start(op, &text)?;
                    let record = decode_record(schema, op, &text[at..])?;
                    match self
                        .run_write(schema, op, &text, true, &record, false)
                        .await?
                    {
                        Written::Ok => {
                            rewritten += 1;
                            break;
                        }
                        Written::Retry => {}
                        Written::Missing => break,
                        Written::Unique(field) => {
                            return Err(Error::Conflict {
                                entity: schema.name,
                                kind: ConflictKind::Unique {
                                    field: schema
                                        .fields
                                        .iter()
                                        .find(|f| f.name == field)
                                        .map(|f| f.name),
                                },
                            });
                        }
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let () = redis::cmd("SET")
            .arg(self.phi_marker(schema))
            .arg(privacy.key_id())
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        Ok(rewritten)
    }

    pub(crate) async fn insert(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> Result<()> {
        let op = Operation::Insert;
        let member = key_token(record.get(schema.key));
        let (ix, claims) = self.entries(schema, record);
        let (scripts, captured) = self.scripts_for(schema);
        let mut call = scripts.insert.prepare_invoke();
        let stored = stored_value(
            &serde_json::to_string(&ix).unwrap_or_default(),
            &serde_json::to_string(&claims).unwrap_or_default(),
            &encode_record(schema, record),
        );
        call.key(self.record_key(schema, &member))
            .key(self.keys_key(schema))
            .key(&ix)
            .arg(stored)
            .arg(&member)
            .arg(self.record_prefix(schema))
            .arg(self.ttl_ms(schema))
            .arg(ix.len())
            .arg(claims.len());
        for (hash, token, field) in &claims {
            call.key(hash);
            call.arg(token).arg(*field);
        }
        if captured {
            self.add_feed(
                &mut call,
                schema,
                &self.key_id(schema, record.get(schema.key)),
            );
        }
        let reply = self.invoke_declaring(schema, op, &mut call).await?;
        Self::inserted(schema, op, &self.script_reply(op, reply)?)
    }

    pub(crate) async fn insert_many(
        &self,
        schema: &'static EntitySchema,
        records: &[Record],
    ) -> Result<()> {
        let op = Operation::InsertMany;
        // Every key by its place in KEYS: the key order, each item's
        // record, then each index key and claims hash once.
        let mut keys: Vec<String> = Vec::with_capacity(1 + records.len() * 2);
        keys.push(self.keys_key(schema));
        let members: Vec<String> = records
            .iter()
            .map(|r| key_token(r.get(schema.key)))
            .collect();
        keys.extend(members.iter().map(|m| self.record_key(schema, m)));
        let mut place: HashMap<String, usize> = HashMap::new();
        let mut place_of = |keys: &mut Vec<String>, k: String| -> usize {
            *place.entry(k).or_insert_with_key(|k| {
                keys.push(k.clone());
                keys.len()
            })
        };
        let mut items = Vec::with_capacity(records.len());
        for (r, member) in records.iter().zip(members) {
            let (ix, claims) = self.entries(schema, r);
            let stored = stored_value(
                &serde_json::to_string(&ix).unwrap_or_default(),
                &serde_json::to_string(&claims).unwrap_or_default(),
                &encode_record(schema, r),
            );
            let ix_places: Vec<usize> = ix.into_iter().map(|k| place_of(&mut keys, k)).collect();
            let claim_places: Vec<(usize, String, &str)> = claims
                .into_iter()
                .map(|(hash, token, field)| (place_of(&mut keys, hash), token, field))
                .collect();
            items.push((member, stored, ix_places, claim_places));
        }
        let (scripts, captured) = self.scripts_for(schema);
        let mut call = scripts.insert_many.prepare_invoke();
        call.key(keys)
            .arg(self.record_prefix(schema))
            .arg(self.ttl_ms(schema))
            .arg(serde_json::to_string(&items).unwrap_or_default());
        if captured {
            let ids: Vec<String> = records
                .iter()
                .map(|r| self.key_id(schema, r.get(schema.key)))
                .collect();
            self.add_feed(
                &mut call,
                schema,
                &serde_json::to_string(&ids).unwrap_or_default(),
            );
        }
        let reply = self.invoke_declaring(schema, op, &mut call).await?;
        Self::inserted(schema, op, &self.script_reply(op, reply)?)
    }

    pub(crate) async fn get(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
    ) -> Result<Option<Record>> {
        self.get_read(schema, key)
            .await?
            .map(|read| read.into_record(Store::Redis, schema, Operation::Get))
            .transpose()
    }

    pub(crate) async fn get_read(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
    ) -> Result<Option<Read>> {
        let op = Operation::Get;
        let mut conn = self.conn.clone();
        let stored: Option<String> = redis::cmd("GET")
            .arg(self.record_key(schema, &key_token(key)))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        stored
            .map(|s| record_line(op, s).map(Read::Json))
            .transpose()
    }

    pub(crate) async fn get_many(
        &self,
        schema: &'static EntitySchema,
        keys: &[Value],
    ) -> Result<Vec<Record>> {
        let members: Vec<String> = keys.iter().map(key_token).collect();
        Ok(self
            .read_many(schema, Operation::GetMany, &members)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    pub(crate) async fn update(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Record>> {
        self.update_read(schema, key, patch)
            .await?
            .map(|read| read.into_record(Store::Redis, schema, Operation::Update))
            .transpose()
    }

    pub(crate) async fn update_read(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Read>> {
        if let Some(done) = self.patch_in_place(schema, key, patch).await? {
            return Ok(done);
        }
        let written = self.cas(
            schema,
            Operation::Update,
            key,
            true,
            |current| match current {
                None => Ok(None),
                Some(current) => patched(schema, current, patch).map(Some),
            },
        );
        Ok(written.await?.map(Read::Record))
    }

    pub(crate) async fn replace(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
        expected_version: Option<i64>,
    ) -> Result<Record> {
        let key = record.get(schema.key).clone();
        let written = self
            .cas(schema, Operation::Replace, &key, true, |current| {
                let current = current.ok_or(Error::NotFound {
                    entity: schema.name,
                })?;
                check_expected(schema, expected_version, current)?;
                Ok(Some(record.clone()))
            })
            .await?;
        written.ok_or(Error::NotFound {
            entity: schema.name,
        })
    }

    pub(crate) async fn upsert(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> Result<Record> {
        let key = record.get(schema.key).clone();
        let written = self
            .cas(schema, Operation::Upsert, &key, false, |current| {
                Ok(Some(bumped(
                    schema,
                    record.clone(),
                    current.and_then(|c| version_of(schema, c)),
                )))
            })
            .await?;
        written.ok_or_else(|| protocol(Operation::Upsert, "upsert wrote nothing"))
    }

    pub(crate) async fn delete(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        let op = Operation::Delete;
        let member = key_token(key);
        let (scripts, captured) = self.scripts_for(schema);
        let mut call = scripts.delete.prepare_invoke();
        call.key(self.record_key(schema, &member))
            .key(self.keys_key(schema))
            .arg(&member);
        if captured {
            self.add_feed(&mut call, schema, &self.key_id(schema, key));
        }
        let reply = self.invoke_declaring(schema, op, &mut call).await?;
        let n: i64 = redis::FromRedisValue::from_redis_value(reply)
            .map_err(|_| protocol(op, "unexpected reply from the delete script"))?;
        Ok(n == 1)
    }

    pub(crate) async fn list(
        &self,
        schema: &'static EntitySchema,
        request: &ListRequest,
    ) -> Result<Vec<Record>> {
        let op = Operation::List;
        let desc = request.sort.first() == Some(&(schema.key, Direction::Desc));
        let bound = key_bound(schema, &request.cond).map(|(_, v)| key_token(&v));
        let chunk = request.limit.clamp(16, 512);
        let mut out = Vec::with_capacity(request.limit);
        // An `eq` on an indexed field is walked in key order a page at a
        // time; other filters gather their candidate keys first.
        let driving = self.driving_index(schema, &request.cond);
        let candidates = match driving {
            Some(_) => None,
            None => self.candidates(schema, op, &request.cond).await?,
        };
        match candidates {
            Some(set) => {
                let ordered: Vec<String> = if desc {
                    set.into_iter()
                        .rev()
                        .filter(|m| bound.as_ref().is_none_or(|b| m < b))
                        .collect()
                } else {
                    set.into_iter()
                        .filter(|m| bound.as_ref().is_none_or(|b| m > b))
                        .collect()
                };
                for members in ordered.chunks(chunk) {
                    for r in self
                        .read_many(schema, op, members)
                        .await?
                        .into_iter()
                        .flatten()
                    {
                        if request.cond.matches(&r) {
                            out.push(r);
                            if out.len() == request.limit {
                                return Ok(out);
                            }
                        }
                    }
                }
            }
            None => {
                let walked = driving.unwrap_or_else(|| self.keys_key(schema));
                let mut from = bound;
                loop {
                    let mut conn = self.conn.clone();
                    let count = i64::try_from(chunk).unwrap_or(512);
                    let mut cmd = if desc {
                        let max = from
                            .as_ref()
                            .map_or_else(|| "+".to_owned(), |b| format!("({b}"));
                        let mut c = redis::cmd("ZREVRANGEBYLEX");
                        c.arg(&walked).arg(max).arg("-");
                        c
                    } else {
                        let min = from
                            .as_ref()
                            .map_or_else(|| "-".to_owned(), |b| format!("({b}"));
                        let mut c = redis::cmd("ZRANGEBYLEX");
                        c.arg(&walked).arg(min).arg("+");
                        c
                    };
                    cmd.arg("LIMIT").arg(0).arg(count);
                    let members: Vec<String> = cmd
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| self.err(schema, op, e))?;
                    let Some(last) = members.last().cloned() else {
                        return Ok(out);
                    };
                    for r in self
                        .read_many(schema, op, &members)
                        .await?
                        .into_iter()
                        .flatten()
                    {
                        if request.cond.matches(&r) {
                            out.push(r);
                            if out.len() == request.limit {
                                return Ok(out);
                            }
                        }
                    }
                    if members.len() < chunk {
                        return Ok(out);
                    }
                    from = Some(last);
                }
            }
        }
        Ok(out)
    }

    pub(crate) async fn count(&self, schema: &'static EntitySchema, cond: &Cond) -> Result<u64> {
        let op = Operation::Count;
        let expiring = self.ttl.contains_key(schema.name);
        // Keys named by the filter may not exist: then each is checked.
        let mut names_keys = false;
        cond.for_each_field(&mut |i, _| names_keys |= i == schema.key);
        let members: Vec<String> = match self.candidates(schema, op, cond).await? {
            // Index sets and the key order move with every write in one
            // script, so their sizes are exact unless entries expire.
            Some(set) if !expiring && !names_keys => return Ok(set.len() as u64),
            None if !expiring && cond.is_always() => {
                let mut conn = self.conn.clone();
                let n: u64 = redis::cmd("ZCARD")
                    .arg(self.keys_key(schema))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.err(schema, op, e))?;
                return Ok(n);
            }
            Some(set) => set.into_iter().collect(),
            None => {
                let mut conn = self.conn.clone();
                redis::cmd("ZRANGE")
                    .arg(self.keys_key(schema))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.err(schema, op, e))?
            }
        };
        let mut n = 0u64;
        for chunk in members.chunks(512) {
            n += self
                .read_many(schema, op, chunk)
                .await?
                .into_iter()
                .flatten()
                .filter(|r| cond.matches(r))
                .count() as u64;
        }
        Ok(n)
    }

    pub(crate) async fn exists(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.record_key(schema, &key_token(key)))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(schema, Operation::Exists, e))?;
        Ok(n == 1)
    }
}

crate::backend::seam!(RedisBackend, unpooled, |this, schema, request| {
    Request::Get(k) => this.get_read(schema, k).await.map(Response::Found),
    Request::Update(k, p) => this.update_read(schema, k, p).await.map(Response::Found),
});
