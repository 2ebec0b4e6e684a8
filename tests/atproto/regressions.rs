//! Regression tests for the protocol-core findings of issue 8 (real peers and coverage-guided
//! fuzzing): readers that disagreed, and small inputs that cost far more than their size.
//! Each test failed before its fix.

use std::collections::BTreeMap;

use bytes::Bytes;
use ipld_core::ipld::Ipld;
use rookery::atproto::car;
use rookery::atproto::cbor::write_head;
use rookery::atproto::cid::{Cid, cid_for_dag_cbor};
use rookery::atproto::commit::Commit;
use rookery::atproto::frame::{self, CommitEvent, Frame, FrameError, RepoOp};
use rookery::atproto::keys::{Curve, PrivateKey};
use rookery::atproto::mst::Mst;
use rookery::atproto::tid::Tid;
use rookery::atproto::validate::{CommitVerdict, RepoState, ValidationPolicy, validate_commit};
use rookery::testkit::repo::{Change, SigningRepo, record, record_path, tree_of};
use sha2::Digest;

const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
/// 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600_000_000;

fn key() -> PrivateKey {
    PrivateKey::from_bytes(Curve::K256, &[7u8; 32]).expect("fixed key")
}

/// A PDS-side repo of `records` records that signs with the fixed key (the `validate` fuzz
/// target's), with a first `#sync` behind it so its commits carry `since`.
fn signing_repo(records: usize) -> SigningRepo {
    let mut repo = SigningRepo::from_tree(DID, key(), tree_of(records), NOW - 10_000_000);
    repo.sync();
    repo
}

/// A valid, signed 1-op `#commit` on a 20-record repo, with the stored state before it.
fn signed_commit() -> (CommitEvent, RepoState) {
    let mut repo = signing_repo(20);
    let state = repo.state.expect("synced");
    (repo.commit(&[Change::Create(record_path(1000))]), state)
}

// ------------------------------------------------------------------------------------------
// Finding 1: non-text values read into text fields

/// The four frame readers' verdicts, reduced to their errors.
fn readers(msg: &[u8]) -> [Result<(), FrameError>; 4] {
    [
        frame::decode_header(msg).map(|_| ()),
        frame::peek_event(msg).map(|_| ()),
        frame::decode_frame(&Bytes::copy_from_slice(msg)).map(|_| ()),
        frame::resequence(msg, 99).map(|_| ()),
    ]
}

/// Every reader refuses `msg` with the same typed error, whose reason is `reason`.
fn assert_all_refuse(name: &str, msg: &[u8], reason: &str) {
    let results = readers(msg);
    for (reader, r) in ["decode_header", "peek_event", "decode_frame", "resequence"]
        .iter()
        .zip(&results)
    {
        assert_eq!(
            r, &results[0],
            "{name}: {reader} disagrees with decode_header"
        );
        match r {
            Err(e) => assert_eq!(e.reason(), reason, "{name}: {reader}: {e}"),
            Ok(()) => panic!("{name}: {reader} accepted the frame"),
        }
    }
}

/// Header `{op, t}` and a body map with raw `(key, item)` entries, in the order given.
fn frame_with(header_t: &[u8], entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut m = vec![0xa2, 0x61, b't'];
    m.extend_from_slice(header_t);
    m.extend_from_slice(&[0x62, b'o', b'p', 0x01]);
    write_head(&mut m, 5, entries.len() as u64);
    for (k, v) in entries {
        write_head(&mut m, 3, k.len() as u64);
        m.extend_from_slice(k.as_bytes());
        m.extend_from_slice(v);
    }
    m
}

