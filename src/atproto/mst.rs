//! Merkle Search Tree (MST): the sorted key → record-CID map whose root CID is a commit's `data`.
//!
//! Why an owned, in-memory tree with explicit stubs: the relay only ever sees *partial* trees
//! (the CAR slice of one `#commit`), and sync 1.1 verification has to edit such a tree (invert
//! the ops) and recompute its root. Every child link is therefore either a loaded node or a
//! [`Link::Stub`] whose CID is known but whose content is not in the slice. Any operation that
//! has to look inside a stub fails with [`MstError::MissingBlock`]; operations that never touch a
//! stub keep its CID, so the root can still be recomputed exactly. Operations check everything
//! they need *before* mutating (split/merge paths are walked first), so an error leaves the tree
//! unchanged apart from cached CIDs.
//!
//! Loading from untrusted blocks checks what the format promises: strictly increasing keys
//! (within a node and against the bounds inherited from the parent), key depth == node layer,
//! links exactly one layer down, no empty leaves, blessed dag-cbor links, `l`/`t` present, at
//! most [`MAX_ENTRIES_PER_NODE`] entries and keys of at most [`MAX_KEY_LEN`] bytes. Total depth is
//! bounded by construction: a key's depth is at most 128 (256 hash bits / 2) and each link goes
//! down exactly one layer, so recursion never exceeds 129 frames.
//!
//! Loading is also bounded by the bytes it came from. Prefix compression lets a ~24-byte entry
//! stand for a 1,024-byte key, so within every per-node limit 2 MB of nodes could expand to
//! ~100 MB of keys, all hashed for the depth check, before any signature is checked. Every
//! load therefore has a budget of [`LOAD_BUDGET_FACTOR`] bytes of materialised tree (node and
//! entry structs plus full keys) per byte of the block source (at least
//! [`LOAD_BUDGET_FLOOR`]), charged before each key is built; past it the load stops with
//! [`MstError::OverBudget`]. A real slice materialises ~4 bytes per byte of MST nodes (an
//! entry is ~60 bytes on the wire and ~240 in memory) and less per byte of the whole slice,
//! which also carries the commit and record blocks.

use std::collections::HashSet;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::car::{BlockMap, CidHashBuilder};
use super::cbor::write_head;
use super::cid::{Cid, cid_for_dag_cbor, is_blessed_dag_cbor};

/// Longest key accepted (indigo's cap; repo paths are far shorter in practice).
pub const MAX_KEY_LEN: usize = 1024;

/// Most entries one decoded node may hold. With fanout 4 a node of a tree built from random keys
/// holds ~4 entries, and a run of 1024 same-layer keys has probability ≈ (3/4)^1024; only mined
/// keys get there. The cap bounds the work an adversarial node can cause (insert/remove shift
/// entries, decoding allocates them) while leaving every realistic repository valid.
pub const MAX_ENTRIES_PER_NODE: usize = 1024;

/// Largest accepted MST node block (a full node of maximal keys stays far below this).
pub const MAX_NODE_BYTES: usize = 2_000_000;

/// Bytes of tree a load may materialise per byte of its block source (see the module docs).
pub const LOAD_BUDGET_FACTOR: usize = 8;
/// Smallest load budget, so tiny sources (a single node, tests) are never pinched.
pub const LOAD_BUDGET_FLOOR: usize = 64 * 1024;

/// What one decoded entry costs beyond its key bytes, and one node beyond its entries.
const ENTRY_COST: usize = std::mem::size_of::<Entry>();
const NODE_COST: usize = std::mem::size_of::<Node>();

/// Bytes a load may still materialise.
struct Budget {
    left: usize,
}

impl Budget {
    fn for_source(bytes: usize) -> Budget {
        Budget {
            left: bytes
                .saturating_mul(LOAD_BUDGET_FACTOR)
                .max(LOAD_BUDGET_FLOOR),
        }
    }

    fn charge(&mut self, bytes: usize) -> Result<(), MstError> {
        self.left = self.left.checked_sub(bytes).ok_or(MstError::OverBudget)?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MstError {
    #[error("block {0} needed by the operation is not available")]
    MissingBlock(Cid),
    #[error("key is empty or longer than {MAX_KEY_LEN} bytes")]
    InvalidKey,
    #[error("MST node is not valid DAG-CBOR: {0}")]
    NodeDecode(&'static str),
    #[error("MST node has more than {MAX_ENTRIES_PER_NODE} entries")]
    TooManyEntries,
    #[error("MST node entry has a bad prefix length")]
    BadPrefix,
    #[error("MST keys are not strictly increasing")]
    KeyOrder,
    #[error("MST key depth does not match its node's layer")]
    KeyDepth,
    #[error("MST link is not a blessed dag-cbor CID")]
    LinkNotBlessed,
    #[error("MST node is empty where an empty node is not allowed")]
    EmptyNode,
    #[error("MST root is an empty node that only points to a child")]
    UntrimmedRoot,
    #[error("MST node at layer 0 links to a child")]
    LinkBelowLeaf,
    #[error("MST node appears twice in the tree")]
    DuplicateNode,
    #[error("MST nodes expand to more than {LOAD_BUDGET_FACTOR}x the bytes they came from")]
    OverBudget,
    #[error("MST node could not be encoded")]
    Encode,
}

impl MstError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            MstError::MissingBlock(_) => "mst-missing-block",
            MstError::InvalidKey => "mst-invalid-key",
            MstError::NodeDecode(_) => "mst-node-decode",
            MstError::TooManyEntries => "mst-too-many-entries",
            MstError::BadPrefix => "mst-bad-prefix",
            MstError::KeyOrder => "mst-key-order",
            MstError::KeyDepth => "mst-key-depth",
            MstError::LinkNotBlessed => "mst-link-not-blessed",
            MstError::EmptyNode => "mst-empty-node",
            MstError::UntrimmedRoot => "mst-untrimmed-root",
            MstError::LinkBelowLeaf => "mst-link-below-leaf",
            MstError::DuplicateNode => "mst-duplicate-node",
            MstError::OverBudget => "mst-over-budget",
            MstError::Encode => "mst-encode",
        }
    }
}

