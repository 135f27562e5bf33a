//! The SQLite backend (sqlx): the embedded default.
//!
//! One STRICT table per entity with typed columns (text, integer, real;
//! dates as ISO text, timestamps as integer milliseconds, UUIDs as
//! lower-case hyphenated text, json as text), a unique index per
//! `#[indexed(unique)]` field and an index per `#[indexed]` field. Every value
//! is a bound parameter; every identifier comes from the schema.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate};
use dl_models::{EntitySchema, FieldType, Record, Value};
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Row as _, Sqlite};

use crate::backend::{Backend, Capabilities};
use crate::error::{ConflictKind, Error, Operation, Result, Store};
use crate::query::{Cond, ListRequest, ValidPatch};
use crate::sql::{Bound, Dialect, SqlWriter, Statements, columns, ident, statements, update_sql};
use crate::sqlx_errors::map_sqlx_error;

/// Most bound values in one statement (SQLite's limit is 32766).
const MAX_VARIABLES: usize = 30_000;

type Q<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

/// The SQLite backend over a sqlx pool.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    pool: SqlitePool,
    statements: Arc<RwLock<HashMap<&'static str, Arc<Statements>>>>,
}

impl SqliteBackend {
    /// A backend over a pool (see `dl_connections::sqlite` to build one).
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        SqliteBackend {
            pool,
            statements: Arc::default(),
        }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
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
        let s = Arc::new(statements(Dialect::Sqlite, &ident(schema.name), schema));
        self.statements
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(schema.name, Arc::clone(&s));
        s
    }

    fn err(&self, schema: &'static EntitySchema, op: Operation, e: sqlx::Error) -> Error {
        map_sqlx_error(Store::Sqlite, schema, op, e)
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

/// The DDL of an entity: a STRICT table and its indexes.
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

#[async_trait]
impl Backend for SqliteBackend {
    fn store(&self) -> Store {
        Store::Sqlite
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    async fn prepare(&self, schema: &'static EntitySchema) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.err(schema, Operation::Prepare, e))?;
        for stmt in create_table_sql(schema) {
            sqlx::query(AssertSqlSafe(stmt))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(schema, Operation::Prepare, e))?;
        }
        tx.commit()
            .await
            .map_err(|e| self.err(schema, Operation::Prepare, e))?;
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
        let op = Operation::InsertMany;
        let table = ident(schema.name);
        let cols = columns(schema);
        let row_marks = format!("({})", vec!["?"; schema.fields.len()].join(", "));
        let per_chunk = (MAX_VARIABLES / schema.fields.len()).clamp(1, 500);
        let mut tx = self
            .pool
            .begin()
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
        tx.commit().await.map_err(|e| self.err(schema, op, e))?;
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
        let rows = sqlx::query(AssertSqlSafe(Arc::clone(&st.get_many)))
            .bind(json_list(keys))
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
            Dialect::Sqlite,
            &ident(schema.name),
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
                store: Store::Sqlite,
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
        let mut w = SqlWriter::new(Dialect::Sqlite, format!("{} WHERE ", st.select));
        w.cond(schema, &request.cond);
        w.order_by(schema, &request.sort);
        w.sql.push_str(" LIMIT ?");
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
        let mut w = SqlWriter::new(Dialect::Sqlite, format!("{} WHERE ", st.count));
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
