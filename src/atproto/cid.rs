//! CID helpers for the "blessed" atproto form: CIDv1, sha2-256, dag-cbor (0x71) or raw (0x55).
//!
//! Binary CIDs in atproto are always 36 bytes (`01 71|55 12 20 <digest>`), so parsing one
//! from untrusted bytes is a fixed-size check rather than a general multiformat decode.

use sha2::{Digest, Sha256};

pub use ::cid::Cid;
use ::cid::multihash::Multihash;

/// Multicodec of DAG-CBOR / DRISL data (commits, MST nodes, records).
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec of raw bytes (blobs).
pub const RAW: u64 = 0x55;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Length of a blessed binary CID.
pub const BLESSED_CID_LEN: usize = 36;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidError {
    #[error("malformed CID")]
    Malformed,
    #[error("CID is not CIDv1 sha2-256 with the dag-cbor or raw codec")]
    NotBlessed,
}

impl CidError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CidError::Malformed => "cid-malformed",
            CidError::NotBlessed => "cid-not-blessed",
        }
    }
}

fn sha256_cid(codec: u64, bytes: &[u8]) -> Cid {
    let digest = Sha256::digest(bytes);
    // A 32-byte digest always fits the 64-byte multihash the default Cid type holds.
    let hash = Multihash::wrap(SHA2_256, &digest).unwrap_or_default();
    Cid::new_v1(codec, hash)
}

/// CID of a DAG-CBOR block.
pub fn cid_for_dag_cbor(bytes: &[u8]) -> Cid {
    sha256_cid(DAG_CBOR, bytes)
}

/// CID of a raw block (blob).
pub fn cid_for_raw(bytes: &[u8]) -> Cid {
    sha256_cid(RAW, bytes)
}

/// CID of `bytes` with the same codec as `cid`; used to check a block against its CID.
pub fn cid_with_codec(codec: u64, bytes: &[u8]) -> Cid {
    sha256_cid(codec, bytes)
}

/// True when `cid` is CIDv1 + sha2-256 (32 bytes) + dag-cbor: the only form allowed for commit
/// and MST-node links.
pub fn is_blessed_dag_cbor(cid: &Cid) -> bool {
    is_v1_sha256(cid) && cid.codec() == DAG_CBOR
}

/// True when `cid` is CIDv1 + sha2-256 (32 bytes) + raw (blobs).
pub fn is_blessed_raw(cid: &Cid) -> bool {
    is_v1_sha256(cid) && cid.codec() == RAW
}

/// True when `cid` is blessed dag-cbor or blessed raw.
pub fn is_blessed(cid: &Cid) -> bool {
    is_v1_sha256(cid) && (cid.codec() == DAG_CBOR || cid.codec() == RAW)
}

fn is_v1_sha256(cid: &Cid) -> bool {
    cid.version() == ::cid::Version::V1 && cid.hash().code() == SHA2_256 && cid.hash().size() == 32
}

/// Parse a binary CID of any (v1) form, bounded: at most 128 bytes are looked at.
pub fn cid_from_bytes(bytes: &[u8]) -> Result<Cid, CidError> {
    if bytes.len() > 128 {
        return Err(CidError::Malformed);
    }
    let cid = Cid::read_bytes(bytes).map_err(|_| CidError::Malformed)?;
    if cid.encoded_len() != bytes.len() {
        return Err(CidError::Malformed);
    }
    Ok(cid)
}

/// Parse a string CID (`bafy…`). Accepts any valid CID string of at most 256 characters.
pub fn parse_cid_str(s: &str) -> Result<Cid, CidError> {
    if s.is_empty() || s.len() > 256 {
        return Err(CidError::Malformed);
    }
    Cid::try_from(s).map_err(|_| CidError::Malformed)
}

/// Parse a string CID and require the blessed form (dag-cbor or raw, sha2-256, v1).
pub fn parse_blessed_cid_str(s: &str) -> Result<Cid, CidError> {
    let cid = parse_cid_str(s)?;
    if is_blessed(&cid) {
        Ok(cid)
    } else {
        Err(CidError::NotBlessed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_mst_node_cid_matches_the_known_root() {
        // {"e":[],"l":null} encoded canonically: a2 61 65 80 61 6c f6
        let bytes = [0xa2, 0x61, 0x65, 0x80, 0x61, 0x6c, 0xf6];
        assert_eq!(
            cid_for_dag_cbor(&bytes).to_string(),
            "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
        );
    }

    #[test]
    fn blessed_checks() {
        let c = cid_for_dag_cbor(b"x");
        assert!(is_blessed_dag_cbor(&c) && is_blessed(&c) && !is_blessed_raw(&c));
        assert_eq!(c.to_bytes().len(), BLESSED_CID_LEN);
        let r = cid_for_raw(b"x");
        assert!(is_blessed_raw(&r) && !is_blessed_dag_cbor(&r));
        assert!(r.to_string().starts_with("bafkrei"));
        assert_eq!(cid_from_bytes(&c.to_bytes()), Ok(c));
        assert_eq!(parse_blessed_cid_str(&c.to_string()), Ok(c));
        // CIDv0 parses but is not blessed.
        let v0 = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n";
        assert!(parse_cid_str(v0).is_ok());
        assert_eq!(parse_blessed_cid_str(v0), Err(CidError::NotBlessed));
        assert!(cid_from_bytes(&[1, 2, 3]).is_err());
        let mut trailing = c.to_bytes();
        trailing.push(0);
        assert!(cid_from_bytes(&trailing).is_err());
    }
}
