//! Bounded DAG-CBOR (DRISL) decoding and canonical encoding.
//!
//! Everything a PDS sends is untrusted. Before any bytes reach `serde_ipld_dagcbor` they are
//! pre-scanned by [`scan_item`], a small iterative checker (no recursion, no allocation beyond a
//! depth-bounded stack) that enforces the input size, nesting depth and collection-length limits
//! and the DAG-CBOR subset: definite lengths only, tag 42 (CID link) as the only tag, no floats,
//! no `undefined`, string map keys. The serde decoder then only ever sees input whose shape is
//! known to be small enough, so hostile input cannot exhaust memory or stack.
//!
//! Shortest-form integers and key order are not enforced on decode: hashes are always computed
//! over the bytes as received, so a non-canonical block simply has a different CID, and being
//! strict here would drop events from PDSes that verify fine. Duplicate map keys and non-UTF-8
//! text *are* rejected: they are not a matter of form but of meaning (decoders disagree on
//! which of two equal keys wins), see [`scan_item`].

use serde::{Deserialize, Serialize};

/// Limits applied to untrusted CBOR input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted input, in bytes.
    pub max_input: usize,
    /// Deepest accepted nesting of arrays and maps.
    pub max_depth: usize,
    /// Most entries accepted in one array or map.
    pub max_collection_len: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_input: 5_000_000,
            max_depth: 64,
            max_collection_len: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("CBOR input larger than the limit")]
    TooLarge,
    #[error("CBOR nesting deeper than the limit")]
    TooDeep,
    #[error("CBOR array or map longer than the limit")]
    CollectionTooLong,
    #[error("CBOR input ends inside an item")]
    Truncated,
    #[error("malformed DAG-CBOR: {0}")]
    Malformed(&'static str),
    #[error("bytes after the CBOR item")]
    TrailingBytes,
    #[error("CBOR map has a duplicate key")]
    DuplicateKey,
    #[error("DAG-CBOR decode failed: {0}")]
    Decode(String),
    #[error("DAG-CBOR encode failed: {0}")]
    Encode(String),
}

impl CborError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CborError::TooLarge => "cbor-too-large",
            CborError::TooDeep => "cbor-too-deep",
            CborError::CollectionTooLong => "cbor-collection-too-long",
            CborError::Truncated => "cbor-truncated",
            CborError::Malformed(_) => "cbor-malformed",
            CborError::TrailingBytes => "cbor-trailing-bytes",
            CborError::DuplicateKey => "cbor-duplicate-key",
            CborError::Decode(_) => "cbor-decode",
            CborError::Encode(_) => "cbor-encode",
        }
    }
}

/// The head of one CBOR data item: major type, additional info and its argument.
struct Head {
    major: u8,
    arg: u64,
    len: usize,
}

fn read_head(bytes: &[u8], pos: usize) -> Result<Head, CborError> {
    let first = *bytes.get(pos).ok_or(CborError::Truncated)?;
    let major = first >> 5;
    let info = first & 0x1f;
    let (arg, extra) = match info {
        0..=23 => (u64::from(info), 0usize),
        24..=27 => {
            let n = 1usize << (info - 24);
            let slice = bytes
                .get(pos + 1..pos + 1 + n)
                .ok_or(CborError::Truncated)?;
            let mut v = 0u64;
            for b in slice {
                v = (v << 8) | u64::from(*b);
            }
            (v, n)
        }
        28..=30 => return Err(CborError::Malformed("reserved additional info")),
        _ => return Err(CborError::Malformed("indefinite length")),
    };
    // Major 7 with info 25..=27 is a float: its "argument" is the float's bits.
    if major == 7 {
        return match info {
            20..=22 => Ok(Head {
                major,
                arg,
                len: 1 + extra,
            }),
            23 => Err(CborError::Malformed("undefined")),
            25..=27 => Err(CborError::Malformed("float")),
            _ => Err(CborError::Malformed("simple value")),
        };
    }
    Ok(Head {
        major,
        arg,
        len: 1 + extra,
    })
}

