//! Firehose frames (`com.atproto.sync.subscribeRepos`): one binary websocket message is exactly
//! two DAG-CBOR items, a header `{op, t?}` and a body map.
//!
//! Three levels of decoding, because the actors need very different amounts of it:
//! - [`decode_header`] / [`peek_event`]: the Subscriber only needs `op`, `t`, `seq` and the DID.
//!   These walk the items with the bounded scanner and allocate nothing.
//! - [`decode_frame`]: the ValidatorShard gets typed bodies. `blocks` is a zero-copy slice of the
//!   input `Bytes`; strings are small owned `String`s.
//! - [`resequence`]: the Sequencer re-emits an event under the relay's own `seq`. This works on
//!   the raw map, copying every value's bytes as received (PROTOCOL.md §9: unknown fields, null
//!   vs absent, op `prev`, `blocks` all survive byte-for-byte). Only `seq` is replaced and, for
//!   `#commit`, the required `tooBig`/`rebase`/`blobs` are added when missing. Keys are written
//!   in canonical (length-first) order. Rebuilding from typed structs would lose fields.
//! - [`rewrite_account`] / [`strip_identity_handle`]: the ValidatorShard's two other changes
//!   (§9: the relay's own `active`/`status` on `#account`, no unverified `handle` on
//!   `#identity`). They and [`resequence`] share one rewrite (`rewrite_fields`) over the
//!   readers' walker, so all three keep the same bytes and refuse the same frames.
//!
//! Unknown `t` decodes to [`Frame::Unknown`] and unknown `op` to [`Frame::UnknownOp`]: both are
//! counted and skipped by callers, not fatal. Bad framing or bad CBOR is a [`FrameError`].

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};

use super::cbor::{self, CborError, DecodeLimits, write_head};
use super::cid::Cid;
use super::sync11::CommitOp;

/// Hard limit on one websocket message.
pub const MAX_FRAME_BYTES: usize = 5_000_000;
/// Error frame name: the requested cursor is ahead of the stream.
pub const FUTURE_CURSOR: &str = "FutureCursor";
/// Error frame name: the consumer fell too far behind.
pub const CONSUMER_TOO_SLOW: &str = "ConsumerTooSlow";
/// `#info` name sent before replaying from the oldest kept event.
pub const OUTDATED_CURSOR: &str = "OutdatedCursor";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame larger than {MAX_FRAME_BYTES} bytes")]
    TooLarge,
    #[error("bad CBOR in frame: {0}")]
    Cbor(CborError),
    #[error("frame has a header but no body")]
    MissingBody,
    #[error("frame has more than two CBOR items")]
    ExtraItems,
    #[error("frame header is not {{op, t?}}")]
    BadHeader,
    #[error("frame body is not a map")]
    BodyNotMap,
    #[error("frame body map has a duplicate key")]
    DuplicateKey,
    #[error("frame field {0} has the wrong CBOR type")]
    WrongType(&'static str),
    #[error("frame body does not match its type: {0}")]
    BadBody(String),
    #[error("event has no seq to replace")]
    MissingSeq,
    #[error("seq must be a positive integer")]
    BadSeq,
    #[error("frame could not be encoded")]
    Encode,
    #[error("frame is not a {0} event")]
    NotType(&'static str),
}

impl FrameError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooLarge => "frame-too-large",
            FrameError::Cbor(_) => "frame-bad-cbor",
            FrameError::MissingBody => "frame-missing-body",
            FrameError::ExtraItems => "frame-extra-items",
            FrameError::BadHeader => "frame-bad-header",
            FrameError::BodyNotMap => "frame-body-not-map",
            FrameError::DuplicateKey => "frame-duplicate-key",
            FrameError::WrongType(_) => "frame-wrong-type",
            FrameError::BadBody(_) => "frame-bad-body",
            FrameError::MissingSeq => "frame-missing-seq",
            FrameError::BadSeq => "frame-bad-seq",
            FrameError::Encode => "frame-encode",
            FrameError::NotType(_) => "frame-not-type",
        }
    }
}

