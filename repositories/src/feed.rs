//! The change feed: every committed write of a captured entity becomes
//! exactly one [`ChangeEvent`], written atomically with the write, in the
//! store that holds the entity; named consumers read it in commit order
//! from a durable checkpoint.
//!
//! Capture is switched on per entity ([`Capture`], from `cdc.entities`);
//! each store writes its events in one place, inside the write itself:
//! - SQLite: the write and its event in one `BEGIN IMMEDIATE … COMMIT`
//!   batch (one call to the database); positions are the outbox's
//!   `AUTOINCREMENT` ids, in commit order because SQLite has one writer;
//! - PostgreSQL: one statement whose CTEs make the write, bump the key's
//!   sequence, take the next positions from a one-row clock (its row lock
//!   orders commits) and insert the events; inside a transaction the
//!   events are stamped with their positions just before `COMMIT`;
//! - Redis: the write's own Lua script appends the event to a Stream
//!   (`<prefix>:~feed`) before it writes anything else; positions from a
//!   counter, in commit order because Redis runs one script at a time;
//! - MongoDB: the events are written to outbox collections in the write's
//!   session transaction (one of its own outside a transaction), just
//!   before `COMMIT`; positions from a clock document whose write lock is
//!   held to the commit.
//!
//! The outbox tables and collections (`dl_feed`, `dl_feed_keys`,
//! `dl_feed_consumers`, `dl_feed_clock`) are made by a migration script
//! like every other table (see `migrations/<store>/2_change_feed.sql`, or
//! `.json` for MongoDB). ScyllaDB keeps no feed (`Unsupported`).
//!
//! What an event holds: the entity, the operation, the key (its keyed
//! token when the key field is PHI: the outbox's own columns hold no PHI
//! in readable form), the per-key sequence, the commit time, the entity's
//! [shape version](dl_models::EntitySchema::shape_version) and the record
//! after the write (the entity's JSON form; none for a delete). The record
//! stays in the primary store, which holds it anyway; `Debug` of an event
//! never shows it, nor a key.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dl_models::{EntitySchema, Value};
use dl_privacy::Privacy;

use crate::error::{Error, Operation, Result, Store};

/// The longest consumer name, in bytes.
pub const MAX_CONSUMER_NAME: usize = 64;

/// The most events one read returns.
pub const MAX_BATCH: usize = 10_000;

/// Which entities a store captures into its change feed, and the keys that
/// make the tokens of PHI keys. An entity not named pays nothing.
#[derive(Clone)]
pub struct Capture {
    entities: BTreeSet<String>,
    privacy: Arc<Privacy>,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture")
            .field("entities", &self.entities)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Captures the entities named (store names, as in `cdc.entities`).
    /// Names are checked by the settings and again here.
    ///
    /// # Errors
    /// `Invalid` for a name that is not a store name (`[a-z_][a-z0-9_]*`).
    pub fn new<I, S>(entities: I, privacy: Arc<Privacy>) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut set = BTreeSet::new();
        for e in entities {
            let e = e.into();
            if !dl_models::is_valid_identifier(&e) {
                return Err(Error::invalid(
                    "cdc",
                    Some(&e),
                    "an entity in cdc.entities must be a store name ([a-z_][a-z0-9_]*, at most 48 bytes)",
                ));
            }
            set.insert(e);
        }
        Ok(Capture {
            entities: set,
            privacy,
        })
    }

    /// Whether writes of `schema` are captured.
    #[must_use]
    pub fn captures(&self, schema: &EntitySchema) -> bool {
        self.entities.contains(schema.name)
    }

    /// The entities captured.
    pub fn entities(&self) -> impl Iterator<Item = &str> {
        self.entities.iter().map(String::as_str)
    }

    /// How an event names `key` of `schema` (the `key_id` column): the
    /// key's JSON text, or its keyed token (`tok:<token>`) when the key
    /// field is PHI.
    #[must_use]
    pub fn key_id(&self, schema: &EntitySchema, key: &Value) -> String {
        let text = crate::json_record::value_text(key);
        if schema.key_field().sensitivity.is_phi() {
            let domain = format!("feed.{}", schema.name);
            format!("tok:{}", self.privacy.token(&domain, text.as_bytes()))
        } else {
            text
        }
    }
}

/// What a write did to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// The record was inserted (insert, insert_many, an upsert of a new key).
    Created,
    /// The record was changed (update, replace, an upsert of an existing key).
    Updated,
    /// The record was deleted.
    Deleted,
}

