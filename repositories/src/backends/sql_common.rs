//! The operations the SQL backends share, written once.
//!
//! Each SQL backend module defines `bind`, `bind_all`, `decode_row`, and on
//! its type `statements`, `err` and a `pool` field; these macros
//! expand the operations that are the same text for SQLite and PostgreSQL
//! (only the store, the dialect and the table name differ). The batch
//! operations, DDL and value encoding stay in each module.
//!
//! Every operation runs on [`Conn`]: a connection of the pool, or the one
//! connection of the transaction the backend is bound to
//! ([`Backend::begin`](crate::backend::Backend::begin) makes a backend
//! bound to one). Both deref to the driver's connection, so the statements
//! are the same text either way.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Database;

use crate::backend::{Backend, Transaction, transaction_ended};
use crate::error::{Operation, Result, Store};

/// The transaction a backend is bound to: shared by the backend (its
/// calls) and the [`SqlTransaction`] handle (commit, rollback); `None`
/// once it ended.
pub(crate) type Shared<DB> = Arc<tokio::sync::Mutex<Option<sqlx::Transaction<'static, DB>>>>;

/// A connection to run one operation on.
pub(crate) enum Conn<'a, DB: Database> {
    /// Taken from the pool for this operation (autocommit).
    Pooled(sqlx::pool::PoolConnection<DB>),
    /// The transaction's connection, held for this operation.
    Tx(tokio::sync::MappedMutexGuard<'a, sqlx::Transaction<'static, DB>>),
}

impl<DB: Database> Deref for Conn<'_, DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        match self {
            Conn::Pooled(c) => c,
            Conn::Tx(t) => t,
        }
    }
}

impl<DB: Database> DerefMut for Conn<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self {
            Conn::Pooled(c) => c,
            Conn::Tx(t) => t,
        }
    }
}

/// The connection for one operation: the bound transaction's (held until
/// the operation ends, so calls on one transaction run one at a time), or
/// one from the pool.
pub(crate) async fn conn<'a, DB: Database>(
    pool: &sqlx::Pool<DB>,
    tx: Option<&'a Shared<DB>>,
    entity: &'static str,
) -> std::result::Result<Conn<'a, DB>, ConnError> {
    match tx {
        Some(shared) => tokio::sync::MutexGuard::try_map(shared.lock().await, Option::as_mut)
            .map(Conn::Tx)
            .map_err(|_| ConnError::Ended(entity)),
        None => pool
            .acquire()
            .await
            .map(Conn::Pooled)
            .map_err(ConnError::Pool),
    }
}

/// Why no connection could be had.
pub(crate) enum ConnError {
    /// The bound transaction ended.
    Ended(&'static str),
    /// The pool's error.
    Pool(sqlx::Error),
}

/// The handle of an SQL transaction (SQLite, PostgreSQL).
pub(crate) struct SqlTransaction<DB: Database> {
    pub(crate) store: Store,
    pub(crate) shared: Shared<DB>,
    pub(crate) backend: Arc<dyn Backend>,
    /// Set when a write in the transaction wrote a change event.
    pub(crate) captured: Arc<std::sync::atomic::AtomicBool>,
    /// Run before `COMMIT` when `captured` (PostgreSQL: gives the events
    /// their positions).
    pub(crate) stamp: Option<Arc<str>>,
}

impl<DB: Database> std::fmt::Debug for SqlTransaction<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTransaction")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<DB: Database> SqlTransaction<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    async fn end(&self, commit: bool) -> Result<()> {
        let Some(tx) = self.shared.lock().await.take() else {
            return Err(transaction_ended("transaction"));
        };
        let captured = self.captured.load(std::sync::atomic::Ordering::Acquire);
        let done = match (commit, &self.stamp) {
            (true, Some(stamp)) if captured => {
                let mut tx = tx;
                // Dropped on failure: the transaction rolls back.
                match sqlx::raw_sql(sqlx::AssertSqlSafe(Arc::clone(stamp)))
                    .execute(&mut *tx)
                    .await
                {
                    Ok(_) => tx.commit().await,
                    Err(e) => Err(e),
                }
            }
            (true, _) => tx.commit().await,
            (false, _) => tx.rollback().await,
        };
        done.map_err(|e| {
            crate::sqlx_errors::map_sqlx_error(
                self.store,
                &crate::sqlx_errors::TRANSACTION_SCHEMA,
                Operation::Transaction,
                e,
            )
        })
    }
}

