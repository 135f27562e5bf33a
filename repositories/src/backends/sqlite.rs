//! The SQLite backend (sqlx): the embedded default.
//!
//! One STRICT table per entity with typed columns (text, integer, real;
//! dates as ISO text, timestamps as integer milliseconds, UUIDs as
//! lower-case hyphenated text, json as text), a unique index per
//! `#[indexed(unique)]` field and an index per `#[indexed]` field. Every value
//! is a bound parameter; every identifier comes from the schema.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, NaiveDate, Utc};
use dl_models::{EntitySchema, FieldType, Record, Value};
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Row as _, Sqlite};

use crate::backend::{Capabilities, SchemaId, check_columns, check_unique_indexes};
use crate::error::{ConflictKind, Error, Operation, Result, Store};
use crate::query::{Cond, ListRequest, ValidPatch};
use crate::sql::{Bound, Dialect, SqlWriter, Statements, columns, ident, statements};
use crate::sqlx_errors::map_sqlx_error;

/// Most bound values in one statement (SQLite's limit is 32766).
const MAX_VARIABLES: usize = 30_000;

type Q<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

/// The SQLite backend over a sqlx pool.
#[derive(Clone)]
pub struct SqliteBackend {
    pool: SqlitePool,
    statements: Arc<RwLock<HashMap<SchemaId, Arc<Statements>>>>,
    /// The transaction this backend is bound to (see `Backend::begin`).
    tx: Option<super::sql_common::Shared<Sqlite>>,
    /// Set when a write in the bound transaction wrote a change event.
    tx_captured: Arc<std::sync::atomic::AtomicBool>,
    /// The entities whose writes become change events (none: no feed).
    capture: Option<Arc<super::sql_common::CaptureState>>,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("in_transaction", &self.tx.is_some())
            .field("capture", &self.capture.as_ref().map(|c| &c.capture))
            .finish_non_exhaustive()
    }
}

impl super::sql_common::SqlStore for SqliteBackend {
    type Db = Sqlite;
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
}

