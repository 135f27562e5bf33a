//! The PostgreSQL backend (sqlx).
//!
//! One table per entity in a PostgreSQL schema (the namespace; `public` by
//! default), typed columns (`text COLLATE "C"` so text compares by bytes as
//! in every other store, `bigint`, `double precision`, `boolean`, `date`,
//! `timestamptz`, `uuid`, `jsonb`), a unique index per `#[indexed(unique)]`
//! field and an index per `#[indexed]` field. Every value is a bound
//! parameter; identifiers come from the schema. `insert_many` is one
//! `INSERT ... SELECT FROM UNNEST(...)` statement and `get_many` one
//! `= ANY($1)` query: one round trip each.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, NaiveDate, Utc};
use dl_models::{EntitySchema, FieldType, Record, Value};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row as _};

use crate::backend::{Capabilities, SchemaId, check_columns, check_unique_indexes};
use crate::error::{ConflictKind, Error, Operation, Result, Store};
use crate::query::{Cond, ListRequest, ValidPatch};
use crate::sql::{Bound, Dialect, SqlWriter, Statements, columns, ident, mark, statements};
use crate::sqlx_errors::map_sqlx_error;

type Q<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// The PostgreSQL backend over a sqlx pool, in one schema (namespace).
#[derive(Clone)]
pub struct PostgresBackend {
    pool: PgPool,
    namespace: String,
    statements: Arc<RwLock<HashMap<SchemaId, Arc<Statements>>>>,
    /// The transaction this backend is bound to (see `Backend::begin`).
    tx: Option<super::sql_common::Shared<Postgres>>,
    /// Set when a write in the bound transaction wrote a change event.
    tx_captured: Arc<std::sync::atomic::AtomicBool>,
    /// The entities whose writes become change events (none: no feed).
    capture: Option<Arc<super::sql_common::CaptureState>>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("namespace", &self.namespace)
            .field("in_transaction", &self.tx.is_some())
            .field("capture", &self.capture.as_ref().map(|c| &c.capture))
            .finish_non_exhaustive()
    }
}

impl super::sql_common::SqlStore for PostgresBackend {
    type Db = Postgres;
    const BEGIN: &'static str = "BEGIN";
}

impl PostgresBackend {
    /// A backend over `pool` whose tables live in the PostgreSQL schema
    /// `namespace` (created when missing). The namespace must match
    /// `[a-z_][a-z0-9_]*` (at most 48 bytes).
    ///
    /// # Errors
    /// `Invalid` for a bad namespace name.
    pub fn new(pool: PgPool, namespace: &str) -> Result<Self> {
        if !dl_models::is_valid_identifier(namespace) {
            return Err(Error::invalid(
                "postgres",
                Some(namespace),
                "a namespace must match [a-z_][a-z0-9_]* (at most 48 bytes)",
            ));
        }
        Ok(PostgresBackend {
            pool,
            namespace: namespace.to_owned(),
            statements: Arc::default(),
            tx: None,
            tx_captured: Arc::default(),
            capture: None,
        })
    }

    /// Writes of the entities `capture` names become change events, each
    /// in the same statement as its write (see [`crate::feed`]); the
    /// feed's tables come from the migration `2_change_feed.sql`, in this
    /// backend's namespace.
    #[must_use]
    pub fn with_capture(mut self, capture: Arc<crate::feed::Capture>) -> Self {
        self.capture = Some(Arc::new(super::sql_common::CaptureState::new(
            capture,
            Some(&self.namespace),
        )));
        self
    }

