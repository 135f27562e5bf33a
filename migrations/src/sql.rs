//! PostgreSQL and SQLite runners.
//!
//! - History: a `dl_migrations` table (PostgreSQL: in the configured
//!   schema).
//! - Lock: PostgreSQL's session advisory lock, held on one pooled
//!   connection for the run (a runner that dies loses its session, and the
//!   lock with it); SQLite: a lease row in `dl_migrations_lock`, taken
//!   atomically under SQLite's own write lock, with an expiry so a dead
//!   runner's lease is taken over.
//! - Scripts run statement by statement in one transaction with the history
//!   row, unless the file opts out with `-- dl:no-transaction` as its first
//!   line.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row as _;
#[cfg(feature = "postgres")]
use sqlx::postgres::PgPool;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::SqlitePool;
#[cfg(feature = "postgres")]
use tokio::sync::Mutex;

use crate::engine::{AfterRun, Applied, Target};
use crate::error::MigrationError;
use crate::script::{ScriptFile, StoreKind};
use crate::split::{Statement, statements};

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn as_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn script_statements(
    store: StoreKind,
    script: &ScriptFile,
) -> Result<Vec<Statement>, MigrationError> {
    statements(&script.body, store).map_err(|reason| MigrationError::BadScript {
        path: script.path.clone(),
        reason,
    })
}

/// Runs a script's statements in order on `conn`; the first failure names
/// the statement and its line.
async fn run_statements<DB>(
    conn: &mut DB::Connection,
    store: StoreKind,
    script: &ScriptFile,
    stmts: &[Statement],
) -> Result<(), MigrationError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    for (i, stmt) in stmts.iter().enumerate() {
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(stmt.text.clone()))
            .execute(&mut *conn)
            .await
        {
            return Err(failed(store, script, i, error_line(stmt, &e), &e));
        }
    }
    Ok(())
}

/// The line of an error inside `stmt`: from PostgreSQL's position where it
/// reports one, else the statement's first line.
fn error_line(stmt: &Statement, e: &sqlx::Error) -> u32 {
    #[cfg(feature = "postgres")]
    let position = e
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|p| match p.position() {
            Some(sqlx::postgres::PgErrorPosition::Original(n)) => Some(n),
            _ => None,
        });
    #[cfg(not(feature = "postgres"))]
    let position: Option<usize> = {
        let _ = e;
        None
    };
    match position {
        Some(n) => {
            let before: String = stmt.text.chars().take(n.saturating_sub(1)).collect();
            stmt.line + u32::try_from(before.matches('\n').count()).unwrap_or(0)
        }
        None => stmt.line,
    }
}

fn failed(
    store: StoreKind,
    script: &ScriptFile,
    index: usize,
    line: u32,
    e: &sqlx::Error,
) -> MigrationError {
    let message = match e.as_database_error() {
        Some(d) => d.message().to_owned(),
        None => e.to_string(),
    };
    MigrationError::ScriptFailed {
        store,
        path: script.path.clone(),
        statement: index + 1,
        line: Some(line),
        message,
    }
}

#[cfg(feature = "sqlite")]
fn row_to_applied(row: &sqlx::sqlite::SqliteRow) -> Result<Applied, sqlx::Error> {
    let applied_at: i64 = row.try_get("applied_at")?;
    Ok(Applied {
        version: as_u64(row.try_get("version")?),
        name: row.try_get("name")?,
        checksum: row.try_get("checksum")?,
        applied_at: DateTime::from_timestamp_millis(applied_at).unwrap_or_default(),
        duration_ms: as_u64(row.try_get("duration_ms")?),
        outcome: row.try_get("outcome")?,
        error: row.try_get("error")?,
    })
}

/// The PostgreSQL runner.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct PostgresTarget {
    pool: PgPool,
    schema: String,
    /// The session that waits for, then holds, the advisory lock (and
    /// whether it holds it), detached from the pool: it is closed (and the
    /// lock released) on unlock or when this runner is dropped.
    held: Mutex<Option<(sqlx::PgConnection, bool)>>,
}

#[cfg(feature = "postgres")]
impl PostgresTarget {
    /// A runner over `pool` whose history lives in `schema` (created if
    /// missing); scripts run with `search_path` set to it.
    #[must_use]
    pub fn new(pool: PgPool, schema: &str) -> Self {
        PostgresTarget {
            pool,
            schema: schema.to_owned(),
            held: Mutex::new(None),
        }
    }

