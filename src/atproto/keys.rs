//! atproto signing keys: parsing the public-key encodings found in DID documents and PLC
//! data, formatting them back, and verifying/creating commit signatures.
//!
//! Two curves exist: secp256k1 ("K-256", `ES256K`) and NIST P-256 (`ES256`). K-256 uses the
//! `secp256k1` crate (libsecp256k1, the fastest verifier available; its verify already
//! refuses high-S signatures). P-256 keys are parsed, encoded and signed with the RustCrypto
//! `p256` crate, but verified with `ring` (`ECDSA_P256_SHA256_FIXED`, precomputed tables and
//! assembly; ~8× faster than `p256`'s verify), which accepts high-S signatures, so the low-S
//! rule is checked here first. atproto signatures are always 64-byte compact `r‖s` over
//! SHA-256 of the message with low S (PROTOCOL.md §4); DER and high-S signatures are rejected
//! with their own error variants, checked explicitly on both curves so the rejection reason is
//! visible in metrics, not just "invalid".
//!
//! Encodings (PROTOCOL.md §6): `Multikey` = `z` + base58btc(varint multicodec ‖ compressed
//! point); `did:key:` + the same; legacy `Ecdsa*VerificationKey2019` = `z` + base58btc of the
//! raw point (compressed or uncompressed), with the curve given by the verification-method
//! type.

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use secp256k1::SECP256K1;
use sha2::{Digest, Sha256};

/// Multicodec varint prefix of a secp256k1 public key (0xE7).
pub const MULTICODEC_SECP256K1_PUB: [u8; 2] = [0xE7, 0x01];
/// Multicodec varint prefix of a P-256 public key (0x1200).
pub const MULTICODEC_P256_PUB: [u8; 2] = [0x80, 0x24];
/// Verification-method type of the current encoding.
pub const TYPE_MULTIKEY: &str = "Multikey";
/// Legacy verification-method type for K-256 keys.
pub const TYPE_LEGACY_K256: &str = "EcdsaSecp256k1VerificationKey2019";
/// Legacy verification-method type for P-256 keys.
pub const TYPE_LEGACY_P256: &str = "EcdsaSecp256r1VerificationKey2019";

/// Longest multibase key string looked at (an uncompressed legacy key is ~90 characters).
const MAX_MULTIBASE_LEN: usize = 128;
/// Length of an atproto signature.
pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    /// secp256k1, JWT `ES256K`.
    K256,
    /// NIST P-256, JWT `ES256`.
    P256,
}

impl Curve {
    pub fn jwt_alg(&self) -> &'static str {
        match self {
            Curve::K256 => "ES256K",
            Curve::P256 => "ES256",
        }
    }
}

/// A public key that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a did:key")]
    NotDidKey,
    #[error("multibase key must start with 'z' (base58btc)")]
    NotBase58Multibase,
    #[error("key string too long")]
    TooLong,
    #[error("invalid base58")]
    BadBase58,
    #[error("unsupported multicodec (not secp256k1-pub or p256-pub)")]
    UnsupportedMulticodec,
    #[error("unsupported verification method type")]
    UnsupportedKeyType,
    #[error("key bytes are not a valid curve point of the expected form")]
    BadPoint,
    #[error("private key bytes are not a valid scalar")]
    BadPrivateKey,
}

impl KeyError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyError::NotDidKey => "key-not-did-key",
            KeyError::NotBase58Multibase => "key-not-base58-multibase",
            KeyError::TooLong => "key-too-long",
            KeyError::BadBase58 => "key-bad-base58",
            KeyError::UnsupportedMulticodec => "key-unsupported-multicodec",
            KeyError::UnsupportedKeyType => "key-unsupported-type",
            KeyError::BadPoint => "key-bad-point",
            KeyError::BadPrivateKey => "key-bad-private-key",
        }
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// Not 64 bytes; DER-encoded signatures (70–72 bytes) land here.
    #[error("signature is not 64-byte compact r||s")]
    NotCompact,
    /// 64 bytes, but r or s is zero or not below the curve order.
    #[error("signature scalars out of range")]
    Malformed,
    /// s > n/2: a malleable signature, not allowed in atproto.
    #[error("signature has high S")]
    HighS,
    /// Well-formed, but does not verify with this key.
    #[error("signature does not verify")]
    Invalid,
}

