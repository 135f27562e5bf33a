//! The in-memory backend: the reference model.
//!
//! Simple and obviously right, on purpose: the property tests compare every
//! other backend with it step by step. Not for production data (nothing is
//! persisted), but fine for tests and demos.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use dl_models::{EntitySchema, Record, Value};

use crate::backend::{Backend, Capabilities, Transaction, nested_transaction, transaction_ended};
use crate::error::{ConflictKind, Error, Operation, Result, Store};
use crate::keys::KeyTok;
use crate::query::{Cond, Direction, ListRequest, ValidPatch};
use crate::versions::{bumped, check_expected, patched, version_of};

type Table = BTreeMap<KeyTok, Record>;

type Tables = HashMap<&'static str, Table>;

/// The reference model: a map of records per entity.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    tables: Arc<Mutex<Tables>>,
    /// The transaction this backend is bound to (see `Backend::begin`).
    tx: Option<Arc<MemoryTx>>,
}

/// A transaction of the reference model: snapshot isolation, first
/// committer wins. It works on a copy of every table taken at begin; at
/// commit, each table it changed is written back if nobody else changed
/// it meanwhile, else nothing is and the commit fails (retryable).
#[derive(Debug)]
struct MemoryTx {
    /// The store's tables.
    store: Arc<Mutex<Tables>>,
    /// The tables as they were at begin.
    begun: Tables,
    /// The transaction's own copy, which its backend reads and writes.
    own: Arc<Mutex<Tables>>,
    ended: AtomicBool,
}

#[async_trait]
impl Transaction for MemoryTxHandle {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let tx = &self.tx;
        if tx.ended.swap(true, Ordering::SeqCst) {
            return Err(transaction_ended("transaction"));
        }
        let own = lock(&tx.own).clone();
        let mut store = lock(&tx.store);
        let empty = Table::new();
        let changed: Vec<&&'static str> = own
            .iter()
            .filter(|(name, t)| tx.begun.get(*name).unwrap_or(&empty) != *t)
            .map(|(name, _)| name)
            .collect();
        for name in &changed {
            if store.get(**name).unwrap_or(&empty) != tx.begun.get(**name).unwrap_or(&empty) {
                return Err(Error::Backend {
                    store: Store::Memory,
                    operation: Operation::Transaction,
                    message: format!(
                        "{name} was changed by another writer after this transaction began: nothing was committed; run it again"
                    ),
                    retryable: true,
                    source: None,
                });
            }
        }
        for name in changed {
            store.insert(*name, own.get(*name).cloned().unwrap_or_default());
        }
        Ok(())
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        if self.tx.ended.swap(true, Ordering::SeqCst) {
            return Err(transaction_ended("transaction"));
        }
        Ok(())
    }
}

/// The handle of a [`MemoryTx`]; dropped without commit, it rolls back
/// (its copy is never written back).
#[derive(Debug)]
struct MemoryTxHandle {
    tx: Arc<MemoryTx>,
    backend: Arc<dyn Backend>,
}

impl Drop for MemoryTxHandle {
    fn drop(&mut self) {
        self.tx.ended.store(true, Ordering::SeqCst);
    }
}

fn lock(m: &Mutex<Tables>) -> std::sync::MutexGuard<'_, Tables> {
    // A poisoned lock means a panic mid-update in this process; the map
    // itself is never left half-written by our code, so keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryBackend {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn with_table<R>(&self, schema: &'static EntitySchema, f: impl FnOnce(&mut Table) -> R) -> R {
        f(lock(&self.tables).entry(schema.name).or_default())
    }

    /// Whether this backend's transaction has ended (its calls then fail).
    fn ended(&self) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|t| t.ended.load(Ordering::SeqCst))
    }

    #[allow(clippy::unused_async)]
    #[allow(clippy::unused_self)]
    pub(crate) fn feed_of_store(&self) -> Result<std::sync::Arc<dyn crate::feed::ChangeFeed>> {
        Err(crate::feed::no_feed(
            Store::Memory,
            "the in-memory model keeps no change feed",
        ))
    }

    pub(crate) async fn begin_transaction(&self) -> Result<Box<dyn Transaction>> {
        if self.tx.is_some() {
            return Err(nested_transaction(Store::Memory));
        }
        let begun = lock(&self.tables).clone();
        let own = Arc::new(Mutex::new(begun.clone()));
        let tx = Arc::new(MemoryTx {
            store: Arc::clone(&self.tables),
            begun,
            own: Arc::clone(&own),
            ended: AtomicBool::new(false),
        });
        let backend = Arc::new(MemoryBackend {
            tables: own,
            tx: Some(Arc::clone(&tx)),
        });
        Ok(Box::new(MemoryTxHandle { tx, backend }))
    }
}

/// `Conflict(Unique)` if `record` takes a unique value that another record
/// (with another key) holds.
fn check_unique(schema: &'static EntitySchema, table: &Table, record: &Record) -> Result<()> {
    let own = KeyTok::of(record.get(schema.key));
    for (i, field) in schema.fields.iter().enumerate() {
        if !field.unique || i == schema.key {
            continue;
        }
        let v = record.get(i);
        if v.is_null() {
            continue;
        }
        let taken = table
            .iter()
            .any(|(k, r)| *k != own && r.get(i).total_cmp(v).is_eq());
        if taken {
            return Err(Error::Conflict {
                entity: schema.name,
                kind: ConflictKind::Unique {
                    field: Some(field.name),
                },
            });
        }
    }
    Ok(())
}

