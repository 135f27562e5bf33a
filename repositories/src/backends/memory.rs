//! The in-memory backend: the reference model.
//!
//! Simple and obviously right, on purpose: the property tests compare every
//! other backend with it step by step. Not for production data (nothing is
//! persisted), but fine for tests and demos.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use dl_models::{EntitySchema, Record, Value};

use crate::backend::Capabilities;
use crate::error::{ConflictKind, Error, Result, Store};
use crate::keys::KeyTok;
use crate::query::{Cond, Direction, ListRequest, ValidPatch};
use crate::versions::{bumped, check_expected, patched, version_of};

type Table = BTreeMap<KeyTok, Record>;

/// The reference model: a map of records per entity.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    tables: Mutex<HashMap<&'static str, Table>>,
}

impl MemoryBackend {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn with_table<R>(&self, schema: &'static EntitySchema, f: impl FnOnce(&mut Table) -> R) -> R {
        // A poisoned lock means a panic mid-update in this process; the map
        // itself is never left half-written by our code, so keep serving.
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(tables.entry(schema.name).or_default())
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

crate::backend::seam!(MemoryBackend, unpooled, |this, schema, request| {});