#[async_trait]
impl<DB: Database> Transaction for SqlTransaction<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.end(true).await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.end(false).await
    }
}

/// Dropped without commit or rollback (an error, a panic, a cancelled
/// task): the transaction is taken from the backends bound to it and
/// dropped, which rolls it back (sqlx ends it when the connection goes
/// back to the pool), even while repositories opened on it live on.
impl<DB: Database> Drop for SqlTransaction<DB> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.shared.try_lock() {
            drop(open.take());
        }
    }
}

/// `stored_version` for an SQL backend's inherent impl.
macro_rules! sqlx_stored_version {
    () => {
        async fn stored_version(
            &self,
            schema: &'static EntitySchema,
            op: Operation,
            key: &Value,
        ) -> Result<Option<Option<i64>>> {
            let st = self.statements(schema);
            let Some(sql) = st.stored_version.clone() else {
                let found = self.exists(schema, key).await?;
                return Ok(found.then_some(None));
            };
            let row = bind(sqlx::query(AssertSqlSafe(sql)), schema.key_field().ty, key)
                .fetch_optional(&mut *self.conn(schema, op).await?)
                .await
                .map_err(|e| self.err(schema, op, e))?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some(Some(
                    r.try_get::<i64, _>(0)
                        .map_err(|e| self.err(schema, op, e))?,
                ))),
            }
        }
    };
}

