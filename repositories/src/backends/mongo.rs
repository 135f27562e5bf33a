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

mod feed;

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
use crate::feed::ChangeOp;
use crate::query::{CmpOp, Cond, Direction, ListRequest, ValidPatch};
use crate::versions::version_of;

const CAS_ATTEMPTS: usize = 64;

/// The outbox collections of the change feed.
const FEED: &str = "dl_feed";
const FEED_KEYS: &str = "dl_feed_keys";
const FEED_CLOCK: &str = "dl_feed_clock";
const FEED_CONSUMERS: &str = "dl_feed_consumers";

/// What errors of a transaction itself (begin, commit) name.
static TX: EntitySchema = unnamed("transaction");

/// A schema that only names what an error is about.
const fn unnamed(name: &'static str) -> EntitySchema {
    EntitySchema {
        name,
        rust_name: name,
        fields: &[],
        key: 0,
        version: None,
    }
}

/// A driver error of the feed's own collections.
fn map_feed_error(timeout: Duration, e: mongodb::error::Error) -> Error {
    static FEED_SCHEMA: EntitySchema = unnamed("dl_feed");
    map_mongo_error(&FEED_SCHEMA, Operation::Feed, timeout, e)
}

/// An open transaction: its session and the change events its captured
/// writes made (written to the outbox just before `COMMIT`, so the feed's
/// clock is held only then).
struct TxState {
    session: ClientSession,
    pending: Vec<Pending>,
}

/// The state of an open transaction, shared by its backend's calls (one
/// at a time); `None` once it committed or rolled back.
type TxSession = Arc<tokio::sync::Mutex<Option<TxState>>>;

/// A held transaction (see [`MongoBackend::lock`]).
type Held = tokio::sync::OwnedMutexGuard<Option<TxState>>;

/// The session of a held transaction, if any.
fn sess(g: &mut Option<Held>) -> Sess<'_> {
    g.as_mut()
        .and_then(|g| g.as_mut())
        .map(|st| &mut st.session)
}

/// A change event a write made, before the outbox has it.
struct Pending {
    entity: &'static str,
    op: ChangeOp,
    key_id: String,
    after: Option<String>,
    version: String,
}

/// A captured write's outcome and its events.
type Captured<T> = Result<(T, Vec<Pending>)>;

/// What to do after a write in a transaction of its own.
enum Step<T> {
    Done(Result<T>),
    Again,
}

/// How many times a captured write outside a transaction is tried again
/// when its transaction meets a write conflict (on the feed's clock, most
/// often: captured writes take positions one commit at a time). That is
/// the feed's own ordering, where PostgreSQL would wait on the clock's
/// row lock, not a fault: the guard's budgeted retries stay for faults.
const CAPTURE_ATTEMPTS: u32 = 64;

