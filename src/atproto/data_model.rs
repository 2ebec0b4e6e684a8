//! The atproto data model's JSON form and its IPLD (DAG-CBOR) form, converted both ways.
//!
//! Why here: the relay serves and logs events as JSON (admin API, `rookery-logtool dump`)
//! and reads the interop vectors, whose data is written in this form. The JSON form is plain
//! JSON plus three conventions: `{"$link": "<cid>"}` is a CID link, `{"$bytes": "<base64>"}`
//! a byte string, and an object whose `$type` is `"blob"` a blob reference (`ref` link,
//! `mimeType` string, integer `size`). Conversion validates what the data model forbids:
//! floats (an integral JSON number such as `123.0` is the integer 123, because JSON cannot tell
//! them apart), integers outside 64-bit signed, a `$type` that is not a non-empty string,
//! malformed `$link`/`$bytes` objects (wrong value type, a bogus CID, extra keys) and blobs
//! missing a field; the top level must be an object. Nesting is capped at the bounded
//! decoder's depth ([`DecodeLimits`]), so everything [`from_json`] accepts, encoded, is
//! accepted by [`super::cbor::decode`], and [`to_json`] is its inverse.

use std::collections::BTreeMap;

use ipld_core::ipld::Ipld;
use serde_json::{Map, Number, Value};

use super::cbor::DecodeLimits;
use super::cid::parse_cid_str;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataModelError {
    #[error("data object is not an object at the top level")]
    NotAnObject,
    #[error("floats are not part of the data model")]
    Float,
    #[error("integer outside the 64-bit signed range")]
    IntegerRange,
    #[error("$type is not a non-empty string")]
    BadType,
    #[error("malformed $link object")]
    BadLink,
    #[error("malformed $bytes object")]
    BadBytes,
    #[error("malformed blob: {0}")]
    BadBlob(&'static str),
    #[error("map uses a key reserved by the JSON form")]
    ReservedKey,
    #[error("nesting deeper than the limit")]
    TooDeep,
}

impl DataModelError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DataModelError::NotAnObject => "data-model-not-an-object",
            DataModelError::Float => "data-model-float",
            DataModelError::IntegerRange => "data-model-integer-range",
            DataModelError::BadType => "data-model-bad-type",
            DataModelError::BadLink => "data-model-bad-link",
            DataModelError::BadBytes => "data-model-bad-bytes",
            DataModelError::BadBlob(_) => "data-model-bad-blob",
            DataModelError::ReservedKey => "data-model-reserved-key",
            DataModelError::TooDeep => "data-model-too-deep",
        }
    }
}

/// Deepest nesting of lists and maps, the same as the bounded CBOR decoder's.
fn max_depth() -> usize {
    DecodeLimits::default().max_depth
}

/// Converts a data object from its JSON form, validating it.
pub fn from_json(value: &Value) -> Result<Ipld, DataModelError> {
    if !value.is_object() {
        return Err(DataModelError::NotAnObject);
    }
    convert_json(value, 0)
}

fn convert_json(value: &Value, depth: usize) -> Result<Ipld, DataModelError> {
    Ok(match value {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(*b),
        Value::Number(n) => Ipld::Integer(json_integer(n)?),
        Value::String(s) => Ipld::String(s.clone()),
        Value::Array(items) => {
            if depth >= max_depth() {
                return Err(DataModelError::TooDeep);
            }
            let list = items
                .iter()
                .map(|v| convert_json(v, depth + 1))
                .collect::<Result<_, _>>()?;
            Ipld::List(list)
        }
        Value::Object(map) => {
            if depth >= max_depth() {
                return Err(DataModelError::TooDeep);
            }
            if let Some(link) = map.get("$link") {
                return match (link, map.len()) {
                    (Value::String(s), 1) => parse_cid_str(s)
                        .map(Ipld::Link)
                        .map_err(|_| DataModelError::BadLink),
                    _ => Err(DataModelError::BadLink),
                };
            }
            if let Some(bytes) = map.get("$bytes") {
                return match (bytes, map.len()) {
                    (Value::String(s), 1) => decode_base64(s).map(Ipld::Bytes),
                    _ => Err(DataModelError::BadBytes),
                };
            }
            let mut out = BTreeMap::new();
            for (key, v) in map {
                out.insert(key.clone(), convert_json(v, depth + 1)?);
            }
            check_typed(&out)?;
            Ipld::Map(out)
        }
    })
}

/// A JSON number as a data-model integer: an `i64`, or an integral float within the range in
/// which floats hold integers exactly (±2^53).
fn json_integer(n: &Number) -> Result<i128, DataModelError> {
    if let Some(i) = n.as_i64() {
        return Ok(i128::from(i));
    }
    if n.as_u64().is_some() {
        return Err(DataModelError::IntegerRange);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => Ok(f as i128),
        _ => Err(DataModelError::Float),
    }
}

/// The `$type` rules, in both directions: a non-empty string, and a blob's fields.
fn check_typed(map: &BTreeMap<String, Ipld>) -> Result<(), DataModelError> {
    match map.get("$type") {
        None => Ok(()),
        Some(Ipld::String(t)) if t == "blob" => check_blob(map),
        Some(Ipld::String(t)) if !t.is_empty() => Ok(()),
        Some(_) => Err(DataModelError::BadType),
    }
}

