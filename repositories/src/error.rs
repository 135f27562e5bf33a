//! The one error type of the repository layer.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// A boxed error (a connector's reason, say). The repository layer never
/// keeps one as a source: it keeps a [`DriverError`] summary of it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the repository layer keeps of a driver's error, as its
/// [`std::error::Error::source`]: the driver, the error's kind, the store's
/// code and constraint name, and for a socket fault the I/O error kind
/// ("connection refused"). Never the driver's free text: a PostgreSQL
/// error's `detail` ("Failing row contains (…)"), a MongoDB duplicate-key
/// message and a CQL server message can all quote the values written, and
/// values may be PHI. So `Display`, `Debug` (`{:#?}` too) and the (empty)
/// source chain of this type hold names and codes only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError {
    driver: &'static str,
    kind: Cow<'static, str>,
    code: Option<String>,
    constraint: Option<String>,
    io: Option<std::io::ErrorKind>,
}

impl DriverError {
    /// A summary of an error of `driver` (`"sqlx"`, `"mongodb"`, ...) of
    /// the given kind (the driver's variant name).
    #[must_use]
    pub fn new(driver: &'static str, kind: impl Into<Cow<'static, str>>) -> Self {
        DriverError {
            driver,
            kind: kind.into(),
            code: None,
            constraint: None,
            io: None,
        }
    }

    /// With the store's error code (SQLSTATE, MongoDB code, ...). Kept only
    /// when it is short and alphanumeric, as codes are.
    #[must_use]
    pub fn code(mut self, code: impl ToString) -> Self {
        let code = code.to_string();
        if !code.is_empty()
            && code.len() <= 16
            && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            self.code = Some(code);
        }
        self
    }

    /// With the name of the constraint or index at fault. Kept only when it
    /// is an identifier (names come from migrations, never from values).
    #[must_use]
    pub fn constraint(mut self, name: Option<&str>) -> Self {
        self.constraint = name
            .filter(|n| {
                !n.is_empty()
                    && n.len() <= 128
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            })
            .map(str::to_owned);
        self
    }

    /// With the kind of the I/O error found in `e`'s source chain, if any
    /// (the kind only: "connection refused", "timed out").
    #[must_use]
    pub fn io_from(mut self, e: &(dyn std::error::Error + 'static)) -> Self {
        let mut next = Some(e);
        while let Some(err) = next {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                self.io = Some(io.kind());
                break;
            }
            next = err.source();
        }
        self
    }

    /// The driver.
    #[must_use]
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    /// The driver's kind of error.
    #[must_use]
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The store's error code, when it gave one.
    #[must_use]
    pub fn store_code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The constraint or index at fault, when the store named one.
    #[must_use]
    pub fn constraint_name(&self) -> Option<&str> {
        self.constraint.as_deref()
    }

    /// The kind of the underlying I/O error, when there was one.
    #[must_use]
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        self.io
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.driver, self.kind)?;
        if let Some(code) = &self.code {
            write!(f, ", code {code}")?;
        }
        if let Some(c) = &self.constraint {
            write!(f, ", constraint {c}")?;
        }
        if let Some(io) = self.io {
            write!(f, ": {io}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DriverError {}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A store behind a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Store {
    /// The in-process reference model.
    Memory,
    /// SQLite (embedded, the default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MongoDB.
    Mongo,
    /// Redis.
    Redis,
    /// ScyllaDB / Cassandra.
    Scylla,
    /// NATS JetStream (a sink of the change feed, not a repository store).
    Nats,
}

impl Store {
    /// The store's lower-case name, as used in settings and the CLI.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Sqlite => "sqlite",
            Store::Postgres => "postgres",
            Store::Mongo => "mongo",
            Store::Redis => "redis",
            Store::Scylla => "scylla",
            Store::Nats => "nats",
        }
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A repository operation, for errors, metrics and spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Checking that an entity's table, collection and unique indexes
    /// exist (they are made by migrations), and preparing its statements.
    Prepare,
    /// A health probe's round trip.
    Ping,
    /// `insert`.
    Insert,
    /// `insert_many`.
    InsertMany,
    /// `get`.
    Get,
    /// `get_many`.
    GetMany,
    /// `update`.
    Update,
    /// `replace`.
    Replace,
    /// `upsert`.
    Upsert,
    /// `delete`.
    Delete,
    /// `list`.
    List,
    /// `count`.
    Count,
    /// `exists`.
    Exists,
    /// Beginning, committing or rolling back a transaction.
    Transaction,
    /// Reading, acknowledging or pruning the change feed.
    Feed,
    /// Delivering change events to a sink. Idempotent (the sink keeps
    /// each event once, by its id), so retried like a read.
    Deliver,
    /// Reading or writing the saga log.
    Saga,
}

