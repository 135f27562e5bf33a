//! The static schema an [`Entity`](crate::Entity) describes itself with.
//!
//! Everything here is `'static` and `const`-constructible: `#[derive(Entity)]`
//! emits one [`EntitySchema`] per type into a `static`, and every backend,
//! validator and redactor reads the same description.

use std::fmt;

/// A store-neutral field type. Each backend maps it to its native type.
///
/// Deliberately exhaustive, like [`Value`](crate::Value): adding a type must
/// break every backend's build until it handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// UTF-8 text (`String`, or an enum that serializes as a string with
    /// `#[field(text)]`). Compared and sorted by byte order in every store.
    Text,
    /// A signed 64-bit integer (`i64`, `i32`, `i16`, `u32`, `u16`, `u8`).
    Int,
    /// A 64-bit float (`f64`, `f32`). NaN and infinities are rejected.
    Float,
    /// A boolean.
    Bool,
    /// A calendar date without time zone (`chrono::NaiveDate`).
    Date,
    /// An instant in UTC (`chrono::DateTime<Utc>`). Stored with millisecond
    /// precision, the finest every store keeps: finer parts are truncated.
    Timestamp,
    /// A UUID (`uuid::Uuid`).
    Uuid,
    /// Any serde value stored as a JSON document (`serde_json::Value`, or any
    /// type with `#[field(json)]`). Cannot be filtered on except `is_null`.
    Json,
}

impl FieldType {
    /// The lower-case name used in error messages (`"text"`, `"int"`, ...).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::Date => "date",
            FieldType::Timestamp => "timestamp",
            FieldType::Uuid => "uuid",
            FieldType::Json => "json",
        }
    }

    /// Whether values of this type have an order that filters (`lt`, `gt`,
    /// ...) and sorting can use.
    #[must_use]
    pub const fn is_ordered(self) -> bool {
        !matches!(self, FieldType::Json | FieldType::Bool)
    }

    /// Whether this type can be an entity key.
    #[must_use]
    pub const fn can_be_key(self) -> bool {
        matches!(self, FieldType::Text | FieldType::Int | FieldType::Uuid)
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a PHI field is rewritten before its value leaves the primary stores
/// (analytics, logs, cache keys, traces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Redaction {
    /// The field is removed.
    Drop,
    /// The value is replaced by a keyed HMAC token: equal values give equal
    /// tokens (joins still work) and the value cannot be recovered.
    Hash,
    /// The value is masked, keeping only its shape (e.g. the last 4 characters).
    Mask,
    /// The value is coarsened (a date to its year, a number to a band).
    Generalize,
}

impl Redaction {
    /// The rule's name as written in `#[phi(...)]`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Redaction::Drop => "drop",
            Redaction::Hash => "hash",
            Redaction::Mask => "mask",
            Redaction::Generalize => "generalize",
        }
    }
}

/// The sensitivity class of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Sensitivity {
    /// Not sensitive: may appear in logs and analytics.
    #[default]
    Public,
    /// Protected health information: its value is never formatted into
    /// logs, spans, errors or cache keys, and is rewritten by the rule
    /// before it leaves the primary stores.
    Phi(Redaction),
}

impl Sensitivity {
    /// Whether this is PHI.
    #[must_use]
    pub const fn is_phi(self) -> bool {
        matches!(self, Sensitivity::Phi(_))
    }
}

/// One field of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDef {
    /// The field's name, the same in Rust, serde and every store.
    pub name: &'static str,
    /// Its store-neutral type.
    pub ty: FieldType,
    /// Whether it may be null (`Option<_>` in Rust).
    pub nullable: bool,
    /// Whether the stores keep a secondary index on it (`#[indexed]`).
    /// Redis can filter only on indexed fields.
    pub indexed: bool,
    /// Whether values must be unique across entities (`#[indexed(unique)]`).
    pub unique: bool,
    /// Sensitivity class (`#[phi(rule)]`).
    pub sensitivity: Sensitivity,
    /// Maximum length in bytes for text and json values (`#[field(max_len = N)]`);
    /// `None` means [`DEFAULT_MAX_VALUE_BYTES`].
    pub max_len: Option<u32>,
}

