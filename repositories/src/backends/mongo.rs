//! The MongoDB backend (the official driver).
//!
//! One collection per entity in a database (the namespace), the key as
//! `_id`, typed BSON per field: text as strings, integers as `Int64`, floats
//! as `Double`, dates as `YYYY-MM-DD` strings (their order is the date
//! order), timestamps as BSON datetimes, UUIDs as binary subtype 4, json as
//! embedded documents, null stored as null. A unique index (partial on the
//! field's BSON type, so nulls are not indexed and many entities may hold
//! null) per `#[indexed(unique)]` field and an index per `#[indexed]` field.
//!
//! Filters become query documents built from typed values, never from
//! caller text: `$ne` also excludes null (two-valued semantics), `prefix` is
//! an anchored, fully escaped `$regex`, `not` is `$nor`. Strings compare by
//! bytes (no collation). `update` and `replace` check the version in the
//! filter of one `findOneAndUpdate` / `findOneAndReplace`; `upsert` of a
//! versioned entity is a compare-and-set loop. `insert_many` is one
//! unordered `insertMany` (not all-or-nothing: the others are written) and
//! `get_many` one `$in` query.
//!
//! Every read, `findAndModify` and delete carries `maxTimeMS` (the request
//! timeout), so the server stops work nobody waits for; the driver has no
//! such option for `insert` and `update`/`replace` commands, which the
//! guard's deadline bounds on the client.

use std::time::Duration;

use chrono::NaiveDate;
use dl_models::{EntitySchema, FieldType, Record, Value};
use futures::TryStreamExt as _;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{ClientSession, Collection, Database};
use std::sync::Arc;

use crate::backend::{Capabilities, FilterSupport, check_unique_indexes};
use crate::error::{BatchFailure, ConflictKind, Error, Operation, Result, Store};
use crate::query::{CmpOp, Cond, Direction, ListRequest, ValidPatch};
use crate::versions::version_of;

const CAS_ATTEMPTS: usize = 64;

/// The session of an open transaction, shared by its backend's calls
/// (one at a time); `None` once it committed or rolled back.
type TxSession = Arc<tokio::sync::Mutex<Option<ClientSession>>>;

/// A call's session: the transaction's, or none (outside a transaction).
type Sess<'a> = Option<&'a mut ClientSession>;

/// Runs a driver action in the call's session, if it has one.
macro_rules! in_session {
    ($s:expr, $action:expr) => {
        match $s.as_deref_mut() {
            Some(s) => $action.session(s).await,
            None => $action.await,
        }
    };
}

/// The MongoDB backend over one database.
#[derive(Clone)]
pub struct MongoBackend {
    db: Database,
    timeout: Duration,
    /// Inside a transaction: its session (every call runs in it).
    session: Option<TxSession>,
}

impl std::fmt::Debug for MongoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoBackend")
            .field("database", &self.db.name())
            .field("in_transaction", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

impl MongoBackend {
    /// A backend over `client`, with collections in database `database`
    /// (`[a-z_][a-z0-9_]*`). `timeout` is the request timeout the client
    /// enforces, reported in errors.
    ///
    /// # Errors
    /// `Invalid` for a bad database name.
    pub fn new(client: &mongodb::Client, database: &str, timeout: Duration) -> Result<Self> {
        if !dl_models::is_valid_identifier(database) {
            return Err(Error::invalid(
                "mongo",
                Some(database),
                "a database name must match [a-z_][a-z0-9_]* (at most 48 bytes)",
            ));
        }
        Ok(MongoBackend {
            db: client.database(database),
            timeout,
            session: None,
        })
    }

    /// The database.
    #[must_use]
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn coll(&self, schema: &EntitySchema) -> Collection<Document> {
        self.db.collection(schema.name)
    }

    fn err(&self, schema: &'static EntitySchema, op: Operation, e: mongodb::error::Error) -> Error {
        // IllegalOperation inside a transaction: a standalone server, which
        // has no transactions (only a replica set member or mongos does).
        if self.session.is_some()
            && matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(ce) if ce.code == 20)
        {
            return crate::backend::no_transactions(
                Store::Mongo,
                "this MongoDB server is standalone: transactions need a replica set member or mongos",
            );
        }
        map_mongo_error(schema, op, self.timeout, e)
    }

    fn by_key(key: &Value) -> Document {
        doc! { "_id": to_bson(key) }
    }

    /// After a conditional write matched nothing: absent (`None`) or the
    /// version stored now.
    async fn stored_version(
        &self,
        s: &mut Sess<'_>,
        schema: &'static EntitySchema,
        op: Operation,
        key: &Value,
    ) -> Result<Option<Option<i64>>> {
        let found = in_session!(
            s,
            self.coll(schema)
                .find_one(Self::by_key(key))
                .max_time(self.timeout)
        )
        .map_err(|e| self.err(schema, op, e))?;
        Ok(found.map(|d| {
            schema
                .version
                .and_then(|vi| d.get_i64(schema.fields[vi].name).ok())
        }))
    }
}

