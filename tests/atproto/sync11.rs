//! Sync 1.1 inversion: real v1.1 commits from the relay scenarios, the pre-1.1 firehose_commit
//! files, op-shape rules, generated commits, and never-panic properties.

use crate::common::vectors as common;

use bytes::Bytes;
use common::{read_json, scenario_frames, to_ipld};
use proptest::prelude::*;
use rookery::atproto::car::{self, BlockMap, CarLimits};
use rookery::atproto::cid::{Cid, cid_for_dag_cbor};
use rookery::atproto::frame::{self, CommitEvent, Frame};
use rookery::atproto::mst::Mst;
use rookery::atproto::sync11::{
    self, CommitOp, InversionOutcome, Sync11Error, Sync11Outcome, invert_commit, verify_commit,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct CommitData {
    data: Cid,
}

/// `(data, blocks)` of a commit event's CAR.
fn load(c: &CommitEvent) -> (Cid, BlockMap) {
    let car = car::read_car(c.blocks.clone(), &CarLimits::default()).expect("car");
    let root = car.roots[0];
    let block = car.blocks.get(&root).expect("commit block");
    let commit: CommitData = serde_ipld_dagcbor::from_slice(block).expect("commit");
    (commit.data, car.blocks)
}

fn ops(c: &CommitEvent) -> Vec<CommitOp<'_>> {
    c.ops.iter().map(|o| o.as_commit_op()).collect()
}

fn scenario_commits(file: &str) -> Vec<CommitEvent> {
    scenario_frames()
        .into_iter()
        .filter(|(n, f)| n == file && f["header"]["t"] == "#commit")
        .map(
            |(_, f)| match frame::decode_frame(&Bytes::from(common::frame_bytes(&f))) {
                Ok(Frame::Commit(c)) => *c,
                other => panic!("{other:?}"),
            },
        )
        .collect()
}

#[test]
fn v11_commits_verify_and_tampering_fails() {
    let commits = scenario_commits("post_lifecycle.json");
    assert_eq!(commits.len(), 6);
    for c in &commits {
        let prev_data = c.prev_data.expect("v1.1 commit has prevData");
        let (data, blocks) = load(c);
        let ops = ops(c);
        assert_eq!(
            verify_commit(data, prev_data, &ops, &blocks),
            Sync11Outcome::Verified,
            "seq {}",
            c.seq
        );

        // Wrong prevData.
        let other = cid_for_dag_cbor(b"other");
        assert!(matches!(
            verify_commit(data, other, &ops, &blocks),
            Sync11Outcome::Failed(Sync11Error::RootMismatch { .. })
        ));
        // A different record CID for the first op.
        let mut bad = ops.clone();
        if bad[0].cid.is_some() {
            bad[0].cid = Some(other);
            let r = verify_commit(data, prev_data, &bad, &blocks);
            assert_eq!(
                r,
                Sync11Outcome::Failed(Sync11Error::RecordMismatch),
                "seq {}",
                c.seq
            );
        } else {
            // A delete that claims a different previous value inverts to a different root.
            bad[0].prev = Some(other);
            let r = verify_commit(data, prev_data, &bad, &blocks);
            assert!(matches!(
                r,
                Sync11Outcome::Failed(Sync11Error::RootMismatch { .. })
            ));
        }
        // Dropping the op list makes the inverted root the current one: mismatch.
        let r = verify_commit(data, prev_data, &[], &blocks);
        assert!(matches!(
            r,
            Sync11Outcome::Failed(Sync11Error::RootMismatch { .. })
        ));
        // Removing an MST node from the slice either does not matter (not on any op's path)
        // or fails with exactly that block missing: never a pass on a wrong tree, never another error.
        let mut tree = Mst::load(data, &blocks).unwrap();
        let mut needed = 0;
        for (node, _) in tree.node_blocks().iter().skip(1) {
            let mut fewer = BlockMap::new();
            for (k, v) in blocks.iter() {
                if k != node {
                    fewer.insert(*k, v.clone());
                }
            }
            match verify_commit(data, prev_data, &ops, &fewer) {
                Sync11Outcome::Verified => {}
                Sync11Outcome::Failed(Sync11Error::MissingBlock(m)) => {
                    assert_eq!(m, *node);
                    needed += 1;
                }
                other => panic!("seq {}: {other:?}", c.seq),
            }
        }
        // The root itself is always needed.
        let mut no_root = BlockMap::new();
        for (k, v) in blocks.iter() {
            if *k != data {
                no_root.insert(*k, v.clone());
            }
        }
        assert_eq!(
            verify_commit(data, prev_data, &ops, &no_root),
            Sync11Outcome::Failed(Sync11Error::MissingBlock(data))
        );
        if c.ops.iter().all(|o| o.action != "update") {
            assert!(needed > 0 || tree.node_blocks().len() == 1, "seq {}", c.seq);
        }
        // Missing record block.
        if let Some(cid) = ops.iter().find_map(|o| o.cid) {
            let mut fewer = BlockMap::new();
            for (k, v) in blocks.iter() {
                if *k != cid {
                    fewer.insert(*k, v.clone());
                }
            }
            let r = verify_commit(data, prev_data, &ops, &fewer);
            assert_eq!(r, Sync11Outcome::Failed(Sync11Error::RecordBlockMissing));
        }
    }
}

