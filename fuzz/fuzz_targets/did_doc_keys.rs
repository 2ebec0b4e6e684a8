//! DID documents, PDS endpoints, keys and syntax validators.
//!
//! - `parse_did_document` never panics, with the document's own `id` or a fixed DID.
//! - A PDS endpoint that parses re-parses from its own `url()` to itself.
//! - A key that parses from a `did:key` or Multikey string writes back the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rookery::atproto::did_doc::{PdsEndpoint, parse_did_document};
use rookery::atproto::keys::PublicKey;
use rookery::atproto::syntax;

fuzz_target!(|data: &[u8]| {
    let id = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned));
    if let Ok(identity) = parse_did_document(
        id.as_deref().unwrap_or("did:plc:ewvi7nxzyoun6zhxrhs64oiz"),
        data,
    ) {
        if let Some(pds) = identity.pds {
            assert_eq!(PdsEndpoint::parse(&pds.url()).as_ref(), Ok(&pds));
        }
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ep) = PdsEndpoint::parse(s) {
        assert_eq!(PdsEndpoint::parse(&ep.url()).as_ref(), Ok(&ep), "re-parse");
        assert!(!ep.hostname().is_empty());
    }
    if let Ok(key) = PublicKey::from_did_key(s) {
        assert_eq!(
            PublicKey::from_did_key(&key.to_did_key()).as_ref(),
            Ok(&key)
        );
    }
    if let Ok(key) = PublicKey::from_multikey(s) {
        assert_eq!(
            PublicKey::from_multikey(&key.to_multikey()).as_ref(),
            Ok(&key)
        );
    }
    let _ = syntax::validate_did(s);
    let _ = syntax::parse_handle(s);
    let _ = syntax::validate_nsid(s);
    let _ = syntax::validate_repo_path(s);
    let _ = syntax::parse_datetime_micros(s);
    let _ = syntax::parse_cid_string(s);
});