fn field_name(schema: &EntitySchema, i: usize) -> &'static str {
    if i == schema.key {
        "_id"
    } else {
        schema.fields[i].name
    }
}

/// A value as BSON (its field type is implied by the value's kind).
fn to_bson(v: &Value) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Int(i) => Bson::Int64(*i),
        Value::Float(x) => Bson::Double(*x),
        Value::Text(s) => Bson::String(s.clone()),
        Value::Date(d) => Bson::String(d.format("%Y-%m-%d").to_string()),
        Value::Timestamp(t) => Bson::DateTime(bson::DateTime::from_millis(t.timestamp_millis())),
        Value::Uuid(u) => Bson::Binary(bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: u.as_bytes().to_vec(),
        }),
        Value::Json(j) => bson::to_bson(j).unwrap_or(Bson::Null),
    }
}

/// BSON read back as a value of type `ty`; `None` when it does not fit.
fn from_bson(ty: FieldType, b: Bson) -> Option<Value> {
    Some(match (ty, b) {
        (_, Bson::Null) => Value::Null,
        (FieldType::Json, b) => Value::Json(bson::from_bson::<serde_json::Value>(b).ok()?),
        (FieldType::Text, Bson::String(s)) => Value::Text(s),
        (FieldType::Int, Bson::Int64(i)) => Value::Int(i),
        (FieldType::Int, Bson::Int32(i)) => Value::Int(i64::from(i)),
        (FieldType::Float, Bson::Double(x)) => Value::Float(x),
        (FieldType::Bool, Bson::Boolean(b)) => Value::Bool(b),
        (FieldType::Date, Bson::String(s)) => {
            Value::Date(NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok()?)
        }
        (FieldType::Timestamp, Bson::DateTime(t)) => Value::Timestamp(
            chrono::DateTime::from_timestamp_millis(t.timestamp_millis())?,
        ),
        (FieldType::Uuid, Bson::Binary(b)) if b.subtype == bson::spec::BinarySubtype::Uuid => {
            Value::Uuid(uuid::Uuid::from_slice(&b.bytes).ok()?)
        }
        _ => return None,
    })
}

/// The `createIndexes` command this backend expects for an entity (its
/// `#[indexed]` fields; unique ones over non-null values only, as
/// MongoDB's unique indexes count null as a value). The backend never runs
/// it; it is a starting point for a migration script
/// (`migrations/mongo/<version>_<name>.json`). `None` when the entity has
/// no indexed field (a `{"create": ...}` command makes its collection).
#[must_use]
pub fn create_indexes_command(schema: &EntitySchema) -> Option<Document> {
    let indexes: Vec<Document> = schema
        .fields
        .iter()
        .enumerate()
        .filter(|(i, f)| *i != schema.key && f.indexed)
        .map(|(_, f)| {
            let mut index = doc! {
                "key": { f.name: 1 },
                "name": format!("{}__{}", schema.name, f.name),
            };
            if f.unique {
                index.insert("unique", true);
                index.insert(
                    "partialFilterExpression",
                    doc! { f.name: { "$type": bson_type(f.ty) } },
                );
            }
            index
        })
        .collect();
    (!indexes.is_empty()).then(|| doc! { "createIndexes": schema.name, "indexes": indexes })
}

