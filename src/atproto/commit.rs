//! Repository commit objects (repo format version 3): decoding an untrusted commit block,
//! checking its structure, and verifying its signature (PROTOCOL.md §4).
//!
//! Design choices:
//! - The block is decoded with the bounded `cbor::decode` into a generic map and each field is
//!   checked by hand, so every defect has its own [`CommitError`] reason.
//! - **Unknown fields are rejected** (`unexpected-field`). The spec says the commit has exactly
//!   these six fields, and both reference implementations would fail such a commit at the
//!   signature anyway (they re-encode a typed struct); a structural error names the cause.
//! - **`prev` must be present to verify.** A missing `prev` key is not a structural error: the
//!   unsigned bytes are built from the fields the block actually had, so the map lacks `prev`,
//!   the bytes differ from what was signed and the signature fails, exactly as the spec
//!   describes. `prev` may be `null` or a blessed dag-cbor link.
//! - The unsigned bytes are the canonical DAG-CBOR re-encoding of the block's map without
//!   `sig` (as indigo does), and the commit CID is the CID of the signed block *as received*.
//!   A block whose key order or integer widths are not canonical therefore still verifies; it
//!   simply has its own CID. A block with a **duplicate key** does not decode (the scanner's
//!   `DuplicateKey`): the map keeps the last value, so the signature would cover only that
//!   one while a first-wins consumer of the same CID would read the other.

use std::collections::BTreeMap;

use bytes::Bytes;
use ipld_core::ipld::Ipld;

use super::cbor::{self, CborError, DecodeLimits};
use super::cid::{Cid, cid_for_dag_cbor, is_blessed_dag_cbor};
use super::keys::{PrivateKey, PublicKey, SigError};
use super::syntax::validate_did;
use super::tid::Tid;

/// The only repository format version accepted.
pub const COMMIT_VERSION: i128 = 3;
/// Largest commit block accepted. A real commit is ~200 bytes (DIDs are ≤ 2048 bytes).
pub const MAX_COMMIT_BLOCK_BYTES: usize = 8 * 1024;

const COMMIT_LIMITS: DecodeLimits = DecodeLimits {
    max_input: MAX_COMMIT_BLOCK_BYTES,
    max_depth: 8,
    max_collection_len: 64,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error("commit block is not valid bounded DAG-CBOR: {0}")]
    Cbor(CborError),
    #[error("commit block is not a map")]
    NotAMap,
    #[error("commit has an unexpected field")]
    UnexpectedField,
    #[error("commit lacks the {0} field")]
    MissingField(&'static str),
    #[error("commit field {0} has the wrong type")]
    WrongType(&'static str),
    #[error("unsupported commit version")]
    UnsupportedVersion,
    #[error("commit did is not a valid DID")]
    BadDid,
    #[error("commit rev is not a valid TID")]
    BadRev,
    #[error("commit data is not a blessed dag-cbor CID")]
    BadDataCid,
    #[error("commit prev is not null or a blessed dag-cbor CID")]
    BadPrev,
    #[error("commit sig is empty")]
    EmptySig,
    #[error("commit signature rejected: {0}")]
    Signature(SigError),
    #[error("commit encoding failed: {0}")]
    Encode(CborError),
}

impl CommitError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CommitError::Cbor(_) => "commit-bad-cbor",
            CommitError::NotAMap => "commit-not-a-map",
            CommitError::UnexpectedField => "commit-unexpected-field",
            CommitError::MissingField(_) => "commit-missing-field",
            CommitError::WrongType(_) => "commit-wrong-field-type",
            CommitError::UnsupportedVersion => "commit-unsupported-version",
            CommitError::BadDid => "commit-bad-did",
            CommitError::BadRev => "commit-bad-rev",
            CommitError::BadDataCid => "commit-bad-data-cid",
            CommitError::BadPrev => "commit-bad-prev",
            CommitError::EmptySig => "commit-empty-sig",
            CommitError::Signature(SigError::NotCompact) => "commit-sig-not-compact",
            CommitError::Signature(SigError::Malformed) => "commit-sig-malformed",
            CommitError::Signature(SigError::HighS) => "commit-sig-high-s",
            CommitError::Signature(SigError::Invalid) => "commit-sig-invalid",
            CommitError::Encode(_) => "commit-encode",
        }
    }
}