/// Longest array or map accepted in a frame. The largest legitimate one is `ops` (at most
/// 200 by the lexicon; validation enforces that with its own reason); this cap only keeps a
/// hostile frame from making the typed decoder allocate ~16x its size in op structs.
pub const MAX_FRAME_COLLECTION_LEN: usize = 4096;

fn limits() -> DecodeLimits {
    DecodeLimits {
        max_input: MAX_FRAME_BYTES,
        max_collection_len: MAX_FRAME_COLLECTION_LEN,
        ..DecodeLimits::default()
    }
}

// ------------------------------------------------------------------------------------------
// Minimal CBOR head reading/writing (the scanner has already checked well-formedness).

const MAJOR_UINT: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const MAJOR_TAG: u8 = 6;
const NULL: u8 = 0xf6;

/// `(major, argument, head length)` of the item at `pos`.
fn head(bytes: &[u8], pos: usize) -> Result<(u8, u64, usize), FrameError> {
    let bad = FrameError::Cbor(CborError::Truncated);
    let first = *bytes.get(pos).ok_or(bad.clone())?;
    let major = first >> 5;
    let info = first & 0x1f;
    match info {
        0..=23 => Ok((major, u64::from(info), 1)),
        24..=27 => {
            let n = 1usize << (info - 24);
            let slice = bytes.get(pos + 1..pos + 1 + n).ok_or(bad)?;
            let arg = slice.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b));
            Ok((major, arg, 1 + n))
        }
        _ => Err(FrameError::Cbor(CborError::Malformed("unsupported head"))),
    }
}

/// One top-level entry of a map: the key text, the raw key item and the raw value item.
struct RawEntry<'a> {
    key: &'a str,
    raw_key: &'a [u8],
    raw_value: &'a [u8],
}

/// Splits the map item at the start of `map` into its entries, without decoding values, and
/// returns the map's encoded length. Each value is checked by the bounded scanner; every
/// iteration consumes input or fails, so a hostile count cannot loop longer than the input.
fn map_entries<'a>(
    map: &'a [u8],
    schema: Schema,
) -> Result<(Vec<RawEntry<'a>>, usize), FrameError> {
    let mut out = Vec::new();
    let len = walk_map(map, schema, |e| out.push(e))?;
    Ok((out, len))
}

/// The CBOR type a known body field must have when it holds a value.
///
/// `null` passes this check for every field: serde cannot misread it as a value of another
/// type, and the typed decoder treats it like an absent field (refused where the lexicon
/// requires the field, `None` where it is nullable), while [`resequence`] keeps it as sent
/// (PROTOCOL.md §9). What must never pass is a value of another type, which serde would read
/// as a different value than the other readers see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uint,
    Bool,
    Text,
    Bytes,
    Link,
    Array,
}

impl Kind {
    /// Whether the (scanned, well-formed) item `raw` is `null` or has this type.
    fn admits(self, raw: &[u8]) -> bool {
        let Some(&first) = raw.first() else {
            return false;
        };
        let major = first >> 5;
        first == NULL
            || match self {
                Kind::Uint => major == MAJOR_UINT,
                Kind::Bool => matches!(first, 0xf4 | 0xf5),
                Kind::Text => major == MAJOR_TEXT,
                Kind::Bytes => major == MAJOR_BYTES,
                Kind::Link => matches!(head(raw, 0), Ok((MAJOR_TAG, 42, _))),
                Kind::Array => major == MAJOR_ARRAY,
            }
    }
}