/// Orders two records by a sort specification (null smallest).
pub(crate) fn compare(sort: &[(usize, Direction)], a: &Record, b: &Record) -> std::cmp::Ordering {
    for (i, dir) in sort {
        let ord = a.get(*i).total_cmp(b.get(*i));
        let ord = if *dir == Direction::Desc {
            ord.reverse()
        } else {
            ord
        };
        if ord.is_ne() {
            return ord;
        }
    }
    std::cmp::Ordering::Equal
}

impl MemoryBackend {
    pub(crate) fn store(&self) -> Store {
        Store::Memory
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        Ok(())
    }

    pub(crate) async fn prepare(&self, schema: &'static EntitySchema) -> Result<()> {
        self.with_table(schema, |_| ());
        Ok(())
    }

    pub(crate) async fn insert(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> Result<()> {
        self.with_table(schema, |t| {
            let k = KeyTok::of(record.get(schema.key));
            if t.contains_key(&k) {
                return Err(Error::Conflict {
                    entity: schema.name,
                    kind: ConflictKind::DuplicateKey,
                });
            }
            check_unique(schema, t, record)?;
            t.insert(k, record.clone());
            Ok(())
        })
    }

    pub(crate) async fn insert_many(
        &self,
        schema: &'static EntitySchema,
        records: &[Record],
    ) -> Result<()> {
        self.with_table(schema, |t| {
            // All or nothing: check against a scratch copy first.
            let mut scratch = t.clone();
            for record in records {
                let k = KeyTok::of(record.get(schema.key));
                if scratch.contains_key(&k) {
                    return Err(Error::Conflict {
                        entity: schema.name,
                        kind: ConflictKind::DuplicateKey,
                    });
                }
                check_unique(schema, &scratch, record)?;
                scratch.insert(k, record.clone());
            }
            *t = scratch;
            Ok(())
        })
    }

    pub(crate) async fn get(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
    ) -> Result<Option<Record>> {
        Ok(self.with_table(schema, |t| t.get(&KeyTok::of(key)).cloned()))
    }

    pub(crate) async fn get_many(
        &self,
        schema: &'static EntitySchema,
        keys: &[Value],
    ) -> Result<Vec<Record>> {
        Ok(self.with_table(schema, |t| {
            keys.iter()
                .filter_map(|k| t.get(&KeyTok::of(k)).cloned())
                .collect()
        }))
    }

    pub(crate) async fn update(
        &self,
        schema: &'static EntitySchema,
        key: &Value,
        patch: &ValidPatch,
    ) -> Result<Option<Record>> {
        self.with_table(schema, |t| {
            let k = KeyTok::of(key);
            let Some(stored) = t.get(&k) else {
                return Ok(None);
            };
            let next = patched(schema, stored, patch)?;
            check_unique(schema, t, &next)?;
            t.insert(k, next.clone());
            Ok(Some(next))
        })
    }

    pub(crate) async fn replace(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
        expected_version: Option<i64>,
    ) -> Result<Record> {
        self.with_table(schema, |t| {
            let k = KeyTok::of(record.get(schema.key));
            let Some(stored) = t.get(&k) else {
                return Err(Error::NotFound {
                    entity: schema.name,
                });
            };
            check_expected(schema, expected_version, stored)?;
            check_unique(schema, t, record)?;
            t.insert(k, record.clone());
            Ok(record.clone())
        })
    }

    pub(crate) async fn upsert(
        &self,
        schema: &'static EntitySchema,
        record: &Record,
    ) -> Result<Record> {
        self.with_table(schema, |t| {
            let k = KeyTok::of(record.get(schema.key));
            let stored = t.get(&k).and_then(|r| version_of(schema, r));
            let next = bumped(schema, record.clone(), stored);
            check_unique(schema, t, &next)?;
            t.insert(k, next.clone());
            Ok(next)
        })
    }

    pub(crate) async fn delete(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        Ok(self.with_table(schema, |t| t.remove(&KeyTok::of(key)).is_some()))
    }

    pub(crate) async fn list(
        &self,
        schema: &'static EntitySchema,
        request: &ListRequest,
    ) -> Result<Vec<Record>> {
        Ok(self.with_table(schema, |t| {
            let mut rows: Vec<Record> = t
                .values()
                .filter(|r| request.cond.matches(r))
                .cloned()
                .collect();
            rows.sort_by(|a, b| compare(&request.sort, a, b));
            rows.truncate(request.limit);
            rows
        }))
    }

    pub(crate) async fn count(&self, schema: &'static EntitySchema, cond: &Cond) -> Result<u64> {
        Ok(self.with_table(schema, |t| {
            t.values().filter(|r| cond.matches(r)).count() as u64
        }))
    }

    pub(crate) async fn exists(&self, schema: &'static EntitySchema, key: &Value) -> Result<bool> {
        Ok(self.with_table(schema, |t| t.contains_key(&KeyTok::of(key))))
    }
}

crate::backend::seam!(MemoryBackend, unpooled, |this, schema, request| {
    _ if this.ended() => Err(transaction_ended(schema.name)),
});
