//! Full validation of a typical `#commit` (decode_frame + validate_commit) and its stages:
//! a 1-op create into a repo of 10,000 records, as a PDS sends it (diff + covering proof +
//! record block), signed with K-256 or P-256.
//!
//! Run: `cargo bench --bench atproto_validate -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use rookery::atproto::car::{self, CarLimits};
use rookery::atproto::cid::{Cid, cid_for_dag_cbor};
use rookery::atproto::commit::Commit;
use rookery::atproto::frame::{self, CommitEvent, Frame, RepoOp};
use rookery::atproto::keys::{Curve, PrivateKey, PublicKey};
use rookery::atproto::mst::Mst;
use rookery::atproto::sync11::{self, CommitOp, Sync11Outcome};
use rookery::atproto::tid::Tid;
use rookery::atproto::validate::{CommitVerdict, RepoState, ValidationPolicy, validate_commit};

const DID: &str = "did:plc:44ybard66vv44zksje25o7dz";
const RECORDS: usize = 10_000;
/// 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600_000_000;

fn record(text: &str) -> (Cid, Vec<u8>) {
    let bytes = serde_ipld_dagcbor::to_vec(&BTreeMap::from([
        ("$type", "app.bsky.feed.post"),
        ("text", text),
        ("createdAt", "2025-12-31T23:59:00.000Z"),
    ]))
    .expect("record");
    (cid_for_dag_cbor(&bytes), bytes)
}

fn path(i: usize) -> String {
    // TID-like record keys in one collection, as a busy repo has.
    format!(
        "app.bsky.feed.post/3l{:011x}",
        i.wrapping_mul(2_654_435_761) % 0xfff_ffff_ffff
    )
}

struct Fixture {
    key: PublicKey,
    stored: RepoState,
    msg: Bytes,
    event: CommitEvent,
}

/// The stored state after a previous commit, and the wire message of the next one (1 create).
fn fixture(base: &Mst, curve: Curve) -> Fixture {
    let key = PrivateKey::generate(curve);
    let mut old = base.clone();
    let prev_data = old.root_cid();
    let prev_rev = Tid::from_parts(NOW - 10_000_000, 3);
    let (prev_commit, _) = Commit::sign(DID, prev_rev, prev_data, &key).expect("sign");
    let stored = RepoState {
        rev: prev_rev,
        commit: prev_commit,
        data: prev_data,
    };

    let mut new = old.clone();
    let p = path(RECORDS);
    let (cid, bytes) = record(&p);
    new.insert(p.as_bytes(), cid).expect("insert");
    let data = new.root_cid();
    let diff = Mst::commit_diff(&mut old, &mut new, [p.as_bytes()]).expect("diff");
    let rev = Tid::from_parts(NOW - 1_000_000, 3);
    let (commit_cid, block) = Commit::sign(DID, rev, data, &key).expect("sign");
    let mut blocks: Vec<(Cid, Vec<u8>)> = vec![(commit_cid, block)];
    blocks.extend(diff);
    blocks.push((cid, bytes));
    let car = car::write_car(&[commit_cid], blocks.iter().map(|(c, b)| (c, b.as_slice())));
    let event = CommitEvent {
        seq: 123_456_789,
        rebase: false,
        too_big: false,
        repo: DID.into(),
        commit: commit_cid,
        rev: rev.to_string(),
        since: Some(prev_rev.to_string()),
        blocks: Bytes::from(car),
        ops: vec![RepoOp {
            action: "create".into(),
            path: p,
            cid: Some(cid),
            prev: None,
        }],
        blobs: vec![],
        prev_data: Some(prev_data),
        time: "2025-12-31T23:59:59.000Z".into(),
    };
    let msg =
        Bytes::from(frame::encode_frame(&Frame::Commit(Box::new(event.clone()))).expect("encode"));
    eprintln!(
        "{curve:?}: frame {} bytes, CAR {} bytes, {} blocks",
        msg.len(),
        event.blocks.len(),
        blocks.len()
    );
    Fixture {
        key: key.public_key(),
        stored,
        msg,
        event,
    }
}

