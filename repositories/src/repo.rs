//! [`Repository<T>`], the typed contract, and [`Repo<T>`], its one
//! implementation over any [`Backend`].

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use dl_models::{Entity, EntitySchema, FieldType, KeyValue, Record, Value, decode, encode};
use dl_privacy::Privacy;
use sha2::{Digest, Sha256};

use crate::backend::{Backend, Capabilities, FilterSupport, Read};
use crate::error::{ConflictKind, Error, Operation, Result, Store};
use crate::keys::KeyTok;
use crate::query::{
    CmpOp, Cond, Cursor, Direction, Filter, ListRequest, MAX_IN_LIST, MAX_LIMIT, Page, Patch,
    Query, check_value,
};

/// Most entities one `insert_many` takes.
pub const MAX_BATCH: usize = 10_000;
/// Longest cursor token accepted, in bytes.
const MAX_CURSOR_BYTES: usize = 8 * 1024;

/// The typed repository of one entity type in one store.
///
/// Object-safe: a service holds `Arc<dyn Repository<Patient>>` and the store
/// behind it is a matter of configuration. Every input is checked against
/// `T::schema()` before any I/O; a failed check writes nothing.
#[async_trait]
pub trait Repository<T: Entity>: Send + Sync {
    /// Which store serves this repository.
    fn store(&self) -> Store;

    /// What the store can do.
    fn capabilities(&self) -> Capabilities;

    /// Inserts a new entity. `Conflict(DuplicateKey)` if the key exists.
    async fn insert(&self, entity: &T) -> Result<()>;

    /// Inserts many entities (up to [`MAX_BATCH`]). All are checked first;
    /// a batch with a repeated key is a `Conflict` before any I/O. On a store
    /// with `capabilities().atomic_batch` a conflict writes nothing
    /// (`Conflict`); on the others every entity that does not conflict is
    /// written and `Error::Batch` lists the ones that did, by position.
    async fn insert_many(&self, entities: &[T]) -> Result<()>;

    /// Reads one entity.
    async fn get(&self, key: &T::Key) -> Result<Option<T>>;

    /// Reads many (up to [`MAX_IN_LIST`]) in one round trip where the store
    /// can: the entities found, in the order of `keys`, each once.
    async fn get_many(&self, keys: &[T::Key]) -> Result<Vec<T>>;

    /// Applies a partial update. `None` when the key is absent; with
    /// [`Patch::expect_version`], `Conflict(VersionMismatch)` when the stored
    /// version moved on. The version field, if any, goes up by one.
    async fn update(&self, key: &T::Key, patch: &Patch) -> Result<Option<T>>;

    /// Overwrites an existing entity and returns it as stored. `NotFound`
    /// when absent. With a version field, the entity's version must be the
    /// stored one (else `Conflict(VersionMismatch)`); it is stored plus one.
    async fn replace(&self, entity: &T) -> Result<T>;

    /// Inserts, or overwrites without a version check; returns the entity as
    /// stored (version: as given when inserted, stored + 1 when overwritten).
    async fn upsert(&self, entity: &T) -> Result<T>;

    /// Deletes; whether the entity existed.
    async fn delete(&self, key: &T::Key) -> Result<bool>;

    /// One page of entities matching the query, in a total, stable order.
    async fn list(&self, query: &Query) -> Result<Page<T>>;

    /// How many entities match (`Filter::all()` for all).
    async fn count(&self, filter: &Filter) -> Result<u64>;

    /// Whether the entity exists.
    async fn exists(&self, key: &T::Key) -> Result<bool>;
}

/// The [`Repository<T>`] over a [`Backend`].
pub struct Repo<T> {
    backend: Arc<dyn Backend>,
    privacy: Arc<Privacy>,
    _entity: PhantomData<fn() -> T>,
}