impl SqliteBackend {
    /// A backend over a pool (see `dl_connections::sqlite` to build one).
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        SqliteBackend {
            pool,
            statements: Arc::default(),
            tx: None,
            tx_captured: Arc::default(),
            capture: None,
        }
    }

    /// Writes of the entities `capture` names become change events, each
    /// in the same transaction as its write (see [`crate::feed`]); the
    /// feed's tables come from the migration `2_change_feed.sql`.
    #[must_use]
    pub fn with_capture(mut self, capture: Arc<crate::feed::Capture>) -> Self {
        self.capture = Some(Arc::new(super::sql_common::CaptureState::new(
            capture, None,
        )));
        self
    }

    fn table(&self, schema: &EntitySchema) -> String {
        ident(schema.name)
    }

    /// The parameters a captured statement takes before the write's own
    /// (see [`crate::sql_capture::sqlite_binds`]).
    fn capture_prefix(
        &self,
        q: Q<'static>,
        schema: &'static EntitySchema,
        write: crate::sql_capture::Write,
        key: &Value,
    ) -> Q<'static> {
        self.bind_capture(q, schema, crate::sql_capture::sqlite_binds(write).0, key)
    }

    /// The parameters a captured statement takes after the write's own.
    fn capture_binds(
        &self,
        q: Q<'static>,
        schema: &'static EntitySchema,
        write: crate::sql_capture::Write,
        key: &Value,
    ) -> Q<'static> {
        self.bind_capture(q, schema, crate::sql_capture::sqlite_binds(write).1, key)
    }

    fn bind_capture(
        &self,
        mut q: Q<'static>,
        schema: &'static EntitySchema,
        binds: &[crate::sql_capture::SqliteBind],
        key: &Value,
    ) -> Q<'static> {
        let id = self
            .capture
            .as_ref()
            .map(|c| c.capture.key_id(schema, key))
            .unwrap_or_default();
        for b in binds {
            q = match b {
                crate::sql_capture::SqliteBind::KeyId => q.bind(id.clone()),
                crate::sql_capture::SqliteBind::Key => bind(q, schema.key_field().ty, key),
            };
        }
        q
    }

    /// Runs a captured write: in the bound transaction inside a savepoint;
    /// else as one `BEGIN IMMEDIATE … COMMIT` batch on a connection of the
    /// pool, in a task of its own, so that a caller that stops waiting
    /// cannot leave the batch half-run with its transaction open; a batch
    /// that failed is rolled back there, and a connection that cannot roll
    /// back is closed rather than returned to the pool.
    async fn run_captured(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        q: Q<'static>,
    ) -> Result<Vec<SqliteRow>> {
        if self.tx.is_some() {
            let mut conn = self.conn(schema, op).await?;
            let mut savepoint = sqlx::Connection::begin(&mut *conn)
                .await
                .map_err(|e| self.err(schema, op, e))?;
            let rows = q
                .fetch_all(&mut *savepoint)
                .await
                .map_err(|e| self.err(schema, op, e))?;
            savepoint
                .commit()
                .await
                .map_err(|e| self.err(schema, op, e))?;
            return Ok(rows);
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.err(schema, op, e))?;
        let task = tokio::spawn(async move {
            let rows = q.fetch_all(&mut *conn).await;
            if rows.is_err() {
                match sqlx::query("ROLLBACK").execute(&mut *conn).await {
                    Ok(_) => {}
                    Err(e) if e.to_string().contains("no transaction is active") => {}
                    Err(_) => conn.close_on_drop(),
                }
            }
            rows
        });
        match task.await {
            Ok(rows) => rows.map_err(|e| self.err(schema, op, e)),
            Err(_) => Err(Error::Backend {
                store: Store::Sqlite,
                operation: op,
                message: "the captured write's task ended before answering".into(),
                retryable: false,
                source: None,
            }),
        }
    }

    /// SQLite needs no stamping at commit: its single writer makes the
    /// outbox's ids commit order.
    #[allow(clippy::unused_self)]
    fn stamp_sql(&self) -> Option<Arc<str>> {
        None
    }

    /// The feed of this database, when capture is on.
    fn feed_of_store(&self) -> Result<Arc<dyn crate::feed::ChangeFeed>> {
        match &self.capture {
            Some(c) => Ok(Arc::new(SqliteFeed {
                pool: self.pool.clone(),
                tables: c.tables.clone(),
            })),
            None => Err(crate::feed::no_feed(
                Store::Sqlite,
                "no entity is captured: name entities in cdc.entities",
            )),
        }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn has_statements(&self, schema: &'static EntitySchema) -> bool {
        self.statements
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&SchemaId::of(schema))
    }

    fn statements(&self, schema: &'static EntitySchema) -> Arc<Statements> {
        if let Some(s) = self
            .statements
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&SchemaId::of(schema))
        {
            return Arc::clone(s);
        }
        let s = Arc::new(statements(Dialect::Sqlite, &ident(schema.name), schema));
        self.statements
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(SchemaId::of(schema), Arc::clone(&s));
        s
    }

    fn err(&self, schema: &'static EntitySchema, op: Operation, e: sqlx::Error) -> Error {
        map_sqlx_error(Store::Sqlite, schema, op, e)
    }

    // After a conditional write matched no row: `None` if the row is
    // absent, or the version it has now.
    super::sql_common::sqlx_stored_version!();
}

