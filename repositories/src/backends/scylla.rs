//! The ScyllaDB backend (the scylla driver), written for real ScyllaDB.
//!
//! One table per entity in a keyspace, the key as the partition key, typed
//! columns (`text`, `bigint`, `double`, `boolean`, `date`, `timestamp`,
//! `uuid`; json as `text`). Every statement is prepared once per entity and
//! cached (the driver routes them token-aware). Listing is a scan in token
//! order with the driver's paging state as the cursor; filters only on the
//! key (`eq`/`in`, served by concurrent single-partition reads); no sorting,
//! no unique values (Scylla cannot enforce one across partitions).
//!
//! Duplicate and version checks use lightweight transactions (`IF NOT
//! EXISTS`, `IF version = ?`, `IF EXISTS`) and read `[applied]`. With
//! `lightweight_transactions = false` (for test servers without LWT) they
//! become read-then-write: correct for one writer, not atomic.
//! `insert_many` writes the new entities in unlogged batches of prepared
//! inserts and reports the taken keys, by position, after writing the others.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, NaiveDate};
use dl_models::{EntitySchema, FieldType, Record, Value};
use futures::{StreamExt as _, TryStreamExt as _};
use scylla::client::session::Session;
use scylla::response::PagingState;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDate, CqlTimestamp, CqlValue, Row};

use crate::backend::{Capabilities, FilterSupport, SchemaId};
use crate::error::{BatchFailure, ConflictKind, DriverError, Error, Operation, Result, Store};
use crate::keys::KeyTok;
use crate::query::{CmpOp, Cond, ListRequest, ValidPatch};
use crate::versions::{bumped, check_expected, patched, version_of};

const CAS_ATTEMPTS: usize = 64;
/// Statements per unlogged batch of `insert_many`.
const BATCH_CHUNK: usize = 100;
/// Concurrent single-partition reads of `get_many` and key filters.
const READ_CONCURRENCY: usize = 32;
/// Days between 1970-01-01 and CQL's date epoch origin (2^31).
const CQL_DATE_ORIGIN: i64 = 1 << 31;

/// CQL's reserved words: the only identifiers that need quotes here.
const CQL_RESERVED: &[&str] = &[
    "add",
    "allow",
    "alter",
    "and",
    "apply",
    "asc",
    "authorize",
    "batch",
    "begin",
    "by",
    "columnfamily",
    "create",
    "delete",
    "desc",
    "describe",
    "drop",
    "entries",
    "execute",
    "from",
    "full",
    "grant",
    "if",
    "in",
    "index",
    "infinity",
    "insert",
    "into",
    "is",
    "keyspace",
    "limit",
    "materialized",
    "mbean",
    "mbeans",
    "modify",
    "nan",
    "norecursive",
    "not",
    "null",
    "of",
    "on",
    "or",
    "order",
    "primary",
    "rename",
    "replace",
    "revoke",
    "schema",
    "select",
    "set",
    "table",
    "to",
    "token",
    "truncate",
    "unlogged",
    "unset",
    "update",
    "use",
    "using",
    "view",
    "where",
    "with",
];

/// An identifier for CQL. Names come from a schema (`[a-z_][a-z0-9_]*`), so
/// they are valid bare; reserved words are quoted.
fn cql_ident(name: &str) -> String {
    if CQL_RESERVED.contains(&name) {
        format!("\"{name}\"")
    } else {
        name.to_owned()
    }
}

/// Lightweight-transaction inserts of one `insert_many` in flight at once.
const LWT_IN_FLIGHT: usize = 16;

/// Prepared statements of one entity.
#[derive(Debug)]
struct Statements {
    insert: PreparedStatement,
    insert_if_absent: PreparedStatement,
    get: PreparedStatement,
    scan: PreparedStatement,
    scan_keys: PreparedStatement,
    delete: PreparedStatement,
    delete_if_exists: PreparedStatement,
}

/// The ScyllaDB backend over one keyspace.
#[derive(Clone)]
pub struct ScyllaBackend {
    session: Arc<Session>,
    keyspace: String,
    lwt: bool,
    timeout: Duration,
    statements: Arc<RwLock<HashMap<SchemaId, Arc<Statements>>>>,
    /// The overwrite statement per entity (prepared on first use).
    overwrites: Arc<RwLock<HashMap<SchemaId, PreparedStatement>>>,
}

