//! CAR v1 reader and writer, zero-copy over `bytes::Bytes`.
//!
//! Written here rather than taken from a crate because the relay needs exactly this: hard
//! limits checked before any allocation, every block re-hashed against its CID, duplicate and
//! unreferenced blocks tolerated, and blocks handed out as slices of the frame's own buffer so
//! a `#commit` is never copied on its way through validation.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::cbor::{self, DecodeLimits};
use super::cid::{Cid, SHA2_256, cid_with_codec};

/// Limits for untrusted CAR input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarLimits {
    pub max_bytes: usize,
    pub max_blocks: usize,
}

impl Default for CarLimits {
    /// The `#commit.blocks` limits: 2,000,000 bytes, and a block count no real diff reaches.
    fn default() -> Self {
        CarLimits {
            max_bytes: 2_000_000,
            max_blocks: 10_000,
        }
    }
}

/// Largest CAR header accepted (a header holds a version and a few root CIDs).
const MAX_HEADER_LEN: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarError {
    #[error("CAR larger than the limit")]
    TooLarge,
    #[error("CAR holds more blocks than the limit")]
    TooManyBlocks,
    #[error("bad CAR header: {0}")]
    Header(&'static str),
    #[error("CAR has no roots")]
    NoRoots,
    #[error("bad varint in CAR")]
    BadVarint,
    #[error("CAR ends inside a section")]
    Truncated,
    #[error("bad CID in CAR block")]
    BadCid,
    #[error("CAR block hash is not sha2-256")]
    UnsupportedHash,
    #[error("CAR block does not match its CID")]
    HashMismatch,
}

impl CarError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CarError::TooLarge => "car-too-large",
            CarError::TooManyBlocks => "car-too-many-blocks",
            CarError::Header(_) => "car-bad-header",
            CarError::NoRoots => "car-no-roots",
            CarError::BadVarint => "car-bad-varint",
            CarError::Truncated => "car-truncated",
            CarError::BadCid => "car-bad-cid",
            CarError::UnsupportedHash => "car-unsupported-hash",
            CarError::HashMismatch => "car-hash-mismatch",
        }
    }
}

/// Hash builder for CID-keyed maps and sets on the validation path.
///
/// Why not the default SipHash: a CID is ~50 bytes to hash and a commit's validation does
/// dozens of lookups (every MST link of every loaded node), so SipHash was ~10% of loading a
/// partial tree. This hasher mixes 8 bytes at a time with a folded 64×64→128-bit multiply,
/// keyed with a per-process random seed. HashDoS: the keys that get inserted are CIDs of
/// hash-checked blocks, i.e. real SHA-256 digests an attacker cannot choose, and the seed hides
/// the bucket layout; only lookups use arbitrary CIDs, which cannot degrade the table.
#[derive(Debug, Clone, Copy)]
pub struct CidHashBuilder {
    seed: u64,
}

impl Default for CidHashBuilder {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        CidHashBuilder {
            seed: *SEED.get_or_init(rand::random::<u64>),
        }
    }
}

impl std::hash::BuildHasher for CidHashBuilder {
    type Hasher = CidHasher;
    fn build_hasher(&self) -> CidHasher {
        CidHasher { state: self.seed }
    }
}

/// See [`CidHashBuilder`].
#[derive(Debug, Clone, Copy)]
pub struct CidHasher {
    state: u64,
}

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

impl std::hash::Hasher for CidHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.state = folded_multiply(self.state ^ i, MIX);
    }
    fn finish(&self) -> u64 {
        folded_multiply(self.state, MIX.rotate_left(29))
    }
}

/// Blocks by CID. Values are slices of the buffer the CAR was read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockMap {
    blocks: HashMap<Cid, Bytes, CidHashBuilder>,
    /// Sum of the blocks' lengths: what work derived from the blocks is budgeted against.
    bytes: usize,
}