/// A decoded, structurally valid version-3 commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// CID of the signed block as received.
    pub cid: Cid,
    pub did: String,
    pub version: u32,
    /// Root of the repository MST.
    pub data: Cid,
    pub rev: Tid,
    /// `None` both when `prev` is null and when it is missing (see `prev_present`).
    pub prev: Option<Cid>,
    pub sig: Bytes,
    /// Whether the block had a `prev` key at all; without it the signature cannot verify.
    prev_present: bool,
}

impl Commit {
    /// Decodes and structurally checks an untrusted commit block.
    pub fn decode(block: &[u8]) -> Result<Commit, CommitError> {
        let value: Ipld = cbor::decode(block, &COMMIT_LIMITS).map_err(CommitError::Cbor)?;
        let Ipld::Map(mut map) = value else {
            return Err(CommitError::NotAMap);
        };
        // The version decides how the rest is read, so it is checked first: a version-2
        // commit (no `rev`) is reported as unsupported, not as missing a field.
        let version = map
            .remove("version")
            .ok_or(CommitError::MissingField("version"))?;
        let Ipld::Integer(version) = version else {
            return Err(CommitError::WrongType("version"));
        };
        if version != COMMIT_VERSION {
            return Err(CommitError::UnsupportedVersion);
        }
        let mut take = |name: &'static str| map.remove(name).ok_or(CommitError::MissingField(name));
        let did = take("did")?;
        let data = take("data")?;
        let rev = take("rev")?;
        let sig = take("sig")?;
        let prev = map.remove("prev");
        if !map.is_empty() {
            return Err(CommitError::UnexpectedField);
        }
        let Ipld::String(did) = did else {
            return Err(CommitError::WrongType("did"));
        };
        validate_did(&did).map_err(|_| CommitError::BadDid)?;
        let Ipld::Link(data) = data else {
            return Err(CommitError::WrongType("data"));
        };
        if !is_blessed_dag_cbor(&data) {
            return Err(CommitError::BadDataCid);
        }
        let Ipld::String(rev) = rev else {
            return Err(CommitError::WrongType("rev"));
        };
        let rev = Tid::parse(&rev).map_err(|_| CommitError::BadRev)?;
        let (prev, prev_present) = match prev {
            None => (None, false),
            Some(Ipld::Null) => (None, true),
            Some(Ipld::Link(cid)) if is_blessed_dag_cbor(&cid) => (Some(cid), true),
            Some(_) => return Err(CommitError::BadPrev),
        };
        let Ipld::Bytes(sig) = sig else {
            return Err(CommitError::WrongType("sig"));
        };
        if sig.is_empty() {
            return Err(CommitError::EmptySig);
        }
        Ok(Commit {
            cid: cid_for_dag_cbor(block),
            did,
            version: 3,
            data,
            rev,
            prev,
            sig: Bytes::from(sig),
            prev_present,
        })
    }

    /// True when the block carried a `prev` key (null or a link).
    pub fn has_prev_key(&self) -> bool {
        self.prev_present
    }

    fn unsigned_map(&self) -> BTreeMap<String, Ipld> {
        unsigned_map(
            &self.did,
            self.rev,
            self.data,
            self.prev_present.then_some(self.prev),
        )
    }

    /// Canonical DAG-CBOR of the commit map without `sig`: the bytes that were signed.
    pub fn unsigned_bytes(&self) -> Result<Vec<u8>, CommitError> {
        cbor::encode(&self.unsigned_map()).map_err(CommitError::Encode)
    }

    /// Verifies the signature with the account's `#atproto` key.
    pub fn verify_signature(&self, key: &PublicKey) -> Result<(), CommitError> {
        let unsigned = self.unsigned_bytes()?;
        key.verify(&unsigned, &self.sig)
            .map_err(CommitError::Signature)
    }