fn text(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    write_head(&mut out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    out
}

fn byte_string(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_head(&mut out, 2, b.len() as u64);
    out.extend_from_slice(b);
    out
}

#[test]
fn text_fields_refuse_byte_strings_and_integers_in_every_reader() {
    // The reproducer from the issue: `#identity` with did = h'61', seq 0, time "".
    let repro =
        hex::decode("a2617469236964656e74697479626f7001a363646964416163736571006474696d6560")
            .expect("hex");
    assert_all_refuse("reproducer", &repro, "frame-wrong-type");

    let identity = |did: Vec<u8>| {
        frame_with(
            &text("#identity"),
            &[
                ("did", did),
                ("seq", vec![0x01]),
                ("time", text("2025-01-01T00:00:00Z")),
            ],
        )
    };
    // The good frame passes every reader.
    let good = identity(text("did:plc:a"));
    assert!(readers(&good).iter().all(Result::is_ok));
    for (name, did) in [
        ("did bytes", byte_string(b"did:plc:a")),
        ("did 0", vec![0x00]),
        ("did -1", vec![0x20]),
        ("did 5", vec![0x05]),
    ] {
        assert_all_refuse(name, &identity(did), "frame-wrong-type");
    }
    // Optional text fields: handle as bytes; null is allowed.
    let mut entries = vec![
        ("did", text("did:plc:a")),
        ("seq", vec![0x01]),
        ("time", text("2025-01-01T00:00:00Z")),
        ("handle", byte_string(b"a.test")),
    ];
    assert_all_refuse(
        "handle bytes",
        &frame_with(&text("#identity"), &entries),
        "frame-wrong-type",
    );
    entries[3].1 = vec![0xf6];
    assert!(
        readers(&frame_with(&text("#identity"), &entries))
            .iter()
            .all(Result::is_ok)
    );

    // The header's `t` as a byte string (was read as "#identity"): a bad header everywhere.
    let bytes_t = frame_with(
        &byte_string(b"#identity"),
        &[
            ("did", text("did:plc:a")),
            ("seq", vec![0x01]),
            ("time", text("2025-01-01T00:00:00Z")),
        ],
    );
    assert_all_refuse("t bytes", &bytes_t, "frame-bad-header");
    // `t` as the integer 0 (was read as "" and then as an unknown type).
    let zero_t = frame_with(&[0x00], &[("seq", vec![0x01])]);
    assert_all_refuse("t 0", &zero_t, "frame-bad-header");
}

/// Encodes `evt` as a `#commit` frame after `edit` changed its body.
fn commit_frame_edited(
    evt: &CommitEvent,
    edit: impl FnOnce(&mut BTreeMap<String, Ipld>),
) -> Vec<u8> {
    let msg = frame::encode_frame(&Frame::Commit(Box::new(evt.clone()))).expect("encode");
    let h = frame::decode_header(&msg).expect("header");
    let mut body: BTreeMap<String, Ipld> =
        serde_ipld_dagcbor::from_slice(&msg[h.body_offset..]).expect("body");
    edit(&mut body);
    let mut out = msg[..h.body_offset].to_vec();
    out.extend(serde_ipld_dagcbor::to_vec(&body).expect("encode body"));
    out
}

#[test]
fn signed_commit_with_byte_string_repo_is_refused_before_validation() {
    let (evt, state) = signed_commit();
    let policy = ValidationPolicy::default();
    let pk = key().public_key();
    // The unmodified event is valid.
    let msg = Bytes::from(commit_frame_edited(&evt, |_| {}));
    let Ok(Frame::Commit(c)) = frame::decode_frame(&msg) else {
        panic!("good commit does not decode");
    };
    assert!(matches!(
        validate_commit(&c, &pk, Some(&state), NOW, &policy),
        Ok(CommitVerdict::Accept { .. })
    ));
    // `repo` as a byte string holding the DID: decoded as the DID before, so the signed commit
    // validated and would have been re-emitted with a lexicon-breaking `repo`.
    let bytes_repo = commit_frame_edited(&evt, |b| {
        b.insert("repo".into(), Ipld::Bytes(DID.as_bytes().to_vec()));
    });
    assert_all_refuse("repo bytes", &bytes_repo, "frame-wrong-type");
    // The other text and bytes fields of a commit.
    for (field, value) in [
        ("rev", Ipld::Bytes(evt.rev.as_bytes().to_vec())),
        ("time", Ipld::Bytes(evt.time.as_bytes().to_vec())),
        ("since", Ipld::Bytes(b"x".to_vec())),
        ("blocks", Ipld::Integer(0)),
        ("blocks", Ipld::String("x".into())),
        ("seq", Ipld::Integer(-1)),
        ("tooBig", Ipld::Integer(0)),
        ("commit", Ipld::Bytes(vec![0])),
        ("ops", Ipld::Integer(0)),
    ] {
        let m = commit_frame_edited(&evt, |b| {
            b.insert(field.into(), value.clone());
        });
        assert_all_refuse(field, &m, "frame-wrong-type");
    }
    // Inside an op (only the typed decoder reads ops): `action` as bytes was read as "create".
    let m = commit_frame_edited(&evt, |b| {
        let Some(Ipld::List(ops)) = b.get_mut("ops") else {
            panic!("ops");
        };
        let Some(Ipld::Map(op)) = ops.get_mut(0) else {
            panic!("op");
        };
        op.insert("action".into(), Ipld::Bytes(b"create".to_vec()));
    });
    assert!(matches!(
        frame::decode_frame(&Bytes::from(m)),
        Err(FrameError::BadBody(_))
    ));
}

// ------------------------------------------------------------------------------------------
// Finding 2: the 4,096-entry cap on the top-level body map

/// An `#identity` body with `did`, `seq`, `time` and `extra` more keys `x00000`, `x00001`, …
/// (`sorted`: all keys in canonical order, else the extra keys in reverse).
fn identity_with_extra_keys(extra: usize, sorted: bool) -> Vec<u8> {
    let mut keys: Vec<String> = (0..extra).map(|i| format!("x{i:05}")).collect();
    if !sorted {
        keys.reverse();
    }
    let mut entries: Vec<(&str, Vec<u8>)> = vec![
        ("did", text("did:plc:a")),
        ("seq", vec![0x01]),
        ("time", text("2025-01-01T00:00:00Z")),
    ];
    entries.extend(keys.iter().map(|k| (k.as_str(), vec![0x00])));
    frame_with(&text("#identity"), &entries)
}

#[test]
fn top_level_body_map_is_capped_for_every_reader() {
    let cap = frame::MAX_FRAME_COLLECTION_LEN;
    for sorted in [true, false] {
        // Exactly at the cap: every reader accepts, and they agree on what they read.
        let at_cap = identity_with_extra_keys(cap - 3, sorted);
        assert!(
            readers(&at_cap).iter().all(Result::is_ok),
            "sorted={sorted}"
        );
        let peek = frame::peek_event(&at_cap).expect("peek");
        assert_eq!((peek.seq, peek.did), (Some(1), Some("did:plc:a")));
        // One over: the same typed error everywhere (peek_event and resequence used to skip
        // the cap when the keys came in canonical order).
        let over = identity_with_extra_keys(cap - 2, sorted);
        assert_all_refuse(&format!("sorted={sorted}"), &over, "frame-bad-cbor");
        assert_eq!(
            frame::peek_event(&over),
            Err(FrameError::Cbor(
                rookery::atproto::cbor::CborError::CollectionTooLong
            ))
        );
    }
    // A 5 MB frame of tiny entries (what made resequence allocate ~23x its size) is refused
    // at the map head, before any entry is read.
    let mut huge = frame_with(&text("#identity"), &[]);
    huge.truncate(huge.len() - 1);
    write_head(&mut huge, 5, 600_000);
    for i in 0..600_000u32 {
        huge.push(0x66); // text(6)
        huge.extend_from_slice(format!("{i:06x}").as_bytes());
        huge.push(0x00);
    }
    assert!(huge.len() <= frame::MAX_FRAME_BYTES, "{}", huge.len());
    assert_all_refuse("5 MB of tiny entries", &huge, "frame-bad-cbor");
}

// ------------------------------------------------------------------------------------------
// Finding 4: PdsEndpoint::parse and its own url() must agree

use rookery::atproto::did_doc::{DidDocError, PdsEndpoint};

/// An accepted endpoint re-parses from its `url()` to itself.
fn assert_reparse_agrees(input: &str) {
    if let Ok(ep) = PdsEndpoint::parse(input) {
        let url = ep.url();
        assert_eq!(
            PdsEndpoint::parse(&url).as_ref(),
            Ok(&ep),
            "{} input bytes, url {} bytes",
            input.len(),
            url.len()
        );
    }
}

#[test]
fn pds_endpoint_reparses_to_itself_after_idna() {
    // 1,210 bytes of "é." (2-byte é): 1,217 input bytes, but the stored host is the punycode
    // form "xn--9ca." per label, over 3,000 bytes, which the 2,048-byte limit refuses.
    let long = format!("https://{}", "é.".repeat(403));
    assert!(long.len() <= 2048);
    assert_eq!(PdsEndpoint::parse(&long), Err(DidDocError::BadPdsEndpoint));
    assert_reparse_agrees(&long);
    // Up to the limit, IDNA hosts are fine and round-trip.
    let ok = PdsEndpoint::parse("https://Bücher.example:8443/").expect("idna host");
    assert_eq!(ok.host, "xn--bcher-kva.example:8443");
    assert_reparse_agrees("https://Bücher.example:8443/");
    // Exactly at the limit after normalisation, and one byte over.
    let at = |n: usize| format!("https://{}.example", "a".repeat(n));
    let fits = 2048 - "https://.example".len();
    assert!(PdsEndpoint::parse(&at(fits)).is_ok());
    assert_reparse_agrees(&at(fits));
    assert_eq!(
        PdsEndpoint::parse(&at(fits + 1)),
        Err(DidDocError::BadPdsEndpoint)
    );
    // A label that grows under IDNA right at the limit.
    let grown = format!("https://{}.é", "a".repeat(fits - 1));
    assert_reparse_agrees(&grown);
}

// ------------------------------------------------------------------------------------------
// Finding 3: a 2 MB hostile MST slice must cost a small multiple of its size

use rookery::atproto::mst::{encode_node, key_depth};

/// A record CID as small as a CID gets (identity multihash of nothing): `v` of an MST entry
/// may be any CID, so a hostile entry is ~24 bytes on the wire.
fn tiny_cid() -> Cid {
    let hash = cid::multihash::Multihash::<64>::wrap(0x00, &[]).expect("identity hash");
    Cid::new_v1(0x55, hash)
}

/// The hostile slice of the issue, within every documented limit: leaf nodes of 1,024 entries
/// whose keys share a 1,000-byte prefix (`p` ≈ 1,000, suffix 1-2 bytes), under one layer-1
/// root; as many leaves as fit in 2,000,000 bytes of CAR with the commit block. Returns the
/// `#commit` frame, signed with a fixed key (the signature is never reached), to validate
/// against [`hostile_state`].
fn hostile_commit_frame() -> Vec<u8> {
    let value = tiny_cid();
    let prefix = |i: usize| format!("{i:0>1000}");
    let mut leaves: Vec<(Cid, Vec<u8>)> = Vec::new();
    let mut root_entries: Vec<(Vec<u8>, Cid, Option<Cid>)> = Vec::new();
    let mut left = None;
    let mut total = 1_000; // the commit block, the record block and the CAR header
    for i in 0.. {
        let mut keys = Vec::with_capacity(1024);
        let mut n = 0;
        while keys.len() < 1024 {
            let key = format!("{}b{n:04}", prefix(i)).into_bytes();
            if key_depth(&key) == 0 {
                keys.push(key);
            }
            n += 1;
        }
        let entries: Vec<(&[u8], Cid, Option<Cid>)> =
            keys.iter().map(|k| (k.as_slice(), value, None)).collect();
        let block = encode_node(None, &entries);
        total += block.len() + 40;
        if total > 2_000_000 {
            break;
        }
        let cid = cid_for_dag_cbor(&block);
        leaves.push((cid, block));
        if i == 0 {
            left = Some(cid);
        } else {
            // A layer-1 key between the previous leaf's keys and this leaf's.
            let root_key = (0..)
                .map(|m| format!("{}a{m}", prefix(i)).into_bytes())
                .find(|k| key_depth(k) == 1)
                .expect("a layer-1 key");
            root_entries.push((root_key, value, Some(cid)));
        }
    }
    let root_refs: Vec<(&[u8], Cid, Option<Cid>)> = root_entries
        .iter()
        .map(|(k, v, t)| (k.as_slice(), *v, *t))
        .collect();
    let root = encode_node(left, &root_refs);
    let root_cid = cid_for_dag_cbor(&root);

    let state = hostile_state();
    let rev = Tid::from_parts(NOW - 1_000_000, 1);
    let (commit_cid, commit_block) = Commit::sign(DID, rev, root_cid, &key()).expect("sign");
    let (record_cid, record_block) = record("hello");
    let mut blocks = vec![(commit_cid, commit_block), (root_cid, root)];
    blocks.extend(leaves);
    blocks.push((record_cid, record_block));
    let car = car::write_car(&[commit_cid], blocks.iter().map(|(c, b)| (c, b.as_slice())));
    assert!(car.len() <= 2_000_000, "{}", car.len());
    let evt = CommitEvent {
        seq: 10,
        rebase: false,
        too_big: false,
        repo: DID.into(),
        commit: commit_cid,
        rev: rev.to_string(),
        since: Some(state.rev.to_string()),
        blocks: Bytes::from(car),
        ops: vec![RepoOp {
            action: "create".into(),
            path: "app.bsky.feed.post/3l2222222222".into(),
            cid: Some(record_cid),
            prev: None,
        }],
        blobs: vec![],
        prev_data: Some(state.data),
        time: "2025-12-31T23:59:00.000Z".into(),
    };
    frame::encode_frame(&Frame::Commit(Box::new(evt))).expect("encode")
}

/// `VmHWM` / `VmRSS` of this process, in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("kB value");
    kb * 1024
}

