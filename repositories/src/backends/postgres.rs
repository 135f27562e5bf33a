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
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("namespace", &self.namespace)
            .field("in_transaction", &self.tx.is_some())
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