impl FieldDef {
    /// The effective maximum size of a text or json value, in bytes: the
    /// field's `max_len`, at most [`DEFAULT_MAX_VALUE_BYTES`], and at most
    /// [`MAX_INDEXED_TEXT_BYTES`] for an indexed field.
    #[must_use]
    pub fn max_bytes(&self) -> usize {
        let limit = self
            .max_len
            .map_or(DEFAULT_MAX_VALUE_BYTES, |n| n as usize)
            .min(DEFAULT_MAX_VALUE_BYTES);
        if self.indexed {
            limit.min(MAX_INDEXED_TEXT_BYTES)
        } else {
            limit
        }
    }
}

/// The largest text or json value any field accepts, in bytes (1 MiB).
///
/// Every store can hold more, but a value this size in a clinical record is a
/// bug or an attack; a field that needs more should hold a reference (see
/// `MediaAsset`).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The largest value of an indexed text field, in bytes (1 KiB).
///
/// Every store limits an index entry (PostgreSQL's btree about 2.7 KB,
/// MongoDB's and Scylla's index keys likewise); one portable limit, checked
/// before any I/O, keeps a long value from failing in one store and passing
/// in another.
pub const MAX_INDEXED_TEXT_BYTES: usize = 1024;

/// The static description of an entity type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntitySchema {
    /// The store name: table, collection, key prefix or CQL table
    /// (`#[entity(name = "...")]`, default the snake-case type name).
    /// Always matches `[a-z][a-z0-9_]*`, at most 48 bytes.
    pub name: &'static str,
    /// The Rust type name, for messages.
    pub rust_name: &'static str,
    /// All fields, in declaration order.
    pub fields: &'static [FieldDef],
    /// Index into `fields` of the key field.
    pub key: usize,
    /// Index into `fields` of the optimistic-concurrency version field, if any.
    pub version: Option<usize>,
}

impl EntitySchema {
    /// The key field.
    #[must_use]
    pub fn key_field(&self) -> &'static FieldDef {
        &self.fields[self.key]
    }

    /// The version field, if the entity has one.
    #[must_use]
    pub fn version_field(&self) -> Option<&'static FieldDef> {
        self.version.map(|i| &self.fields[i])
    }

    /// The position of a field by name.
    #[must_use]
    pub fn position(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// A field by name.
    #[must_use]
    pub fn field(&self, name: &str) -> Option<&'static FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Whether any field is PHI.
    #[must_use]
    pub fn has_phi(&self) -> bool {
        self.fields.iter().any(|f| f.sensitivity.is_phi())
    }

    /// The version of this entity's shape: 16 hex digits of a stable hash
    /// (FNV-1a) of its store name and, per field in order, the name, type,
    /// nullability and sensitivity. Change events carry it, so a consumer
    /// can tell records of different shapes apart. The same in every build
    /// and process; it changes when a field is added, removed, renamed,
    /// retyped or reclassified.
    #[must_use]
    pub fn shape_version(&self) -> String {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0100_0000_01b3;
        let mut h = OFFSET;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(PRIME);
            }
            // A separator, so ("ab", "c") and ("a", "bc") differ.
            h ^= 0xff;
            h = h.wrapping_mul(PRIME);
        };
        eat(self.name.as_bytes());
        for f in self.fields {
            eat(f.name.as_bytes());
            eat(f.ty.name().as_bytes());
            eat(&[u8::from(f.nullable)]);
            eat(match f.sensitivity {
                Sensitivity::Public => b"public",
                Sensitivity::Phi(r) => r.name().as_bytes(),
            });
        }
        format!("{h:016x}")
    }
}

/// Whether `name` is a valid store name or field name: `[a-z_][a-z0-9_]*`,
/// 1 to 48 bytes. Both the derive (at compile time) and the repositories
/// check it, so no identifier a backend quotes can carry anything else.
#[must_use]
pub const fn is_valid_identifier(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 48 {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let ok = c == b'_' || c.is_ascii_lowercase() || (i > 0 && c.is_ascii_digit());
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_valid_identifier("patients"));
        assert!(is_valid_identifier("_x1"));
        assert!(!is_valid_identifier(""));
        assert!(!is_valid_identifier("1x"));
        assert!(!is_valid_identifier("Patients"));
        assert!(!is_valid_identifier("x\"; DROP TABLE y; --"));
        assert!(!is_valid_identifier(&"a".repeat(49)));
    }
}
