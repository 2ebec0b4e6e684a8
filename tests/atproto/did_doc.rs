//! Every DID document in the vectors parses to the expected identity. The files are listed
//! from their directories so a document without an expectation here fails the test.

use rookery::atproto::did_doc::{DidDocError, Identity, PdsScheme, parse_did_document};
use rookery::atproto::keys::{Curve, PublicKey};

use crate::common::vectors::{VECTORS, read_bytes as read};

/// The k256 key of PROTOCOL.md §6, in Multikey form (its legacy form is in two documents).
const PROTOCOL_EXAMPLE_KEY: &str = "zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF";

struct Expected {
    file: &'static str,
    did: &'static str,
    handle: Option<&'static str>,
    key: Option<(Curve, Option<&'static str>)>,
    pds: Option<(PdsScheme, &'static str)>,
}

const EXPECTED: &[Expected] = &[
    Expected {
        file: "indigo/atproto/identity/testdata/did_plc_doc.json",
        did: "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        handle: Some("atproto.com"),
        key: Some((Curve::K256, Some(PROTOCOL_EXAMPLE_KEY))),
        pds: Some((PdsScheme::Https, "bsky.social")),
    },
    Expected {
        file: "indigo/atproto/identity/testdata/did_plc_doc_legacy.json",
        did: "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        handle: Some("atproto.com"),
        key: Some((Curve::K256, Some(PROTOCOL_EXAMPLE_KEY))),
        pds: Some((PdsScheme::Https, "bsky.social")),
    },
    Expected {
        file: "indigo/atproto/identity/testdata/did_web_doc.json",
        did: "did:web:discover.bsky.social",
        handle: None,
        key: None,
        pds: None,
    },
    Expected {
        file: "indigo/testing/testdata/did_plc_z5vnbioquyhivxirw3bbljmu.didDoc.json",
        did: "did:plc:z5vnbioquyhivxirw3bbljmu",
        handle: Some("koch5149-c5.test"),
        key: Some((Curve::K256, None)),
        pds: Some((PdsScheme::Http, "localhost:2583")),
    },
    Expected {
        file: "indigo/testing/testdata/fakermaker.didDoc.json",
        did: "did:plc:dpg45vsnuir2vqqqadsn6afg",
        handle: Some("ebert9014-89.test"),
        key: Some((Curve::P256, None)),
        pds: Some((PdsScheme::Http, "localhost:2583")),
    },
    Expected {
        file: "indigo/testing/testdata/greenground.didDoc.json",
        did: "did:plc:wqgdnqlv2mwiio6pfchwtrff",
        handle: Some("greenground.bsky.social"),
        key: Some((Curve::K256, Some(PROTOCOL_EXAMPLE_KEY))),
        pds: Some((PdsScheme::Https, "bsky.social")),
    },
    Expected {
        file: "indigo/testing/testdata/paul_staging.didDoc.json",
        did: "did:plc:cmpvykrzb2l22kj4ojlv3ox4",
        handle: Some("paul.staging.bsky.dev"),
        key: Some((Curve::K256, None)),
        pds: Some((PdsScheme::Https, "pds.staging.bsky.dev")),
    },
];

fn listed_documents() -> Vec<String> {
    let mut files = Vec::new();
    for (dir, suffix) in [
        ("indigo/atproto/identity/testdata/", ".json"),
        ("indigo/testing/testdata/", ".didDoc.json"),
    ] {
        let path = format!("{VECTORS}{dir}");
        let entries = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("test vectors missing: {path}: {e}"));
        for entry in entries {
            let name = entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name.ends_with(suffix) {
                files.push(format!("{dir}{name}"));
            }
        }
    }
    files.sort();
    files
}

/// The legacy `publicKeyMultibase` string of the document, to check the parsed key re-encodes
/// to exactly the same point.
fn raw_legacy_key(json: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(json).ok()?;
    let method = &doc["verificationMethod"][0];
    if method["type"].as_str()? == "Multikey" {
        return None;
    }
    method["publicKeyMultibase"].as_str().map(str::to_owned)
}

#[test]
fn every_document_parses_as_expected() {
    let files = listed_documents();
    assert_eq!(files.len(), EXPECTED.len(), "documents on disk: {files:?}");
    for file in &files {
        let expected = EXPECTED
            .iter()
            .find(|e| e.file == file)
            .unwrap_or_else(|| panic!("no expectation for {file}"));
        let json = read(file);
        let identity: Identity =
            parse_did_document(expected.did, &json).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(identity.did, expected.did, "{file}");
        assert_eq!(identity.handle.as_deref(), expected.handle, "{file}");
        match (&identity.signing_key, expected.key) {
            (None, None) => {}
            (Some(key), Some((curve, multikey))) => {
                assert_eq!(key.curve(), curve, "{file}");
                if let Some(multikey) = multikey {
                    assert_eq!(key.to_multikey(), multikey, "{file}");
                }
                assert_eq!(
                    PublicKey::from_multikey(&key.to_multikey()).as_ref(),
                    Ok(key)
                );
                if let Some(legacy) = raw_legacy_key(&json) {
                    let raw = bs58::decode(&legacy[1..]).into_vec().expect("base58");
                    let reencoded: Vec<u8> = if raw.len() == 65 {
                        key.to_uncompressed().to_vec()
                    } else {
                        key.to_compressed().to_vec()
                    };
                    assert_eq!(reencoded, raw, "{file}: legacy key re-encodes");
                }
            }
            (got, want) => panic!("{file}: key {got:?}, expected {want:?}"),
        }
        let pds = identity.pds.as_ref().map(|p| (p.scheme, p.host.as_str()));
        assert_eq!(pds, expected.pds, "{file}");
        assert_eq!(
            identity.is_usable(),
            expected.key.is_some() && expected.pds.is_some()
        );
        // The same bytes under another DID are refused.
        assert_eq!(
            parse_did_document("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", &json),
            Err(DidDocError::WrongId)
        );
    }
}

#[test]
fn protocol_example_legacy_and_multikey_documents_agree() {
    let did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
    let multikey = parse_did_document(did, &read(EXPECTED[0].file)).expect("multikey doc");
    let legacy = parse_did_document(did, &read(EXPECTED[1].file)).expect("legacy doc");
    assert_eq!(multikey, legacy);
    assert!(multikey.signing_key.is_some());
}

/// The relay scenarios carry indigo `identity.Identity` values (did, handle, services, keys),
/// not DID documents; their `#atproto` keys must still decode with the DID-document rules.
#[test]
fn relay_scenario_identity_keys_decode() {
    let dir = format!("{VECTORS}indigo/cmd/relay/testing/testdata/");
    let mut count = 0;
    for entry in
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("test vectors missing: {dir}: {e}"))
    {
        let path = entry.expect("dir entry").path();
        let scenario: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read scenario")).expect("json");
        for account in scenario["accounts"].as_array().expect("accounts") {
            let key = &account["identity"]["keys"]["atproto"];
            let parsed = PublicKey::from_verification_method(
                key["type"].as_str().expect("key type"),
                key["publicKeyMultibase"].as_str().expect("key"),
            )
            .unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert_eq!(parsed.curve(), Curve::K256);
            let handle = account["identity"]["handle"].as_str().expect("handle");
            assert!(rookery::atproto::syntax::is_valid_handle(handle));
            count += 1;
        }
    }
    assert!(count >= 7);
}
