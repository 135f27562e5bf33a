//! A hashable, ordered form of a key value.

use dl_models::Value;

/// A key value as a map key. Keys are text, integers or UUIDs; their order
/// here (bytes, numbers, bytes) is the order every store sorts keys in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyTok {
    /// An integer key.
    Int(i64),
    /// A text key.
    Text(String),
    /// A UUID key.
    Uuid(uuid::Uuid),
    /// Anything else (never a valid key; kept distinct rather than panicking).
    Other(String),
}

impl KeyTok {
    /// The token of a key value.
    #[must_use]
    pub fn of(v: &Value) -> Self {
        match v {
            Value::Int(i) => KeyTok::Int(*i),
            Value::Text(s) => KeyTok::Text(s.clone()),
            Value::Uuid(u) => KeyTok::Uuid(*u),
            other => KeyTok::Other(other.to_json().to_string()),
        }
    }
}
