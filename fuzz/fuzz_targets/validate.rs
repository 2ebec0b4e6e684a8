//! `validate_commit` / `validate_sync` on decoded frames, with a fixed key and clock.
//!
//! The seeds (`fuzz/README.md`) include commits and syncs signed with this key, so mutations
//! reach every check, the signature included. The stored state is derived from the event
//! (`since` and `prevData`), so inversion and continuity run too. Properties: no panic; the
//! same input gives the same verdict twice; an accepted event's new state is its own commit.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rookery::atproto::cid::cid_for_dag_cbor;
use rookery::atproto::frame::{self, Frame};
use rookery::atproto::keys::{Curve, PrivateKey};
use rookery::atproto::tid::Tid;
use rookery::atproto::validate::{
    CommitVerdict, RepoState, SyncVerdict, ValidationPolicy, validate_commit, validate_sync,
};

/// The seeds' signing key and clock (2026-01-01T00:00:00Z).
const KEY: [u8; 32] = [7u8; 32];
const NOW: u64 = 1_767_225_600_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = frame::decode_frame(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let key = PrivateKey::from_bytes(Curve::K256, &KEY)
        .expect("fixed key")
        .public_key();
    for policy in [ValidationPolicy::default(), ValidationPolicy::lenient()] {
        match &frame {
            Frame::Commit(c) => {
                let derived = c
                    .since
                    .as_deref()
                    .and_then(|s| Tid::parse(s).ok())
                    .map(|rev| RepoState {
                        rev,
                        commit: cid_for_dag_cbor(b"previous commit"),
                        data: c.prev_data.unwrap_or_else(|| cid_for_dag_cbor(b"\xa0")),
                    });
                for stored in [None, derived] {
                    let first = validate_commit(c, &key, stored.as_ref(), NOW, &policy);
                    let second = validate_commit(c, &key, stored.as_ref(), NOW, &policy);
                    assert_eq!(first, second, "deterministic");
                    if let Ok(CommitVerdict::Accept { new_state, .. }) = first {
                        assert_eq!(new_state.commit, c.commit);
                        assert!(stored.is_none_or(|s| s.rev < new_state.rev));
                    }
                }
            }
            Frame::Sync(s) => {
                let first = validate_sync(s, &key, None, NOW, &policy);
                assert_eq!(first, validate_sync(s, &key, None, NOW, &policy));
                if let Ok(SyncVerdict::Accept { new_state, .. }) = first {
                    let again = validate_sync(s, &key, Some(&new_state), NOW, &policy);
                    assert_eq!(
                        again,
                        Ok(SyncVerdict::Duplicate),
                        "same state is a duplicate"
                    );
                }
            }
            _ => {}
        }
    }
});