impl SigError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SigError::NotCompact => "sig-not-compact",
            SigError::Malformed => "sig-malformed",
            SigError::HighS => "sig-high-s",
            SigError::Invalid => "sig-invalid",
        }
    }
}

/// A K-256 or P-256 public key. Cheap to clone (no heap, under 160 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    K256(secp256k1::PublicKey),
    P256(P256Key),
}

/// A validated P-256 public key together with its 65-byte uncompressed SEC1 encoding, which
/// is what `ring` verifies with. The point is decompressed once, when the key is parsed, so a
/// verify does no square root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P256Key {
    key: p256::ecdsa::VerifyingKey,
    uncompressed: [u8; 65],
}

impl P256Key {
    /// The RustCrypto key (for signing-side code and interop tests).
    pub fn verifying_key(&self) -> &p256::ecdsa::VerifyingKey {
        &self.key
    }

    /// The 65-byte uncompressed SEC1 point (`04 ‖ x ‖ y`).
    pub fn uncompressed(&self) -> &[u8; 65] {
        &self.uncompressed
    }
}

impl From<p256::ecdsa::VerifyingKey> for P256Key {
    fn from(key: p256::ecdsa::VerifyingKey) -> P256Key {
        let mut uncompressed = [0u8; 65];
        let encoded = key.to_encoded_point(false);
        // A valid (non-identity) P-256 verifying key always encodes to 65 bytes.
        if encoded.as_bytes().len() == 65 {
            uncompressed.copy_from_slice(encoded.as_bytes());
        }
        P256Key { key, uncompressed }
    }
}

/// Plain ECDSA verification with the RustCrypto `p256` crate: no low-S rule. For atproto
/// signatures use [`PublicKey::verify`].
impl Verifier<p256::ecdsa::Signature> for P256Key {
    fn verify(
        &self,
        msg: &[u8],
        signature: &p256::ecdsa::Signature,
    ) -> Result<(), p256::ecdsa::Error> {
        self.key.verify(msg, signature)
    }
}

/// The range and low-S checks on a 64-byte P-256 signature (`ring` does the range check too,
/// but would report every failure as the same opaque error, and accepts high S).
fn p256_compact_low_s(sig: &[u8]) -> Result<p256::ecdsa::Signature, SigError> {
    let signature = p256::ecdsa::Signature::from_slice(sig).map_err(|_| SigError::Malformed)?;
    if signature.normalize_s().is_some() {
        return Err(SigError::HighS);
    }
    Ok(signature)
}

fn verify_k256(key: &secp256k1::PublicKey, digest: &[u8; 32], sig: &[u8]) -> Result<(), SigError> {
    // libsecp256k1 parses zero scalars (and then fails verify); name them here.
    if sig[..32].iter().all(|b| *b == 0) || sig[32..].iter().all(|b| *b == 0) {
        return Err(SigError::Malformed);
    }
    let signature =
        secp256k1::ecdsa::Signature::from_compact(sig).map_err(|_| SigError::Malformed)?;
    let mut normalized = signature;
    normalized.normalize_s();
    if normalized != signature {
        return Err(SigError::HighS);
    }
    let message = secp256k1::Message::from_digest(*digest);
    SECP256K1
        .verify_ecdsa(&message, &signature, key)
        .map_err(|_| SigError::Invalid)
}

fn decode_base58_multibase(s: &str) -> Result<Vec<u8>, KeyError> {
    if s.len() > MAX_MULTIBASE_LEN {
        return Err(KeyError::TooLong);
    }
    let body = s.strip_prefix('z').ok_or(KeyError::NotBase58Multibase)?;
    bs58::decode(body)
        .into_vec()
        .map_err(|_| KeyError::BadBase58)
}

impl PublicKey {
    /// Parses `did:key:z…` (a multikey written as a DID).
    pub fn from_did_key(s: &str) -> Result<PublicKey, KeyError> {
        let multikey = s.strip_prefix("did:key:").ok_or(KeyError::NotDidKey)?;
        PublicKey::from_multikey(multikey)
    }

    /// Parses a `Multikey` `publicKeyMultibase`: `z` + base58btc(multicodec ‖ compressed point).
    pub fn from_multikey(s: &str) -> Result<PublicKey, KeyError> {
        let bytes = decode_base58_multibase(s)?;
        let (curve, point) = match bytes.split_at_checked(2) {
            Some((prefix, point)) if prefix == MULTICODEC_SECP256K1_PUB => (Curve::K256, point),
            Some((prefix, point)) if prefix == MULTICODEC_P256_PUB => (Curve::P256, point),
            _ => return Err(KeyError::UnsupportedMulticodec),
        };
        if point.len() != 33 {
            return Err(KeyError::BadPoint);
        }
        PublicKey::from_sec1(curve, point)
    }