/// The DDL this backend expects for an entity: a STRICT table and its
/// indexes. The backend never runs it; it is a starting point for a
/// migration script (`migrations/sqlite/<version>_<name>.sql`).
#[must_use]
pub fn create_table_sql(schema: &EntitySchema) -> Vec<String> {
    let table = ident(schema.name);
    let mut cols = Vec::with_capacity(schema.fields.len());
    for (i, f) in schema.fields.iter().enumerate() {
        let ty = match f.ty {
            FieldType::Int | FieldType::Bool | FieldType::Timestamp => "INTEGER",
            FieldType::Float => "REAL",
            FieldType::Text | FieldType::Date | FieldType::Uuid | FieldType::Json => "TEXT",
        };
        let mut col = format!("{} {ty}", ident(f.name));
        if !f.nullable {
            col.push_str(" NOT NULL");
        }
        if i == schema.key {
            col.push_str(" PRIMARY KEY");
        }
        cols.push(col);
    }
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} ({}) STRICT",
        cols.join(", ")
    )];
    for (i, f) in schema.fields.iter().enumerate() {
        if i == schema.key || !f.indexed {
            continue;
        }
        out.push(format!(
            "CREATE {}INDEX IF NOT EXISTS {} ON {table} ({})",
            if f.unique { "UNIQUE " } else { "" },
            ident(&format!("{}__{}", schema.name, f.name)),
            ident(f.name)
        ));
    }
    out
}

/// Binds one value for a column of type `ty`.
fn bind<'q>(q: Q<'q>, ty: FieldType, v: &Value) -> Q<'q> {
    match v {
        Value::Null => match ty {
            FieldType::Int | FieldType::Bool | FieldType::Timestamp => q.bind(None::<i64>),
            FieldType::Float => q.bind(None::<f64>),
            FieldType::Text | FieldType::Date | FieldType::Uuid | FieldType::Json => {
                q.bind(None::<String>)
            }
        },
        Value::Bool(b) => q.bind(i64::from(*b)),
        Value::Int(i) => q.bind(*i),
        Value::Float(x) => q.bind(*x),
        Value::Text(s) => q.bind(s.clone()),
        Value::Date(d) => q.bind(d.format("%Y-%m-%d").to_string()),
        Value::Timestamp(t) => q.bind(t.timestamp_millis()),
        Value::Uuid(u) => q.bind(u.hyphenated().to_string()),
        Value::Json(j) => q.bind(j.to_string()),
    }
}

/// A list of values as the JSON array `json_each` reads, each in its
/// column's storage form.
fn json_list(values: &[Value]) -> String {
    let arr: Vec<serde_json::Value> = values
        .iter()
        .map(|v| match v {
            Value::Bool(b) => serde_json::Value::from(i64::from(*b)),
            Value::Timestamp(t) => serde_json::Value::from(t.timestamp_millis()),
            other => other.to_json(),
        })
        .collect();
    serde_json::Value::Array(arr).to_string()
}

fn bind_all<'q>(mut q: Q<'q>, schema: &EntitySchema, binds: &[(Option<usize>, Bound)]) -> Q<'q> {
    for (field, b) in binds {
        let ty = field.map_or(FieldType::Int, |i| schema.fields[i].ty);
        q = match b {
            Bound::One(v) => bind(q, ty, v),
            Bound::List(vs) => q.bind(json_list(vs)),
            Bound::Len(n) => q.bind(*n),
        };
    }
    q
}

