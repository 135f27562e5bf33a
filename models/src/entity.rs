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
    let (fields, unknown) = entity
        .serialize(crate::record_ser::RecordSer { schema })
        .map_err(|e| match e {
            crate::record_ser::SerError::Field(field, ty, found) => codec_err(
                Some(field),
                format!("expected {ty}, serde produced {found}"),
            ),
            crate::record_ser::SerError::NotAStruct => {
                codec_err(None, "the entity did not serialize to a map")
            }
            crate::record_ser::SerError::Kind(_) | crate::record_ser::SerError::Custom => {
                codec_err(None, "serialization failed")
            }
        })?;
    let mut values = Vec::with_capacity(schema.fields.len());
    for (field, value) in schema.fields.iter().zip(fields) {
        let value = value.unwrap_or(Value::Null);
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
    if let Some(name) = unknown {
        return Err(codec_err(
            None,
            format!(
                "serde produced a field `{name}` that the schema of {} does not have",
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
