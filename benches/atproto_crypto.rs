//! Signature and commit costs: what the relay pays per `#commit`/`#sync` for the signature
//! check, per curve, plus decoding the commit block and parsing keys / DID documents
//! (paid per identity resolution, then cached).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rookery::atproto::cid::cid_for_dag_cbor;
use rookery::atproto::commit::Commit;
use rookery::atproto::did_doc::parse_did_document;
use rookery::atproto::keys::{Curve, PrivateKey, PublicKey};
use rookery::atproto::tid::Tid;
use sha2::{Digest, Sha256};

const DID: &str = "did:plc:44ybard66vv44zksje25o7dz";

fn signed_commit(curve: Curve) -> (PublicKey, Vec<u8>) {
    let key = PrivateKey::from_bytes(curve, &[0x11; 32]).expect("fixed test key");
    let rev = Tid::parse("3lmxjzbfkb522").expect("rev");
    let data = cid_for_dag_cbor(b"mst root");
    let (_, block) = Commit::sign(DID, rev, data, &key).expect("sign");
    (key.public_key(), block)
}

fn signatures(c: &mut Criterion) {
    for (name, curve) in [("k256", Curve::K256), ("p256", Curve::P256)] {
        let (public, block) = signed_commit(curve);
        let commit = Commit::decode(&block).expect("decode");
        let unsigned = commit.unsigned_bytes().expect("unsigned");
        let sig = commit.sig.clone();
        c.bench_function(&format!("verify/{name}"), |b| {
            b.iter(|| public.verify(black_box(&unsigned), black_box(&sig)))
        });
        // The prehash entry point: for P-256 this is still the RustCrypto verifier (ring cannot
        // take a prehash), so it doubles as the "before" of the ring switch in the same run.
        let digest: [u8; 32] = Sha256::digest(&unsigned).into();
        c.bench_function(&format!("verify_digest/{name}"), |b| {
            b.iter(|| public.verify_digest(black_box(&digest), black_box(&sig)))
        });
        c.bench_function(&format!("commit_decode_verify/{name}"), |b| {
            b.iter(|| {
                let commit = Commit::decode(black_box(&block)).expect("decode");
                commit.verify_signature(&public)
            })
        });
        let private = PrivateKey::from_bytes(curve, &[0x11; 32]).expect("key");
        c.bench_function(&format!("sign/{name}"), |b| {
            b.iter(|| private.sign(black_box(&unsigned)))
        });
    }
    let (_, block) = signed_commit(Curve::K256);
    c.bench_function("commit_decode_only", |b| {
        b.iter(|| Commit::decode(black_box(&block)))
    });
}

fn identity(c: &mut Criterion) {
    let multikey = "zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF";
    c.bench_function("parse_multikey/k256", |b| {
        b.iter(|| PublicKey::from_multikey(black_box(multikey)))
    });
    let doc = br##"{"@context":["https://www.w3.org/ns/did/v1","https://w3id.org/security/multikey/v1"],"id":"did:plc:ewvi7nxzyoun6zhxrhs64oiz","alsoKnownAs":["at://atproto.com"],"verificationMethod":[{"id":"did:plc:ewvi7nxzyoun6zhxrhs64oiz#atproto","type":"Multikey","controller":"did:plc:ewvi7nxzyoun6zhxrhs64oiz","publicKeyMultibase":"zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF"}],"service":[{"id":"#atproto_pds","type":"AtprotoPersonalDataServer","serviceEndpoint":"https://bsky.social"}]}"##;
    c.bench_function("parse_did_document", |b| {
        b.iter(|| parse_did_document("did:plc:ewvi7nxzyoun6zhxrhs64oiz", black_box(doc)))
    });
}

criterion_group!(benches, signatures, identity);
criterion_main!(benches);