fn decode_row(
    schema: &'static EntitySchema,
    row: &SqliteRow,
) -> std::result::Result<Record, sqlx::Error> {
    let mut values = Vec::with_capacity(schema.fields.len());
    for (i, f) in schema.fields.iter().enumerate() {
        let bad = |what: &str| sqlx::Error::ColumnDecode {
            index: f.name.to_owned(),
            source: format!("stored {what} does not parse").into(),
        };
        let v = match f.ty {
            FieldType::Text => row.try_get::<Option<String>, _>(i)?.map(Value::Text),
            FieldType::Int => row.try_get::<Option<i64>, _>(i)?.map(Value::Int),
            FieldType::Float => row.try_get::<Option<f64>, _>(i)?.map(Value::Float),
            FieldType::Bool => row
                .try_get::<Option<i64>, _>(i)?
                .map(|b| Value::Bool(b != 0)),
            FieldType::Date => match row.try_get::<Option<String>, _>(i)? {
                Some(s) => Some(Value::Date(
                    NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|_| bad("date"))?,
                )),
                None => None,
            },
            FieldType::Timestamp => match row.try_get::<Option<i64>, _>(i)? {
                Some(ms) => Some(Value::Timestamp(
                    DateTime::from_timestamp_millis(ms).ok_or_else(|| bad("timestamp"))?,
                )),
                None => None,
            },
            FieldType::Uuid => match row.try_get::<Option<String>, _>(i)? {
                Some(s) => Some(Value::Uuid(
                    uuid::Uuid::parse_str(&s).map_err(|_| bad("uuid"))?,
                )),
                None => None,
            },
            FieldType::Json => match row.try_get::<Option<String>, _>(i)? {
                Some(s) => Some(Value::Json(
                    serde_json::from_str(&s).map_err(|_| bad("json"))?,
                )),
                None => None,
            },
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Record(values))
}

super::sql_common::sqlx_backend!(SqliteBackend, Store::Sqlite, Dialect::Sqlite, {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    async fn prepare(&self, schema: &'static EntitySchema) -> Result<()> {
        let op = Operation::Prepare;
        // Inside a transaction, an entity the store already checked (its
        // statements are shared) is not checked again.
        if self.tx.is_some() && self.has_statements(schema) {
            return Ok(());
        }
        let table = ident(schema.name);
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
            .bind(schema.name)
            .fetch_all(&mut *self.conn(schema, op).await?)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        check_columns(Store::Sqlite, schema, &table, &columns)?;
        // Columns with a single-column, non-partial unique index.
        let unique: Vec<String> = sqlx::query_scalar(
            "SELECT ii.name FROM pragma_index_list(?1) AS il, pragma_index_info(il.name) AS ii \
             WHERE il.\"unique\" = 1 AND il.partial = 0 \
             AND (SELECT count(*) FROM pragma_index_info(il.name)) = 1",
        )
        .bind(schema.name)
        .fetch_all(&mut *self.conn(schema, op).await?)
        .await
        .map_err(|e| self.err(schema, op, e))?;
        check_unique_indexes(Store::Sqlite, schema, &unique)?;
        if crate::feed::captured(self.capture.as_ref().map(|c| &c.capture), schema) {
            for t in ["dl_feed", "dl_feed_keys", "dl_feed_consumers"] {
                let cols: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
                        .bind(t)
                        .fetch_all(&mut *self.conn(schema, op).await?)
                        .await
                        .map_err(|e| self.err(schema, op, e))?;
                if cols.is_empty() {
                    return Err(crate::feed::feed_not_ready(Store::Sqlite, schema, t));
                }
            }
        }
        self.statements(schema);
        Ok(())
    }

    async fn insert_many(&self, schema: &'static EntitySchema, records: &[Record]) -> Result<()> {
        let op = Operation::InsertMany;
        let table = ident(schema.name);
        let cols = columns(schema);
        let row_marks = format!("({})", vec!["?"; schema.fields.len()].join(", "));
        let per_chunk = (MAX_VARIABLES / schema.fields.len()).clamp(1, 500);
        // A transaction of its own, or a savepoint inside the bound one:
        // all or nothing either way.
        let mut conn = self.conn(schema, op).await?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        for chunk in records.chunks(per_chunk) {
            let sql = format!(
                "INSERT INTO {table} ({cols}) VALUES {}",
                vec![row_marks.as_str(); chunk.len()].join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for record in chunk {
                for (f, v) in schema.fields.iter().zip(&record.0) {
                    q = bind(q, f.ty, v);
                }
            }
            q.execute(&mut *tx)
                .await
                .map_err(|e| self.err(schema, op, e))?;
        }
        if let Some(c) = self.capture.as_ref().filter(|c| c.capture.captures(schema)) {
            let ids: Vec<String> = records
                .iter()
                .map(|r| c.capture.key_id(schema, r.get(schema.key)))
                .collect();
            let ids = serde_json::Value::from(ids).to_string();
            let keys: Vec<Value> = records.iter().map(|r| r.get(schema.key).clone()).collect();
            let [seqs, events] = crate::sql_capture::sqlite_capture_many(&c.tables, &table, schema);
            sqlx::query(AssertSqlSafe(seqs))
                .bind(ids.clone())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(schema, op, e))?;
            sqlx::query(AssertSqlSafe(events))
                .bind(ids)
                .bind(json_list(&keys))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(schema, op, e))?;
        }
        tx.commit().await.map_err(|e| self.err(schema, op, e))?;
        Ok(())
    }

    async fn get_many(&self, schema: &'static EntitySchema, keys: &[Value]) -> Result<Vec<Record>> {
        let st = self.statements(schema);
        let rows = sqlx::query(AssertSqlSafe(Arc::clone(&st.get_many)))
            .bind(json_list(keys))
            .fetch_all(&mut *self.conn(schema, Operation::GetMany).await?)
            .await
            .map_err(|e| self.err(schema, Operation::GetMany, e))?;
        rows.iter()
            .map(|r| decode_row(schema, r))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(schema, Operation::GetMany, e))
    }
});