/// The sealing keys of repositories opened without any
/// ([`Repo::open`]): random, for this process only.
fn process_privacy() -> Arc<Privacy> {
    static KEYS: std::sync::OnceLock<Arc<Privacy>> = std::sync::OnceLock::new();
    Arc::clone(KEYS.get_or_init(|| Arc::new(Privacy::ephemeral())))
}

impl<T> std::fmt::Debug for Repo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("backend", &self.backend)
            .finish()
    }
}

impl<T> Clone for Repo<T> {
    fn clone(&self) -> Self {
        Repo {
            backend: Arc::clone(&self.backend),
            privacy: Arc::clone(&self.privacy),
            _entity: PhantomData,
        }
    }
}

impl<T: Entity> Repo<T> {
    /// A repository over `backend`, after checking that the entity's table
    /// or collection, its columns and its unique indexes exist there. They
    /// are made by the migrations (`data-layer migrate up`), never here.
    ///
    /// # Errors
    /// When the entity's schema is not valid for the backend,
    /// [`Error::SchemaNotReady`] when the store lacks the table, a column or
    /// a unique index, or the store's fault.
    pub async fn open(backend: Arc<dyn Backend>) -> Result<Self> {
        Self::open_with(backend, process_privacy()).await
    }

    /// [`Repo::open`], sealing cursors with `privacy`'s keys (from
    /// settings: `DataLayer` passes them), so a cursor opens in every
    /// instance that holds the key. [`Repo::open`] uses a random key of
    /// this process.
    ///
    /// # Errors
    /// As [`Repo::open`].
    pub async fn open_with(backend: Arc<dyn Backend>, privacy: Arc<Privacy>) -> Result<Self> {
        let schema = T::schema();
        if !dl_models::is_valid_identifier(schema.name) {
            return Err(Error::invalid(schema.name, None, "invalid entity name"));
        }
        if !backend.capabilities().unique
            && let Some(f) = schema.fields.iter().find(|f| f.unique)
        {
            return Err(Error::unsupported(
                backend.store(),
                Operation::Prepare,
                format!(
                    "{} declares `{}` unique, and this store cannot enforce unique values",
                    schema.rust_name, f.name
                ),
            ));
        }
        backend.prepare(schema).await?;
        Ok(Repo {
            backend,
            privacy,
            _entity: PhantomData,
        })
    }