struct Open {
    /// Items still to read; for a map this counts keys and values separately.
    remaining: u64,
    is_map: bool,
    /// For a map: index in the shared key stack where this map's keys start.
    keys_from: usize,
    /// For a map: whether every key so far came in canonical order (then a duplicate can
    /// only be the previous key, and no sort is needed when the map closes).
    sorted: bool,
}

/// Canonical DAG-CBOR key order: shorter first, then bytewise.
fn canonical_key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Checks that `bytes` starts with one well-formed DAG-CBOR item within `limits` and returns
/// its encoded length. Bytes after the item are not looked at (a firehose frame is two items).
///
/// Duplicate map keys are an error ([`CborError::DuplicateKey`]) at every level: serde keeps
/// the last of two equal keys while other decoders keep the first, so a duplicate would let
/// what the relay validated differ from what a consumer reads out of the same bytes. Keys
/// of the open maps live on one shared stack (offsets only); a map whose keys come in
/// canonical order is checked against its previous key alone, any other map is sorted once
/// when it closes. Text strings (keys and values) must be UTF-8, as DAG-CBOR requires.
pub fn scan_item(bytes: &[u8], limits: &DecodeLimits) -> Result<usize, CborError> {
    // Key offsets are stored as u32 (8 bytes per key, at most 4× the input); no real limit
    // comes near 4 GiB.
    if bytes.len() > limits.max_input || u32::try_from(bytes.len()).is_err() {
        return Err(CborError::TooLarge);
    }
    let mut pos = 0usize;
    let mut stack: Vec<Open> = Vec::new();
    // `(start, end)` of each key of every open map, innermost map last.
    let mut keys: Vec<(u32, u32)> = Vec::new();
    let key_bytes = |k: (u32, u32)| &bytes[k.0 as usize..k.1 as usize];
    loop {
        let key_expected = matches!(stack.last(), Some(o) if o.is_map && o.remaining % 2 == 0);
        let head = read_head(bytes, pos)?;
        pos += head.len;
        if key_expected && head.major != 3 {
            return Err(CborError::Malformed("map key is not a string"));
        }
        match head.major {
            0 | 1 | 7 => {}
            2 => pos = skip(bytes, pos, head.arg)?,
            3 => {
                let start = pos;
                pos = skip(bytes, pos, head.arg)?;
                let text = &bytes[start..pos];
                if std::str::from_utf8(text).is_err() {
                    return Err(CborError::Malformed("text string is not UTF-8"));
                }
                if key_expected && let Some(open) = stack.last_mut() {
                    if keys.len() > open.keys_from {
                        match canonical_key_order(key_bytes(keys[keys.len() - 1]), text) {
                            std::cmp::Ordering::Less => {}
                            std::cmp::Ordering::Equal => return Err(CborError::DuplicateKey),
                            std::cmp::Ordering::Greater => open.sorted = false,
                        }
                    }
                    // Both offsets are <= bytes.len(), checked to fit in u32 above.
                    keys.push((start as u32, pos as u32));
                }
            }
            4 | 5 => {
                if head.arg > limits.max_collection_len as u64 {
                    return Err(CborError::CollectionTooLong);
                }
                if head.arg > 0 {
                    if stack.len() >= limits.max_depth {
                        return Err(CborError::TooDeep);
                    }
                    let is_map = head.major == 5;
                    let remaining = if is_map { head.arg * 2 } else { head.arg };
                    stack.push(Open {
                        remaining,
                        is_map,
                        keys_from: keys.len(),
                        sorted: true,
                    });
                    continue;
                }
            }
            6 => {
                if head.arg != 42 {
                    return Err(CborError::Malformed("tag other than 42"));
                }
                let inner = read_head(bytes, pos)?;
                if inner.major != 2 {
                    return Err(CborError::Malformed("tag 42 without a byte string"));
                }
                pos = skip(bytes, pos + inner.len, inner.arg)?;
            }
            _ => return Err(CborError::Malformed("unknown major type")),
        }
        // One item is complete: close every container it completes.
        loop {
            match stack.last_mut() {
                None => return Ok(pos),
                Some(open) => {
                    open.remaining -= 1;
                    if open.remaining == 0 {
                        if open.is_map {
                            let own = &mut keys[open.keys_from..];
                            if !open.sorted {
                                own.sort_unstable_by(|a, b| {
                                    canonical_key_order(key_bytes(*a), key_bytes(*b))
                                });
                                if own.windows(2).any(|w| key_bytes(w[0]) == key_bytes(w[1])) {
                                    return Err(CborError::DuplicateKey);
                                }
                            }
                            keys.truncate(open.keys_from);
                        }
                        stack.pop();
                    } else {
                        break;
                    }
                }
            }
        }
    }
}