impl std::fmt::Debug for ScyllaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaBackend")
            .field("keyspace", &self.keyspace)
            .field("lightweight_transactions", &self.lwt)
            .finish_non_exhaustive()
    }
}

enum Applied {
    Yes,
    No,
}

impl ScyllaBackend {
    /// What a ScyllaDB backend declares (the same with or without
    /// lightweight transactions): known before a session exists.
    pub const CAPABILITIES: Capabilities = Capabilities {
        transactions: false,
        filter: FilterSupport::KeyOnly,
        sort: false,
        prefix: false,
        atomic_batch: false,
        native_batch: false,
        ttl: false,
        change_feed: false,
        unique: false,
        ordered: false,
        native_cursor: true,
    };

    /// A backend over `session` in `keyspace` (`[a-z_][a-z0-9_]*`, created
    /// with replication factor 1 when missing: production keyspaces come
    /// from migrations). `lightweight_transactions`: see the module docs.
    ///
    /// # Errors
    /// `Invalid` for a bad keyspace name.
    pub fn new(
        session: Arc<Session>,
        keyspace: &str,
        lightweight_transactions: bool,
        timeout: Duration,
    ) -> Result<Self> {
        if !dl_models::is_valid_identifier(keyspace) {
            return Err(Error::invalid(
                "scylla",
                Some(keyspace),
                "a keyspace must match [a-z_][a-z0-9_]* (at most 48 bytes)",
            ));
        }
        Ok(ScyllaBackend {
            session,
            keyspace: keyspace.to_owned(),
            lwt: lightweight_transactions,
            timeout,
            statements: Arc::default(),
            overwrites: Arc::default(),
        })
    }

    fn table(&self, schema: &EntitySchema) -> String {
        format!("{}.{}", cql_ident(&self.keyspace), cql_ident(schema.name))
    }

    fn err(&self, op: Operation, e: impl Into<ScyllaFault>) -> Error {
        map_scylla_error(op, self.timeout, e.into())
    }