/// Runs a write body (`$s` its session; the body answers the value and
/// its change events). Outside a transaction, a captured entity's write
/// runs in a session transaction of its own with its events; inside one,
/// the events wait in the transaction for its commit.
macro_rules! write_op {
    ($self:ident, $schema:ident, |$s:ident| $body:expr) => {{
        if $self.session.is_none() && crate::feed::captured($self.capture.as_ref(), $schema) {
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                let mut session = $self.start_own($schema).await?;
                let r = {
                    let mut $s: Sess = Some(&mut session);
                    $body
                };
                match $self.end_own(&mut session, $schema, r, attempt).await {
                    Step::Done(v) => break v,
                    Step::Again => {}
                }
            }
        } else {
            let mut g = $self.lock($schema.name).await?;
            match g.as_mut().and_then(|g| g.as_mut()) {
                Some(TxState { session, pending }) => {
                    let mut $s: Sess = Some(session);
                    let (v, events) = $body?;
                    pending.extend(events);
                    Ok(v)
                }
                None => {
                    let mut $s: Sess = None;
                    $body.map(|(v, _)| v)
                }
            }
        }
    }};
}

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
    /// Which entities' writes go to the change feed.
    capture: Option<Arc<crate::feed::Capture>>,
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
            capture: None,
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

    /// The change feed of this database, when capture is on.
    pub(crate) fn feed_of_store(&self) -> Result<std::sync::Arc<dyn crate::feed::ChangeFeed>> {
        match &self.capture {
            Some(_) => Ok(Arc::new(feed::MongoFeed {
                db: self.db.clone(),
                timeout: self.timeout,
            })),
            None => Err(crate::feed::no_feed(
                Store::Mongo,
                "no entity is captured: name entities in cdc.entities",
            )),
        }
    }

    /// A session transaction (snapshot reads, majority writes): every call
    /// of the transaction's backend runs in its session. Nested ones are
    /// refused.
    pub(crate) async fn begin_transaction(&self) -> Result<Box<dyn crate::backend::Transaction>> {
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
        let shared: TxSession = Arc::new(tokio::sync::Mutex::new(Some(TxState {
            session,
            pending: Vec::new(),
        })));
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
            change_feed: self.capture.is_some(),
            unique: true,
            ordered: true,
            native_cursor: false,
        }
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        static PING: EntitySchema = unnamed("ping");
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
        if crate::feed::captured(self.capture.as_ref(), schema) {
            let all = self
                .db
                .list_collection_names()
                .await
                .map_err(|e| self.err(schema, op, e))?;
            for c in [FEED, FEED_KEYS, FEED_CLOCK, FEED_CONSUMERS] {
                if !all.iter().any(|n| n == c) {
                    return Err(crate::feed::feed_not_ready(Store::Mongo, schema, c));
                }
            }
        }
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

    /// Writes of the entities `capture` names become change events in the
    /// outbox collections (`dl_feed`, `dl_feed_keys`, `dl_feed_clock`; the
    /// migration `2_change_feed.json` makes them), in the same session
    /// transaction as the write (see [`crate::feed`]).
    #[must_use]
    pub fn with_capture(mut self, capture: Arc<crate::feed::Capture>) -> Self {
        self.capture = Some(capture);
        self
    }

    /// The event of a write of `record`, when `schema` is captured.
    fn event(
        &self,
        schema: &'static EntitySchema,
        op: ChangeOp,
        record: &Record,
        with_after: bool,
    ) -> Vec<Pending> {
        let Some(c) = self.capture.as_ref().filter(|c| c.captures(schema)) else {
            return Vec::new();
        };
        vec![Pending {
            entity: schema.name,
            op,
            key_id: c.key_id(schema, record.get(schema.key)),
            after: with_after.then(|| crate::json_record::encode(schema, record)),
            version: schema.shape_version(),
        }]
    }

    /// The event of a delete of `key`, when `schema` is captured.
    fn deleted_event(&self, schema: &'static EntitySchema, key: &Value) -> Vec<Pending> {
        let Some(c) = self.capture.as_ref().filter(|c| c.captures(schema)) else {
            return Vec::new();
        };
        vec![Pending {
            entity: schema.name,
            op: ChangeOp::Deleted,
            key_id: c.key_id(schema, key),
            after: None,
            version: schema.shape_version(),
        }]
    }

    /// A session with a transaction started, for one captured write.
    async fn start_own(&self, schema: &'static EntitySchema) -> Result<ClientSession> {
        let op = Operation::Transaction;
        let mut session = self
            .db
            .client()
            .start_session()
            .await
            .map_err(|e| self.err(schema, op, e))?;
        session
            .start_transaction()
            .await
            .map_err(|e| self.err(schema, op, e))?;
        Ok(session)
    }

    /// Ends a captured write's own transaction: its events written, then
    /// `COMMIT`; on a write conflict (the feed's clock, say) it is aborted
    /// and tried again, a bounded number of times.
    async fn end_own<T: Send>(
        &self,
        session: &mut ClientSession,
        schema: &'static EntitySchema,
        r: Captured<T>,
        attempt: u32,
    ) -> Step<T> {
        let again = |e: &Error| {
            matches!(
                e,
                Error::Backend {
                    retryable: true,
                    ..
                }
            ) && attempt < CAPTURE_ATTEMPTS
        };
        let r = match r {
            Ok((v, events)) => self.write_events(session, &events).await.map(|()| v),
            Err(e) => Err(e),
        };
        let value = match r {
            Ok(v) => v,
            Err(e) => {
                let _ = session.abort_transaction().await;
                if again(&e) {
                    self.pause(attempt).await;
                    return Step::Again;
                }
                return Step::Done(Err(e));
            }
        };
        // A commit whose answer was lost may be sent again (the server
        // applies it once); one refused as transient applied nothing.
        for _ in 0..3 {
            match session.commit_transaction().await {
                Ok(()) => return Step::Done(Ok(value)),
                Err(e) if e.contains_label("UnknownTransactionCommitResult") => {}
                Err(e) => {
                    let transient = e.contains_label("TransientTransactionError");
                    let e = self.err(schema, Operation::Transaction, e);
                    if transient && attempt < CAPTURE_ATTEMPTS {
                        self.pause(attempt).await;
                        return Step::Again;
                    }
                    return Step::Done(Err(e));
                }
            }
        }
        Step::Done(Err(Error::Unavailable {
            store: Store::Mongo,
            operation: Operation::Transaction,
            reason: "the answer to a commit was lost three times: the write's outcome is unknown"
                .into(),
            sent: true,
            source: None,
        }))
    }

    /// A short, growing, jittered pause before a write is tried again.
    async fn pause(&self, attempt: u32) {
        let ms = u64::from(attempt.min(10)) * 2 + fastrand::u64(0..5);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Writes events to the outbox in `session`'s transaction: positions
    /// from the clock (one `$inc` for all; its document stays locked to
    /// the commit, so positions are commit order), each key's sequence,
    /// then the events.
    async fn write_events(&self, session: &mut ClientSession, events: &[Pending]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let fail = |e: mongodb::error::Error| map_feed_error(self.timeout, e);
        let clock = self
            .db
            .collection::<Document>(FEED_CLOCK)
            .find_one_and_update(
                doc! { "_id": "clock" },
                doc! { "$inc": { "position": n }, "$currentDate": { "at": true } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *session)
            .await
            .map_err(fail)?
            .ok_or_else(|| crate::feed::feed_defect(Store::Mongo, "no clock"))?;
        let last = clock
            .get_i64("position")
            .map_err(|_| crate::feed::feed_defect(Store::Mongo, "a clock without a position"))?;
        let at = *clock
            .get_datetime("at")
            .map_err(|_| crate::feed::feed_defect(Store::Mongo, "a clock without a time"))?;
        let seqs = self.next_seqs(session, events).await?;
        let mut docs = Vec::with_capacity(events.len());
        for (i, (e, seq)) in events.iter().zip(seqs).enumerate() {
            let mut d = doc! {
                "_id": last - n + 1 + i64::try_from(i).unwrap_or(0),
                "entity": e.entity,
                "op": e.op.as_str(),
                "key_id": &e.key_id,
                "seq": seq,
                "committed_at": at,
                "schema_version": &e.version,
            };
            if let Some(a) = &e.after {
                d.insert("after_image", a);
            }
            docs.push(d);
        }
        self.db
            .collection::<Document>(FEED)
            .insert_many(docs)
            .session(&mut *session)
            .await
            .map_err(fail)?;
        Ok(())
    }

    /// Each event's key sequence, moved on in `dl_feed_keys` in the
    /// session's transaction. One event: one `findOneAndUpdate`. More (an
    /// `insert_many`, a transaction's writes): one read of the keys'
    /// documents, the new keys inserted at once, the others moved on one
    /// by one (only keys written before: re-inserted or written twice).
    async fn next_seqs(&self, session: &mut ClientSession, events: &[Pending]) -> Result<Vec<i64>> {
        let fail = |e: mongodb::error::Error| map_feed_error(self.timeout, e);
        let no_seq = || crate::feed::feed_defect(Store::Mongo, "a key without a sequence");
        let keys = self.db.collection::<Document>(FEED_KEYS);
        let ids: Vec<String> = events
            .iter()
            .map(|e| format!("{}/{}", e.entity, e.key_id))
            .collect();
        if let [id] = ids.as_slice() {
            let seq = keys
                .find_one_and_update(doc! { "_id": id }, doc! { "$inc": { "seq": 1_i64 } })
                .upsert(true)
                .return_document(ReturnDocument::After)
                .session(&mut *session)
                .await
                .map_err(fail)?
                .and_then(|d| d.get_i64("seq").ok())
                .ok_or_else(no_seq)?;
            return Ok(vec![seq]);
        }
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        let mut cursor = keys
            .find(doc! { "_id": { "$in": distinct.into_iter().collect::<Vec<_>>() } })
            .session(&mut *session)
            .await
            .map_err(fail)?;
        let found: Vec<Document> = cursor
            .stream(&mut *session)
            .try_collect()
            .await
            .map_err(fail)?;
        let mut before = std::collections::HashMap::new();
        for d in &found {
            let id = d.get_str("_id").map_err(|_| no_seq())?;
            before.insert(id.to_owned(), d.get_i64("seq").map_err(|_| no_seq())?);
        }
        let mut now: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        let seqs: Vec<i64> = ids
            .iter()
            .map(|id| {
                let s = now
                    .entry(id.as_str())
                    .or_insert_with(|| before.get(id).copied().unwrap_or(0));
                *s += 1;
                *s
            })
            .collect();
        let fresh: Vec<Document> = now
            .iter()
            .filter(|(id, _)| !before.contains_key(**id))
            .map(|(id, seq)| doc! { "_id": *id, "seq": *seq })
            .collect();
        if !fresh.is_empty() {
            // A key another writer made meanwhile: the write is to be
            // tried again (as after a write conflict).
            keys.insert_many(fresh)
                .session(&mut *session)
                .await
                .map_err(|e| match fail(e) {
                    Error::Conflict { .. } => backend_plain(
                        Operation::Feed,
                        "a key's sequence was made during the write: try it again",
                    ),
                    other => other,
                })?;
        }
        for (id, old) in &before {
            let new = now.get(id.as_str()).copied().unwrap_or(*old);
            // (A concurrent transaction that moved it meets a write
            // conflict first; the check is for a foreign writer.)
            let done = keys
                .update_one(
                    doc! { "_id": id, "seq": *old },
                    doc! { "$set": { "seq": new } },
                )
                .session(&mut *session)
                .await
                .map_err(fail)?;
            if done.matched_count != 1 {
                return Err(backend_plain(
                    Operation::Feed,
                    "a key's sequence moved during the write: try it again",
                ));
            }
        }
        Ok(seqs)
    }

    /// The transaction's session, held for one call (none outside a
    /// transaction).
    async fn lock(&self, entity: &'static str) -> Result<Option<Held>> {
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
        write_op!(self, schema, |s| self
            .insert_in(&mut s, schema, record)
            .await)
    }

    async fn insert_in(
        &self,
        s: &mut Sess<'_>,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> Captured<()> {
        in_session!(s, self.coll(schema).insert_one(to_doc(schema, record)))
            .map_err(|e| self.err(schema, Operation::Insert, e))?;
        Ok(((), self.event(schema, ChangeOp::Created, record, true)))
    }

    pub(crate) async fn insert_many(
        &self,
        schema: &'static EntitySchema,
        records: &[Record],
    ) -> Result<()> {
        write_op!(self, schema, |s| self
            .insert_many_in(&mut s, schema, records)
            .await)
    }

    async fn insert_many_in(
        &self,
        s: &mut Sess<'_>,
        schema: &'static EntitySchema,
        records: &[Record],
    ) -> Captured<()> {
        let op = Operation::InsertMany;
        let docs: Vec<Document> = records.iter().map(|r| to_doc(schema, r)).collect();
        let Err(e) = in_session!(s, self.coll(schema).insert_many(docs).ordered(false)) else {
            let events = records
                .iter()
                .flat_map(|r| self.event(schema, ChangeOp::Created, r, true))
                .collect();
            return Ok(((), events));
        };
        // Unordered: outside a transaction, every document that did not
        // fail was written (inside one, none was). Report the duplicate-key
        // failures per document; anything else whole.
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
        let mut s = sess(&mut g);
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
        let mut s = sess(&mut g);
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
        write_op!(self, schema, |s| self
            .update_in(&mut s, schema, key, patch)
            .await)
    }

    async fn update_in(
        &self,
        s: &mut Sess<'_>,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Captured<Option<Record>> {
        let op = Operation::Update;
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
            let r = from_doc(schema, op, d)?;
            let events = self.event(schema, ChangeOp::Updated, &r, true);
            return Ok((Some(r), events));
        }
        match (check, self.stored_version(s, schema, op, key).await?) {
            (_, None) => Ok((None, Vec::new())),
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
        write_op!(self, schema, |s| self
            .replace_in(&mut s, schema, record, expected_version)
            .await)
    }

    async fn replace_in(
        &self,
        s: &mut Sess<'_>,
        schema: &'static EntitySchema,
        record: &Record,
        expected_version: Option<i64>,
    ) -> Captured<Record> {
        let op = Operation::Replace;
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
            let r = from_doc(schema, op, d)?;
            let events = self.event(schema, ChangeOp::Updated, &r, true);
            return Ok((r, events));
        }
        match self.stored_version(s, schema, op, key).await? {
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
        write_op!(self, schema, |s| self
            .upsert_in(&mut s, schema, record)
            .await)
    }

    async fn upsert_in(
        &self,
        s: &mut Sess<'_>,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> Captured<Record> {
        let op = Operation::Upsert;
        let key = record.get(schema.key);
        let Some(vi) = schema.version else {
            let done = in_session!(
                s,
                self.coll(schema)
                    .replace_one(Self::by_key(key), to_doc(schema, record))
                    .upsert(true)
            )
            .map_err(|e| self.err(schema, op, e))?;
            let what = if done.upserted_id.is_some() {
                ChangeOp::Created
            } else {
                ChangeOp::Updated
            };
            return Ok((record.clone(), self.event(schema, what, record, true)));
        };
        // Version: as given when inserted, stored + 1 when overwritten; a
        // compare-and-set on the stored version, retried on a race.
        for _ in 0..CAS_ATTEMPTS {
            match self.get_in(s, schema, key).await? {
                None => {
                    match in_session!(s, self.coll(schema).insert_one(to_doc(schema, record))) {
                        Ok(_) => {
                            let events = self.event(schema, ChangeOp::Created, record, true);
                            return Ok((record.clone(), events));
                        }
                        Err(e) => match self.err(schema, op, e) {
                            Error::Conflict {
                                kind: ConflictKind::DuplicateKey,
                                ..
                            } if s.is_none() => {}
                            // In a session transaction a failed write ends it:
                            // the whole transaction is to be tried again.
                            Error::Conflict {
                                kind: ConflictKind::DuplicateKey,
                                ..
                            } => {
                                return Err(backend_plain(
                                    op,
                                    "a concurrent insert of the same key ended the transaction: try it again",
                                ));
                            }
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
                        let events = self.event(schema, ChangeOp::Updated, &next, true);
                        return Ok((next, events));
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
        write_op!(self, schema, |s| self.delete_in(&mut s, schema, key).await)
    }

    async fn delete_in(
        &self,
        s: &mut Sess<'_>,
        schema: &'static EntitySchema,
        key: &Value,
    ) -> Captured<bool> {
        // findAndModify, not delete: it carries a server-side deadline.
        let done = in_session!(
            s,
            self.coll(schema)
                .find_one_and_delete(Self::by_key(key))
                .projection(doc! { "_id": 1 })
                .max_time(self.timeout)
        )
        .map_err(|e| self.err(schema, Operation::Delete, e))?;
        if done.is_none() {
            return Ok((false, Vec::new()));
        }
        Ok((true, self.deleted_event(schema, key)))
    }

    pub(crate) async fn list(
        &self,
        schema: &'static EntitySchema,
        request: &ListRequest,
    ) -> Result<Vec<Record>> {
        let op = Operation::List;
        let mut g = self.lock(schema.name).await?;
        let mut s = sess(&mut g);
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
        let mut s = sess(&mut g);
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
        let mut s = sess(&mut g);
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
    async fn take(&self) -> Result<TxState> {
        self.session
            .lock()
            .await
            .take()
            .ok_or_else(|| crate::backend::transaction_ended("transaction"))
    }

    fn err(&self, e: mongodb::error::Error) -> Error {
        map_mongo_error(&TX, Operation::Transaction, self.timeout, e)
    }
}

#[async_trait::async_trait]
impl crate::backend::Transaction for MongoTransaction {
    fn backend(&self) -> Arc<dyn crate::backend::Backend> {
        Arc::clone(&self.backend) as Arc<dyn crate::backend::Backend>
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let TxState {
            mut session,
            pending,
        } = self.take().await?;
        // The captured writes' events, last: the feed's clock is held from
        // here to the commit only.
        if let Err(e) = self.backend.write_events(&mut session, &pending).await {
            let _ = session.abort_transaction().await;
            return Err(e);
        }
        session.commit_transaction().await.map_err(|e| self.err(e))
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        let mut state = self.take().await?;
        state
            .session
            .abort_transaction()
            .await
            .map_err(|e| self.err(e))
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
