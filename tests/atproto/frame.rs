//! Firehose frames: decode of the relay scenario frames, re-sequencing fidelity (PROTOCOL.md §9),
//! framing errors, round trips and never-panic properties.

use crate::common::vectors as common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{cbor, frame_bytes, scenario_frames, to_ipld};
use ipld_core::ipld::Ipld;
use proptest::prelude::*;
use rookery::atproto::cbor::CborError;
use rookery::atproto::cid::cid_for_dag_cbor;
use rookery::atproto::frame::{self, Frame, FrameError};

fn split(msg: &[u8]) -> (Ipld, Ipld, usize) {
    let h = frame::decode_header(msg).expect("header");
    let header: Ipld = serde_ipld_dagcbor::from_slice(&msg[..h.body_offset]).expect("header ipld");
    let body: Ipld = serde_ipld_dagcbor::from_slice(&msg[h.body_offset..]).expect("body ipld");
    (header, body, h.body_offset)
}

fn map(v: Ipld) -> BTreeMap<String, Ipld> {
    match v {
        Ipld::Map(m) => m,
        other => panic!("not a map: {other:?}"),
    }
}

#[test]
fn scenario_frames_decode_and_peek() {
    let frames = scenario_frames();
    assert!(frames.len() > 30);
    for (name, f) in &frames {
        let msg = Bytes::from(frame_bytes(f));
        let t = f["header"]["t"].as_str().expect("t");
        let decoded = frame::decode_frame(&msg).unwrap_or_else(|e| panic!("{name} {t}: {e}"));
        assert_eq!(format!("#{}", decoded.kind()), t, "{name}");
        let peek = frame::peek_event(&msg).expect("peek");
        assert_eq!(peek.header.t, Some(t));
        assert_eq!(peek.header.op, 1);
        assert_eq!(peek.seq, f["body"]["seq"].as_u64(), "{name}");
        let did_field = if t == "#commit" { "repo" } else { "did" };
        assert_eq!(peek.did, f["body"][did_field].as_str(), "{name}");
        match decoded {
            Frame::Commit(c) => {
                let expected = common::b64(f["body"]["blocks"]["$bytes"].as_str().expect("blocks"));
                assert_eq!(&c.blocks[..], &expected[..]);
                // Zero-copy: the blocks slice points into the message buffer.
                let start = c.blocks.as_ptr() as usize - msg.as_ptr() as usize;
                assert!(start + c.blocks.len() <= msg.len());
                assert_eq!(c.ops.len(), f["body"]["ops"].as_array().expect("ops").len());
                assert_eq!(c.prev_data.is_some(), f["body"].get("prevData").is_some());
            }
            Frame::Sync(s) => assert_eq!(s.rev, f["body"]["rev"].as_str().expect("rev")),
            Frame::Account(a) => {
                assert_eq!(a.active, f["body"]["active"].as_bool().expect("active"))
            }
            Frame::Identity(i) => assert_eq!(i.handle.as_deref(), f["body"]["handle"].as_str()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn resequence_changes_only_seq() {
    for (name, f) in &scenario_frames() {
        let msg = frame_bytes(f);
        let out = frame::resequence(&msg, 4_000_000_123).expect("resequence");
        let (h_in, b_in, off_in) = split(&msg);
        let (h_out, b_out, off_out) = split(&out);
        assert_eq!(h_in, h_out);
        // Header key order on the wire: t before op.
        assert_eq!(&out[..off_out], &msg[..off_in]);
        let (mut before, mut after) = (map(b_in), map(b_out));
        assert_eq!(
            after.remove("seq"),
            Some(Ipld::Integer(4_000_000_123)),
            "{name}"
        );
        before.remove("seq");
        // Defaults are only added when missing; these vectors carry all three already.
        assert_eq!(before, after, "{name}: only seq changed");
        // Canonical key order: our output equals the canonical encoding of the same map.
        let (_, b_out, _) = split(&out);
        assert_eq!(&out[off_out..], &cbor(&b_out)[..], "{name}: canonical body");
    }
}

#[test]
fn resequence_keeps_absent_null_unknown_and_adds_commit_defaults() {
    let (_, f) = scenario_frames()
        .into_iter()
        .find(|(n, f)| n == "post_lifecycle.json" && f["header"]["t"] == "#commit")
        .expect("commit frame");
    let mut body = match to_ipld(&f["body"]) {
        Ipld::Map(m) => m,
        _ => panic!(),
    };
    for k in ["tooBig", "rebase", "blobs", "since"] {
        body.remove(k);
    }
    body.insert(
        "zFutureField".into(),
        Ipld::List(vec![Ipld::Null, Ipld::Integer(-7)]),
    );
    body.insert("time".into(), Ipld::Null); // kept as the PDS sent it, even if invalid
    // An op with an explicit prev must keep it.
    let ops = body.get("ops").cloned().expect("ops");
    let blocks_before = body.get("blocks").cloned().expect("blocks");
    let mut msg = cbor(&to_ipld(&f["header"]));
    msg.extend(cbor(&Ipld::Map(body.clone())));

    let out = frame::resequence(&msg, 77).expect("resequence");
    let (_, b_out, _) = split(&out);
    let after = map(b_out);
    assert_eq!(after.get("seq"), Some(&Ipld::Integer(77)));
    assert_eq!(after.get("tooBig"), Some(&Ipld::Bool(false)));
    assert_eq!(after.get("rebase"), Some(&Ipld::Bool(false)));
    assert_eq!(after.get("blobs"), Some(&Ipld::List(vec![])));
    assert!(
        !after.contains_key("since"),
        "absent since is not written as null"
    );
    assert_eq!(after.get("time"), Some(&Ipld::Null));
    assert_eq!(after.get("zFutureField"), body.get("zFutureField"));
    assert_eq!(after.get("ops"), Some(&ops));
    assert_eq!(after.get("blocks"), Some(&blocks_before));
    assert_eq!(after.len(), body.len() + 3);

    // Non-commit events get no defaults; an #info (no seq) cannot be re-sequenced.
    let account =
        frame::encode_account(5, "did:plc:abc", "2025-01-01T00:00:00Z", false, None).unwrap();
    let out = frame::resequence(&account, 6).unwrap();
    let (_, b, _) = split(&out);
    let b = map(b);
    assert_eq!(b.len(), 4, "no status added: {b:?}");
    let info = frame::encode_info(frame::OUTDATED_CURSOR, None).unwrap();
    assert_eq!(frame::resequence(&info, 6), Err(FrameError::MissingSeq));
    assert_eq!(frame::resequence(&account, 0), Err(FrameError::BadSeq));
}

#[test]
fn op_lists_are_bounded_before_typed_decoding() {
    let (_, f) = scenario_frames()
        .into_iter()
        .find(|(n, f)| n == "post_lifecycle.json" && f["header"]["t"] == "#commit")
        .expect("commit frame");
    let body = map(to_ipld(&f["body"]));
    let op = match body.get("ops") {
        Some(Ipld::List(ops)) => ops[0].clone(),
        other => panic!("ops: {other:?}"),
    };
    let with_ops = |n: usize| {
        let mut body = body.clone();
        body.insert("ops".into(), Ipld::List(vec![op.clone(); n]));
        let mut msg = cbor(&to_ipld(&f["header"]));
        msg.extend(cbor(&Ipld::Map(body)));
        Bytes::from(msg)
    };
    // Over the lexicon's 200 but under the cap: decodes; validation rejects it later.
    match frame::decode_frame(&with_ops(201)) {
        Ok(Frame::Commit(c)) => assert_eq!(c.ops.len(), 201),
        other => panic!("201 ops: {other:?}"),
    }
    let err = frame::decode_frame(&with_ops(frame::MAX_FRAME_COLLECTION_LEN + 1)).unwrap_err();
    assert_eq!(err, FrameError::Cbor(CborError::CollectionTooLong));
}

#[test]
fn relay_frames_encode_as_expected() {
    let err = frame::encode_error(frame::FUTURE_CURSOR, Some("cursor in the future")).unwrap();
    // {op: -1} header: a1 62 "op" 20
    assert_eq!(&err[..5], &[0xa1, 0x62, b'o', b'p', 0x20]);
    match frame::decode_frame(&Bytes::from(err)).unwrap() {
        Frame::Error(e) => {
            assert_eq!(e.error, "FutureCursor");
            assert_eq!(e.message.as_deref(), Some("cursor in the future"));
        }
        other => panic!("{other:?}"),
    }
    let slow = frame::encode_error(frame::CONSUMER_TOO_SLOW, None).unwrap();
    let (_, body, _) = split(&slow);
    assert_eq!(map(body).len(), 1, "absent message is not written");
    let info = frame::encode_info("OutdatedCursor", Some("m")).unwrap();
    // {t, op} header: a2 61 "t" 65 "#info" 62 "op" 01
    assert_eq!(&info[..3], &[0xa2, 0x61, b't']);
    assert_eq!(&info[3..9], b"\x65#info");
    assert_eq!(&info[9..13], &[0x62, b'o', b'p', 0x01]);
    let acct = frame::encode_account(9, "did:plc:x", "t", false, Some("takendown")).unwrap();
    match frame::decode_frame(&Bytes::from(acct)).unwrap() {
        Frame::Account(a) => {
            assert_eq!(
                (a.seq, a.active, a.status.as_deref()),
                (9, false, Some("takendown"))
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn framing_errors_and_unknowns() {
    let header = cbor(&to_ipld(&serde_json::json!({"op": 1, "t": "#identity"})));
    let body = cbor(&to_ipld(
        &serde_json::json!({"seq": 1, "did": "did:plc:a", "time": "2025-01-01T00:00:00Z"}),
    ));
    assert_eq!(frame::decode_header(&header), Err(FrameError::MissingBody));
    let mut three = header.clone();
    three.extend(&body);
    three.extend(&body);
    assert_eq!(frame::decode_header(&three), Err(FrameError::ExtraItems));
    let big = vec![0u8; frame::MAX_FRAME_BYTES + 1];
    assert_eq!(frame::decode_header(&big), Err(FrameError::TooLarge));
    let no_t = cbor(&to_ipld(&serde_json::json!({"op": 1})));
    let mut m = no_t.clone();
    m.extend(&body);
    assert_eq!(frame::decode_header(&m), Err(FrameError::BadHeader));

    let legacy = cbor(&to_ipld(&serde_json::json!({"op": 1, "t": "#handle"})));
    let mut m = legacy;
    m.extend(&body);
    assert_eq!(
        frame::decode_frame(&Bytes::from(m)).unwrap(),
        Frame::Unknown {
            t: "#handle".into()
        }
    );
    let op2 = cbor(&to_ipld(&serde_json::json!({"op": 2, "t": "#commit"})));
    let mut m = op2;
    m.extend(&body);
    assert_eq!(
        frame::decode_frame(&Bytes::from(m)).unwrap(),
        Frame::UnknownOp { op: 2 }
    );

    // A map key whose length does not fit: typed errors, no overflow.
    let mut m = header.clone();
    m.extend([0xa1, 0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(frame::peek_event(&m), Err(FrameError::Cbor(_))));
    assert!(matches!(frame::resequence(&m, 5), Err(FrameError::Cbor(_))));
    assert!(frame::decode_frame(&Bytes::from(m)).is_err());
    let mut m = header.clone();
    m.extend([
        0xa1, 0x63, b's', b'e', b'q', 0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ]);
    assert!(frame::peek_event(&m).is_err());

    // Duplicate body keys: re-sequencing refuses, typed decode refuses.
    let mut m = header.clone();
    m.extend([
        0xa2, 0x63, b's', b'e', b'q', 0x01, 0x63, b's', b'e', b'q', 0x02,
    ]);
    assert_eq!(frame::resequence(&m, 5), Err(FrameError::DuplicateKey));
    assert!(frame::decode_frame(&Bytes::from(m)).is_err());

    // Body that is not a map; body missing a required field.
    let mut m = header.clone();
    m.extend(cbor(&Ipld::List(vec![])));
    assert_eq!(
        frame::decode_frame(&Bytes::from(m)),
        Err(FrameError::BodyNotMap)
    );
    let mut m = header.clone();
    m.extend(cbor(&to_ipld(&serde_json::json!({"seq": 1}))));
    let err = frame::decode_frame(&Bytes::from(m)).unwrap_err();
    assert_eq!(err.reason(), "frame-bad-body");
}

/// A CBOR text item.
fn text(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    rookery::atproto::cbor::write_head(&mut out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    out
}

/// An `#identity` frame whose body map has the given raw `(key, value item)` entries, in order.
fn identity_with_entries(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut m = cbor(&to_ipld(&serde_json::json!({"op": 1, "t": "#identity"})));
    rookery::atproto::cbor::write_head(&mut m, 5, entries.len() as u64);
    for (k, v) in entries {
        m.extend(text(k));
        m.extend(v);
    }
    m
}

/// The validator (decode_frame), the Subscriber (peek_event, decode_header) and the Sequencer
/// (resequence) must never read different values out of one frame, so a duplicate key
/// anywhere in the body is the same typed error for all of them, in or out of canonical order.
#[test]
fn duplicate_keys_are_rejected_by_every_reader() {
    let did = text("did:plc:a");
    let time = text("2025-01-01T00:00:00Z");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // `seq` twice, out of canonical order: serde would keep 2, a first-wins reader 1.
        (
            "seq out of order",
            identity_with_entries(&[
                ("seq", vec![0x01]),
                ("did", did.clone()),
                ("time", time.clone()),
                ("seq", vec![0x02]),
            ]),
        ),
        // `did` twice: the account the event is about would differ between readers.
        (
            "did twice",
            identity_with_entries(&[
                ("did", did.clone()),
                ("did", text("did:plc:b")),
                ("seq", vec![0x01]),
                ("time", time.clone()),
            ]),
        ),
        // An unknown field twice: serde ignores it, the broadcaster would copy both.
        (
            "unknown twice",
            identity_with_entries(&[
                ("x", vec![0x01]),
                ("x", vec![0x02]),
                ("did", did.clone()),
                ("seq", vec![0x01]),
                ("time", time.clone()),
            ]),
        ),
        // A duplicate nested inside a value.
        (
            "nested",
            identity_with_entries(&[
                ("did", did.clone()),
                ("seq", vec![0x01]),
                ("ext", vec![0xa2, 0x61, b'a', 0x01, 0x61, b'a', 0x02]),
                ("time", time.clone()),
            ]),
        ),
    ];
    for (name, m) in cases {
        assert_eq!(
            frame::decode_header(&m),
            Err(FrameError::DuplicateKey),
            "{name}: decode_header"
        );
        assert_eq!(
            frame::peek_event(&m),
            Err(FrameError::DuplicateKey),
            "{name}: peek_event"
        );
        assert_eq!(
            frame::resequence(&m, 7),
            Err(FrameError::DuplicateKey),
            "{name}: resequence"
        );
        assert_eq!(
            frame::decode_frame(&Bytes::from(m)),
            Err(FrameError::DuplicateKey),
            "{name}: decode_frame"
        );
    }
    // Out of canonical order but without duplicates: every reader accepts and agrees.
    let m = identity_with_entries(&[
        ("time", time.clone()),
        ("seq", vec![0x05]),
        ("did", did.clone()),
    ]);
    let peek = frame::peek_event(&m).unwrap();
    assert_eq!((peek.seq, peek.did), (Some(5), Some("did:plc:a")));
    let Frame::Identity(id) = frame::decode_frame(&Bytes::from(m.clone())).unwrap() else {
        panic!("not an identity frame");
    };
    assert_eq!((id.seq, id.did.as_str()), (5, "did:plc:a"));
    let out = frame::resequence(&m, 9).unwrap();
    let Frame::Identity(re) = frame::decode_frame(&Bytes::from(out)).unwrap() else {
        panic!("not an identity frame");
    };
    assert_eq!((re.seq, re.did, re.time), (9, id.did, id.time));
}

/// A `seq` above i64::MAX cannot be decoded by `decode_frame`; `peek_event` must not hand
/// the Subscriber a seq the validator never sees.
#[test]
fn peek_seq_agrees_with_decode_frame_at_the_i64_edge() {
    let did = text("did:plc:a");
    let time = text("2025-01-01T00:00:00Z");
    let with_seq = |seq: u64| {
        let mut item = Vec::new();
        rookery::atproto::cbor::write_head(&mut item, 0, seq);
        identity_with_entries(&[("did", did.clone()), ("seq", item), ("time", time.clone())])
    };
    let max = with_seq(i64::MAX as u64);
    assert_eq!(frame::peek_event(&max).unwrap().seq, Some(i64::MAX as u64));
    assert!(matches!(
        frame::decode_frame(&Bytes::from(max)),
        Ok(Frame::Identity(id)) if id.seq == i64::MAX
    ));
    let over = with_seq(i64::MAX as u64 + 1);
    assert_eq!(frame::peek_event(&over).unwrap().seq, None);
    assert!(matches!(
        frame::decode_frame(&Bytes::from(over)),
        Err(FrameError::BadBody(_))
    ));
}

fn arb_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9:._-]{0,20}"
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let cid = any::<[u8; 8]>().prop_map(|b| cid_for_dag_cbor(&b));
    let op = (
        prop_oneof![Just("create"), Just("update"), Just("delete")],
        arb_text(),
        proptest::option::of(cid.clone()),
        proptest::option::of(cid.clone()),
    )
        .prop_map(|(a, p, c, v)| frame::RepoOp {
            action: a.into(),
            path: p,
            cid: c,
            prev: v,
        });
    let commit = (
        1i64..i64::MAX,
        any::<(bool, bool)>(),
        arb_text(),
        cid.clone(),
        arb_text(),
        proptest::option::of(arb_text()),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(op, 0..4),
        proptest::option::of(cid.clone()),
        arb_text(),
    )
        .prop_map(
            |(seq, (rebase, too_big), repo, commit, rev, since, blocks, ops, prev_data, time)| {
                Frame::Commit(Box::new(frame::CommitEvent {
                    seq,
                    rebase,
                    too_big,
                    repo,
                    commit,
                    rev,
                    since,
                    blocks: Bytes::from(blocks),
                    ops,
                    blobs: vec![],
                    prev_data,
                    time,
                }))
            },
        );
    prop_oneof![
        commit,
        (
            1i64..i64::MAX,
            arb_text(),
            arb_text(),
            any::<bool>(),
            proptest::option::of(arb_text())
        )
            .prop_map(|(seq, did, time, active, status)| Frame::Account(
                frame::AccountEvent {
                    seq,
                    did,
                    time,
                    active,
                    status
                }
            )),
        (
            1i64..i64::MAX,
            arb_text(),
            arb_text(),
            proptest::option::of(arb_text())
        )
            .prop_map(
                |(seq, did, time, handle)| Frame::Identity(frame::IdentityEvent {
                    seq,
                    did,
                    time,
                    handle
                })
            ),
        (
            1i64..i64::MAX,
            arb_text(),
            proptest::collection::vec(any::<u8>(), 0..64),
            arb_text(),
            arb_text()
        )
            .prop_map(
                |(seq, did, blocks, rev, time)| Frame::Sync(frame::SyncEvent {
                    seq,
                    did,
                    blocks: Bytes::from(blocks),
                    rev,
                    time
                })
            ),
        (arb_text(), proptest::option::of(arb_text()))
            .prop_map(|(name, message)| Frame::Info(frame::InfoEvent { name, message })),
        (arb_text(), proptest::option::of(arb_text()))
            .prop_map(|(error, message)| Frame::Error(frame::ErrorFrame { error, message })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frame_round_trip(f in arb_frame(), new_seq in 1i64..i64::MAX) {
        let bytes = frame::encode_frame(&f).unwrap();
        let back = frame::decode_frame(&Bytes::from(bytes.clone())).unwrap();
        prop_assert_eq!(&back, &f);
        // Our own encoding is canonical: resequencing to the same seq is the identity.
        let seq = match &f {
            Frame::Commit(c) => Some(c.seq),
            Frame::Account(a) => Some(a.seq),
            Frame::Identity(i) => Some(i.seq),
            Frame::Sync(s) => Some(s.seq),
            _ => None,
        };
        if let Some(seq) = seq {
            prop_assert_eq!(frame::resequence(&bytes, seq).unwrap(), bytes.clone());
            let moved = frame::resequence(&bytes, new_seq).unwrap();
            let peek = frame::peek_event(&moved).unwrap();
            prop_assert_eq!(peek.seq, Some(new_seq as u64));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = frame::decode_header(&bytes);
        let _ = frame::peek_event(&bytes);
        let _ = frame::resequence(&bytes, 5);
        let _ = frame::decode_frame(&Bytes::from(bytes));
    }

    /// Identity bodies with keys drawn (in any order, possibly repeated) from the known fields
    /// plus an unknown one: the four readers either all refuse with DuplicateKey or all agree
    /// on seq and did, and re-sequencing keeps every other field.
    #[test]
    fn readers_agree_on_any_key_order_and_repetition(
        picks in proptest::collection::vec((0usize..5, 1u64..1000), 3..8)
    ) {
        const KEYS: [&str; 5] = ["seq", "did", "time", "handle", "zz"];
        let entries: Vec<(&str, Vec<u8>)> = picks
            .iter()
            .map(|(k, v)| {
                let value = match KEYS[*k] {
                    "seq" => {
                        let mut item = Vec::new();
                        rookery::atproto::cbor::write_head(&mut item, 0, *v);
                        item
                    }
                    "did" => text(&format!("did:plc:{v}")),
                    "handle" => text(&format!("h{v}.test")),
                    _ => text("2025-01-01T00:00:00Z"),
                };
                (KEYS[*k], value)
            })
            .collect();
        let m = identity_with_entries(&entries);
        let distinct: std::collections::BTreeSet<usize> = picks.iter().map(|(k, _)| *k).collect();
        if distinct.len() < picks.len() {
            prop_assert_eq!(frame::decode_header(&m), Err(FrameError::DuplicateKey));
            prop_assert_eq!(frame::peek_event(&m), Err(FrameError::DuplicateKey));
            prop_assert_eq!(frame::resequence(&m, 7), Err(FrameError::DuplicateKey));
            prop_assert_eq!(frame::decode_frame(&Bytes::from(m)), Err(FrameError::DuplicateKey));
        } else {
            let peek = frame::peek_event(&m).unwrap();
            match frame::decode_frame(&Bytes::from(m.clone())) {
                Ok(Frame::Identity(id)) => {
                    prop_assert_eq!(peek.seq, Some(id.seq as u64));
                    prop_assert_eq!(peek.did, Some(id.did.as_str()));
                    let out = frame::resequence(&m, 7).unwrap();
                    let Ok(Frame::Identity(re)) = frame::decode_frame(&Bytes::from(out)) else {
                        return Err(TestCaseError::fail("resequenced frame does not decode"));
                    };
                    prop_assert_eq!(re, frame::IdentityEvent { seq: 7, ..id });
                }
                // A required field is missing: a body error, never a disagreement.
                Err(FrameError::BadBody(_)) => {}
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            }
        }
    }

    #[test]
    fn mutated_real_frames_never_panic(idx in 0usize..40, pos in any::<usize>(), value in any::<u8>(), cut in any::<bool>()) {
        let frames = SCENARIO.with(|s| s.clone());
        let mut msg = frames[idx % frames.len()].clone();
        let p = pos % msg.len();
        if cut { msg.truncate(p); } else { msg[p] = value; }
        let _ = frame::peek_event(&msg);
        let _ = frame::resequence(&msg, 5);
        let _ = frame::decode_frame(&Bytes::from(msg));
    }
}

thread_local! {
    static SCENARIO: Vec<Vec<u8>> = scenario_frames().iter().map(|(_, f)| frame_bytes(f)).collect();
}