    fn table(&self) -> String {
        format!("{}.dl_migrations", quote(&self.schema))
    }

    fn lock_key(&self) -> String {
        format!("data-layer migrations {}", self.schema)
    }

    fn err(&self, what: &str, e: sqlx::Error) -> MigrationError {
        MigrationError::store(StoreKind::Postgres, what, e)
    }

    async fn write_after(
        &self,
        conn: &mut sqlx::PgConnection,
        after: &AfterRun,
    ) -> Result<(), sqlx::Error> {
        match after {
            AfterRun::Record(row) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {} (version, name, checksum, applied_at, duration_ms, outcome, error) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (version) DO UPDATE SET \
                     name = EXCLUDED.name, checksum = EXCLUDED.checksum, applied_at = EXCLUDED.applied_at, \
                     duration_ms = EXCLUDED.duration_ms, outcome = EXCLUDED.outcome, error = EXCLUDED.error",
                    self.table()
                )))
                .bind(as_i64(row.version))
                .bind(&row.name)
                .bind(&row.checksum)
                .bind(row.applied_at)
                .bind(as_i64(row.duration_ms))
                .bind(&row.outcome)
                .bind(&row.error)
                .execute(&mut *conn)
                .await?;
            }
            AfterRun::Forget(version) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {} WHERE version = $1",
                    self.table()
                )))
                .bind(as_i64(*version))
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl Target for PostgresTarget {
    fn store(&self) -> StoreKind {
        StoreKind::Postgres
    }

    async fn ensure_history(&self) -> Result<(), MigrationError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.err("cannot connect", e))?;
        // Concurrent CREATE ... IF NOT EXISTS can still collide: serialize.
        // (A key of its own: the run lock may be held for a long time.)
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("{} (history table)", self.lock_key()))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err("cannot lock the history", e))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {} (\
             version bigint PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, \
             applied_at timestamptz NOT NULL, duration_ms bigint NOT NULL, \
             outcome text NOT NULL, error text)",
            quote(&self.schema),
            self.table()
        )))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err("cannot create the history table", e))?;
        tx.commit()
            .await
            .map_err(|e| self.err("cannot create the history table", e))
    }

    async fn try_lock(&self, _owner: &str, _ttl: Duration) -> Result<bool, MigrationError> {
        // The session is running a script: it is alive, and holds the lock.
        let Ok(mut session) = self.held.try_lock() else {
            return Ok(true);
        };
        if let Some((conn, true)) = session.as_mut() {
            // Renewal: the session (and so the lock) must still be alive.
            return Ok(sqlx::query("SELECT 1").execute(conn).await.is_ok());
        }
        // One session for the whole wait, not a new one per attempt.
        let mut conn = match session.take() {
            Some((conn, _)) => conn,
            None => self
                .pool
                .acquire()
                .await
                .map_err(|e| self.err("cannot connect", e))?
                .detach(),
        };
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(self.lock_key())
            .fetch_one(&mut conn)
            .await
            .map_err(|e| self.err("cannot take the migration lock", e))?;
        *session = Some((conn, got));
        Ok(got)
    }

    async fn unlock(&self, _owner: &str) -> Result<(), MigrationError> {
        if let Some((conn, _)) = self.held.lock().await.take() {
            // Closing the session releases its advisory locks for sure.
            sqlx::Connection::close(conn)
                .await
                .map_err(|e| self.err("cannot release the migration lock", e))?;
        }
        Ok(())
    }

    async fn history(&self) -> Result<Vec<Applied>, MigrationError> {
        let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
            .bind(self.table())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err("cannot read the history", e))?;
        if !exists {
            return Ok(Vec::new());
        }
        let rows: Vec<(
            i64,
            String,
            String,
            DateTime<Utc>,
            i64,
            String,
            Option<String>,
        )> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version, name, checksum, applied_at, duration_ms, outcome, error FROM {}",
            self.table()
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err("cannot read the history", e))?;
        Ok(rows
            .into_iter()
            .map(|r| Applied {
                version: as_u64(r.0),
                name: r.1,
                checksum: r.2,
                applied_at: r.3,
                duration_ms: as_u64(r.4),
                outcome: r.5,
                error: r.6,
            })
            .collect())
    }

    /// Runs on the session that holds the advisory lock: if that session
    /// is lost, so is the lock, and the script's transaction with it (it
    /// cannot commit on a connection that is gone). That is the fence.
    async fn run(
        &self,
        script: &ScriptFile,
        transactional: bool,
        after: &AfterRun,
        _owner: &str,
    ) -> Result<(), MigrationError> {
        let store = StoreKind::Postgres;
        let stmts = script_statements(store, script)?;
        let search_path = format!("SET search_path TO {}, public", quote(&self.schema));
        let mut session = self.held.lock().await;
        let Some((conn, true)) = session.as_mut() else {
            return Err(MigrationError::LeaseLost { store });
        };
        if transactional {
            let mut tx = sqlx::Connection::begin(&mut *conn)
                .await
                .map_err(|e| self.err("cannot begin", e))?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(search_path.replacen(
                "SET",
                "SET LOCAL",
                1,
            )))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err("cannot set search_path", e))?;
            run_statements::<sqlx::Postgres>(&mut tx, store, script, &stmts).await?;
            self.write_after(&mut tx, after)
                .await
                .map_err(|e| self.err("cannot record the history", e))?;
            tx.commit()
                .await
                .map_err(|e| self.err("cannot commit the script", e))
        } else {
            sqlx::raw_sql(sqlx::AssertSqlSafe(search_path))
                .execute(&mut *conn)
                .await
                .map_err(|e| self.err("cannot set search_path", e))?;
            let ran = run_statements::<sqlx::Postgres>(&mut *conn, store, script, &stmts).await;
            let _ = sqlx::raw_sql("RESET search_path").execute(&mut *conn).await;
            ran?;
            self.write_after(&mut *conn, after)
                .await
                .map_err(|e| self.err("cannot record the history", e))
        }
    }

    async fn record(&self, row: &Applied) -> Result<(), MigrationError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.err("cannot connect", e))?;
        self.write_after(&mut conn, &AfterRun::Record(row.clone()))
            .await
            .map_err(|e| self.err("cannot record the history", e))
    }

    async fn forget(&self, version: u64) -> Result<(), MigrationError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.err("cannot connect", e))?;
        self.write_after(&mut conn, &AfterRun::Forget(version))
            .await
            .map_err(|e| self.err("cannot update the history", e))
    }
}