fn full(f: &Fixture) -> CommitVerdict {
    let Ok(Frame::Commit(evt)) = frame::decode_frame(&f.msg) else {
        panic!("decode")
    };
    validate_commit(
        &evt,
        &f.key,
        Some(&f.stored),
        NOW,
        &ValidationPolicy::default(),
    )
    .expect("valid")
}

fn benches(c: &mut Criterion) {
    let paths: Vec<String> = (0..RECORDS).map(path).collect();
    let base = Mst::from_entries(paths.iter().map(|p| (p.as_bytes(), record(p).0))).expect("tree");
    let k256 = fixture(&base, Curve::K256);
    let p256 = fixture(&base, Curve::P256);
    assert!(matches!(full(&k256), CommitVerdict::Accept { .. }));
    assert!(matches!(full(&p256), CommitVerdict::Accept { .. }));

    c.bench_function("validate/full 1-op commit, 10k repo (k256)", |b| {
        b.iter(|| full(black_box(&k256)))
    });
    c.bench_function("validate/full 1-op commit, 10k repo (p256)", |b| {
        b.iter(|| full(black_box(&p256)))
    });

    // Stages, each on the K-256 fixture.
    let f = &k256;
    c.bench_function("stage/frame decode_frame", |b| {
        b.iter(|| frame::decode_frame(black_box(&f.msg)).expect("decode"))
    });
    let limits = CarLimits::default();
    c.bench_function("stage/car read_car (hash checks)", |b| {
        b.iter(|| car::read_car(black_box(f.event.blocks.clone()), &limits).expect("car"))
    });
    let parsed = car::read_car(f.event.blocks.clone(), &limits).expect("car");
    let block = parsed.blocks.get(&f.event.commit).expect("commit block");
    c.bench_function("stage/commit decode", |b| {
        b.iter(|| Commit::decode(black_box(block)).expect("commit"))
    });
    let commit = Commit::decode(block).expect("commit");
    c.bench_function("stage/signature (k256)", |b| {
        b.iter(|| commit.verify_signature(black_box(&f.key)).expect("sig"))
    });
    let commit_p = {
        let car = car::read_car(p256.event.blocks.clone(), &limits).expect("car");
        Commit::decode(car.blocks.get(&p256.event.commit).expect("block")).expect("commit")
    };
    c.bench_function("stage/signature (p256)", |b| {
        b.iter(|| {
            commit_p
                .verify_signature(black_box(&p256.key))
                .expect("sig")
        })
    });
    let ops: Vec<CommitOp<'_>> = f.event.ops.iter().map(|o| o.as_commit_op()).collect();
    let prev_data = f.event.prev_data.expect("prevData");
    assert_eq!(
        sync11::verify_commit(commit.data, prev_data, &ops, &parsed.blocks),
        Sync11Outcome::Verified
    );
    c.bench_function("stage/inversion verify_commit", |b| {
        b.iter(|| sync11::verify_commit(commit.data, prev_data, black_box(&ops), &parsed.blocks))
    });
    // Inside the inversion.
    c.bench_function("inversion/Mst::load", |b| {
        b.iter(|| Mst::load(black_box(commit.data), &parsed.blocks).expect("load"))
    });
    let key = f.event.ops[0].path.as_bytes();
    let loaded = Mst::load(commit.data, &parsed.blocks).expect("load");
    c.bench_function("inversion/remove + root_cid (on a loaded tree)", |b| {
        b.iter_batched(
            || loaded.clone(),
            |mut t| {
                t.remove(black_box(key)).expect("remove");
                t.root_cid()
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function(
        "inversion/clone of the loaded tree (baseline for the above)",
        |b| b.iter(|| black_box(&loaded).clone()),
    );
}

criterion_group!(atproto_validate, benches);
criterion_main!(atproto_validate);