impl Operation {
    /// The operation's name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Operation::Prepare => "prepare",
            Operation::Ping => "ping",
            Operation::Insert => "insert",
            Operation::InsertMany => "insert_many",
            Operation::Get => "get",
            Operation::GetMany => "get_many",
            Operation::Update => "update",
            Operation::Replace => "replace",
            Operation::Upsert => "upsert",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Count => "count",
            Operation::Exists => "exists",
            Operation::Transaction => "transaction",
            Operation::Feed => "feed",
            Operation::Deliver => "deliver",
            Operation::Saga => "saga",
        }
    }

    /// Whether the operation only reads, so that running it again after a
    /// fault is always safe. Writes are retried only when the request
    /// provably never reached the store ([`Error::never_sent`]) or the store
    /// answered that it applied nothing (a retryable backend error such as
    /// a deadlock): a write whose answer was lost may have been applied, and
    /// running it again could report a false version conflict, bump a
    /// version twice or say a deleted entity did not exist.
    #[must_use]
    pub const fn is_read(self) -> bool {
        matches!(
            self,
            Operation::Prepare
                | Operation::Ping
                | Operation::Get
                | Operation::GetMany
                | Operation::List
                | Operation::Count
                | Operation::Exists
        )
    }

    /// Whether sending it twice does no harm: a read, or a delivery (the
    /// sink keeps each event once). The guard retries these on any
    /// retryable error.
    #[must_use]
    pub const fn is_idempotent(self) -> bool {
        self.is_read() || matches!(self, Operation::Deliver)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of conflict a write ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConflictKind {
    /// An entity with this key already exists.
    DuplicateKey,
    /// A `#[indexed(unique)]` field's value is taken (the field, when the
    /// store says which).
    Unique {
        /// The field, when known.
        field: Option<&'static str>,
    },
    /// The stored version moved on since the caller read it.
    VersionMismatch {
        /// The version the caller expected.
        expected: i64,
        /// The version stored now.
        actual: i64,
    },
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictKind::DuplicateKey => f.write_str("an entity with this key already exists"),
            ConflictKind::Unique { field: Some(field) } => {
                write!(f, "the value of unique field `{field}` is already taken")
            }
            ConflictKind::Unique { field: None } => f.write_str("a unique value is already taken"),
            ConflictKind::VersionMismatch { expected, actual } => write!(
                f,
                "version mismatch: expected {expected}, stored {actual} (someone else wrote first; read again)"
            ),
        }
    }
}

/// One entity of a batch that was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFailure {
    /// Its position in the batch.
    pub index: usize,
    /// Why it was not written.
    pub kind: ConflictKind,
}

