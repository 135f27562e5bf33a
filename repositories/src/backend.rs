//! The store-level contract each backend implements, and its capabilities.
//!
//! A [`Backend`] is not generic over entities: it reads and writes
//! [`Record`]s described by an [`EntitySchema`]. Validation, encoding,
//! cursors and the version rules live once, in [`crate::Repo`]; a backend
//! only translates checked requests into its driver's calls. Cross-cutting
//! behaviour (the guard: breaker, retry, timeout) is a `Backend` that wraps
//! another.

use std::fmt;
use std::sync::Arc;

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
    /// The record as JSON in the entity's serde form (what the Redis
    /// backend stores; any store holding that form may answer it) (timestamps with milliseconds, as the backend writes
    /// them), which the repository reads straight into the entity (one
    /// decode instead of two), and through a [`Record`] only when that
    /// fails, so the error is the same as from a record (naming the field,
    /// never the value). Text another writer left with finer timestamps
    /// keeps them on this path. A value is never formatted from it (it
    /// may hold PHI).
    Json(String),
}

impl Read {
    /// As a record: JSON through the store-neutral record codec, whose
    /// errors (from `store`) name the field and never the value.
    ///
    /// # Errors
    /// `Backend` when the JSON is not a record of `schema`.
    pub(crate) fn into_record(
        self,
        store: Store,
        schema: &'static EntitySchema,
        op: Operation,
    ) -> Result<Record> {
        match self {
            Read::Record(r) => Ok(r),
            Read::Json(d) => crate::json_record::decode_record(store, schema, op, &d),
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

/// A circuit breaker's state (reported by a guarded backend's probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls fail at once with `CircuitOpen`.
    Open,
    /// A limited number of probes pass; their outcome decides.
    HalfOpen,
}

/// One request to a store, checked by the repository before it is made
/// (values bound, never formatted). `Debug` names the operation only: the
/// records and keys may hold PHI.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum Request<'a> {
    /// Check that the entity's table or collection, columns and unique
    /// indexes exist (made by migrations, never here:
    /// [`Error::SchemaNotReady`] otherwise), and prepare its statements.
    Prepare,
    /// Insert one record ([`Response::Done`]).
    Insert(&'a Record),
    /// Insert records of distinct keys ([`Response::Done`]).
    InsertMany(&'a [Record]),
    /// Read one record ([`Response::Found`]).
    Get(&'a Value),
    /// Read the records of distinct keys, in any order, absent ones left
    /// out ([`Response::Records`]).
    GetMany(&'a [Value]),
    /// Apply a patch ([`Response::Found`]: `None` when the key is absent).
    Update(&'a Value, &'a ValidPatch),
    /// Overwrite an existing record (`NotFound` when absent); with a
    /// version field, the stored version must be the given one and the
    /// record is written with it plus one ([`Response::Written`]).
    Replace(&'a Record, Option<i64>),
    /// Insert, or overwrite unconditionally (version: stored + 1)
    /// ([`Response::Written`]).
    Upsert(&'a Record),
    /// Delete; whether the key existed ([`Response::Flag`]).
    Delete(&'a Value),
    /// Records matching, in the request's order, at most `limit`
    /// ([`Response::Records`]).
    List(&'a ListRequest),
    /// For a store that declares `native_cursor`: at most `limit` records
    /// matching `cond` in the store's own order, continuing from `state`
    /// ([`Response::Page`]).
    ListPage {
        /// The condition.
        cond: &'a Cond,
        /// At most this many.
        limit: usize,
        /// Where the previous page ended (`None`: from the start).
        state: Option<&'a [u8]>,
    },
    /// How many records match ([`Response::Count`]).
    Count(&'a Cond),
    /// Whether the key exists ([`Response::Flag`]).
    Exists(&'a Value),
}

impl Request<'_> {
    /// The operation, for errors, metrics, spans and retry rules.
    #[must_use]
    pub const fn operation(&self) -> Operation {
        match self {
            Request::Prepare => Operation::Prepare,
            Request::Insert(_) => Operation::Insert,
            Request::InsertMany(_) => Operation::InsertMany,
            Request::Get(_) => Operation::Get,
            Request::GetMany(_) => Operation::GetMany,
            Request::Update(..) => Operation::Update,
            Request::Replace(..) => Operation::Replace,
            Request::Upsert(_) => Operation::Upsert,
            Request::Delete(_) => Operation::Delete,
            Request::List(_) | Request::ListPage { .. } => Operation::List,
            Request::Count(_) => Operation::Count,
            Request::Exists(_) => Operation::Exists,
        }
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request::{}(<values not shown>)", self.operation())
    }
}

/// A store's answer to a [`Request`]. `Debug` shows its kind and sizes,
/// never values.
#[non_exhaustive]
pub enum Response {
    /// Done (prepare, insert, insert_many).
    Done,
    /// One entity or none (get, update).
    Found(Option<Read>),
    /// Records (get_many, list).
    Records(Vec<Record>),
    /// A page and where the next begins (list_page).
    Page(Vec<Record>, Option<Vec<u8>>),
    /// The record as written (replace, upsert).
    Written(Record),
    /// A count.
    Count(u64),
    /// Yes or no (delete: it existed; exists).
    Flag(bool),
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::Done => f.write_str("Done"),
            Response::Found(r) => write!(f, "Found({})", if r.is_some() { "1" } else { "0" }),
            Response::Records(r) => write!(f, "Records({})", r.len()),
            Response::Page(r, next) => write!(f, "Page({}, more: {})", r.len(), next.is_some()),
            Response::Written(_) => f.write_str("Written(1)"),
            Response::Count(n) => write!(f, "Count({n})"),
            Response::Flag(b) => write!(f, "Flag({b})"),
        }
    }
}

/// The seam every store and every wrapper implements: one call that takes
/// a [`Request`] and answers a [`Response`] (as tower's `Service`), plus a
/// [`Probe`] for health. A wrapper (the guard, deferred connect, capture,
/// cache, audit) is written once, around `call`, and cannot forget an
/// operation: there is only one.
///
/// Contracts every backend keeps (the conformance suite checks them):
/// - records are in schema order and every value has its field's type;
/// - `Insert` of an existing key fails with `Conflict(DuplicateKey)`, a
///   taken unique value with `Conflict(Unique)`; nothing is written;
/// - `Update` / `Replace` / `Upsert` bump the version field by one when the
///   schema has one, and check the expected version in the same atomic step
///   as the write;
/// - connection faults are `Unavailable` or `Timeout`, never `NotFound`;
/// - a store that cannot serve a request answers the precise
///   `Unsupported` (a `ListPage` on a store without a native cursor, say).
///
/// Callers use the typed methods on `dyn Backend` (`backend.get(schema,
/// key)`, ...), which make the request and check the answer's kind.
#[async_trait]
pub trait Backend: Probe + Send + Sync + fmt::Debug {
    /// Which store this is.
    fn store(&self) -> Store;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// Serves one request for the entity `schema`.
    async fn call(&self, schema: &'static EntitySchema, request: Request<'_>) -> Result<Response>;

    /// Begins a transaction on this store: a [`Transaction`] whose
    /// [`backend`](Transaction::backend) serves requests inside it. A store
    /// that declares no `transactions` answers the precise `Unsupported`
    /// (operation `transaction`), and so does a backend that is itself a
    /// transaction's: nesting is refused, not served as savepoints.
    async fn begin(&self) -> Result<Box<dyn Transaction>>;

    /// This store's change feed (see [`crate::feed`]): the events its
    /// captured writes made, and its consumers' checkpoints. A store
    /// without one answers the precise `Unsupported` (operation `feed`).
    ///
    /// # Errors
    /// `Unsupported`.
    async fn change_feed(&self) -> Result<Arc<dyn crate::feed::ChangeFeed>>;
}

/// One open transaction on one store. Its [`backend`](Transaction::backend)
/// is a [`Backend`] like any other, so repositories open over it as over
/// the store; what they write becomes visible to others only at
/// [`commit`](Transaction::commit). Dropped without a commit (an error, a
/// panic, a cancelled task), it rolls back: nothing is ever half-applied.
#[async_trait]
pub trait Transaction: Send + Sync + fmt::Debug {
    /// The backend whose calls run inside this transaction. Calls after
    /// the transaction ended fail with `Invalid` (never on another
    /// connection, outside it).
    fn backend(&self) -> Arc<dyn Backend>;

    /// Makes every write of the transaction visible, atomically.
    ///
    /// # Errors
    /// The store's refusal (a conflict found at commit) or fault: then
    /// nothing was applied, unless the error says the outcome is unknown
    /// (the answer to the commit was lost).
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Discards every write of the transaction.
    ///
    /// # Errors
    /// The store's fault (the store discards the writes anyway when the
    /// connection ends).
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// The precise answer of a store that has no transactions.
pub(crate) fn no_transactions(store: Store, why: &str) -> Error {
    Error::unsupported(store, Operation::Transaction, why.to_owned())
}

/// The answer to `begin` on a transaction's own backend.
pub(crate) fn nested_transaction(store: Store) -> Error {
    Error::unsupported(
        store,
        Operation::Transaction,
        "a transaction is already open on this backend: nested transactions are refused (no savepoints)",
    )
}

/// A call on a transaction that has ended.
pub(crate) fn transaction_ended(entity: &'static str) -> Error {
    Error::invalid(
        entity,
        None,
        "the transaction has ended (committed or rolled back): open repositories on a new one",
    )
}

/// Health, apart from the data path: a real round trip, pool occupancy,
/// the breaker. No defaults: a wrapper says what it forwards.
#[async_trait]
pub trait Probe {
    /// One real round trip to the store (`SELECT 1`, `PING`, `ping`...).
    async fn ping(&self) -> Result<()>;

    /// Pool occupancy, where the driver exposes it.
    fn pool_stats(&self) -> Option<PoolStats>;

    /// The circuit breaker's state, when a breaker guards the store.
    fn breaker_state(&self) -> Option<BreakerState>;
}

/// A response of the wrong kind for its request: a defect of a backend or
/// wrapper, reported rather than guessed around.
fn mismatch(store: Store, op: Operation, got: &Response) -> Error {
    Error::Backend {
        store,
        operation: op,
        message: format!("the backend answered {got:?} to {op}"),
        retryable: false,
        source: None,
    }
}

/// The typed requests: each makes its [`Request`], calls the backend and
/// checks the kind of the answer.
impl dyn Backend + '_ {
    /// [`Request::Prepare`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn prepare(&self, schema: &'static EntitySchema) -> Result<()> {
        match self.call(schema, Request::Prepare).await? {
            Response::Done => Ok(()),
            other => Err(mismatch(self.store(), Operation::Prepare, &other)),
        }
    }

    /// [`Request::Insert`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn insert(&self, schema: &'static EntitySchema, record: &Record) -> Result<()> {
        match self.call(schema, Request::Insert(record)).await? {
            Response::Done => Ok(()),
            other => Err(mismatch(self.store(), Operation::Insert, &other)),
        }
    }

    /// [`Request::InsertMany`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn insert_many(
        &self,
        schema: &'static EntitySchema,
        records: &[Record],
    ) -> Result<()> {
        match self.call(schema, Request::InsertMany(records)).await? {
            Response::Done => Ok(()),
            other => Err(mismatch(self.store(), Operation::InsertMany, &other)),
        }
    }

    /// [`Request::Get`], in the form the store keeps the entity.
    ///
    /// # Errors
    /// The backend's.
    pub async fn get_read(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
    ) -> Result<Option<Read>> {
        match self.call(schema, Request::Get(key)).await? {
            Response::Found(r) => Ok(r),
            other => Err(mismatch(self.store(), Operation::Get, &other)),
        }
    }

    /// [`Request::Get`], as a record.
    ///
    /// # Errors
    /// The backend's.
    pub async fn get(&self, schema: &'static EntitySchema, key: &Value) -> Result<Option<Record>> {
        self.get_read(schema, key)
            .await?
            .map(|r| r.into_record(self.store(), schema, Operation::Get))
            .transpose()
    }

    /// [`Request::GetMany`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn get_many(
        &self,
        schema: &'static EntitySchema,
        keys: &[Value],
    ) -> Result<Vec<Record>> {
        match self.call(schema, Request::GetMany(keys)).await? {
            Response::Records(r) => Ok(r),
            other => Err(mismatch(self.store(), Operation::GetMany, &other)),
        }
    }

    /// [`Request::Update`], in the form the store keeps the entity.
    ///
    /// # Errors
    /// The backend's.
    pub async fn update_read(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Read>> {
        match self.call(schema, Request::Update(key, patch)).await? {
            Response::Found(r) => Ok(r),
            other => Err(mismatch(self.store(), Operation::Update, &other)),
        }
    }

    /// [`Request::Update`], as a record.
    ///
    /// # Errors
    /// The backend's.
    pub async fn update(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Record>> {
        self.update_read(schema, key, patch)
            .await?
            .map(|r| r.into_record(self.store(), schema, Operation::Update))
            .transpose()
    }

    /// [`Request::Replace`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn replace(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
        expected_version: Option<i64>,
    ) -> Result<Record> {
        match self
            .call(schema, Request::Replace(record, expected_version))
            .await?
        {
            Response::Written(r) => Ok(r),
            other => Err(mismatch(self.store(), Operation::Replace, &other)),
        }
    }

    /// [`Request::Upsert`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn upsert(&self, schema: &'static EntitySchema, record: &Record) -> Result<Record> {
        match self.call(schema, Request::Upsert(record)).await? {
            Response::Written(r) => Ok(r),
            other => Err(mismatch(self.store(), Operation::Upsert, &other)),
        }
    }

    /// [`Request::Delete`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn delete(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        match self.call(schema, Request::Delete(key)).await? {
            Response::Flag(b) => Ok(b),
            other => Err(mismatch(self.store(), Operation::Delete, &other)),
        }
    }

    /// [`Request::List`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn list(
        &self,
        schema: &'static EntitySchema,
        request: &ListRequest,
    ) -> Result<Vec<Record>> {
        match self.call(schema, Request::List(request)).await? {
            Response::Records(r) => Ok(r),
            other => Err(mismatch(self.store(), Operation::List, &other)),
        }
    }

    /// [`Request::ListPage`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn list_page(
        &self,
        schema: &'static EntitySchema,
        cond: &Cond,
        limit: usize,
        state: Option<&[u8]>,
    ) -> Result<(Vec<Record>, Option<Vec<u8>>)> {
        match self
            .call(schema, Request::ListPage { cond, limit, state })
            .await?
        {
            Response::Page(r, next) => Ok((r, next)),
            other => Err(mismatch(self.store(), Operation::List, &other)),
        }
    }