    /// A captured statement takes no parameter before the write's own.
    #[allow(clippy::unused_self)]
    fn capture_prefix(
        &self,
        q: Q<'static>,
        _: &'static EntitySchema,
        _: crate::sql_capture::Write,
        _: &Value,
    ) -> Q<'static> {
        q
    }

    /// The parameter a captured statement adds after the write's own: the
    /// key's id.
    fn capture_binds(
        &self,
        q: Q<'static>,
        schema: &'static EntitySchema,
        _: crate::sql_capture::Write,
        key: &Value,
    ) -> Q<'static> {
        let id = self
            .capture
            .as_ref()
            .map(|c| c.capture.key_id(schema, key))
            .unwrap_or_default();
        q.bind(id)
    }

    /// Runs a captured write: one statement, atomic by itself (in the
    /// bound transaction, its events are stamped at commit).
    async fn run_captured(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        q: Q<'static>,
    ) -> Result<Vec<PgRow>> {
        let rows = q
            .fetch_all(&mut *self.conn(schema, op).await?)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        if self.tx.is_some() {
            self.tx_captured
                .store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(rows)
    }

    /// What a transaction that wrote events runs before `COMMIT`.
    fn stamp_sql(&self) -> Option<Arc<str>> {
        self.capture
            .as_ref()
            .map(|c| crate::sql_capture::pg_stamp(&c.tables).into())
    }

    /// The feed of this namespace, when capture is on.
    fn feed_of_store(&self) -> Result<Arc<dyn crate::feed::ChangeFeed>> {
        match &self.capture {
            Some(c) => Ok(Arc::new(PostgresFeed {
                pool: self.pool.clone(),
                tables: c.tables.clone(),
            })),
            None => Err(crate::feed::no_feed(
                Store::Postgres,
                "no entity is captured: name entities in cdc.entities",
            )),
        }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The namespace (PostgreSQL schema).
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn table(&self, schema: &EntitySchema) -> String {
        format!("{}.{}", ident(&self.namespace), ident(schema.name))
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
        let s = Arc::new(statements(Dialect::Postgres, &self.table(schema), schema));
        self.statements
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(SchemaId::of(schema), Arc::clone(&s));
        s
    }

    fn err(&self, schema: &'static EntitySchema, op: Operation, e: sqlx::Error) -> Error {
        map_sqlx_error(Store::Postgres, schema, op, e)
    }

    // After a conditional write matched no row: `None` if the row is
    // absent, or the version it has now.
    super::sql_common::sqlx_stored_version!();
}

/// The DDL this backend expects for an entity: the table and its indexes,
/// unqualified (migration scripts run with `search_path` set to the
/// configured schema). The backend never runs it; it is a starting point
/// for a migration script (`migrations/postgres/<version>_<name>.sql`).
#[must_use]
pub fn create_table_sql(schema: &EntitySchema) -> Vec<String> {
    let table = ident(schema.name);
    let mut cols = Vec::with_capacity(schema.fields.len());
    for (i, f) in schema.fields.iter().enumerate() {
        let mut col = format!("{} {}", ident(f.name), sql_type(f.ty));
        if !f.nullable {
            col.push_str(" NOT NULL");
        }
        if i == schema.key {
            col.push_str(" PRIMARY KEY");
        }
        cols.push(col);
    }
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} ({})",
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

fn sql_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Text => "TEXT COLLATE \"C\"",
        FieldType::Int => "BIGINT",
        FieldType::Float => "DOUBLE PRECISION",
        FieldType::Bool => "BOOLEAN",
        FieldType::Date => "DATE",
        FieldType::Timestamp => "TIMESTAMPTZ",
        FieldType::Uuid => "UUID",
        FieldType::Json => "JSONB",
    }
}

fn array_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Text => "text[]",
        FieldType::Int => "bigint[]",
        FieldType::Float => "float8[]",
        FieldType::Bool => "boolean[]",
        FieldType::Date => "date[]",
        FieldType::Timestamp => "timestamptz[]",
        FieldType::Uuid => "uuid[]",
        // Bound as text[] and cast element-wise.
        FieldType::Json => "text[]",
    }
}