    fn prepared(&self, schema: &'static EntitySchema) -> Result<Arc<Statements>> {
        self.statements
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&SchemaId::of(schema))
            .cloned()
            .ok_or_else(|| Error::Backend {
                store: Store::Scylla,
                operation: Operation::Prepare,
                message: format!("{} was not prepared on this backend", schema.name),
                retryable: false,
                source: None,
            })
    }

    async fn prepare_all(&self, schema: &'static EntitySchema) -> Result<Statements> {
        let op = Operation::Prepare;
        let t = self.table(schema);
        let cols = schema
            .fields
            .iter()
            .map(|f| cql_ident(f.name))
            .collect::<Vec<_>>()
            .join(", ");
        let marks = vec!["?"; schema.fields.len()].join(", ");
        let key = cql_ident(schema.key_field().name);
        let table = t.as_str();
        let p = |cql: String| async move {
            self.session.prepare(cql).await.map_err(|e| {
                use scylla::errors::{DbError, PrepareError, RequestAttemptError};
                match &e {
                    // The server refuses a statement naming a missing
                    // keyspace, table or column (its message names them).
                    PrepareError::AllAttemptsFailed {
                        first_attempt: RequestAttemptError::DbError(DbError::Invalid, msg),
                    } => Error::SchemaNotReady {
                        store: Store::Scylla,
                        entity: schema.name,
                        reason: format!("table {table} cannot be used: {msg}"),
                    },
                    _ => self.err(op, e),
                }
            })
        };
        Ok(Statements {
            insert: p(format!("INSERT INTO {t} ({cols}) VALUES ({marks})")).await?,
            insert_if_absent: p(format!(
                "INSERT INTO {t} ({cols}) VALUES ({marks}) IF NOT EXISTS"
            ))
            .await?,
            get: p(format!("SELECT {cols} FROM {t} WHERE {key} = ?")).await?,
            scan: p(format!("SELECT {cols} FROM {t}")).await?,
            scan_keys: p(format!("SELECT {key} FROM {t}")).await?,
            delete: p(format!("DELETE FROM {t} WHERE {key} = ?")).await?,
            delete_if_exists: p(format!("DELETE FROM {t} WHERE {key} = ? IF EXISTS")).await?,
        })
    }

    /// Runs an LWT statement and reads `[applied]`. A server that answers
    /// without the column does not implement lightweight transactions.
    async fn run_lwt(
        &self,
        op: Operation,
        st: &PreparedStatement,
        values: Vec<Option<CqlValue>>,
    ) -> Result<Applied> {
        let result = self
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| self.err(op, e))?;
        applied(op, result)
    }

    async fn read(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        key: &Value,
    ) -> Result<Option<Record>> {
        let st = self.prepared(schema)?;
        let result = self
            .session
            .execute_unpaged(&st.get, vec![to_cql(key)])
            .await
            .map_err(|e| self.err(op, e))?;
        let rows = result.into_rows_result().map_err(|e| self.err(op, e))?;
        let row = rows.maybe_first_row::<Row>().map_err(|e| self.err(op, e))?;
        row.map(|r| from_row(schema, op, r)).transpose()
    }

    async fn read_many(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        keys: &[Value],
    ) -> Result<Vec<Option<Record>>> {
        // Owned keys: a closure over `&Value` trips async-trait's lifetimes.
        futures::stream::iter(keys.to_vec())
            .map(|k| async move { self.read(schema, op, &k).await })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Writes a whole record over an existing one (`UPDATE ... SET <every
    /// non-key column> WHERE key = ?`, nulls bound as null): with LWT only if
    /// the stored version is `stored_version` (or the row exists).
    async fn overwrite(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        record: &Record,
        stored_version: Option<i64>,
    ) -> Result<Applied> {
        let st = self.overwrite_statement(schema).await?;
        let mut values: Vec<Option<CqlValue>> = record
            .0
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != schema.key)
            .map(|(_, v)| to_cql(v))
            .collect();
        values.push(to_cql(record.get(schema.key)));
        if self.lwt && schema.version.is_some() {
            values.push(stored_version.map(CqlValue::BigInt));
        }
        let result = self
            .session
            .execute_unpaged(&st, values)
            .await
            .map_err(|e| self.err(op, e))?;
        if self.lwt {
            applied(op, result)
        } else {
            Ok(Applied::Yes)
        }
    }

    /// The overwrite statement of an entity, prepared once.
    async fn overwrite_statement(
        &self,
        schema: &'static EntitySchema,
    ) -> Result<PreparedStatement> {
        if let Some(st) = self
            .overwrites
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&SchemaId::of(schema))
        {
            return Ok(st.clone());
        }
        let sets: Vec<String> = schema
            .fields
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != schema.key)
            .map(|(_, f)| format!("{} = ?", cql_ident(f.name)))
            .collect();
        let key = cql_ident(schema.key_field().name);
        let sets = if sets.is_empty() {
            format!("{key} = {key}")
        } else {
            sets.join(", ")
        };
        let mut cql = format!("UPDATE {} SET {sets} WHERE {key} = ?", self.table(schema));
        if self.lwt {
            match schema.version {
                Some(vi) => cql.push_str(&format!(" IF {} = ?", cql_ident(schema.fields[vi].name))),
                None => cql.push_str(" IF EXISTS"),
            }
        }
        let st = self
            .session
            .prepare(cql)
            .await
            .map_err(|e| self.err(Operation::Prepare, e))?;
        self.overwrites
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(SchemaId::of(schema), st.clone());
        Ok(st)
    }

    /// Inserts a record that must be new.
    async fn insert_new(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        record: &Record,
    ) -> Result<Applied> {
        let st = self.prepared(schema)?;
        let values = record_values(record);
        if self.lwt {
            return self.run_lwt(op, &st.insert_if_absent, values).await;
        }
        if self
            .read(schema, op, record.get(schema.key))
            .await?
            .is_some()
        {
            return Ok(Applied::No);
        }
        self.session
            .execute_unpaged(&st.insert, values)
            .await
            .map_err(|e| self.err(op, e))?;
        Ok(Applied::Yes)
    }

    /// Read, compute, write-if-unchanged; `compute` returns the record to
    /// write, or `None` to stop with `Ok(None)`.
    async fn cas<F>(
        &self,
        schema: &'static EntitySchema,
        op: Operation,
        key: &Value,
        compute: F,
    ) -> Result<Option<Record>>
    where
        F: Fn(Option<&Record>) -> Result<Option<Record>> + Send + Sync,
    {
        for _ in 0..CAS_ATTEMPTS {
            let current = self.read(schema, op, key).await?;
            let Some(next) = compute(current.as_ref())? else {
                return Ok(None);
            };
            let applied = match &current {
                None => self.insert_new(schema, op, &next).await?,
                Some(cur) => {
                    self.overwrite(schema, op, &next, version_of(schema, cur))
                        .await?
                }
            };
            if let Applied::Yes = applied {
                return Ok(Some(next));
            }
        }
        Err(Error::Backend {
            store: Store::Scylla,
            operation: op,
            message: format!("gave up after {CAS_ATTEMPTS} concurrent writes to the same entity"),
            retryable: true,
            source: None,
        })
    }

    /// Counts rows by paging through the keys (works on every server; a
    /// full scan, as `COUNT(*)` is in Scylla too).
    async fn count_all(&self, schema: &'static EntitySchema) -> Result<u64> {
        let op = Operation::Count;
        let st = self.prepared(schema)?;
        let mut state = PagingState::start();
        let mut n = 0u64;
        loop {
            let (result, next) = self
                .session
                .execute_single_page(&st.scan_keys, (), state)
                .await
                .map_err(|e| self.err(op, e))?;
            n += result
                .into_rows_result()
                .map_err(|e| self.err(op, e))?
                .rows_num() as u64;
            match next.into_paging_control_flow() {
                std::ops::ControlFlow::Break(()) => return Ok(n),
                std::ops::ControlFlow::Continue(s) => state = s,
            }
        }
    }
}