/// MST depth of a key: leading zero bits of sha256(key), divided by 2 (fanout 4).
pub fn key_depth(key: &[u8]) -> u8 {
    let hash = Sha256::digest(key);
    let mut zeros = 0u32;
    for byte in hash {
        if byte == 0 {
            zeros += 8;
        } else {
            zeros += byte.leading_zeros();
            break;
        }
    }
    (zeros / 2) as u8
}

/// Number of leading bytes `a` and `b` share (the `p` of a node entry).
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn check_key(key: &[u8]) -> Result<(), MstError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(MstError::InvalidKey);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Wire form of a node

/// One node as found on the wire, with prefix compression undone and per-node checks done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedNode {
    pub left: Option<Cid>,
    /// `(full key, value, right subtree)` in strictly increasing key order.
    pub entries: Vec<(Vec<u8>, Cid, Option<Cid>)>,
}

const TRUNCATED: MstError = MstError::NodeDecode("cbor-truncated");
const MALFORMED: MstError = MstError::NodeDecode("cbor-malformed");
const WRONG_SHAPE: MstError = MstError::NodeDecode("not-an-mst-node");
const BAD_LINK: MstError = MstError::NodeDecode("bad-cid-link");

/// A cursor over one node block. Node decoding is written by hand (not serde + the generic
/// scanner) because it runs for every node of every commit slice: a node has a fixed shape,
/// so one bounds-checked pass with no intermediate structs, no recursion and one allocation
/// per key is enough, and it accepts only that shape (unknown, duplicate or missing fields,
/// wrong types, indefinite lengths and trailing bytes are all errors).
struct NodeReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> NodeReader<'a> {
    /// `(major type, argument)` of the next item head.
    fn head(&mut self) -> Result<(u8, u64), MstError> {
        let first = *self.bytes.get(self.pos).ok_or(TRUNCATED)?;
        self.pos += 1;
        let info = first & 0x1f;
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let n = 1usize << (info - 24);
                let arg = self.bytes.get(self.pos..self.pos + n).ok_or(TRUNCATED)?;
                self.pos += n;
                arg.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b))
            }
            _ => return Err(MALFORMED),
        };
        Ok((first >> 5, arg))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], MstError> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .ok_or(TRUNCATED)?;
        let out = self.bytes.get(self.pos..end).ok_or(TRUNCATED)?;
        self.pos = end;
        Ok(out)
    }

    /// A map key (text string).
    fn key(&mut self) -> Result<&'a [u8], MstError> {
        match self.head()? {
            (3, len) => self.take(len),
            _ => Err(MALFORMED),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], MstError> {
        match self.head()? {
            (2, len) => self.take(len),
            _ => Err(WRONG_SHAPE),
        }
    }

    fn uint(&mut self) -> Result<u64, MstError> {
        match self.head()? {
            (0, v) => Ok(v),
            _ => Err(WRONG_SHAPE),
        }
    }

    /// A CID link: tag 42 around a byte string `0x00 ‖ cid`. Returns the CID bytes, checked
    /// but not yet built: a `Cid` is ~90 bytes, so it is built once, where it is stored.
    fn link(&mut self, blessed: bool) -> Result<&'a [u8], MstError> {
        if self.head()? != (6, 42) {
            return Err(WRONG_SHAPE);
        }
        let raw = self.bytes()?;
        let cid = match raw.split_first() {
            Some((0, cid)) => cid,
            _ => return Err(BAD_LINK),
        };
        if !is_blessed_link(cid) {
            let parsed = parse_link_cid(cid)?;
            if blessed && !is_blessed_dag_cbor(&parsed) {
                return Err(MstError::LinkNotBlessed);
            }
        }
        Ok(cid)
    }

    /// A subtree link (blessed dag-cbor) or null.
    fn subtree_or_null(&mut self) -> Result<Option<&'a [u8]>, MstError> {
        if self.bytes.get(self.pos) == Some(&0xf6) {
            self.pos += 1;
            return Ok(None);
        }
        self.link(true).map(Some)
    }

    /// One `{k, p, t, v}` entry map, keys in any order, each exactly once.
    fn entry(&mut self) -> Result<RawEntryFields<'a>, MstError> {
        let (major, fields) = self.head()?;
        if major != 5 || fields != 4 {
            return Err(WRONG_SHAPE);
        }
        let (mut k, mut p, mut t, mut v) = (None, None, None, None);
        for _ in 0..4 {
            match self.key()? {
                b"k" if k.is_none() => k = Some(self.bytes()?),
                b"p" if p.is_none() => p = Some(self.uint()?),
                b"t" if t.is_none() => t = Some(self.subtree_or_null()?),
                b"v" if v.is_none() => v = Some(self.link(false)?),
                _ => return Err(WRONG_SHAPE),
            }
        }
        match (k, p, t, v) {
            (Some(k), Some(p), Some(t), Some(v)) => Ok((k, p, t, v)),
            _ => Err(WRONG_SHAPE),
        }
    }
}

/// `(k, p, t, v)` of one entry as on the wire (CIDs as checked bytes).
type RawEntryFields<'a> = (&'a [u8], u64, Option<&'a [u8]>, &'a [u8]);

/// One entry with its full key; CIDs still as checked bytes.
struct RawEntry<'a> {
    key: Vec<u8>,
    value: &'a [u8],
    right: Option<&'a [u8]>,
}

/// A node block checked for shape, key order and links, borrowing its CIDs from the block.
struct RawNode<'a> {
    left: Option<&'a [u8]>,
    entries: Vec<RawEntry<'a>>,
}

/// CIDv1 + dag-cbor + sha2-256 (32 bytes): the bytes of a blessed MST/commit link.
fn is_blessed_link(cid: &[u8]) -> bool {
    cid.len() == 36 && cid.starts_with(&[0x01, 0x71, 0x12, 0x20])
}

