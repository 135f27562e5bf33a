//! The SQLite pool (the embedded default).

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::settings::PoolSettings;

/// Opens a SQLite pool on `path` (created with its parent folder when
/// absent), in WAL mode with a busy timeout, or a private in-memory database
/// for `:memory:` (one connection, kept for the pool's lifetime).
///
/// # Errors
/// When the folder cannot be created or the database cannot be opened.
pub async fn connect(path: &str, pool: &PoolSettings) -> Result<SqlitePool, sqlx::Error> {
    if path == ":memory:" {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?;
        return SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(pool.acquire_timeout)
            .connect_with(opts)
            .await;
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(pool.acquire_timeout)
        .foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(pool.max_connections)
        .min_connections(pool.min_connections)
        .acquire_timeout(pool.acquire_timeout)
        .idle_timeout(Some(pool.idle_timeout))
        .max_lifetime(Some(pool.max_lifetime))
        .connect_with(opts)
        .await
}
