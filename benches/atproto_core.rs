//! Protocol-core hot paths: frame decode/peek/re-sequence, CAR parse with hash checks, and
//! sync 1.1 inversion of 1-op and 10-op commits in a ~10,000-key tree (diff-only slice).
//!
//! Run: `cargo bench --bench atproto_core -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use rookery::atproto::car::{self, BlockMap, CarLimits};
use rookery::atproto::cid::Cid;
use rookery::atproto::frame::{self, CommitEvent, Frame, RepoOp};
use rookery::atproto::keys::{Curve, PrivateKey};
use rookery::atproto::mst::Mst;
use rookery::atproto::sync11::{self, CommitOp, Sync11Outcome};
use rookery::testkit::repo::{Change, SigningRepo, record_path, tree_of};

struct Commit {
    data: Cid,
    prev_data: Cid,
    ops: Vec<RepoOp>,
    blocks: BlockMap,
    event: CommitEvent,
}

/// A commit creating `n_ops` records in a tree of `size` keys, with the slice a PDS would send.
fn commit(base: &Mst, size: usize, n_ops: usize) -> Commit {
    let mut repo = SigningRepo::from_tree(
        "did:plc:44ybard66vv44zksje25o7dz",
        PrivateKey::generate(Curve::K256),
        base.clone(),
        1_767_225_600_000_000,
    );
    let creates: Vec<Change> = (0..n_ops)
        .map(|i| Change::Create(record_path(size + i)))
        .collect();
    let event = repo.commit(&creates);
    let data = repo.state.expect("committed").data;
    let blocks = car::read_car(event.blocks.clone(), &CarLimits::default())
        .expect("car")
        .blocks;
    Commit {
        data,
        prev_data: event.prev_data.expect("prevData"),
        ops: event.ops.clone(),
        blocks,
        event,
    }
}

fn benches(c: &mut Criterion) {
    const SIZE: usize = 10_000;
    let base = tree_of(SIZE);
    let one = commit(&base, SIZE, 1);
    let ten = commit(&base, SIZE, 10);

    let event = Frame::Commit(Box::new(CommitEvent {
        seq: 1_234_567,
        ..one.event.clone()
    }));
    let msg = Bytes::from(frame::encode_frame(&event).expect("encode"));
    eprintln!(
        "1-op frame: {} bytes, CAR {} bytes",
        msg.len(),
        one.event.blocks.len()
    );
    eprintln!(
        "10-op CAR {} bytes, {} blocks",
        ten.event.blocks.len(),
        ten.blocks.len()
    );

    c.bench_function("frame/peek_event (1-op commit)", |b| {
        b.iter(|| frame::peek_event(black_box(&msg)).expect("peek"))
    });
    c.bench_function("frame/decode_frame (1-op commit)", |b| {
        b.iter(|| frame::decode_frame(black_box(&msg)).expect("decode"))
    });
    c.bench_function("frame/resequence (1-op commit)", |b| {
        b.iter(|| frame::resequence(black_box(&msg), 99_999_999).expect("reseq"))
    });
    let ten_car = ten.event.blocks.clone();
    c.bench_function("car/read_car (10-op slice, hash checks)", |b| {
        b.iter(|| car::read_car(black_box(ten_car.clone()), &CarLimits::default()).expect("car"))
    });
    for (name, cm) in [("1-op", &one), ("10-op", &ten)] {
        let ops: Vec<CommitOp<'_>> = cm.ops.iter().map(|o| o.as_commit_op()).collect();
        assert_eq!(
            sync11::verify_commit(cm.data, cm.prev_data, &ops, &cm.blocks),
            Sync11Outcome::Verified
        );
        c.bench_function(
            &format!("sync11/verify_commit ({name}, 10k-key tree)"),
            |b| {
                b.iter(|| sync11::verify_commit(cm.data, cm.prev_data, black_box(&ops), &cm.blocks))
            },
        );
    }
}

criterion_group!(atproto_core, benches);
criterion_main!(atproto_core);