impl BlockMap {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn get(&self, cid: &Cid) -> Option<&Bytes> {
        self.blocks.get(cid)
    }
    pub fn contains(&self, cid: &Cid) -> bool {
        self.blocks.contains_key(cid)
    }
    /// Inserts a block; a block already present is kept (identical content, same CID).
    pub fn insert(&mut self, cid: Cid, block: Bytes) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.blocks.entry(cid) {
            self.bytes = self.bytes.saturating_add(block.len());
            slot.insert(block);
        }
    }
    /// Total length of the blocks held.
    pub fn total_bytes(&self) -> usize {
        self.bytes
    }
    pub fn len(&self) -> usize {
        self.blocks.len()
    }
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&Cid, &Bytes)> {
        self.blocks.iter()
    }
}

/// A parsed CAR: its roots and its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Car {
    pub roots: Vec<Cid>,
    pub blocks: BlockMap,
}

#[derive(Serialize, Deserialize)]
struct Header {
    roots: Vec<Cid>,
    version: u64,
}

/// Reads an unsigned LEB128 varint of at most 9 bytes (63 bits) at `pos`.
fn read_varint(bytes: &[u8], pos: usize) -> Result<(u64, usize), CarError> {
    let mut value = 0u64;
    for i in 0..9 {
        let b = *bytes.get(pos + i).ok_or(CarError::Truncated)?;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(CarError::BadVarint)
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Parses a CAR v1 from untrusted `bytes` and re-hashes every block against its CID.
pub fn read_car(bytes: Bytes, limits: &CarLimits) -> Result<Car, CarError> {
    if bytes.len() > limits.max_bytes {
        return Err(CarError::TooLarge);
    }
    let (header_len, n) = read_varint(&bytes, 0)?;
    if header_len == 0 || header_len > MAX_HEADER_LEN {
        return Err(CarError::Header("header length out of range"));
    }
    let header_end = n + header_len as usize;
    let header_bytes = bytes.get(n..header_end).ok_or(CarError::Truncated)?;
    let header_limits = DecodeLimits {
        max_input: MAX_HEADER_LEN as usize,
        max_depth: 4,
        max_collection_len: 64,
    };
    let header: Header = cbor::decode(header_bytes, &header_limits)
        .map_err(|_| CarError::Header("not a CAR header map"))?;
    if header.version != 1 {
        return Err(CarError::Header("version is not 1"));
    }
    if header.roots.is_empty() {
        return Err(CarError::NoRoots);
    }

    let mut blocks = BlockMap::new();
    let mut count = 0usize;
    let mut pos = header_end;
    while pos < bytes.len() {
        count += 1;
        if count > limits.max_blocks {
            return Err(CarError::TooManyBlocks);
        }
        let (section_len, n) = read_varint(&bytes, pos)?;
        pos += n;
        let section_len = usize::try_from(section_len).map_err(|_| CarError::Truncated)?;
        let end = pos.checked_add(section_len).ok_or(CarError::Truncated)?;
        if end > bytes.len() {
            return Err(CarError::Truncated);
        }
        let section = &bytes[pos..end];
        let mut cursor = std::io::Cursor::new(section);
        let cid = Cid::read_bytes(&mut cursor).map_err(|_| CarError::BadCid)?;
        let cid_len = cursor.position() as usize;
        if cid.hash().code() != SHA2_256 || cid.hash().size() != 32 {
            return Err(CarError::UnsupportedHash);
        }
        let data = bytes.slice(pos + cid_len..end);
        if cid_with_codec(cid.codec(), &data).hash() != cid.hash() {
            return Err(CarError::HashMismatch);
        }
        blocks.insert(cid, data);
        pos = end;
    }
    Ok(Car {
        roots: header.roots,
        blocks,
    })
}

/// Writes a CAR v1 with `roots` and `blocks`, in the order given.
pub fn write_car<'a>(
    roots: &[Cid],
    blocks: impl IntoIterator<Item = (&'a Cid, &'a [u8])>,
) -> Vec<u8> {
    let header = Header {
        roots: roots.to_vec(),
        version: 1,
    };
    // Encoding a list of CIDs and an integer cannot fail.
    let header_bytes = cbor::encode(&header).unwrap_or_default();
    let mut out = Vec::with_capacity(header_bytes.len() + 64);
    write_varint(&mut out, header_bytes.len() as u64);
    out.extend_from_slice(&header_bytes);
    for (cid, data) in blocks {
        let cid_bytes = cid.to_bytes();
        write_varint(&mut out, (cid_bytes.len() + data.len()) as u64);
        out.extend_from_slice(&cid_bytes);
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::cid::{cid_for_dag_cbor, cid_for_raw};
    use proptest::prelude::*;

    fn sample() -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
        let a = vec![0xa1, 0x61, b'a', 0x01];
        let b = b"raw blob".to_vec();
        let blocks = vec![(cid_for_dag_cbor(&a), a), (cid_for_raw(&b), b)];
        (vec![blocks[0].0], blocks)
    }

    #[test]
    fn round_trip_with_duplicates() {
        let (roots, blocks) = sample();
        let mut list: Vec<(&Cid, &[u8])> = blocks.iter().map(|(c, d)| (c, d.as_slice())).collect();
        list.push(list[0]);
        let bytes = Bytes::from(write_car(&roots, list));
        // Header as in PROTOCOL.md §0: `a2 65 "roots" 81 d8 2a 58 25 00 01 71 12 20 …`.
        assert_eq!(&bytes[1..4], &[0xa2, 0x65, b'r']);
        let car = read_car(bytes.clone(), &CarLimits::default()).unwrap();
        assert_eq!(car.roots, roots);
        assert_eq!(car.blocks.len(), 2);
        for (cid, data) in &blocks {
            assert_eq!(
                car.blocks.get(cid).map(|b| b.as_ref()),
                Some(data.as_slice())
            );
        }
        // Zero-copy: the block points into the input buffer.
        let block = car.blocks.get(&roots[0]).unwrap();
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        assert!(range.contains(&(block.as_ptr() as usize)));
    }

    #[test]
    fn rejects_bad_hash_and_limits() {
        let (roots, blocks) = sample();
        let list: Vec<(&Cid, &[u8])> = blocks.iter().map(|(c, d)| (c, d.as_slice())).collect();
        let mut bytes = write_car(&roots, list.clone());
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            read_car(Bytes::from(bytes), &CarLimits::default()),
            Err(CarError::HashMismatch)
        );
        let good = Bytes::from(write_car(&roots, list));
        let tight = CarLimits {
            max_bytes: good.len() - 1,
            max_blocks: 10,
        };
        assert_eq!(read_car(good.clone(), &tight), Err(CarError::TooLarge));
        let few = CarLimits {
            max_bytes: 1000,
            max_blocks: 1,
        };
        assert_eq!(read_car(good.clone(), &few), Err(CarError::TooManyBlocks));
        assert_eq!(
            read_car(good.slice(..good.len() - 2), &CarLimits::default()),
            Err(CarError::Truncated)
        );
        assert_eq!(
            read_car(Bytes::from(write_car(&[], [])), &CarLimits::default()),
            Err(CarError::NoRoots)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = read_car(Bytes::from(bytes), &CarLimits::default());
        }

        #[test]
        fn mutated_cars_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let (roots, blocks) = sample();
            let list: Vec<(&Cid, &[u8])> = blocks.iter().map(|(c, d)| (c, d.as_slice())).collect();
            let mut bytes = write_car(&roots, list);
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            let _ = read_car(Bytes::from(bytes), &CarLimits::default());
        }

        #[test]
        fn write_then_read_round_trips(datas in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)) {
            let blocks: Vec<(Cid, Vec<u8>)> = datas.into_iter().map(|d| (cid_for_raw(&d), d)).collect();
            let roots = vec![blocks[0].0];
            let bytes = write_car(&roots, blocks.iter().map(|(c, d)| (c, d.as_slice())));
            let car = read_car(Bytes::from(bytes), &CarLimits::default()).unwrap();
            prop_assert_eq!(car.roots, roots);
            for (c, d) in &blocks {
                prop_assert_eq!(car.blocks.get(c).map(|b| b.to_vec()), Some(d.clone()));
            }
        }
    }
}