impl ChangeOp {
    /// The name stored in the outbox (`created`, `updated`, `deleted`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Created => "created",
            ChangeOp::Updated => "updated",
            ChangeOp::Deleted => "deleted",
        }
    }

    pub(crate) fn parse(store: Store, text: &str) -> Result<Self> {
        match text {
            "created" => Ok(ChangeOp::Created),
            "updated" => Ok(ChangeOp::Updated),
            "deleted" => Ok(ChangeOp::Deleted),
            _ => Err(feed_defect(store, "an event with an unknown operation")),
        }
    }
}

impl fmt::Display for ChangeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key an event is about.
#[derive(Clone, PartialEq)]
pub enum EventKey {
    /// The key's value (as JSON: a string, a number), when the key field
    /// is not PHI.
    Plain(serde_json::Value),
    /// The key's keyed token, when the key field is PHI: the same token
    /// for the same key in every event, so consumers can match events of
    /// one record (and a cache can drop its entry) without the value.
    Token(String),
}

impl EventKey {
    fn from_id(id: &str) -> Self {
        match id.strip_prefix("tok:") {
            Some(t) => EventKey::Token(t.to_owned()),
            None => EventKey::Plain(serde_json::from_str(id).unwrap_or(serde_json::Value::Null)),
        }
    }
}

impl fmt::Debug for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKey::Plain(_) => f.write_str("Plain(<not shown>)"),
            EventKey::Token(t) => f.debug_tuple("Token").field(t).finish(),
        }
    }
}

/// One committed write of one record, as the feed holds it.
#[derive(Clone)]
pub struct ChangeEvent {
    /// Where it is in the store's feed: increasing in commit order,
    /// without gaps between events of one store.
    pub position: u64,
    /// The entity (store name).
    pub entity: String,
    /// What the write did.
    pub op: ChangeOp,
    /// The key, as stored in the outbox (`key_id`).
    key_id: String,
    /// The key's sequence number: 1 for its first event, one more for
    /// each next (never reused, also after a delete).
    pub seq: u64,
    /// When the write committed (the database's clock).
    pub committed_at: DateTime<Utc>,
    /// The entity's shape version when the event was written.
    pub schema_version: String,
    /// The record after the write, as JSON (none for a delete).
    after: Option<String>,
}

impl ChangeEvent {
    /// A stable, unique id: `<entity>/<key id>/<seq>` with the key's id
    /// hashed so the id shows no value. The same on every delivery.
    #[must_use]
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.entity, self.key_token(), self.seq)
    }

    /// The key.
    #[must_use]
    pub fn key(&self) -> EventKey {
        EventKey::from_id(&self.key_id)
    }

    /// A printable name of the key that shows no value: the token of a PHI
    /// key, else a short hash of the key (the same for the same key).
    #[must_use]
    pub fn key_token(&self) -> String {
        match self.key_id.strip_prefix("tok:") {
            Some(t) => t.to_owned(),
            None => {
                use sha2::Digest as _;
                let d = sha2::Sha256::digest(self.key_id.as_bytes());
                let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("k.{hex}")
            }
        }
    }

    /// The record after the write as JSON text in the entity's serde form
    /// (none for a delete). It may hold PHI: never log it.
    #[must_use]
    pub fn after_json(&self) -> Option<&str> {
        self.after.as_deref()
    }

    /// The record after the write, as `T` (none for a delete).
    ///
    /// # Errors
    /// `Backend` when the record does not read as `T` (another shape: see
    /// [`ChangeEvent::schema_version`]); the message names no value.
    pub fn after<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        let Some(text) = &self.after else {
            return Ok(None);
        };
        serde_json::from_str(text).map(Some).map_err(|e| Error::Backend {
            store: Store::Memory,
            operation: Operation::Feed,
            message: format!(
                "a change event's record of {} does not read as the type asked for (line {}, column {})",
                self.entity,
                e.line(),
                e.column()
            ),
            retryable: false,
            source: None,
        })
    }

    /// An event as a feed holds it: `key_id` as [`Capture::key_id`]
    /// makes it (the key's JSON text, or `tok:<token>`), `after` the
    /// record's JSON text (none for a delete). For consumers' tests and
    /// benchmarks; a feed reads its events from the store.
    #[must_use]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        position: u64,
        entity: impl Into<String>,
        op: ChangeOp,
        key_id: impl Into<String>,
        seq: u64,
        committed_at: DateTime<Utc>,
        schema_version: impl Into<String>,
        after: Option<String>,
    ) -> Self {
        ChangeEvent {
            position,
            entity: entity.into(),
            op,
            key_id: key_id.into(),
            seq,
            committed_at,
            schema_version: schema_version.into(),
            after,
        }
    }

    /// An event as read from a store's outbox.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_row(
        store: Store,
        position: i64,
        entity: String,
        op: &str,
        key_id: String,
        seq: i64,
        committed_at: DateTime<Utc>,
        schema_version: String,
        after: Option<String>,
    ) -> Result<Self> {
        Ok(ChangeEvent {
            position: u64::try_from(position)
                .map_err(|_| feed_defect(store, "an event with a negative position"))?,
            entity,
            op: ChangeOp::parse(store, op)?,
            key_id,
            seq: u64::try_from(seq)
                .map_err(|_| feed_defect(store, "an event with a negative sequence"))?,
            committed_at,
            schema_version,
            after,
        })
    }
}

