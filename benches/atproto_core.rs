//! Protocol-core hot paths: frame decode/peek/re-sequence, CAR parse with hash checks, and
//! sync 1.1 inversion of 1-op and 10-op commits in a ~10,000-key tree (diff-only slice).
//!
//! Run: `cargo bench --bench atproto_core -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use rookery::atproto::car::{self, BlockMap, CarLimits};
use rookery::atproto::cid::{Cid, cid_for_dag_cbor};
use rookery::atproto::frame::{self, CommitEvent, Frame, RepoOp};
use rookery::atproto::mst::Mst;
use rookery::atproto::sync11::{self, CommitOp, Sync11Outcome};

fn record(text: &str) -> (Cid, Vec<u8>) {
    let mut m = BTreeMap::new();
    m.insert("$type", "app.bsky.feed.post");
    m.insert("text", text);
    m.insert("createdAt", "2025-04-16T21:30:26.717Z");
    let bytes = serde_ipld_dagcbor::to_vec(&m).expect("record");
    (cid_for_dag_cbor(&bytes), bytes)
}

fn key(i: usize) -> String {
    // TID-like record keys in one collection, as a busy repo has.
    format!(
        "app.bsky.feed.post/3l{:011x}",
        i.wrapping_mul(2_654_435_761) % 0xfff_ffff_ffff
    )
}

struct Commit {
    data: Cid,
    prev_data: Cid,
    ops: Vec<RepoOp>,
    blocks: BlockMap,
    car: Vec<u8>,
}

/// A commit creating `n_ops` records in a tree of `size` keys, with the slice a PDS would send.
fn commit(base: &Mst, size: usize, n_ops: usize) -> Commit {
    let mut old = base.clone();
    let prev_data = old.root_cid();
    let mut new = old.clone();
    let mut ops = Vec::new();
    let mut records = Vec::new();
    for i in 0..n_ops {
        let path = key(size + i);
        let (cid, bytes) = record(&path);
        new.insert(path.as_bytes(), cid).expect("insert");
        ops.push(RepoOp {
            action: "create".into(),
            path,
            cid: Some(cid),
            prev: None,
        });
        records.push((cid, bytes));
    }
    let data = new.root_cid();
    let diff =
        Mst::commit_diff(&mut old, &mut new, ops.iter().map(|o| o.path.as_bytes())).expect("diff");
    let commit_block = serde_ipld_dagcbor::to_vec(&BTreeMap::from([("data", data)])).expect("c");
    let commit_cid = cid_for_dag_cbor(&commit_block);
    let mut all: Vec<(Cid, Vec<u8>)> = vec![(commit_cid, commit_block)];
    all.extend(diff);
    all.extend(records);
    let car = car::write_car(&[commit_cid], all.iter().map(|(c, b)| (c, b.as_slice())));
    let mut blocks = BlockMap::new();
    for (c, b) in all {
        blocks.insert(c, Bytes::from(b));
    }
    Commit {
        data,
        prev_data,
        ops,
        blocks,
        car,
    }
}

fn benches(c: &mut Criterion) {
    const SIZE: usize = 10_000;
    let base = Mst::from_entries(
        (0..SIZE)
            .map(key)
            .collect::<Vec<_>>()
            .iter()
            .map(|k| (k.as_bytes(), record(k).0)),
    )
    .expect("tree");
    let one = commit(&base, SIZE, 1);
    let ten = commit(&base, SIZE, 10);

    let event = Frame::Commit(Box::new(CommitEvent {
        seq: 1_234_567,
        rebase: false,
        too_big: false,
        repo: "did:plc:44ybard66vv44zksje25o7dz".into(),
        commit: one.data,
        rev: "3lmxjza3nva27".into(),
        since: Some("3lmxjxi3hjn23".into()),
        blocks: Bytes::from(one.car.clone()),
        ops: one.ops.clone(),
        blobs: vec![],
        prev_data: Some(one.prev_data),
        time: "2025-04-16T21:30:26.717Z".into(),
    }));
    let msg = Bytes::from(frame::encode_frame(&event).expect("encode"));
    eprintln!(
        "1-op frame: {} bytes, CAR {} bytes",
        msg.len(),
        one.car.len()
    );
    eprintln!(
        "10-op CAR {} bytes, {} blocks",
        ten.car.len(),
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
    let ten_car = Bytes::from(ten.car.clone());
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