/// The BSON type name values of a field type are stored as.
fn bson_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Text | FieldType::Date => "string",
        FieldType::Int => "long",
        FieldType::Float => "double",
        FieldType::Bool => "bool",
        FieldType::Timestamp => "date",
        FieldType::Uuid => "binData",
        FieldType::Json => "object",
    }
}

fn to_doc(schema: &EntitySchema, record: &Record) -> Document {
    let mut d = Document::new();
    for (i, v) in record.0.iter().enumerate() {
        d.insert(field_name(schema, i), to_bson(v));
    }
    d
}

fn from_doc(schema: &'static EntitySchema, op: Operation, mut d: Document) -> Result<Record> {
    let mut values = Vec::with_capacity(schema.fields.len());
    for (i, f) in schema.fields.iter().enumerate() {
        let b = d.remove(field_name(schema, i)).unwrap_or(Bson::Null);
        values.push(from_bson(f.ty, b).ok_or_else(|| Error::Backend {
            store: Store::Mongo,
            operation: op,
            message: format!("stored field `{}` is not {}", f.name, f.ty),
            retryable: false,
            source: None,
        })?);
    }
    Ok(Record(values))
}

/// Escapes text for a PCRE regex: every non-alphanumeric ASCII character
/// is escaped, so the caller's text matches literally.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A checked condition as a query document (two-valued semantics).
fn query(schema: &EntitySchema, cond: &Cond) -> Document {
    let never = || doc! { "_id": { "$exists": false } };
    match cond {
        Cond::Cmp(i, op, v) => {
            let name = field_name(schema, *i);
            let b = to_bson(v);
            match op {
                CmpOp::Eq => doc! { name: { "$eq": b } },
                // `$ne` alone matches null and missing: exclude them.
                CmpOp::Ne => {
                    doc! { "$and": [ { name: { "$ne": b } }, { name: { "$ne": Bson::Null } } ] }
                }
                CmpOp::Lt => doc! { name: { "$lt": b } },
                CmpOp::Lte => doc! { name: { "$lte": b } },
                CmpOp::Gt => doc! { name: { "$gt": b } },
                CmpOp::Gte => doc! { name: { "$gte": b } },
            }
        }
        Cond::In(i, vs) => {
            if vs.is_empty() {
                return never();
            }
            let list: Vec<Bson> = vs.iter().map(to_bson).collect();
            doc! { field_name(schema, *i): { "$in": list } }
        }
        Cond::IsNull(i) => doc! { field_name(schema, *i): Bson::Null },
        Cond::Prefix(i, p) => {
            doc! { field_name(schema, *i): { "$regex": format!("^{}", regex_escape(p)) } }
        }
        Cond::And(cs) if cs.is_empty() => Document::new(),
        Cond::And(cs) => {
            doc! { "$and": cs.iter().map(|c| Bson::Document(query(schema, c))).collect::<Vec<_>>() }
        }
        Cond::Or(cs) if cs.is_empty() => never(),
        Cond::Or(cs) => {
            doc! { "$or": cs.iter().map(|c| Bson::Document(query(schema, c))).collect::<Vec<_>>() }
        }
        Cond::Not(c) => doc! { "$nor": [ query(schema, c) ] },
    }
}

fn sort_doc(schema: &EntitySchema, sort: &[(usize, Direction)]) -> Document {
    let mut d = Document::new();
    for (i, dir) in sort {
        d.insert(
            field_name(schema, *i),
            if *dir == Direction::Asc { 1 } else { -1 },
        );
    }
    d
}

/// The index a duplicate-key error names (`index: <name> dup key: ...`); the
/// message also quotes the value, which may be PHI, so only the name is kept.
fn dup_kind(schema: &'static EntitySchema, message: &str) -> ConflictKind {
    let index = message
        .split("index: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    if index == "_id_" {
        return ConflictKind::DuplicateKey;
    }
    let field = schema
        .fields
        .iter()
        .find(|f| index == format!("{}__{}", schema.name, f.name))
        .map(|f| f.name);
    ConflictKind::Unique { field }
}

