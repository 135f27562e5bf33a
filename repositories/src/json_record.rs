//! The JSON form of a record (the entity's serde form: what the Redis
//! backend stores, and what `Read::Json` carries), written and read in one
//! pass. Store-neutral: the seam's `Read::into_record` uses it, and no
//! store module is needed to read it.
//!
//! A record is stored as a JSON object of field name → value, with the
//! rules of [`Value::to_json`] (dates `YYYY-MM-DD`, timestamps RFC 3339 in
//! milliseconds, UUIDs hyphenated, a non-finite float as `null`). Reading
//! goes straight from the text to a [`Record`] through serde, without a
//! `serde_json::Value` map in between: missing fields are null, unknown
//! ones are skipped, a field of the wrong JSON type is an error that names
//! the field and never the value.

use std::cell::Cell;
use std::fmt;

use dl_models::{EntitySchema, FieldType, Record, Value};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap as _, Serializer};

/// Why a stored text did not read as a record (never holding a value).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// Not JSON, or not a JSON object.
    NotAnObject,
    /// The field at this index holds JSON of another type.
    Field(usize),
}

/// The record as JSON text.
pub(crate) fn encode(schema: &EntitySchema, record: &Record) -> String {
    let mut out = Vec::with_capacity(64 + 32 * schema.fields.len());
    let mut ser = serde_json::Serializer::new(&mut out);
    // Writing into a Vec cannot fail, and every value serializes.
    let written = (|| {
        let mut map = ser.serialize_map(Some(schema.fields.len()))?;
        for (f, v) in schema.fields.iter().zip(&record.0) {
            map.serialize_entry(f.name, &Json(v))?;
        }
        map.end()
    })();
    debug_assert!(written.is_ok());
    String::from_utf8(out).unwrap_or_default()
}

/// One value as JSON text, in the form [`encode`] writes it.
pub(crate) fn value_text(v: &Value) -> String {
    serde_json::to_string(&Json(v)).unwrap_or_else(|_| "null".to_owned())
}

/// One value in its stored JSON form.
struct Json<'a>(&'a Value);

impl serde::Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(x) if x.is_finite() => s.serialize_f64(*x),
            Value::Float(_) => s.serialize_unit(),
            Value::Text(t) => s.serialize_str(t),
            Value::Date(d) => s.serialize_str(&dl_models::date_text(d)),
            Value::Timestamp(t) => s.serialize_str(&dl_models::timestamp_text(t)),
            Value::Uuid(u) => s.serialize_str(
                u.hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            ),
            Value::Json(j) => j.serialize(s),
        }
    }
}

/// Reads a stored text as a record of `schema`.
pub(crate) fn decode(schema: &EntitySchema, text: &str) -> Result<Record, Unreadable> {
    let bad_field = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let read = RecordSeed {
        schema,
        bad_field: &bad_field,
    }
    .deserialize(&mut de)
    .and_then(|r| de.end().map(|()| r));
    read.map_err(|e| match bad_field.get() {
        // A value of the wrong type; a syntax error inside a value is
        // still broken JSON.
        Some(i) if e.is_data() => Unreadable::Field(i),
        _ => Unreadable::NotAnObject,
    })
}

struct RecordSeed<'a> {
    schema: &'a EntitySchema,
    bad_field: &'a Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Record;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Record, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let mut values = vec![Value::Null; self.schema.fields.len()];
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.schema.fields.iter().position(|f| f.name == name) {
                Some(i) => {
                    self.bad_field.set(Some(i));
                    values[i] = map.next_value_seed(FieldSeed(self.schema.fields[i].ty))?;
                    self.bad_field.set(None);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Record(values))
    }
}

/// One field's value, read as its type reads JSON ([`Value::from_json`]).
struct FieldSeed(FieldType);

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0 == FieldType::Json {
            let j = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
            return Ok(if j.is_null() {
                Value::Null
            } else {
                Value::Json(j)
            });
        }
        d.deserialize_any(self)
    }
}

/// A type mismatch, without the value (the default serde message quotes it).
fn wrong<E: de::Error>() -> E {
    E::custom("stored field of another type")
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        match self.0 {
            FieldType::Bool => Ok(Value::Bool(b)),
            _ => Err(wrong()),
        }
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        match self.0 {
            FieldType::Int => Ok(Value::Int(i)),
            #[allow(clippy::cast_precision_loss)] // as serde_json's as_f64
            FieldType::Float => Ok(Value::Float(i as f64)),
            _ => Err(wrong()),
        }
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        match self.0 {
            FieldType::Int => i64::try_from(u).map(Value::Int).map_err(|_| wrong()),
            #[allow(clippy::cast_precision_loss)] // as serde_json's as_f64
            FieldType::Float => Ok(Value::Float(u as f64)),
            _ => Err(wrong()),
        }
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Value, E> {
        match self.0 {
            FieldType::Float => Ok(Value::Float(x)),
            _ => Err(wrong()),
        }
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        match self.0 {
            FieldType::Text => Ok(Value::Text(s.to_owned())),
            FieldType::Date | FieldType::Timestamp | FieldType::Uuid => {
                Value::from_text(self.0, s).ok_or_else(wrong)
            }
            _ => Err(wrong()),
        }
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        match self.0 {
            FieldType::Text => Ok(Value::Text(s)),
            _ => self.visit_str(&s),
        }
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(wrong())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(wrong())
    }
}