/// The lexicon type of a top-level body field of one known message (PROTOCOL.md §2), with the
/// field's name; `None` for a field the message does not define. A `match` per message type,
/// so looking a key up costs a length switch and one comparison.
type Schema = fn(&str) -> Option<(&'static str, Kind)>;

fn commit_field(key: &str) -> Option<(&'static str, Kind)> {
    Some(match key {
        "seq" => ("seq", Kind::Uint),
        "rebase" => ("rebase", Kind::Bool),
        "tooBig" => ("tooBig", Kind::Bool),
        "repo" => ("repo", Kind::Text),
        "commit" => ("commit", Kind::Link),
        "rev" => ("rev", Kind::Text),
        "since" => ("since", Kind::Text),
        "blocks" => ("blocks", Kind::Bytes),
        "ops" => ("ops", Kind::Array),
        "blobs" => ("blobs", Kind::Array),
        "prevData" => ("prevData", Kind::Link),
        "time" => ("time", Kind::Text),
        _ => return None,
    })
}

fn sync_field(key: &str) -> Option<(&'static str, Kind)> {
    Some(match key {
        "seq" => ("seq", Kind::Uint),
        "did" => ("did", Kind::Text),
        "blocks" => ("blocks", Kind::Bytes),
        "rev" => ("rev", Kind::Text),
        "time" => ("time", Kind::Text),
        _ => return None,
    })
}

fn identity_field(key: &str) -> Option<(&'static str, Kind)> {
    Some(match key {
        "seq" => ("seq", Kind::Uint),
        "did" => ("did", Kind::Text),
        "time" => ("time", Kind::Text),
        "handle" => ("handle", Kind::Text),
        _ => return None,
    })
}

fn account_field(key: &str) -> Option<(&'static str, Kind)> {
    Some(match key {
        "seq" => ("seq", Kind::Uint),
        "did" => ("did", Kind::Text),
        "time" => ("time", Kind::Text),
        "active" => ("active", Kind::Bool),
        "status" => ("status", Kind::Text),
        _ => return None,
    })
}

fn info_field(key: &str) -> Option<(&'static str, Kind)> {
    Some(match key {
        "name" => ("name", Kind::Text),
        "message" => ("message", Kind::Text),
        _ => return None,
    })
}

fn error_field(key: &str) -> Option<(&'static str, Kind)> {
    Some(match key {
        "error" => ("error", Kind::Text),
        "message" => ("message", Kind::Text),
        _ => return None,
    })
}

fn no_field(_: &str) -> Option<(&'static str, Kind)> {
    None
}

/// The field types every reader checks for a frame with this header (none for unknown
/// `op`/`t`, which are skipped).
fn body_schema(header: &FrameHeader<'_>) -> Schema {
    match (header.op, header.t) {
        (-1, _) => error_field,
        (1, Some("#commit")) => commit_field,
        (1, Some("#sync")) => sync_field,
        (1, Some("#identity")) => identity_field,
        (1, Some("#account")) => account_field,
        (1, Some("#info")) => info_field,
        _ => no_field,
    }
}

/// A scanner error as a frame error; a duplicate key keeps its own reason.
fn cbor_error(e: CborError) -> FrameError {
    match e {
        CborError::DuplicateKey => FrameError::DuplicateKey,
        other => FrameError::Cbor(other),
    }
}

/// Calls `visit` for each entry of the map at the start of `map`; returns the map's length.
///
/// This is the one body walk of every reader ([`decode_header`], [`peek_event`],
/// [`decode_frame`], [`resequence`]), so they accept and refuse exactly the same bodies:
/// - the map holds at most [`MAX_FRAME_COLLECTION_LEN`] entries, like every nested collection
///   (the scanner's cap, checked here because the scanner only sees the values; before, only
///   a map out of canonical order reached it, through the re-scan below);
/// - a duplicate key is [`FrameError::DuplicateKey`]. Keys in canonical order are checked
///   against their predecessor; a map out of order is re-checked by the scanner;
/// - a field `schema` knows must have its lexicon type, else [`FrameError::WrongType`].
///   serde would read a byte string or the integers 0/-1 into a text field (see
///   [`cbor::strict`]); checking the major type here, on the raw item every reader sees,
///   makes the cheap readers refuse what the typed decoder refuses, with the same error.
fn walk_map<'a>(
    map: &'a [u8],
    schema: Schema,
    mut visit: impl FnMut(RawEntry<'a>),
) -> Result<usize, FrameError> {
    let (major, count, mut pos) = head(map, 0)?;
    if major != MAJOR_MAP {
        return Err(FrameError::BodyNotMap);
    }
    let lim = limits();
    if count > lim.max_collection_len as u64 {
        return Err(FrameError::Cbor(CborError::CollectionTooLong));
    }
    // Values sit one level below the map: the same depth budget as scanning the whole map.
    let value_lim = DecodeLimits {
        max_depth: lim.max_depth - 1,
        ..lim
    };
    let mut prev_key: Option<&str> = None;
    let mut sorted = true;
    for _ in 0..count {
        let (kmajor, klen, khead) = head(map, pos)?;
        if kmajor != MAJOR_TEXT {
            return Err(FrameError::Cbor(CborError::Malformed("non-text map key")));
        }
        let truncated = FrameError::Cbor(CborError::Truncated);
        let kend = usize::try_from(klen)
            .ok()
            .and_then(|klen| (pos + khead).checked_add(klen))
            .ok_or(truncated.clone())?;
        let key_bytes = map.get(pos + khead..kend).ok_or(truncated)?;
        let key = std::str::from_utf8(key_bytes)
            .map_err(|_| FrameError::Cbor(CborError::Malformed("key not utf-8")))?;
        if let Some(prev) = prev_key {
            match canonical_order(prev, key) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Err(FrameError::DuplicateKey),
                std::cmp::Ordering::Greater => sorted = false,
            }
        }
        prev_key = Some(key);
        let raw_key = &map[pos..kend];
        let vlen = cbor::scan_item(&map[kend..], &value_lim).map_err(cbor_error)?;
        let raw_value = &map[kend..kend + vlen];
        if let Some((name, kind)) = schema(key)
            && !kind.admits(raw_value)
        {
            return Err(FrameError::WrongType(name));
        }
        visit(RawEntry {
            key,
            raw_key,
            raw_value,
        });
        pos = kend + vlen;
    }
    if !sorted {
        cbor::scan_item(&map[..pos], &lim).map_err(cbor_error)?;
    }
    Ok(pos)
}

