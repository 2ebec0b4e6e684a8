//! Bounded DAG-CBOR decoding, commit blocks and the JSON data model.
//!
//! - `scan_item` and `decode` never panic, and agree: `decode` succeeds only on what the
//!   scanner accepts as exactly one item.
//! - A decoded value re-encodes canonically, and the canonical bytes decode to the same value.
//! - Its JSON form (when it has one) converts back to the same value.
//! - `Commit::decode` never panics; a decoded commit re-encodes its unsigned bytes.
#![no_main]

use ipld_core::ipld::Ipld;
use libfuzzer_sys::fuzz_target;
use rookery::atproto::cbor::{self, DecodeLimits};
use rookery::atproto::commit::Commit;
use rookery::atproto::data_model;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    let scanned = cbor::scan_item(data, &limits);
    if let Ok(value) = cbor::decode::<Ipld>(data, &limits) {
        assert_eq!(
            scanned,
            Ok(data.len()),
            "decode accepted what the scanner did not"
        );
        let canonical = cbor::encode(&value).expect("encode a decoded value");
        assert_eq!(cbor::scan_item(&canonical, &limits), Ok(canonical.len()));
        assert_eq!(
            cbor::decode::<Ipld>(&canonical, &limits).as_ref(),
            Ok(&value)
        );
        if let Ok(json) = data_model::to_json(&value) {
            if json.is_object() {
                assert_eq!(
                    data_model::from_json(&json).as_ref(),
                    Ok(&value),
                    "JSON form"
                );
            }
        }
    }
    if let Ok(commit) = Commit::decode(data) {
        assert!(commit.unsigned_bytes().is_ok());
        assert_eq!(Commit::decode(data).as_ref(), Ok(&commit));
    }
});