const HOSTILE_CHILD_ENV: &str = "ROOKERY_HOSTILE_MST_FRAME";
const HOSTILE_TEST: &str = "regressions::hostile_mst_slice_costs_a_small_multiple_of_its_size";

/// The measured part, in a fresh process (VmHWM is per process): read the frame, then decode
/// and validate it as the validator would, and report peak memory growth and times.
fn hostile_child(path: &str) {
    let msg = Bytes::from(std::fs::read(path).expect("frame file"));
    let state = hostile_state();
    let pk = key().public_key();
    // Reference time for "its size": hashing the input once.
    let hash_time = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            std::hint::black_box(sha2::Sha256::digest(&msg[..]));
            t.elapsed()
        })
        .min()
        .expect("three runs");
    let rss_before = proc_status_bytes("VmRSS:");
    let hwm_before = proc_status_bytes("VmHWM:");
    let run = || match frame::decode_frame(&msg) {
        Ok(Frame::Commit(c)) => {
            validate_commit(&c, &pk, Some(&state), NOW, &ValidationPolicy::default())
                .map(|_| "accepted".to_string())
                .unwrap_or_else(|e| e.reason().to_string())
        }
        other => format!("frame: {other:?}"),
    };
    // Three runs (the peak is the same each time), the fastest one reported.
    let mut result = String::new();
    let mut elapsed = std::time::Duration::MAX;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        result = run();
        elapsed = elapsed.min(start.elapsed());
    }
    let hwm_after = proc_status_bytes("VmHWM:");
    println!(
        "HOSTILE-MST input={} rss_before={rss_before} hwm_before={hwm_before} \
         hwm_after={hwm_after} validate_us={} sha256_us={} result={result}",
        msg.len(),
        elapsed.as_micros(),
        hash_time.as_micros(),
    );
}

