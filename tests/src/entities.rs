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
