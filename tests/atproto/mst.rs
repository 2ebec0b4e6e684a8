//! MST conformance: interop vectors, known roots, commit-proof fixtures (build, apply, diff,
//! invert on the diff-only partial tree), and property tests.

use bytes::Bytes;
use proptest::prelude::*;
use rookery::atproto::car::BlockMap;
use rookery::atproto::cid::{Cid, cid_for_dag_cbor, parse_cid_str};
use rookery::atproto::mst::{self, Mst, MstError};
use serde_json::Value;

use crate::common::vectors::{VECTORS, read_json};

const LEAF: &str = "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454";

fn cid(s: &str) -> Cid {
    parse_cid_str(s).expect("cid")
}

fn block_map(blocks: &[(Cid, Vec<u8>)]) -> BlockMap {
    let mut map = BlockMap::new();
    for (c, b) in blocks {
        assert_eq!(cid_for_dag_cbor(b), *c, "exported block matches its CID");
        map.insert(*c, Bytes::from(b.clone()));
    }
    map
}

#[test]
fn key_heights_vector() {
    let cases = read_json("interop/mst/key_heights.json");
    let cases = cases.as_array().expect("array");
    assert_eq!(cases.len(), 9);
    for case in cases {
        let key = case["key"].as_str().expect("key");
        let height = case["height"].as_u64().expect("height");
        assert_eq!(
            u64::from(mst::key_depth(key.as_bytes())),
            height,
            "key {key:?}"
        );
    }
}

#[test]
fn common_prefix_vector() {
    let cases = read_json("interop/mst/common_prefix.json");
    let cases = cases.as_array().expect("array");
    assert!(cases.len() >= 10);
    for case in cases {
        let left = case["left"].as_str().expect("left");
        let right = case["right"].as_str().expect("right");
        let len = case["len"].as_u64().expect("len") as usize;
        assert_eq!(
            mst::common_prefix_len(left.as_bytes(), right.as_bytes()),
            len
        );
    }
}

#[test]
fn example_keys_heights_match_their_names() {
    let path = format!("{VECTORS}interop/mst/example_keys.txt");
    let text = std::fs::read_to_string(&path).expect("example_keys.txt");
    let keys: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(keys.len() > 100);
    let leaf = cid(LEAF);
    for key in &keys {
        let height: u8 = key[1..2].parse().expect("digit");
        assert_eq!(mst::key_depth(key.as_bytes()), height, "{key}");
    }
    // The whole set builds a valid tree that loads back from its own blocks, in any order.
    let mut tree = Mst::from_entries(keys.iter().map(|k| (k.as_bytes(), leaf))).expect("build");
    let mut reversed =
        Mst::from_entries(keys.iter().rev().map(|k| (k.as_bytes(), leaf))).expect("build");
    let root = tree.root_cid();
    assert_eq!(root, reversed.root_cid());
    let map = block_map(&tree.node_blocks());
    let loaded = Mst::load(root, &map).expect("load");
    let entries = loaded.entries().expect("complete");
    assert_eq!(entries.len(), keys.len());
    for key in &keys {
        assert_eq!(loaded.get(key.as_bytes()).expect("get"), Some(leaf));
    }
}