/// The stored state [`hostile_commit_frame`] is validated against (rebuilt in the child: it
/// depends only on the fixed key and clock).
fn hostile_state() -> RepoState {
    let prev_rev = Tid::from_parts(NOW - 2_000_000, 1);
    let prev_data = cid_for_dag_cbor(b"\xa0");
    let (prev_commit, _) = Commit::sign(DID, prev_rev, prev_data, &key()).expect("sign");
    RepoState {
        rev: prev_rev,
        commit: prev_commit,
        data: prev_data,
    }
}

/// Finding 3: within every documented limit, 2 MB of MST blocks made `Mst::load` build
/// ~100 MB of keys and spend 0.2-0.4 s hashing them, before the signature. The hostile
/// frame runs in a child process (this test binary re-executed with `--exact`) that reports
/// its peak RSS before and after decode + validation.
#[test]
fn hostile_mst_slice_costs_a_small_multiple_of_its_size() {
    if let Ok(path) = std::env::var(HOSTILE_CHILD_ENV) {
        hostile_child(&path);
        return;
    }
    let msg = hostile_commit_frame();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hostile-mst.frame");
    std::fs::write(&path, &msg).expect("write frame");
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", HOSTILE_TEST, "--nocapture", "--test-threads=1"])
        .env(HOSTILE_CHILD_ENV, &path)
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find("HOSTILE-MST").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no report from the child: {stdout}"));
    println!("{line}");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line}"))
    };
    let input = field("input");
    let growth = field("hwm_after").saturating_sub(field("rss_before"));
    let (validate_us, sha256_us) = (field("validate_us"), field("sha256_us").max(1));
    assert!(
        line.contains("result=inversion-mst-over-budget"),
        "refused by the load budget: {line}"
    );
    // Memory: peak growth of decode + validation within a small multiple of the input.
    assert!(
        growth <= 10 * input,
        "peak RSS grew by {growth} bytes for a {input}-byte frame ({:.1}x)",
        growth as f64 / input as f64
    );
    // Time: within a small multiple of hashing the input once (validation hashes every
    // block anyway), measured in the same process; generous for a loaded machine.
    assert!(
        validate_us <= 30 * sha256_us,
        "validation took {validate_us} µs, hashing the input {sha256_us} µs"
    );
}