fn read_uint(raw: &[u8]) -> Option<u64> {
    match head(raw, 0) {
        Ok((MAJOR_UINT, v, _)) => Some(v),
        _ => None,
    }
}

fn read_text(raw: &[u8]) -> Option<&str> {
    match head(raw, 0) {
        Ok((MAJOR_TEXT, len, h)) => {
            let end = h.checked_add(usize::try_from(len).ok()?)?;
            std::str::from_utf8(raw.get(h..end)?).ok()
        }
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Header

/// A decoded frame header and where the body starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader<'a> {
    pub op: i64,
    pub t: Option<&'a str>,
    pub body_offset: usize,
}

#[derive(Deserialize)]
struct HeaderIn<'a> {
    op: i64,
    #[serde(borrow, default, deserialize_with = "cbor::strict::opt_borrowed_text")]
    t: Option<&'a str>,
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<&'a str>,
    op: i64,
}

/// Scans and decodes the header item; the body is not looked at yet.
fn read_header(msg: &[u8]) -> Result<FrameHeader<'_>, FrameError> {
    if msg.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge);
    }
    let lim = limits();
    let header_len = cbor::scan_item(msg, &lim).map_err(cbor_error)?;
    if header_len == msg.len() {
        return Err(FrameError::MissingBody);
    }
    let header: HeaderIn<'_> =
        cbor::decode(&msg[..header_len], &lim).map_err(|_| FrameError::BadHeader)?;
    if header.op == 1 && header.t.is_none() {
        return Err(FrameError::BadHeader);
    }
    Ok(FrameHeader {
        op: header.op,
        t: header.t,
        body_offset: header_len,
    })
}

/// Walks the body (see [`walk_map`]) and checks that nothing follows it.
fn walk_body<'a>(
    msg: &'a [u8],
    header: &FrameHeader<'a>,
    visit: impl FnMut(RawEntry<'a>),
) -> Result<(), FrameError> {
    let body_len = walk_map(&msg[header.body_offset..], body_schema(header), visit)?;
    if header.body_offset + body_len != msg.len() {
        return Err(FrameError::ExtraItems);
    }
    Ok(())
}

/// Checks the framing (exactly two well-formed items within the size limit, the body a map
/// whose known fields have their lexicon types) and decodes the header. Cheap: no body
/// decoding, no allocation.
pub fn decode_header(msg: &[u8]) -> Result<FrameHeader<'_>, FrameError> {
    let header = read_header(msg)?;
    walk_body(msg, &header, |_| {})?;
    Ok(header)
}