fn check_blob(map: &BTreeMap<String, Ipld>) -> Result<(), DataModelError> {
    if !matches!(map.get("ref"), Some(Ipld::Link(_))) {
        return Err(DataModelError::BadBlob("ref is not a link"));
    }
    if !matches!(map.get("mimeType"), Some(Ipld::String(_))) {
        return Err(DataModelError::BadBlob("mimeType is not a string"));
    }
    match map.get("size") {
        Some(Ipld::Integer(size)) if *size >= 0 => Ok(()),
        _ => Err(DataModelError::BadBlob(
            "size is not a non-negative integer",
        )),
    }
}

/// `$bytes` is standard base64; the data model writes it without padding, padding is accepted.
fn decode_base64(s: &str) -> Result<Vec<u8>, DataModelError> {
    let engine = if s.ends_with('=') {
        &data_encoding::BASE64
    } else {
        &data_encoding::BASE64_NOPAD
    };
    engine
        .decode(s.as_bytes())
        .map_err(|_| DataModelError::BadBytes)
}

/// Converts data to its JSON form, with the same validation as [`from_json`], of which it is
/// the inverse: `from_json(&to_json(v)?) == Ok(v)` for every map `v`.
pub fn to_json(value: &Ipld) -> Result<Value, DataModelError> {
    convert_ipld(value, 0)
}

fn convert_ipld(value: &Ipld, depth: usize) -> Result<Value, DataModelError> {
    Ok(match value {
        Ipld::Null => Value::Null,
        Ipld::Bool(b) => Value::Bool(*b),
        Ipld::Integer(i) => {
            let i = i64::try_from(*i).map_err(|_| DataModelError::IntegerRange)?;
            Value::Number(i.into())
        }
        Ipld::Float(_) => return Err(DataModelError::Float),
        Ipld::String(s) => Value::String(s.clone()),
        Ipld::Bytes(b) => {
            let mut m = Map::new();
            m.insert(
                "$bytes".into(),
                Value::String(data_encoding::BASE64_NOPAD.encode(b)),
            );
            Value::Object(m)
        }
        Ipld::Link(cid) => {
            let mut m = Map::new();
            m.insert("$link".into(), Value::String(cid.to_string()));
            Value::Object(m)
        }
        Ipld::List(items) => {
            if depth >= max_depth() {
                return Err(DataModelError::TooDeep);
            }
            let items = items.iter().map(|v| convert_ipld(v, depth + 1));
            Value::Array(items.collect::<Result<_, _>>()?)
        }
        Ipld::Map(map) => {
            if depth >= max_depth() {
                return Err(DataModelError::TooDeep);
            }
            // A map with one of these keys would read back as a link or bytes.
            if map.contains_key("$link") || map.contains_key("$bytes") {
                return Err(DataModelError::ReservedKey);
            }
            check_typed(map)?;
            let mut m = Map::new();
            for (k, v) in map {
                m.insert(k.clone(), convert_ipld(v, depth + 1)?);
            }
            Value::Object(m)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::cbor;
    use serde_json::json;

    #[test]
    fn integers_floats_and_depth() {
        let v = from_json(&json!({"a": 1.0, "b": -5, "c": [true, null]})).unwrap();
        assert_eq!(
            to_json(&v).unwrap(),
            json!({"a": 1, "b": -5, "c": [true, null]})
        );
        assert_eq!(from_json(&json!({"a": 1.5})), Err(DataModelError::Float));
        assert_eq!(
            from_json(&json!({"a": u64::MAX})),
            Err(DataModelError::IntegerRange)
        );
        assert_eq!(from_json(&json!([1])), Err(DataModelError::NotAnObject));
        assert_eq!(
            to_json(&Ipld::Integer(i128::from(i64::MAX) + 1)),
            Err(DataModelError::IntegerRange)
        );
        assert_eq!(to_json(&Ipld::Float(1.0)), Err(DataModelError::Float));
        // Nesting up to the decoder's depth converts and decodes; one more level does not.
        let nest = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!({ "x": v });
            }
            v
        };
        let deepest = from_json(&nest(max_depth())).unwrap();
        let bytes = cbor::encode(&deepest).unwrap();
        assert_eq!(
            cbor::decode::<Ipld>(&bytes, &DecodeLimits::default()),
            Ok(deepest)
        );
        assert_eq!(
            from_json(&nest(max_depth() + 1)),
            Err(DataModelError::TooDeep)
        );
    }

    #[test]
    fn reserved_keys_do_not_round_trip_ambiguously() {
        let map = Ipld::Map(BTreeMap::from([(
            "$link".to_string(),
            Ipld::String("x".into()),
        )]));
        assert_eq!(to_json(&map), Err(DataModelError::ReservedKey));
        let typed = |t: Ipld| Ipld::Map(BTreeMap::from([("$type".to_string(), t)]));
        assert_eq!(
            to_json(&typed(Ipld::String(String::new()))),
            Err(DataModelError::BadType)
        );
        assert!(matches!(
            to_json(&typed(Ipld::String("blob".into()))),
            Err(DataModelError::BadBlob(_))
        ));
        assert!(to_json(&typed(Ipld::String("x.y".into()))).is_ok());
        let bytes = |s: &str| from_json(&json!({ "a": { "$bytes": s } }));
        let one = Ok(Ipld::Map(BTreeMap::from([(
            "a".to_string(),
            Ipld::Bytes(vec![1]),
        )])));
        assert_eq!(bytes("AQ"), one);
        assert_eq!(bytes("AQ=="), one);
        assert_eq!(bytes("=="), Err(DataModelError::BadBytes));
        assert_eq!(bytes("A"), Err(DataModelError::BadBytes));
    }
}
