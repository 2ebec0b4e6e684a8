//! The ValidatorShard's frame rewrites (`rewrite_account`, `strip_identity_handle`): only the
//! named fields change (PROTOCOL.md §9), the output stays canonical and every reader accepts
//! it, and arbitrary input never panics.

use crate::common::vectors as common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{cbor, frame_bytes, scenario_frames};
use ipld_core::ipld::Ipld;
use proptest::prelude::*;
use rookery::atproto::frame::{self, Frame, FrameError};

fn parts(msg: &[u8]) -> (Ipld, BTreeMap<String, Ipld>) {
    let h = frame::decode_header(msg).expect("header");
    let header: Ipld = serde_ipld_dagcbor::from_slice(&msg[..h.body_offset]).expect("header");
    let body: Ipld = serde_ipld_dagcbor::from_slice(&msg[h.body_offset..]).expect("body");
    match body {
        Ipld::Map(m) => (header, m),
        other => panic!("body not a map: {other:?}"),
    }
}

/// Every reader accepts `out`, and re-encoding its body canonically gives the same bytes.
fn assert_readable_and_canonical(out: &[u8]) {
    let bytes = Bytes::copy_from_slice(out);
    frame::decode_frame(&bytes).expect("decode_frame accepts the rewrite");
    frame::peek_event(out).expect("peek_event accepts the rewrite");
    frame::resequence(out, 12).expect("resequence accepts the rewrite");
    let h = frame::decode_header(out).expect("header");
    let body: Ipld = serde_ipld_dagcbor::from_slice(&out[h.body_offset..]).expect("body");
    assert_eq!(
        cbor(&body),
        &out[h.body_offset..],
        "body is canonical DAG-CBOR"
    );
}

fn header_item(t: &str) -> Vec<u8> {
    cbor(&Ipld::Map(BTreeMap::from([
        ("op".to_string(), Ipld::Integer(1)),
        ("t".to_string(), Ipld::String(t.to_string())),
    ])))
}

fn msg_with(t: &str, body: BTreeMap<String, Ipld>) -> Vec<u8> {
    let mut out = header_item(t);
    out.extend(cbor(&Ipld::Map(body)));
    out
}