/// An SQL backend's operations as inherent methods (its own, `$own`, then
/// the shared ones), and its `Backend` (one `call`, routed to them) and
/// `Probe`.
macro_rules! sqlx_backend {
    ($ty:ty, $store:expr, $dialect:expr, { $($own:tt)* }) => {
        crate::backend::seam!($ty, pooled, |this, schema, request| {});

        impl $ty {
        $($own)*

        /// The connection for one operation: the bound transaction's, or
        /// one from the pool.
        async fn conn(
            &self,
            schema: &'static EntitySchema,
            op: Operation,
        ) -> Result<super::sql_common::Conn<'_, <$ty as super::sql_common::SqlStore>::Db>> {
            super::sql_common::conn(&self.pool, self.tx.as_ref(), schema.name)
                .await
                .map_err(|e| match e {
                    super::sql_common::ConnError::Ended(entity) => {
                        crate::backend::transaction_ended(entity)
                    }
                    super::sql_common::ConnError::Pool(e) => self.err(schema, op, e),
                })
        }

        /// Begins a transaction: a backend bound to one connection of the
        /// pool, in a database transaction, sharing this one's statements.
        async fn begin_transaction(&self) -> Result<Box<dyn crate::backend::Transaction>> {
            if self.tx.is_some() {
                return Err(crate::backend::nested_transaction($store));
            }
            let tx = self
                .pool
                .begin_with(<$ty as super::sql_common::SqlStore>::BEGIN)
                .await
                .map_err(|e| {
                    crate::sqlx_errors::map_sqlx_error(
                        $store,
                        &crate::sqlx_errors::TRANSACTION_SCHEMA,
                        Operation::Transaction,
                        e,
                    )
                })?;
            let shared: super::sql_common::Shared<_> =
                Arc::new(tokio::sync::Mutex::new(Some(tx)));
            let captured = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut bound = self.clone();
            bound.tx = Some(Arc::clone(&shared));
            bound.tx_captured = Arc::clone(&captured);
            Ok(Box::new(super::sql_common::SqlTransaction {
                store: $store,
                shared,
                backend: Arc::new(bound),
                captured,
                stamp: self.stamp_sql(),
            }))
        }

        pub(crate) fn store(&self) -> Store {
            $store
        }

        /// A round trip on an idle pooled connection when there is one;
        /// else one new connection, made and closed here, so a health
        /// check says why the store cannot be reached ("connection
        /// refused") at once instead of waiting out the pool's acquire
        /// timeout and reporting that no connection became free.
        async fn ping(&self) -> Result<()> {
            use sqlx::Connection as _;
            let map = |e| {
                crate::sqlx_errors::map_sqlx_error($store, &crate::sqlx_errors::PING_SCHEMA, Operation::Ping, e)
            };
            if let Some(mut conn) = self.pool.try_acquire() {
                return sqlx::query("SELECT 1").execute(&mut *conn).await.map(|_| ()).map_err(map);
            }
            let options = self.pool.connect_options();
            let fresh = sqlx::ConnectOptions::connect(&*options).await.map_err(map)?;
            fresh.close().await.map_err(map)
        }

        fn pool_stats(&self) -> Option<crate::backend::PoolStats> {
            let size = self.pool.size();
            let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
            Some(crate::backend::PoolStats {
                size,
                idle,
                in_use: size.saturating_sub(idle),
                max: self.pool.options().get_max_connections(),
            })
        }
    /// The captured form of `base` when `schema` is captured.
    fn captured(
        &self,
        schema: &'static EntitySchema,
        write: crate::sql_capture::Write,
        base: &Arc<str>,
        params: usize,
    ) -> Option<Arc<str>> {
        let c = self.capture.as_ref().filter(|c| c.capture.captures(schema))?;
        Some(c.render($dialect, &self.table(schema), schema, write, base, params, self.tx.is_some()))
    }

    async fn insert(&self, schema: &'static EntitySchema, record: &Record) -> Result<()> {
        let op = Operation::Insert;
        let st = self.statements(schema);
        let captured = self.captured(schema, crate::sql_capture::Write::Insert, &st.insert_one, schema.fields.len());
        let mut q = sqlx::query(AssertSqlSafe(captured.clone().unwrap_or_else(|| Arc::clone(&st.insert_one))));
        let key = record.get(schema.key);
        let write = crate::sql_capture::Write::Insert;
        if captured.is_some() {
            q = self.capture_prefix(q, schema, write, key);
        }
        for (f, v) in schema.fields.iter().zip(&record.0) {
            q = bind(q, f.ty, v);
        }
        if captured.is_some() {
            let q = self.capture_binds(q, schema, write, key);
            self.run_captured(schema, op, q).await?;
            return Ok(());
        }
        q.execute(&mut *self.conn(schema, op).await?)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        Ok(())
    }

    async fn get(&self, schema: &'static EntitySchema, key: &Value) -> Result<Option<Record>> {
        let st = self.statements(schema);
        let row = bind(
            sqlx::query(AssertSqlSafe(Arc::clone(&st.get))),
            schema.key_field().ty,
            key,
        )
        .fetch_optional(&mut *self.conn(schema, Operation::Get).await?)
        .await
        .map_err(|e| self.err(schema, Operation::Get, e))?;
        row.map(|r| decode_row(schema, &r))
            .transpose()
            .map_err(|e| self.err(schema, Operation::Get, e))
    }

    async fn update(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Record>> {
        let op = Operation::Update;
        let check = schema.version.zip(patch.expected_version);
        let patched: Vec<usize> = patch.sets.iter().map(|(i, _)| *i).collect();
        let sql = self
            .statements(schema)
            .update(schema, &patched, check.is_some());
        let params = patched.len() + 1 + usize::from(check.is_some());
        let captured = self.captured(schema, crate::sql_capture::Write::Update, &sql, params);
        let mut q = sqlx::query(AssertSqlSafe(captured.clone().unwrap_or(sql)));
        let write = crate::sql_capture::Write::Update;
        if captured.is_some() {
            q = self.capture_prefix(q, schema, write, key);
        }
        for (i, v) in &patch.sets {
            q = bind(q, schema.fields[*i].ty, v);
        }
        q = bind(q, schema.key_field().ty, key);
        if let Some((_, expected)) = check {
            q = q.bind(expected);
        }
        let row = if captured.is_some() {
            let q = self.capture_binds(q, schema, write, key);
            self.run_captured(schema, op, q).await?.into_iter().next()
        } else {
            q.fetch_optional(&mut *self.conn(schema, op).await?)
                .await
                .map_err(|e| self.err(schema, op, e))?
        };
        if let Some(r) = row {
            return decode_row(schema, &r)
                .map(Some)
                .map_err(|e| self.err(schema, op, e));
        }
        match (check, self.stored_version(schema, op, key).await?) {
            (_, None) => Ok(None),
            (Some((_, expected)), Some(Some(actual))) => Err(Error::Conflict {
                entity: schema.name,
                kind: ConflictKind::VersionMismatch { expected, actual },
            }),
            (_, Some(_)) => Err(Error::Backend {
                store: $store,
                operation: op,
                message: "the row exists but the update matched nothing".into(),
                retryable: true,
                source: None,
            }),
        }
    }

    async fn replace(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
        expected_version: Option<i64>,
    ) -> Result<Record> {
        let op = Operation::Replace;
        let st = self.statements(schema);
        let params = schema.fields.len() + usize::from(schema.version.is_some());
        let captured = self.captured(schema, crate::sql_capture::Write::Replace, &st.replace, params);
        let mut q = sqlx::query(AssertSqlSafe(captured.clone().unwrap_or_else(|| Arc::clone(&st.replace))));
        let key = record.get(schema.key);
        let write = crate::sql_capture::Write::Replace;
        if captured.is_some() {
            q = self.capture_prefix(q, schema, write, key);
        }
        for (i, (f, v)) in schema.fields.iter().zip(&record.0).enumerate() {
            if i != schema.key {
                q = bind(q, f.ty, v);
            }
        }
        q = bind(q, schema.key_field().ty, key);
        if schema.version.is_some() {
            q = q.bind(expected_version.unwrap_or_default());
        }
        let row = if captured.is_some() {
            let q = self.capture_binds(q, schema, write, key);
            self.run_captured(schema, op, q).await?.into_iter().next()
        } else {
            q.fetch_optional(&mut *self.conn(schema, op).await?)
                .await
                .map_err(|e| self.err(schema, op, e))?
        };
        if let Some(r) = row {
            return decode_row(schema, &r).map_err(|e| self.err(schema, op, e));
        }
        match self.stored_version(schema, op, key).await? {
            None => Err(Error::NotFound {
                entity: schema.name,
            }),
            Some(actual) => Err(Error::Conflict {
                entity: schema.name,
                kind: ConflictKind::VersionMismatch {
                    expected: expected_version.unwrap_or_default(),
                    actual: actual.unwrap_or_default(),
                },
            }),
        }
    }

    async fn upsert(&self, schema: &'static EntitySchema, record: &Record) -> Result<Record> {
        let op = Operation::Upsert;
        let st = self.statements(schema);
        let captured = self.captured(schema, crate::sql_capture::Write::Upsert, &st.upsert, schema.fields.len());
        let mut q = sqlx::query(AssertSqlSafe(captured.clone().unwrap_or_else(|| Arc::clone(&st.upsert))));
        let key = record.get(schema.key);
        let write = crate::sql_capture::Write::Upsert;
        if captured.is_some() {
            q = self.capture_prefix(q, schema, write, key);
        }
        for (f, v) in schema.fields.iter().zip(&record.0) {
            q = bind(q, f.ty, v);
        }
        let row = if captured.is_some() {
            let q = self.capture_binds(q, schema, write, key);
            self.run_captured(schema, op, q)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::Backend {
                    store: $store,
                    operation: op,
                    message: "the upsert answered no row".into(),
                    retryable: false,
                    source: None,
                })?
        } else {
            q.fetch_one(&mut *self.conn(schema, op).await?)
                .await
                .map_err(|e| self.err(schema, op, e))?
        };
        decode_row(schema, &row).map_err(|e| self.err(schema, op, e))
    }

    async fn delete(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        let op = Operation::Delete;
        let st = self.statements(schema);
        if let Some(sql) = self.captured(schema, crate::sql_capture::Write::Delete, &st.delete, 1) {
            let write = crate::sql_capture::Write::Delete;
            let q = self.capture_prefix(sqlx::query(AssertSqlSafe(sql)), schema, write, key);
            let q = bind(q, schema.key_field().ty, key);
            let q = self.capture_binds(q, schema, write, key);
            return Ok(!self.run_captured(schema, op, q).await?.is_empty());
        }
        let done = bind(
            sqlx::query(AssertSqlSafe(Arc::clone(&st.delete))),
            schema.key_field().ty,
            key,
        )
        .execute(&mut *self.conn(schema, op).await?)
        .await
        .map_err(|e| self.err(schema, op, e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(
        &self,
        schema: &'static EntitySchema,
        request: &ListRequest,
    ) -> Result<Vec<Record>> {
        let st = self.statements(schema);
        let mut w = SqlWriter::new($dialect, format!("{} WHERE ", st.select));
        w.cond(schema, &request.cond);
        w.order_by(schema, &request.sort);
        w.limit(request.limit);
        let q = bind_all(sqlx::query(AssertSqlSafe(w.sql)), schema, &w.binds);
        let rows = q
            .fetch_all(&mut *self.conn(schema, Operation::List).await?)
            .await
            .map_err(|e| self.err(schema, Operation::List, e))?;
        rows.iter()
            .map(|r| decode_row(schema, r))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(schema, Operation::List, e))
    }

    async fn count(&self, schema: &'static EntitySchema, cond: &Cond) -> Result<u64> {
        let st = self.statements(schema);
        let mut w = SqlWriter::new($dialect, format!("{} WHERE ", st.count));
        w.cond(schema, cond);
        let row = bind_all(sqlx::query(AssertSqlSafe(w.sql)), schema, &w.binds)
            .fetch_one(&mut *self.conn(schema, Operation::Count).await?)
            .await
            .map_err(|e| self.err(schema, Operation::Count, e))?;
        let n: i64 = row
            .try_get(0)
            .map_err(|e| self.err(schema, Operation::Count, e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn exists(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        let st = self.statements(schema);
        let row = bind(
            sqlx::query(AssertSqlSafe(Arc::clone(&st.exists))),
            schema.key_field().ty,
            key,
        )
        .fetch_optional(&mut *self.conn(schema, Operation::Exists).await?)
        .await
        .map_err(|e| self.err(schema, Operation::Exists, e))?;
        Ok(row.is_some())
    }

        }
    };
}

pub(crate) use {sqlx_backend, sqlx_stored_version};

/// A backend's capture: which entities, the feed's tables, and the
/// captured statements rendered so far.
#[derive(Debug)]
pub(crate) struct CaptureState {
    pub capture: Arc<crate::feed::Capture>,
    pub tables: crate::sql_capture::FeedTables,
    rendered: std::sync::RwLock<Rendered>,
}

/// Captured statements by their write's text and whether in a transaction.
type Rendered = std::collections::HashMap<(Arc<str>, bool), Arc<str>>;

/// How many captured statements one backend keeps rendered (past it, a
/// statement is rendered per call instead of growing the cache).
const CAPTURE_CACHE: usize = 256;

impl CaptureState {
    pub(crate) fn new(capture: Arc<crate::feed::Capture>, namespace: Option<&str>) -> Self {
        CaptureState {
            capture,
            tables: crate::sql_capture::FeedTables::new(namespace),
            rendered: std::sync::RwLock::default(),
        }
    }

    /// The captured form of the write `base` (see
    /// [`crate::sql_capture::capture_one`]), rendered once and reused.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn render(
        &self,
        d: crate::sql::Dialect,
        table: &str,
        schema: &dl_models::EntitySchema,
        write: crate::sql_capture::Write,
        base: &Arc<str>,
        params: usize,
        in_tx: bool,
    ) -> Arc<str> {
        let key = (Arc::clone(base), in_tx);
        if let Some(sql) = self
            .rendered
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Arc::clone(sql);
        }
        let sql: Arc<str> = crate::sql_capture::capture_one(
            d,
            &self.tables,
            table,
            schema,
            write,
            base,
            params,
            in_tx,
        )
        .into();
        let mut rendered = self
            .rendered
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if rendered.len() < CAPTURE_CACHE {
            rendered.insert(key, Arc::clone(&sql));
        }
        sql
    }
}

/// What the shared code needs to know of an SQL store's driver.
pub(crate) trait SqlStore {
    /// The sqlx database.
    type Db: Database;
    /// How a transaction begins.
    const BEGIN: &'static str;
}
