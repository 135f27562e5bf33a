//! Classifying sqlx errors (SQLite and PostgreSQL) into [`Error`].
//!
//! The classification decides retry and breaker behaviour, so every sqlx
//! variant is named; the `_` arm only covers variants a future sqlx adds
//! (the enum is non-exhaustive), which are treated as non-retryable.

use dl_models::EntitySchema;

use crate::error::{ConflictKind, DriverError, Error, Operation, Store};

/// Maps a sqlx error. Messages never include values: for database errors we
/// keep the store's error code, its class and the constraint's name, as a
/// [`DriverError`] `source()`; the sqlx error itself is dropped (its
/// message and PostgreSQL's `detail` quote the row).
pub(crate) fn map_sqlx_error(
    store: Store,
    schema: &'static EntitySchema,
    operation: Operation,
    e: sqlx::Error,
) -> Error {
    // `sent`: whether the request may have reached the server.
    let unavailable = |reason: &str, sent: bool, e: sqlx::Error| Error::Unavailable {
        store,
        operation,
        reason: reason.to_owned(),
        sent,
        source: Some(summary(&e)),
    };
    let backend = |message: String, retryable: bool, e: sqlx::Error| Error::Backend {
        store,
        operation,
        message,
        retryable,
        source: Some(summary(&e)),
    };
    match e {
        sqlx::Error::Database(ref db) => {
            if db.is_unique_violation() {
                return Error::Conflict {
                    entity: schema.name,
                    kind: unique_kind(schema, db.as_ref()),
                };
            }
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if is_transient_code(store, &code) {
                return backend(format!("transient database error (code {code})"), true, e);
            }
            if is_refused_code(store, &code) {
                return unavailable(
                    &format!("the server refused the connection (code {code})"),
                    false,
                    e,
                );
            }
            if is_connection_code(store, &code) {
                return unavailable(
                    &format!("the server ended the session (code {code})"),
                    true,
                    e,
                );
            }
            backend(format!("database error (code {code})"), false, e)
        }
        sqlx::Error::Io(ref io) => {
            let reason = format!("connection i/o failed: {}", io.kind());
            unavailable(&reason, true, e)
        }
        sqlx::Error::Tls(_) => unavailable("TLS failed", true, e),
        sqlx::Error::PoolTimedOut => {
            unavailable("no pooled connection became free in time", false, e)
        }
        sqlx::Error::PoolClosed => unavailable("the pool is closed", false, e),
        sqlx::Error::WorkerCrashed => unavailable("the connection worker crashed", true, e),
        sqlx::Error::BeginFailed => unavailable("could not begin a transaction", false, e),
        sqlx::Error::Protocol(_) => unavailable("protocol error on the connection", true, e),
        sqlx::Error::Configuration(_) | sqlx::Error::ConfigFile(_) => {
            backend("connection settings rejected".into(), false, e)
        }
        sqlx::Error::ColumnDecode { ref index, .. } => {
            let msg = format!(
                "stored column `{}` does not decode",
                dl_models::truncate_name(index)
            );
            backend(msg, false, e)
        }
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_)
        | sqlx::Error::AnyDriverError(_)
        | sqlx::Error::Migrate(_)
        | sqlx::Error::InvalidSavePointStatement
        | sqlx::Error::InvalidArgument(_) => backend("driver error".into(), false, e),
        _ => backend("unclassified driver error".into(), false, e),
    }
}

