//! The relational store's pool as the layers above the repositories use
//! it for their own tables (the CDC relay's ledger, the saga log): one
//! enum over the SQLite and PostgreSQL pools, with the schema of the
//! tables on PostgreSQL.

use std::fmt;

use crate::error::{Error, Operation, Store};
use crate::sqlx_errors::map_layer_error;

/// A pool of a relational store, and on PostgreSQL the schema its tables
/// are in.
#[derive(Clone)]
pub enum SqlTarget {
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL, with the schema of the tables.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool, String),
}

impl fmt::Debug for SqlTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "sqlite")]
            SqlTarget::Sqlite(_) => f.write_str("SqlTarget::Sqlite"),
            #[cfg(feature = "postgres")]
            SqlTarget::Postgres(_, schema) => {
                f.debug_tuple("SqlTarget::Postgres").field(schema).finish()
            }
        }
    }
}

/// `"name"`, quotes doubled: an identifier quoted for either store.
#[must_use]
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl SqlTarget {
    /// The store.
    #[must_use]
    pub fn store(&self) -> Store {
        match self {
            #[cfg(feature = "sqlite")]
            SqlTarget::Sqlite(_) => Store::Sqlite,
            #[cfg(feature = "postgres")]
            SqlTarget::Postgres(..) => Store::Postgres,
        }
    }

    /// A table of this target, quoted, and qualified by the schema on
    /// PostgreSQL.
    #[must_use]
    pub fn table(&self, name: &str) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            SqlTarget::Sqlite(_) => quote_ident(name),
            #[cfg(feature = "postgres")]
            SqlTarget::Postgres(_, schema) => {
                format!("{}.{}", quote_ident(schema), quote_ident(name))
            }
        }
    }

    /// Maps a sqlx error of `op` on this target (no values in its text).
    pub fn err(&self, op: Operation) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |e| map_layer_error(self.store(), op, e)
    }
}