/// CID bytes of a link, all of them consumed. The usual dag-cbor/sha2-256 CIDv1 is built
/// directly; anything else goes through the generic parser.
fn parse_link_cid(bytes: &[u8]) -> Result<Cid, MstError> {
    if let Some(digest) = bytes.strip_prefix(&[0x01, 0x71, 0x12, 0x20])
        && digest.len() == 32
    {
        let hash = cid::multihash::Multihash::<64>::wrap(0x12, digest).map_err(|_| BAD_LINK)?;
        return Ok(Cid::new_v1(0x71, hash));
    }
    let mut rest = bytes;
    let cid = Cid::read_bytes(&mut rest).map_err(|_| BAD_LINK)?;
    if !rest.is_empty() {
        return Err(BAD_LINK);
    }
    Ok(cid)
}

/// Decodes and checks one MST node block (untrusted input). Layer and cross-node key bounds
/// are checked by [`Mst::load`], which knows where the node sits.
pub fn decode_node(bytes: &[u8]) -> Result<DecodedNode, MstError> {
    let raw = decode_raw(bytes, &mut Budget::for_source(bytes.len()))?;
    let left = raw.left.map(parse_link_cid).transpose()?;
    let mut entries = Vec::with_capacity(raw.entries.len());
    for e in raw.entries {
        let right = e.right.map(parse_link_cid).transpose()?;
        entries.push((e.key, parse_link_cid(e.value)?, right));
    }
    Ok(DecodedNode { left, entries })
}

/// Shape, links, prefix compression, key order and key size of one node block; the node and
/// every full key are charged to `budget` before they are built.
fn decode_raw<'a>(bytes: &'a [u8], budget: &mut Budget) -> Result<RawNode<'a>, MstError> {
    if bytes.len() > MAX_NODE_BYTES {
        return Err(MstError::NodeDecode("cbor-too-large"));
    }
    budget.charge(NODE_COST)?;
    let mut r = NodeReader { bytes, pos: 0 };
    let (major, fields) = r.head()?;
    if major != 5 || fields != 2 {
        return Err(WRONG_SHAPE);
    }
    let mut left: Option<Option<&[u8]>> = None;
    let mut entries: Option<Vec<RawEntry<'_>>> = None;
    for _ in 0..2 {
        match r.key()? {
            b"l" if left.is_none() => left = Some(r.subtree_or_null()?),
            b"e" if entries.is_none() => entries = Some(decode_entries(&mut r, budget)?),
            _ => return Err(WRONG_SHAPE),
        }
    }
    if r.pos != bytes.len() {
        return Err(MstError::NodeDecode("cbor-trailing-bytes"));
    }
    match (left, entries) {
        (Some(left), Some(entries)) => Ok(RawNode { left, entries }),
        _ => Err(WRONG_SHAPE),
    }
}

/// The `e` array: undoes prefix compression and checks key order and key size.
fn decode_entries<'a>(
    r: &mut NodeReader<'a>,
    budget: &mut Budget,
) -> Result<Vec<RawEntry<'a>>, MstError> {
    let (major, count) = r.head()?;
    if major != 4 {
        return Err(WRONG_SHAPE);
    }
    if count > MAX_ENTRIES_PER_NODE as u64 {
        return Err(MstError::TooManyEntries);
    }
    // count <= MAX_ENTRIES_PER_NODE, so the cast is lossless; an entry takes at least 15
    // bytes, so a short block cannot make us reserve for entries it cannot hold.
    let room = (r.bytes.len() - r.pos.min(r.bytes.len())) / 15;
    let mut entries: Vec<RawEntry<'a>> = Vec::with_capacity((count as usize).min(room));
    for _ in 0..count {
        let (suffix, p, right, value) = r.entry()?;
        let prefix = usize::try_from(p).map_err(|_| MstError::BadPrefix)?;
        // A prefix longer than the previous key fails below; charging it first is harmless.
        budget.charge(
            ENTRY_COST
                .saturating_add(prefix)
                .saturating_add(suffix.len()),
        )?;
        let key = match entries.last() {
            None => {
                if prefix != 0 {
                    return Err(MstError::BadPrefix);
                }
                suffix.to_vec()
            }
            Some(prev) => {
                let prev = prev.key.as_slice();
                if prefix > prev.len() || prefix + suffix.len() > MAX_KEY_LEN {
                    return Err(MstError::BadPrefix);
                }
                let mut key = Vec::with_capacity(prefix + suffix.len());
                key.extend_from_slice(&prev[..prefix]);
                key.extend_from_slice(suffix);
                if key.as_slice() <= prev {
                    return Err(MstError::KeyOrder);
                }
                key
            }
        };
        check_key(&key)?;
        entries.push(RawEntry { key, value, right });
    }
    Ok(entries)
}