    /// The backend (for decorators and tests).
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn schema() -> &'static EntitySchema {
        T::schema()
    }

    fn to_record(entity: &T) -> Result<Record> {
        let schema = Self::schema();
        let record = encode(entity).map_err(|e| Error::Invalid {
            entity: schema.name,
            field: e.field.map(str::to_owned),
            reason: e.reason.into(),
        })?;
        let mut checked = Vec::with_capacity(record.0.len());
        for (field, value) in schema.fields.iter().zip(record.0) {
            checked.push(check_value(schema, field, value)?);
        }
        Ok(Record(checked))
    }

    fn decode_record(&self, op: Operation, record: &Record) -> Result<T> {
        decode(record).map_err(|e| Error::Backend {
            store: self.backend.store(),
            operation: op,
            message: format!("stored data does not decode: {e}"),
            retryable: false,
            source: None,
        })
    }

    /// An entity from what a backend read. JSON in the serde form is read
    /// straight into `T`; when that fails it goes through a record as any
    /// other read, so the error (naming the field, never the value) is the
    /// same (see [`Read::Json`]).
    fn decode_read(&self, op: Operation, read: Read) -> Result<T> {
        match read {
            Read::Record(r) => self.decode_record(op, &r),
            Read::Json(text) => match serde_json::from_str::<T>(&text) {
                Ok(entity) => Ok(entity),
                Err(_) => {
                    let record =
                        Read::Json(text).into_record(self.backend.store(), Self::schema(), op)?;
                    self.decode_record(op, &record)
                }
            },
        }
    }

    fn key_value(key: &T::Key) -> Result<Value> {
        let schema = Self::schema();
        check_value(schema, schema.key_field(), key.to_value())
    }

    fn check_capabilities(&self, op: Operation, cond: &Cond) -> Result<()> {
        let caps = self.backend.capabilities();
        let schema = Self::schema();
        let mut problem: Option<String> = None;
        check_cond_support(schema, &caps, cond, &mut problem);
        match problem {
            Some(reason) => Err(Error::unsupported(self.backend.store(), op, reason)),
            None => Ok(()),
        }
    }

    fn with_version(schema: &'static EntitySchema, record: &mut Record) -> Result<Option<i64>> {
        let Some(vi) = schema.version else {
            return Ok(None);
        };
        let Value::Int(expected) = record.0[vi] else {
            return Err(Error::invalid(
                schema.name,
                Some(schema.fields[vi].name),
                "version is not an integer",
            ));
        };
        let next = expected.checked_add(1).ok_or_else(|| {
            Error::invalid(
                schema.name,
                Some(schema.fields[vi].name),
                "version is at its maximum",
            )
        })?;
        record.0[vi] = Value::Int(next);
        Ok(Some(expected))
    }

    /// A page through the store's own cursor (its paging state).
    async fn list_native(&self, cond: &Cond, query: &Query) -> Result<Page<T>> {
        let schema = Self::schema();
        let fp = Self::native_fingerprint(cond);
        let state = match &query.after {
            None => None,
            Some(cursor) => Some(self.decode_native(cursor, &fp)?),
        };
        let (records, next) = self
            .backend
            .list_page(schema, cond, query.limit as usize, state.as_deref())
            .await?;
        let items = records
            .iter()
            .map(|r| self.decode_record(Operation::List, r))
            .collect::<Result<Vec<T>>>()?;
        let next = next.map(|state| {
            self.seal_cursor(&serde_json::json!({
                "f": fp,
                "p": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(state),
            }))
        });
        Ok(Page { items, next })
    }

    /// The fingerprint of a native-cursor query: the entity and the filter's
    /// shape (fields and operators; never values, which may be PHI).
    fn native_fingerprint(cond: &Cond) -> String {
        fn shape(c: &Cond, out: &mut String) {
            match c {
                Cond::Cmp(i, op, _) => out.push_str(&format!("c{i}{}", op.name())),
                Cond::In(i, vs) => out.push_str(&format!("i{i}:{}", vs.len())),
                Cond::IsNull(i) => out.push_str(&format!("n{i}")),
                Cond::Prefix(i, _) => out.push_str(&format!("p{i}")),
                Cond::And(cs) | Cond::Or(cs) => {
                    out.push(if matches!(c, Cond::And(_)) { '&' } else { '|' });
                    out.push('(');
                    for c in cs {
                        shape(c, out);
                        out.push(',');
                    }
                    out.push(')');
                }
                Cond::Not(c) => {
                    out.push('!');
                    shape(c, out);
                }
            }
        }
        let mut text = format!("native:{}:", Self::schema().name);
        shape(cond, &mut text);
        let digest = Sha256::digest(text.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A cursor: the body sealed (authenticated and encrypted) for this
    /// entity, so no cursor shows a key, a sort value or a paging state,
    /// and none can be forged or altered.
    fn seal_cursor(&self, body: &serde_json::Value) -> Cursor {
        Cursor(
            self.privacy
                .seal(&Self::cursor_context(), body.to_string().as_bytes()),
        )
    }

    fn cursor_context() -> Vec<u8> {
        let mut c = b"data-layer/cursor/v1:".to_vec();
        c.extend_from_slice(Self::schema().name.as_bytes());
        c
    }

    /// The body of a cursor this entity's repositories sealed.
    fn open_cursor(&self, cursor: &Cursor) -> Result<serde_json::Value> {
        let schema = Self::schema();
        if cursor.0.len() > MAX_CURSOR_BYTES {
            return Err(Error::invalid(
                schema.name,
                None,
                "malformed cursor: too long",
            ));
        }
        let bytes = self
            .privacy
            .open(&Self::cursor_context(), &cursor.0)
            .map_err(|e| {
                Error::invalid(
                    schema.name,
                    None,
                    match e {
                        dl_privacy::OpenError::UnknownKey => {
                            "this cursor was sealed under a key this service does not hold (rotated out, or another process's random key: set privacy.key): list again from the start"
                        }
                        _ => {
                            "malformed cursor: altered, forged, or from another entity (cursors are opaque)"
                        }
                    },
                )
            })?;
        serde_json::from_slice(&bytes)
            .map_err(|_| Error::invalid(schema.name, None, "malformed cursor: not json"))
    }

    fn decode_native(&self, cursor: &Cursor, fingerprint: &str) -> Result<Vec<u8>> {
        let schema = Self::schema();
        let bad = |why: &'static str| {
            Error::invalid(schema.name, None, format!("malformed cursor: {why}"))
        };
        let body = self.open_cursor(cursor)?;
        if body.get("f").and_then(|f| f.as_str()) != Some(fingerprint) {
            return Err(Error::invalid(
                schema.name,
                None,
                "this cursor belongs to another query (or another entity)",
            ));
        }
        let state = body
            .get("p")
            .and_then(|p| p.as_str())
            .ok_or_else(|| bad("no position"))?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(state.as_bytes())
            .map_err(|_| bad("position is not base64url"))
    }

    fn fingerprint(sort: &[(usize, Direction)]) -> String {
        let schema = Self::schema();
        let mut h = Sha256::new();
        h.update(schema.name.as_bytes());
        for (i, d) in sort {
            h.update(schema.fields[*i].name.as_bytes());
            h.update(if *d == Direction::Asc { b"+" } else { b"-" });
        }
        let digest = h.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn make_cursor(&self, sort: &[(usize, Direction)], record: &Record) -> Cursor {
        let schema = Self::schema();
        let values: Vec<serde_json::Value> = sort
            .iter()
            .map(|(i, _)| {
                if schema.fields[*i].sensitivity.is_phi() && *i != schema.key {
                    serde_json::Value::String("phi".into())
                } else {
                    serde_json::json!({ "v": record.get(*i).to_json() })
                }
            })
            .collect();
        self.seal_cursor(&serde_json::json!({
            "f": Self::fingerprint(sort),
            "k": record.get(schema.key).to_json(),
            "s": values,
        }))
    }

    /// Decodes a cursor into the anchor's sort values.
    async fn anchor(&self, sort: &[(usize, Direction)], cursor: &Cursor) -> Result<Vec<Value>> {
        let schema = Self::schema();
        let bad = |why: &'static str| {
            Error::invalid(schema.name, None, format!("malformed cursor: {why}"))
        };
        let body = self.open_cursor(cursor)?;
        if body.get("f").and_then(|f| f.as_str()) != Some(Self::fingerprint(sort).as_str()) {
            return Err(Error::invalid(
                schema.name,
                None,
                "this cursor belongs to a query with another sort order (or another entity)",
            ));
        }
        let key_json = body.get("k").cloned().ok_or_else(|| bad("no key"))?;
        let key = Value::from_json(schema.key_field().ty, key_json)
            .filter(|v| !v.is_null())
            .ok_or_else(|| bad("key of the wrong type"))?;
        let key = check_value(schema, schema.key_field(), key)?;
        let parts = body
            .get("s")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no sort values"))?;
        if parts.len() != sort.len() {
            return Err(bad("sort values do not match the query"));
        }
        let mut values = Vec::with_capacity(sort.len());
        let mut reread: Option<Record> = None;
        for ((i, _), part) in sort.iter().zip(parts) {
            let field = &schema.fields[*i];
            if *i == schema.key {
                values.push(key.clone());
            } else if part.as_str() == Some("phi") && field.sensitivity.is_phi() {
                if reread.is_none() {
                    reread = Some(self.backend.get(schema, &key).await?.ok_or_else(|| {
                        Error::invalid(
                            schema.name,
                            None,
                            "the entity this cursor points at was deleted: list again from the start",
                        )
                    })?);
                }
                values.push(reread.as_ref().map_or(Value::Null, |r| r.get(*i).clone()));
            } else {
                let json = part
                    .get("v")
                    .cloned()
                    .ok_or_else(|| bad("sort value missing"))?;
                let v = Value::from_json(field.ty, json)
                    .ok_or_else(|| bad("sort value of the wrong type"))?;
                values.push(check_value(schema, field, v)?);
            }
        }
        Ok(values)
    }
}