    /// [`Request::Count`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn count(&self, schema: &'static EntitySchema, cond: &Cond) -> Result<u64> {
        match self.call(schema, Request::Count(cond)).await? {
            Response::Count(n) => Ok(n),
            other => Err(mismatch(self.store(), Operation::Count, &other)),
        }
    }

    /// [`Request::Exists`].
    ///
    /// # Errors
    /// The backend's.
    pub async fn exists(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        match self.call(schema, Request::Exists(key)).await? {
            Response::Flag(b) => Ok(b),
            other => Err(mismatch(self.store(), Operation::Exists, &other)),
        }
    }
}

/// A backend's `call`: each request to the inherent method of the same
/// name (`prepare`, `insert`, `get`, ...), its answer wrapped. Arms given
/// in `{ ... }` come first and replace the default for their request (a
/// store that reads its own form, or has a native cursor). A `ListPage`
/// without an arm is the precise `Unsupported`.
macro_rules! dispatch {
    ($self:ident, $schema:ident, $request:ident, { $($special:tt)* }) => {{
        use $crate::backend::{Read, Request, Response};
        #[allow(unreachable_patterns)]
        match $request {
            $($special)*
            Request::Prepare => $self.prepare($schema).await.map(|()| Response::Done),
            Request::Insert(r) => $self.insert($schema, r).await.map(|()| Response::Done),
            Request::InsertMany(r) => $self.insert_many($schema, r).await.map(|()| Response::Done),
            Request::Get(k) => $self.get($schema, k).await.map(|r| Response::Found(r.map(Read::Record))),
            Request::GetMany(k) => $self.get_many($schema, k).await.map(Response::Records),
            Request::Update(k, p) => $self
                .update($schema, k, p)
                .await
                .map(|r| Response::Found(r.map(Read::Record))),
            Request::Replace(r, v) => $self.replace($schema, r, v).await.map(Response::Written),
            Request::Upsert(r) => $self.upsert($schema, r).await.map(Response::Written),
            Request::Delete(k) => $self.delete($schema, k).await.map(Response::Flag),
            Request::List(r) => $self.list($schema, r).await.map(Response::Records),
            Request::ListPage { .. } => Err($crate::error::Error::unsupported(
                $crate::backend::Backend::store($self),
                $crate::error::Operation::List,
                "this store has no native cursor",
            )),
            Request::Count(c) => $self.count($schema, c).await.map(Response::Count),
            Request::Exists(k) => $self.exists($schema, k).await.map(Response::Flag),
        }
    }};
}
pub(crate) use dispatch;