/// The keys a key-only condition selects; `None` means "every key".
fn key_set(schema: &EntitySchema, cond: &Cond) -> Option<BTreeSet<KeyTokValue>> {
    match cond {
        Cond::Cmp(i, CmpOp::Eq, v) if *i == schema.key => {
            Some(BTreeSet::from([KeyTokValue::new(v)]))
        }
        Cond::In(i, vs) if *i == schema.key => Some(vs.iter().map(KeyTokValue::new).collect()),
        Cond::And(cs) => cs
            .iter()
            .filter_map(|c| key_set(schema, c))
            .reduce(|a, b| a.intersection(&b).cloned().collect()),
        Cond::Or(cs) => {
            let mut all = BTreeSet::new();
            for c in cs {
                all.extend(key_set(schema, c)?);
            }
            Some(all)
        }
        _ => None,
    }
}

/// A key ordered as the store orders keys, with its value.
#[derive(Debug, Clone)]
struct KeyTokValue(KeyTok, Value);

impl KeyTokValue {
    fn new(v: &Value) -> Self {
        KeyTokValue(KeyTok::of(v), v.clone())
    }
}
impl PartialEq for KeyTokValue {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for KeyTokValue {}
impl PartialOrd for KeyTokValue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for KeyTokValue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Reads `[applied]` from an LWT answer. A server that answers without it
/// does not implement lightweight transactions: refuse to guess.
fn applied(op: Operation, result: scylla::response::query_result::QueryResult) -> Result<Applied> {
    let applied = result
        .into_rows_result()
        .ok()
        .and_then(|rows| rows.first_row::<Row>().ok())
        .and_then(|row| row.columns.into_iter().next().flatten());
    match applied {
        Some(CqlValue::Boolean(true)) => Ok(Applied::Yes),
        Some(CqlValue::Boolean(false)) => Ok(Applied::No),
        _ => Err(Error::Backend {
            store: Store::Scylla,
            operation: op,
            message: "the server did not answer the lightweight transaction ([applied] missing): \
                      it does not support LWT; set scylla.lightweight_transactions = false for it"
                .into(),
            retryable: false,
            source: None,
        }),
    }
}

fn record_values(record: &Record) -> Vec<Option<CqlValue>> {
    record.0.iter().map(to_cql).collect()
}

/// A value as CQL (`None` is null); its kind matches its column's type.
fn to_cql(v: &Value) -> Option<CqlValue> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => CqlValue::Boolean(*b),
        Value::Int(i) => CqlValue::BigInt(*i),
        Value::Float(x) => CqlValue::Double(*x),
        Value::Text(s) => CqlValue::Text(s.clone()),
        Value::Date(d) => {
            let days = d.signed_duration_since(NaiveDate::default()).num_days();
            CqlValue::Date(CqlDate(
                u32::try_from(days + CQL_DATE_ORIGIN).unwrap_or_default(),
            ))
        }
        Value::Timestamp(t) => CqlValue::Timestamp(CqlTimestamp(t.timestamp_millis())),
        Value::Uuid(u) => CqlValue::Uuid(*u),
        Value::Json(j) => CqlValue::Text(j.to_string()),
    })
}