#[test]
fn legacy_commits() {
    let commits = scenario_commits("post_lifecycle_legacy.json");
    assert_eq!(commits.len(), 6);
    let mut legacy = 0;
    for c in &commits {
        assert!(c.prev_data.is_none());
        let (data, blocks) = load(c);
        let ops = ops(c);
        let outcome =
            invert_commit(data, &ops, &blocks).unwrap_or_else(|e| panic!("seq {}: {e}", c.seq));
        let has_legacy_op = c
            .ops
            .iter()
            .any(|o| o.action != "create" && o.prev.is_none());
        if has_legacy_op {
            legacy += 1;
            assert_eq!(outcome, InversionOutcome::Legacy);
            assert_eq!(
                verify_commit(data, data, &ops, &blocks).reason(),
                "legacy-op"
            );
        } else {
            assert!(matches!(outcome, InversionOutcome::Inverted { .. }));
        }
    }
    assert!(legacy >= 2);
}

fn firehose_file(n: &str) -> CommitEvent {
    let json = read_json(&format!(
        "indigo/atproto/repo/testdata/firehose_commit_{n}.json"
    ));
    let mut body = to_ipld(&json);
    // The files are indigo's JSON form: `prev: null` legacy field and `blobs: null`.
    if let ipld_core::ipld::Ipld::Map(m) = &mut body {
        m.remove("prev");
    }
    let mut msg = common::cbor(&to_ipld(&serde_json::json!({"op": 1, "t": "#commit"})));
    msg.extend(common::cbor(&body));
    match frame::decode_frame(&Bytes::from(msg)) {
        Ok(Frame::Commit(c)) => *c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn firehose_commit_trim_top_of_partial_tree() {
    // indigo regression "can not prune top of tree: MST is not complete": removing the created
    // key empties the root, whose only child is not in the slice. The trimmed root is that stub.
    let c = firehose_file("4623075231");
    let (data, blocks) = load(&c);
    let ops = ops(&c);
    let outcome = invert_commit(data, &ops, &blocks).expect("inverts");
    let InversionOutcome::Inverted { prev_root } = outcome else {
        panic!("{outcome:?}")
    };
    assert_ne!(prev_root, data);
    // Re-applying the create on the inverted tree gives the commit's data root back.
    let mut tree = Mst::load(data, &blocks).unwrap();
    let value = tree.remove(ops[0].path.as_bytes()).unwrap();
    assert_eq!(value, ops[0].cid);
    assert_eq!(tree.root_cid(), prev_root);
    // The previous root was not in the slice: it is now a stub, and reinserting needs it.
    assert!(!blocks.contains(&prev_root));
    assert!(matches!(
        tree.insert(ops[0].path.as_bytes(), ops[0].cid.unwrap()),
        Err(rookery::atproto::mst::MstError::MissingBlock(c)) if c == prev_root
    ));
}

#[test]
fn firehose_commits_from_bridgyfed_lack_proof_blocks() {
    // indigo has these disabled ("can't merge partial nodes"): the bridgyfed PDS sent slices
    // without the neighbouring nodes that removing the created keys needs. rookery reports the
    // exact missing block instead of passing.
    for n in ["4621317030", "4621317332", "4621332152"] {
        let c = firehose_file(n);
        let (data, blocks) = load(&c);
        let ops = ops(&c);
        match invert_commit(data, &ops, &blocks) {
            Err(Sync11Error::MissingBlock(cid)) => assert!(!blocks.contains(&cid), "{n}"),
            other => panic!("{n}: {other:?}"),
        }
    }
}

#[test]
fn op_shape_rules() {
    let a = cid_for_dag_cbor(b"a");
    let b = cid_for_dag_cbor(b"b");
    let blocks = BlockMap::new();
    let data = a;
    let op = |action, path, cid, prev| CommitOp {
        action,
        path,
        cid,
        prev,
    };
    let p = "app.bsky.feed.post/3k2a";
    let cases: Vec<(Vec<CommitOp<'_>>, Sync11Error)> = vec![
        (vec![op("create", p, None, None)], Sync11Error::CreateShape),
        (
            vec![op("create", p, Some(a), Some(b))],
            Sync11Error::CreateShape,
        ),
        (
            vec![op("delete", p, Some(a), Some(b))],
            Sync11Error::DeleteShape,
        ),
        (
            vec![op("update", p, None, Some(b))],
            Sync11Error::UpdateShape,
        ),
        (
            vec![op("update", p, Some(a), Some(a))],
            Sync11Error::UpdateUnchanged,
        ),
        (vec![op("upsert", p, Some(a), None)], Sync11Error::BadAction),
        (
            vec![op("create", "nocollection", Some(a), None)],
            Sync11Error::BadPath,
        ),
        (
            vec![op("create", "app.bsky/..", Some(a), None)],
            Sync11Error::BadPath,
        ),
        (
            vec![op("create", "app.bsky/a/b", Some(a), None)],
            Sync11Error::BadPath,
        ),
        (
            vec![
                op("create", p, Some(a), None),
                op("delete", p, None, Some(b)),
            ],
            Sync11Error::DuplicatePath,
        ),
        (
            vec![op("create", p, Some(a), None)],
            Sync11Error::MissingBlock(a),
        ),
    ];
    for (ops, expected) in cases {
        assert_eq!(
            invert_commit(data, &ops, &blocks),
            Err(expected.clone()),
            "{ops:?}"
        );
        assert_eq!(
            verify_commit(data, b, &ops, &blocks).reason(),
            expected.reason()
        );
    }
    let long = format!("app.bsky.feed.post/{}", "a".repeat(1100));
    assert!(sync11::check_path(&long).is_err());
    let many: Vec<String> = (0..201)
        .map(|i| format!("app.bsky.feed.post/{i}"))
        .collect();
    let ops: Vec<CommitOp<'_>> = many
        .iter()
        .map(|p| op("create", p, Some(a), None))
        .collect();
    assert_eq!(
        invert_commit(data, &ops, &blocks),
        Err(Sync11Error::TooManyOps)
    );
}

/// `(path, action, cid, prev)` of a generated op.
type GenOp = (String, &'static str, Option<Cid>, Option<Cid>);

/// Builds a commit the way a PDS does: diff blocks + record blocks, returns (data, prevData, blocks).
fn generated_commit(keys: &[String], changes: &[(String, u8)]) -> (Cid, Cid, BlockMap, Vec<GenOp>) {
    let record = |s: &str| {
        let bytes =
            serde_ipld_dagcbor::to_vec(&std::collections::BTreeMap::from([("t", s)])).unwrap();
        (cid_for_dag_cbor(&bytes), bytes)
    };
    let mut old = Mst::from_entries(keys.iter().map(|k| (k.as_bytes(), record(k).0))).unwrap();
    let prev_data = old.root_cid();
    let mut new = old.clone();
    let mut ops: Vec<GenOp> = Vec::new();
    let mut blocks = BlockMap::new();
    for (key, kind) in changes {
        if ops.iter().any(|(k, ..)| k == key) {
            continue;
        }
        let prev = new.get(key.as_bytes()).unwrap();
        let (cid, bytes) = record(&format!("{key}{kind}"));
        match (kind % 2, prev) {
            (0, Some(p)) => {
                new.remove(key.as_bytes()).unwrap();
                ops.push((key.clone(), "delete", None, Some(p)));
            }
            (_, Some(p)) if p != cid => {
                new.insert(key.as_bytes(), cid).unwrap();
                blocks.insert(cid, Bytes::from(bytes));
                ops.push((key.clone(), "update", Some(cid), Some(p)));
            }
            (_, None) => {
                new.insert(key.as_bytes(), cid).unwrap();
                blocks.insert(cid, Bytes::from(bytes));
                ops.push((key.clone(), "create", Some(cid), None));
            }
            _ => {}
        }
    }
    let data = new.root_cid();
    let diff =
        Mst::commit_diff(&mut old, &mut new, ops.iter().map(|(k, ..)| k.as_bytes())).unwrap();
    for (c, b) in diff {
        blocks.insert(c, Bytes::from(b));
    }
    (data, prev_data, blocks, ops)
}

fn arb_path() -> impl Strategy<Value = String> {
    ("[a-c]", "[a-z2-7]{1,5}").prop_map(|(c, r)| format!("app.bsky.{c}/{r}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn generated_commits_verify(
        keys in proptest::collection::btree_set(arb_path(), 0..80),
        changes in proptest::collection::vec((arb_path(), any::<u8>()), 0..15),
    ) {
        let keys: Vec<String> = keys.into_iter().collect();
        let (data, prev_data, blocks, ops) = generated_commit(&keys, &changes);
        let ops: Vec<CommitOp<'_>> = ops.iter().map(|(p, a, c, v)| CommitOp { action: a, path: p, cid: *c, prev: *v }).collect();
        prop_assert_eq!(verify_commit(data, prev_data, &ops, &blocks), Sync11Outcome::Verified);
        // Dropping one op from a non-empty commit never verifies.
        if ops.len() > 1 {
            let r = verify_commit(data, prev_data, &ops[1..], &blocks);
            prop_assert!(r != Sync11Outcome::Verified);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_blocks_never_panic(
        blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..4),
        paths in proptest::collection::vec(("[a-z.]{0,8}", "[a-z/]{0,6}"), 0..4),
        pick in any::<u8>(),
    ) {
        let mut map = BlockMap::new();
        let mut cids = Vec::new();
        for b in blocks {
            let c = cid_for_dag_cbor(&b);
            cids.push(c);
            map.insert(c, Bytes::from(b));
        }
        let data = cids.first().copied().unwrap_or_else(|| cid_for_dag_cbor(b""));
        let paths: Vec<String> = paths.into_iter().map(|(a, b)| format!("{a}/{b}")).collect();
        let actions = ["create", "update", "delete", "bogus"];
        let ops: Vec<CommitOp<'_>> = paths.iter().enumerate().map(|(i, p)| CommitOp {
            action: actions[(pick as usize + i) % 4],
            path: p,
            cid: cids.get(i).copied(),
            prev: if pick % 2 == 0 { Some(data) } else { None },
        }).collect();
        let _ = verify_commit(data, data, &ops, &map);
    }
}

#[test]
fn real_commit_slice_blocks_decode() {
    // Sanity for the helpers above: the scenario CAR parses with hash checks.
    let c = &scenario_commits("post_lifecycle.json")[0];
    let (_, blocks) = load(c);
    assert!(blocks.len() >= 3);
}