    /// Parses a legacy `EcdsaSecp256k1VerificationKey2019` / `EcdsaSecp256r1VerificationKey2019`
    /// `publicKeyMultibase`: `z` + base58btc of the raw point, compressed or uncompressed, with
    /// no multicodec. The curve comes from the verification-method type.
    pub fn from_legacy_multibase(curve: Curve, s: &str) -> Result<PublicKey, KeyError> {
        let bytes = decode_base58_multibase(s)?;
        PublicKey::from_sec1(curve, &bytes)
    }

    /// Parses the key of a DID-document verification method by its `type`.
    pub fn from_verification_method(
        method_type: &str,
        public_key_multibase: &str,
    ) -> Result<PublicKey, KeyError> {
        match method_type {
            TYPE_MULTIKEY => PublicKey::from_multikey(public_key_multibase),
            TYPE_LEGACY_K256 => PublicKey::from_legacy_multibase(Curve::K256, public_key_multibase),
            TYPE_LEGACY_P256 => PublicKey::from_legacy_multibase(Curve::P256, public_key_multibase),
            _ => Err(KeyError::UnsupportedKeyType),
        }
    }

    /// A SEC1 point: 33 bytes compressed (`02|03 ‖ x`) or 65 bytes uncompressed (`04 ‖ x ‖ y`).
    /// Hybrid (`06|07`) and identity encodings are refused.
    pub fn from_sec1(curve: Curve, point: &[u8]) -> Result<PublicKey, KeyError> {
        match (point.len(), point.first()) {
            (33, Some(0x02 | 0x03)) | (65, Some(0x04)) => {}
            _ => return Err(KeyError::BadPoint),
        }
        match curve {
            Curve::K256 => secp256k1::PublicKey::from_slice(point)
                .map(PublicKey::K256)
                .map_err(|_| KeyError::BadPoint),
            Curve::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map(|key| PublicKey::P256(key.into()))
                .map_err(|_| KeyError::BadPoint),
        }
    }

    pub fn curve(&self) -> Curve {
        match self {
            PublicKey::K256(_) => Curve::K256,
            PublicKey::P256(_) => Curve::P256,
        }
    }

    /// The 33-byte compressed SEC1 point.
    pub fn to_compressed(&self) -> [u8; 33] {
        match self {
            PublicKey::K256(k) => k.serialize(),
            PublicKey::P256(k) => {
                // `02|03 ‖ x`, the prefix carrying the parity of y.
                let mut out = [0u8; 33];
                out[0] = 0x02 | (k.uncompressed[64] & 1);
                out[1..].copy_from_slice(&k.uncompressed[1..33]);
                out
            }
        }
    }

    /// The 65-byte uncompressed SEC1 point (`04 ‖ x ‖ y`).
    pub fn to_uncompressed(&self) -> [u8; 65] {
        match self {
            PublicKey::K256(k) => k.serialize_uncompressed(),
            PublicKey::P256(k) => k.uncompressed,
        }
    }

    /// `z` + base58btc(multicodec ‖ compressed point).
    pub fn to_multikey(&self) -> String {
        let prefix = match self.curve() {
            Curve::K256 => MULTICODEC_SECP256K1_PUB,
            Curve::P256 => MULTICODEC_P256_PUB,
        };
        let mut bytes = Vec::with_capacity(35);
        bytes.extend_from_slice(&prefix);
        bytes.extend_from_slice(&self.to_compressed());
        format!("z{}", bs58::encode(bytes).into_string())
    }

    /// `did:key:` + [`PublicKey::to_multikey`].
    pub fn to_did_key(&self) -> String {
        format!("did:key:{}", self.to_multikey())
    }

