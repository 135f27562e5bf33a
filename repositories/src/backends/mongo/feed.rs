//! The change feed of a MongoDB database (see [`crate::feed`]): the outbox
//! collections the captured writes fill in their session transactions.
//!
//! - `dl_feed`: one document per event, `_id` its position;
//! - `dl_feed_clock`: one document (`_id: "clock"`), the last position
//!   given and the server's time of that commit;
//! - `dl_feed_keys`: `_id: "<entity>/<key id>"`, the key's last sequence;
//! - `dl_feed_consumers`: `_id` the consumer's name, its checkpoint
//!   (`position`) and when it last acknowledged (`acked_at`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use mongodb::Database;
use mongodb::bson::{Document, doc};

use crate::error::{Result, Store};
use crate::feed::{ChangeEvent, ChangeFeed, ConsumerStatus, FeedStatus};

use super::{FEED, FEED_CLOCK, FEED_CONSUMERS, map_feed_error};

/// The change feed of one MongoDB database.
#[derive(Clone)]
pub(super) struct MongoFeed {
    pub(super) db: Database,
    pub(super) timeout: Duration,
}

impl std::fmt::Debug for MongoFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoFeed")
            .field("database", &self.db.name())
            .finish_non_exhaustive()
    }
}

fn defect(what: &str) -> crate::error::Error {
    crate::feed::feed_defect(Store::Mongo, what)
}

fn event(d: &Document) -> Result<ChangeEvent> {
    let text = |k: &str| {
        d.get_str(k)
            .map(str::to_owned)
            .map_err(|_| defect("an event without a field of an event"))
    };
    ChangeEvent::from_row(
        Store::Mongo,
        d.get_i64("_id")
            .map_err(|_| defect("an event without a position"))?,
        text("entity")?,
        &text("op")?,
        text("key_id")?,
        d.get_i64("seq")
            .map_err(|_| defect("an event without a sequence"))?,
        d.get_datetime("committed_at")
            .ok()
            .and_then(|t| DateTime::from_timestamp_millis(t.timestamp_millis()))
            .ok_or_else(|| defect("an event without a time"))?,
        text("schema_version")?,
        d.get_str("after_image").ok().map(str::to_owned),
    )
}

fn as_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl MongoFeed {
    fn err(&self, e: mongodb::error::Error) -> crate::error::Error {
        map_feed_error(self.timeout, e)
    }

    fn coll(&self, name: &str) -> mongodb::Collection<Document> {
        self.db.collection(name)
    }

    /// The last position given (0: none yet).
    async fn last(&self) -> Result<u64> {
        let clock = self
            .coll(FEED_CLOCK)
            .find_one(doc! { "_id": "clock" })
            .max_time(self.timeout)
            .await
            .map_err(|e| self.err(e))?;
        Ok(clock
            .and_then(|c| c.get_i64("position").ok())
            .map_or(0, as_u64))
    }

    /// Every consumer's document, by name.
    async fn consumers(&self) -> Result<Vec<Document>> {
        self.coll(FEED_CONSUMERS)
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .max_time(self.timeout)
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))
    }

    async fn position_of(&self, consumer: &str) -> Result<u64> {
        crate::feed::check_consumer_name(consumer)?;
        let found = self
            .coll(FEED_CONSUMERS)
            .find_one(doc! { "_id": consumer })
            .max_time(self.timeout)
            .await
            .map_err(|e| self.err(e))?;
        found
            .and_then(|d| d.get_i64("position").ok())
            .map(as_u64)
            .ok_or_else(crate::feed::not_registered)
    }
}

fn pos(p: u64) -> i64 {
    i64::try_from(p).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl ChangeFeed for MongoFeed {
    fn store(&self) -> Store {
        Store::Mongo
    }

    async fn register(&self, consumer: &str, from_start: bool) -> Result<u64> {
        crate::feed::check_consumer_name(consumer)?;
        let start = if from_start { 0 } else { self.last().await? };
        self.coll(FEED_CONSUMERS)
            .update_one(
                doc! { "_id": consumer },
                doc! { "$setOnInsert": { "position": pos(start) } },
            )
            .upsert(true)
            .await
            .map_err(|e| self.err(e))?;
        self.position_of(consumer).await
    }

    async fn unregister(&self, consumer: &str) -> Result<bool> {
        crate::feed::check_consumer_name(consumer)?;
        let done = self
            .coll(FEED_CONSUMERS)
            .delete_one(doc! { "_id": consumer })
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.deleted_count > 0)
    }

    async fn read(&self, consumer: &str, limit: usize) -> Result<Vec<ChangeEvent>> {
        crate::feed::check_limit(limit)?;
        let after = self.position_of(consumer).await?;
        self.events_after(after, None, limit).await
    }

    async fn ack(&self, consumer: &str, position: u64) -> Result<()> {
        self.position_of(consumer).await?;
        // The clock only grows: a position at or below it now stays so.
        let last = self.last().await?;
        if position > last {
            return Err(crate::feed::past_the_end(position, last));
        }
        self.coll(FEED_CONSUMERS)
            .update_one(
                doc! { "_id": consumer },
                doc! { "$max": { "position": pos(position) }, "$currentDate": { "acked_at": true } },
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn events_after(
        &self,
        position: u64,
        entity: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChangeEvent>> {
        crate::feed::check_limit(limit)?;
        crate::feed::check_entity_name(entity)?;
        let mut filter = doc! { "_id": { "$gt": pos(position) } };
        if let Some(e) = entity {
            filter.insert("entity", e);
        }
        let docs: Vec<Document> = self
            .coll(FEED)
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .max_time(self.timeout)
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        docs.iter().map(event).collect()
    }

    async fn status(&self) -> Result<FeedStatus> {
        let events = self
            .coll(FEED)
            .count_documents(doc! {})
            .max_time(self.timeout)
            .await
            .map_err(|e| self.err(e))?;
        let last = self.last().await?;
        let docs = self.consumers().await?;
        let consumers: Vec<ConsumerStatus> = docs
            .iter()
            .map(|d| {
                let position = d.get_i64("position").map_or(0, as_u64);
                ConsumerStatus {
                    name: d.get_str("_id").unwrap_or_default().to_owned(),
                    position,
                    lag: last.saturating_sub(position),
                    acked_at: d
                        .get_datetime("acked_at")
                        .ok()
                        .and_then(|t| DateTime::from_timestamp_millis(t.timestamp_millis())),
                }
            })
            .collect();
        crate::feed::status_from(self, events, last, consumers).await
    }

    async fn prune(&self, retention: Duration) -> Result<u64> {
        let min: Option<u64> = self
            .consumers()
            .await?
            .iter()
            .filter_map(|d| d.get_i64("position").ok().map(as_u64))
            .min();
        let bound = match min {
            Some(m) => m,
            None => self.last().await?,
        };
        let cutoff =
            Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let done = self
            .coll(FEED)
            .delete_many(doc! {
                "_id": { "$lte": pos(bound) },
                "committed_at": { "$lte": mongodb::bson::DateTime::from_millis(cutoff.timestamp_millis()) },
            })
            .await
            .map_err(|e| self.err(e))?;
        Ok(done.deleted_count)
    }
}