/// Header plus the body's top-level entries, with the same checks as [`decode_header`].
fn read_event(msg: &[u8]) -> Result<(FrameHeader<'_>, Vec<RawEntry<'_>>), FrameError> {
    let header = read_header(msg)?;
    let mut entries = Vec::new();
    walk_body(msg, &header, |e| entries.push(e))?;
    Ok((header, entries))
}

/// What the Subscriber needs from a frame without a full decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPeek<'a> {
    pub header: FrameHeader<'a>,
    /// `seq` of the body, when present and an unsigned integer that fits the `i64` of
    /// [`decode_frame`] (a larger one is `None`: the two readers must not disagree).
    pub seq: Option<u64>,
    /// `repo` for `#commit`, `did` for the other types.
    pub did: Option<&'a str>,
}

/// Header plus `seq` and the account DID, by walking the top level of the body map.
pub fn peek_event(msg: &[u8]) -> Result<EventPeek<'_>, FrameError> {
    let header = read_header(msg)?;
    let did_key = if header.t == Some("#commit") {
        "repo"
    } else {
        "did"
    };
    let mut seq = None;
    let mut did = None;
    walk_body(msg, &header, |entry| {
        if entry.key == "seq" {
            seq = read_uint(entry.raw_value).filter(|s| i64::try_from(*s).is_ok());
        } else if entry.key == did_key {
            did = read_text(entry.raw_value);
        }
    })?;
    Ok(EventPeek { header, seq, did })
}

// ------------------------------------------------------------------------------------------
// Typed bodies

fn ser_bytes<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

/// One `#repoOp`. `cid` is required-nullable (written as null when `None`); `prev` is optional
/// (left out when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoOp {
    #[serde(deserialize_with = "cbor::strict::text")]
    pub action: String,
    #[serde(deserialize_with = "cbor::strict::text")]
    pub path: String,
    #[serde(default)]
    pub cid: Option<Cid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Cid>,
}

impl RepoOp {
    /// Borrowed view for `sync11`.
    pub fn as_commit_op(&self) -> CommitOp<'_> {
        CommitOp {
            action: &self.action,
            path: &self.path,
            cid: self.cid,
            prev: self.prev,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitEvent {
    pub seq: i64,
    pub rebase: bool,
    #[serde(rename = "tooBig")]
    pub too_big: bool,
    pub repo: String,
    pub commit: Cid,
    pub rev: String,
    /// Required but nullable on the wire; an absent `since` also decodes to `None`.
    pub since: Option<String>,
    #[serde(serialize_with = "ser_bytes")]
    pub blocks: Bytes,
    pub ops: Vec<RepoOp>,
    /// Deprecated; `null` in the wild decodes to empty.
    pub blobs: Vec<Cid>,
    #[serde(rename = "prevData", skip_serializing_if = "Option::is_none")]
    pub prev_data: Option<Cid>,
    pub time: String,
}

#[derive(Deserialize)]
struct CommitIn<'a> {
    seq: i64,
    #[serde(default)]
    rebase: bool,
    #[serde(rename = "tooBig", default)]
    too_big: bool,
    #[serde(deserialize_with = "cbor::strict::text")]
    repo: String,
    commit: Cid,
    #[serde(deserialize_with = "cbor::strict::text")]
    rev: String,
    #[serde(default, deserialize_with = "cbor::strict::opt_text")]
    since: Option<String>,
    #[serde(borrow, deserialize_with = "cbor::strict::borrowed_bytes")]
    blocks: &'a [u8],
    ops: Vec<RepoOp>,
    #[serde(default)]
    blobs: Option<Vec<Cid>>,
    #[serde(rename = "prevData", default)]
    prev_data: Option<Cid>,
    #[serde(deserialize_with = "cbor::strict::text")]
    time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncEvent {
    pub seq: i64,
    pub did: String,
    #[serde(serialize_with = "ser_bytes")]
    pub blocks: Bytes,
    pub rev: String,
    pub time: String,
}

#[derive(Deserialize)]
struct SyncIn<'a> {
    seq: i64,
    #[serde(deserialize_with = "cbor::strict::text")]
    did: String,
    #[serde(borrow, deserialize_with = "cbor::strict::borrowed_bytes")]
    blocks: &'a [u8],
    #[serde(deserialize_with = "cbor::strict::text")]
    rev: String,
    #[serde(deserialize_with = "cbor::strict::text")]
    time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEvent {
    pub seq: i64,
    #[serde(deserialize_with = "cbor::strict::text")]
    pub did: String,
    #[serde(deserialize_with = "cbor::strict::text")]
    pub time: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cbor::strict::opt_text"
    )]
    pub handle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEvent {
    pub seq: i64,
    #[serde(deserialize_with = "cbor::strict::text")]
    pub did: String,
    #[serde(deserialize_with = "cbor::strict::text")]
    pub time: String,
    pub active: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cbor::strict::opt_text"
    )]
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoEvent {
    #[serde(deserialize_with = "cbor::strict::text")]
    pub name: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cbor::strict::opt_text"
    )]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    #[serde(deserialize_with = "cbor::strict::text")]
    pub error: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cbor::strict::opt_text"
    )]
    pub message: Option<String>,
}