/// A store module's `Backend` and `Probe`: `call` routed by [`dispatch!`]
/// to the type's own methods (`store`, `capabilities`, `ping` and the
/// operations; `pool_stats` too when `pooled`). `$this`, `$schema` and
/// `$request` name the receiver and arguments for the special arms.
macro_rules! seam {
    ($ty:ty, $pool:ident, |$this:ident, $schema:ident, $request:ident| { $($special:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::backend::Backend for $ty {
            fn store(&self) -> $crate::error::Store {
                <$ty>::store(self)
            }

            fn capabilities(&self) -> $crate::backend::Capabilities {
                <$ty>::capabilities(self)
            }

            async fn call(
                &self,
                $schema: &'static dl_models::EntitySchema,
                $request: $crate::backend::Request<'_>,
            ) -> $crate::error::Result<$crate::backend::Response> {
                let $this = self;
                $crate::backend::dispatch!($this, $schema, $request, { $($special)* })
            }

            async fn begin(
                &self,
            ) -> $crate::error::Result<Box<dyn $crate::backend::Transaction>> {
                // The store's own `begin_transaction` (an inherent method:
                // a name the trait does not have, so a store without one
                // does not compile, rather than calling this again).
                <$ty>::begin_transaction(self).await
            }

            async fn change_feed(
                &self,
            ) -> $crate::error::Result<std::sync::Arc<dyn $crate::feed::ChangeFeed>> {
                <$ty>::feed_of_store(self)
            }
        }

        #[async_trait::async_trait]
        impl $crate::backend::Probe for $ty {
            async fn ping(&self) -> $crate::error::Result<()> {
                <$ty>::ping(self).await
            }

            fn pool_stats(&self) -> Option<$crate::backend::PoolStats> {
                $crate::backend::seam!(@pool $pool, self, $ty)
            }

            fn breaker_state(&self) -> Option<$crate::backend::BreakerState> {
                None
            }
        }
    };
    (@pool pooled, $self_:ident, $ty:ty) => {
        <$ty>::pool_stats($self_)
    };
    (@pool unpooled, $self_:ident, $ty:ty) => {{
        let _ = $self_;
        None
    }};
}
pub(crate) use seam;

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
