//! MST node decoding and slice loading. Input: a CAR whose first root is the tree's root.
//!
//! - `decode_node` on every block and `Mst::load` never panic.
//! - A loaded tree's root CID is the root it was loaded from, and its node blocks are the
//!   blocks they came from.
//! - Removing an entry and inserting it back gives the same root (the MST is canonical), or
//!   fails without changing the tree (operations check before they mutate).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rookery::atproto::car::{self, CarLimits};
use rookery::atproto::cid::cid_for_dag_cbor;
use rookery::atproto::mst::{self, Mst};

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = car::read_car(Bytes::copy_from_slice(data), &CarLimits::default()) else {
        return;
    };
    for (_, block) in parsed.blocks.iter() {
        let _ = mst::decode_node(block);
    }
    let root = parsed.roots[0];
    let Ok(mut tree) = Mst::load(root, &parsed.blocks) else {
        return;
    };
    assert_eq!(tree.root_cid(), root, "loaded root");
    for (cid, block) in tree.node_blocks() {
        assert_eq!(cid_for_dag_cbor(&block), cid);
        assert_eq!(parsed.blocks.get(&cid).map(|b| &b[..]), Some(&block[..]));
    }
    // Keys to edit: every entry of a complete tree, else keys found by lookups of the
    // op-like keys below.
    let keys: Vec<(Vec<u8>, _)> = match tree.entries() {
        Ok(entries) => entries.into_iter().take(16).collect(),
        Err(_) => Vec::new(),
    };
    for (key, value) in keys {
        let before = tree.root_cid();
        match tree.remove(&key) {
            Ok(Some(old)) => {
                assert_eq!(old, value);
                assert_eq!(tree.insert(&key, value), Ok(None));
                assert_eq!(tree.root_cid(), before, "remove + insert is the identity");
            }
            Ok(None) => panic!("an entry of the tree was not found"),
            Err(_) => assert_eq!(tree.root_cid(), before, "failed remove changed the tree"),
        }
    }
    // Edits of keys that may lead into stubs: failures leave the tree as it was.
    for key in [&b"app.bsky.feed.post/3l2222222222"[..], b"a", b"zzzz"] {
        let before = tree.root_cid();
        let value = cid_for_dag_cbor(key);
        match tree.insert(key, value) {
            Ok(prev) => {
                match prev {
                    None => assert_eq!(tree.remove(key).ok(), Some(Some(value))),
                    Some(p) => assert_eq!(tree.insert(key, p).ok(), Some(Some(value))),
                }
                assert_eq!(tree.root_cid(), before, "insert undone");
            }
            Err(_) => assert_eq!(tree.root_cid(), before, "failed insert changed the tree"),
        }
    }
});