/// A record from its JSON form, as `store` answered it to `op`.
///
/// # Errors
/// `Backend`, naming the field and never the value.
pub(crate) fn decode_record(
    store: crate::error::Store,
    schema: &'static EntitySchema,
    op: crate::error::Operation,
    d: &str,
) -> crate::error::Result<Record> {
    decode(schema, d).map_err(|why| crate::error::Error::Backend {
        store,
        operation: op,
        message: match why {
            Unreadable::NotAnObject => "a stored record is not a JSON object".into(),
            Unreadable::Field(i) => {
                let f = &schema.fields[i];
                format!("stored field `{}` is not {}", f.name, f.ty)
            }
        },
        retryable: false,
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dl_models::{FieldDef, Sensitivity};

    const fn field(name: &'static str, ty: FieldType) -> FieldDef {
        FieldDef {
            name,
            ty,
            nullable: true,
            indexed: false,
            unique: false,
            sensitivity: Sensitivity::Public,
            max_len: None,
        }
    }

    static FIELDS: [FieldDef; 8] = [
        field("id", FieldType::Int),
        field("name", FieldType::Text),
        field("score", FieldType::Float),
        field("ok", FieldType::Bool),
        field("born", FieldType::Date),
        field("at", FieldType::Timestamp),
        field("uid", FieldType::Uuid),
        field("extra", FieldType::Json),
    ];
    static SCHEMA: EntitySchema = EntitySchema {
        name: "codec_things",
        rust_name: "CodecThing",
        fields: &FIELDS,
        key: 0,
        version: None,
    };

    fn full() -> Record {
        Record(vec![
            Value::Int(i64::MIN),
            Value::Text("fake \"quoted\" \u{e9}".into()),
            Value::Float(0.1),
            Value::Bool(true),
            Value::Text("2020-02-29".into())
                .coerce(FieldType::Date)
                .unwrap(),
            Value::Text("2026-11-21T10:00:00.123Z".into())
                .coerce(FieldType::Timestamp)
                .unwrap(),
            Value::Text("00000000-0000-4000-8000-000000000001".into())
                .coerce(FieldType::Uuid)
                .unwrap(),
            Value::Json(serde_json::json!({"a": [1, 2.5, null]})),
        ])
    }

    #[test]
    fn round_trips_and_agrees_with_to_json() {
        let r = full();
        let text = encode(&SCHEMA, &r);
        assert_eq!(decode(&SCHEMA, &text), Ok(r.clone()));
        // The same JSON as the value-by-value rules of `Value::to_json`.
        let via_values: serde_json::Map<String, serde_json::Value> = FIELDS
            .iter()
            .zip(&r.0)
            .map(|(f, v)| (f.name.to_owned(), v.to_json()))
            .collect();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, serde_json::Value::Object(via_values));
    }

    #[test]
    fn nulls_missing_and_unknown_fields() {
        let r = decode(&SCHEMA, r#"{"id": 7, "extra": null, "other": {"x": [1]}}"#).unwrap();
        assert_eq!(r.0[0], Value::Int(7));
        assert!(r.0[1..].iter().all(Value::is_null));
        let mut with_nan = full();
        with_nan.0[2] = Value::Float(f64::NAN);
        let back = decode(&SCHEMA, &encode(&SCHEMA, &with_nan)).unwrap();
        assert_eq!(back.0[2], Value::Null);
        // An integer reads as a float, as serde_json's as_f64 does.
        assert_eq!(
            decode(&SCHEMA, r#"{"score": 3}"#).unwrap().0[2],
            Value::Float(3.0)
        );
    }

    #[test]
    fn wrong_types_name_the_field_not_the_value() {
        for (text, field) in [
            (r#"{"id": "fake-secret"}"#, 0),
            (r#"{"id": 1.5}"#, 0),
            (r#"{"id": 18446744073709551615}"#, 0),
            (r#"{"name": 5}"#, 1),
            (r#"{"ok": "yes"}"#, 3),
            (r#"{"born": "not a date"}"#, 4),
            (r#"{"at": "2026-13-01"}"#, 5),
            (r#"{"uid": "fake-secret"}"#, 6),
            (r#"{"name": ["a"]}"#, 1),
            (r#"{"name": {"a": 1}}"#, 1),
        ] {
            assert_eq!(
                decode(&SCHEMA, text),
                Err(Unreadable::Field(field)),
                "{text}"
            );
        }
        for text in [
            "",
            "[]",
            "null",
            "{",
            r#"{"id": 1} trailing"#,
            "fake-secret",
        ] {
            assert_eq!(
                decode(&SCHEMA, text),
                Err(Unreadable::NotAnObject),
                "{text}"
            );
        }
    }
}
