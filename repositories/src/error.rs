//! The one error type of the repository layer.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// A boxed driver error, kept as [`std::error::Error::source`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
        }
    }

    /// Whether running the operation twice has the effect of running it once,
    /// so that a retry is safe.
    #[must_use]
    pub const fn is_idempotent(self) -> bool {
        !matches!(
            self,
            Operation::Insert | Operation::InsertMany | Operation::Update
        )
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
    /// The store could not be reached, or dropped the connection.
    #[error("{store} is unavailable during {operation}: {reason}")]
    Unavailable {
        /// The store.
        store: Store,
        /// The operation.
        operation: Operation,
        /// What happened.
        reason: String,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The operation did not finish in time.
    #[error("{store}: {operation} timed out after {after:?}")]
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
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
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
