//! The SQLite backend (sqlx): the embedded default.
//!
//! One STRICT table per entity with typed columns (text, integer, real;
//! dates as ISO text, timestamps as integer milliseconds, UUIDs as
//! lower-case hyphenated text, json as text), a unique index per
//! `#[indexed(unique)]` field and an index per `#[indexed]` field. Every value
//! is a bound parameter; every identifier comes from the schema.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, NaiveDate};
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
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("in_transaction", &self.tx.is_some())
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