/// Binds one value for a column of type `ty` (typed, also when null).
fn bind<'q>(q: Q<'q>, ty: FieldType, v: &Value) -> Q<'q> {
    match v {
        Value::Null => match ty {
            FieldType::Text => q.bind(None::<String>),
            FieldType::Int => q.bind(None::<i64>),
            FieldType::Float => q.bind(None::<f64>),
            FieldType::Bool => q.bind(None::<bool>),
            FieldType::Date => q.bind(None::<NaiveDate>),
            FieldType::Timestamp => q.bind(None::<DateTime<Utc>>),
            FieldType::Uuid => q.bind(None::<uuid::Uuid>),
            FieldType::Json => q.bind(None::<serde_json::Value>),
        },
        Value::Bool(b) => q.bind(*b),
        Value::Int(i) => q.bind(*i),
        Value::Float(x) => q.bind(*x),
        Value::Text(s) => q.bind(s.clone()),
        Value::Date(d) => q.bind(*d),
        Value::Timestamp(t) => q.bind(*t),
        Value::Uuid(u) => q.bind(*u),
        Value::Json(j) => q.bind(j.clone()),
    }
}

/// Binds a list of values of one column type as a typed array.
fn bind_array<'q, 'v>(q: Q<'q>, ty: FieldType, values: impl Iterator<Item = &'v Value>) -> Q<'q> {
    fn collect<'v, T>(
        values: impl Iterator<Item = &'v Value>,
        f: impl Fn(&Value) -> Option<T>,
    ) -> Vec<Option<T>> {
        values
            .map(|v| if v.is_null() { None } else { f(v) })
            .collect()
    }
    match ty {
        FieldType::Text => q.bind(collect(values, |v| match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        })),
        FieldType::Int => q.bind(collect(values, |v| match v {
            Value::Int(i) => Some(*i),
            _ => None,
        })),
        FieldType::Float => q.bind(collect(values, |v| match v {
            Value::Float(x) => Some(*x),
            _ => None,
        })),
        FieldType::Bool => q.bind(collect(values, |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })),
        FieldType::Date => q.bind(collect(values, |v| match v {
            Value::Date(d) => Some(*d),
            _ => None,
        })),
        FieldType::Timestamp => q.bind(collect(values, |v| match v {
            Value::Timestamp(t) => Some(*t),
            _ => None,
        })),
        FieldType::Uuid => q.bind(collect(values, |v| match v {
            Value::Uuid(u) => Some(*u),
            _ => None,
        })),
        FieldType::Json => q.bind(collect(values, |v| match v {
            Value::Json(j) => Some(j.to_string()),
            _ => None,
        })),
    }
}

fn bind_all<'q>(mut q: Q<'q>, schema: &EntitySchema, binds: &[(Option<usize>, Bound)]) -> Q<'q> {
    for (field, b) in binds {
        let ty = field.map_or(FieldType::Int, |i| schema.fields[i].ty);
        q = match b {
            Bound::One(v) => bind(q, ty, v),
            Bound::List(vs) => bind_array(q, ty, vs.iter()),
            Bound::Len(n) => q.bind(*n),
        };
    }
    q
}