/// The change feed of a SQLite database (see [`crate::feed`]).
#[derive(Debug)]
struct SqliteFeed {
    pool: SqlitePool,
    tables: crate::sql_capture::FeedTables,
}

/// Milliseconds since the epoch, now, in SQLite.
const SQLITE_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

impl SqliteFeed {
    fn err(&self, e: sqlx::Error) -> Error {
        crate::sqlx_errors::map_sqlx_error(
            Store::Sqlite,
            &crate::sqlx_errors::FEED_SCHEMA,
            Operation::Feed,
            e,
        )
    }

    /// The last position ever written (kept by `AUTOINCREMENT` also when
    /// the events are pruned).
    fn last_sql() -> &'static str {
        "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'dl_feed'), 0)"
    }

    fn events(rows: &[SqliteRow]) -> Result<Vec<crate::feed::ChangeEvent>> {
        rows.iter()
            .map(|r| {
                let get = |e: sqlx::Error| {
                    let _ = e;
                    crate::feed::feed_defect(Store::Sqlite, "a row that does not read as an event")
                };
                let ms: i64 = r.try_get(5).map_err(get)?;
                crate::feed::ChangeEvent::from_row(
                    Store::Sqlite,
                    r.try_get(0).map_err(get)?,
                    r.try_get(1).map_err(get)?,
                    &r.try_get::<String, _>(2).map_err(get)?,
                    r.try_get(3).map_err(get)?,
                    r.try_get(4).map_err(get)?,
                    DateTime::from_timestamp_millis(ms).ok_or_else(|| {
                        crate::feed::feed_defect(Store::Sqlite, "an event with a bad time")
                    })?,
                    r.try_get(6).map_err(get)?,
                    r.try_get(7).map_err(get)?,
                )
            })
            .collect()
    }

    fn select(&self) -> String {
        format!(
            "SELECT \"position\", \"entity\", \"op\", \"key_id\", \"seq\", \"committed_at\", \
             \"schema_version\", \"after_image\" FROM {}",
            self.tables.feed
        )
    }

    async fn consumer_position(&self, consumer: &str) -> Result<u64> {
        crate::feed::check_consumer_name(consumer)?;
        let pos: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT \"position\" FROM {} WHERE \"name\" = ?1",
            self.tables.consumers
        )))
        .bind(consumer)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        pos.map(|p| u64::try_from(p).unwrap_or(0))
            .ok_or_else(crate::feed::not_registered)
    }
}