/// The SQLite runner.
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone)]
pub struct SqliteTarget {
    pool: SqlitePool,
}

#[cfg(feature = "sqlite")]
impl SqliteTarget {
    /// A runner over `pool`.
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        SqliteTarget { pool }
    }

    fn err(what: &str, e: sqlx::Error) -> MigrationError {
        MigrationError::store(StoreKind::Sqlite, what, e)
    }

    /// [`MigrationError::LeaseLost`] unless the lease row names `owner`.
    /// A write (it takes SQLite's one write lock for the transaction).
    async fn still_held(
        conn: &mut sqlx::SqliteConnection,
        owner: &str,
    ) -> Result<(), MigrationError> {
        let held =
            sqlx::query("UPDATE dl_migrations_lock SET owner = owner WHERE id = 1 AND owner = ?")
                .bind(owner)
                .execute(&mut *conn)
                .await
                .map_err(|e| Self::err("cannot check the migration lease", e))?;
        if held.rows_affected() == 1 {
            Ok(())
        } else {
            Err(MigrationError::LeaseLost {
                store: StoreKind::Sqlite,
            })
        }
    }

    async fn write_after(
        conn: &mut sqlx::SqliteConnection,
        after: &AfterRun,
    ) -> Result<(), sqlx::Error> {
        match after {
            AfterRun::Record(row) => {
                sqlx::query(
                    "INSERT INTO dl_migrations (version, name, checksum, applied_at, duration_ms, outcome, error) \
                     VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (version) DO UPDATE SET \
                     name = excluded.name, checksum = excluded.checksum, applied_at = excluded.applied_at, \
                     duration_ms = excluded.duration_ms, outcome = excluded.outcome, error = excluded.error",
                )
                .bind(as_i64(row.version))
                .bind(&row.name)
                .bind(&row.checksum)
                .bind(row.applied_at.timestamp_millis())
                .bind(as_i64(row.duration_ms))
                .bind(&row.outcome)
                .bind(&row.error)
                .execute(&mut *conn)
                .await?;
            }
            AfterRun::Forget(version) => {
                sqlx::query("DELETE FROM dl_migrations WHERE version = ?")
                    .bind(as_i64(*version))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl Target for SqliteTarget {
    fn store(&self) -> StoreKind {
        StoreKind::Sqlite
    }

    async fn ensure_history(&self) -> Result<(), MigrationError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS dl_migrations (version INTEGER PRIMARY KEY, \
             name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at INTEGER NOT NULL, \
             duration_ms INTEGER NOT NULL, outcome TEXT NOT NULL, error TEXT); \
             CREATE TABLE IF NOT EXISTS dl_migrations_lock (id INTEGER PRIMARY KEY CHECK (id = 1), \
             owner TEXT NOT NULL, expires_at INTEGER NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|e| Self::err("cannot create the history table", e))
    }

    async fn try_lock(&self, owner: &str, ttl: Duration) -> Result<bool, MigrationError> {
        let now = Utc::now().timestamp_millis();
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let done = sqlx::query(
            "INSERT INTO dl_migrations_lock (id, owner, expires_at) VALUES (1, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
             WHERE dl_migrations_lock.owner = excluded.owner OR dl_migrations_lock.expires_at < ?",
        )
        .bind(owner)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await;
        match done {
            Ok(r) => Ok(r.rows_affected() == 1),
            // Another runner is writing right now: not ours yet.
            Err(sqlx::Error::Database(d)) if d.message().contains("locked") => Ok(false),
            Err(e) => Err(Self::err("cannot take the migration lease", e)),
        }
    }

    async fn unlock(&self, owner: &str) -> Result<(), MigrationError> {
        sqlx::query("DELETE FROM dl_migrations_lock WHERE owner = ?")
            .bind(owner)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| Self::err("cannot release the migration lease", e))
    }

    async fn history(&self) -> Result<Vec<Applied>, MigrationError> {
        let exists: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'dl_migrations'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Self::err("cannot read the history", e))?;
        if exists.is_none() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT version, name, checksum, applied_at, duration_ms, outcome, error FROM dl_migrations",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Self::err("cannot read the history", e))?;
        rows.iter()
            .map(row_to_applied)
            .collect::<Result<_, _>>()
            .map_err(|e| Self::err("cannot read the history", e))
    }

    async fn run(
        &self,
        script: &ScriptFile,
        transactional: bool,
        after: &AfterRun,
        owner: &str,
    ) -> Result<(), MigrationError> {
        let store = StoreKind::Sqlite;
        let stmts = script_statements(store, script)?;
        if transactional {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| Self::err("cannot open", e))?;
            run_statements::<sqlx::Sqlite>(&mut tx, store, script, &stmts).await?;
            // The fence: the lease row still names this runner, checked in
            // the transaction that commits the script (SQLite has one
            // writer: nobody can take the lease between this and COMMIT).
            Self::still_held(&mut tx, owner).await?;
            Self::write_after(&mut tx, after)
                .await
                .map_err(|e| Self::err("cannot record the history", e))?;
            tx.commit()
                .await
                .map_err(|e| Self::err("cannot commit the script", e))
        } else {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| Self::err("cannot open", e))?;
            run_statements::<sqlx::Sqlite>(&mut conn, store, script, &stmts).await?;
            // Its statements are done; the history row is fenced.
            let mut tx = sqlx::Connection::begin(&mut *conn)
                .await
                .map_err(|e| Self::err("cannot open", e))?;
            Self::still_held(&mut tx, owner).await?;
            Self::write_after(&mut tx, after)
                .await
                .map_err(|e| Self::err("cannot record the history", e))?;
            tx.commit()
                .await
                .map_err(|e| Self::err("cannot record the history", e))
        }
    }

    async fn record(&self, row: &Applied) -> Result<(), MigrationError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Self::err("cannot open", e))?;
        Self::write_after(&mut conn, &AfterRun::Record(row.clone()))
            .await
            .map_err(|e| Self::err("cannot record the history", e))
    }

    async fn forget(&self, version: u64) -> Result<(), MigrationError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Self::err("cannot open", e))?;
        Self::write_after(&mut conn, &AfterRun::Forget(version))
            .await
            .map_err(|e| Self::err("cannot update the history", e))
    }
}