/// The keyset condition "strictly after the anchor" for a sort order where
/// null is the smallest value: for each i, the first i-1 sort fields equal
/// the anchor's and field i is past it.
fn after_anchor(sort: &[(usize, Direction)], anchor: &[Value]) -> Cond {
    let mut alternatives = Vec::with_capacity(sort.len());
    for (i, (field, dir)) in sort.iter().enumerate() {
        let mut all = Vec::with_capacity(i + 1);
        for ((f, _), a) in sort[..i].iter().zip(anchor) {
            all.push(if a.is_null() {
                Cond::IsNull(*f)
            } else {
                Cond::Cmp(*f, CmpOp::Eq, a.clone())
            });
        }
        let a = &anchor[i];
        let past = match (dir, a.is_null()) {
            (Direction::Asc, true) => Cond::Not(Box::new(Cond::IsNull(*field))),
            (Direction::Asc, false) => Cond::Cmp(*field, CmpOp::Gt, a.clone()),
            (Direction::Desc, true) => Cond::Or(Vec::new()),
            (Direction::Desc, false) => Cond::Or(vec![
                Cond::Cmp(*field, CmpOp::Lt, a.clone()),
                Cond::IsNull(*field),
            ]),
        };
        all.push(past);
        alternatives.push(Cond::And(all));
    }
    Cond::Or(alternatives)
}

