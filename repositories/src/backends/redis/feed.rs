//! The change feed of a Redis keyspace (see [`crate::feed`]).
//!
//! Keys, beside the entities' under `<prefix>:<entity>` (`~` is never in
//! an entity's name):
//! - `<prefix>:~feed` — a Stream of events, one entry per committed write
//!   of a captured entity, with the id `<position>-0`; fields `e` (entity),
//!   `o` (op), `k` (the key's id), `s` (the key's sequence), `t` (commit
//!   time, ms), `v` (shape version) and `a` (the record after the write;
//!   none for a delete). Appended by the write's own script;
//! - `<prefix>:~feed:clock` — the last position given (a counter: positions
//!   are never reused, also after pruning);
//! - `<prefix>:~feed:seq:<entity>` — a hash of key token → the key's last
//!   sequence number;
//! - `<prefix>:~feed:consumers` — a hash of `p:<consumer>` → its
//!   checkpoint and `t:<consumer>` → when it last acknowledged (ms).
//!
//! Registering, acknowledging and pruning are one script each, so a
//! checkpoint is checked against the clock and moved atomically.

use std::time::Duration;

use chrono::DateTime;
use redis::aio::ConnectionManager;

use crate::error::{Operation, Result, Store};
use crate::feed::{ChangeEvent, ChangeFeed, ConsumerStatus, FeedStatus};

use super::map_redis_error;

/// The keys of one keyspace's change feed.
#[derive(Debug, Clone)]
pub(super) struct FeedKeys {
    pub(super) stream: String,
    pub(super) clock: String,
    consumers: String,
    seq_prefix: String,
}

impl FeedKeys {
    pub(super) fn new(prefix: &str) -> Self {
        let base = format!("{prefix}:~feed");
        FeedKeys {
            clock: format!("{base}:clock"),
            consumers: format!("{base}:consumers"),
            seq_prefix: format!("{base}:seq:"),
            stream: base,
        }
    }

    /// The sequence hash of `entity`.
    pub(super) fn seq(&self, entity: &str) -> String {
        let mut k = String::with_capacity(self.seq_prefix.len() + entity.len());
        k.push_str(&self.seq_prefix);
        k.push_str(entity);
        k
    }
}

/// Registers a consumer unless it exists. KEYS: consumers, clock. ARGV:
/// name, `1` to start at the start of what is kept. Answers its position.
const REGISTER: &str = r"
local f = 'p:' .. ARGV[1]
local cur = redis.call('HGET', KEYS[1], f)
if cur then return cur end
local pos = '0'
if ARGV[2] ~= '1' then pos = redis.call('GET', KEYS[2]) or '0' end
redis.call('HSET', KEYS[1], f, pos)
return pos
";

/// Moves a checkpoint forward (never back), refusing a position past the
/// clock. KEYS: consumers, clock. ARGV: name, position.
const ACK: &str = r"
local f = 'p:' .. ARGV[1]
local cur = redis.call('HGET', KEYS[1], f)
if not cur then return {'missing'} end
local last = redis.call('GET', KEYS[2]) or '0'
if tonumber(ARGV[2]) > tonumber(last) then return {'past', last} end
if tonumber(ARGV[2]) > tonumber(cur) then redis.call('HSET', KEYS[1], f, ARGV[2]) end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 't:' .. ARGV[1],
  string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
return {'ok'}
";

/// Deletes, from the start of the stream, at most ARGV[2] events that
/// every consumer acknowledged and that committed at least ARGV[1] ms ago
/// (it stops at the first younger one). KEYS: stream, consumers, clock.
/// Answers how many went.
const PRUNE: &str = r"
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
local bound = tonumber(redis.call('GET', KEYS[3]) or '0')
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'p:' then
    local p = tonumber(all[i + 1])
    if p and p < bound then bound = p end
  end
end
if bound < 1 then return 0 end
local entries = redis.call('XRANGE', KEYS[1], '-', string.format('%d-0', bound), 'COUNT', ARGV[2])
local upto
for _, e in ipairs(entries) do
  local f, ms = e[2], nil
  for j = 1, #f, 2 do
    if f[j] == 't' then ms = tonumber(f[j + 1]) end
  end
  if not ms or ms > cutoff then break end
  upto = e[1]