fn skip(bytes: &[u8], pos: usize, len: u64) -> Result<usize, CborError> {
    let len = usize::try_from(len).map_err(|_| CborError::Truncated)?;
    let end = pos.checked_add(len).ok_or(CborError::Truncated)?;
    if end > bytes.len() {
        return Err(CborError::Truncated);
    }
    Ok(end)
}

/// Writes a CBOR item head (major type and argument) in the shortest form, as canonical
/// DAG-CBOR requires. For the hand-written encoders on hot paths (frames, MST nodes).
pub fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= 0xff {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// Decodes exactly one DAG-CBOR item from untrusted `bytes` after checking it with
/// [`scan_item`]. `T` may borrow from `bytes`.
pub fn decode<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    limits: &DecodeLimits,
) -> Result<T, CborError> {
    let len = scan_item(bytes, limits)?;
    if len != bytes.len() {
        return Err(CborError::TrailingBytes);
    }
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| CborError::Decode(e.to_string()))
}

/// Field deserializers that check the CBOR major type (`#[serde(deserialize_with = ...)]`).
///
/// Why: `serde_ipld_dagcbor` 0.6 decodes `String`/`&str` (and `&[u8]`) fields through cbor4ii
/// 0.2, whose length decoding masks the major-type bits instead of checking them, so a byte
/// string, or the integers 0 and -1, are read into a text field (`h'61'` becomes `"a"`).
/// These helpers go through `deserialize_any`, which dispatches on the real major type, and
/// accept only the visitor calls of the expected kind. Every text or bytes field of a typed
/// struct decoded from untrusted CBOR must use one of them.
pub mod strict {
    use serde::Deserializer;
    use serde::de::{Error, Visitor};
    use std::fmt;

    struct Text;
    impl<'de> Visitor<'de> for Text {
        type Value = &'de str;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a text string")
        }
        fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<&'de str, E> {
            Ok(v)
        }
    }

    struct Bytes;
    impl<'de> Visitor<'de> for Bytes {
        type Value = &'de [u8];
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<&'de [u8], E> {
            Ok(v)
        }
    }

    struct OptText;
    impl<'de> Visitor<'de> for OptText {
        type Value = Option<&'de str>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a text string or null")
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Text).map(Some)
        }
    }

    /// A text string borrowed from the input (the decoders here always read from a slice).
    pub fn borrowed_text<'de, D: Deserializer<'de>>(d: D) -> Result<&'de str, D::Error> {
        d.deserialize_any(Text)
    }

    /// A text string or null.
    pub fn opt_borrowed_text<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<&'de str>, D::Error> {
        d.deserialize_option(OptText)
    }

    /// A text string, owned.
    pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        borrowed_text(d).map(str::to_owned)
    }

    /// A text string or null, owned.
    pub fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        opt_borrowed_text(d).map(|t| t.map(str::to_owned))
    }

    /// A byte string borrowed from the input.
    pub fn borrowed_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
        d.deserialize_any(Bytes)
    }
}

