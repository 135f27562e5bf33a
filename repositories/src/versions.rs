//! Optimistic-concurrency rules shared by the backends that compute a new
//! record in the client (memory, Redis, ScyllaDB): the SQL backends and
//! MongoDB check and bump the version inside the store's own statement.

use dl_models::{EntitySchema, Record, Value};

use crate::error::{ConflictKind, Error, Result};
use crate::query::ValidPatch;

/// The stored version of a record, if the entity has a version field.
pub(crate) fn version_of(schema: &EntitySchema, record: &Record) -> Option<i64> {
    schema.version.and_then(|vi| match record.get(vi) {
        Value::Int(v) => Some(*v),
        _ => None,
    })
}

/// `Conflict(VersionMismatch)` when the caller expected another version
/// than the one stored; the stored version otherwise.
pub(crate) fn check_expected(
    schema: &'static EntitySchema,
    expected: Option<i64>,
    stored: &Record,
) -> Result<Option<i64>> {
    let actual = version_of(schema, stored);
    if let (Some(expected), Some(actual)) = (expected, actual)
        && expected != actual
    {
        return Err(Error::Conflict {
            entity: schema.name,
            kind: ConflictKind::VersionMismatch { expected, actual },
        });
    }
    Ok(actual)
}

/// `record` with its version set to `stored + 1` (unchanged without a
/// version field or a stored version).
pub(crate) fn bumped(schema: &EntitySchema, mut record: Record, stored: Option<i64>) -> Record {
    if let (Some(vi), Some(v)) = (schema.version, stored) {
        record.0[vi] = Value::Int(v.saturating_add(1));
    }
    record
}

/// The record a patch makes of `current`: the expected version checked, the
/// fields set, the version bumped.
pub(crate) fn patched(
    schema: &'static EntitySchema,
    current: &Record,
    patch: &ValidPatch,
) -> Result<Record> {
    let stored = check_expected(schema, patch.expected_version, current)?;
    let mut next = current.clone();
    for (i, v) in &patch.sets {
        next.0[*i] = v.clone();
    }
    Ok(bumped(schema, next, stored))
}