    /// Verifies a 64-byte compact low-S ECDSA signature over SHA-256(`msg`). This is the
    /// relay's hot path: P-256 goes through `ring`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), SigError> {
        if sig.len() != SIGNATURE_LEN {
            return Err(SigError::NotCompact);
        }
        match self {
            PublicKey::K256(key) => {
                let digest: [u8; 32] = Sha256::digest(msg).into();
                verify_k256(key, &digest, sig)
            }
            PublicKey::P256(key) => {
                p256_compact_low_s(sig)?;
                // ring hashes `msg` with SHA-256 itself.
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    &key.uncompressed,
                )
                .verify(msg, sig)
                .map_err(|_| SigError::Invalid)
            }
        }
    }

    /// Like [`PublicKey::verify`], with the SHA-256 digest already computed. `ring` cannot
    /// verify a prehash, so P-256 here uses the (slower) RustCrypto verifier; the outcome is
    /// the same.
    pub fn verify_digest(&self, digest: &[u8; 32], sig: &[u8]) -> Result<(), SigError> {
        if sig.len() != SIGNATURE_LEN {
            return Err(SigError::NotCompact);
        }
        match self {
            PublicKey::K256(key) => verify_k256(key, digest, sig),
            PublicKey::P256(key) => {
                let signature = p256_compact_low_s(sig)?;
                key.key
                    .verify_prehash(digest, &signature)
                    .map_err(|_| SigError::Invalid)
            }
        }
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_did_key())
    }
}

/// A signing key, for tests and the fleet simulator (the relay itself only verifies).
#[derive(Clone)]
pub enum PrivateKey {
    K256(secp256k1::SecretKey),
    P256(p256::ecdsa::SigningKey),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secret material.
        write!(f, "PrivateKey({:?}, {})", self.curve(), self.did_key())
    }
}

impl PrivateKey {
    /// A fresh random key.
    pub fn generate(curve: Curve) -> PrivateKey {
        loop {
            // A random 32-byte string is a valid scalar except with probability ~2^-128.
            let bytes: [u8; 32] = rand::random();
            if let Ok(key) = PrivateKey::from_bytes(curve, &bytes) {
                return key;
            }
        }
    }

    /// A key from its 32-byte big-endian scalar.
    pub fn from_bytes(curve: Curve, bytes: &[u8]) -> Result<PrivateKey, KeyError> {
        match curve {
            Curve::K256 => secp256k1::SecretKey::from_slice(bytes)
                .map(PrivateKey::K256)
                .map_err(|_| KeyError::BadPrivateKey),
            Curve::P256 => p256::ecdsa::SigningKey::from_slice(bytes)
                .map(PrivateKey::P256)
                .map_err(|_| KeyError::BadPrivateKey),
        }
    }

    /// The 32-byte big-endian scalar.
    pub fn to_bytes(&self) -> [u8; 32] {
        match self {
            PrivateKey::K256(k) => k.secret_bytes(),
            PrivateKey::P256(k) => k.to_bytes().into(),
        }
    }

    pub fn curve(&self) -> Curve {
        match self {
            PrivateKey::K256(_) => Curve::K256,
            PrivateKey::P256(_) => Curve::P256,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        match self {
            PrivateKey::K256(k) => PublicKey::K256(k.public_key(SECP256K1)),
            PrivateKey::P256(k) => PublicKey::P256((*k.verifying_key()).into()),
        }
    }

    pub fn did_key(&self) -> String {
        self.public_key().to_did_key()
    }

    /// Signs SHA-256(`msg`); the result is always 64-byte compact low-S.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let digest: [u8; 32] = Sha256::digest(msg).into();
        self.sign_digest(&digest)
    }

