//! A serde `Deserializer` over a [`Record`]: an entity is built straight
//! from its values, without an intermediate `serde_json::Value` map.
//!
//! Values reach the entity's `Deserialize` as serde_json would hand them
//! (text, numbers, booleans; dates, timestamps and UUIDs as their text
//! forms; JSON fields as JSON), so any entity that decodes from the JSON
//! form decodes here the same way. Errors keep only the field's name:
//! serde's messages can quote values, which may be PHI.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};

use crate::schema::EntitySchema;
use crate::value::{Record, Value};

/// A decoding failure; the message is never kept (it may quote a value).
#[derive(Debug)]
pub(crate) struct DeError;

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the stored value does not fit the field")
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(_: T) -> Self {
        DeError
    }
}

/// The whole record, as a map of field name → value.
pub(crate) struct RecordDe<'de> {
    pub(crate) schema: &'static EntitySchema,
    pub(crate) record: &'de Record,
    /// The field being decoded when an error happened.
    pub(crate) at: Option<&'static str>,
}

struct Fields<'r, 'de> {
    de: &'r mut RecordDe<'de>,
    next: usize,
}

impl<'de> MapAccess<'de> for Fields<'_, 'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(field) = self.de.schema.fields.get(self.next) else {
            return Ok(None);
        };
        self.de.at = Some(field.name);
        seed.deserialize(field.name.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let value = self.de.record.0.get(self.next).ok_or(DeError)?;
        self.next += 1;
        let out = seed.deserialize(ValueDe(value))?;
        self.de.at = None;
        Ok(out)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.de.schema.fields.len() - self.next)
    }
}

impl<'de> Deserializer<'de> for &mut RecordDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(Fields { de: self, next: 0 })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// One value.
struct ValueDe<'de>(&'de Value);

impl<'de> Deserializer<'de> for ValueDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(x) => visitor.visit_f64(*x),
            Value::Text(s) => visitor.visit_str(s),
            Value::Date(d) => visitor.visit_str(&crate::date_text(d)),
            Value::Timestamp(t) => visitor.visit_str(&crate::timestamp_text(t)),
            Value::Uuid(u) => {
                let mut buf = uuid::Uuid::encode_buffer();
                visitor.visit_str(u.hyphenated().encode_lower(&mut buf))
            }
            Value::Json(j) => de::Deserializer::deserialize_any(j, visitor).map_err(|_| DeError),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            Value::Json(serde_json::Value::Null) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Json(j) => j
                .deserialize_newtype_struct(_name, visitor)
                .map_err(|_| DeError),
            _ => visitor.visit_newtype_struct(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Text(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Json(j) => j
                .deserialize_enum(name, variants, visitor)
                .map_err(|_| DeError),
            _ => Err(DeError),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Json(j) => j.deserialize_seq(visitor).map_err(|_| DeError),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Json(j) => j.deserialize_map(visitor).map_err(|_| DeError),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Json(j) => j
                .deserialize_struct(name, fields, visitor)
                .map_err(|_| DeError),
            _ => self.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct identifier ignored_any
    }
}