const DUPLICATE_KEY: i32 = 11000;

/// Maps a driver error. Connection faults first; then the server's codes
/// and labels. A conflict drops the driver's error: its message quotes the
/// duplicated value.
fn map_mongo_error(
    schema: &'static EntitySchema,
    operation: Operation,
    timeout: Duration,
    e: mongodb::error::Error,
) -> Error {
    use mongodb::error::{ErrorKind, WriteFailure};
    let unavailable = |reason: &str, sent: bool, e: mongodb::error::Error| Error::Unavailable {
        store: Store::Mongo,
        operation,
        reason: reason.to_owned(),
        sent,
        source: Some(mongo_summary(&e, None)),
    };
    let transient =
        e.contains_label("TransientTransactionError") || e.contains_label("RetryableWriteError");
    let code = match e.kind.as_ref() {
        ErrorKind::Io(_) => return unavailable("connection i/o failed", true, e),
        ErrorKind::ConnectionPoolCleared { .. } => {
            return unavailable("the connection pool was cleared", true, e);
        }
        ErrorKind::ServerSelection { .. } => {
            return unavailable("no server could be selected in time", false, e);
        }
        ErrorKind::DnsResolve { .. } => return unavailable("DNS resolution failed", false, e),
        ErrorKind::Shutdown => return unavailable("the client was shut down", false, e),
        ErrorKind::Write(WriteFailure::WriteError(we)) if we.code == DUPLICATE_KEY => {
            return Error::Conflict {
                entity: schema.name,
                kind: dup_kind(schema, &we.message),
            };
        }
        ErrorKind::InsertMany(im) => {
            if let Some(we) = im
                .write_errors
                .as_ref()
                .and_then(|w| w.iter().find(|w| w.code == DUPLICATE_KEY))
            {
                return Error::Conflict {
                    entity: schema.name,
                    kind: dup_kind(schema, &we.message),
                };
            }
            im.write_errors
                .as_ref()
                .and_then(|w| w.first())
                .map(|w| w.code)
        }
        ErrorKind::Command(ce) if ce.code == DUPLICATE_KEY => {
            return Error::Conflict {
                entity: schema.name,
                kind: dup_kind(schema, &ce.message),
            };
        }
        ErrorKind::Command(ce) => Some(ce.code),
        ErrorKind::Write(WriteFailure::WriteError(we)) => Some(we.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(wc)) => Some(wc.code),
        _ => None,
    };
    match code {
        // MaxTimeMSExpired.
        Some(50) => Error::Timeout {
            store: Store::Mongo,
            operation,
            after: timeout,
        },
        // Host unreachable / not found, network timeout, socket exception,
        // shutting down, primary stepped down, not writable primary.
        Some(6 | 7 | 89 | 9001 | 91 | 189 | 11600 | 11602 | 10107 | 13435 | 13436) => unavailable(
            &format!("server not available (code {})", code.unwrap_or_default()),
            true,
            e,
        ),
        // WriteConflict, LockTimeout, and anything labelled transient.
        Some(112 | 24) => backend(operation, code, true, e),
        _ => backend(operation, code, transient, e),
    }
}

fn backend(
    operation: Operation,
    code: Option<i32>,
    retryable: bool,
    e: mongodb::error::Error,
) -> Error {
    Error::Backend {
        store: Store::Mongo,
        operation,
        message: match code {
            Some(c) => format!("server error (code {c})"),
            None => "driver error".to_owned(),
        },
        retryable,
        source: Some(mongo_summary(&e, code)),
    }
}