    /// Signs a precomputed SHA-256 digest; 64-byte compact low-S.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> [u8; 64] {
        match self {
            // libsecp256k1 always produces low-S signatures.
            PrivateKey::K256(k) => SECP256K1
                .sign_ecdsa(&secp256k1::Message::from_digest(*digest), k)
                .serialize_compact(),
            PrivateKey::P256(k) => {
                // RFC 6979 signing of a 32-byte digest cannot fail for a valid key; the
                // zero signature fallback would be refused by every verifier.
                let signature: p256::ecdsa::Signature = match k.sign_prehash(digest) {
                    Ok(s) => s,
                    Err(_) => return [0u8; 64],
                };
                let low_s = signature.normalize_s().unwrap_or(signature);
                low_s.to_bytes().into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn protocol_doc_legacy_and_multikey_are_the_same_key() {
        let legacy = PublicKey::from_legacy_multibase(
            Curve::K256,
            "zQYEBzXeuTM9UR3rfvNag6L3RNAs5pQZyYPsomTsgQhsxLdEgCrPTLgFna8yqCnxPpNT7DBk6Ym3dgPKNu86vt9GR",
        )
        .unwrap();
        let multikey =
            PublicKey::from_multikey("zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF").unwrap();
        assert_eq!(legacy, multikey);
        assert_eq!(
            legacy.to_multikey(),
            "zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF"
        );
    }

    #[test]
    fn wrong_encodings_are_rejected() {
        let k = "zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF";
        assert_eq!(PublicKey::from_did_key(k), Err(KeyError::NotDidKey));
        assert_eq!(
            PublicKey::from_multikey(&k[1..]),
            Err(KeyError::NotBase58Multibase)
        );
        assert_eq!(PublicKey::from_multikey("z0OIl"), Err(KeyError::BadBase58));
        // A legacy (no multicodec) key is not a multikey.
        assert!(
            PublicKey::from_multikey(
                "zQYEBzXeuTM9UR3rfvNag6L3RNAs5pQZyYPsomTsgQhsxLdEgCrPTLgFna8yqCnxPpNT7DBk6Ym3dgPKNu86vt9GR"
            )
            .is_err()
        );
        assert_eq!(
            PublicKey::from_verification_method("JsonWebKey2020", k),
            Err(KeyError::UnsupportedKeyType)
        );
        let long = format!("z{}", "1".repeat(200));
        assert_eq!(PublicKey::from_multikey(&long), Err(KeyError::TooLong));
        // The point must be on the curve.
        let mut bytes = MULTICODEC_SECP256K1_PUB.to_vec();
        bytes.push(0x02);
        bytes.extend_from_slice(&[0xff; 32]);
        let bad = format!("z{}", bs58::encode(bytes).into_string());
        assert_eq!(PublicKey::from_multikey(&bad), Err(KeyError::BadPoint));
    }

    #[test]
    fn signatures_round_trip_on_both_curves() {
        for curve in [Curve::K256, Curve::P256] {
            let key = PrivateKey::generate(curve);
            let public = key.public_key();
            assert_eq!(PublicKey::from_did_key(&key.did_key()), Ok(public.clone()));
            let again = PrivateKey::from_bytes(curve, &key.to_bytes()).unwrap();
            assert_eq!(again.public_key(), public);
            let sig = key.sign(b"hello");
            assert_eq!(public.verify(b"hello", &sig), Ok(()));
            assert_eq!(public.verify(b"hellO", &sig), Err(SigError::Invalid));
            let other = PrivateKey::generate(curve).public_key();
            assert_eq!(other.verify(b"hello", &sig), Err(SigError::Invalid));
            assert_eq!(
                public.verify(b"hello", &sig[..63]),
                Err(SigError::NotCompact)
            );
            assert_eq!(
                public.verify(b"hello", &[0u8; 64]),
                Err(SigError::Malformed)
            );
            assert!(!format!("{key:?}").contains(&hex_of(&key.to_bytes())));
        }
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// n - s for the curve order n (big-endian 32-byte arithmetic).
    fn negate_s(curve: Curve, sig: &[u8; 64]) -> [u8; 64] {
        let n: [u8; 32] = match curve {
            Curve::K256 => *b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xba\xae\xdc\xe6\xaf\x48\xa0\x3b\xbf\xd2\x5e\x8c\xd0\x36\x41\x41",
            Curve::P256 => *b"\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xbc\xe6\xfa\xad\xa7\x17\x9e\x84\xf3\xb9\xca\xc2\xfc\x63\x25\x51",
        };
        let mut out = *sig;
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(n[i]) - i16::from(sig[32 + i]) - borrow;
            borrow = i16::from(d < 0);
            out[32 + i] = d.rem_euclid(256) as u8;
        }
        out
    }

    #[test]
    fn high_s_twin_of_a_valid_signature_is_rejected_on_both_curves() {
        for curve in [Curve::K256, Curve::P256] {
            let key = PrivateKey::generate(curve);
            let sig = key.sign(b"msg");
            let twin = negate_s(curve, &sig);
            assert_ne!(twin, sig);
            assert_eq!(
                key.public_key().verify(b"msg", &twin),
                Err(SigError::HighS),
                "{curve:?}"
            );
        }
    }

    #[test]
    fn libsecp256k1_itself_refuses_high_s() {
        // Our explicit check is belt and braces: the library's verify also fails.
        let key = PrivateKey::generate(Curve::K256);
        let sig = key.sign(b"msg");
        let twin = negate_s(Curve::K256, &sig);
        let PublicKey::K256(pk) = key.public_key() else {
            panic!("a K256 private key gave a non-K256 public key")
        };
        let digest: [u8; 32] = Sha256::digest(b"msg").into();
        let message = secp256k1::Message::from_digest(digest);
        let parsed = secp256k1::ecdsa::Signature::from_compact(&twin).unwrap();
        assert!(SECP256K1.verify_ecdsa(&message, &parsed, &pk).is_err());
        let mut normalized = parsed;
        normalized.normalize_s();
        assert!(SECP256K1.verify_ecdsa(&message, &normalized, &pk).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sign_verify_property(msg in proptest::collection::vec(any::<u8>(), 0..256), p256 in any::<bool>()) {
            let curve = if p256 { Curve::P256 } else { Curve::K256 };
            let key = PrivateKey::generate(curve);
            let sig = key.sign(&msg);
            prop_assert_eq!(key.public_key().verify(&msg, &sig), Ok(()));
            let mut tampered = msg.clone();
            tampered.push(0);
            prop_assert!(key.public_key().verify(&tampered, &sig).is_err());
        }
    }

    /// ring's verify with no low-S rule, as the relay would get it without the explicit check.
    fn ring_plain(key: &P256Key, msg: &[u8], sig: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            key.uncompressed(),
        )
        .verify(msg, sig)
        .is_ok()
    }

    /// The RustCrypto `p256` verifier, also with no low-S rule.
    fn rustcrypto_plain(key: &P256Key, msg: &[u8], sig: &[u8]) -> bool {
        p256::ecdsa::Signature::from_slice(sig)
            .is_ok_and(|sig| key.verifying_key().verify(msg, &sig).is_ok())
    }

    /// The atproto rule spelled with the RustCrypto crate only: the reference for the ring path.
    fn rustcrypto_atproto(key: &P256Key, msg: &[u8], sig: &[u8]) -> Result<(), SigError> {
        if sig.len() != SIGNATURE_LEN {
            return Err(SigError::NotCompact);
        }
        let parsed = p256::ecdsa::Signature::from_slice(sig).map_err(|_| SigError::Malformed)?;
        if parsed.normalize_s().is_some() {
            return Err(SigError::HighS);
        }
        let digest: [u8; 32] = Sha256::digest(msg).into();
        key.verifying_key()
            .verify_prehash(&digest, &parsed)
            .map_err(|_| SigError::Invalid)
    }

    #[test]
    fn p256_high_s_twin_is_refused_although_ring_accepts_it() {
        let key = PrivateKey::from_bytes(Curve::P256, &[0x11; 32]).unwrap();
        let PublicKey::P256(public) = key.public_key() else {
            panic!("a P256 private key gave a non-P256 public key")
        };
        let sig = key.sign(b"msg");
        let twin = negate_s(Curve::P256, &sig);
        // ring alone takes the malleated twin: the explicit check is what refuses it.
        assert!(ring_plain(&public, b"msg", &sig));
        assert!(ring_plain(&public, b"msg", &twin));
        let public = PublicKey::P256(public);
        assert_eq!(public.verify(b"msg", &sig), Ok(()));
        assert_eq!(public.verify(b"msg", &twin), Err(SigError::HighS));
        let digest: [u8; 32] = Sha256::digest(b"msg").into();
        assert_eq!(public.verify_digest(&digest, &twin), Err(SigError::HighS));
        // A high-S signature that would not verify anyway is still reported as high-S.
        assert_eq!(public.verify(b"other", &twin), Err(SigError::HighS));
    }

    #[test]
    fn p256_out_of_range_scalars_are_malformed() {
        let key = PrivateKey::from_bytes(Curve::P256, &[0x22; 32]).unwrap();
        let public = key.public_key();
        let sig = key.sign(b"msg");
        let n = negate_s(Curve::P256, &[0u8; 64]);
        for bad in [
            [&[0u8; 32][..], &sig[32..]].concat(),  // r = 0
            [&sig[..32], &[0u8; 32][..]].concat(),  // s = 0
            [&n[32..], &sig[32..]].concat(),        // r = n
            [&sig[..32], &[0xff; 32][..]].concat(), // s > n
        ] {
            assert_eq!(public.verify(b"msg", &bad), Err(SigError::Malformed));
        }
    }

    #[test]
    fn p256_key_keeps_both_encodings_consistent() {
        for seed in 1u8..=8 {
            let key = PrivateKey::from_bytes(Curve::P256, &[seed; 32]).unwrap();
            let PublicKey::P256(public) = key.public_key() else {
                panic!("not P-256")
            };
            let encoded = public.verifying_key().to_encoded_point(false);
            assert_eq!(encoded.as_bytes(), public.uncompressed());
            let compressed = public.verifying_key().to_encoded_point(true);
            let public = PublicKey::P256(public);
            assert_eq!(compressed.as_bytes(), public.to_compressed());
            assert_eq!(
                PublicKey::from_sec1(Curve::P256, &public.to_compressed()),
                Ok(public.clone())
            );
            assert_eq!(
                PublicKey::from_sec1(Curve::P256, &public.to_uncompressed()),
                Ok(public)
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// ring (the hot path) and the RustCrypto crate agree, plain and under the atproto
        /// rule, on random keys and messages: the honest signature, its high-S twin, a
        /// one-bit flip anywhere in r‖s, r and s swapped, and a signature over another message.
        #[test]
        fn ring_and_rustcrypto_agree_on_p256(
            secret in proptest::array::uniform32(any::<u8>()),
            msg in proptest::collection::vec(any::<u8>(), 0..300),
            flip in 0usize..512,
            other in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let Ok(key) = PrivateKey::from_bytes(Curve::P256, &secret) else {
                return Ok(()); // zero or ≥ n: not a key (probability ~2^-32 per case)
            };
            let PublicKey::P256(p256_key) = key.public_key() else {
                panic!("not P-256")
            };
            let public = PublicKey::P256(p256_key.clone());
            let sig = key.sign(&msg);
            let mut flipped = sig;
            flipped[flip / 8] ^= 1 << (flip % 8);
            let mut swapped = [0u8; 64];
            swapped[..32].copy_from_slice(&sig[32..]);
            swapped[32..].copy_from_slice(&sig[..32]);
            let candidates = [
                sig,
                negate_s(Curve::P256, &sig),
                flipped,
                swapped,
                key.sign(&other),
            ];
            let digest: [u8; 32] = Sha256::digest(&msg).into();
            for candidate in candidates {
                prop_assert_eq!(
                    ring_plain(&p256_key, &msg, &candidate),
                    rustcrypto_plain(&p256_key, &msg, &candidate)
                );
                let expected = rustcrypto_atproto(&p256_key, &msg, &candidate);
                prop_assert_eq!(public.verify(&msg, &candidate), expected);
                prop_assert_eq!(public.verify_digest(&digest, &candidate), expected);
            }
            prop_assert_eq!(public.verify(&msg, &sig), Ok(()));
            prop_assert_eq!(public.verify(&msg, &negate_s(Curve::P256, &sig)), Err(SigError::HighS));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn key_parsers_never_panic(s in "\\PC{0,140}") {
            let _ = PublicKey::from_did_key(&s);
            let _ = PublicKey::from_multikey(&s);
            let _ = PublicKey::from_legacy_multibase(Curve::K256, &s);
            let _ = PublicKey::from_legacy_multibase(Curve::P256, &s);
        }

        #[test]
        fn base58_shaped_keys_never_panic(s in "z[1-9A-HJ-NP-Za-km-z]{0,100}") {
            for t in [TYPE_MULTIKEY, TYPE_LEGACY_K256, TYPE_LEGACY_P256] {
                if let Ok(key) = PublicKey::from_verification_method(t, &s) {
                    prop_assert_eq!(PublicKey::from_multikey(&key.to_multikey()), Ok(key));
                }
            }
        }

        #[test]
        fn sec1_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..70), prefix in 0u8..8) {
            let mut point = bytes;
            if let Some(first) = point.first_mut() { *first = prefix; }
            let _ = PublicKey::from_sec1(Curve::K256, &point);
            let _ = PublicKey::from_sec1(Curve::P256, &point);
        }

        #[test]
        fn arbitrary_signatures_never_panic(sig in proptest::collection::vec(any::<u8>(), 0..80)) {
            let key = PublicKey::from_multikey("zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF").unwrap();
            prop_assert!(key.verify(b"x", &sig).is_err());
            let key = PublicKey::from_did_key("did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo").unwrap();
            prop_assert!(key.verify(b"x", &sig).is_err());
        }
    }
}
