//! Entities of the conformance suite: every field type, nullability, a
//! unique index, a PHI sort field, a version field; and one with an integer
//! key and no version.

use chrono::{DateTime, NaiveDate, Utc};
use dl_models::Entity;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A test entity with one field of every type.
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "specimens")]
pub struct Specimen {
    /// Text key (so unicode and injection strings can be keys).
    #[key]
    pub id: String,
    /// Indexed text.
    #[indexed]
    pub label: String,
    /// Indexed, nullable, at most 64 bytes (unique in [`UniqueSpecimen`]).
    #[indexed]
    #[field(max_len = 64)]
    pub code: Option<String>,
    /// Indexed integer.
    #[indexed]
    pub rank: i64,
    /// Nullable float.
    pub score: Option<f64>,
    /// Indexed bool.
    #[indexed]
    pub active: bool,
    /// Nullable date.
    pub born: Option<NaiveDate>,
    /// Nullable timestamp.
    #[indexed]
    pub seen_at: Option<DateTime<Utc>>,
    /// Nullable uuid.
    pub ref_id: Option<Uuid>,
    /// A json document.
    #[field(json)]
    pub tags: Vec<String>,
    /// Long free text: not indexed, so it may hold up to 1 MiB.
    pub body: Option<String>,
    /// PHI, nullable, indexed: cursors must not carry it.
    #[indexed]
    #[phi(mask)]
    pub owner: Option<String>,
    /// Optimistic-concurrency version.
    #[version]
    pub version: i64,
}

impl Specimen {
    /// A specimen with the given key and rank and everything else plain.
    #[must_use]
    pub fn new(id: &str, rank: i64) -> Self {
        Specimen {
            id: id.to_owned(),
            label: format!("label-{rank}"),
            code: None,
            rank,
            score: None,
            active: rank % 2 == 0,
            born: None,
            seen_at: None,
            ref_id: None,
            tags: Vec::new(),
            body: None,
            owner: None,
            version: 1,
        }
    }
}

/// An entity with an integer key and no version field.
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "notes")]
pub struct Note {
    /// Integer key.
    #[key]
    pub id: i64,
    /// Body, at most 256 bytes.
    #[field(max_len = 256)]
    pub body: String,
}

/// An entity whose key is PHI (a medical record number), for the change
/// feed's canary test: its events must name the key by a keyed token.
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "enrollments")]
pub struct Enrollment {
    /// The MRN: PHI, and the key.
    #[key]
    #[phi(hash)]
    pub mrn: String,
    /// PHI.
    #[phi(mask)]
    pub name: String,
    /// Not PHI.
    pub status: String,
}

/// [`Specimen`] with `code` unique: for the cases and the model test that
/// need a store-enforced unique value (stores that cannot enforce one refuse
/// to open it, with a precise `Unsupported`).
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "unique_specimens")]
pub struct UniqueSpecimen {
    /// Text key.
    #[key]
    pub id: String,
    /// Indexed text.
    #[indexed]
    pub label: String,
    /// Unique, nullable.
    #[indexed(unique)]
    #[field(max_len = 64)]
    pub code: Option<String>,
    /// Indexed integer.
    #[indexed]
    pub rank: i64,
    /// Nullable float.
    pub score: Option<f64>,
    /// Indexed bool.
    #[indexed]
    pub active: bool,
    /// Nullable date.
    pub born: Option<NaiveDate>,
    /// Nullable timestamp.
    #[indexed]
    pub seen_at: Option<DateTime<Utc>>,
    /// Nullable uuid.
    pub ref_id: Option<Uuid>,
    /// A json document.
    #[field(json)]
    pub tags: Vec<String>,
    /// Long free text.
    pub body: Option<String>,
    /// PHI, nullable, indexed.
    #[indexed]
    #[phi(mask)]
    pub owner: Option<String>,
    /// Optimistic-concurrency version.
    #[version]
    pub version: i64,
}

impl From<Specimen> for UniqueSpecimen {
    fn from(s: Specimen) -> Self {
        UniqueSpecimen {
            id: s.id,
            label: s.label,
            code: s.code,
            rank: s.rank,
            score: s.score,
            active: s.active,
            born: s.born,
            seen_at: s.seen_at,
            ref_id: s.ref_id,
            tags: s.tags,
            body: s.body,
            owner: s.owner,
            version: s.version,
        }
    }
}

impl UniqueSpecimen {
    /// A unique specimen with the given key, rank and code.
    #[must_use]
    pub fn new(id: &str, rank: i64, code: Option<&str>) -> Self {
        let mut s = Specimen::new(id, rank);
        s.code = code.map(str::to_owned);
        s.into()
    }
}

/// A read view of the `specimens` table: the same table as [`Specimen`],
/// fewer fields (two entity types on one table keep their own statements).
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "specimens")]
pub struct SpecimenLabel {
    /// Text key.
    #[key]
    pub id: String,
    /// Indexed text.
    #[indexed]
    pub label: String,
    /// Indexed integer.
    #[indexed]
    pub rank: i64,
}

/// Two entity types on one table, on `backend` (a store whose statements
/// are per entity: SQLite, PostgreSQL, ScyllaDB): each reads its own
/// fields, whichever was opened first.
///
/// # Errors
/// What went wrong, as text.
pub async fn two_entity_types_share_a_table(
    backend: std::sync::Arc<dyn dl_repositories::Backend>,
) -> Result<(), String> {
    use dl_repositories::{Repo, Repository as _};
    let full = Repo::<Specimen>::open(std::sync::Arc::clone(&backend))
        .await
        .map_err(|e| format!("open Specimen: {e}"))?;
    let s = Specimen::new("shared-1", 5);
    full.insert(&s).await.map_err(|e| format!("insert: {e}"))?;
    let view = Repo::<SpecimenLabel>::open(backend)
        .await
        .map_err(|e| format!("open SpecimenLabel: {e}"))?;
    let got = view
        .get(&"shared-1".to_owned())
        .await
        .map_err(|e| format!("view get: {e}"))?
        .ok_or("view: absent")?;
    if got.label != s.label || got.rank != 5 {
        return Err("the view read other values".into());
    }
    let again = full
        .get(&"shared-1".to_owned())
        .await
        .map_err(|e| format!("full get after the view was opened: {e}"))?
        .ok_or("full: absent")?;
    if again != s {
        return Err("the full type read other values after the view was opened".into());
    }
    Ok(())
}

/// A patient's chart, opened by the sagas' tests in MongoDB.
#[derive(Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "charts")]
pub struct Chart {
    /// Derived from the saga (the same on every attempt).
    #[key]
    pub id: Uuid,
    /// Whose chart.
    #[indexed]
    pub patient_id: Uuid,
    /// The first entry (PHI).
    #[phi(drop)]
    #[field(max_len = 4096)]
    pub summary: String,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
}