/// What is kept of a driver error: its kind's name, the server's code and
/// an I/O kind; never a message (a duplicate-key message quotes the value,
/// a validation message the document).
fn mongo_summary(e: &mongodb::error::Error, code: Option<i32>) -> crate::error::DriverError {
    use mongodb::error::{ErrorKind, WriteFailure};
    let kind = match e.kind.as_ref() {
        ErrorKind::Io(_) => "io",
        ErrorKind::ConnectionPoolCleared { .. } => "connection pool cleared",
        ErrorKind::ServerSelection { .. } => "server selection",
        ErrorKind::DnsResolve { .. } => "dns resolve",
        ErrorKind::Shutdown => "shutdown",
        ErrorKind::Command(_) => "command",
        ErrorKind::Write(WriteFailure::WriteError(_)) => "write",
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => "write concern",
        ErrorKind::InsertMany(_) => "insert many",
        ErrorKind::Authentication { .. } => "authentication",
        ErrorKind::InvalidArgument { .. } => "invalid argument",
        ErrorKind::BsonDeserialization(_) => "bson deserialization",
        ErrorKind::BsonSerialization(_) => "bson serialization",
        ErrorKind::InvalidResponse { .. } => "invalid response",
        ErrorKind::Transaction { .. } => "transaction",
        _ => "other",
    };
    let mut d = crate::error::DriverError::new("mongodb", kind);
    if let Some(c) = code {
        d = d.code(c);
    }
    d.io_from(e)
}

impl MongoBackend {
    pub(crate) fn store(&self) -> Store {
        Store::Mongo
    }

    /// No change feed on this store yet: the precise `Unsupported`.
    #[allow(clippy::unused_self)]
    pub(crate) fn feed_of_store(&self) -> Result<std::sync::Arc<dyn crate::feed::ChangeFeed>> {
        Err(crate::feed::no_feed(
            Store::Mongo,
            "not served by this backend yet",
        ))
    }

    /// A session transaction (snapshot reads, majority writes): every call
    /// of the transaction's backend runs in its session. Nested ones are
    /// refused.
    pub(crate) async fn begin_transaction(&self) -> Result<Box<dyn crate::backend::Transaction>> {
        static TX: EntitySchema = EntitySchema {
            name: "transaction",
            rust_name: "transaction",
            fields: &[],
            key: 0,
            version: None,
        };
        if self.session.is_some() {
            return Err(crate::backend::nested_transaction(Store::Mongo));
        }
        let op = Operation::Transaction;
        let mut session = self
            .db
            .client()
            .start_session()
            .await
            .map_err(|e| self.err(&TX, op, e))?;
        session
            .start_transaction()
            .await
            .map_err(|e| self.err(&TX, op, e))?;
        let shared: TxSession = Arc::new(tokio::sync::Mutex::new(Some(session)));
        let mut inside = self.clone();
        inside.session = Some(Arc::clone(&shared));
        Ok(Box::new(MongoTransaction {
            backend: Arc::new(inside),
            session: shared,
            timeout: self.timeout,
        }))
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities {
            transactions: self.session.is_none(),
            filter: FilterSupport::Any,
            sort: true,
            prefix: true,
            atomic_batch: false,
            native_batch: true,
            ttl: false,
            change_feed: false,
            unique: true,
            ordered: true,
            native_cursor: false,
        }
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        static PING: EntitySchema = EntitySchema {
            name: "ping",
            rust_name: "ping",
            fields: &[],
            key: 0,
            version: None,
        };
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(|e| self.err(&PING, Operation::Ping, e))
    }

    pub(crate) async fn prepare(&self, schema: &'static EntitySchema) -> Result<()> {
        let op = Operation::Prepare;
        let names = self
            .db
            .list_collection_names()
            .filter(doc! { "name": schema.name })
            .await
            .map_err(|e| self.err(schema, op, e))?;
        if !names.iter().any(|n| n == schema.name) {
            return Err(Error::SchemaNotReady {
                store: Store::Mongo,
                entity: schema.name,
                reason: format!(
                    "collection `{}` does not exist in database `{}`",
                    schema.name,
                    self.db.name()
                ),
            });
        }
        let needs_unique = schema
            .fields
            .iter()
            .enumerate()
            .any(|(i, f)| i != schema.key && f.unique);
        let mut unique = Vec::new();
        if needs_unique {
            let mut indexes = self
                .coll(schema)
                .list_indexes()
                .await
                .map_err(|e| self.err(schema, op, e))?;
            while let Some(index) = indexes
                .try_next()
                .await
                .map_err(|e| self.err(schema, op, e))?
            {
                let is_unique = index.options.as_ref().and_then(|o| o.unique) == Some(true);
                if is_unique && index.keys.len() == 1 {
                    unique.extend(index.keys.keys().cloned());
                }
            }
        }
        check_unique_indexes(Store::Mongo, schema, &unique)
    }