/// What is kept of a sqlx error: its variant, and for a database error the
/// code and constraint; for I/O the error kind. Never a message.
pub(crate) fn summary(e: &sqlx::Error) -> DriverError {
    let kind = match e {
        sqlx::Error::Database(db) => {
            let kind = match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => "unique violation",
                sqlx::error::ErrorKind::ForeignKeyViolation => "foreign key violation",
                sqlx::error::ErrorKind::NotNullViolation => "not-null violation",
                sqlx::error::ErrorKind::CheckViolation => "check violation",
                sqlx::error::ErrorKind::ExclusionViolation => "exclusion violation",
                _ => "database error",
            };
            return DriverError::new("sqlx", kind)
                .code(db.code().unwrap_or_default())
                .constraint(db.constraint());
        }
        sqlx::Error::Io(io) => return DriverError::new("sqlx", "io").io_from(io),
        sqlx::Error::Tls(_) => "tls",
        sqlx::Error::PoolTimedOut => "pool timed out",
        sqlx::Error::PoolClosed => "pool closed",
        sqlx::Error::WorkerCrashed => "worker crashed",
        sqlx::Error::BeginFailed => "begin failed",
        sqlx::Error::Protocol(_) => "protocol",
        sqlx::Error::Configuration(_) => "configuration",
        sqlx::Error::ConfigFile(_) => "config file",
        sqlx::Error::ColumnDecode { .. } => "column decode",
        sqlx::Error::RowNotFound => "row not found",
        sqlx::Error::TypeNotFound { .. } => "type not found",
        sqlx::Error::ColumnIndexOutOfBounds { .. } => "column index out of bounds",
        sqlx::Error::ColumnNotFound(_) => "column not found",
        sqlx::Error::Encode(_) => "encode",
        sqlx::Error::Decode(_) => "decode",
        sqlx::Error::AnyDriverError(_) => "driver",
        sqlx::Error::Migrate(_) => "migrate",
        sqlx::Error::InvalidSavePointStatement => "invalid savepoint statement",
        sqlx::Error::InvalidArgument(_) => "invalid argument",
        _ => "unclassified",
    };
    DriverError::new("sqlx", kind)
}

fn unique_kind(schema: &'static EntitySchema, db: &dyn sqlx::error::DatabaseError) -> ConflictKind {
    let constraint = db.constraint().unwrap_or_default();
    let message = db.message();
    if constraint.ends_with("_pkey") {
        return ConflictKind::DuplicateKey;
    }
    for (i, f) in schema.fields.iter().enumerate() {
        let index_name = format!("{}__{}", schema.name, f.name);
        // SQLite: "UNIQUE constraint failed: patients.mrn"
        let sqlite_tail = format!("{}.{}", schema.name, f.name);
        if constraint == index_name || message.ends_with(&sqlite_tail) {
            return if i == schema.key {
                ConflictKind::DuplicateKey
            } else {
                ConflictKind::Unique {
                    field: Some(f.name),
                }
            };
        }
    }
    ConflictKind::Unique { field: None }
}

fn is_transient_code(store: Store, code: &str) -> bool {
    match store {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), and their extended codes.
        Store::Sqlite => code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
        // serialization_failure, deadlock_detected, lock_not_available.
        Store::Postgres => matches!(code, "40001" | "40P01" | "55P03"),
        _ => false,
    }
}

/// Codes of a connection the server refused before any statement ran:
/// cannot connect now, too many connections, connection rejected.
fn is_refused_code(store: Store, code: &str) -> bool {
    match store {
        Store::Postgres => matches!(code, "57P03" | "53300" | "08001" | "08004"),
        _ => false,
    }
}

fn is_connection_code(store: Store, code: &str) -> bool {
    match store {
        // connection exceptions, admin/crash shutdown, cannot connect now,
        // too many connections.
        Store::Postgres => {
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
        }
        _ => false,
    }
}

/// A schema stand-in for errors of transaction calls (begin, commit,
/// rollback), which concern no one entity.
pub(crate) static TRANSACTION_SCHEMA: dl_models::EntitySchema = dl_models::EntitySchema {
    name: "transaction",
    rust_name: "transaction",
    fields: &[],
    key: 0,
    version: None,
};

/// A schema stand-in for errors of calls that concern no entity (pings).
pub(crate) static PING_SCHEMA: dl_models::EntitySchema = dl_models::EntitySchema {
    name: "ping",
    rust_name: "ping",
    fields: &[],
    key: 0,
    version: None,
};

/// A schema stand-in for errors of change-feed calls (read, ack, prune).
pub(crate) static FEED_SCHEMA: dl_models::EntitySchema = dl_models::EntitySchema {
    name: "feed",
    rust_name: "feed",
    fields: &[],
    key: 0,
    version: None,
};

/// A schema stand-in for errors of the layers' own tables (the CDC
/// relay's ledger and sinks).
static LAYER_SCHEMA: dl_models::EntitySchema = dl_models::EntitySchema {
    name: "layer",
    rust_name: "layer",
    fields: &[],
    key: 0,
    version: None,
};

/// Maps a sqlx error of a statement on the layers' own tables (no entity):
/// classified as every other (retryable, never sent, …), its message
/// without values; a unique violation is a `Conflict` of entity `layer`.
#[must_use]
pub fn map_layer_error(store: Store, operation: Operation, e: sqlx::Error) -> Error {
    map_sqlx_error(store, &LAYER_SCHEMA, operation, e)
}