#[async_trait::async_trait]
impl crate::feed::ChangeFeed for SqliteFeed {
    fn store(&self) -> Store {
        Store::Sqlite
    }

    async fn register(&self, consumer: &str, from_start: bool) -> Result<u64> {
        crate::feed::check_consumer_name(consumer)?;
        let start = if from_start { "0" } else { Self::last_sql() };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (\"name\", \"position\", \"registered_at\") VALUES (?1, {start}, {SQLITE_NOW_MS}) \
             ON CONFLICT (\"name\") DO NOTHING",
            self.tables.consumers
        )))
        .bind(consumer)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        self.consumer_position(consumer).await
    }

    async fn unregister(&self, consumer: &str) -> Result<bool> {
        crate::feed::check_consumer_name(consumer)?;
        let done = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE \"name\" = ?1",
            self.tables.consumers
        )))
        .bind(consumer)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn read(&self, consumer: &str, limit: usize) -> Result<Vec<crate::feed::ChangeEvent>> {
        crate::feed::check_limit(limit)?;
        let after = self.consumer_position(consumer).await?;
        self.events_after(after, None, limit).await
    }

    async fn ack(&self, consumer: &str, position: u64) -> Result<()> {
        crate::feed::check_consumer_name(consumer)?;
        let pos = i64::try_from(position).unwrap_or(i64::MAX);
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET \"position\" = max(\"position\", ?2), \"acked_at\" = {SQLITE_NOW_MS} \
             WHERE \"name\" = ?1 AND ?2 <= {}",
            self.tables.consumers,
            Self::last_sql()
        )))
        .bind(consumer)
        .bind(pos)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        self.consumer_position(consumer).await?;
        let last: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT {}", Self::last_sql())))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Err(crate::feed::past_the_end(
            position,
            u64::try_from(last).unwrap_or(0),
        ))
    }

    async fn events_after(
        &self,
        position: u64,
        entity: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::feed::ChangeEvent>> {
        crate::feed::check_limit(limit)?;
        crate::feed::check_entity_name(entity)?;
        let sql = format!(
            "{} WHERE \"position\" > ?1 AND (?2 IS NULL OR \"entity\" = ?2) ORDER BY \"position\" LIMIT ?3",
            self.select()
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .bind(entity)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Self::events(&rows)
    }

    async fn status(&self) -> Result<crate::feed::FeedStatus> {
        let t = &self.tables;
        let (events, last): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM {}), {}",
            t.feed,
            Self::last_sql()
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT \"name\", \"position\", \"acked_at\" FROM {} ORDER BY \"name\"",
            t.consumers
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let oldest: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT min(f.\"committed_at\") FROM {} AS f WHERE f.\"position\" > (SELECT min(\"position\") FROM {})",
            t.feed, t.consumers
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let now = Utc::now();
        Ok(crate::feed::FeedStatus {
            store: Store::Sqlite,
            events: u64::try_from(events).unwrap_or(0),
            last_position: u64::try_from(last).unwrap_or(0),
            oldest_unacked_age: oldest
                .and_then(DateTime::from_timestamp_millis)
                .map(|t| (now - t).to_std().unwrap_or_default()),
            consumers: rows
                .into_iter()
                .map(|(name, pos, acked)| crate::feed::ConsumerStatus {
                    name,
                    position: u64::try_from(pos).unwrap_or(0),
                    lag: u64::try_from(last.saturating_sub(pos)).unwrap_or(0),
                    acked_at: acked.and_then(DateTime::from_timestamp_millis),
                })
                .collect(),
        })
    }

    async fn prune(&self, retention: std::time::Duration) -> Result<u64> {
        let t = &self.tables;
        let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let done = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE \"position\" <= COALESCE((SELECT min(\"position\") FROM {}), {}) \
             AND \"committed_at\" < {SQLITE_NOW_MS} - ?1",
            t.feed,
            t.consumers,
            Self::last_sql()
        )))
        .bind(keep_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }
}
