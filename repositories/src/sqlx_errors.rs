//! Classifying sqlx errors (SQLite and PostgreSQL) into [`Error`].
//!
//! The classification decides retry and breaker behaviour, so every sqlx
//! variant is named; the `_` arm only covers variants a future sqlx adds
//! (the enum is non-exhaustive), which are treated as non-retryable.

use dl_models::EntitySchema;

use crate::error::{ConflictKind, Error, Operation, Store};

/// Maps a sqlx error. Messages never include values: for database errors we
/// keep the store's error code and class, and the sqlx error as `source()`.
pub(crate) fn map_sqlx_error(
    store: Store,
    schema: &'static EntitySchema,
    operation: Operation,
    e: sqlx::Error,
) -> Error {
    let unavailable = |reason: &str, e: sqlx::Error| Error::Unavailable {
        store,
        operation,
        reason: reason.to_owned(),
        source: Some(Box::new(e)),
    };
    let backend = |message: String, retryable: bool, e: sqlx::Error| Error::Backend {
        store,
        operation,
        message,
        retryable,
        source: Some(Box::new(e)),
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
            if is_connection_code(store, &code) {
                return unavailable(&format!("the server ended the session (code {code})"), e);
            }
            backend(format!("database error (code {code})"), false, e)
        }
        sqlx::Error::Io(_) => unavailable("connection i/o failed", e),
        sqlx::Error::Tls(_) => unavailable("TLS failed", e),
        sqlx::Error::PoolTimedOut => unavailable("no pooled connection became free in time", e),
        sqlx::Error::PoolClosed => unavailable("the pool is closed", e),
        sqlx::Error::WorkerCrashed => unavailable("the connection worker crashed", e),
        sqlx::Error::BeginFailed => unavailable("could not begin a transaction", e),
        sqlx::Error::Protocol(_) => unavailable("protocol error on the connection", e),
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

/// A schema stand-in for errors of calls that concern no entity (pings).
pub(crate) static PING_SCHEMA: dl_models::EntitySchema = dl_models::EntitySchema {
    name: "ping",
    rust_name: "ping",
    fields: &[],
    key: 0,
    version: None,
};