impl fmt::Debug for ChangeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeEvent")
            .field("position", &self.position)
            .field("entity", &self.entity)
            .field("op", &self.op)
            .field("key", &self.key_token())
            .field("seq", &self.seq)
            .field("committed_at", &self.committed_at)
            .field("schema_version", &self.schema_version)
            .field(
                "after",
                &self.after.as_ref().map(|a| format!("<{} bytes>", a.len())),
            )
            .finish()
    }
}

/// One registered consumer's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerStatus {
    /// Its name.
    pub name: String,
    /// The last position it acknowledged (0: none yet).
    pub position: u64,
    /// Events after it.
    pub lag: u64,
    /// When it last acknowledged (none: never).
    pub acked_at: Option<DateTime<Utc>>,
}

/// A store's feed: its size, its consumers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FeedStatus {
    /// Which store.
    #[serde(serialize_with = "store_name")]
    pub store: Store,
    /// Events kept.
    pub events: u64,
    /// The last position written (0: none yet).
    pub last_position: u64,
    /// How long the oldest event some consumer has not acknowledged has
    /// waited (none: every consumer is up to date, or none is registered).
    pub oldest_unacked_age: Option<Duration>,
    /// The registered consumers, by name.
    pub consumers: Vec<ConsumerStatus>,
}

fn store_name<S: serde::Serializer>(store: &Store, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(store)
}

/// A store's change feed. Reads are in commit order; a consumer's
/// checkpoint is durable in the store.
#[async_trait]
pub trait ChangeFeed: Send + Sync + fmt::Debug {
    /// Which store.
    fn store(&self) -> Store;

    /// Registers a consumer (a no-op when it exists): it starts after the
    /// last event written now, or at the start of what is kept when
    /// `from_start`. Returns its position.
    ///
    /// # Errors
    /// `Invalid` for a bad name; the store's fault.
    async fn register(&self, consumer: &str, from_start: bool) -> Result<u64>;

    /// Removes a consumer (its unacknowledged events may then be pruned).
    /// Whether it existed.
    ///
    /// # Errors
    /// `Invalid` for a bad name; the store's fault.
    async fn unregister(&self, consumer: &str) -> Result<bool>;

    /// At most `limit` events after `consumer`'s checkpoint, in commit
    /// order. The same events again until acknowledged. It returns what
    /// [`ChangeFeed::events_after`] returns for the checkpoint and no
    /// entity (a consumer may read ahead that way).
    ///
    /// # Errors
    /// `Invalid` for a bad name, a limit of 0 or above [`MAX_BATCH`];
    /// `NotFound` for a consumer not registered; the store's fault.
    async fn read(&self, consumer: &str, limit: usize) -> Result<Vec<ChangeEvent>>;

    /// Moves `consumer`'s checkpoint to `position` (every event up to it
    /// handled). Never moves it back (an older position is a no-op).
    ///
    /// # Errors
    /// `Invalid` for a position past the feed's last event; `NotFound`
    /// for a consumer not registered; the store's fault. Nothing is
    /// written then.
    async fn ack(&self, consumer: &str, position: u64) -> Result<()>;

    /// At most `limit` events after `position`, of one entity or all,
    /// in commit order, without a consumer (what `data-layer feed tail`
    /// prints).
    ///
    /// # Errors
    /// `Invalid` for a bad limit or entity name; the store's fault.
    async fn events_after(
        &self,
        position: u64,
        entity: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChangeEvent>>;

    /// The feed's size and its consumers' lag.
    ///
    /// # Errors
    /// The store's fault.
    async fn status(&self) -> Result<FeedStatus>;

    /// Deletes the events every registered consumer has acknowledged and
    /// that are older than `retention`. Returns how many.
    ///
    /// # Errors
    /// The store's fault.
    async fn prune(&self, retention: Duration) -> Result<u64>;
}

/// Checks a consumer name: `[a-z0-9][a-z0-9_.-]*`, at most
/// [`MAX_CONSUMER_NAME`] bytes (it becomes part of keys and rows).
///
/// # Errors
/// `Invalid`, naming the rule (not echoing more than 64 characters).
pub fn check_consumer_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CONSUMER_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-' || c == b'.'
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "feed",
            Some(name),
            "a consumer name must match [a-z0-9][a-z0-9_.-]* (at most 64 bytes)",
        ))
    }
}

