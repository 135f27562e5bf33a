//! The entity model of data-layer.
//!
//! An [`Entity`] is a serde struct with a static [`EntitySchema`]: its store
//! name, key, fields with store-neutral [`FieldType`]s, nullability,
//! indexes, an optional version field for optimistic concurrency, and a
//! [`Sensitivity`] per field. `#[derive(Entity)]` writes it:
//!
//! ```
//! use dl_models::{Entity, FieldType, Redaction, Sensitivity};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize, Entity)]
//! #[entity(name = "lab_results")]
//! struct LabResult {
//!     #[key]
//!     id: uuid::Uuid,
//!     #[indexed]
//!     patient_id: uuid::Uuid,
//!     #[field(max_len = 32)]
//!     code: String,
//!     #[phi(drop)]
//!     value: Option<f64>,
//!     #[version]
//!     version: i64,
//! }
//!
//! let schema = LabResult::schema();
//! assert_eq!(schema.name, "lab_results");
//! assert_eq!(schema.key_field().name, "id");
//! assert_eq!(schema.field("value").unwrap().ty, FieldType::Float);
//! assert_eq!(
//!     schema.field("value").unwrap().sensitivity,
//!     Sensitivity::Phi(Redaction::Drop)
//! );
//!
//! // Debug never prints PHI.
//! let r = LabResult {
//!     id: uuid::Uuid::nil(),
//!     patient_id: uuid::Uuid::nil(),
//!     code: "HBA1C".into(),
//!     value: Some(6.1),
//!     version: 0,
//! };
//! assert!(!format!("{r:?}").contains("6.1"));
//! ```
//!
//! Misuse is a compile error: no key, two keys, an unsupported field type,
//! PHI on the key without `#[phi(hash)]`, a serde rename the schema would
//! not see.

extern crate self as dl_models;

pub mod domain;
mod entity;
mod record_de;
mod record_ser;
pub mod schema;
pub mod time_text;
pub mod value;

pub use dl_models_derive::Entity;
pub use entity::{CodecError, Entity, KeyValue, decode, encode};
pub use schema::{
    DEFAULT_MAX_VALUE_BYTES, EntitySchema, FieldDef, FieldType, MAX_INDEXED_TEXT_BYTES, Redaction,
    Sensitivity, is_valid_identifier,
};
pub use time_text::{TimeText, date_text, parse_date, parse_timestamp, timestamp_text};
pub use value::{Record, Value};

#[doc(hidden)]
pub use inventory;

/// An entity type compiled into this program, registered by
/// `#[derive(Entity)]` (so settings that name entities, such as
/// `cdc.entities`, can be checked against the entities that exist).
#[derive(Debug, Clone, Copy)]
pub struct Registered {
    /// The entity's schema.
    pub schema: fn() -> &'static EntitySchema,
}

inventory::collect!(Registered);

/// Every entity schema compiled into this program (from
/// `#[derive(Entity)]`), in no particular order; a store name may appear
/// more than once (two entity types on one table).
#[must_use]
pub fn registered_schemas() -> Vec<&'static EntitySchema> {
    inventory::iter::<Registered>
        .into_iter()
        .map(|r| (r.schema)())
        .collect()
}

/// Stands in for a PHI field's value in `Debug` output.
#[derive(Clone, Copy)]
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A caller-supplied name (a field name that was not found, say) made safe
/// for an error message: at most 64 characters, control characters escaped.
#[must_use]
pub fn truncate_name(name: &str) -> String {
    let mut out: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().count() > 64 {
        out.push('…');
    }
    out
}