/// A decoded firehose message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Boxed: a commit is several times larger than the other events.
    Commit(Box<CommitEvent>),
    Sync(SyncEvent),
    Identity(IdentityEvent),
    Account(AccountEvent),
    Info(InfoEvent),
    Error(ErrorFrame),
    /// `op = 1` with a type this relay does not know (skip and count).
    Unknown {
        t: String,
    },
    /// An `op` other than 1 / -1 (skip and count).
    UnknownOp {
        op: i64,
    },
}

impl Frame {
    /// Label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Commit(_) => "commit",
            Frame::Sync(_) => "sync",
            Frame::Identity(_) => "identity",
            Frame::Account(_) => "account",
            Frame::Info(_) => "info",
            Frame::Error(_) => "error",
            Frame::Unknown { .. } => "unknown-type",
            Frame::UnknownOp { .. } => "unknown-op",
        }
    }
}

/// Typed decode of a body that [`decode_header`] has already walked: exactly one map, within
/// the limits, no duplicate keys, known top-level fields of their lexicon types. Scanning it
/// a second time would only repeat that work. The structs read every text and bytes field
/// through [`cbor::strict`], which also covers fields below the top level (an op's `action`).
fn body<'a, T: Deserialize<'a>>(scanned: &'a [u8]) -> Result<T, FrameError> {
    serde_ipld_dagcbor::from_slice(scanned).map_err(|e| FrameError::BadBody(e.to_string()))
}

/// Full decode of one binary websocket message.
pub fn decode_frame(msg: &Bytes) -> Result<Frame, FrameError> {
    let header = decode_header(msg)?;
    let raw = &msg[header.body_offset..];
    match (header.op, header.t) {
        (-1, _) => Ok(Frame::Error(body(raw)?)),
        (1, Some("#commit")) => {
            let c: CommitIn<'_> = body(raw)?;
            Ok(Frame::Commit(Box::new(CommitEvent {
                seq: c.seq,
                rebase: c.rebase,
                too_big: c.too_big,
                repo: c.repo,
                commit: c.commit,
                rev: c.rev,
                since: c.since,
                blocks: msg.slice_ref(c.blocks),
                ops: c.ops,
                blobs: c.blobs.unwrap_or_default(),
                prev_data: c.prev_data,
                time: c.time,
            })))
        }
        (1, Some("#sync")) => {
            let s: SyncIn<'_> = body(raw)?;
            Ok(Frame::Sync(SyncEvent {
                seq: s.seq,
                did: s.did,
                blocks: msg.slice_ref(s.blocks),
                rev: s.rev,
                time: s.time,
            }))
        }
        (1, Some("#identity")) => Ok(Frame::Identity(body(raw)?)),
        (1, Some("#account")) => Ok(Frame::Account(body(raw)?)),
        (1, Some("#info")) => Ok(Frame::Info(body(raw)?)),
        (1, Some(t)) => Ok(Frame::Unknown { t: t.to_string() }),
        (op, _) => Ok(Frame::UnknownOp { op }),
    }
}