    /// Builds and signs a version-3 commit with `prev: null`. Returns the commit CID and the
    /// signed block. For tests and the fleet simulator.
    pub fn sign(
        did: &str,
        rev: Tid,
        data: Cid,
        key: &PrivateKey,
    ) -> Result<(Cid, Vec<u8>), CommitError> {
        validate_did(did).map_err(|_| CommitError::BadDid)?;
        if !is_blessed_dag_cbor(&data) {
            return Err(CommitError::BadDataCid);
        }
        let mut map = unsigned_map(did, rev, data, Some(None));
        let unsigned = cbor::encode(&map).map_err(CommitError::Encode)?;
        map.insert("sig".into(), Ipld::Bytes(key.sign(&unsigned).to_vec()));
        let block = cbor::encode(&map).map_err(CommitError::Encode)?;
        Ok((cid_for_dag_cbor(&block), block))
    }
}

/// `prev`: `None` = key absent, `Some(None)` = null, `Some(Some(cid))` = link.
fn unsigned_map(
    did: &str,
    rev: Tid,
    data: Cid,
    prev: Option<Option<Cid>>,
) -> BTreeMap<String, Ipld> {
    let mut map = BTreeMap::new();
    map.insert("did".to_owned(), Ipld::String(did.to_owned()));
    map.insert("version".to_owned(), Ipld::Integer(COMMIT_VERSION));
    map.insert("data".to_owned(), Ipld::Link(data));
    map.insert("rev".to_owned(), Ipld::String(rev.to_string()));
    if let Some(prev) = prev {
        map.insert("prev".to_owned(), prev.map_or(Ipld::Null, Ipld::Link));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::keys::Curve;
    use proptest::prelude::*;

    const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";

    fn rev() -> Tid {
        Tid::parse("3jzfcijpj2z2a").unwrap()
    }

    fn data() -> Cid {
        cid_for_dag_cbor(&[0xa2, 0x61, 0x65, 0x80, 0x61, 0x6c, 0xf6])
    }

    fn raw_map(block: &[u8]) -> BTreeMap<String, Ipld> {
        cbor::decode(block, &DecodeLimits::default()).unwrap()
    }

    /// Re-signs a modified map honestly, so only the modification is being tested.
    fn resign(mut map: BTreeMap<String, Ipld>, key: &PrivateKey) -> Vec<u8> {
        map.remove("sig");
        let unsigned = cbor::encode(&map).unwrap();
        map.insert("sig".into(), Ipld::Bytes(key.sign(&unsigned).to_vec()));
        cbor::encode(&map).unwrap()
    }

    #[test]
    fn sign_decode_verify_round_trip_on_both_curves() {
        for curve in [Curve::K256, Curve::P256] {
            let key = PrivateKey::generate(curve);
            let (cid, block) = Commit::sign(DID, rev(), data(), &key).unwrap();
            let commit = Commit::decode(&block).unwrap();
            assert_eq!(commit.cid, cid);
            assert_eq!(
                (commit.did.as_str(), commit.rev, commit.data),
                (DID, rev(), data())
            );
            assert_eq!(
                (commit.version, commit.prev, commit.has_prev_key()),
                (3, None, true)
            );
            assert_eq!(commit.sig.len(), 64);
            assert_eq!(commit.verify_signature(&key.public_key()), Ok(()));
            let other = PrivateKey::generate(curve).public_key();
            assert_eq!(
                commit.verify_signature(&other),
                Err(CommitError::Signature(SigError::Invalid))
            );
        }
    }

    /// A signed block with `data` twice: the first (unsigned, attacker's) one would be what a
    /// first-wins consumer reads, the last one what serde keeps and what the signature covers.
    /// It must not decode, let alone verify.
    #[test]
    fn duplicate_field_is_rejected_before_the_signature() {
        let key = PrivateKey::generate(Curve::K256);
        let (_, block) = Commit::sign(DID, rev(), data(), &key).unwrap();
        assert_eq!(block[0], 0xa6);
        let other = cid_for_dag_cbor(b"other tree");
        let mut spliced = vec![0xa7, 0x64];
        spliced.extend_from_slice(b"data");
        spliced.extend(cbor::encode(&Ipld::Link(other)).unwrap());
        spliced.extend_from_slice(&block[1..]);
        assert_eq!(
            Commit::decode(&spliced),
            Err(CommitError::Cbor(CborError::DuplicateKey))
        );
        // Same for a duplicate in canonical position (right after the real `data`).
        let data_key = block.windows(5).position(|w| w == b"\x64data").unwrap();
        let mut adjacent = block.clone();
        adjacent[0] = 0xa7;
        let after_data = data_key + 5 + cbor::encode(&Ipld::Link(data())).unwrap().len();
        let mut dup = vec![0x64];
        dup.extend_from_slice(b"data");
        dup.extend(cbor::encode(&Ipld::Link(other)).unwrap());
        adjacent.splice(after_data..after_data, dup);
        assert_eq!(
            Commit::decode(&adjacent),
            Err(CommitError::Cbor(CborError::DuplicateKey))
        );
    }

    #[test]
    fn wire_key_order_is_canonical() {
        let key = PrivateKey::generate(Curve::K256);
        let (_, block) = Commit::sign(DID, rev(), data(), &key).unwrap();
        // Map of 6, then keys did, rev, sig, data, prev, version (length-first order).
        assert_eq!(block[0], 0xa6);
        let positions: Vec<usize> = ["did", "rev", "sig", "data", "prev", "version"]
            .iter()
            .map(|k| {
                let mut needle = vec![0x60 + k.len() as u8];
                needle.extend_from_slice(k.as_bytes());
                block
                    .windows(needle.len())
                    .position(|w| w == needle)
                    .unwrap()
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        // The block re-encodes to itself, so the CID is stable.
        assert_eq!(cbor::encode(&raw_map(&block)).unwrap(), block);
    }

    #[test]
    fn missing_prev_key_decodes_but_fails_the_signature() {
        let key = PrivateKey::generate(Curve::K256);
        let (_, block) = Commit::sign(DID, rev(), data(), &key).unwrap();
        let mut map = raw_map(&block);
        map.remove("prev");
        let without_prev = cbor::encode(&map).unwrap();
        let commit = Commit::decode(&without_prev).unwrap();
        assert!(!commit.has_prev_key());
        assert_eq!(
            commit.verify_signature(&key.public_key()),
            Err(CommitError::Signature(SigError::Invalid))
        );
        // Even honestly signed without prev, the bytes differ from the prev:null form.
        let resigned = Commit::decode(&resign(map, &key)).unwrap();
        assert_ne!(
            resigned.unsigned_bytes(),
            Commit::decode(&block).unwrap().unsigned_bytes()
        );
    }

    #[test]
    fn non_null_prev_link_is_signed_over() {
        let key = PrivateKey::generate(Curve::P256);
        let (prev_cid, block) = Commit::sign(DID, rev(), data(), &key).unwrap();
        let mut map = raw_map(&block);
        map.insert("prev".into(), Ipld::Link(prev_cid));
        let commit = Commit::decode(&resign(map, &key)).unwrap();
        assert_eq!(commit.prev, Some(prev_cid));
        assert_eq!(commit.verify_signature(&key.public_key()), Ok(()));
    }

    #[test]
    fn structural_errors() {
        let key = PrivateKey::generate(Curve::K256);
        let (_, block) = Commit::sign(DID, rev(), data(), &key).unwrap();
        let base = raw_map(&block);
        let with = |k: &str, v: Ipld| {
            let mut m = base.clone();
            m.insert(k.to_owned(), v);
            Commit::decode(&resign(m, &key)).map(|_| ()).unwrap_err()
        };
        assert_eq!(
            with("version", Ipld::Integer(2)),
            CommitError::UnsupportedVersion
        );
        assert_eq!(
            with("version", Ipld::String("3".into())),
            CommitError::WrongType("version")
        );
        assert_eq!(
            with("did", Ipld::String("did:PLC:x".into())),
            CommitError::BadDid
        );
        assert_eq!(
            with("rev", Ipld::String("3jzfcijpj2z2".into())),
            CommitError::BadRev
        );
        assert_eq!(
            with("data", Ipld::Link(crate::atproto::cid::cid_for_raw(b"x"))),
            CommitError::BadDataCid
        );
        assert_eq!(with("data", Ipld::Null), CommitError::WrongType("data"));
        assert_eq!(with("prev", Ipld::Integer(0)), CommitError::BadPrev);
        assert_eq!(with("extra", Ipld::Null), CommitError::UnexpectedField);
        let mut empty_sig = base.clone();
        empty_sig.insert("sig".into(), Ipld::Bytes(vec![]));
        assert_eq!(
            Commit::decode(&cbor::encode(&empty_sig).unwrap()),
            Err(CommitError::EmptySig)
        );
        for field in ["did", "version", "data", "rev", "sig"] {
            let mut m = base.clone();
            m.remove(field);
            assert_eq!(
                Commit::decode(&cbor::encode(&m).unwrap()),
                Err(CommitError::MissingField(field))
            );
        }
        assert_eq!(
            Commit::decode(&cbor::encode(&Ipld::List(vec![])).unwrap()),
            Err(CommitError::NotAMap)
        );
        assert_eq!(
            Commit::decode(&[0xff]).unwrap_err().reason(),
            "commit-bad-cbor"
        );
        let mut long = block.clone();
        long.extend(std::iter::repeat_n(0u8, MAX_COMMIT_BLOCK_BYTES));
        assert!(matches!(Commit::decode(&long), Err(CommitError::Cbor(_))));
        assert!(Commit::sign("not a did", rev(), data(), &key).is_err());
    }

    #[test]
    fn non_canonical_block_verifies_but_keeps_its_own_cid() {
        // Same map, keys in plain alphabetical order instead of length-first: the signature is
        // over the canonical unsigned bytes, so it still verifies; the CID is of the bytes as
        // received.
        let key = PrivateKey::generate(Curve::K256);
        let (canonical_cid, block) = Commit::sign(DID, rev(), data(), &key).unwrap();
        let map = raw_map(&block);
        let mut shuffled = vec![0xa6];
        for (k, v) in &map {
            shuffled.extend(cbor::encode(k).unwrap());
            shuffled.extend(cbor::encode(v).unwrap());
        }
        assert_ne!(shuffled, block);
        let commit = Commit::decode(&shuffled).unwrap();
        assert_eq!(commit.verify_signature(&key.public_key()), Ok(()));
        assert_eq!(commit.cid, cid_for_dag_cbor(&shuffled));
        assert_ne!(commit.cid, canonical_cid);
    }

    #[test]
    fn der_and_high_s_commit_signatures_are_named() {
        let key = PrivateKey::generate(Curve::K256);
        let (_, block) = Commit::sign(DID, rev(), data(), &key).unwrap();
        let mut map = raw_map(&block);
        map.insert("sig".into(), Ipld::Bytes(vec![0x30; 71]));
        let commit = Commit::decode(&cbor::encode(&map).unwrap()).unwrap();
        let err = commit.verify_signature(&key.public_key()).unwrap_err();
        assert_eq!(err, CommitError::Signature(SigError::NotCompact));
        assert_eq!(err.reason(), "commit-sig-not-compact");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Commit::decode(&bytes);
        }

        #[test]
        fn sign_decode_verify_property(
            id in "[a-z2-7]{24}", micros in 0u64..(1 << 53), clock in 0u16..1024,
            data_seed in proptest::collection::vec(any::<u8>(), 0..64), secret in any::<[u8; 32]>(),
        ) {
            let Ok(key) = PrivateKey::from_bytes(Curve::K256, &secret) else {
                return Ok(());
            };
            let did = format!("did:plc:{id}");
            let rev = Tid::from_parts(micros, clock);
            let data = cid_for_dag_cbor(&data_seed);
            let (cid, block) = Commit::sign(&did, rev, data, &key).unwrap();
            let commit = Commit::decode(&block).unwrap();
            prop_assert_eq!(commit.cid, cid);
            prop_assert_eq!((commit.did.as_str(), commit.rev, commit.data), (did.as_str(), rev, data));
            prop_assert_eq!(commit.verify_signature(&key.public_key()), Ok(()));
        }

        #[test]
        fn mutated_commits_never_panic(index in 0usize..200, byte in any::<u8>(), truncate in any::<bool>()) {
            let key = PrivateKey::from_bytes(Curve::K256, &[7u8; 32]).unwrap();
            let (_, mut block) = Commit::sign(DID, rev(), data(), &key).unwrap();
            let i = index % block.len();
            if truncate { block.truncate(i); } else { block[i] = byte; }
            if let Ok(commit) = Commit::decode(&block) {
                let _ = commit.verify_signature(&key.public_key());
            }
        }
    }
}