// ------------------------------------------------------------------------------------------
// Seeds for the fuzz targets (fuzz/README.md)

use rookery::atproto::data_model;
use rookery::atproto::validate::{SyncVerdict, validate_sync};

use crate::common::vectors::{read_bytes as vector, read_json as vector_json, scenario_frames};

/// A scenario's `{header, body}` frame (JSON form) as the binary message.
fn frame_from_json(f: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    for part in ["header", "body"] {
        let ipld = data_model::from_json(&f[part]).expect("scenario frame in the data model");
        out.extend(rookery::atproto::cbor::encode(&ipld).expect("encode"));
    }
    out
}

/// The stored state the `validate` fuzz target derives from a commit event.
fn derived_state(c: &CommitEvent) -> Option<RepoState> {
    let rev = c.since.as_deref().and_then(|s| Tid::parse(s).ok())?;
    Some(RepoState {
        rev,
        commit: cid_for_dag_cbor(b"previous commit"),
        data: c.prev_data.unwrap_or_else(|| cid_for_dag_cbor(b"\xa0")),
    })
}

/// Seed inputs for every fuzz target, `(target, name, bytes)`: the vectors (relay scenario
/// frames, commit slices, repo CARs, DID documents, data-model bytes) and valid frames
/// signed with the `validate` target's fixed key.
fn fuzz_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut cars: Vec<(String, Bytes)> = Vec::new();

    // Relay scenario frames, and the CAR slices they carry.
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (name, f) in scenario_frames() {
        let stem = name.trim_end_matches(".json").to_string();
        let i = index.entry(stem.clone()).or_default();
        let label = format!("{stem}-{i}");
        *i += 1;
        let msg = frame_from_json(&f);
        match frame::decode_frame(&Bytes::from(msg.clone())).expect("scenario frame") {
            Frame::Commit(c) => cars.push((label.clone(), c.blocks.clone())),
            Frame::Sync(s) => cars.push((label.clone(), s.blocks.clone())),
            _ => {}
        }
        seeds.push(("frame", label.clone(), msg.clone()));
        seeds.push(("validate", label, msg));
    }

    // Valid events signed with the fixed key: create, update + delete, a 3-op commit, a sync.
    let mut repo = signing_repo(50);
    let policy = ValidationPolicy::default();
    let pk = key().public_key();
    let events = [
        repo.commit(&[Change::Create(record_path(1000))]),
        repo.commit(&[
            Change::Update(record_path(3)),
            Change::Delete(record_path(4)),
        ]),
        repo.commit(&[
            Change::Create(record_path(1001)),
            Change::Create(record_path(1002)),
            Change::Delete(record_path(1000)),
        ]),
    ];
    for (i, evt) in events.into_iter().enumerate() {
        let verdict = validate_commit(&evt, &pk, derived_state(&evt).as_ref(), NOW, &policy);
        assert!(
            matches!(verdict, Ok(CommitVerdict::Accept { .. })),
            "seed commit {i}: {verdict:?}"
        );
        cars.push((format!("signed-commit-{i}"), evt.blocks.clone()));
        let msg = frame::encode_frame(&Frame::Commit(Box::new(evt))).expect("encode");
        seeds.push(("frame", format!("signed-commit-{i}"), msg.clone()));
        seeds.push(("validate", format!("signed-commit-{i}"), msg));
    }
    let sync = repo.sync();
    assert!(matches!(
        validate_sync(&sync, &pk, None, NOW, &policy),
        Ok(SyncVerdict::Accept { .. })
    ));
    cars.push(("signed-sync".into(), sync.blocks.clone()));
    let msg = frame::encode_frame(&Frame::Sync(sync)).expect("encode");
    seeds.push(("frame", "signed-sync".into(), msg.clone()));
    seeds.push(("validate", "signed-sync".into(), msg));
    for (name, msg) in [
        (
            "account",
            frame::encode_account(5, DID, "2025-01-01T00:00:00Z", false, Some("deleted")),
        ),
        (
            "info",
            frame::encode_info(frame::OUTDATED_CURSOR, Some("replaying")),
        ),
        ("error", frame::encode_error(frame::FUTURE_CURSOR, None)),
    ] {
        seeds.push(("frame", name.into(), msg.expect("encode")));
    }
    seeds.push((
        "frame",
        "issue-8-reproducer".into(),
        hex::decode("a2617469236964656e74697479626f7001a363646964416163736571006474696d6560")
            .expect("hex"),
    ));

    // Repo CARs and slices from the vectors (the two large repos are left out: seeds should
    // stay small, and libFuzzer's input length follows the largest seed).
    for rel in [
        "indigo/testing/testdata/repo_slice.car",
        "indigo/testing/testdata/greenground.repo.car",
        "indigo/testing/testdata/bafyreieovfuizojpw3zresz7sx3nk4trm2by23pt5rxbey3jme4uo5ogiu.car",
    ] {
        let name = rel.rsplit('/').next().expect("file name").to_string();
        cars.push((name, Bytes::from(vector(rel))));
    }
    for (name, car_bytes) in &cars {
        seeds.push(("car", name.clone(), car_bytes.to_vec()));
        let parsed = car::read_car(car_bytes.clone(), &car::CarLimits::default()).expect("car");
        // Every block (commit, MST nodes, records) for the CBOR + commit target.
        let mut blocks: Vec<(String, Vec<u8>)> = parsed
            .blocks
            .iter()
            .map(|(cid, b)| (format!("{name}-{cid}"), b.to_vec()))
            .collect();
        blocks.sort();
        for (block_name, block) in blocks {
            seeds.push(("cbor_commit", block_name, block));
        }
        // For the MST target: the same blocks as a CAR rooted at the commit's tree (when the
        // slice holds its root: a #sync carries only the commit).
        if let Some(commit) = parsed
            .blocks
            .get(&parsed.roots[0])
            .and_then(|b| Commit::decode(b).ok())
            .filter(|c| parsed.blocks.contains(&c.data))
        {
            let tree_car = car::write_car(
                &[commit.data],
                parsed.blocks.iter().map(|(c, b)| (c, &b[..])),
            );
            seeds.push(("mst", name.clone(), tree_car));
        }
    }
    // A complete small tree, and a leaf of prefix-compressed long keys (a small version of
    // the finding-3 slice).
    let mut small = tree_of(30);
    let root = small.root_cid();
    let nodes = small.node_blocks();
    seeds.push((
        "mst",
        "complete-30".into(),
        car::write_car(&[root], nodes.iter().map(|(c, b)| (c, b.as_slice()))),
    ));
    let keys: Vec<Vec<u8>> = (0..)
        .map(|n| format!("{}/{n:04}", "a".repeat(900)).into_bytes())
        .filter(|k| rookery::atproto::mst::key_depth(k) == 0)
        .take(32)
        .collect();
    let entries: Vec<(&[u8], Cid, Option<Cid>)> = keys
        .iter()
        .map(|k| (k.as_slice(), tiny_cid(), None))
        .collect();
    let leaf = encode_node(None, &entries);
    let leaf_cid = cid_for_dag_cbor(&leaf);
    seeds.push((
        "mst",
        "prefix-leaf".into(),
        car::write_car(&[leaf_cid], [(&leaf_cid, &leaf[..])]),
    ));

    // Data-model fixture bytes.
    let fixtures = vector_json("interop/data-model/data-model-fixtures.json");
    for (i, f) in fixtures.as_array().expect("fixtures").iter().enumerate() {
        let b64 = f["cbor_base64"].as_str().expect("cbor_base64");
        let bytes = data_encoding::BASE64_NOPAD
            .decode(b64.as_bytes())
            .expect("base64");
        seeds.push(("cbor_commit", format!("data-model-{i}"), bytes));
    }

    // DID documents, keys and endpoints.
    for rel in [
        "indigo/atproto/identity/testdata/did_plc_doc.json",
        "indigo/atproto/identity/testdata/did_plc_doc_legacy.json",
        "indigo/atproto/identity/testdata/did_web_doc.json",
        "indigo/testing/testdata/greenground.didDoc.json",
        "indigo/testing/testdata/paul_staging.didDoc.json",
        "indigo/testing/testdata/fakermaker.didDoc.json",
    ] {
        let name = rel.rsplit('/').next().expect("file name").to_string();
        seeds.push(("did_doc_keys", name, vector(rel)));
    }
    let pk = key().public_key();
    for (name, s) in [
        ("did-key", pk.to_did_key()),
        ("multikey", pk.to_multikey()),
        ("endpoint", "https://pds.example.com:8443/".to_string()),
        ("endpoint-v6", "http://[::1]:2583".to_string()),
        ("endpoint-idna", "https://Bücher.example".to_string()),
        ("handle", "alice.example.com".to_string()),
        ("datetime", "2025-02-06T01:05:06.528Z".to_string()),
    ] {
        seeds.push(("did_doc_keys", name.into(), s.into_bytes()));
    }
    seeds
}