// ------------------------------------------------------------------------------------------
// Encoding

fn encode_parts<T: Serialize>(op: i64, t: Option<&str>, body: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = cbor::encode(&HeaderOut { t, op }).map_err(|_| FrameError::Encode)?;
    out.extend(cbor::encode(body).map_err(|_| FrameError::Encode)?);
    Ok(out)
}

/// Encodes a typed frame (header + body). Unknown variants cannot be encoded.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    match frame {
        Frame::Commit(b) => encode_parts(1, Some("#commit"), b),
        Frame::Sync(b) => encode_parts(1, Some("#sync"), b),
        Frame::Identity(b) => encode_parts(1, Some("#identity"), b),
        Frame::Account(b) => encode_parts(1, Some("#account"), b),
        Frame::Info(b) => encode_parts(1, Some("#info"), b),
        Frame::Error(b) => encode_parts(-1, None, b),
        Frame::Unknown { .. } | Frame::UnknownOp { .. } => Err(FrameError::Encode),
    }
}

/// The relay's own `#account` event.
pub fn encode_account(
    seq: i64,
    did: &str,
    time: &str,
    active: bool,
    status: Option<&str>,
) -> Result<Vec<u8>, FrameError> {
    encode_frame(&Frame::Account(AccountEvent {
        seq,
        did: did.to_string(),
        time: time.to_string(),
        active,
        status: status.map(str::to_string),
    }))
}

/// An `#info` frame (no seq), e.g. [`OUTDATED_CURSOR`].
pub fn encode_info(name: &str, message: Option<&str>) -> Result<Vec<u8>, FrameError> {
    encode_frame(&Frame::Info(InfoEvent {
        name: name.to_string(),
        message: message.map(str::to_string),
    }))
}

/// An error frame (`op = -1`), e.g. [`FUTURE_CURSOR`] or [`CONSUMER_TOO_SLOW`].
pub fn encode_error(error: &str, message: Option<&str>) -> Result<Vec<u8>, FrameError> {
    encode_frame(&Frame::Error(ErrorFrame {
        error: error.to_string(),
        message: message.map(str::to_string),
    }))
}

fn canonical_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// Writes a map from raw entries in canonical key order; rejects duplicate keys.
fn write_map(out: &mut Vec<u8>, entries: &mut [(&str, Vec<u8>, &[u8])]) -> Result<(), FrameError> {
    entries.sort_by(|a, b| canonical_order(a.0, b.0));
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(FrameError::DuplicateKey);
    }
    write_head(out, MAJOR_MAP, entries.len() as u64);
    for (_, key, value) in entries.iter() {
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    }
    Ok(())
}