/// The repository layer's error.
///
/// Messages never contain field values (they may be PHI): they name the
/// entity, the field and the kinds involved. Connection faults are always
/// [`Error::Unavailable`] or [`Error::Timeout`], never `NotFound`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The entity does not exist (from `replace`; `get` and `update` return
    /// `None` instead).
    #[error("{entity}: not found")]
    NotFound {
        /// The entity's store name.
        entity: &'static str,
    },
    /// A write conflicts with stored data.
    #[error("{entity}: conflict: {kind}")]
    Conflict {
        /// The entity's store name.
        entity: &'static str,
        /// What conflicted.
        kind: ConflictKind,
    },
    /// Some entities of an `insert_many` on a store whose batches are not
    /// all-or-nothing conflicted; every other entity was written.
    #[error("{entity}: {} of the batch not written (first at index {}: {})", failures.len(), failures.first().map_or(0, |f| f.index), failures.first().map_or_else(String::new, |f| f.kind.to_string()))]
    Batch {
        /// The entity's store name.
        entity: &'static str,
        /// The entities not written, in batch order.
        failures: Vec<BatchFailure>,
    },
    /// The input is malformed: checked before any I/O, nothing was written.
    #[error("{entity}: invalid input{}: {reason}", field.as_ref().map(|f| format!(" in `{f}`")).unwrap_or_default())]
    Invalid {
        /// The entity's store name.
        entity: &'static str,
        /// The field at fault (as given by the caller, truncated), if one is.
        field: Option<String>,
        /// What is wrong and what was expected.
        reason: Cow<'static, str>,
    },
    /// The store cannot serve this operation (declared in its capabilities).
    #[error("{store} cannot serve {operation}: {reason}")]
    Unsupported {
        /// The store.
        store: Store,
        /// The operation asked for.
        operation: Operation,
        /// Why not, and what to do instead.
        reason: Cow<'static, str>,
    },
    /// The store's schema is not ready for the entity: its table or
    /// collection is missing, lacks a column, or lacks the unique index an
    /// `#[indexed(unique)]` field needs. Repositories never create schema:
    /// the migrations do (`data-layer migrate up`).
    #[error(
        "{store}: the schema of {entity} is not ready: {reason}; apply the migrations: data-layer migrate up --store {store}"
    )]
    SchemaNotReady {
        /// The store.
        store: Store,
        /// The entity's store name.
        entity: &'static str,
        /// What is missing (names only, never values).
        reason: String,
    },
    /// The store could not be reached, or dropped the connection. For a
    /// write that may have been sent (`sent`), the outcome is unknown: the
    /// store may have applied it; read before writing again.
    #[error("{store} is unavailable during {operation}: {reason}{}", if *sent && !operation.is_read() { " (outcome unknown: the write may have been applied)" } else { "" })]
    Unavailable {
        /// The store.
        store: Store,
        /// The operation.
        operation: Operation,
        /// What happened.
        reason: String,
        /// Whether the request may have reached the store. `false` only
        /// when it provably did not (no connection could be had, the pool
        /// gave none, the store refused the connection), so a write can be
        /// retried safely.
        sent: bool,
        /// What is kept of the driver's error (never its free text).
        #[source]
        source: Option<DriverError>,
    },
    /// The operation did not finish in time. For a write, the outcome is
    /// unknown: the store may have applied it.
    #[error("{store}: {operation} timed out after {after:?}{}", if operation.is_read() { "" } else { " (outcome unknown: the write may have been applied)" })]
    Timeout {
        /// The store.
        store: Store,
        /// The operation.
        operation: Operation,
        /// The timeout that expired.
        after: Duration,
    },
    /// The store's circuit breaker is open: the call was not attempted.
    #[error("{store}: circuit breaker is open, call not attempted")]
    CircuitOpen {
        /// The store.
        store: Store,
    },
    /// Any other store error.
    #[error("{store}: {operation} failed: {message}")]
    Backend {
        /// The store.
        store: Store,
        /// The operation.
        operation: Operation,
        /// A description that contains no field values.
        message: String,
        /// Whether trying again may succeed (deadlock, serialization failure).
        retryable: bool,
        /// What is kept of the driver's error (never its free text).
        #[source]
        source: Option<DriverError>,
    },
}

impl Error {
    /// Whether the same call may succeed if tried again (transient faults
    /// only: never NotFound, Conflict, Invalid or Unsupported).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Timeout { .. } => true,
            Error::Backend { retryable, .. } => *retryable,
            Error::NotFound { .. }
            | Error::Conflict { .. }
            | Error::Batch { .. }
            | Error::Invalid { .. }
            | Error::Unsupported { .. }
            | Error::SchemaNotReady { .. }
            | Error::CircuitOpen { .. } => false,
        }
    }

    /// Whether the request provably never reached the store (so a write may
    /// be sent again safely): the breaker refused it, or no connection
    /// could be had.
    #[must_use]
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { sent: false, .. } | Error::CircuitOpen { .. }
        )
    }

    /// Whether this is a write that may or may not have been applied: its
    /// answer was lost (a timeout, a dropped connection). The caller reads
    /// the entity before deciding what to do; the guard never retries it.
    #[must_use]
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Error::Unavailable {
                operation, sent, ..
            } => *sent && !operation.is_read(),
            Error::Timeout { operation, .. } => !operation.is_read(),
            _ => false,
        }
    }

    /// The error's kind as a metric label (`"not_found"`, `"timeout"`, ...).
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::Conflict { .. } => "conflict",
            Error::Batch { .. } => "batch",
            Error::Invalid { .. } => "invalid",
            Error::Unsupported { .. } => "unsupported",
            Error::SchemaNotReady { .. } => "schema_not_ready",
            Error::Unavailable { .. } => "unavailable",
            Error::Timeout { .. } => "timeout",
            Error::CircuitOpen { .. } => "circuit_open",
            Error::Backend { .. } => "backend",
        }
    }

    /// Shorthand for an [`Error::Invalid`].
    pub fn invalid(
        entity: &'static str,
        field: Option<&str>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Error::Invalid {
            entity,
            field: field.map(dl_models::truncate_name),
            reason: reason.into(),
        }
    }

    /// Shorthand for an [`Error::Unsupported`].
    pub fn unsupported(
        store: Store,
        operation: Operation,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Error::Unsupported {
            store,
            operation,
            reason: reason.into(),
        }
    }
}