fn from_cql(ty: FieldType, v: CqlValue) -> Option<Value> {
    Some(match (ty, v) {
        (FieldType::Text, CqlValue::Text(s) | CqlValue::Ascii(s)) => Value::Text(s),
        (FieldType::Json, CqlValue::Text(s)) => Value::Json(serde_json::from_str(&s).ok()?),
        (FieldType::Int, CqlValue::BigInt(i)) => Value::Int(i),
        (FieldType::Int, CqlValue::Int(i)) => Value::Int(i64::from(i)),
        (FieldType::Float, CqlValue::Double(x)) => Value::Float(x),
        (FieldType::Bool, CqlValue::Boolean(b)) => Value::Bool(b),
        (FieldType::Date, CqlValue::Date(CqlDate(d))) => {
            let days = i64::from(d) - CQL_DATE_ORIGIN;
            Value::Date(
                NaiveDate::default().checked_add_signed(chrono::TimeDelta::try_days(days)?)?,
            )
        }
        (FieldType::Timestamp, CqlValue::Timestamp(CqlTimestamp(ms))) => {
            Value::Timestamp(DateTime::from_timestamp_millis(ms)?)
        }
        (FieldType::Uuid, CqlValue::Uuid(u)) => Value::Uuid(u),
        _ => return None,
    })
}

fn from_row(schema: &'static EntitySchema, op: Operation, row: Row) -> Result<Record> {
    if row.columns.len() != schema.fields.len() {
        return Err(protocol(op, "a row has the wrong number of columns"));
    }
    let mut values = Vec::with_capacity(schema.fields.len());
    for (f, c) in schema.fields.iter().zip(row.columns) {
        values.push(match c {
            None | Some(CqlValue::Empty) => Value::Null,
            Some(v) => from_cql(f.ty, v).ok_or_else(|| {
                protocol(op, &format!("stored column `{}` is not {}", f.name, f.ty))
            })?,
        });
    }
    Ok(Record(values))
}

fn protocol(op: Operation, why: &str) -> Error {
    Error::Backend {
        store: Store::Scylla,
        operation: op,
        message: why.to_owned(),
        retryable: false,
        source: None,
    }
}