fn check_cond_support(
    schema: &'static EntitySchema,
    caps: &Capabilities,
    cond: &Cond,
    problem: &mut Option<String>,
) {
    if problem.is_some() {
        return;
    }
    let field_name = |i: usize| schema.fields[i].name;
    match caps.filter {
        FilterSupport::Any => {
            if !caps.prefix {
                cond.for_each_field(&mut |i, c| {
                    if matches!(c, Cond::Prefix(..)) && problem.is_none() {
                        *problem = Some(format!(
                            "prefix filters (on `{}`) are not supported by this store",
                            field_name(i)
                        ));
                    }
                });
            }
        }
        FilterSupport::IndexedEquality | FilterSupport::KeyOnly => match cond {
            Cond::And(cs) | Cond::Or(cs) => {
                for c in cs {
                    check_cond_support(schema, caps, c, problem);
                }
            }
            Cond::Cmp(i, CmpOp::Eq, _) | Cond::In(i, _) => {
                let f = &schema.fields[*i];
                let ok = *i == schema.key
                    || (caps.filter == FilterSupport::IndexedEquality && f.indexed);
                if !ok {
                    *problem = Some(format!(
                        "field `{}` is not indexed here: this store filters only with eq/in on {}",
                        f.name,
                        if caps.filter == FilterSupport::KeyOnly {
                            "the key"
                        } else {
                            "#[indexed] fields and the key"
                        }
                    ));
                }
            }
            other => {
                let what = match other {
                    Cond::Cmp(_, op, _) => op.name(),
                    Cond::IsNull(_) => "is_null",
                    Cond::Prefix(..) => "prefix",
                    Cond::Not(_) => "not",
                    _ => "this operator",
                };
                *problem = Some(format!(
                    "`{what}` filters are not supported: this store serves eq/in on indexed fields only"
                ));
            }
        },
    }
}

