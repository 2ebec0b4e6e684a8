//! A PDS-side signing repository: applies record changes to an MST, signs each commit and
//! returns the `#commit` (sync 1.1: `prevData`, op `prev`, diff plus covering proof plus record
//! blocks in the CAR) or `#sync` a real PDS would send. Tests, benches and the simulated PDS
//! build their events here, so an event is produced one way everywhere.
//!
//! Panics on misuse (creating a path that exists, deleting one that does not): this is test
//! support, and a fixture that cannot be built must fail loudly.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::atproto::car;
use crate::atproto::cid::{Cid, cid_for_dag_cbor};
use crate::atproto::commit::Commit;
use crate::atproto::frame::{self, CommitEvent, Frame, RepoOp, SyncEvent};
use crate::atproto::keys::{Curve, PrivateKey, PublicKey};
use crate::atproto::mst::Mst;
use crate::atproto::tid::Tid;
use crate::atproto::validate::RepoState;

/// The `time` field of every event built here.
pub const EVENT_TIME: &str = "2025-12-31T23:00:00.000Z";

/// A post record whose `text` is `text`, and its CID.
pub fn record(text: &str) -> (Cid, Vec<u8>) {
    let bytes = serde_ipld_dagcbor::to_vec(&BTreeMap::from([
        ("$type", "app.bsky.feed.post"),
        ("text", text),
        ("createdAt", "2025-12-31T23:00:00.000Z"),
    ]))
    .expect("a post record encodes");
    (cid_for_dag_cbor(&bytes), bytes)
}

/// The `i`th record path: TID-like record keys in one collection, as a busy repo has.
pub fn record_path(i: usize) -> String {
    format!(
        "app.bsky.feed.post/3l{:011x}",
        i.wrapping_mul(2_654_435_761) % 0xfff_ffff_ffff
    )
}

/// A tree holding records `0..records`, each under [`record_path`] with the CID of
/// [`record`] of its path.
pub fn tree_of(records: usize) -> Mst {
    let paths: Vec<String> = (0..records).map(record_path).collect();
    Mst::from_entries(paths.iter().map(|p| (p.as_bytes(), record(p).0))).expect("a valid tree")
}

/// One change a commit makes.
#[derive(Debug, Clone)]
pub enum Change {
    Create(String),
    /// A create whose record's `text` is this many `x`s.
    CreateSized(String, usize),
    Update(String),
    Delete(String),
}

/// A repository as its PDS holds it.
#[derive(Clone)]
pub struct SigningRepo {
    pub did: String,
    pub key: PrivateKey,
    pub tree: Mst,
    /// Microsecond clock for revs, one second per commit.
    pub clock: u64,
    /// The last commit emitted (what a relay that saw everything has stored).
    pub state: Option<RepoState>,
}

impl SigningRepo {
    /// A repo of `records` records ([`tree_of`]) with a fresh key; revs start after `clock`.
    pub fn new(did: &str, curve: Curve, records: usize, clock: u64) -> SigningRepo {
        SigningRepo::from_tree(did, PrivateKey::generate(curve), tree_of(records), clock)
    }

    /// A repo over an existing tree (clone a large one instead of building it again).
    pub fn from_tree(did: &str, key: PrivateKey, tree: Mst, clock: u64) -> SigningRepo {
        SigningRepo {
            did: did.to_string(),
            key,
            tree,
            clock,
            state: None,
        }
    }

    pub fn public(&self) -> PublicKey {
        self.key.public_key()
    }

    pub fn next_rev(&mut self) -> Tid {
        self.clock += 1_000_000;
        Tid::from_parts(self.clock, 7)
    }

