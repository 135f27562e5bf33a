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

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use dl_models::{EntitySchema, FieldType, Record, Value};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row as _};

use crate::backend::{Backend, Capabilities};
use crate::error::{ConflictKind, Error, Operation, Result, Store};
use crate::query::{Cond, ListRequest, ValidPatch};
use crate::sql::{
    Bound, Dialect, SqlWriter, Statements, columns, ident, mark, statements, update_sql,
};
use crate::sqlx_errors::map_sqlx_error;

type Q<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// The PostgreSQL backend over a sqlx pool, in one schema (namespace).
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    pool: PgPool,
    namespace: String,
    statements: Arc<RwLock<HashMap<&'static str, Arc<Statements>>>>,
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
        })
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

    fn statements(&self, schema: &'static EntitySchema) -> Arc<Statements> {
        if let Some(s) = self
            .statements
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(schema.name)
        {
            return Arc::clone(s);
        }
        let s = Arc::new(statements(Dialect::Postgres, &self.table(schema), schema));
        self.statements
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(schema.name, Arc::clone(&s));
        s
    }

    fn err(&self, schema: &'static EntitySchema, op: Operation, e: sqlx::Error) -> Error {
        map_sqlx_error(Store::Postgres, schema, op, e)
    }

    /// After a conditional write matched no row: `None` if the row is
    /// absent, or the version it has now.
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
            .fetch_optional(&self.pool)
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
}

/// The DDL of an entity in a namespace: the schema, the table, its indexes.
#[must_use]
pub fn create_table_sql(namespace: &str, schema: &EntitySchema) -> Vec<String> {
    let table = format!("{}.{}", ident(namespace), ident(schema.name));
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
    let mut out = vec![
        format!("CREATE SCHEMA IF NOT EXISTS {}", ident(namespace)),
        format!("CREATE TABLE IF NOT EXISTS {table} ({})", cols.join(", ")),
    ];
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

#[async_trait]
impl Backend for PostgresBackend {
    fn store(&self) -> Store {
        Store::Postgres
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    async fn prepare(&self, schema: &'static EntitySchema) -> Result<()> {
        let op = Operation::Prepare;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.err(schema, op, e))?;
        // Concurrent `CREATE ... IF NOT EXISTS` of the same object can still
        // collide in the catalog; one advisory lock per namespace serialises
        // them (held to the end of the transaction).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("data-layer:ddl:{}", self.namespace))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(schema, op, e))?;
        for stmt in create_table_sql(&self.namespace, schema) {
            sqlx::query(AssertSqlSafe(stmt))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(schema, op, e))?;
        }
        tx.commit().await.map_err(|e| self.err(schema, op, e))?;
        self.statements(schema);
        Ok(())
    }

    async fn insert(&self, schema: &'static EntitySchema, record: &Record) -> Result<()> {
        let st = self.statements(schema);
        let mut q = sqlx::query(AssertSqlSafe(Arc::clone(&st.insert_one)));
        for (f, v) in schema.fields.iter().zip(&record.0) {
            q = bind(q, f.ty, v);
        }
        q.execute(&self.pool)
            .await
            .map_err(|e| self.err(schema, Operation::Insert, e))?;
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
        let sql = format!(
            "INSERT INTO {} ({}) SELECT * FROM UNNEST({})",
            self.table(schema),
            columns(schema),
            arrays.join(", ")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (i, f) in schema.fields.iter().enumerate() {
            q = bind_array(q, f.ty, records.iter().map(|r| r.get(i)));
        }
        q.execute(&self.pool)
            .await
            .map_err(|e| self.err(schema, Operation::InsertMany, e))?;
        Ok(())
    }

    async fn get(&self, schema: &'static EntitySchema, key: &Value) -> Result<Option<Record>> {
        let st = self.statements(schema);
        let row = bind(
            sqlx::query(AssertSqlSafe(Arc::clone(&st.get))),
            schema.key_field().ty,
            key,
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(schema, Operation::Get, e))?;
        row.map(|r| decode_row(schema, &r))
            .transpose()
            .map_err(|e| self.err(schema, Operation::Get, e))
    }

    async fn get_many(&self, schema: &'static EntitySchema, keys: &[Value]) -> Result<Vec<Record>> {
        let st = self.statements(schema);
        let rows = bind_array(
            sqlx::query(AssertSqlSafe(Arc::clone(&st.get_many))),
            schema.key_field().ty,
            keys.iter(),
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(schema, Operation::GetMany, e))?;
        rows.iter()
            .map(|r| decode_row(schema, r))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(schema, Operation::GetMany, e))
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
        let sql = update_sql(
            Dialect::Postgres,
            &self.table(schema),
            schema,
            &patched,
            check.is_some(),
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (i, v) in &patch.sets {
            q = bind(q, schema.fields[*i].ty, v);
        }
        q = bind(q, schema.key_field().ty, key);
        if let Some((_, expected)) = check {
            q = q.bind(expected);
        }
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(schema, op, e))?;
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
                store: Store::Postgres,
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
        let mut q = sqlx::query(AssertSqlSafe(Arc::clone(&st.replace)));
        for (i, (f, v)) in schema.fields.iter().zip(&record.0).enumerate() {
            if i != schema.key {
                q = bind(q, f.ty, v);
            }
        }
        let key = record.get(schema.key);
        q = bind(q, schema.key_field().ty, key);
        if schema.version.is_some() {
            q = q.bind(expected_version.unwrap_or_default());
        }
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(schema, op, e))?;
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
        let st = self.statements(schema);
        let mut q = sqlx::query(AssertSqlSafe(Arc::clone(&st.upsert)));
        for (f, v) in schema.fields.iter().zip(&record.0) {
            q = bind(q, f.ty, v);
        }
        let row = q
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(schema, Operation::Upsert, e))?;
        decode_row(schema, &row).map_err(|e| self.err(schema, Operation::Upsert, e))
    }

    async fn delete(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        let st = self.statements(schema);
        let done = bind(
            sqlx::query(AssertSqlSafe(Arc::clone(&st.delete))),
            schema.key_field().ty,
            key,
        )
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(schema, Operation::Delete, e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(
        &self,
        schema: &'static EntitySchema,
        request: &ListRequest,
    ) -> Result<Vec<Record>> {
        let st = self.statements(schema);
        let mut w = SqlWriter::new(Dialect::Postgres, format!("{} WHERE ", st.select));
        w.cond(schema, &request.cond);
        w.order_by(schema, &request.sort);
        let limit_mark = mark(Dialect::Postgres, w.binds.len() + 1);
        w.sql.push_str(&format!(" LIMIT {limit_mark}"));
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let q = bind_all(sqlx::query(AssertSqlSafe(w.sql)), schema, &w.binds).bind(limit);
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(schema, Operation::List, e))?;
        rows.iter()
            .map(|r| decode_row(schema, r))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(schema, Operation::List, e))
    }

    async fn count(&self, schema: &'static EntitySchema, cond: &Cond) -> Result<u64> {
        let st = self.statements(schema);
        let mut w = SqlWriter::new(Dialect::Postgres, format!("{} WHERE ", st.count));
        w.cond(schema, cond);
        let row = bind_all(sqlx::query(AssertSqlSafe(w.sql)), schema, &w.binds)
            .fetch_one(&self.pool)
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
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(schema, Operation::Exists, e))?;
        Ok(row.is_some())
    }
}