#[async_trait]
impl<T: Entity> Repository<T> for Repo<T> {
    fn store(&self) -> Store {
        self.backend.store()
    }

    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    async fn insert(&self, entity: &T) -> Result<()> {
        let schema = Self::schema();
        let record = Self::to_record(entity)?;
        match self.backend.insert(schema, &record).await {
            // Stores check constraints in their own order; the contract is
            // that a taken key wins, so the error does not depend on the store.
            Err(Error::Conflict {
                kind: ConflictKind::Unique { .. },
                ..
            }) if self.backend.exists(schema, record.get(schema.key)).await? => {
                Err(Error::Conflict {
                    entity: schema.name,
                    kind: ConflictKind::DuplicateKey,
                })
            }
            other => other,
        }
    }

    async fn insert_many(&self, entities: &[T]) -> Result<()> {
        let schema = Self::schema();
        if entities.is_empty() {
            return Ok(());
        }
        if entities.len() > MAX_BATCH {
            return Err(Error::invalid(
                schema.name,
                None,
                format!(
                    "batch of {} entities, the limit is {MAX_BATCH}",
                    entities.len()
                ),
            ));
        }
        let mut records = Vec::with_capacity(entities.len());
        let mut seen = std::collections::HashSet::with_capacity(entities.len());
        for entity in entities {
            let record = Self::to_record(entity)?;
            if !seen.insert(KeyTok::of(record.get(schema.key))) {
                return Err(Error::Conflict {
                    entity: schema.name,
                    kind: ConflictKind::DuplicateKey,
                });
            }
            records.push(record);
        }
        match self.backend.insert_many(schema, &records).await {
            // As in `insert`: a taken key wins over a taken unique value.
            // Only for an all-or-nothing batch: after a partial one, a key
            // that exists may have been written by the batch itself.
            Err(
                e @ Error::Conflict {
                    kind: ConflictKind::Unique { .. },
                    ..
                },
            ) if self.backend.capabilities().atomic_batch => {
                let keys: Vec<Value> = records.iter().map(|r| r.get(schema.key).clone()).collect();
                if self.backend.get_many(schema, &keys).await?.is_empty() {
                    Err(e)
                } else {
                    Err(Error::Conflict {
                        entity: schema.name,
                        kind: ConflictKind::DuplicateKey,
                    })
                }
            }
            other => other,
        }
    }

    async fn get(&self, key: &T::Key) -> Result<Option<T>> {
        let key = Self::key_value(key)?;
        match self.backend.get_read(Self::schema(), &key).await? {
            Some(r) => self.decode_read(Operation::Get, r).map(Some),
            None => Ok(None),
        }
    }

    async fn get_many(&self, keys: &[T::Key]) -> Result<Vec<T>> {
        let schema = Self::schema();
        if keys.len() > MAX_IN_LIST {
            return Err(Error::invalid(
                schema.name,
                None,
                format!(
                    "get_many of {} keys, the limit is {MAX_IN_LIST}",
                    keys.len()
                ),
            ));
        }
        let mut order = Vec::with_capacity(keys.len());
        let mut distinct = Vec::with_capacity(keys.len());
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        for key in keys {
            let v = Self::key_value(key)?;
            let tok = KeyTok::of(&v);
            if seen.insert(tok.clone()) {
                order.push(tok);
                distinct.push(v);
            }
        }
        if distinct.is_empty() {
            return Ok(Vec::new());
        }
        let records = self.backend.get_many(schema, &distinct).await?;
        let mut by_key: HashMap<KeyTok, Record> = records
            .into_iter()
            .map(|r| (KeyTok::of(r.get(schema.key)), r))
            .collect();
        let mut out = Vec::with_capacity(by_key.len());
        for tok in order {
            if let Some(r) = by_key.remove(&tok) {
                out.push(self.decode_record(Operation::GetMany, &r)?);
            }
        }
        Ok(out)
    }

    async fn update(&self, key: &T::Key, patch: &Patch) -> Result<Option<T>> {
        let schema = Self::schema();
        let patch = patch.check(schema)?;
        let key = Self::key_value(key)?;
        match self.backend.update_read(schema, &key, &patch).await? {
            Some(r) => self.decode_read(Operation::Update, r).map(Some),
            None => Ok(None),
        }
    }