end
if not upto then return 0 end
local p = tonumber(string.match(upto, '^(%d+)-'))
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-0', p + 1))
";

/// How many events one prune script looks at.
const PRUNE_STEP: usize = 1000;

/// The change feed of one Redis keyspace.
#[derive(Clone)]
pub(super) struct RedisFeed {
    pub(super) conn: ConnectionManager,
    pub(super) keys: FeedKeys,
    pub(super) timeout: Duration,
}

impl std::fmt::Debug for RedisFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFeed")
            .field("stream", &self.keys.stream)
            .finish_non_exhaustive()
    }
}

fn defect(what: &str) -> crate::error::Error {
    crate::feed::feed_defect(Store::Redis, what)
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The events of an `XRANGE` reply.
fn events(reply: redis::Value) -> Result<Vec<ChangeEvent>> {
    let redis::Value::Array(entries) = reply else {
        return Err(defect("a reply that is not a list of entries"));
    };
    entries.iter().map(event).collect()
}

fn event(entry: &redis::Value) -> Result<ChangeEvent> {
    let redis::Value::Array(parts) = entry else {
        return Err(defect("an entry that is not an id and fields"));
    };
    let (Some(id), Some(fields)) = (parts.first().and_then(text), parts.get(1)) else {
        return Err(defect("an entry that is not an id and fields"));
    };
    let position: i64 = id
        .split_once('-')
        .and_then(|(p, _)| p.parse().ok())
        .ok_or_else(|| defect("an entry whose id is not a position"))?;
    let pairs: Vec<(String, String)> = match fields {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| Some((text(c.first()?)?, text(c.get(1)?)?)))
            .collect(),
        redis::Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => return Err(defect("an entry without fields")),
    };
    let get = |name: &str| {
        pairs
            .iter()
            .position(|(k, _)| k == name)
            .map(|i| pairs[i].1.clone())
    };
    let need = |v: Option<String>| v.ok_or_else(|| defect("an entry without a field of an event"));
    let entity = need(get("e"))?;
    let op = need(get("o"))?;
    let key_id = need(get("k"))?;
    let seq: i64 = need(get("s"))?
        .parse()
        .map_err(|_| defect("an event with a bad sequence"))?;
    let ms: i64 = need(get("t"))?
        .parse()
        .map_err(|_| defect("an event with a bad time"))?;
    let version = need(get("v"))?;
    let after = get("a");
    ChangeEvent::from_row(
        Store::Redis,
        position,
        entity,
        &op,
        key_id,
        seq,
        DateTime::from_timestamp_millis(ms).ok_or_else(|| defect("an event with a bad time"))?,
        version,
        after,
    )
}

impl RedisFeed {
    fn err(&self, e: redis::RedisError) -> crate::error::Error {
        map_redis_error(Operation::Feed, self.timeout, e)
    }