/// The driver's errors, in one place for classification.
#[derive(Debug)]
enum ScyllaFault {
    Execution(scylla::errors::ExecutionError),
    Prepare(scylla::errors::PrepareError),
    /// The answer's shape was not the expected one (the kind, no text).
    Rows(&'static str),
}
impl From<scylla::errors::ExecutionError> for ScyllaFault {
    fn from(e: scylla::errors::ExecutionError) -> Self {
        ScyllaFault::Execution(e)
    }
}
impl From<scylla::errors::PrepareError> for ScyllaFault {
    fn from(e: scylla::errors::PrepareError) -> Self {
        ScyllaFault::Prepare(e)
    }
}
impl From<scylla::errors::IntoRowsResultError> for ScyllaFault {
    fn from(_: scylla::errors::IntoRowsResultError) -> Self {
        ScyllaFault::Rows("not rows")
    }
}
impl From<scylla::errors::FirstRowError> for ScyllaFault {
    fn from(_: scylla::errors::FirstRowError) -> Self {
        ScyllaFault::Rows("no first row")
    }
}
impl From<scylla::errors::MaybeFirstRowError> for ScyllaFault {
    fn from(_: scylla::errors::MaybeFirstRowError) -> Self {
        ScyllaFault::Rows("more than one row")
    }
}
impl From<scylla::errors::RowsError> for ScyllaFault {
    fn from(_: scylla::errors::RowsError) -> Self {
        ScyllaFault::Rows("rows")
    }
}

/// Maps a driver error: timeouts and lost connections decide retry and
/// breaker behaviour, so they are classified first; server answers by kind.
fn map_scylla_error(operation: Operation, timeout: Duration, fault: ScyllaFault) -> Error {
    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    let unavailable =
        |reason: String, sent: bool, source: Option<DriverError>| Error::Unavailable {
            store: Store::Scylla,
            operation,
            reason,
            sent,
            source,
        };
    let backend = |message: String, retryable: bool, source: Option<crate::error::DriverError>| {
        Error::Backend {
            store: Store::Scylla,
            operation,
            message,
            retryable,
            source,
        }
    };
    match fault {
        ScyllaFault::Rows(why) => {
            backend(format!("unexpected response shape ({why})"), false, None)
        }
        ScyllaFault::Prepare(e) => backend(
            "preparing a statement failed".into(),
            false,
            Some(DriverError::new("scylla", "prepare").io_from(&e)),
        ),
        ScyllaFault::Execution(e) => {
            let summary = |kind: &'static str| Some(DriverError::new("scylla", kind).io_from(&e));
            match &e {
                ExecutionError::RequestTimeout(_) => Error::Timeout {
                    store: Store::Scylla,
                    operation,
                    after: timeout,
                },
                ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => unavailable(
                    "no connection to any node".into(),
                    false,
                    summary("connection pool"),
                ),
                ExecutionError::LastAttemptError(attempt) => match attempt {
                    RequestAttemptError::BrokenConnectionError(_)
                    | RequestAttemptError::UnableToAllocStreamId => unavailable(
                        "the connection broke".into(),
                        true,
                        summary("broken connection"),
                    ),
                    RequestAttemptError::DbError(db, _) => match db {
                        DbError::Unavailable { .. }
                        | DbError::Overloaded
                        | DbError::IsBootstrapping => {
                            // The coordinator refused before any replica wrote.
                            unavailable(
                                "not enough replicas answered".into(),
                                false,
                                summary("unavailable"),
                            )
                        }
                        DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => {
                            Error::Timeout {
                                store: Store::Scylla,
                                operation,
                                after: timeout,
                            }
                        }
                        DbError::RateLimitReached { .. } => {
                            backend("rate limit reached".into(), true, summary("rate limit"))
                        }
                        other => {
                            let name = db_error_name(other);
                            let source = Some(DriverError::new("scylla", name.clone()));
                            backend(format!("server error ({name})"), false, source)
                        }
                    },
                    _ => backend("request failed".into(), false, summary("request attempt")),
                },
                _ => backend("request failed".into(), false, summary("execution")),
            }
        }
    }
}

/// A driver execution error as the backend reports it (timeouts and lost
/// connections first, server answers by kind, never a server message):
/// for the layers that write to a ScyllaDB session of their own.
#[must_use]
pub fn execution_error(
    operation: Operation,
    timeout: Duration,
    e: scylla::errors::ExecutionError,
) -> Error {
    map_scylla_error(operation, timeout, ScyllaFault::Execution(e))
}

/// A driver prepare error as the backend reports it.
#[must_use]
pub fn prepare_error(
    operation: Operation,
    timeout: Duration,
    e: scylla::errors::PrepareError,
) -> Error {
    map_scylla_error(operation, timeout, ScyllaFault::Prepare(e))
}

/// An answer of the wrong shape (rows expected), as the backend reports it.
#[must_use]
pub fn rows_error(operation: Operation, timeout: Duration) -> Error {
    map_scylla_error(operation, timeout, ScyllaFault::Rows("rows"))
}

/// The kind of a server error, without its message (which may quote values).
fn db_error_name(e: &scylla::errors::DbError) -> String {
    let debug = format!("{e:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or("unknown")
        .to_owned()
}

impl ScyllaBackend {
    pub(crate) fn store(&self) -> Store {
        Store::Scylla
    }

    /// No transactions on this store: the precise `Unsupported`.
    #[allow(clippy::unused_async)]
    #[allow(clippy::unused_self)]
    pub(crate) fn feed_of_store(&self) -> Result<std::sync::Arc<dyn crate::feed::ChangeFeed>> {
        Err(crate::feed::no_feed(
            Store::Scylla,
            "the CQL test server has no CDC log tables; see the README (Change feed) for how ScyllaDB CDC would serve it",
        ))
    }

    pub(crate) async fn begin_transaction(&self) -> Result<Box<dyn crate::backend::Transaction>> {
        Err(crate::backend::no_transactions(
            Store::Scylla,
            "ScyllaDB has no multi-partition transactions (a lightweight transaction covers one partition; a logged batch is atomic but not isolated)",
        ))
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        self.session
            .query_unpaged("SELECT key FROM system.local", ())
            .await
            .map(|_| ())
            .map_err(|e| self.err(Operation::Ping, e))
    }

    pub(crate) async fn prepare(&self, schema: &'static EntitySchema) -> Result<()> {
        // Preparing names the table and every column: the server refuses
        // when the keyspace, the table or a column is missing.
        let statements = Arc::new(self.prepare_all(schema).await?);
        self.statements
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(SchemaId::of(schema), statements);
        Ok(())
    }

    pub(crate) async fn insert(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> Result<()> {
        match self.insert_new(schema, Operation::Insert, record).await? {
            Applied::Yes => Ok(()),
            Applied::No => Err(Error::Conflict {
                entity: schema.name,
                kind: ConflictKind::DuplicateKey,
            }),
        }
    }

    pub(crate) async fn insert_many(
        &self,
        schema: &'static EntitySchema,
        records: &[Record],
    ) -> Result<()> {
        let op = Operation::InsertMany;
        let st = self.prepared(schema)?;
        if self.lwt {
            // Each entity by its own `INSERT ... IF NOT EXISTS` (a
            // conditional batch must stay in one partition), some in
            // flight at once: a concurrent insert of the same key is a
            // conflict, never silently overwritten.
            let statement = &st.insert_if_absent;
            let calls: Vec<_> = records
                .iter()
                .enumerate()
                .map(|(index, r)| {
                    let values = record_values(r);
                    async move { (index, self.run_lwt(op, statement, values).await) }
                })
                .collect();
            let answers: Vec<(usize, Result<Applied>)> = futures::stream::iter(calls)
                .buffer_unordered(LWT_IN_FLIGHT)
                .collect()
                .await;
            let mut failures = Vec::new();
            for (index, answer) in answers {
                if let Applied::No = answer? {
                    failures.push(BatchFailure {
                        index,
                        kind: ConflictKind::DuplicateKey,
                    });
                }
            }
            if failures.is_empty() {
                return Ok(());
            }
            failures.sort_by_key(|f| f.index);
            return Err(Error::Batch {
                entity: schema.name,
                failures,
            });
        }
        let keys: Vec<Value> = records.iter().map(|r| r.get(schema.key).clone()).collect();
        let existing = self.read_many(schema, op, &keys).await?;
        let fresh: Vec<&Record> = records
            .iter()
            .zip(&existing)
            .filter(|(_, e)| e.is_none())
            .map(|(r, _)| r)
            .collect();
        for chunk in fresh.chunks(BATCH_CHUNK) {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(chunk.len());
            for r in chunk {
                batch.append_statement(st.insert.clone());
                values.push(record_values(r));
            }
            self.session
                .batch(&batch, values)
                .await
                .map_err(|e| self.err(op, e))?;
        }
        let failures: Vec<BatchFailure> = existing
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_some())
            .map(|(index, _)| BatchFailure {
                index,
                kind: ConflictKind::DuplicateKey,
            })
            .collect();
        if !failures.is_empty() {
            return Err(Error::Batch {
                entity: schema.name,
                failures,
            });
        }
        Ok(())
    }

    pub(crate) async fn get(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
    ) -> Result<Option<Record>> {
        self.read(schema, Operation::Get, key).await
    }

    pub(crate) async fn get_many(
        &self,
        schema: &'static EntitySchema,
        keys: &[Value],
    ) -> Result<Vec<Record>> {
        Ok(self
            .read_many(schema, Operation::GetMany, keys)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    pub(crate) async fn update(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Record>> {
        self.cas(schema, Operation::Update, key, |current| match current {
            None => Ok(None),
            Some(current) => patched(schema, current, patch).map(Some),
        })
        .await
    }

    pub(crate) async fn replace(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
        expected_version: Option<i64>,
    ) -> Result<Record> {
        let key = record.get(schema.key).clone();
        let written = self
            .cas(schema, Operation::Replace, &key, |current| {
                let current = current.ok_or(Error::NotFound {
                    entity: schema.name,
                })?;
                check_expected(schema, expected_version, current)?;
                Ok(Some(record.clone()))
            })
            .await?;
        written.ok_or(Error::NotFound {
            entity: schema.name,
        })
    }

    pub(crate) async fn upsert(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> Result<Record> {
        let key = record.get(schema.key).clone();
        let written = self
            .cas(schema, Operation::Upsert, &key, |current| {
                Ok(Some(bumped(
                    schema,
                    record.clone(),
                    current.and_then(|c| version_of(schema, c)),
                )))
            })
            .await?;
        written.ok_or_else(|| protocol(Operation::Upsert, "upsert wrote nothing"))
    }

    pub(crate) async fn delete(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        let op = Operation::Delete;
        let st = self.prepared(schema)?;
        let values = vec![to_cql(key)];
        if self.lwt {
            return Ok(matches!(
                self.run_lwt(op, &st.delete_if_exists, values).await?,
                Applied::Yes
            ));
        }
        let existed = self.read(schema, op, key).await?.is_some();
        self.session
            .execute_unpaged(&st.delete, values)
            .await
            .map_err(|e| self.err(op, e))?;
        Ok(existed)
    }

    pub(crate) async fn list(
        &self,
        _schema: &'static EntitySchema,
        _request: &ListRequest,
    ) -> Result<Vec<Record>> {
        Err(Error::unsupported(
            Store::Scylla,
            Operation::List,
            "Scylla lists with its paging state (list_page)",
        ))
    }

    pub(crate) async fn list_page(
        &self,
        schema: &'static EntitySchema,
        cond: &Cond,
        limit: usize,
        state: Option<&[u8]>,
    ) -> Result<(Vec<Record>, Option<Vec<u8>>)> {
        let op = Operation::List;
        if let Some(keys) = key_set(schema, cond) {
            // A key filter: reads of the selected keys, in key order; the
            // position is an offset into them.
            let from = match state {
                None => 0,
                Some(b) => usize::try_from(u32::from_le_bytes(b.try_into().map_err(|_| {
                    Error::invalid(schema.name, None, "malformed cursor: bad position")
                })?))
                .unwrap_or(usize::MAX),
            };
            let keys: Vec<Value> = keys.into_iter().map(|k| k.1).collect();
            let page: Vec<Value> = keys.iter().skip(from).take(limit).cloned().collect();
            let records: Vec<Record> = self
                .read_many(schema, op, &page)
                .await?
                .into_iter()
                .flatten()
                .collect();
            let end = from + page.len();
            let next = (end < keys.len()).then(|| {
                u32::try_from(end)
                    .unwrap_or(u32::MAX)
                    .to_le_bytes()
                    .to_vec()
            });
            return Ok((records, next));
        }
        if !cond.is_always() {
            return Err(Error::unsupported(
                Store::Scylla,
                op,
                "Scylla filters only on the key",
            ));
        }
        let st = self.prepared(schema)?;
        let mut scan = st.scan.clone();
        scan.set_page_size(i32::try_from(limit).unwrap_or(i32::MAX));
        let paging = match state {
            None => PagingState::start(),
            Some(b) => PagingState::new_from_raw_bytes(b.to_vec()),
        };
        let (result, next) = self
            .session
            .execute_single_page(&scan, (), paging)
            .await
            .map_err(|e| self.err(op, e))?;
        let rows = result.into_rows_result().map_err(|e| self.err(op, e))?;
        let mut records = Vec::new();
        for row in rows.rows::<Row>().map_err(|e| self.err(op, e))? {
            records.push(from_row(
                schema,
                op,
                row.map_err(|e| protocol(op, &format!("row does not decode: {e}")))?,
            )?);
        }
        let next = match next.into_paging_control_flow() {
            std::ops::ControlFlow::Break(()) => None,
            std::ops::ControlFlow::Continue(s) => s.as_bytes_slice().map(|b| b.to_vec()),
        };
        Ok((records, next))
    }

    pub(crate) async fn count(&self, schema: &'static EntitySchema, cond: &Cond) -> Result<u64> {
        if let Some(keys) = key_set(schema, cond) {
            let keys: Vec<Value> = keys.into_iter().map(|k| k.1).collect();
            return Ok(self
                .read_many(schema, Operation::Count, &keys)
                .await?
                .iter()
                .flatten()
                .count() as u64);
        }
        if !cond.is_always() {
            return Err(Error::unsupported(
                Store::Scylla,
                Operation::Count,
                "Scylla filters only on the key",
            ));
        }
        self.count_all(schema).await
    }

    pub(crate) async fn exists(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        Ok(self.read(schema, Operation::Exists, key).await?.is_some())
    }
}

crate::backend::seam!(ScyllaBackend, unpooled, |this, schema, request| {
    Request::ListPage { cond, limit, state } => this
        .list_page(schema, cond, limit, state)
        .await
        .map(|(r, next)| Response::Page(r, next)),
});