/// The seeds are valid where they should be (checked in the normal suite). With
/// `ROOKERY_FUZZ_SEEDS=<dir>` they are also written to `<dir>/<target>/<name>`, which is how
/// `fuzz/seed.sh` fills `fuzz/corpus/` (never committed).
#[test]
fn fuzz_seeds_are_valid_and_written_on_request() {
    let seeds = fuzz_seeds();
    for target in [
        "frame",
        "car",
        "cbor_commit",
        "mst",
        "did_doc_keys",
        "validate",
    ] {
        let n = seeds.iter().filter(|(t, _, _)| *t == target).count();
        assert!(n >= 5, "{target}: {n} seeds");
    }
    for (target, name, bytes) in &seeds {
        match *target {
            "car" => {
                car::read_car(Bytes::from(bytes.clone()), &car::CarLimits::default())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "mst" => {
                let parsed = car::read_car(Bytes::from(bytes.clone()), &car::CarLimits::default())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                Mst::load(parsed.roots[0], &parsed.blocks)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "frame" if name != "issue-8-reproducer" => {
                frame::decode_frame(&Bytes::from(bytes.clone()))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            _ => {}
        }
    }
    let Ok(dir) = std::env::var("ROOKERY_FUZZ_SEEDS") else {
        return;
    };
    for (target, name, bytes) in &seeds {
        let dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).expect("seed dir");
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::fs::write(dir.join(format!("seed-{file}")), bytes).expect("write seed");
    }
    println!("wrote {} seeds to {dir}", seeds.len());
}
