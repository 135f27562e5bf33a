//! The [`Entity`] trait and the codec between an entity and its [`Record`].

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::schema::EntitySchema;
use crate::value::{Record, Value};

/// A type that a repository stores: a serde struct with a static schema.
///
/// Implement it with `#[derive(Entity)]`, which also checks the schema at
/// compile time and writes a `Debug` that never prints PHI fields.
pub trait Entity: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The key's Rust type (`String`, an integer or `Uuid`).
    type Key: KeyValue + Clone + Send + Sync + 'static;

    /// The static schema.
    fn schema() -> &'static EntitySchema;

    /// This entity's key.
    fn key(&self) -> Self::Key;
}

/// A Rust type that can be an entity key.
pub trait KeyValue {
    /// The key as a store-neutral value.
    fn to_value(&self) -> Value;
}

impl KeyValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl KeyValue for uuid::Uuid {
    fn to_value(&self) -> Value {
        Value::Uuid(*self)
    }
}
macro_rules! key_int {
    ($($t:ty),*) => {$(
        impl KeyValue for $t {
            fn to_value(&self) -> Value { Value::Int(i64::from(*self)) }
        }
    )*};
}
key_int!(i64, i32, i16, u32, u16, u8);

/// Why an entity could not be encoded to, or decoded from, a record.
///
/// Never carries a field's value, only its name and the kinds involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    /// The field at fault, when one is.
    pub field: Option<&'static str>,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(f, "field `{field}`: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for CodecError {}

fn codec_err(field: Option<&'static str>, reason: impl Into<String>) -> CodecError {
    CodecError {
        field,
        reason: reason.into(),
    }
}

/// Encodes an entity into its record: one value per schema field, in order,
/// each of the field's type (timestamps truncated to milliseconds).
///
/// # Errors
/// When serde's output does not match the schema: a float that is NaN or
/// infinite (serde turns it into null), a null in a non-nullable field, an
/// integer beyond `i64`, or a serialized field the schema does not know.
pub fn encode<T: Entity>(entity: &T) -> Result<Record, CodecError> {
    let schema = T::schema();
    let json = serde_json::to_value(entity)
        .map_err(|e| codec_err(None, format!("serialization failed: {}", e.classify_name())))?;
    let serde_json::Value::Object(mut map) = json else {
        return Err(codec_err(None, "the entity did not serialize to a map"));
    };
    let mut values = Vec::with_capacity(schema.fields.len());
    for field in schema.fields {
        let raw = map.remove(field.name).unwrap_or(serde_json::Value::Null);
        let found = json_kind(&raw);
        let value = Value::from_json(field.ty, raw).ok_or_else(|| {
            codec_err(
                Some(field.name),
                format!("expected {}, serde produced {found}", field.ty),
            )
        })?;
        if value.is_null() && !field.nullable {
            return Err(codec_err(
                Some(field.name),
                format!(
                    "null in a non-nullable {} field (a float that is NaN or infinite serializes as null)",
                    field.ty
                ),
            ));
        }
        values.push(value);
    }
    if let Some(extra) = map.keys().next() {
        return Err(codec_err(
            None,
            format!(
                "serde produced a field `{}` that the schema of {} does not have",
                crate::truncate_name(extra),
                schema.rust_name
            ),
        ));
    }
    Ok(Record(values))
}

/// Decodes a record read from a store into the entity.
///
/// # Errors
/// When the record does not fit the type (a store holding rows written by
/// another version of the schema, say).
pub fn decode<T: Entity>(record: &Record) -> Result<T, CodecError> {
    let schema = T::schema();
    if record.0.len() != schema.fields.len() {
        return Err(codec_err(
            None,
            format!(
                "record has {} values, schema of {} has {} fields",
                record.0.len(),
                schema.rust_name,
                schema.fields.len()
            ),
        ));
    }
    let mut de = crate::record_de::RecordDe {
        schema,
        record,
        at: None,
    };
    T::deserialize(&mut de).map_err(|_| {
        codec_err(
            de.at,
            format!("stored data does not fit {}", schema.rust_name),
        )
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "map",
    }
}

/// serde_json's error messages can quote the offending input, which may be
/// PHI; we only say which class of error it was.
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "a value of the wrong type or form",
            serde_json::error::Category::Eof => "unexpected end of input",
        }
    }
}