/// Canonical encoding of one node from full keys (prefix compression applied here).
///
/// Written by hand rather than through serde: the key order is fixed (`e`, `l`; `k`, `p`, `t`,
/// `v` — length-first), so there is nothing to sort or buffer, and this runs for every modified
/// node on every root recomputation. The known-root tests pin the bytes.
pub fn encode_node(left: Option<Cid>, entries: &[(&[u8], Cid, Option<Cid>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * 100);
    out.extend_from_slice(&[0xa2, 0x61, b'e']);
    write_head(&mut out, 4, entries.len() as u64);
    let mut prev: &[u8] = &[];
    for (key, value, right) in entries {
        let p = common_prefix_len(prev, key);
        out.extend_from_slice(&[0xa4, 0x61, b'k']);
        write_head(&mut out, 2, (key.len() - p) as u64);
        out.extend_from_slice(&key[p..]);
        out.extend_from_slice(&[0x61, b'p']);
        write_head(&mut out, 0, p as u64);
        out.extend_from_slice(&[0x61, b't']);
        write_link(&mut out, right.as_ref());
        out.extend_from_slice(&[0x61, b'v']);
        write_link(&mut out, Some(value));
        prev = key;
    }
    out.extend_from_slice(&[0x61, b'l']);
    write_link(&mut out, left.as_ref());
    out
}

/// A CID link (tag 42, bytes `0x00 ‖ cid`) or null.
fn write_link(out: &mut Vec<u8>, cid: Option<&Cid>) {
    match cid {
        None => out.push(0xf6),
        Some(cid) if is_blessed_dag_cbor(cid) => {
            // The usual link (CIDv1, dag-cbor, sha2-256): 37 bytes, written without varints.
            out.extend_from_slice(&[0xd8, 0x2a, 0x58, 37, 0x00, 0x01, 0x71, 0x12, 0x20]);
            out.extend_from_slice(cid.hash().digest());
        }
        Some(cid) => {
            out.extend_from_slice(&[0xd8, 0x2a]);
            write_head(out, 2, cid.encoded_len() as u64 + 1);
            out.push(0x00);
            // Writing into a Vec cannot fail.
            let _ = cid.write_bytes(&mut *out);
        }
    }
}

// ------------------------------------------------------------------------------------------
// In-memory tree

/// A child pointer: a loaded node, or only the CID of a node not in the block source.
#[derive(Debug, Clone)]
enum Link {
    Stub(Cid),
    Node(Box<Node>),
}

#[derive(Debug, Clone)]
struct Entry {
    key: Box<[u8]>,
    value: Cid,
    right: Option<Link>,
}

#[derive(Debug, Clone)]
struct Node {
    layer: u8,
    left: Option<Link>,
    entries: Vec<Entry>,
    /// Cached CID; `None` after a mutation.
    cid: Option<Cid>,
    /// The block this node was loaded from, while unmodified (exported byte-for-byte).
    raw: Option<Bytes>,
}

impl Node {
    fn new(layer: u8) -> Node {
        Node {
            layer,
            left: None,
            entries: Vec::new(),
            cid: None,
            raw: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.left.is_none()
    }

    fn touch(&mut self) {
        self.cid = None;
        self.raw = None;
    }

    fn search(&self, key: &[u8]) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| e.key.as_ref().cmp(key))
    }

    /// The child slot between `entries[i-1]` and `entries[i]`.
    fn slot(&self, i: usize) -> &Option<Link> {
        if i == 0 {
            &self.left
        } else {
            &self.entries[i - 1].right
        }
    }

    fn slot_mut(&mut self, i: usize) -> &mut Option<Link> {
        if i == 0 {
            &mut self.left
        } else {
            &mut self.entries[i - 1].right
        }
    }

    fn rightmost_slot(&self) -> &Option<Link> {
        self.slot(self.entries.len())
    }

    fn rightmost_slot_mut(&mut self) -> &mut Option<Link> {
        self.slot_mut(self.entries.len())
    }

    fn ensure_cid(&mut self) -> Cid {
        if let Some(cid) = self.cid {
            return cid;
        }
        let bytes = self.encode();
        let cid = cid_for_dag_cbor(&bytes);
        self.cid = Some(cid);
        cid
    }

    fn encode(&mut self) -> Vec<u8> {
        let left = self.left.as_mut().map(link_cid);
        let mut rights = Vec::with_capacity(self.entries.len());
        for e in &mut self.entries {
            rights.push(e.right.as_mut().map(link_cid));
        }
        let entries: Vec<(&[u8], Cid, Option<Cid>)> = self
            .entries
            .iter()
            .zip(rights)
            .map(|(e, r)| (e.key.as_ref(), e.value, r))
            .collect();
        encode_node(left, &entries)
    }

    /// CID and block bytes (the original bytes if the node is unmodified).
    fn block(&mut self) -> (Cid, Vec<u8>) {
        let cid = self.ensure_cid();
        match &self.raw {
            Some(raw) => (cid, raw.to_vec()),
            None => (cid, self.encode()),
        }
    }
}

fn link_cid(link: &mut Link) -> Cid {
    match link {
        Link::Stub(cid) => *cid,
        Link::Node(node) => node.ensure_cid(),
    }
}

/// Chain of nodes from `layer` down to `depth`, holding one key at `depth`.
fn chain(layer: u8, key: &[u8], value: Cid, depth: u8) -> Node {
    let mut node = Node::new(depth);
    node.entries.push(Entry {
        key: key.into(),
        value,
        right: None,
    });
    let mut l = depth;
    while l < layer {
        l += 1;
        let mut parent = Node::new(l);
        parent.left = Some(Link::Node(Box::new(node)));
        node = parent;
    }
    node
}

/// Fails if splitting `link` around `key` would need a block that is not loaded.
fn check_split(mut link: &Option<Link>, key: &[u8]) -> Result<(), MstError> {
    loop {
        match link {
            None => return Ok(()),
            Some(Link::Stub(cid)) => return Err(MstError::MissingBlock(*cid)),
            Some(Link::Node(node)) => {
                let i = node.search(key).unwrap_or_else(|i| i);
                link = node.slot(i);
            }
        }
    }
}

/// Splits a subtree (without `key`) into the parts before and after `key`.
fn split(link: Option<Link>, key: &[u8]) -> Result<(Option<Link>, Option<Link>), MstError> {
    let mut node = match link {
        None => return Ok((None, None)),
        Some(Link::Stub(cid)) => return Err(MstError::MissingBlock(cid)),
        Some(Link::Node(node)) => node,
    };
    node.touch();
    let i = node.search(key).unwrap_or_else(|i| i);
    let spanning = node.slot_mut(i).take();
    let (lower_left, lower_right) = split(spanning, key)?;
    let mut right = Node::new(node.layer);
    right.entries = node.entries.split_off(i);
    right.left = lower_right;
    *node.slot_mut(i) = lower_left;
    let wrap = |n: Box<Node>| {
        if n.is_empty() {
            None
        } else {
            Some(Link::Node(n))
        }
    };
    Ok((wrap(node), wrap(Box::new(right))))
}

/// Fails if merging `a` and `b` would need a block that is not loaded.
fn check_merge(mut a: &Option<Link>, mut b: &Option<Link>) -> Result<(), MstError> {
    loop {
        match (a, b) {
            (None, _) | (_, None) => return Ok(()),
            (Some(Link::Stub(cid)), _) | (_, Some(Link::Stub(cid))) => {
                return Err(MstError::MissingBlock(*cid));
            }
            (Some(Link::Node(na)), Some(Link::Node(nb))) => {
                a = na.rightmost_slot();
                b = &nb.left;
            }
        }
    }
}