fn decode_row(
    schema: &'static EntitySchema,
    row: &PgRow,
) -> std::result::Result<Record, sqlx::Error> {
    let mut values = Vec::with_capacity(schema.fields.len());
    for (i, f) in schema.fields.iter().enumerate() {
        let v = match f.ty {
            FieldType::Text => row.try_get::<Option<String>, _>(i)?.map(Value::Text),
            FieldType::Int => row.try_get::<Option<i64>, _>(i)?.map(Value::Int),
            FieldType::Float => row.try_get::<Option<f64>, _>(i)?.map(Value::Float),
            FieldType::Bool => row.try_get::<Option<bool>, _>(i)?.map(Value::Bool),
            FieldType::Date => row.try_get::<Option<NaiveDate>, _>(i)?.map(Value::Date),
            FieldType::Timestamp => row
                .try_get::<Option<DateTime<Utc>>, _>(i)?
                .map(Value::Timestamp),
            FieldType::Uuid => row.try_get::<Option<uuid::Uuid>, _>(i)?.map(Value::Uuid),
            FieldType::Json => row
                .try_get::<Option<serde_json::Value>, _>(i)?
                .map(Value::Json),
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Record(values))
}

super::sql_common::sqlx_backend!(PostgresBackend, Store::Postgres, Dialect::Postgres, {
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
        let table = self.table(schema);
        // Names every column: fails when the schema, the table or a column
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        )
        .bind(&table)
        .fetch_all(&mut *self.conn(schema, op).await?)
        .await
        .map_err(|e| self.err(schema, op, e))?;
        check_columns(Store::Postgres, schema, &table, &columns)?;
        // Columns with a single-column, non-partial unique index.
        let unique: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass($1) AND i.indisunique \
             AND i.indnkeyatts = 1 AND i.indpred IS NULL",
        )
        .bind(&table)
        .fetch_all(&mut *self.conn(schema, op).await?)
        .await
        .map_err(|e| self.err(schema, op, e))?;
        check_unique_indexes(Store::Postgres, schema, &unique)?;
        if crate::feed::captured(self.capture.as_ref().map(|c| &c.capture), schema) {
            for t in [
                "dl_feed",
                "dl_feed_keys",
                "dl_feed_clock",
                "dl_feed_consumers",
            ] {
                let name = format!("{}.{}", ident(&self.namespace), ident(t));
                let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                    .bind(&name)
                    .fetch_one(&mut *self.conn(schema, op).await?)
                    .await
                    .map_err(|e| self.err(schema, op, e))?;
                if found.is_none() {
                    return Err(crate::feed::feed_not_ready(Store::Postgres, schema, t));
                }
            }
        }
        self.statements(schema);
        Ok(())
    }

    async fn insert_many(&self, schema: &'static EntitySchema, records: &[Record]) -> Result<()> {
        // One statement: a typed array per column, zipped by UNNEST.
        let arrays: Vec<String> = schema
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let m = mark(Dialect::Postgres, i + 1);
                match f.ty {
                    FieldType::Json => format!("{m}::text[]::jsonb[]"),
                    ty => format!("{m}::{}", array_type(ty)),
                }
            })
            .collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) SELECT * FROM UNNEST({})",
            self.table(schema),
            columns(schema),
            arrays.join(", ")
        );
        let capture = self.capture.as_ref().filter(|c| c.capture.captures(schema));
        if let Some(c) = capture {
            sql = crate::sql_capture::pg_capture_many(
                &c.tables,
                schema,
                &sql,
                schema.fields.len(),
                array_type(schema.key_field().ty),
                self.tx.is_some(),
            );
        }
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (i, f) in schema.fields.iter().enumerate() {
            q = bind_array(q, f.ty, records.iter().map(|r| r.get(i)));
        }
        if let Some(c) = capture {
            let ids: Vec<String> = records
                .iter()
                .map(|r| c.capture.key_id(schema, r.get(schema.key)))
                .collect();
            self.run_captured(schema, Operation::InsertMany, q.bind(ids))
                .await?;
            return Ok(());
        }
        q.execute(&mut *self.conn(schema, Operation::InsertMany).await?)
            .await
            .map_err(|e| self.err(schema, Operation::InsertMany, e))?;
        Ok(())
    }

    async fn get_many(&self, schema: &'static EntitySchema, keys: &[Value]) -> Result<Vec<Record>> {
        let st = self.statements(schema);
        let rows = bind_array(
            sqlx::query(AssertSqlSafe(Arc::clone(&st.get_many))),
            schema.key_field().ty,
            keys.iter(),
        )
        .fetch_all(&mut *self.conn(schema, Operation::GetMany).await?)
        .await
        .map_err(|e| self.err(schema, Operation::GetMany, e))?;
        rows.iter()
            .map(|r| decode_row(schema, r))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(schema, Operation::GetMany, e))
    }
});

/// The change feed of a PostgreSQL namespace (see [`crate::feed`]).
#[derive(Debug)]
struct PostgresFeed {
    pool: PgPool,
    tables: crate::sql_capture::FeedTables,
}

impl PostgresFeed {
    fn err(&self, e: sqlx::Error) -> Error {
        map_sqlx_error(
            Store::Postgres,
            &crate::sqlx_errors::FEED_SCHEMA,
            Operation::Feed,
            e,
        )
    }

