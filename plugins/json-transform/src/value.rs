//! A JSON value that keeps the order of object members, so a body comes out
//! with its untouched fields where the client (or upstream) put them.
//!
//! Parsing and writing are serde_json's; only the tree is ours. Numbers keep
//! their value: integers within 64 bits exactly, others as `f64` (so `1.50`
//! is written `1.5`, and an integer beyond 64 bits loses digits).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A JSON value; objects are member lists in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number that fits `u64`.
    Unsigned(u64),
    /// A negative number that fits `i64`.
    Signed(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, members in order (a repeated name is kept as it came).
    Object(Vec<(String, Value)>),
}

impl Value {
    /// Parses a whole document (trailing whitespace allowed, nothing else).
    pub fn parse(bytes: &[u8]) -> Result<Value, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// The compact JSON text.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a JSON tree of our own always serialises")
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Unsigned(n) => s.serialize_u64(*n),
            Value::Signed(n) => s.serialize_i64(*n),
            Value::Float(n) => s.serialize_f64(*n),
            Value::String(v) => s.serialize_str(v),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Unsigned(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(if v >= 0 {
            Value::Unsigned(v as u64)
        } else {
            Value::Signed(v)
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            members.push((k, v));
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_round_trips_with_its_member_order() {
        let text = r#"{"z":1,"a":[true,null,-2,1.5,"é\n"],"m":{"y":{},"b":[]}}"#;
        let v = Value::parse(text.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(v.to_bytes()).unwrap(), text);
        let pretty = "{\n  \"b\": 18446744073709551615,\n  \"a\": -9223372036854775808\n}\n";
        assert_eq!(
            Value::parse(pretty.as_bytes()).unwrap().to_bytes(),
            br#"{"b":18446744073709551615,"a":-9223372036854775808}"#
        );
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in ["", "{", "{\"a\":}", "[1,]", "{} x", "nul", "\"\\x\""] {
            assert!(Value::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
