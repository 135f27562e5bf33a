//! The store-level contract each backend implements, and its capabilities.
//!
//! A [`Backend`] is not generic over entities: it reads and writes
//! [`Record`]s described by an [`EntitySchema`]. Validation, encoding,
//! cursors and the version rules live once, in [`crate::Repo`]; a backend
//! only translates checked requests into its driver's calls. Cross-cutting
//! behaviour (the guard: breaker, retry, timeout) is a `Backend` that wraps
//! another.

use std::fmt;

use async_trait::async_trait;
use dl_models::{EntitySchema, Record, Value};

use crate::error::{Error, Operation, Result, Store};
use crate::query::{Cond, ListRequest, ValidPatch};

/// Which filters a store can serve without a full scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FilterSupport {
    /// Any filter on any field.
    Any,
    /// Only `eq`, `in` (and `and`/`or` of them) on `#[indexed]` fields and
    /// the key.
    IndexedEquality,
    /// Only the key.
    KeyOnly,
}

/// What a backend can do. Shared code asks instead of guessing, and the
/// conformance suite reads the same declaration: a case a backend declares
/// it cannot serve must fail with the precise `Unsupported` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Capabilities {
    /// Multi-entity transactions.
    pub transactions: bool,
    /// Which filters `list` and `count` accept.
    pub filter: FilterSupport,
    /// Sorting on fields other than the key.
    pub sort: bool,
    /// `prefix` filters.
    pub prefix: bool,
    /// `insert_many` is all-or-nothing.
    pub atomic_batch: bool,
    /// `insert_many` and `get_many` run as one native batch / round trip.
    pub native_batch: bool,
    /// Entries can expire (a per-entity TTL).
    pub ttl: bool,
    /// A change feed (for CDC) exists.
    pub change_feed: bool,
    /// `#[indexed(unique)]` is enforced by the store.
    pub unique: bool,
    /// Listing without a sort returns key order (else the store's own stable
    /// order, such as Scylla's token order, and sorting is unsupported).
    pub ordered: bool,
    /// `list` continues with the store's own cursor (a paging state) rather
    /// than a keyset position.
    pub native_cursor: bool,
}

impl Capabilities {
    /// Everything the reference model and SQL stores can do.
    #[must_use]
    pub const fn full() -> Self {
        Capabilities {
            transactions: true,
            filter: FilterSupport::Any,
            sort: true,
            prefix: true,
            atomic_batch: true,
            native_batch: true,
            ttl: false,
            change_feed: false,
            unique: true,
            ordered: true,
            native_cursor: false,
        }
    }
}

/// A pool's occupancy, where the driver exposes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Connections open.
    pub size: u32,
    /// Of which idle.
    pub idle: u32,
    /// Of which in use.
    pub in_use: u32,
    /// The pool's maximum.
    pub max: u32,
}

/// One entity as a backend read it, for the reads the repository decodes
/// straight into the entity type ([`Backend::get_read`],
/// [`Backend::update_read`]).
#[non_exhaustive]
pub enum Read {
    /// Store-neutral values.
    Record(Record),
    /// The record as the Redis backend stores it: JSON in the entity's
    /// serde form (timestamps with milliseconds, as the backend writes
    /// them), which the repository reads straight into the entity (one
    /// decode instead of two), and through a [`Record`] only when that
    /// fails, so the error is the same as from a record (naming the field,
    /// never the value). Text another writer left with finer timestamps
    /// keeps them on this path. A value is never formatted from it (it
    /// may hold PHI).
    Json(String),
}

impl Read {
    /// As a record: JSON through the Redis record codec, whose errors name
    /// the field and never the value.
    ///
    /// # Errors
    /// `Backend` when the JSON is not a record of `schema`.
    pub(crate) fn into_record(
        self,
        schema: &'static EntitySchema,
        op: Operation,
    ) -> Result<Record> {
        match self {
            Read::Record(r) => Ok(r),
            Read::Json(d) => crate::backends::redis::decode_record(schema, op, &d),
        }
    }
}

impl fmt::Debug for Read {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Read::Record(r) => f.debug_tuple("Record").field(r).finish(),
            Read::Json(j) => write!(f, "Json(<redacted {} bytes>)", j.len()),
        }
    }
}