    async fn position_of(&self, consumer: &str) -> Result<u64> {
        crate::feed::check_consumer_name(consumer)?;
        let mut conn = self.conn.clone();
        let pos: Option<u64> = redis::cmd("HGET")
            .arg(&self.keys.consumers)
            .arg(format!("p:{consumer}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        pos.ok_or_else(crate::feed::not_registered)
    }

    /// At most `count` entries from position `from` on (inclusive).
    async fn range(&self, from: u64, count: usize) -> Result<Vec<ChangeEvent>> {
        let mut conn = self.conn.clone();
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(&self.keys.stream)
            .arg(format!("{from}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        events(reply)
    }
}

#[async_trait::async_trait]
impl ChangeFeed for RedisFeed {
    fn store(&self) -> Store {
        Store::Redis
    }

    async fn register(&self, consumer: &str, from_start: bool) -> Result<u64> {
        crate::feed::check_consumer_name(consumer)?;
        let mut conn = self.conn.clone();
        redis::Script::new(REGISTER)
            .key(&self.keys.consumers)
            .key(&self.keys.clock)
            .arg(consumer)
            .arg(if from_start { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    async fn unregister(&self, consumer: &str) -> Result<bool> {
        crate::feed::check_consumer_name(consumer)?;
        let mut conn = self.conn.clone();
        let (gone, _): (u64, u64) = redis::pipe()
            .cmd("HDEL")
            .arg(&self.keys.consumers)
            .arg(format!("p:{consumer}"))
            .cmd("HDEL")
            .arg(&self.keys.consumers)
            .arg(format!("t:{consumer}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(gone > 0)
    }

    async fn read(&self, consumer: &str, limit: usize) -> Result<Vec<ChangeEvent>> {
        crate::feed::check_limit(limit)?;
        let after = self.position_of(consumer).await?;
        self.range(after.saturating_add(1), limit).await
    }

    async fn ack(&self, consumer: &str, position: u64) -> Result<()> {
        crate::feed::check_consumer_name(consumer)?;
        let mut conn = self.conn.clone();
        let reply: Vec<String> = redis::Script::new(ACK)
            .key(&self.keys.consumers)
            .key(&self.keys.clock)
            .arg(consumer)
            .arg(position)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("missing") => Err(crate::feed::not_registered()),
            Some("past") => Err(crate::feed::past_the_end(
                position,
                reply.get(1).and_then(|l| l.parse().ok()).unwrap_or(0),
            )),
            _ => Err(defect("an unexpected answer to an acknowledgement")),
        }
    }

    async fn events_after(
        &self,
        position: u64,
        entity: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChangeEvent>> {
        crate::feed::check_limit(limit)?;
        crate::feed::check_entity_name(entity)?;
        let Some(entity) = entity else {
            return self.range(position.saturating_add(1), limit).await;
        };
        // One entity: pages of the whole stream, filtered, until `limit`
        // events or the end (bounded by what the feed keeps).
        let page = limit.max(256);
        let mut out = Vec::new();
        let mut from = position.saturating_add(1);
        loop {
            let batch = self.range(from, page).await?;
            let full = batch.len() == page;
            let Some(last) = batch.last().map(|e| e.position) else {
                return Ok(out);
            };
            for e in batch {
                if e.entity == entity {
                    out.push(e);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            if !full {
                return Ok(out);
            }
            from = last.saturating_add(1);
        }
    }

    async fn status(&self) -> Result<FeedStatus> {
        let mut conn = self.conn.clone();
        let (events, last, all): (u64, Option<u64>, Vec<String>) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.keys.stream)
            .cmd("GET")
            .arg(&self.keys.clock)
            .cmd("HGETALL")
            .arg(&self.keys.consumers)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        let last = last.unwrap_or(0);
        let mut consumers: Vec<ConsumerStatus> = Vec::new();
        let mut acked: Vec<(String, i64)> = Vec::new();
        for pair in all.chunks(2) {
            let [field, value] = pair else { continue };
            if let Some(name) = field.strip_prefix("p:") {
                let position: u64 = value.parse().unwrap_or(0);
                consumers.push(ConsumerStatus {
                    name: name.to_owned(),
                    position,
                    lag: last.saturating_sub(position),
                    acked_at: None,
                });
            } else if let Some(name) = field.strip_prefix("t:") {
                acked.push((name.to_owned(), value.parse().unwrap_or(0)));
            }
        }
        for (name, ms) in acked {
            if let Some(c) = consumers.iter_mut().find(|c| c.name == name) {
                c.acked_at = DateTime::from_timestamp_millis(ms);
            }
        }
        crate::feed::status_from(self, events, last, consumers).await
    }

    async fn prune(&self, retention: Duration) -> Result<u64> {
        let keep_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let script = redis::Script::new(PRUNE);
        let mut conn = self.conn.clone();
        let mut removed = 0;
        // Bounded: a million events a call at most; the next call goes on.
        for _ in 0..1000 {
            let gone: u64 = script
                .key(&self.keys.stream)
                .key(&self.keys.consumers)
                .key(&self.keys.clock)
                .arg(keep_ms)
                .arg(PRUNE_STEP)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.err(e))?;
            removed += gone;
            if gone < PRUNE_STEP as u64 {
                break;
            }
        }
        Ok(removed)
    }
}