/// Joins two adjacent subtrees of the same layer (all keys of `a` < all keys of `b`).
fn merge(a: Option<Link>, b: Option<Link>) -> Result<Option<Link>, MstError> {
    match (a, b) {
        (None, x) | (x, None) => Ok(x),
        (Some(Link::Stub(cid)), _) | (_, Some(Link::Stub(cid))) => Err(MstError::MissingBlock(cid)),
        (Some(Link::Node(mut a)), Some(Link::Node(mut b))) => {
            a.touch();
            let seam_b = b.left.take();
            let seam_a = a.rightmost_slot_mut().take();
            *a.rightmost_slot_mut() = merge(seam_a, seam_b)?;
            a.entries.append(&mut b.entries);
            Ok(Some(Link::Node(a)))
        }
    }
}

fn put(node: &mut Node, key: &[u8], value: Cid, depth: u8) -> Result<Option<Cid>, MstError> {
    match node.search(key) {
        Ok(i) => {
            let old = node.entries[i].value;
            if old != value {
                node.touch();
                node.entries[i].value = value;
            }
            Ok(Some(old))
        }
        Err(i) if depth == node.layer => {
            check_split(node.slot(i), key)?;
            node.touch();
            let spanning = node.slot_mut(i).take();
            let (left, right) = split(spanning, key)?;
            *node.slot_mut(i) = left;
            node.entries.insert(
                i,
                Entry {
                    key: key.into(),
                    value,
                    right,
                },
            );
            Ok(None)
        }
        Err(i) => {
            let below = node.layer - 1;
            let slot = node.slot_mut(i);
            let result = match slot {
                None => {
                    *slot = Some(Link::Node(Box::new(chain(below, key, value, depth))));
                    None
                }
                Some(Link::Stub(cid)) => return Err(MstError::MissingBlock(*cid)),
                Some(Link::Node(child)) => put(child, key, value, depth)?,
            };
            node.touch();
            Ok(result)
        }
    }
}

fn remove(node: &mut Node, key: &[u8], depth: u8) -> Result<Option<Cid>, MstError> {
    match node.search(key) {
        Ok(i) if depth == node.layer => {
            check_merge(node.slot(i), &node.entries[i].right)?;
            node.touch();
            let entry = node.entries.remove(i);
            let slot = node.slot_mut(i);
            let before = slot.take();
            *slot = merge(before, entry.right)?;
            Ok(Some(entry.value))
        }
        Ok(_) => Ok(None),
        Err(_) if depth == node.layer => Ok(None),
        Err(i) => {
            let slot = node.slot_mut(i);
            let (removed, now_empty) = match slot {
                None => return Ok(None),
                Some(Link::Stub(cid)) => return Err(MstError::MissingBlock(*cid)),
                Some(Link::Node(child)) => {
                    let removed = remove(child, key, depth)?;
                    (removed, child.is_empty())
                }
            };
            if removed.is_some() {
                if now_empty {
                    *slot = None;
                }
                node.touch();
            }
            Ok(removed)
        }
    }
}

/// Collects node blocks, deduplicated, in the order first seen.
#[derive(Default)]
struct BlockCollector {
    seen: HashSet<Cid>,
    blocks: Vec<(Cid, Vec<u8>)>,
}

impl BlockCollector {
    fn add(&mut self, node: &mut Node) {
        let cid = node.ensure_cid();
        if self.seen.insert(cid) {
            self.blocks.push(node.block());
        }
    }
}

fn node_of(link: &mut Option<Link>) -> Result<Option<&mut Node>, MstError> {
    match link {
        None => Ok(None),
        Some(Link::Stub(cid)) => Err(MstError::MissingBlock(*cid)),
        Some(Link::Node(node)) => Ok(Some(node)),
    }
}

/// Path to `key` and, where it is, the spines of both neighbouring subtrees: every node that
/// inverting an insert or a removal of `key` may need (the "covering proof").
fn proof_for_key(node: &mut Node, key: &[u8], out: &mut BlockCollector) -> Result<(), MstError> {
    out.add(node);
    match node.search(key) {
        Ok(i) => {
            let mut left = node_of(node.slot_mut(i))?;
            while let Some(n) = left {
                out.add(n);
                left = node_of(n.rightmost_slot_mut())?;
            }
            let mut right = node_of(&mut node.entries[i].right)?;
            while let Some(n) = right {
                out.add(n);
                right = node_of(&mut n.left)?;
            }
            Ok(())
        }
        Err(i) => match node_of(node.slot_mut(i))? {
            None => Ok(()),
            Some(child) => proof_for_key(child, key, out),
        },
    }
}

fn collect_all(node: &mut Node, out: &mut BlockCollector) {
    out.add(node);
    if let Some(Link::Node(n)) = &mut node.left {
        collect_all(n, out);
    }
    for e in &mut node.entries {
        if let Some(Link::Node(n)) = &mut e.right {
            collect_all(n, out);
        }
    }
}

fn collect_cids(node: &mut Node, out: &mut HashSet<Cid>) {
    out.insert(node.ensure_cid());
    let links =
        std::iter::once(&mut node.left).chain(node.entries.iter_mut().map(|e| &mut e.right));
    for link in links.flatten() {
        match link {
            Link::Stub(cid) => {
                out.insert(*cid);
            }
            Link::Node(n) => collect_cids(n, out),
        }
    }
}

/// Nodes of `node`'s subtree whose CID is not in `old`.
fn collect_new(node: &mut Node, old: &HashSet<Cid>, out: &mut BlockCollector) {
    if old.contains(&node.ensure_cid()) {
        return;
    }
    out.add(node);
    if let Some(Link::Node(n)) = &mut node.left {
        collect_new(n, old, out);
    }
    for e in &mut node.entries {
        if let Some(Link::Node(n)) = &mut e.right {
            collect_new(n, old, out);
        }
    }
}

fn collect_entries(link: Option<&Link>, out: &mut Vec<(Vec<u8>, Cid)>) -> Result<(), MstError> {
    match link {
        None => Ok(()),
        Some(Link::Stub(cid)) => Err(MstError::MissingBlock(*cid)),
        Some(Link::Node(node)) => {
            collect_entries(node.left.as_ref(), out)?;
            for e in &node.entries {
                out.push((e.key.to_vec(), e.value));
                collect_entries(e.right.as_ref(), out)?;
            }
            Ok(())
        }
    }
}