/// One store's implementation of the repository operations.
///
/// Contracts every backend keeps (the conformance suite checks them):
/// - records are in schema order and every value has its field's type;
/// - `insert` of an existing key fails with `Conflict(DuplicateKey)`, a
///   taken unique value with `Conflict(Unique)`; nothing is written;
/// - `update` / `replace` / `upsert` bump the version field by one when the
///   schema has one, and check `expected_version` in the same atomic step
///   as the write;
/// - connection faults are `Unavailable` or `Timeout`, never `NotFound`.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Which store this is.
    fn store(&self) -> Store;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// Checks that the entity's table or collection, its columns and the
    /// unique indexes it needs exist (made by migrations, never here:
    /// [`Error::SchemaNotReady`] otherwise), and prepares its statements.
    async fn prepare(&self, schema: &'static EntitySchema) -> Result<()>;

    /// Inserts one record.
    async fn insert(&self, schema: &'static EntitySchema, record: &Record) -> Result<()>;

    /// Inserts records (keys are distinct; checked by the caller).
    async fn insert_many(&self, schema: &'static EntitySchema, records: &[Record]) -> Result<()>;

    /// Reads one record.
    async fn get(&self, schema: &'static EntitySchema, key: &Value) -> Result<Option<Record>>;

    /// Reads the records of distinct keys, in any order; absent keys are
    /// left out.
    async fn get_many(&self, schema: &'static EntitySchema, keys: &[Value]) -> Result<Vec<Record>>;

    /// Applies a patch; `None` when the key is absent.
    async fn update(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Record>>;

    /// Overwrites an existing record (`NotFound` when absent). With a version
    /// field, `expected_version` is the version the stored record must have,
    /// and the record is written with `expected_version + 1`.
    async fn replace(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
        expected_version: Option<i64>,
    ) -> Result<Record>;

    /// Inserts, or overwrites unconditionally (version: stored + 1).
    async fn upsert(&self, schema: &'static EntitySchema, record: &Record) -> Result<Record>;

    /// Deletes; whether the key existed.
    async fn delete(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool>;

    /// Records matching the request, in its order, at most `limit`.
    async fn list(
        &self,
        schema: &'static EntitySchema,
        request: &ListRequest,
    ) -> Result<Vec<Record>>;

    /// How many records match.
    async fn count(&self, schema: &'static EntitySchema, cond: &Cond) -> Result<u64>;

    /// Whether the key exists.
    async fn exists(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool>;

    /// One real round trip to the store (`SELECT 1`, `PING`, `ping`...).
    async fn ping(&self) -> Result<()>;

    /// [`Backend::get`], in the form the store keeps the entity. The
    /// default reads a record; a decorator forwards to the backend it wraps
    /// (through its own handling), so the store's form reaches the
    /// repository.
    async fn get_read(&self, schema: &'static EntitySchema, key: &Value) -> Result<Option<Read>> {
        Ok(self.get(schema, key).await?.map(Read::Record))
    }

    /// [`Backend::update`], answering in the form the store keeps the
    /// entity (see [`Backend::get_read`]).
    async fn update_read(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Read>> {
        Ok(self.update(schema, key, patch).await?.map(Read::Record))
    }

    /// Pool occupancy, where the driver exposes it.
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }

    /// The circuit breaker's state, when this backend is guarded.
    fn breaker_state(&self) -> Option<crate::guard::BreakerState> {
        None
    }

    /// For a store that declares `native_cursor`: at most `limit` records
    /// matching `cond`, in the store's own order, continuing from `state`
    /// (`None`: from the start), and the state of the next page (`None`:
    /// this was the last). The default refuses.
    async fn list_page(
        &self,
        schema: &'static EntitySchema,
        cond: &Cond,
        limit: usize,
        state: Option<&[u8]>,
    ) -> Result<(Vec<Record>, Option<Vec<u8>>)> {
        let _ = (schema, cond, limit, state);
        Err(crate::error::Error::unsupported(
            self.store(),
            crate::error::Operation::List,
            "this store has no native cursor",
        ))
    }
}

/// Which entity type a cache entry belongs to: the address of its static
/// schema. Two entity types on one table (a full and a summary view, say)
/// have different statements; a cache keyed by the table name would hand
/// one the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SchemaId(usize);

impl SchemaId {
    pub(crate) fn of(schema: &'static EntitySchema) -> Self {
        SchemaId(std::ptr::from_ref(schema).addr())
    }
}

/// Checks that a table exists (`columns` is not empty) and has a column of
/// every field.
pub(crate) fn check_columns(
    store: Store,
    schema: &'static EntitySchema,
    table: &str,
    columns: &[String],
) -> Result<()> {
    let reason = if columns.is_empty() {
        format!("table {table} does not exist")
    } else {
        let missing: Vec<String> = schema
            .fields
            .iter()
            .filter(|f| !columns.iter().any(|c| c == f.name))
            .map(|f| format!("`{}`", f.name))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        format!("table {table} lacks the column(s) {}", missing.join(", "))
    };
    Err(Error::SchemaNotReady {
        store,
        entity: schema.name,
        reason,
    })
}

/// Checks that every `#[indexed(unique)]` field (other than the key) has
/// a unique index of its own among `unique_columns`: without it the
/// store would silently accept duplicates.
pub(crate) fn check_unique_indexes(
    store: Store,
    schema: &'static EntitySchema,
    unique_columns: &[String],
) -> Result<()> {
    let missing: Vec<&str> = schema
        .fields
        .iter()
        .enumerate()
        .filter(|(i, f)| *i != schema.key && f.unique)
        .map(|(_, f)| f.name)
        .filter(|name| !unique_columns.iter().any(|c| c == name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::SchemaNotReady {
        store,
        entity: schema.name,
        reason: format!(
            "no unique index on {} (declared #[indexed(unique)])",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::Read;

    #[test]
    fn json_reads_are_never_printed() {
        let read = Read::Json(r#"{"name":"Jane Fakename"}"#.into());
        let shown = format!("{read:?}");
        assert_eq!(shown, "Json(<redacted 24 bytes>)");
    }
}