#[test]
fn account_rewrite_on_scenario_frames_changes_only_active_and_status() {
    let mut seen = 0;
    for (name, f) in &scenario_frames() {
        if f["header"]["t"].as_str() != Some("#account") {
            continue;
        }
        seen += 1;
        let msg = frame_bytes(f);
        let (h_in, b_in) = parts(&msg);
        for (active, status) in [
            (true, None),
            (false, Some("takendown")),
            (false, Some("throttled")),
            (false, Some("deleted")),
        ] {
            let out = frame::rewrite_account(&msg, active, status).expect("rewrite");
            assert_readable_and_canonical(&out);
            let (h_out, b_out) = parts(&out);
            assert_eq!(h_in, h_out, "{name}: header kept");
            assert_eq!(b_out["active"], Ipld::Bool(active), "{name}");
            assert_eq!(
                b_out.get("status"),
                status.map(|s| Ipld::String(s.to_string())).as_ref(),
                "{name}"
            );
            for (k, v) in &b_in {
                if k != "active" && k != "status" {
                    assert_eq!(b_out.get(k), Some(v), "{name}: {k} kept");
                }
            }
            assert!(b_out.keys().all(|k| b_in.contains_key(k) || k == "status"));
            match frame::decode_frame(&Bytes::from(out.to_vec())).expect("decode") {
                Frame::Account(a) => {
                    assert_eq!(a.active, active);
                    assert_eq!(a.status.as_deref(), status);
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // Writing back what the PDS sent reproduces the canonical frame byte for byte.
        let same = frame::rewrite_account(
            &msg,
            f["body"]["active"].as_bool().expect("active"),
            f["body"]["status"].as_str(),
        )
        .expect("rewrite");
        assert_eq!(&same[..], &msg[..], "{name}: identity rewrite is a no-op");
    }
    assert!(seen >= 3, "scenarios hold #account frames");
}

#[test]
fn identity_strip_on_scenario_frames_changes_only_handle() {
    let mut seen = 0;
    for (name, f) in &scenario_frames() {
        if f["header"]["t"].as_str() != Some("#identity") {
            continue;
        }
        seen += 1;
        let msg = frame_bytes(f);
        let (h_in, mut b_in) = parts(&msg);
        let out = frame::strip_identity_handle(&msg).expect("strip");
        assert_readable_and_canonical(&out);
        let (h_out, b_out) = parts(&out);
        assert_eq!(h_in, h_out);
        b_in.remove("handle");
        assert_eq!(b_in, b_out, "{name}: only handle removed");
        match frame::decode_frame(&out).expect("decode") {
            Frame::Identity(i) => assert_eq!(i.handle, None),
            other => panic!("{name}: {other:?}"),
        }
        // Stripping twice changes nothing more.
        assert_eq!(frame::strip_identity_handle(&out).expect("again"), out);
    }
    assert!(seen >= 1, "scenarios hold #identity frames");
}

fn text(s: &str) -> Ipld {
    Ipld::String(s.to_string())
}

#[test]
fn account_rewrite_adds_replaces_and_removes_status_keeping_unknown_and_null_fields() {
    let base = BTreeMap::from([
        ("seq".to_string(), Ipld::Integer(9)),
        ("did".to_string(), text("did:plc:abc")),
        ("time".to_string(), text("2025-01-01T00:00:00.000Z")),
        ("active".to_string(), Ipld::Bool(true)),
        (
            "zzUnknownField".to_string(),
            Ipld::List(vec![Ipld::Null, text("x")]),
        ),
        ("nul".to_string(), Ipld::Null),
    ]);
    // Added.
    let msg = msg_with("#account", base.clone());
    let out = frame::rewrite_account(&msg, false, Some("throttled")).expect("add");
    assert_readable_and_canonical(&out);
    let (_, b) = parts(&out);
    let mut want = base.clone();
    want.insert("active".into(), Ipld::Bool(false));
    want.insert("status".into(), text("throttled"));
    assert_eq!(b, want);
    // Replaced.
    let out2 = frame::rewrite_account(&out, false, Some("takendown")).expect("replace");
    let (_, b) = parts(&out2);
    want.insert("status".into(), text("takendown"));
    assert_eq!(b, want);
    // Removed: back to the original bytes.
    let out3 = frame::rewrite_account(&out2, true, None).expect("remove");
    assert_eq!(&out3[..], &msg[..]);
    // An #account without `active` (invalid upstream) gets the relay's value added.
    let mut no_active = base.clone();
    no_active.remove("active");
    let out4 = frame::rewrite_account(&msg_with("#account", no_active), true, None).expect("add");
    assert_eq!(&out4[..], &msg[..]);
    // A null status is replaced or removed like any value.
    let mut null_status = base.clone();
    null_status.insert("status".into(), Ipld::Null);
    let out5 =
        frame::rewrite_account(&msg_with("#account", null_status), true, None).expect("null");
    assert_eq!(&out5[..], &msg[..]);
}

#[test]
fn identity_strip_keeps_unknown_fields_and_a_frame_without_handle() {
    let body = BTreeMap::from([
        ("seq".to_string(), Ipld::Integer(3)),
        ("did".to_string(), text("did:plc:abc")),
        ("time".to_string(), text("2025-01-01T00:00:00.000Z")),
        ("newField".to_string(), Ipld::Bytes(vec![1, 2, 3])),
    ]);
    let without = msg_with("#identity", body.clone());
    let mut with = body.clone();
    with.insert("handle".into(), text("alice.example.com"));
    let out = frame::strip_identity_handle(&msg_with("#identity", with)).expect("strip");
    assert_eq!(&out[..], &without[..]);
    assert_eq!(
        &frame::strip_identity_handle(&without).expect("none")[..],
        &without[..]
    );
}

#[test]
fn rewrites_refuse_other_types_and_bad_frames() {
    let account = frame::encode_account(5, "did:plc:abc", "2025-01-01T00:00:00Z", true, None)
        .expect("encode");
    assert_eq!(
        frame::strip_identity_handle(&account),
        Err(FrameError::NotType("#identity"))
    );
    let info = frame::encode_info("OutdatedCursor", None).expect("info");
    assert_eq!(
        frame::rewrite_account(&info, true, None),
        Err(FrameError::NotType("#account"))
    );
    let err = frame::encode_error("FutureCursor", None).expect("error frame");
    assert_eq!(
        frame::rewrite_account(&err, true, None),
        Err(FrameError::NotType("#account"))
    );
    // The walker's refusals apply: a text field of another type, trailing bytes.
    let mut bad = base_account_with("did", Ipld::Integer(1));
    assert_eq!(
        frame::rewrite_account(&bad, true, None),
        Err(FrameError::WrongType("did"))
    );
    bad = account.clone();
    bad.push(0x00);
    assert_eq!(
        frame::rewrite_account(&bad, true, None),
        Err(FrameError::ExtraItems)
    );
    assert!(frame::rewrite_account(&account[..account.len() - 1], true, None).is_err());
    assert_eq!(FrameError::NotType("#account").reason(), "frame-not-type");
}

fn base_account_with(key: &str, value: Ipld) -> Vec<u8> {
    let mut body = BTreeMap::from([
        ("seq".to_string(), Ipld::Integer(1)),
        ("did".to_string(), text("did:plc:abc")),
        ("time".to_string(), text("2025-01-01T00:00:00.000Z")),
        ("active".to_string(), Ipld::Bool(true)),
    ]);
    body.insert(key.to_string(), value);
    msg_with("#account", body)
}

fn arb_ipld() -> impl Strategy<Value = Ipld> {
    let leaf = prop_oneof![
        Just(Ipld::Null),
        any::<bool>().prop_map(Ipld::Bool),
        any::<u32>().prop_map(|n| Ipld::Integer(n.into())),
        "[a-z]{0,8}".prop_map(Ipld::String),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Ipld::Bytes),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        proptest::collection::vec(inner, 0..4).prop_map(Ipld::List)
    })
}

proptest! {
    #[test]
    fn unknown_fields_survive_both_rewrites(
        extra in proptest::collection::btree_map("[a-z]{1,12}", arb_ipld(), 0..6),
        active in any::<bool>(),
        status in proptest::option::of("[a-z]{1,10}"),
    ) {
        let mut body = BTreeMap::from([
            ("seq".to_string(), Ipld::Integer(1)),
            ("did".to_string(), text("did:plc:abc")),
            ("time".to_string(), text("2025-01-01T00:00:00.000Z")),
        ]);
        // Unknown fields only: known names keep their lexicon types.
        for (k, v) in extra {
            if !matches!(k.as_str(), "seq" | "did" | "time" | "active" | "status" | "handle") {
                body.insert(format!("x{k}"), v);
            }
        }
        let acct = msg_with("#account", body.clone());
        let out = frame::rewrite_account(&acct, active, status.as_deref()).unwrap();
        assert_readable_and_canonical(&out);
        let (_, b) = parts(&out);
        for (k, v) in &body {
            prop_assert_eq!(b.get(k), Some(v));
        }
        prop_assert_eq!(b.len(), body.len() + 1 + usize::from(status.is_some()));

        let ident = msg_with("#identity", body.clone());
        let out = frame::strip_identity_handle(&ident).unwrap();
        prop_assert_eq!(&out[..], &ident[..]);
    }

    #[test]
    fn arbitrary_bodies_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        t in prop_oneof![Just("#account"), Just("#identity")],
    ) {
        let mut msg = header_item(t);
        msg.extend(&bytes);
        let _ = frame::rewrite_account(&msg, true, Some("x"));
        let _ = frame::strip_identity_handle(&msg);
        let _ = frame::rewrite_account(&bytes, false, None);
        let _ = frame::strip_identity_handle(&bytes);
    }
}
