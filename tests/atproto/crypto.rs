//! Interop crypto vectors: signature fixtures (valid low-S pass; high-S and DER rejected with
//! their own reasons) and the W3C did:key private-key → did:key fixtures.

use rookery::atproto::keys::{Curve, PrivateKey, PublicKey, SigError};
use serde_json::Value;

use crate::common::vectors::{b64, read_json};

fn load(file: &str) -> Vec<Value> {
    let cases = read_json(&format!("interop/crypto/{file}"))
        .as_array()
        .expect("vector file is a JSON array")
        .clone();
    assert!(!cases.is_empty(), "{file} holds no cases");
    cases
}

fn field<'a>(case: &'a Value, name: &str) -> &'a str {
    case[name]
        .as_str()
        .unwrap_or_else(|| panic!("case lacks string field {name}: {case}"))
}

#[test]
fn signature_fixtures() {
    let cases = load("signature-fixtures.json");
    assert_eq!(cases.len(), 6);
    let (mut valid, mut high_s, mut der) = (0, 0, 0);
    for case in &cases {
        let message = b64(field(case, "messageBase64"));
        let signature = b64(field(case, "signatureBase64"));
        let curve = match field(case, "algorithm") {
            "ES256K" => Curve::K256,
            "ES256" => Curve::P256,
            other => panic!("unknown algorithm {other}"),
        };
        let did_key = PublicKey::from_did_key(field(case, "publicKeyDid")).expect("did:key");
        assert_eq!(did_key.curve(), curve);
        assert_eq!(did_key.to_did_key(), field(case, "publicKeyDid"));
        // publicKeyMultibase is the compressed point with no multicodec (legacy style).
        let multibase = PublicKey::from_legacy_multibase(curve, field(case, "publicKeyMultibase"))
            .expect("legacy multibase key");
        assert_eq!(multibase, did_key);
        let via_type = PublicKey::from_verification_method(
            field(case, "didDocSuite"),
            field(case, "publicKeyMultibase"),
        )
        .expect("verification method");
        assert_eq!(via_type, did_key);

        let result = did_key.verify(&message, &signature);
        let tags: Vec<&str> = case["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if case["validSignature"].as_bool().expect("validSignature") {
            assert_eq!(result, Ok(()), "{}", field(case, "comment"));
            valid += 1;
        } else if tags.contains(&"high-s") {
            assert_eq!(result, Err(SigError::HighS), "{}", field(case, "comment"));
            assert_eq!(signature.len(), 64);
            high_s += 1;
        } else if tags.contains(&"der-encoded") {
            assert_eq!(
                result,
                Err(SigError::NotCompact),
                "{}",
                field(case, "comment")
            );
            assert!((70..=72).contains(&signature.len()));
            der += 1;
        } else {
            panic!("unexpected invalid case {case}");
        }
    }
    assert_eq!((valid, high_s, der), (2, 2, 2));
}

/// The p256 high-S fixture really is a "plain ECDSA valid" signature: only the explicit
/// low-S rule rejects it. (For K-256, libsecp256k1 refuses it by itself as well.)
#[test]
fn p256_high_s_fixture_passes_plain_ecdsa() {
    use p256::ecdsa::signature::Verifier;
    let cases = load("signature-fixtures.json");
    let case = cases
        .iter()
        .find(|c| field(c, "algorithm") == "ES256" && c["tags"][0] == "high-s")
        .expect("p256 high-s case");
    let PublicKey::P256(key) = PublicKey::from_did_key(field(case, "publicKeyDid")).unwrap() else {
        panic!("not a P-256 key")
    };
    let sig = p256::ecdsa::Signature::from_slice(&b64(field(case, "signatureBase64"))).unwrap();
    assert!(key.verify(&b64(field(case, "messageBase64")), &sig).is_ok());
}

#[test]
fn w3c_did_key_k256() {
    let cases = load("w3c_didkey_K256.json");
    for case in &cases {
        let secret = hex::decode(field(case, "privateKeyBytesHex")).expect("hex");
        let key = PrivateKey::from_bytes(Curve::K256, &secret).expect("k256 private key");
        assert_eq!(key.did_key(), field(case, "publicDidKey"));
        let parsed = PublicKey::from_did_key(field(case, "publicDidKey")).expect("did:key");
        assert_eq!(parsed, key.public_key());
        assert!(parsed.verify(b"m", &key.sign(b"m")).is_ok());
    }
    assert_eq!(cases.len(), 5);
}

#[test]
fn w3c_did_key_p256() {
    let cases = load("w3c_didkey_P256.json");
    for case in &cases {
        let secret = bs58::decode(field(case, "privateKeyBytesBase58"))
            .into_vec()
            .expect("base58");
        let key = PrivateKey::from_bytes(Curve::P256, &secret).expect("p256 private key");
        assert_eq!(key.did_key(), field(case, "publicDidKey"));
        let parsed = PublicKey::from_did_key(field(case, "publicDidKey")).expect("did:key");
        assert_eq!(parsed, key.public_key());
        assert!(parsed.verify(b"m", &key.sign(b"m")).is_ok());
    }
    assert_eq!(cases.len(), 1);
}