struct Loader<'a> {
    blocks: &'a BlockMap,
    visited: HashSet<Cid, CidHashBuilder>,
    budget: Budget,
}

impl Loader<'_> {
    fn link(
        &mut self,
        cid: Cid,
        layer: u8,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Result<Link, MstError> {
        match self.blocks.get(&cid) {
            None => Ok(Link::Stub(cid)),
            Some(bytes) => Ok(Link::Node(Box::new(self.node(
                cid,
                bytes.clone(),
                Some(layer),
                lo,
                hi,
            )?))),
        }
    }

    fn node(
        &mut self,
        cid: Cid,
        bytes: Bytes,
        layer: Option<u8>,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Result<Node, MstError> {
        if !is_blessed_dag_cbor(&cid) {
            return Err(MstError::LinkNotBlessed);
        }
        if !self.visited.insert(cid) {
            return Err(MstError::DuplicateNode);
        }
        let decoded = decode_raw(&bytes, &mut self.budget)?;
        let layer = match (layer, decoded.entries.first()) {
            (Some(layer), _) => {
                if decoded.entries.is_empty() && decoded.left.is_none() {
                    return Err(MstError::EmptyNode);
                }
                layer
            }
            (None, Some(first)) => key_depth(&first.key),
            (None, None) if decoded.left.is_some() => return Err(MstError::UntrimmedRoot),
            (None, None) => 0,
        };
        if let (Some(lo), Some(first)) = (lo, decoded.entries.first())
            && first.key.as_slice() <= lo
        {
            return Err(MstError::KeyOrder);
        }
        if let (Some(hi), Some(last)) = (hi, decoded.entries.last())
            && last.key.as_slice() >= hi
        {
            return Err(MstError::KeyOrder);
        }
        let has_links = decoded.left.is_some() || decoded.entries.iter().any(|e| e.right.is_some());
        if layer == 0 && has_links {
            return Err(MstError::LinkBelowLeaf);
        }
        let mut node = Node::new(layer);
        node.entries.reserve_exact(decoded.entries.len());
        let mut rights = Vec::with_capacity(decoded.entries.len());
        for e in decoded.entries {
            if key_depth(&e.key) != layer {
                return Err(MstError::KeyDepth);
            }
            rights.push(e.right);
            node.entries.push(Entry {
                key: e.key.into_boxed_slice(),
                value: parse_link_cid(e.value)?,
                right: None,
            });
        }
        if let Some(l) = decoded.left {
            let first = node.entries.first().map(|e| e.key.as_ref()).or(hi);
            node.left = Some(self.link(parse_link_cid(l)?, layer - 1, lo, first)?);
        }
        for (i, right) in rights.into_iter().enumerate() {
            if let Some(t) = right {
                let key = node.entries[i].key.as_ref();
                let next = node.entries.get(i + 1).map(|e| e.key.as_ref()).or(hi);
                let link = self.link(parse_link_cid(t)?, layer - 1, Some(key), next)?;
                node.entries[i].right = Some(link);
            }
        }
        node.cid = Some(cid);
        node.raw = Some(bytes);
        Ok(node)
    }
}

/// A (possibly partial) Merkle Search Tree.
#[derive(Debug, Clone)]
pub struct Mst {
    root: Link,
}

impl Default for Mst {
    fn default() -> Self {
        Mst::new()
    }
}

impl Mst {
    /// The empty tree (root `bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm`).
    pub fn new() -> Mst {
        Mst {
            root: Link::Node(Box::new(Node::new(0))),
        }
    }

    /// Builds a complete tree from key/value pairs (later duplicates replace earlier ones).
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a [u8], Cid)>,
    ) -> Result<Mst, MstError> {
        let mut tree = Mst::new();
        for (key, value) in entries {
            tree.insert(key, value)?;
        }
        Ok(tree)
    }

    /// Loads the tree rooted at `root` from `blocks`. Nodes absent from `blocks` become stubs;
    /// the root itself must be present. Blocks are assumed hash-checked (as `car::read_car` does).
    /// What the loaded nodes materialise is bounded by [`LOAD_BUDGET_FACTOR`] times
    /// `blocks.total_bytes()` ([`MstError::OverBudget`]).
    pub fn load(root: Cid, blocks: &BlockMap) -> Result<Mst, MstError> {
        let bytes = blocks
            .get(&root)
            .ok_or(MstError::MissingBlock(root))?
            .clone();
        let mut loader = Loader {
            blocks,
            visited: HashSet::default(),
            budget: Budget::for_source(blocks.total_bytes()),
        };
        let node = loader.node(root, bytes, None, None, None)?;
        Ok(Mst {
            root: Link::Node(Box::new(node)),
        })
    }

    /// The record CID stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Cid>, MstError> {
        check_key(key)?;
        let depth = key_depth(key);
        let mut link = &self.root;
        loop {
            let node = match link {
                Link::Stub(cid) => return Err(MstError::MissingBlock(*cid)),
                Link::Node(node) => node,
            };
            if depth > node.layer {
                return Ok(None);
            }
            match node.search(key) {
                Ok(i) => return Ok(Some(node.entries[i].value)),
                Err(_) if depth == node.layer => return Ok(None),
                Err(i) => match node.slot(i) {
                    None => return Ok(None),
                    Some(next) => link = next,
                },
            }
        }
    }

    /// Sets `key` to `value`; returns the value it replaced, if any.
    pub fn insert(&mut self, key: &[u8], value: Cid) -> Result<Option<Cid>, MstError> {
        check_key(key)?;
        let depth = key_depth(key);
        let root = match &mut self.root {
            Link::Stub(cid) => return Err(MstError::MissingBlock(*cid)),
            Link::Node(node) => node,
        };
        if root.is_empty() {
            **root = chain(depth, key, value, depth);
            return Ok(None);
        }
        if depth <= root.layer {
            return put(root, key, value, depth);
        }
        // The key belongs above the current root: split the whole tree around it and lift
        // both halves to the layer below the new root with empty intermediate nodes.
        let old = Some(std::mem::replace(
            &mut self.root,
            Link::Stub(Cid::default()),
        ));
        if let Err(e) = check_split(&old, key) {
            if let Some(old) = old {
                self.root = old;
            }
            return Err(e);
        }
        let old_layer = match &old {
            Some(Link::Node(n)) => n.layer,
            _ => 0,
        };
        let (left, right) = split(old, key)?;
        let lift = |mut link: Option<Link>| {
            let mut layer = old_layer;
            while link.is_some() && layer + 1 < depth {
                layer += 1;
                let mut parent = Node::new(layer);
                parent.left = link;
                link = Some(Link::Node(Box::new(parent)));
            }
            link
        };
        let mut new_root = Node::new(depth);
        new_root.left = lift(left);
        new_root.entries.push(Entry {
            key: key.into(),
            value,
            right: lift(right),
        });
        self.root = Link::Node(Box::new(new_root));
        Ok(None)
    }

    /// Removes `key`; returns the value it held, if any. Trims the top of the tree, also when
    /// the new top is a stub (partial trees).
    pub fn remove(&mut self, key: &[u8]) -> Result<Option<Cid>, MstError> {
        check_key(key)?;
        let depth = key_depth(key);
        let root = match &mut self.root {
            Link::Stub(cid) => return Err(MstError::MissingBlock(*cid)),
            Link::Node(node) => node,
        };
        if depth > root.layer {
            return Ok(None);
        }
        let removed = remove(root, key, depth)?;
        if removed.is_some() {
            loop {
                match &mut self.root {
                    Link::Node(node) if node.entries.is_empty() => match node.left.take() {
                        Some(child) => self.root = child,
                        None => {
                            self.root = Link::Node(Box::new(Node::new(0)));
                            break;
                        }
                    },
                    _ => break,
                }
            }
        }
        Ok(removed)
    }

    /// Root CID (recomputes only modified nodes).
    pub fn root_cid(&mut self) -> Cid {
        link_cid(&mut self.root)
    }

    /// True when the tree holds no keys (and no stub).
    pub fn is_empty(&self) -> bool {
        matches!(&self.root, Link::Node(n) if n.is_empty())
    }

    /// All key/value pairs in order; fails on a partial tree.
    pub fn entries(&self) -> Result<Vec<(Vec<u8>, Cid)>, MstError> {
        let mut out = Vec::new();
        collect_entries(Some(&self.root), &mut out)?;
        Ok(out)
    }

    /// Every loaded node block `(cid, bytes)`, root first (stubs are skipped).
    pub fn node_blocks(&mut self) -> Vec<(Cid, Vec<u8>)> {
        let mut out = BlockCollector::default();
        if let Link::Node(root) = &mut self.root {
            collect_all(root, &mut out);
        }
        out.blocks
    }

    /// Node blocks a PDS puts in a `#commit` going from `old` to `new` for the changed keys:
    /// every node of `new` that `old` lacks, plus the covering proof of each changed key in
    /// `new` (path and neighbouring spines), which is what inversion needs.
    pub fn commit_diff<'a>(
        old: &mut Mst,
        new: &mut Mst,
        changed_keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<(Cid, Vec<u8>)>, MstError> {
        let mut old_cids = HashSet::new();
        match &mut old.root {
            Link::Stub(cid) => {
                old_cids.insert(*cid);
            }
            Link::Node(n) => collect_cids(n, &mut old_cids),
        }
        let mut out = BlockCollector::default();
        let root = match &mut new.root {
            Link::Stub(cid) => return Err(MstError::MissingBlock(*cid)),
            Link::Node(n) => n,
        };
        collect_new(root, &old_cids, &mut out);
        for key in changed_keys {
            proof_for_key(root, key, &mut out)?;
        }
        Ok(out.blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::cid::cid_for_raw;

    fn leaf() -> Cid {
        cid_for_dag_cbor(b"\xa0")
    }

    /// `{"e": [<entry>], "l": null}` with the entry's raw bytes given.
    fn node_with_entry(entry: &[u8]) -> Vec<u8> {
        let mut out = vec![0xa2, 0x61, b'e', 0x81];
        out.extend_from_slice(entry);
        out.extend_from_slice(&[0x61, b'l', 0xf6]);
        out
    }

    fn link_bytes(cid: &Cid) -> Vec<u8> {
        let mut out = Vec::new();
        write_link(&mut out, Some(cid));
        out
    }

    /// Entry fields in the given order: `(name, raw value)`.
    fn entry(fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0xa0 | fields.len() as u8];
        for (name, value) in fields {
            out.push(0x60 | name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    fn k(key: &[u8]) -> (&'static str, Vec<u8>) {
        let mut v = vec![0x40 | key.len() as u8];
        v.extend_from_slice(key);
        ("k", v)
    }

    #[test]
    fn reader_matches_encoder_and_accepts_any_field_order() {
        let v = leaf();
        let canonical = encode_node(None, &[(b"app.bsky.feed.post/a", v, None)]);
        let decoded = decode_node(&canonical).unwrap();
        assert_eq!(
            decoded.entries,
            vec![(b"app.bsky.feed.post/a".to_vec(), v, None)]
        );
        // Same entry, fields in another order: still a node (CIDs are over the bytes as sent).
        let shuffled = node_with_entry(&entry(&[
            ("v", link_bytes(&v)),
            ("t", vec![0xf6]),
            ("p", vec![0x00]),
            k(b"app.bsky.feed.post/a"),
        ]));
        assert_eq!(decode_node(&shuffled).unwrap(), decoded);
        // Non-shortest integer heads are accepted (not canonical, but well-formed).
        let wide_p = node_with_entry(&entry(&[
            k(b"app.bsky.feed.post/a"),
            ("p", vec![0x18, 0x00]),
            ("t", vec![0xf6]),
            ("v", link_bytes(&v)),
        ]));
        assert_eq!(decode_node(&wide_p).unwrap(), decoded);
    }

    #[test]
    fn reader_rejects_everything_but_the_node_shape() {
        let v = leaf();
        let good = || {
            vec![
                k(b"app.bsky.feed.post/a"),
                ("p", vec![0x00]),
                ("t", vec![0xf6]),
                ("v", link_bytes(&v)),
            ]
        };
        let shape = |fields: Vec<(&str, Vec<u8>)>| decode_node(&node_with_entry(&entry(&fields)));
        assert!(shape(good()).is_ok());
        // Missing field, duplicate field, unknown field.
        assert_eq!(shape(good()[..3].to_vec()), Err(WRONG_SHAPE));
        let mut dup = good();
        dup[2] = ("p", vec![0x00]);
        assert_eq!(shape(dup), Err(WRONG_SHAPE));
        let mut unknown = good();
        unknown[2] = ("x", vec![0xf6]);
        assert_eq!(shape(unknown), Err(WRONG_SHAPE));
        // `k` as text, `p` negative, `v` null, `t` a raw-codec link, a link without the 0x00.
        let mut text_k = good();
        text_k[0] = ("k", vec![0x61, b'a']);
        assert_eq!(shape(text_k), Err(WRONG_SHAPE));
        let mut neg_p = good();
        neg_p[1] = ("p", vec![0x20]);
        assert_eq!(shape(neg_p), Err(WRONG_SHAPE));
        let mut null_v = good();
        null_v[3] = ("v", vec![0xf6]);
        assert_eq!(shape(null_v), Err(WRONG_SHAPE));
        let mut raw_t = good();
        raw_t[2] = ("t", link_bytes(&cid_for_raw(b"x")));
        assert_eq!(shape(raw_t), Err(MstError::LinkNotBlessed));
        let mut no_prefix = good();
        let mut bad_link = link_bytes(&v);
        bad_link[4] = 0x01;
        no_prefix[3] = ("v", bad_link);
        assert_eq!(shape(no_prefix), Err(BAD_LINK));
        // A link with bytes after the CID.
        let mut long = good();
        let mut l = vec![0xd8, 0x2a, 0x58, 38, 0x00];
        l.extend_from_slice(&v.to_bytes());
        l.push(0);
        long[3] = ("v", l);
        assert_eq!(shape(long), Err(BAD_LINK));
        // Trailing bytes, indefinite-length array, a third top-level field, truncation.
        let mut trailing = node_with_entry(&entry(&good()));
        trailing.push(0xf6);
        assert!(decode_node(&trailing).is_err());
        let indefinite = [0xa2, 0x61, b'e', 0x9f, 0xff, 0x61, b'l', 0xf6];
        assert_eq!(decode_node(&indefinite), Err(MALFORMED));
        let three = [0xa3, 0x61, b'e', 0x80, 0x61, b'l', 0xf6, 0x61, b'x', 0xf6];
        assert_eq!(decode_node(&three), Err(WRONG_SHAPE));
        let full = node_with_entry(&entry(&good()));
        for cut in 0..full.len() {
            assert!(decode_node(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// A full leaf whose keys share a 1,000-byte prefix: ~24 bytes per entry on the wire,
    /// ~1.2 KB per entry loaded.
    fn prefix_bomb_leaf() -> Vec<u8> {
        let value = cid_for_raw(b"v");
        let keys: Vec<Vec<u8>> = (0..)
            .map(|n| format!("{}{n:04}", "k".repeat(1000)).into_bytes())
            .filter(|k| key_depth(k) == 0)
            .take(MAX_ENTRIES_PER_NODE)
            .collect();
        let entries: Vec<(&[u8], Cid, Option<Cid>)> =
            keys.iter().map(|k| (k.as_slice(), value, None)).collect();
        encode_node(None, &entries)
    }

    #[test]
    fn load_budget_scales_with_the_source_bytes() {
        let bomb = prefix_bomb_leaf();
        let cid = cid_for_dag_cbor(&bomb);
        assert!(bomb.len() < 60_000, "{}", bomb.len());
        // Alone, the node expands ~20x: refused, also by the standalone decoder.
        assert_eq!(decode_node(&bomb), Err(MstError::OverBudget));
        let mut blocks = BlockMap::new();
        blocks.insert(cid, Bytes::from(bomb.clone()));
        assert_eq!(blocks.total_bytes(), bomb.len());
        assert_eq!(
            Mst::load(cid, &blocks).map(|_| ()),
            Err(MstError::OverBudget)
        );
        assert_eq!(MstError::OverBudget.reason(), "mst-over-budget");
        // The same node in a source large enough to pay for it loads and checks out.
        let padding = vec![0u8; 200_000];
        blocks.insert(cid_for_raw(&padding), Bytes::from(padding));
        let tree = Mst::load(cid, &blocks).expect("within budget");
        assert_eq!(
            tree.entries().expect("complete").len(),
            MAX_ENTRIES_PER_NODE
        );
        // A real tree is well inside the budget: all its nodes and nothing else.
        let keys: Vec<String> = (0..2000u32)
            .map(|i| format!("app.bsky.feed.post/3l{i:011}"))
            .collect();
        let mut real =
            Mst::from_entries(keys.iter().map(|k| (k.as_bytes(), leaf()))).expect("tree");
        let root = real.root_cid();
        let mut only_nodes = BlockMap::new();
        for (cid, block) in real.node_blocks() {
            only_nodes.insert(cid, Bytes::from(block));
        }
        assert!(only_nodes.total_bytes() * LOAD_BUDGET_FACTOR > 2 * LOAD_BUDGET_FLOOR);
        assert!(Mst::load(root, &only_nodes).is_ok());
    }

    #[test]
    fn cid_hasher_keeps_distinct_cids_apart() {
        let mut map = BlockMap::new();
        for i in 0..500u32 {
            let block = Bytes::from(i.to_be_bytes().to_vec());
            map.insert(cid_for_raw(&block), block);
        }
        assert_eq!(map.len(), 500);
        for i in 0..500u32 {
            let bytes = i.to_be_bytes();
            assert_eq!(
                map.get(&cid_for_raw(&bytes)).map(|b| b.as_ref()),
                Some(&bytes[..])
            );
        }
        assert!(!map.contains(&cid_for_dag_cbor(&0u32.to_be_bytes())));
    }
}