/// Checks a read's limit.
pub(crate) fn check_limit(limit: usize) -> Result<()> {
    if limit == 0 || limit > MAX_BATCH {
        return Err(Error::invalid(
            "feed",
            None,
            format!("a feed read takes 1 to {MAX_BATCH} events"),
        ));
    }
    Ok(())
}

/// Checks an entity name given to a feed read.
pub(crate) fn check_entity_name(entity: Option<&str>) -> Result<()> {
    match entity {
        Some(e) if !dl_models::is_valid_identifier(e) => Err(Error::invalid(
            "feed",
            Some(e),
            "an entity must be a store name ([a-z_][a-z0-9_]*, at most 48 bytes)",
        )),
        _ => Ok(()),
    }
}

/// The answer to an ack past the feed's end.
pub(crate) fn past_the_end(position: u64, last: u64) -> Error {
    Error::invalid(
        "feed",
        None,
        format!(
            "position {position} is past the feed's last event ({last}): a checkpoint can only name an event that was read"
        ),
    )
}

/// The answer for a consumer that is not registered.
pub(crate) fn not_registered() -> Error {
    Error::NotFound { entity: "consumer" }
}

/// A feed's status from its counts and consumers (sorted by name): the
/// oldest unacknowledged event is the first after the slowest consumer.
///
/// # Errors
/// The store's fault reading that event.
pub(crate) async fn status_from(
    feed: &dyn ChangeFeed,
    events: u64,
    last: u64,
    mut consumers: Vec<ConsumerStatus>,
) -> Result<FeedStatus> {
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    let oldest = match consumers.iter().map(|c| c.position).min() {
        Some(min) => feed
            .events_after(min, None, 1)
            .await?
            .first()
            .map(|e| e.committed_at),
        None => None,
    };
    let now = Utc::now();
    Ok(FeedStatus {
        store: feed.store(),
        events,
        last_position: last,
        oldest_unacked_age: oldest.map(|t| (now - t).to_std().unwrap_or_default()),
        consumers,
    })
}

/// A feed row that cannot be read: a defect or a foreign writer.
pub(crate) fn feed_defect(store: Store, what: &str) -> Error {
    Error::Backend {
        store,
        operation: Operation::Feed,
        message: format!("the change feed holds {what}"),
        retryable: false,
        source: None,
    }
}

/// A captured entity on a store whose feed table is missing.
pub(crate) fn feed_not_ready(store: Store, schema: &'static EntitySchema, table: &str) -> Error {
    Error::SchemaNotReady {
        store,
        entity: schema.name,
        reason: format!(
            "{} is captured (cdc.entities) but the change feed's table {table} does not exist: \
             run the migration that makes it (2_change_feed)",
            schema.name
        ),
    }
}

/// The precise answer of a store without a change feed.
pub(crate) fn no_feed(store: Store, why: &str) -> Error {
    Error::unsupported(store, Operation::Feed, why.to_owned())
}

/// The answer of a store with a feed that has no capture for `schema`'s
/// entity: nothing, the write is not captured (a helper for backends).
#[must_use]
pub(crate) fn captured(capture: Option<&Arc<Capture>>, schema: &EntitySchema) -> bool {
    capture.is_some_and(|c| c.captures(schema))
}

/// A store's feed, for the data layer's facade: reading after a consumer's
/// checkpoint and acknowledging as one handle.
#[derive(Debug, Clone)]
pub struct Consumer {
    feed: Arc<dyn ChangeFeed>,
    name: String,
}

impl Consumer {
    /// Registers `name` on `feed` (starting after the events written now,
    /// or from the start of what is kept) and returns its handle.
    ///
    /// # Errors
    /// As [`ChangeFeed::register`].
    pub async fn open(feed: Arc<dyn ChangeFeed>, name: &str, from_start: bool) -> Result<Self> {
        feed.register(name, from_start).await?;
        Ok(Consumer {
            feed,
            name: name.to_owned(),
        })
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next batch after the checkpoint (at most `limit`).
    ///
    /// # Errors
    /// As [`ChangeFeed::read`].
    pub async fn next_batch(&self, limit: usize) -> Result<Vec<ChangeEvent>> {
        self.feed.read(&self.name, limit).await
    }

    /// Acknowledges every event up to and including `last`.
    ///
    /// # Errors
    /// As [`ChangeFeed::ack`].
    pub async fn ack(&self, last: &ChangeEvent) -> Result<()> {
        self.feed.ack(&self.name, last.position).await
    }

    /// The feed it reads.
    #[must_use]
    pub fn feed(&self) -> &Arc<dyn ChangeFeed> {
        &self.feed
    }
}