#[test]
fn known_roots() {
    let leaf = cid(LEAF);
    let mut empty = Mst::new();
    assert_eq!(
        empty.root_cid().to_string(),
        "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
    );
    let mut one = Mst::from_entries([(&b"com.example.record/3jqfcqzm3fo2j"[..], leaf)]).unwrap();
    assert_eq!(
        one.root_cid().to_string(),
        "bafyreibj4lsc3aqnrvphp5xmrnfoorvru4wynt6lwidqbm2623a6tatzdu"
    );
    let mut layer2 = Mst::from_entries([(&b"com.example.record/3jqfcqzm3fx2j"[..], leaf)]).unwrap();
    assert_eq!(mst::key_depth(b"com.example.record/3jqfcqzm3fx2j"), 2);
    assert_eq!(
        layer2.root_cid().to_string(),
        "bafyreih7wfei65pxzhauoibu3ls7jgmkju4bspy4t2ha2qdjnzqvoy33ai"
    );
    // Removing the only key gives the empty tree back.
    assert_eq!(
        layer2.remove(b"com.example.record/3jqfcqzm3fx2j").unwrap(),
        Some(leaf)
    );
    assert_eq!(layer2.root_cid(), empty.root_cid());
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn run_proof_fixtures(rel: &str) {
    let cases = read_json(rel);
    let cases = cases.as_array().expect("array");
    assert!(cases.len() >= 6, "{rel} has the six cases");
    for case in cases {
        let name = case["comment"].as_str().unwrap_or("?");
        let leaf = cid(case["leafValue"].as_str().expect("leafValue"));
        let keys = strings(&case["keys"]);
        let adds = strings(&case["adds"]);
        let dels = strings(&case["dels"]);
        let before = cid(case["rootBeforeCommit"].as_str().expect("before"));
        let after = cid(case["rootAfterCommit"].as_str().expect("after"));
        let proof: Vec<Cid> = strings(&case["blocksInProof"])
            .iter()
            .map(|s| cid(s))
            .collect();

        let mut old = Mst::from_entries(keys.iter().map(|k| (k.as_bytes(), leaf))).unwrap();
        assert_eq!(old.root_cid(), before, "{name}: root before");
        let mut new = old.clone();
        for k in &adds {
            assert_eq!(
                new.insert(k.as_bytes(), leaf).unwrap(),
                None,
                "{name}: add {k}"
            );
        }
        for k in &dels {
            assert_eq!(
                new.remove(k.as_bytes()).unwrap(),
                Some(leaf),
                "{name}: del {k}"
            );
        }
        assert_eq!(new.root_cid(), after, "{name}: root after");

        let changed = adds.iter().chain(&dels).map(|k| k.as_bytes());
        let diff = Mst::commit_diff(&mut old, &mut new, changed).unwrap();
        for c in &proof {
            assert!(
                diff.iter().any(|(d, _)| d == c),
                "{name}: diff lacks proof block {c}"
            );
        }

        // Invert on the diff-only partial tree.
        let map = block_map(&diff);
        let mut partial = Mst::load(after, &map).unwrap();
        for k in &adds {
            assert_eq!(
                partial.remove(k.as_bytes()).unwrap(),
                Some(leaf),
                "{name}: undo add"
            );
        }
        for k in &dels {
            assert_eq!(
                partial.insert(k.as_bytes(), leaf).unwrap(),
                None,
                "{name}: undo del"
            );
        }
        assert_eq!(partial.root_cid(), before, "{name}: inverted root");

        // Only the proof blocks (plus the root) are not enough to read the whole tree.
        let full_len = new.node_blocks().len();
        if diff.len() < full_len {
            let partial = Mst::load(after, &map).unwrap();
            assert!(
                matches!(partial.entries(), Err(MstError::MissingBlock(_))),
                "{name}"
            );
        }
    }
}

#[test]
fn interop_commit_proof_fixtures() {
    run_proof_fixtures("interop/firehose/commit-proof-fixtures.json");
}

#[test]
fn indigo_commit_proof_fixtures() {
    run_proof_fixtures("indigo/atproto/repo/testdata/commit-proof-fixtures.json");
}

#[test]
fn missing_block_is_reported_not_skipped() {
    let leaf = cid(LEAF);
    let path = format!("{VECTORS}interop/mst/example_keys.txt");
    let text = std::fs::read_to_string(&path).expect("example_keys.txt");
    let keys: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut tree = Mst::from_entries(keys.iter().map(|k| (k.as_bytes(), leaf))).unwrap();
    let root = tree.root_cid();
    let mut blocks = tree.node_blocks();
    let root_only: Vec<_> = blocks.drain(..1).collect();
    let map = block_map(&root_only);
    let mut partial = Mst::load(root, &map).unwrap();
    let mut missing = 0;
    for key in &keys {
        match partial.get(key.as_bytes()) {
            Ok(Some(v)) => assert_eq!(v, leaf),
            Ok(None) => panic!("key {key} reported absent"),
            Err(MstError::MissingBlock(c)) => {
                assert!(blocks.iter().any(|(b, _)| *b == c));
                missing += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(missing > 0);
    // A failed operation leaves the tree unchanged (same root, same content).
    let mut failures = 0;
    for key in &keys {
        let before = partial.root_cid();
        if partial.remove(key.as_bytes()).is_err() {
            failures += 1;
            assert_eq!(partial.root_cid(), before, "failed remove changed the tree");
        }
        let before = partial.root_cid();
        if partial.insert(format!("{key}x").as_bytes(), leaf).is_err() {
            failures += 1;
            assert_eq!(partial.root_cid(), before, "failed insert changed the tree");
        }
    }
    assert!(failures > 0);
}

#[test]
fn load_rejects_bad_nodes() {
    let leaf = cid(LEAF);
    // Keys out of order.
    let bad = mst::encode_node(None, &[(b"b/1", leaf, None), (b"a/1", leaf, None)]);
    assert_eq!(mst::decode_node(&bad), Err(MstError::KeyOrder));
    // Missing `l`.
    let mut map = std::collections::BTreeMap::new();
    map.insert("e".to_string(), ipld_core::ipld::Ipld::List(vec![]));
    let no_l = serde_ipld_dagcbor::to_vec(&ipld_core::ipld::Ipld::Map(map)).unwrap();
    assert!(matches!(
        mst::decode_node(&no_l),
        Err(MstError::NodeDecode(_))
    ));
    // Wrong layer: a layer-0 key as the root's child is fine, but a root with keys of two depths is not.
    let k0 = b"A0/374913";
    let k1 = b"B1/986427";
    assert_eq!(mst::key_depth(k0), 0);
    assert_eq!(mst::key_depth(k1), 1);
    let mixed = mst::encode_node(None, &[(k0, leaf, None), (k1, leaf, None)]);
    let mixed_cid = cid_for_dag_cbor(&mixed);
    let mut blocks = BlockMap::new();
    blocks.insert(mixed_cid, Bytes::from(mixed));
    assert_eq!(
        Mst::load(mixed_cid, &blocks).unwrap_err(),
        MstError::KeyDepth
    );
    // Untrimmed root (empty node pointing at a child).
    let child = mst::encode_node(None, &[(k0, leaf, None)]);
    let child_cid = cid_for_dag_cbor(&child);
    let top = mst::encode_node(Some(child_cid), &[]);
    let top_cid = cid_for_dag_cbor(&top);
    let mut blocks = BlockMap::new();
    blocks.insert(child_cid, Bytes::from(child));
    blocks.insert(top_cid, Bytes::from(top));
    assert_eq!(
        Mst::load(top_cid, &blocks).unwrap_err(),
        MstError::UntrimmedRoot
    );
    // Root missing.
    assert_eq!(
        Mst::load(leaf, &BlockMap::new()).unwrap_err(),
        MstError::MissingBlock(leaf)
    );
    // Too many entries.
    let many: Vec<Vec<u8>> = (0..1100)
        .map(|i| format!("a/{i:05}").into_bytes())
        .collect();
    let entries: Vec<(&[u8], Cid, Option<Cid>)> =
        many.iter().map(|k| (k.as_slice(), leaf, None)).collect();
    let big = mst::encode_node(None, &entries);
    assert_eq!(mst::decode_node(&big), Err(MstError::TooManyEntries));
}

fn arb_key() -> impl Strategy<Value = String> {
    ("[a-c]", "[a-z0-9]{1,6}", 0usize..3).prop_map(|(c, r, long)| {
        // Sometimes share a long prefix (prefix lengths >= 24 use a two-byte CBOR head).
        let pad = if long == 0 {
            "x".repeat(30)
        } else {
            String::new()
        };
        format!("app.{c}/{pad}{r}")
    })
}

fn ipld_node_bytes(left: Option<Cid>, entries: &[(&[u8], Cid, Option<Cid>)]) -> Vec<u8> {
    use ipld_core::ipld::Ipld;
    use std::collections::BTreeMap;
    let link = |c: Option<Cid>| c.map(Ipld::Link).unwrap_or(Ipld::Null);
    let mut prev: &[u8] = &[];
    let mut list = Vec::new();
    for (k, v, t) in entries {
        let p = mst::common_prefix_len(prev, k);
        let mut m = BTreeMap::new();
        m.insert("k".to_string(), Ipld::Bytes(k[p..].to_vec()));
        m.insert("p".to_string(), Ipld::Integer(p as i128));
        m.insert("t".to_string(), link(*t));
        m.insert("v".to_string(), Ipld::Link(*v));
        list.push(Ipld::Map(m));
        prev = k;
    }
    let mut m = BTreeMap::new();
    m.insert("e".to_string(), Ipld::List(list));
    m.insert("l".to_string(), link(left));
    serde_ipld_dagcbor::to_vec(&Ipld::Map(m)).unwrap()
}

fn leaf_for(i: usize) -> Cid {
    cid_for_dag_cbor(format!("record {i}").as_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Apply random ops, then invert them on the diff-only partial tree: the old root comes back.
    #[test]
    fn apply_then_invert_on_partial(
        keys in proptest::collection::btree_set(arb_key(), 0..60),
        ops in proptest::collection::vec((arb_key(), 0u8..3), 1..12),
    ) {
        let mut old = Mst::from_entries(keys.iter().enumerate().map(|(i, k)| (k.as_bytes(), leaf_for(i)))).unwrap();
        let old_root = old.root_cid();
        let mut new = old.clone();
        // (key, previous value) of each distinct key touched.
        let mut touched: Vec<(String, Option<Cid>)> = Vec::new();
        for (n, (key, kind)) in ops.iter().enumerate() {
            if touched.iter().any(|(k, _)| k == key) { continue; }
            let prev = new.get(key.as_bytes()).unwrap();
            match kind {
                0 => { new.remove(key.as_bytes()).unwrap(); }
                _ => { new.insert(key.as_bytes(), leaf_for(1000 + n)).unwrap(); }
            }
            touched.push((key.clone(), prev));
        }
        let new_root = new.root_cid();
        let diff = Mst::commit_diff(&mut old, &mut new, touched.iter().map(|(k, _)| k.as_bytes())).unwrap();
        let map = block_map(&diff);
        let mut partial = Mst::load(new_root, &map).unwrap();
        for (key, prev) in &touched {
            match prev {
                Some(v) => { partial.insert(key.as_bytes(), *v).unwrap(); }
                None => { partial.remove(key.as_bytes()).unwrap(); }
            }
        }
        prop_assert_eq!(partial.root_cid(), old_root);
        // Shape is history independent: rebuilding the final set gives the same root.
        let entries = new.entries().unwrap();
        let mut rebuilt = Mst::from_entries(entries.iter().map(|(k, v)| (k.as_slice(), *v))).unwrap();
        prop_assert_eq!(rebuilt.root_cid(), new_root);
    }

    /// Node encode/decode round trip.
    #[test]
    fn node_round_trip(keys in proptest::collection::btree_set(arb_key(), 0..40), with_links in any::<bool>()) {
        let link = cid_for_dag_cbor(b"child");
        let entries: Vec<(&[u8], Cid, Option<Cid>)> = keys.iter().enumerate()
            .map(|(i, k)| (k.as_bytes(), leaf_for(i), if with_links && i % 2 == 0 { Some(link) } else { None }))
            .collect();
        let left = if with_links { Some(link) } else { None };
        let bytes = mst::encode_node(left, &entries);
        // The hand-written encoder agrees with the generic canonical DAG-CBOR encoder.
        prop_assert_eq!(&bytes, &ipld_node_bytes(left, &entries));
        let decoded = mst::decode_node(&bytes).unwrap();
        prop_assert_eq!(decoded.left, left);
        prop_assert_eq!(decoded.entries.len(), entries.len());
        for (d, e) in decoded.entries.iter().zip(&entries) {
            prop_assert_eq!(d.0.as_slice(), e.0);
            prop_assert_eq!(d.1, e.1);
            prop_assert_eq!(d.2, e.2);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the node decoder or the loader.
    #[test]
    fn node_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = mst::decode_node(&bytes);
        let c = cid_for_dag_cbor(&bytes);
        let mut map = BlockMap::new();
        map.insert(c, Bytes::from(bytes));
        let _ = Mst::load(c, &map);
    }

    /// Structured-ish garbage: mutate a real node and load it.
    #[test]
    fn mutated_nodes_never_panic(flip in 0usize..400, value in any::<u8>()) {
        let leaf = cid_for_dag_cbor(b"x");
        let child = cid_for_dag_cbor(b"y");
        let mut bytes = mst::encode_node(Some(child), &[(b"app.a/aaaa", leaf, Some(child)), (b"app.a/aaab", leaf, None)]);
        let i = flip % bytes.len();
        bytes[i] = value;
        let _ = mst::decode_node(&bytes);
        let c = cid_for_dag_cbor(&bytes);
        let mut map = BlockMap::new();
        map.insert(c, Bytes::from(bytes));
        if let Ok(mut t) = Mst::load(c, &map) {
            let _ = t.insert(b"app.b/zz", leaf);
            let _ = t.remove(b"app.a/aaaa");
            let _ = t.root_cid();
        }
    }
}

/// Known roots of the reference TypeScript edge-case tests (packages/repo/tests/mst.test.ts).
#[test]
fn reference_edge_case_roots() {
    let leaf = cid(LEAF);
    let k = |s: &str| format!("com.example.record/{s}");
    let root = |t: &mut Mst| t.root_cid().to_string();

    // "simple"
    let mut t = Mst::new();
    for s in [
        "3jqfcqzm3fp2j",
        "3jqfcqzm3fr2j",
        "3jqfcqzm3fs2j",
        "3jqfcqzm3ft2j",
        "3jqfcqzm4fc2j",
    ] {
        t.insert(k(s).as_bytes(), leaf).unwrap();
    }
    assert_eq!(
        root(&mut t),
        "bafyreicmahysq4n6wfuxo522m6dpiy7z7qzym3dzs756t5n7nfdgccwq7m"
    );

    // "trims top of tree on delete"
    let mut t = Mst::new();
    for s in [
        "3jqfcqzm3fn2j",
        "3jqfcqzm3fo2j",
        "3jqfcqzm3fp2j",
        "3jqfcqzm3fs2j",
        "3jqfcqzm3ft2j",
        "3jqfcqzm3fu2j",
    ] {
        t.insert(k(s).as_bytes(), leaf).unwrap();
    }
    assert_eq!(
        root(&mut t),
        "bafyreifnqrwbk6ffmyaz5qtujqrzf5qmxf7cbxvgzktl4e3gabuxbtatv4"
    );
    let mut before = t.clone();
    t.remove(k("3jqfcqzm3fs2j").as_bytes()).unwrap();
    assert_eq!(
        root(&mut t),
        "bafyreie4kjuxbwkhzg2i5dljaswcroeih4dgiqq6pazcmunwt2byd725vi"
    );
    // and the same trim on the diff-only partial tree, inverted back
    let diff = Mst::commit_diff(&mut before, &mut t, [k("3jqfcqzm3fs2j").as_bytes()]).unwrap();
    let mut partial = Mst::load(t.root_cid(), &block_map(&diff)).unwrap();
    partial.insert(k("3jqfcqzm3fs2j").as_bytes(), leaf).unwrap();
    assert_eq!(
        root(&mut partial),
        "bafyreifnqrwbk6ffmyaz5qtujqrzf5qmxf7cbxvgzktl4e3gabuxbtatv4"
    );

    // "handles insertion that splits two layers down"
    let l1 = "bafyreiettyludka6fpgp33stwxfuwhkzlur6chs4d2v4nkmq2j3ogpdjem";
    let l2 = "bafyreid2x5eqs4w4qxvc5jiwda4cien3gw2q6cshofxwnvv7iucrmfohpm";
    let mut t = Mst::new();
    for s in [
        "3jqfcqzm3fo2j",
        "3jqfcqzm3fp2j",
        "3jqfcqzm3fr2j",
        "3jqfcqzm3fs2j",
        "3jqfcqzm3ft2j",
        "3jqfcqzm3fz2j",
        "3jqfcqzm4fc2j",
        "3jqfcqzm4fd2j",
        "3jqfcqzm4ff2j",
        "3jqfcqzm4fg2j",
        "3jqfcqzm4fh2j",
    ] {
        t.insert(k(s).as_bytes(), leaf).unwrap();
    }
    assert_eq!(root(&mut t), l1);
    let mut before = t.clone();
    t.insert(k("3jqfcqzm3fx2j").as_bytes(), leaf).unwrap();
    assert_eq!(root(&mut t), l2);
    let diff = Mst::commit_diff(&mut before, &mut t, [k("3jqfcqzm3fx2j").as_bytes()]).unwrap();
    let mut partial = Mst::load(t.root_cid(), &block_map(&diff)).unwrap();
    partial.remove(k("3jqfcqzm3fx2j").as_bytes()).unwrap();
    assert_eq!(root(&mut partial), l1);
    t.remove(k("3jqfcqzm3fx2j").as_bytes()).unwrap();
    assert_eq!(root(&mut t), l1);

    // "handles new layers that are two higher than existing"
    let l0 = "bafyreidfcktqnfmykz2ps3dbul35pepleq7kvv526g47xahuz3rqtptmky";
    let l2 = "bafyreiavxaxdz7o7rbvr3zg2liox2yww46t7g6hkehx4i4h3lwudly7dhy";
    let l2b = "bafyreig4jv3vuajbsybhyvb7gggvpwh2zszwfyttjrj6qwvcsp24h6popu";
    let mut t = Mst::new();
    t.insert(k("3jqfcqzm3ft2j").as_bytes(), leaf).unwrap();
    t.insert(k("3jqfcqzm3fz2j").as_bytes(), leaf).unwrap();
    assert_eq!(root(&mut t), l0);
    t.insert(k("3jqfcqzm3fx2j").as_bytes(), leaf).unwrap();
    assert_eq!(root(&mut t), l2);
    t.remove(k("3jqfcqzm3fx2j").as_bytes()).unwrap();
    assert_eq!(root(&mut t), l0);
    t.insert(k("3jqfcqzm3fx2j").as_bytes(), leaf).unwrap();
    t.insert(k("3jqfcqzm4fd2j").as_bytes(), leaf).unwrap();
    assert_eq!(root(&mut t), l2b);
    t.remove(k("3jqfcqzm4fd2j").as_bytes()).unwrap();
    assert_eq!(root(&mut t), l2);
}

/// Hostile slices: structural checks across nodes.
#[test]
fn load_rejects_inconsistent_trees() {
    let leaf = cid(LEAF);
    let (a0, a1, b1, c0) = (
        &b"A0/374913"[..],
        &b"A1/076595"[..],
        &b"B1/986427"[..],
        &b"C0/451630"[..],
    );
    assert_eq!(
        [a0, a1, b1, c0].map(mst::key_depth),
        [0, 1, 1, 0],
        "example keys carry their depth"
    );
    let node = |left: Option<Cid>, entries: &[(&[u8], Cid, Option<Cid>)]| {
        let bytes = mst::encode_node(left, entries);
        (cid_for_dag_cbor(&bytes), bytes)
    };
    let load = |blocks: &[(Cid, Vec<u8>)]| {
        let mut map = BlockMap::new();
        for (c, b) in blocks {
            map.insert(*c, Bytes::from(b.clone()));
        }
        Mst::load(blocks[0].0, &map)
    };
    let (low, low_bytes) = node(None, &[(a0, leaf, None)]);
    let (high, high_bytes) = node(None, &[(c0, leaf, None)]);

    // Valid: B1 with A0 on its left and C0 on its right.
    let good = node(Some(low), &[(b1, leaf, Some(high))]);
    let mut tree = load(&[
        good.clone(),
        (low, low_bytes.clone()),
        (high, high_bytes.clone()),
    ])
    .unwrap();
    assert_eq!(tree.root_cid(), good.0);
    assert_eq!(tree.entries().unwrap().len(), 3);

    // A subtree on the wrong side of its parent's key.
    let swapped = node(Some(high), &[(b1, leaf, Some(low))]);
    let blocks = [
        swapped,
        (low, low_bytes.clone()),
        (high, high_bytes.clone()),
    ];
    assert_eq!(load(&blocks).unwrap_err(), MstError::KeyOrder);
    // The same node linked twice.
    let twice = node(Some(low), &[(b1, leaf, Some(low))]);
    assert_eq!(
        load(&[twice, (low, low_bytes.clone())]).unwrap_err(),
        MstError::DuplicateNode
    );
    // An empty child node.
    let (empty, empty_bytes) = node(None, &[]);
    let with_empty = node(Some(low), &[(b1, leaf, Some(empty))]);
    let blocks = [with_empty, (low, low_bytes.clone()), (empty, empty_bytes)];
    assert_eq!(load(&blocks).unwrap_err(), MstError::EmptyNode);
    // A layer-0 node with a child link.
    let leaf_with_link = node(None, &[(a0, leaf, Some(high))]);
    assert_eq!(
        load(&[leaf_with_link, (high, high_bytes.clone())]).unwrap_err(),
        MstError::LinkBelowLeaf
    );
    // A child holding a key of the parent's layer.
    let (wrong, wrong_bytes) = node(None, &[(a1, leaf, None)]);
    let parent = node(Some(wrong), &[(b1, leaf, None)]);
    assert_eq!(
        load(&[parent, (wrong, wrong_bytes)]).unwrap_err(),
        MstError::KeyDepth
    );
    // A link that is not a blessed dag-cbor CID.
    let raw = rookery::atproto::cid::cid_for_raw(&low_bytes);
    let bad_link = node(Some(raw), &[(b1, leaf, None)]);
    assert_eq!(load(&[bad_link]).unwrap_err(), MstError::LinkNotBlessed);
    // A missing child is a stub: reading past it reports exactly that block.
    let tree = load(&[good]).unwrap();
    assert_eq!(tree.get(b1).unwrap(), Some(leaf));
    assert_eq!(tree.get(a0).unwrap_err(), MstError::MissingBlock(low));
    assert_eq!(tree.get(c0).unwrap_err(), MstError::MissingBlock(high));
}