fn text_item(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    write_head(&mut out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    out
}

/// One change [`rewrite_fields`] makes to a top-level body field; every field not named keeps
/// its raw bytes.
#[derive(Clone, Copy, Debug)]
enum Change<'v> {
    /// Replace the value, or add the field when it is absent.
    Set(&'v [u8]),
    /// Add the field only when it is absent (the PDS's value wins).
    Default(&'v [u8]),
    /// Remove the field when present.
    Remove,
}

/// The one byte-level rewrite every re-emitting function goes through: walks the frame with
/// the readers' walker ([`read_event`]: same limits, same refusals), copies the header and
/// every body entry not named in `changes` as received, applies `changes`, and writes both
/// maps in canonical key order. The output is at most a few bytes per change longer than the
/// input, so it stays within the frame limit's order of magnitude.
fn rewrite_fields(
    msg: &[u8],
    header: &FrameHeader<'_>,
    entries: &[RawEntry<'_>],
    changes: &[(&'static str, Change<'_>)],
) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(msg.len() + 32);
    let (header_entries, _) =
        map_entries(&msg[..header.body_offset], no_field).map_err(|_| FrameError::BadHeader)?;
    let mut hdr: Vec<(&str, Vec<u8>, &[u8])> = header_entries
        .iter()
        .map(|e| (e.key, e.raw_key.to_vec(), e.raw_value))
        .collect();
    write_map(&mut out, &mut hdr)?;

    let change_of = |key: &str| changes.iter().find(|(k, _)| *k == key).map(|(_, c)| *c);
    let mut fields: Vec<(&str, Vec<u8>, &[u8])> = Vec::with_capacity(entries.len() + changes.len());
    for e in entries {
        match change_of(e.key) {
            Some(Change::Set(value)) => fields.push((e.key, e.raw_key.to_vec(), value)),
            Some(Change::Remove) => {}
            Some(Change::Default(_)) | None => {
                fields.push((e.key, e.raw_key.to_vec(), e.raw_value))
            }
        }
    }
    for &(key, change) in changes {
        if let Change::Set(value) | Change::Default(value) = change
            && !entries.iter().any(|e| e.key == key)
        {
            fields.push((key, text_item(key), value));
        }
    }
    write_map(&mut out, &mut fields)?;
    Ok(out)
}

/// Re-emits an event under a new `seq`, keeping every other byte of every other field as the
/// PDS sent it. For `#commit`, adds `tooBig: false`, `rebase: false` and `blobs: []` when they
/// are missing. Header and body keys come out in canonical order.
pub fn resequence(msg: &[u8], new_seq: i64) -> Result<Vec<u8>, FrameError> {
    if new_seq <= 0 {
        return Err(FrameError::BadSeq);
    }
    let (header, entries) = read_event(msg)?;
    if !entries.iter().any(|e| e.key == "seq") {
        return Err(FrameError::MissingSeq);
    }
    let mut seq_item = Vec::with_capacity(9);
    write_head(&mut seq_item, MAJOR_UINT, new_seq as u64);
    let seq = ("seq", Change::Set(&seq_item));
    if header.op == 1 && header.t == Some("#commit") {
        rewrite_fields(
            msg,
            &header,
            &entries,
            &[
                seq,
                ("tooBig", Change::Default(FALSE)),
                ("rebase", Change::Default(FALSE)),
                ("blobs", Change::Default(EMPTY_ARRAY)),
            ],
        )
    } else {
        rewrite_fields(msg, &header, &entries, &[seq])
    }
}

const FALSE: &[u8] = &[0xf4];
const TRUE: &[u8] = &[0xf5];
const EMPTY_ARRAY: &[u8] = &[0x80];

/// Reads a frame that must be of type `t` (`op = 1`), for the typed rewrites.
fn read_typed<'a>(
    msg: &'a [u8],
    t: &'static str,
) -> Result<(FrameHeader<'a>, Vec<RawEntry<'a>>), FrameError> {
    let (header, entries) = read_event(msg)?;
    if header.op != 1 || header.t != Some(t) {
        return Err(FrameError::NotType(t));
    }
    Ok((header, entries))
}

/// Re-emits an `#account` with the relay's computed `active` and `status` (PROTOCOL.md §7,
/// §9): `active` is replaced (or added), `status` replaced, added, or removed when `None`.
/// Every other field (`seq`, `did`, `time`, fields this relay does not know) keeps its bytes.
pub fn rewrite_account(
    msg: &[u8],
    active: bool,
    status: Option<&str>,
) -> Result<Bytes, FrameError> {
    let (header, entries) = read_typed(msg, "#account")?;
    let status_item = status.map(text_item);
    let status_change = match &status_item {
        Some(item) => Change::Set(item),
        None => Change::Remove,
    };
    let active_item = if active { TRUE } else { FALSE };
    let out = rewrite_fields(
        msg,
        &header,
        &entries,
        &[
            ("active", Change::Set(active_item)),
            ("status", status_change),
        ],
    )?;
    Ok(Bytes::from(out))
}

/// Re-emits an `#identity` without its `handle` (PROTOCOL.md §6: a handle the DID document
/// does not declare is not broadcast). Every other field keeps its bytes; a frame with no
/// handle comes out with the same fields.
pub fn strip_identity_handle(msg: &[u8]) -> Result<Bytes, FrameError> {
    let (header, entries) = read_typed(msg, "#identity")?;
    let out = rewrite_fields(msg, &header, &entries, &[("handle", Change::Remove)])?;
    Ok(Bytes::from(out))
}
