//! The interop data-model vectors (`interop/data-model/`): JSON form ↔ DAG-CBOR bytes ↔ CID
//! (`data-model-fixtures.json`) and validity (`data-model-{valid,invalid}.json`), through
//! `atproto::data_model`, the canonical encoder and the bounded decoder.

use ipld_core::ipld::Ipld;
use rookery::atproto::cbor::{self, DecodeLimits};
use rookery::atproto::cid::cid_for_dag_cbor;
use rookery::atproto::data_model::{self, DataModelError};
use serde_json::Value;

use crate::common::vectors::{b64 as base64, read_json};

fn cases(rel: &str) -> Vec<Value> {
    let cases = read_json(rel).as_array().expect("a list of cases").clone();
    assert!(!cases.is_empty(), "{rel} has cases");
    cases
}

#[test]
fn fixtures_json_to_cbor_and_cid() {
    let fixtures = cases("interop/data-model/data-model-fixtures.json");
    assert_eq!(fixtures.len(), 3);
    for (i, f) in fixtures.iter().enumerate() {
        let ipld = data_model::from_json(&f["json"]).unwrap_or_else(|e| panic!("case {i}: {e}"));
        let bytes = cbor::encode(&ipld).expect("encode");
        let expected = base64(f["cbor_base64"].as_str().expect("cbor_base64"));
        assert_eq!(
            hex::encode(&bytes),
            hex::encode(&expected),
            "case {i}: bytes"
        );
        assert_eq!(
            cid_for_dag_cbor(&bytes).to_string(),
            f["cid"].as_str().expect("cid"),
            "case {i}: CID"
        );
    }
}

#[test]
fn fixtures_cbor_to_json() {
    for (i, f) in cases("interop/data-model/data-model-fixtures.json")
        .iter()
        .enumerate()
    {
        let bytes = base64(f["cbor_base64"].as_str().expect("cbor_base64"));
        // The bounded decoder (scanner + serde) reads the fixture bytes.
        let ipld: Ipld = cbor::decode(&bytes, &DecodeLimits::default())
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(
            data_model::to_json(&ipld).expect("to json"),
            f["json"],
            "case {i}"
        );
        // And the decoded value re-encodes to the same bytes (the fixtures are canonical).
        assert_eq!(cbor::encode(&ipld).expect("encode"), bytes, "case {i}");
    }
}

/// Every valid case converts, encodes, decodes with the bounded decoder and converts back to
/// the same data. None is outside rookery's bounded DAG-CBOR subset (no floats: `123.0` is
/// the integer 123 in the data model, as the case's note says).
#[test]
fn valid_cases_are_accepted() {
    for case in cases("interop/data-model/data-model-valid.json") {
        let note = case["note"].as_str().expect("note");
        let ipld = data_model::from_json(&case["json"]).unwrap_or_else(|e| panic!("{note}: {e}"));
        let bytes = cbor::encode(&ipld).expect("encode");
        let decoded: Ipld = cbor::decode(&bytes, &DecodeLimits::default())
            .unwrap_or_else(|e| panic!("{note}: {e}"));
        assert_eq!(decoded, ipld, "{note}");
        let json = data_model::to_json(&decoded).expect("to json");
        assert_eq!(data_model::from_json(&json), Ok(ipld), "{note}: round trip");
    }
}

#[test]
fn invalid_cases_are_rejected_for_their_reason() {
    let expected = |note: &str| -> &'static str {
        match note {
            "top-level not an object" => "data-model-not-an-object",
            "float" => "data-model-float",
            "record with $type null"
            | "record with $type wrong type"
            | "record with empty $type string" => "data-model-bad-type",
            "blob with string size" | "blob with missing key" => "data-model-bad-blob",
            "bytes with wrong field type" | "bytes with extra fields" => "data-model-bad-bytes",
            "link with wrong field type" | "link with bogus CID" | "link with extra fields" => {
                "data-model-bad-link"
            }
            other => panic!("new invalid case {other:?}: decide its reason"),
        }
    };
    let cases = cases("interop/data-model/data-model-invalid.json");
    assert_eq!(cases.len(), 12);
    for case in cases {
        let note = case["note"].as_str().expect("note");
        match data_model::from_json(&case["json"]) {
            Err(e) => assert_eq!(e.reason(), expected(note), "{note}: {e}"),
            Ok(v) => panic!("{note}: accepted as {v:?}"),
        }
    }
    assert_eq!(DataModelError::Float.reason(), "data-model-float");
}