/// Canonical DAG-CBOR encoding: map keys sorted length-first, then bytewise.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CborError> {
    serde_ipld_dagcbor::to_vec(value).map_err(|e| CborError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipld_core::ipld::Ipld;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn lim() -> DecodeLimits {
        DecodeLimits::default()
    }

    #[test]
    fn scans_nested_items_and_reports_length() {
        let mut m = BTreeMap::new();
        m.insert(
            "a".to_string(),
            Ipld::List(vec![Ipld::Integer(1), Ipld::Null]),
        );
        m.insert("bb".to_string(), Ipld::Bytes(vec![1, 2, 3]));
        let cid = crate::atproto::cid::cid_for_raw(b"x");
        m.insert("link".to_string(), Ipld::Link(cid));
        let bytes = encode(&Ipld::Map(m.clone())).unwrap();
        assert_eq!(scan_item(&bytes, &lim()), Ok(bytes.len()));
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        assert_eq!(scan_item(&two, &lim()), Ok(bytes.len()));
        assert_eq!(decode::<Ipld>(&two, &lim()), Err(CborError::TrailingBytes));
        assert_eq!(decode::<Ipld>(&bytes, &lim()), Ok(Ipld::Map(m)));
    }

    #[test]
    fn rejects_what_dag_cbor_forbids() {
        let l = lim();
        // float 1.5
        assert!(matches!(
            scan_item(&[0xf9, 0x3e, 0x00], &l),
            Err(CborError::Malformed(_))
        ));
        // undefined
        assert!(matches!(
            scan_item(&[0xf7], &l),
            Err(CborError::Malformed(_))
        ));
        // indefinite array
        assert!(matches!(
            scan_item(&[0x9f, 0xff], &l),
            Err(CborError::Malformed(_))
        ));
        // tag 1
        assert!(matches!(
            scan_item(&[0xc1, 0x00], &l),
            Err(CborError::Malformed(_))
        ));
        // map with an integer key
        assert!(matches!(
            scan_item(&[0xa1, 0x01, 0x01], &l),
            Err(CborError::Malformed(_))
        ));
        // truncated byte string
        assert_eq!(scan_item(&[0x45, 1, 2], &l), Err(CborError::Truncated));
        // huge declared length
        assert_eq!(
            scan_item(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], &l),
            Err(CborError::Truncated)
        );
        assert_eq!(scan_item(&[], &l), Err(CborError::Truncated));
    }

    #[test]
    fn enforces_depth_and_length_limits() {
        let deep = vec![0x81u8; 100]
            .into_iter()
            .chain([0x00])
            .collect::<Vec<_>>();
        assert_eq!(scan_item(&deep, &lim()), Err(CborError::TooDeep));
        let small = DecodeLimits {
            max_input: 10,
            max_depth: 4,
            max_collection_len: 2,
        };
        assert_eq!(
            scan_item(&[0x83, 0, 0, 0], &small),
            Err(CborError::CollectionTooLong)
        );
        assert_eq!(scan_item(&[0u8; 11], &small), Err(CborError::TooLarge));
        // A declared-but-absent 50,000-entry array costs nothing before failing.
        assert_eq!(
            scan_item(&[0x9a, 0x00, 0x00, 0xc3, 0x50], &lim()),
            Err(CborError::Truncated)
        );
    }

    /// A map of `(key, uint value)` pairs, in the order given, keys written as text.
    fn raw_map(entries: &[(&str, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        write_head(&mut out, 5, entries.len() as u64);
        for (k, v) in entries {
            write_head(&mut out, 3, k.len() as u64);
            out.extend_from_slice(k.as_bytes());
            write_head(&mut out, 0, u64::from(*v));
        }
        out
    }

    #[test]
    fn rejects_duplicate_map_keys_at_any_level_and_in_any_order() {
        let l = lim();
        // Adjacent duplicate in canonical position.
        let dup = raw_map(&[("a", 1), ("a", 2)]);
        assert_eq!(scan_item(&dup, &l), Err(CborError::DuplicateKey));
        assert_eq!(decode::<Ipld>(&dup, &l), Err(CborError::DuplicateKey));
        // Duplicate hidden by non-canonical order.
        let hidden = raw_map(&[("seq", 1), ("a", 2), ("seq", 3)]);
        assert_eq!(scan_item(&hidden, &l), Err(CborError::DuplicateKey));
        // Nested: [ {"x":1, "x":2} ] and {"m": {"b":1, "a":1, "b":2}}.
        let mut nested = vec![0x81];
        nested.extend(raw_map(&[("x", 1), ("x", 2)]));
        assert_eq!(scan_item(&nested, &l), Err(CborError::DuplicateKey));
        let mut outer = vec![0xa1, 0x61, b'm'];
        outer.extend(raw_map(&[("b", 1), ("a", 1), ("b", 2)]));
        assert_eq!(scan_item(&outer, &l), Err(CborError::DuplicateKey));
        // The same key in sibling or nested maps is not a duplicate.
        let mut siblings = vec![0xa2, 0x61, b'a'];
        siblings.extend(raw_map(&[("a", 1)]));
        siblings.extend([0x61, b'b']);
        siblings.extend(raw_map(&[("a", 1), ("b", 2)]));
        assert_eq!(scan_item(&siblings, &l), Ok(siblings.len()));
        // Non-canonical order without duplicates is still accepted.
        let unsorted = raw_map(&[("bb", 1), ("a", 2), ("c", 3)]);
        assert_eq!(scan_item(&unsorted, &l), Ok(unsorted.len()));
        assert_eq!(CborError::DuplicateKey.reason(), "cbor-duplicate-key");
    }

    #[test]
    fn rejects_text_that_is_not_utf8() {
        let l = lim();
        // Text value "\xff".
        assert!(matches!(
            scan_item(&[0x61, 0xff], &l),
            Err(CborError::Malformed(_))
        ));
        // Map key "\xc3" (truncated two-byte sequence).
        assert!(matches!(
            scan_item(&[0xa1, 0x61, 0xc3, 0x00], &l),
            Err(CborError::Malformed(_))
        ));
        // Valid multi-byte text passes.
        let ok = encode(&Ipld::String("héllo ✓".into())).unwrap();
        assert_eq!(scan_item(&ok, &l), Ok(ok.len()));
    }

    #[test]
    fn encodes_keys_length_first() {
        let mut m = BTreeMap::new();
        m.insert("op".to_string(), Ipld::Integer(1));
        m.insert("t".to_string(), Ipld::String("#commit".into()));
        let bytes = encode(&Ipld::Map(m)).unwrap();
        // {"t": "#commit", "op": 1}: `t` sorts before `op` because it is shorter.
        assert_eq!(&bytes[..3], &[0xa2, 0x61, b't']);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = scan_item(&bytes, &lim());
            let _ = decode::<Ipld>(&bytes, &lim());
        }

        /// Any key sequence: the scanner rejects it exactly when some key repeats.
        #[test]
        fn duplicate_keys_are_found_in_any_order(
            keys in proptest::collection::vec("[a-c]{0,2}", 0..12)
        ) {
            let entries: Vec<(&str, u8)> = keys.iter().map(|k| (k.as_str(), 0)).collect();
            let bytes = raw_map(&entries);
            let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
            if distinct.len() == keys.len() {
                prop_assert_eq!(scan_item(&bytes, &lim()), Ok(bytes.len()));
            } else {
                prop_assert_eq!(scan_item(&bytes, &lim()), Err(CborError::DuplicateKey));
            }
        }

        #[test]
        fn scan_agrees_with_encoder(v in arb_ipld()) {
            let bytes = encode(&v).unwrap();
            prop_assert_eq!(scan_item(&bytes, &lim()), Ok(bytes.len()));
            prop_assert_eq!(decode::<Ipld>(&bytes, &lim()), Ok(v));
        }
    }

    fn arb_ipld() -> impl Strategy<Value = Ipld> {
        let leaf = prop_oneof![
            Just(Ipld::Null),
            any::<bool>().prop_map(Ipld::Bool),
            any::<i64>().prop_map(|i| Ipld::Integer(i.into())),
            ".{0,8}".prop_map(Ipld::String),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Ipld::Bytes),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Ipld::List),
                proptest::collection::btree_map(".{0,6}", inner, 0..6).prop_map(Ipld::Map),
            ]
        })
    }
}
