//! Store-neutral values and the record an entity encodes to.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use uuid::Uuid;

use crate::schema::FieldType;

/// One store-neutral value.
///
/// `Debug` never prints the content: a value may be PHI and does not know
/// which field it belongs to. It prints the kind (`Text(<redacted 12 bytes>)`).
///
/// Deliberately exhaustive: a new kind must be handled by every backend's
/// encoder, and a `_` arm there would hide it.
#[derive(Clone, PartialEq)]
pub enum Value {
    /// SQL NULL / BSON null / a missing Redis hash field.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A finite 64-bit float.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// A date.
    Date(NaiveDate),
    /// An instant, millisecond precision.
    Timestamp(DateTime<Utc>),
    /// A UUID.
    Uuid(Uuid),
    /// A JSON document.
    Json(serde_json::Value),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Text(s) => write!(f, "Text(<redacted {} bytes>)", s.len()),
            Value::Json(_) => f.write_str("Json(<redacted>)"),
            other => write!(f, "{}(<redacted>)", other.kind()),
        }
    }
}

impl Value {
    /// The kind's name, for messages: `"null"`, `"text"`, `"int"`, ...
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Date(_) => "date",
            Value::Timestamp(_) => "timestamp",
            Value::Uuid(_) => "uuid",
            Value::Json(_) => "json",
        }
    }

    /// Whether this is `Null`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Converts this value to the given field type where the conversion is
    /// lossless and unsurprising (an int to a float field, a timestamp
    /// truncated to milliseconds, RFC 3339 / ISO / hyphenated text to a
    /// timestamp / date / uuid field). Returns `None` on a mismatch.
    #[must_use]
    pub fn coerce(self, ty: FieldType) -> Option<Value> {
        match (ty, self) {
            (_, Value::Null) => Some(Value::Null),
            (FieldType::Text, v @ Value::Text(_))
            | (FieldType::Int, v @ Value::Int(_))
            | (FieldType::Bool, v @ Value::Bool(_))
            | (FieldType::Date, v @ Value::Date(_))
            | (FieldType::Uuid, v @ Value::Uuid(_))
            | (FieldType::Json, v @ Value::Json(_)) => Some(v),
            (FieldType::Float, Value::Float(x)) => x.is_finite().then_some(Value::Float(x)),
            #[allow(clippy::cast_precision_loss)]
            // documented: ints beyond 2^53 round, as in every store
            (FieldType::Float, Value::Int(i)) => Some(Value::Float(i as f64)),
            (FieldType::Timestamp, Value::Timestamp(t)) => {
                Some(Value::Timestamp(t.trunc_subsecs(3)))
            }
            (ty @ (FieldType::Timestamp | FieldType::Date | FieldType::Uuid), Value::Text(s)) => {
                Value::from_text(ty, &s)
            }
            _ => None,
        }
    }

    /// A date, timestamp or UUID field's value from its text form (what
    /// serde writes for it); `None` for text that is not one, or another
    /// type. Timestamps keep milliseconds, as [`Value::coerce`] does.
    #[must_use]
    pub fn from_text(ty: FieldType, s: &str) -> Option<Value> {
        match ty {
            FieldType::Timestamp => {
                crate::parse_timestamp(s).map(|t| Value::Timestamp(t.trunc_subsecs(3)))
            }
            FieldType::Date => crate::parse_date(s).map(Value::Date),
            FieldType::Uuid => Uuid::parse_str(s).ok().map(Value::Uuid),
            FieldType::Text
            | FieldType::Int
            | FieldType::Float
            | FieldType::Bool
            | FieldType::Json => None,
        }
    }

    /// Orders two values of the same kind (floats by total order; null
    /// before everything). Values of different kinds order by kind, which
    /// never happens once values are checked against a schema.
    #[must_use]
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Less,
            (_, Value::Null) => Ordering::Greater,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Date(a), Value::Date(b)) => a.cmp(b),
            (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            (Value::Uuid(a), Value::Uuid(b)) => a.cmp(b),
            (Value::Json(a), Value::Json(b)) => a.to_string().cmp(&b.to_string()),
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::Text(_) => 4,
            Value::Date(_) => 5,
            Value::Timestamp(_) => 6,
            Value::Uuid(_) => 7,
            Value::Json(_) => 8,
        }
    }

    /// The value's size in bytes where it matters for limits (text and json).
    #[must_use]
    pub fn payload_len(&self) -> usize {
        match self {
            Value::Text(s) => s.len(),
            Value::Json(j) => j.to_string().len(),
            _ => 0,
        }
    }

    /// The value as the JSON that serde uses for the Rust field
    /// (dates as `YYYY-MM-DD`, timestamps as RFC 3339 with milliseconds).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(x) => serde_json::Number::from_f64(*x).map_or(J::Null, J::Number),
            Value::Text(s) => J::String(s.clone()),
            Value::Date(d) => J::String(crate::date_text(d).as_str().to_owned()),
            Value::Timestamp(t) => J::String(crate::timestamp_text(t).as_str().to_owned()),
            Value::Uuid(u) => J::String(u.hyphenated().to_string()),
            Value::Json(j) => j.clone(),
        }
    }

    /// Reads the JSON serde produced for a field of type `ty`.
    /// Returns `None` when the JSON is not of that type.
    #[must_use]
    pub fn from_json(ty: FieldType, json: serde_json::Value) -> Option<Value> {
        use serde_json::Value as J;
        match (ty, json) {
            (_, J::Null) => Some(Value::Null),
            (FieldType::Json, j) => Some(Value::Json(j)),
            (FieldType::Text, J::String(s)) => Some(Value::Text(s)),
            (FieldType::Int, J::Number(n)) => n.as_i64().map(Value::Int),
            (FieldType::Float, J::Number(n)) => n.as_f64().map(Value::Float),
            (FieldType::Bool, J::Bool(b)) => Some(Value::Bool(b)),
            (FieldType::Date | FieldType::Timestamp | FieldType::Uuid, J::String(s)) => {
                Value::Text(s).coerce(ty)
            }
            _ => None,
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::Int(i64::from(v)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::Float(f64::from(v))
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<NaiveDate> for Value {
    fn from(v: NaiveDate) -> Self {
        Value::Date(v)
    }
}
impl From<DateTime<Utc>> for Value {
    fn from(v: DateTime<Utc>) -> Self {
        Value::Timestamp(v)
    }
}
impl From<Uuid> for Value {
    fn from(v: Uuid) -> Self {
        Value::Uuid(v)
    }
}
impl From<&Uuid> for Value {
    fn from(v: &Uuid) -> Self {
        Value::Uuid(*v)
    }
}
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        Value::Json(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// An entity's values in schema field order: what backends read and write.
#[derive(Clone, PartialEq, Debug)]
pub struct Record(pub Vec<Value>);

impl Record {
    /// The value at a field position.
    #[must_use]
    pub fn get(&self, i: usize) -> &Value {
        &self.0[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_content() {
        let v = Value::Text("Jane Testperson".into());
        let s = format!("{v:?}");
        assert!(!s.contains("Jane"), "{s}");
        let d = Value::Date(NaiveDate::from_ymd_opt(1980, 1, 2).unwrap());
        assert!(!format!("{d:?}").contains("1980"));
    }

    #[test]
    fn coercions() {
        assert_eq!(
            Value::Int(2).coerce(FieldType::Float),
            Some(Value::Float(2.0))
        );
        assert_eq!(Value::Text("x".into()).coerce(FieldType::Int), None);
        assert_eq!(Value::Float(f64::NAN).coerce(FieldType::Float), None);
        assert!(matches!(
            Value::Text("2026-01-02".into()).coerce(FieldType::Date),
            Some(Value::Date(_))
        ));
        assert_eq!(
            Value::Text("2026-13-02".into()).coerce(FieldType::Date),
            None
        );
    }

    #[test]
    fn timestamps_round_trip_at_millis() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let v = Value::Timestamp(t).coerce(FieldType::Timestamp).unwrap();
        let j = v.to_json();
        assert_eq!(j, serde_json::json!("2026-01-02T03:04:05.123Z"));
        assert_eq!(Value::from_json(FieldType::Timestamp, j), Some(v));
    }
}