    /// The transaction's session, held for one call (none outside a
    /// transaction).
    async fn lock(
        &self,
        entity: &'static str,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<Option<ClientSession>>>> {
        match &self.session {
            None => Ok(None),
            Some(tx) => {
                let g = Arc::clone(tx).lock_owned().await;
                if g.is_none() {
                    return Err(crate::backend::transaction_ended(entity));
                }
                Ok(Some(g))
            }
        }
    }

    pub(crate) async fn insert(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> Result<()> {
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        in_session!(s, self.coll(schema).insert_one(to_doc(schema, record)))
            .map_err(|e| self.err(schema, Operation::Insert, e))?;
        Ok(())
    }

    pub(crate) async fn insert_many(
        &self,
        schema: &'static EntitySchema,
        records: &[Record],
    ) -> Result<()> {
        let op = Operation::InsertMany;
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        let docs: Vec<Document> = records.iter().map(|r| to_doc(schema, r)).collect();
        let Err(e) = in_session!(s, self.coll(schema).insert_many(docs).ordered(false)) else {
            return Ok(());
        };
        // Unordered: every document that did not fail was written (outside
        // a transaction). Report the duplicate-key failures per document;
        // anything else whole.
        if let mongodb::error::ErrorKind::InsertMany(im) = e.kind.as_ref()
            && im.write_concern_error.is_none()
            && let Some(errors) = &im.write_errors
            && !errors.is_empty()
            && errors.iter().all(|w| w.code == DUPLICATE_KEY)
        {
            let mut failures: Vec<BatchFailure> = errors
                .iter()
                .map(|w| BatchFailure {
                    index: w.index,
                    kind: dup_kind(schema, &w.message),
                })
                .collect();
            failures.sort_by_key(|f| f.index);
            return Err(Error::Batch {
                entity: schema.name,
                failures,
            });
        }
        Err(self.err(schema, op, e))
    }

    pub(crate) async fn get(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
    ) -> Result<Option<Record>> {
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        self.get_in(&mut s, schema, key).await
    }

    async fn get_in(
        &self,
        s: &mut Sess<'_>,
        schema: &'static EntitySchema,
        key: &Value,
    ) -> Result<Option<Record>> {
        let op = Operation::Get;
        let found = in_session!(
            s,
            self.coll(schema)
                .find_one(Self::by_key(key))
                .max_time(self.timeout)
        )
        .map_err(|e| self.err(schema, op, e))?;
        found.map(|d| from_doc(schema, op, d)).transpose()
    }

    /// The documents a query finds, in the call's session if it has one.
    async fn find_all(
        &self,
        s: &mut Sess<'_>,
        schema: &'static EntitySchema,
        op: Operation,
        find: mongodb::action::Find<'_, Document>,
    ) -> Result<Vec<Document>> {
        match s.as_deref_mut() {
            Some(s) => {
                let mut cursor = find
                    .session(&mut *s)
                    .await
                    .map_err(|e| self.err(schema, op, e))?;
                cursor
                    .stream(s)
                    .try_collect()
                    .await
                    .map_err(|e| self.err(schema, op, e))
            }
            None => find
                .await
                .map_err(|e| self.err(schema, op, e))?
                .try_collect()
                .await
                .map_err(|e| self.err(schema, op, e)),
        }
    }

    pub(crate) async fn get_many(
        &self,
        schema: &'static EntitySchema,
        keys: &[Value],
    ) -> Result<Vec<Record>> {
        let op = Operation::GetMany;
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        let list: Vec<Bson> = keys.iter().map(to_bson).collect();
        let coll = self.coll(schema);
        let find = coll
            .find(doc! { "_id": { "$in": list } })
            .max_time(self.timeout);
        let docs = self.find_all(&mut s, schema, op, find).await?;
        docs.into_iter().map(|d| from_doc(schema, op, d)).collect()
    }

    pub(crate) async fn update(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Record>> {
        let op = Operation::Update;
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        let mut filter = Self::by_key(key);
        let check = schema.version.zip(patch.expected_version);
        if let Some((vi, expected)) = check {
            filter.insert(schema.fields[vi].name, expected);
        }
        let mut set = Document::new();
        for (i, v) in &patch.sets {
            set.insert(schema.fields[*i].name, to_bson(v));
        }
        let mut change = doc! { "$set": set };
        if let Some(vi) = schema.version {
            change.insert("$inc", doc! { schema.fields[vi].name: 1_i64 });
        }
        let updated = in_session!(
            s,
            self.coll(schema)
                .find_one_and_update(filter, change)
                .return_document(ReturnDocument::After)
                .max_time(self.timeout)
        )
        .map_err(|e| self.err(schema, op, e))?;
        if let Some(d) = updated {
            return from_doc(schema, op, d).map(Some);
        }
        match (check, self.stored_version(&mut s, schema, op, key).await?) {
            (_, None) => Ok(None),
            (Some((_, expected)), Some(Some(actual))) => Err(Error::Conflict {
                entity: schema.name,
                kind: ConflictKind::VersionMismatch { expected, actual },
            }),
            (_, Some(_)) => Err(backend_plain(
                op,
                "the entity exists but the update matched nothing",
            )),
        }
    }

    pub(crate) async fn replace(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
        expected_version: Option<i64>,
    ) -> Result<Record> {
        let op = Operation::Replace;
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        let key = record.get(schema.key);
        let mut filter = Self::by_key(key);
        if let (Some(vi), Some(expected)) = (schema.version, expected_version) {
            filter.insert(schema.fields[vi].name, expected);
        }
        let replaced = in_session!(
            s,
            self.coll(schema)
                .find_one_and_replace(filter, to_doc(schema, record))
                .return_document(ReturnDocument::After)
                .max_time(self.timeout)
        )
        .map_err(|e| self.err(schema, op, e))?;
        if let Some(d) = replaced {
            return from_doc(schema, op, d);
        }
        match self.stored_version(&mut s, schema, op, key).await? {
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

    pub(crate) async fn upsert(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> Result<Record> {
        let op = Operation::Upsert;
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        let key = record.get(schema.key);
        let Some(vi) = schema.version else {
            in_session!(
                s,
                self.coll(schema)
                    .replace_one(Self::by_key(key), to_doc(schema, record))
                    .upsert(true)
            )
            .map_err(|e| self.err(schema, op, e))?;
            return Ok(record.clone());
        };
        // Version: as given when inserted, stored + 1 when overwritten; a
        // compare-and-set on the stored version, retried on a race.
        for _ in 0..CAS_ATTEMPTS {
            match self.get_in(&mut s, schema, key).await? {
                None => {
                    match in_session!(s, self.coll(schema).insert_one(to_doc(schema, record))) {
                        Ok(_) => return Ok(record.clone()),
                        Err(e) => match self.err(schema, op, e) {
                            // (Inside a transaction, a duplicate key aborts it:
                            // the caller sees the conflict.)
                            Error::Conflict {
                                kind: ConflictKind::DuplicateKey,
                                ..
                            } if self.session.is_none() => {}
                            other => return Err(other),
                        },
                    }
                }
                Some(current) => {
                    let stored = version_of(schema, &current).unwrap_or_default();
                    let mut next = record.clone();
                    next.0[vi] = Value::Int(stored.saturating_add(1));
                    let mut filter = Self::by_key(key);
                    filter.insert(schema.fields[vi].name, stored);
                    let done = in_session!(
                        s,
                        self.coll(schema).replace_one(filter, to_doc(schema, &next))
                    )
                    .map_err(|e| self.err(schema, op, e))?;
                    if done.matched_count == 1 {
                        return Ok(next);
                    }
                }
            }
        }
        Err(Error::Backend {
            store: Store::Mongo,
            operation: op,
            message: format!("gave up after {CAS_ATTEMPTS} concurrent writes to the same entity"),
            retryable: true,
            source: None,
        })
    }

    pub(crate) async fn delete(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        // findAndModify, not delete: it carries a server-side deadline.
        let done = in_session!(
            s,
            self.coll(schema)
                .find_one_and_delete(Self::by_key(key))
                .projection(doc! { "_id": 1 })
                .max_time(self.timeout)
        )
        .map_err(|e| self.err(schema, Operation::Delete, e))?;
        Ok(done.is_some())
    }

    pub(crate) async fn list(
        &self,
        schema: &'static EntitySchema,
        request: &ListRequest,
    ) -> Result<Vec<Record>> {
        let op = Operation::List;
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let coll = self.coll(schema);
        let find = coll
            .find(query(schema, &request.cond))
            .sort(sort_doc(schema, &request.sort))
            .limit(limit)
            .max_time(self.timeout);
        let docs = self.find_all(&mut s, schema, op, find).await?;
        docs.into_iter().map(|d| from_doc(schema, op, d)).collect()
    }

    pub(crate) async fn count(&self, schema: &'static EntitySchema, cond: &Cond) -> Result<u64> {
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        in_session!(
            s,
            self.coll(schema)
                .count_documents(query(schema, cond))
                .max_time(self.timeout)
        )
        .map_err(|e| self.err(schema, Operation::Count, e))
    }

    pub(crate) async fn exists(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        let mut g = self.lock(schema.name).await?;
        let mut s: Sess = g.as_mut().and_then(|g| g.as_mut());
        let n = in_session!(
            s,
            self.coll(schema)
                .count_documents(Self::by_key(key))
                .limit(1)
                .max_time(self.timeout)
        )
        .map_err(|e| self.err(schema, Operation::Exists, e))?;
        Ok(n > 0)
    }
}

crate::backend::seam!(MongoBackend, unpooled, |this, schema, request| {});

fn backend_plain(op: Operation, why: &str) -> Error {
    Error::Backend {
        store: Store::Mongo,
        operation: op,
        message: why.to_owned(),
        retryable: true,
        source: None,
    }
}

/// An open session transaction (see [`MongoBackend`]): commit, roll back,
/// or drop (which rolls back: the session is ended, and the server aborts
/// its transaction).
struct MongoTransaction {
    backend: Arc<MongoBackend>,
    session: TxSession,
    timeout: Duration,
}

impl std::fmt::Debug for MongoTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoTransaction").finish_non_exhaustive()
    }
}

impl MongoTransaction {
    /// Takes the session out (the transaction's calls then answer that it
    /// ended).
    async fn take(&self) -> Result<ClientSession> {
        self.session
            .lock()
            .await
            .take()
            .ok_or_else(|| crate::backend::transaction_ended("transaction"))
    }

    fn err(&self, e: mongodb::error::Error) -> Error {
        static TX: EntitySchema = EntitySchema {
            name: "transaction",
            rust_name: "transaction",
            fields: &[],
            key: 0,
            version: None,
        };
        map_mongo_error(&TX, Operation::Transaction, self.timeout, e)
    }
}

#[async_trait::async_trait]
impl crate::backend::Transaction for MongoTransaction {
    fn backend(&self) -> Arc<dyn crate::backend::Backend> {
        Arc::clone(&self.backend) as Arc<dyn crate::backend::Backend>
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let mut session = self.take().await?;
        session.commit_transaction().await.map_err(|e| self.err(e))
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        let mut session = self.take().await?;
        session.abort_transaction().await.map_err(|e| self.err(e))
    }
}

impl Drop for MongoTransaction {
    fn drop(&mut self) {
        // Ended by dropping the session: the driver aborts its transaction.
        // (A call in flight holds the lock; the session then ends with the
        // last handle of the transaction's backend.)
        if let Ok(mut held) = self.session.try_lock() {
            drop(held.take());
        }
    }
}
