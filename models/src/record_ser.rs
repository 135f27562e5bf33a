//! A serde `Serializer` that writes an entity straight into its
//! [`Record`], without an intermediate `serde_json::Value` map.
//!
//! It accepts what the JSON path accepted, with the same rules per field
//! type: text from strings (and unit enum variants); integers within
//! `i64`; floats from any number (NaN and infinities become null, as in
//! JSON); dates, timestamps and UUIDs from their text forms; anything for
//! `#[field(json)]` fields (through serde_json). Errors name the field and
//! the kinds involved, never a value.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible, SerializeStruct};

use crate::schema::{EntitySchema, FieldType};
use crate::value::Value;

/// Why a value did not fit.
#[derive(Debug)]
pub(crate) enum SerError {
    /// serde produced this kind where the field wants another.
    Kind(&'static str),
    /// A field's value did not fit: the field, its type, what serde made.
    Field(&'static str, FieldType, &'static str),
    /// The entity is not a struct.
    NotAStruct,
    /// The entity's own `Serialize` failed.
    Custom,
}

impl fmt::Display for SerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerError::Kind(k) => write!(f, "serde produced {k}"),
            SerError::Field(field, ty, k) => {
                write!(f, "field `{field}`: expected {ty}, serde produced {k}")
            }
            SerError::NotAStruct => f.write_str("the entity did not serialize to a map"),
            SerError::Custom => f.write_str("serialization failed"),
        }
    }
}

impl std::error::Error for SerError {}

impl ser::Error for SerError {
    fn custom<T: fmt::Display>(_: T) -> Self {
        SerError::Custom
    }
}

/// The entity's serializer: only a struct is accepted.
pub(crate) struct RecordSer {
    pub(crate) schema: &'static EntitySchema,
}

/// The fields as they come, by schema position.
pub(crate) struct StructSer {
    schema: &'static EntitySchema,
    values: Vec<Option<Value>>,
    next: usize,
    unknown: Option<String>,
}

/// What [`RecordSer`] produces: the values by position (absent fields
/// `None`), and the first field serde produced that the schema does not
/// have (its name, truncated), reported after the fields' own checks.
pub(crate) type Fields = (Vec<Option<Value>>, Option<String>);

impl SerializeStruct for StructSer {
    type Ok = Fields;
    type Error = SerError;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SerError> {
        // Fields usually come in schema order.
        let index = match self.schema.fields.get(self.next) {
            Some(f) if f.name == key => self.next,
            _ => match self.schema.fields.iter().position(|f| f.name == key) {
                Some(i) => i,
                None => {
                    self.unknown
                        .get_or_insert_with(|| crate::truncate_name(key));
                    return Ok(());
                }
            },
        };
        self.next = index + 1;
        let field = &self.schema.fields[index];
        let v = if field.ty == FieldType::Json {
            match serde_json::to_value(value).map_err(|_| SerError::Custom)? {
                serde_json::Value::Null => Value::Null,
                j => Value::Json(j),
            }
        } else {
            value.serialize(FieldSer(field.ty)).map_err(|e| match e {
                SerError::Kind(k) => SerError::Field(field.name, field.ty, k),
                other => other,
            })?
        };
        self.values[index] = Some(v);
        Ok(())
    }

    fn end(self) -> Result<Fields, SerError> {
        Ok((self.values, self.unknown))
    }
}

impl ser::Serializer for RecordSer {
    type Ok = Fields;
    type Error = SerError;
    type SerializeSeq = Impossible<Fields, SerError>;
    type SerializeTuple = Impossible<Fields, SerError>;
    type SerializeTupleStruct = Impossible<Fields, SerError>;
    type SerializeTupleVariant = Impossible<Fields, SerError>;
    type SerializeMap = Impossible<Fields, SerError>;
    type SerializeStruct = StructSer;
    type SerializeStructVariant = Impossible<Fields, SerError>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<StructSer, SerError> {
        Ok(StructSer {
            schema: self.schema,
            values: vec![None; self.schema.fields.len()],
            next: 0,
            unknown: None,
        })
    }

