//! The shared test vectors (`../shared/vectors/`, see its README): reading files, and the
//! atproto JSON form (`$link`/`$bytes`) → CBOR used by the indigo relay scenarios and the
//! firehose_commit files.

use std::collections::BTreeMap;

use ipld_core::ipld::Ipld;
use rookery::atproto::cid::parse_cid_str;
use serde_json::Value;

/// The indigo relay scenarios (`indigo/cmd/relay/testing/testdata/`), by file name.
pub const RELAY_SCENARIOS: [&str; 7] = [
    "account_lifecycle.json",
    "deactivation.json",
    "legacy.json",
    "post_lifecycle.json",
    "post_lifecycle_legacy.json",
    "rev_ordering.json",
    "seq_ordering.json",
];

pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/");

/// The bytes of a vector file, by its path under the vectors directory.
pub fn read_bytes(rel: &str) -> Vec<u8> {
    let path = format!("{VECTORS}{rel}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("test vectors missing: {path}: {e}"))
}

/// The text of a vector file.
pub fn read_text(rel: &str) -> String {
    let path = format!("{VECTORS}{rel}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("test vectors missing: {path}: {e}"))
}

pub fn read_json(rel: &str) -> Value {
    let path = format!("{VECTORS}{rel}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("vector {path}: {e}"));
    serde_json::from_str(&text).expect("vector json")
}

pub fn b64(s: &str) -> Vec<u8> {
    let trimmed = s.trim_end_matches('=');
    data_encoding::BASE64_NOPAD
        .decode(trimmed.as_bytes())
        .expect("base64")
}

/// atproto JSON data model → IPLD (`{"$link"}` → link, `{"$bytes"}` → bytes).
pub fn to_ipld(v: &Value) -> Ipld {
    match v {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(*b),
        Value::Number(n) => Ipld::Integer(i128::from(n.as_i64().expect("integer"))),
        Value::String(s) => Ipld::String(s.clone()),
        Value::Array(a) => Ipld::List(a.iter().map(to_ipld).collect()),
        Value::Object(o) => {
            if o.len() == 1 {
                if let Some(Value::String(l)) = o.get("$link") {
                    return Ipld::Link(parse_cid_str(l).expect("$link"));
                }
                if let Some(Value::String(b)) = o.get("$bytes") {
                    return Ipld::Bytes(b64(b));
                }
            }
            Ipld::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), to_ipld(v)))
                    .collect::<BTreeMap<_, _>>(),
            )
        }
    }
}

pub fn cbor(v: &Ipld) -> Vec<u8> {
    serde_ipld_dagcbor::to_vec(v).expect("encode")
}

/// Binary websocket message from a scenario's `frame: {header, body}`.
pub fn frame_bytes(frame: &Value) -> Vec<u8> {
    let mut out = cbor(&to_ipld(&frame["header"]));
    out.extend(cbor(&to_ipld(&frame["body"])));
    out
}

/// Every `frame` of every relay scenario file, with its file name.
pub fn scenario_frames() -> Vec<(String, Value)> {
    let dir = format!("{VECTORS}indigo/cmd/relay/testing/testdata");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 7, "relay scenarios present");
    let mut out = Vec::new();
    for name in names {
        let scenario = read_json(&format!("indigo/cmd/relay/testing/testdata/{name}"));
        for m in scenario["messages"].as_array().expect("messages") {
            out.push((name.clone(), m["frame"].clone()));
        }
    }
    out
}
