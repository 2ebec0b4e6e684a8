//! Full validation of a typical `#commit` (decode_frame + validate_commit) and its stages:
//! a 1-op create into a repo of 10,000 records, as a PDS sends it (diff + covering proof +
//! record block), signed with K-256 or P-256.
//!
//! Run: `cargo bench --bench atproto_validate -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use rookery::atproto::car::{self, CarLimits};
use rookery::atproto::commit::Commit;
use rookery::atproto::frame::{self, CommitEvent, Frame};
use rookery::atproto::keys::{Curve, PrivateKey, PublicKey};
use rookery::atproto::mst::Mst;
use rookery::atproto::sync11::{self, CommitOp, Sync11Outcome};
use rookery::atproto::validate::{CommitVerdict, RepoState, ValidationPolicy, validate_commit};
use rookery::testkit::repo::{Change, SigningRepo, record_path, tree_of};

const DID: &str = "did:plc:44ybard66vv44zksje25o7dz";
const RECORDS: usize = 10_000;
/// 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600_000_000;

struct Fixture {
    key: PublicKey,
    stored: RepoState,
    msg: Bytes,
    event: CommitEvent,
}

/// The stored state after a previous commit, and the wire message of the next one (1 create).
fn fixture(base: &Mst, curve: Curve) -> Fixture {
    let mut repo = SigningRepo::from_tree(
        DID,
        PrivateKey::generate(curve),
        base.clone(),
        NOW - 10_000_000,
    );
    repo.sync();
    let stored = repo.state.expect("a synced repo has a state");
    let event = repo.commit(&[Change::Create(record_path(RECORDS))]);
    let msg =
        Bytes::from(frame::encode_frame(&Frame::Commit(Box::new(event.clone()))).expect("encode"));
    eprintln!(
        "{curve:?}: frame {} bytes, CAR {} bytes",
        msg.len(),
        event.blocks.len(),
    );
    Fixture {
        key: repo.public(),
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
    let base = tree_of(RECORDS);
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