    fn serialize_bool(self, _: bool) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_i64(self, _: i64) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_u64(self, _: u64) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_f64(self, _: f64) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_str(self, _: &str) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_none(self) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<Fields, SerError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Fields, SerError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_i8(self, _: i8) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_i16(self, _: i16) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_i32(self, _: i32) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_u8(self, _: u8) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_u16(self, _: u16) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_u32(self, _: u32) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_f32(self, _: f32) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
    fn serialize_char(self, _: char) -> Result<Fields, SerError> {
        Err(SerError::NotAStruct)
    }
}

/// One scalar field of type `.0`.
struct FieldSer(FieldType);

impl FieldSer {
    fn int(self, i: i64) -> Result<Value, SerError> {
        match self.0 {
            FieldType::Int => Ok(Value::Int(i)),
            #[allow(clippy::cast_precision_loss, reason = "as serde_json's as_f64 does")]
            FieldType::Float => Ok(Value::Float(i as f64)),
            _ => Err(SerError::Kind("number")),
        }
    }

    fn text(self, s: &str) -> Result<Value, SerError> {
        match self.0 {
            FieldType::Text => Ok(Value::Text(s.to_owned())),
            ty @ (FieldType::Date | FieldType::Timestamp | FieldType::Uuid) => {
                Value::from_text(ty, s).ok_or(SerError::Kind("string"))
            }
            _ => Err(SerError::Kind("string")),
        }
    }
}

impl ser::Serializer for FieldSer {
    type Ok = Value;
    type Error = SerError;
    type SerializeSeq = Impossible<Value, SerError>;
    type SerializeTuple = Impossible<Value, SerError>;
    type SerializeTupleStruct = Impossible<Value, SerError>;
    type SerializeTupleVariant = Impossible<Value, SerError>;
    type SerializeMap = Impossible<Value, SerError>;
    type SerializeStruct = Impossible<Value, SerError>;
    type SerializeStructVariant = Impossible<Value, SerError>;

    fn serialize_bool(self, b: bool) -> Result<Value, SerError> {
        match self.0 {
            FieldType::Bool => Ok(Value::Bool(b)),
            _ => Err(SerError::Kind("bool")),
        }
    }
    fn serialize_i8(self, v: i8) -> Result<Value, SerError> {
        self.int(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, SerError> {
        self.int(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, SerError> {
        self.int(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, SerError> {
        self.int(v)
    }
    fn serialize_u8(self, v: u8) -> Result<Value, SerError> {
        self.int(i64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, SerError> {
        self.int(i64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, SerError> {
        self.int(i64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, SerError> {
        match (self.0, i64::try_from(v)) {
            (FieldType::Int | FieldType::Float, Ok(i)) => self.int(i),
            #[allow(clippy::cast_precision_loss, reason = "as serde_json's as_f64 does")]
            (FieldType::Float, Err(_)) => Ok(Value::Float(v as f64)),
            _ => Err(SerError::Kind("number")),
        }
    }
    fn serialize_f32(self, v: f32) -> Result<Value, SerError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, SerError> {
        match self.0 {
            // As in JSON: not a number is null.
            _ if !v.is_finite() => Ok(Value::Null),
            FieldType::Float => Ok(Value::Float(v)),
            _ => Err(SerError::Kind("number")),
        }
    }
    fn serialize_char(self, v: char) -> Result<Value, SerError> {
        self.text(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<Value, SerError> {
        self.text(v)
    }
    fn collect_str<T: ?Sized + fmt::Display>(self, v: &T) -> Result<Value, SerError> {
        self.text(&v.to_string())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Value, SerError> {
        Err(SerError::Kind("array"))
    }
    fn serialize_none(self) -> Result<Value, SerError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<Value, SerError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, SerError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, SerError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Value, SerError> {
        self.text(variant)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Value, SerError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Value, SerError> {
        Err(SerError::Kind("map"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, SerError> {
        Err(SerError::Kind("array"))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, SerError> {
        Err(SerError::Kind("array"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, SerError> {
        Err(SerError::Kind("array"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, SerError> {
        Err(SerError::Kind("map"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, SerError> {
        Err(SerError::Kind("map"))
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, SerError> {
        Err(SerError::Kind("map"))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, SerError> {
        Err(SerError::Kind("map"))
    }
}