    /// The last position given out (the clock).
    fn last_sql(&self) -> String {
        format!(
            "(SELECT \"position\" FROM {} WHERE \"id\" = 1)",
            self.tables.clock
        )
    }

    fn events(rows: &[PgRow]) -> Result<Vec<crate::feed::ChangeEvent>> {
        rows.iter()
            .map(|r| {
                let get = |e: sqlx::Error| {
                    let _ = e;
                    crate::feed::feed_defect(
                        Store::Postgres,
                        "a row that does not read as an event",
                    )
                };
                crate::feed::ChangeEvent::from_row(
                    Store::Postgres,
                    r.try_get(0).map_err(get)?,
                    r.try_get(1).map_err(get)?,
                    &r.try_get::<String, _>(2).map_err(get)?,
                    r.try_get(3).map_err(get)?,
                    r.try_get(4).map_err(get)?,
                    r.try_get(5).map_err(get)?,
                    r.try_get(6).map_err(get)?,
                    r.try_get(7).map_err(get)?,
                )
            })
            .collect()
    }

    async fn consumer_position(&self, consumer: &str) -> Result<u64> {
        crate::feed::check_consumer_name(consumer)?;
        let pos: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT \"position\" FROM {} WHERE \"name\" = $1",
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
impl crate::feed::ChangeFeed for PostgresFeed {
    fn store(&self) -> Store {
        Store::Postgres
    }

    async fn register(&self, consumer: &str, from_start: bool) -> Result<u64> {
        crate::feed::check_consumer_name(consumer)?;
        let start = if from_start {
            "0".to_owned()
        } else {
            self.last_sql()
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (\"name\", \"position\", \"registered_at\") VALUES ($1, {start}, now()) \
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
            "DELETE FROM {} WHERE \"name\" = $1",
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
            "UPDATE {} SET \"position\" = GREATEST(\"position\", $2), \"acked_at\" = now() \
             WHERE \"name\" = $1 AND $2 <= {}",
            self.tables.consumers,
            self.last_sql()
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
        let last: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT {}", self.last_sql())))
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
            "SELECT \"position\", \"entity\", \"op\", \"key_id\", \"seq\", \"committed_at\", \
             \"schema_version\", \"after_image\"::text FROM {} \
             WHERE \"position\" > $1 AND ($2::text IS NULL OR \"entity\" = $2) \
             ORDER BY \"position\" LIMIT $3",
            self.tables.feed
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
            "SELECT (SELECT count(*) FROM {} WHERE \"position\" IS NOT NULL), {}",
            t.feed,
            self.last_sql()
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let rows: Vec<(String, i64, Option<DateTime<Utc>>)> =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT \"name\", \"position\", \"acked_at\" FROM {} ORDER BY \"name\"",
                t.consumers
            )))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let oldest: Option<DateTime<Utc>> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT min(f.\"committed_at\") FROM {} AS f \
             WHERE f.\"position\" > (SELECT min(\"position\") FROM {})",
            t.feed, t.consumers
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let now = Utc::now();
        Ok(crate::feed::FeedStatus {
            store: Store::Postgres,
            events: u64::try_from(events).unwrap_or(0),
            last_position: u64::try_from(last).unwrap_or(0),
            oldest_unacked_age: oldest.map(|t| (now - t).to_std().unwrap_or_default()),
            consumers: rows
                .into_iter()
                .map(|(name, pos, acked_at)| crate::feed::ConsumerStatus {
                    name,
                    position: u64::try_from(pos).unwrap_or(0),
                    lag: u64::try_from(last.saturating_sub(pos)).unwrap_or(0),
                    acked_at,
                })
                .collect(),
        })
    }

    async fn prune(&self, retention: std::time::Duration) -> Result<u64> {
        let t = &self.tables;
        let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let done = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE \"position\" <= COALESCE((SELECT min(\"position\") FROM {}), {}) \
             AND \"committed_at\" < now() - make_interval(secs => $1::double precision / 1000.0)",
            t.feed,
            t.consumers,
            self.last_sql()
        )))
        .bind(keep_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }
}