    async fn replace(&self, entity: &T) -> Result<T> {
        let schema = Self::schema();
        let mut record = Self::to_record(entity)?;
        let expected = Self::with_version(schema, &mut record)?;
        let stored = self.backend.replace(schema, &record, expected).await?;
        self.decode_record(Operation::Replace, &stored)
    }

    async fn upsert(&self, entity: &T) -> Result<T> {
        let record = Self::to_record(entity)?;
        let stored = self.backend.upsert(Self::schema(), &record).await?;
        self.decode_record(Operation::Upsert, &stored)
    }

    async fn delete(&self, key: &T::Key) -> Result<bool> {
        let key = Self::key_value(key)?;
        self.backend.delete(Self::schema(), &key).await
    }

    async fn list(&self, query: &Query) -> Result<Page<T>> {
        let schema = Self::schema();
        if query.limit == 0 || query.limit > MAX_LIMIT {
            return Err(Error::invalid(
                schema.name,
                None,
                format!("limit {} is out of range: 1 to {MAX_LIMIT}", query.limit),
            ));
        }
        let cond = query.filter.check(schema)?;
        let mut sort = Vec::with_capacity(query.sort.len() + 1);
        for (name, dir) in &query.sort {
            let Some(i) = schema.position(name) else {
                return Err(Error::invalid(
                    schema.name,
                    Some(name),
                    format!("{} has no such field", schema.rust_name),
                ));
            };
            if schema.fields[i].ty == FieldType::Json {
                return Err(Error::invalid(
                    schema.name,
                    Some(name),
                    "json fields cannot be sorted on",
                ));
            }
            if sort.iter().any(|(j, _)| *j == i) {
                return Err(Error::invalid(
                    schema.name,
                    Some(name),
                    "field sorted on twice",
                ));
            }
            sort.push((i, *dir));
        }
        let caps = self.backend.capabilities();
        if !caps.ordered && !sort.is_empty() {
            return Err(Error::unsupported(
                self.backend.store(),
                Operation::List,
                "this store lists in its own order (no key order, no sorting)",
            ));
        }
        if caps.native_cursor {
            self.check_capabilities(Operation::List, &cond)?;
            return self.list_native(&cond, query).await;
        }
        if !caps.sort && sort.iter().any(|(i, _)| *i != schema.key) {
            return Err(Error::unsupported(
                self.backend.store(),
                Operation::List,
                "sorting on fields other than the key is not supported by this store",
            ));
        }
        self.check_capabilities(Operation::List, &cond)?;
        if !sort.iter().any(|(i, _)| *i == schema.key) {
            sort.push((schema.key, Direction::Asc));
        }
        let cond = match &query.after {
            None => cond,
            Some(cursor) => {
                let anchor = self.anchor(&sort, cursor).await?;
                let after = after_anchor(&sort, &anchor);
                if cond.is_always() {
                    after
                } else {
                    Cond::And(vec![cond, after])
                }
            }
        };
        let limit = query.limit as usize;
        let request = ListRequest {
            cond,
            sort,
            limit: limit + 1,
        };
        let mut records = self.backend.list(schema, &request).await?;
        let more = records.len() > limit;
        records.truncate(limit);
        let next = match (more, records.last()) {
            (true, Some(last)) => Some(self.make_cursor(&request.sort, last)),
            _ => None,
        };
        let items = records
            .iter()
            .map(|r| self.decode_record(Operation::List, r))
            .collect::<Result<Vec<T>>>()?;
        Ok(Page { items, next })
    }

    async fn count(&self, filter: &Filter) -> Result<u64> {
        let schema = Self::schema();
        let cond = filter.check(schema)?;
        self.check_capabilities(Operation::Count, &cond)?;
        self.backend.count(schema, &cond).await
    }

    async fn exists(&self, key: &T::Key) -> Result<bool> {
        let key = Self::key_value(key)?;
        self.backend.exists(Self::schema(), &key).await
    }
}