    /// Applies `changes` and returns the `#commit` a PDS would send (and keeps the new state).
    pub fn commit(&mut self, changes: &[Change]) -> CommitEvent {
        let mut old = self.tree.clone();
        let prev_data = old.root_cid();
        let mut ops = Vec::new();
        let mut records = Vec::new();
        for change in changes {
            match change {
                Change::Create(p) | Change::Update(p) | Change::CreateSized(p, _) => {
                    let (cid, bytes) = match change {
                        Change::CreateSized(_, n) => record(&"x".repeat(*n)),
                        _ => record(&format!("{p} v{}", self.clock)),
                    };
                    let prev = self.tree.insert(p.as_bytes(), cid).expect("insert");
                    let action = if matches!(change, Change::Update(_)) {
                        assert!(prev.is_some(), "update of a missing record {p}");
                        "update"
                    } else {
                        assert!(prev.is_none(), "create of an existing record {p}");
                        "create"
                    };
                    ops.push(RepoOp {
                        action: action.into(),
                        path: p.clone(),
                        cid: Some(cid),
                        prev,
                    });
                    records.push((cid, bytes));
                }
                Change::Delete(p) => {
                    let prev = self.tree.remove(p.as_bytes()).expect("remove");
                    assert!(prev.is_some(), "delete of a missing record {p}");
                    ops.push(RepoOp {
                        action: "delete".into(),
                        path: p.clone(),
                        cid: None,
                        prev,
                    });
                }
            }
        }
        let data = self.tree.root_cid();
        let diff = Mst::commit_diff(
            &mut old,
            &mut self.tree,
            ops.iter().map(|o| o.path.as_bytes()),
        )
        .expect("diff");
        let rev = self.next_rev();
        let (commit_cid, block) = Commit::sign(&self.did, rev, data, &self.key).expect("sign");
        let mut blocks: Vec<(Cid, Vec<u8>)> = vec![(commit_cid, block)];
        blocks.extend(diff);
        blocks.extend(records);
        let car = car::write_car(&[commit_cid], blocks.iter().map(|(c, b)| (c, b.as_slice())));
        let since = self.state.map(|s| s.rev.to_string());
        self.state = Some(RepoState {
            rev,
            commit: commit_cid,
            data,
        });
        CommitEvent {
            seq: 1,
            rebase: false,
            too_big: false,
            repo: self.did.clone(),
            commit: commit_cid,
            rev: rev.to_string(),
            since,
            blocks: Bytes::from(car),
            ops,
            blobs: vec![],
            prev_data: Some(prev_data),
            time: EVENT_TIME.into(),
        }
    }

    /// A `#sync` of the current tree at a fresh rev (and keeps it as the state).
    pub fn sync(&mut self) -> SyncEvent {
        let data = self.tree.root_cid();
        let rev = self.next_rev();
        let (commit_cid, block) = Commit::sign(&self.did, rev, data, &self.key).expect("sign");
        self.state = Some(RepoState {
            rev,
            commit: commit_cid,
            data,
        });
        SyncEvent {
            seq: 1,
            did: self.did.clone(),
            blocks: Bytes::from(car::write_car(&[commit_cid], [(&commit_cid, &block[..])])),
            rev: rev.to_string(),
            time: EVENT_TIME.into(),
        }
    }
}

/// `evt` as the websocket message a PDS sends, with `seq` as its sequence number.
pub fn commit_frame(evt: &CommitEvent, seq: i64) -> Bytes {
    let mut evt = evt.clone();
    evt.seq = seq;
    Bytes::from(frame::encode_frame(&Frame::Commit(Box::new(evt))).expect("a commit encodes"))
}

/// `evt` with its CAR slice written again without the block `cid`: the same roots, the same
/// signed commit block and every other block, so a relay finds nothing wrong with it but the
/// missing block. Panics if `evt`'s CAR does not parse or does not hold `cid`.
pub fn without_block(evt: &CommitEvent, cid: &Cid) -> CommitEvent {
    let limits = car::CarLimits {
        max_bytes: usize::MAX,
        max_blocks: usize::MAX,
    };
    let parsed = car::read_car(evt.blocks.clone(), &limits).expect("the event's CAR parses");
    assert!(parsed.blocks.contains(cid), "{cid} is not in the CAR");
    let kept: Vec<(&Cid, &[u8])> = parsed
        .blocks
        .iter()
        .filter(|(c, _)| *c != cid)
        .map(|(c, b)| (c, b.as_ref()))
        .collect();
    CommitEvent {
        blocks: Bytes::from(car::write_car(&parsed.roots, kept)),
        ..evt.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::validate::{CommitVerdict, ValidationPolicy, validate_commit};

    #[test]
    fn emitted_commits_validate_against_the_previous_state() {
        let did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
        let now = 1_767_225_600_000_000;
        let mut repo = SigningRepo::new(did, Curve::K256, 20, now - 3_600_000_000);
        repo.sync();
        let stored = repo.state;
        let evt = repo.commit(&[
            Change::Create(record_path(100)),
            Change::Update(record_path(1)),
            Change::Delete(record_path(2)),
        ]);
        let verdict = validate_commit(
            &evt,
            &repo.public(),
            stored.as_ref(),
            now,
            &ValidationPolicy::default(),
        );
        assert!(
            matches!(verdict, Ok(CommitVerdict::Accept { .. })),
            "{verdict:?}"
        );
    }
}
