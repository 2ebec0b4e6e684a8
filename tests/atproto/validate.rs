//! Full event validation (`atproto::validate`): every frame of the indigo relay scenarios in
//! order with a running stored state, synthetic commits/syncs for every error variant, and a
//! never-panic property over mutated frames.

use crate::common::vectors as common;

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use rookery::atproto::car::{self, CarError};
use rookery::atproto::cid::Cid;
use rookery::atproto::commit::{Commit, CommitError};
use rookery::atproto::frame::{self, CommitEvent, Frame, SyncEvent};
use rookery::atproto::keys::{Curve, PrivateKey, PublicKey, SigError};
use rookery::atproto::sync11::Sync11Error;
use rookery::atproto::tid::Tid;
use rookery::atproto::validate::{
    CommitVerdict, Discontinuity, Inversion, LegacyPolicy, MAX_COMMIT_BLOCKS_BYTES,
    MAX_RECORD_BLOCK_BYTES, RepoState, SyncVerdict, ValidationError, ValidationPolicy,
    validate_commit, validate_sync,
};
use rookery::testkit::repo::{Change, SigningRepo, record, record_path as path};
use serde_json::Value;

/// 2025-04-17T00:00:00Z: after every rev in the relay scenarios (April 2025 and earlier).
const SCENARIO_NOW: u64 = 1_744_848_000_000_000;

// ------------------------------------------------------------------------------------------
// The indigo relay scenarios

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Dropped by the Subscriber's per-socket seq check (not validation).
    SeqDrop,
    /// Dropped because the account is not active (the validator actor's job, not validation).
    StatusDrop,
    /// `#identity` / `#account`: passed, nothing to validate here.
    Passed,
    Commit(Result<CommitVerdict, ValidationError>),
    Sync(Result<SyncVerdict, ValidationError>),
}

impl Outcome {
    fn dropped(&self) -> bool {
        match self {
            Outcome::SeqDrop | Outcome::StatusDrop => true,
            Outcome::Passed => false,
            Outcome::Commit(r) => !matches!(r, Ok(CommitVerdict::Accept { .. })),
            Outcome::Sync(r) => !matches!(r, Ok(SyncVerdict::Accept { .. })),
        }
    }
}

/// Runs one scenario the way the relay's actors would, with `validate_*` as the validator's
/// pure core, and returns each message's outcome next to its expected `drop` flag.
fn run_scenario(name: &str) -> Vec<(i64, Outcome, bool)> {
    let scenario = common::read_json(&format!("indigo/cmd/relay/testing/testdata/{name}"));
    let policy = if scenario["lenient"].as_bool().expect("lenient flag") {
        ValidationPolicy::lenient()
    } else {
        ValidationPolicy::default()
    };
    let mut keys: HashMap<String, PublicKey> = HashMap::new();
    let mut active: HashMap<String, bool> = HashMap::new();
    for account in scenario["accounts"].as_array().expect("accounts") {
        let identity = &account["identity"];
        let did = identity["did"].as_str().expect("did").to_string();
        let multikey = identity["keys"]["atproto"]["publicKeyMultibase"]
            .as_str()
            .expect("key");
        keys.insert(
            did.clone(),
            PublicKey::from_multikey(multikey).expect("multikey"),
        );
        active.insert(did, account["status"] == "active");
    }
    let mut stored: HashMap<String, RepoState> = HashMap::new();
    let mut last_seq: i64 = 0;
    let mut out = Vec::new();
    for m in scenario["messages"].as_array().expect("messages") {
        let expected_drop = m["drop"].as_bool().expect("drop flag");
        let msg = Bytes::from(common::frame_bytes(&m["frame"]));
        let decoded = frame::decode_frame(&msg).expect("scenario frames decode");
        let seq = m["frame"]["body"]["seq"].as_i64().expect("seq");
        // The Subscriber: upstream seq must strictly increase on one connection.
        if seq <= last_seq {
            out.push((seq, Outcome::SeqDrop, expected_drop));
            continue;
        }
        last_seq = seq;
        let outcome = match decoded {
            Frame::Account(a) => {
                active.insert(a.did.clone(), a.active);
                Outcome::Passed
            }
            Frame::Identity(_) => Outcome::Passed,
            Frame::Commit(c) => {
                if !active.get(&c.repo).copied().unwrap_or(false) {
                    Outcome::StatusDrop
                } else {
                    let r = validate_commit(
                        &c,
                        &keys[&c.repo],
                        stored.get(&c.repo),
                        SCENARIO_NOW,
                        &policy,
                    );
                    if let Ok(CommitVerdict::Accept { new_state, .. }) = &r {
                        stored.insert(c.repo.clone(), *new_state);
                    }
                    Outcome::Commit(r)
                }
            }
            Frame::Sync(s) => {
                if !active.get(&s.did).copied().unwrap_or(false) {
                    Outcome::StatusDrop
                } else {
                    let r =
                        validate_sync(&s, &keys[&s.did], stored.get(&s.did), SCENARIO_NOW, &policy);
                    if let Ok(SyncVerdict::Accept { new_state, .. }) = &r {
                        stored.insert(s.did.clone(), *new_state);
                    }
                    Outcome::Sync(r)
                }
            }
            other => panic!("unexpected frame in {name}: {other:?}"),
        };
        out.push((seq, outcome, expected_drop));
    }
    out
}

fn assert_drops_agree(name: &str, outcomes: &[(i64, Outcome, bool)]) {
    for (seq, outcome, expected_drop) in outcomes {
        assert_eq!(
            outcome.dropped(),
            *expected_drop,
            "{name} seq {seq}: {outcome:?}"
        );
    }
}

fn accepted_commit(o: &Outcome) -> (Option<Discontinuity>, Inversion) {
    match o {
        Outcome::Commit(Ok(CommitVerdict::Accept {
            discontinuity,
            inversion,
            ..
        })) => (*discontinuity, *inversion),
        other => panic!("expected an accepted commit, got {other:?}"),
    }
}

#[test]
fn post_lifecycle_all_verified_and_continuous() {
    let outcomes = run_scenario("post_lifecycle.json");
    assert_drops_agree("post_lifecycle", &outcomes);
    assert_eq!(outcomes.len(), 6);
    // The first commit has prevData but no stored state: inverted, no discontinuity.
    for (_, o, _) in &outcomes {
        assert_eq!(accepted_commit(o), (None, Inversion::Verified));
    }
}

#[test]
fn rev_ordering_drops_exactly_the_bad_revs() {
    let outcomes = run_scenario("rev_ordering.json");
    assert_drops_agree("rev_ordering", &outcomes);
    let results: Vec<&Outcome> = outcomes.iter().map(|(_, o, _)| o).collect();
    assert_eq!(accepted_commit(results[0]), (None, Inversion::Verified));
    // seq 101 and 102 carry an event rev (lower / equal to the stored one) that is not the
    // signed commit's rev: caught before the rev ordering check.
    assert_eq!(
        results[1],
        &Outcome::Commit(Err(ValidationError::RevMismatch))
    );
    assert_eq!(
        results[2],
        &Outcome::Commit(Err(ValidationError::RevMismatch))
    );
    assert_eq!(accepted_commit(results[3]), (None, Inversion::Verified));
}

#[test]
fn lenient_legacy_scenarios_accept_without_prev_data() {
    let outcomes = run_scenario("post_lifecycle_legacy.json");
    assert_drops_agree("post_lifecycle_legacy", &outcomes);
    let results: Vec<(Option<Discontinuity>, Inversion)> = outcomes
        .iter()
        .map(|(_, o, _)| accepted_commit(o))
        .collect();
    assert_eq!(results[0], (None, Inversion::FirstCommit));
    // seq 7441137124's since (3llxiozhrpa2n) is not the stored rev: a skipped stretch of history.
    assert_eq!(
        results[1],
        (
            Some(Discontinuity {
                prev_data_mismatch: false,
                since_mismatch: true
            }),
            Inversion::NoPrevData
        )
    );
    for r in &results[2..] {
        assert_eq!(*r, (None, Inversion::NoPrevData));
    }

    let outcomes = run_scenario("legacy.json");
    assert_drops_agree("legacy", &outcomes);
    assert_eq!(
        accepted_commit(&outcomes[2].1),
        (None, Inversion::FirstCommit)
    );
}

#[test]
fn legacy_scenario_in_strict_mode_drops_after_the_first_commit() {
    // The same frames under the default strict policy: the first commit passes (nothing
    // stored, no prevData), every later one lacks the required prevData.
    let scenario =
        common::read_json("indigo/cmd/relay/testing/testdata/post_lifecycle_legacy.json");
    let key = PublicKey::from_multikey(
        scenario["accounts"][0]["identity"]["keys"]["atproto"]["publicKeyMultibase"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut stored = None;
    for (i, m) in scenario["messages"].as_array().unwrap().iter().enumerate() {
        let Frame::Commit(c) =
            frame::decode_frame(&Bytes::from(common::frame_bytes(&m["frame"]))).unwrap()
        else {
            panic!("commit expected")
        };
        let r = validate_commit(
            &c,
            &key,
            stored.as_ref(),
            SCENARIO_NOW,
            &ValidationPolicy::default(),
        );
        if i == 0 {
            let Ok(CommitVerdict::Accept { new_state, .. }) = r else {
                panic!("{r:?}")
            };
            stored = Some(new_state);
        } else {
            assert_eq!(r, Err(ValidationError::MissingPrevData));
        }
    }
}

#[test]
fn seq_and_status_drops_are_not_validation() {
    let outcomes = run_scenario("seq_ordering.json");
    assert_drops_agree("seq_ordering", &outcomes);
    let kinds: Vec<&Outcome> = outcomes.iter().map(|(_, o, _)| o).collect();
    assert_eq!(kinds[1], &Outcome::SeqDrop);
    assert_eq!(kinds[2], &Outcome::SeqDrop);
    assert_eq!(accepted_commit(kinds[3]), (None, Inversion::FirstCommit));

    let outcomes = run_scenario("deactivation.json");
    assert_drops_agree("deactivation", &outcomes);
    assert_eq!(outcomes[2].1, Outcome::StatusDrop);
    // After reactivation the next commit's since points at the dropped commit's rev.
    assert_eq!(
        accepted_commit(&outcomes[4].1),
        (
            Some(Discontinuity {
                prev_data_mismatch: false,
                since_mismatch: true
            }),
            Inversion::NoPrevData
        )
    );

    let outcomes = run_scenario("account_lifecycle.json");
    assert_drops_agree("account_lifecycle", &outcomes);
    let Outcome::Sync(Ok(SyncVerdict::Accept {
        new_state,
        rollback,
    })) = &outcomes[2].1
    else {
        panic!("{:?}", outcomes[2].1)
    };
    assert!(!rollback);
    assert_eq!(new_state.rev, Tid::parse("3lmxrbvasth2t").unwrap());
}

#[test]
fn scenario_commit_with_wrong_key_is_a_signature_error_and_stale_costs_no_signature() {
    let scenario = common::read_json("indigo/cmd/relay/testing/testdata/post_lifecycle.json");
    let msgs = scenario["messages"].as_array().unwrap();
    let commit = |i: usize| match frame::decode_frame(&Bytes::from(common::frame_bytes(
        &msgs[i]["frame"],
    ))) {
        Ok(Frame::Commit(c)) => c,
        other => panic!("{other:?}"),
    };
    let wrong = PrivateKey::generate(Curve::K256).public_key();
    let policy = ValidationPolicy::default();
    let first = commit(0);
    let r = validate_commit(&first, &wrong, None, SCENARIO_NOW, &policy);
    assert_eq!(r, Err(ValidationError::Signature(SigError::Invalid)));
    assert!(r.unwrap_err().is_signature());
    // Replayed after acceptance: Stale even with the wrong key (no signature check).
    let right = PublicKey::from_multikey(
        scenario["accounts"][0]["identity"]["keys"]["atproto"]["publicKeyMultibase"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let Ok(CommitVerdict::Accept { new_state, .. }) =
        validate_commit(&first, &right, None, SCENARIO_NOW, &policy)
    else {
        panic!()
    };
    assert_eq!(
        validate_commit(&first, &wrong, Some(&new_state), SCENARIO_NOW, &policy),
        Ok(CommitVerdict::Stale)
    );
    // A `now` long before the revs: future rev.
    assert_eq!(
        validate_commit(&first, &right, None, 1_700_000_000_000_000, &policy),
        Err(ValidationError::FutureRev)
    );
}

// ------------------------------------------------------------------------------------------
// Synthetic repos

const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
/// 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600_000_000;

/// A PDS-side repo of `records` records whose revs start an hour before [`NOW`].
fn new_repo(curve: Curve, records: usize) -> SigningRepo {
    SigningRepo::new(DID, curve, records, NOW - 3_600_000_000)
}

fn strict() -> ValidationPolicy {
    ValidationPolicy::default()
}

fn accept(
    r: Result<CommitVerdict, ValidationError>,
) -> (RepoState, Option<Discontinuity>, Inversion) {
    match r {
        Ok(CommitVerdict::Accept {
            new_state,
            discontinuity,
            inversion,
        }) => (new_state, discontinuity, inversion),
        other => panic!("expected accept, got {other:?}"),
    }
}

/// A repo with some history and the stored state before its next commit.
fn repo_with_history(curve: Curve) -> (SigningRepo, RepoState) {
    let mut repo = new_repo(curve, 60);
    repo.commit(&[Change::Create(path(1000))]);
    let stored = repo.state.unwrap();
    (repo, stored)
}

#[test]
fn generated_commits_verify_on_both_curves_and_through_frames() {
    for curve in [Curve::K256, Curve::P256] {
        let (mut repo, mut stored) = repo_with_history(curve);
        let key = repo.public();
        for changes in [
            vec![Change::Create(path(2000)), Change::Create(path(2001))],
            vec![Change::Update(path(3))],
            vec![Change::Delete(path(4)), Change::Update(path(2000))],
            vec![],
        ] {
            let evt = repo.commit(&changes);
            // Through the wire format, as the validator receives it.
            let msg = Bytes::from(frame::encode_frame(&Frame::Commit(Box::new(evt))).unwrap());
            let Ok(Frame::Commit(evt)) = frame::decode_frame(&msg) else {
                panic!()
            };
            let (state, disc, inv) =
                accept(validate_commit(&evt, &key, Some(&stored), NOW, &strict()));
            assert_eq!(Some(state), repo.state);
            assert_eq!(disc, None);
            assert_eq!(inv, Inversion::Verified);
            stored = state;
        }
    }
}

#[test]
fn discontinuity_is_accepted_and_reported() {
    let (mut repo, stored) = repo_with_history(Curve::K256);
    let key = repo.public();
    // The relay missed one commit: both prevData and since differ from what it stored.
    repo.commit(&[Change::Create(path(2000))]);
    let evt = repo.commit(&[Change::Create(path(2001))]);
    let (state, disc, inv) = accept(validate_commit(&evt, &key, Some(&stored), NOW, &strict()));
    assert_eq!(Some(state), repo.state);
    assert_eq!(
        disc,
        Some(Discontinuity {
            prev_data_mismatch: true,
            since_mismatch: true
        })
    );
    assert_eq!(inv, Inversion::Verified);
    // Only `since` wrong.
    let mut evt = repo.commit(&[Change::Create(path(2002))]);
    evt.since = None;
    let (_, disc, _) = accept(validate_commit(&evt, &key, Some(&state), NOW, &strict()));
    assert_eq!(
        disc,
        Some(Discontinuity {
            prev_data_mismatch: false,
            since_mismatch: true
        })
    );
}

#[test]
fn stale_commits_are_dropped_silently() {
    let (mut repo, stored) = repo_with_history(Curve::K256);
    let key = repo.public();
    let evt = repo.commit(&[Change::Create(path(2000))]);
    let (state, ..) = accept(validate_commit(&evt, &key, Some(&stored), NOW, &strict()));
    // The same event again (duplicate after reconnect) and an older one.
    assert_eq!(
        validate_commit(&evt, &key, Some(&state), NOW, &strict()),
        Ok(CommitVerdict::Stale)
    );
    let newer = RepoState {
        rev: Tid::from_parts(NOW, 0),
        ..state
    };
    assert_eq!(
        validate_commit(&evt, &key, Some(&newer), NOW, &strict()),
        Ok(CommitVerdict::Stale)
    );
}

/// Expects `err` from validating `evt` (stored state as given) under `policy`.
fn expect_err(
    evt: &CommitEvent,
    key: &PublicKey,
    stored: Option<&RepoState>,
    policy: &ValidationPolicy,
    err: ValidationError,
) {
    assert_eq!(
        validate_commit(evt, key, stored, NOW, policy),
        Err(err.clone()),
        "{}",
        err.reason()
    );
}

#[test]
fn every_commit_error_variant() {
    let (mut repo, stored) = repo_with_history(Curve::K256);
    let key = repo.public();
    let s = Some(&stored);
    let good = repo.commit(&[Change::Create(path(2000))]);
    accept(validate_commit(&good, &key, s, NOW, &strict()));

    // Size limits.
    let mut e = good.clone();
    e.blocks = Bytes::from(vec![0u8; 2_000_001]);
    expect_err(&e, &key, s, &strict(), ValidationError::TooLarge);
    let mut e = good.clone();
    e.ops = (0..201).map(|_| good.ops[0].clone()).collect();
    expect_err(&e, &key, s, &strict(), ValidationError::TooManyOps);
    let mut e = good.clone();
    e.blocks = Bytes::new();
    expect_err(&e, &key, s, &strict(), ValidationError::EmptyBlocks);

    // CAR problems.
    let mut e = good.clone();
    let mut bytes = e.blocks.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    e.blocks = Bytes::from(bytes);
    expect_err(
        &e,
        &key,
        s,
        &strict(),
        ValidationError::Car(CarError::HashMismatch),
    );
    let car = car::read_car(good.blocks.clone(), &Default::default()).unwrap();
    let without_commit: Vec<(&Cid, &[u8])> = car
        .blocks
        .iter()
        .filter(|(c, _)| **c != good.commit)
        .map(|(c, b)| (c, b.as_ref()))
        .collect();
    let mut e = good.clone();
    e.blocks = Bytes::from(car::write_car(&[good.commit], without_commit.clone()));
    expect_err(&e, &key, s, &strict(), ValidationError::MissingCommitBlock);

    // evt.commit is not roots[0].
    let mut e = good.clone();
    e.commit = stored.commit;
    expect_err(&e, &key, s, &strict(), ValidationError::CommitRootMismatch);

    // The commit block under a CID that is not CIDv1 dag-cbor (here: raw codec, same hash).
    // Its content verifies, but the relay would store the dag-cbor CID while re-broadcasting
    // the event's other one.
    let commit_block = car.blocks.get(&good.commit).unwrap().clone();
    let raw_cid = Cid::new_v1(0x55, *good.commit.hash());
    let mut blocks = vec![(&raw_cid, commit_block.as_ref())];
    blocks.extend(without_commit.iter().copied());
    let mut e = good.clone();
    e.commit = raw_cid;
    e.blocks = Bytes::from(car::write_car(&[raw_cid], blocks.clone()));
    expect_err(&e, &key, s, &strict(), ValidationError::CommitCidNotBlessed);
    let sync = SyncEvent {
        seq: 1,
        did: DID.into(),
        blocks: Bytes::from(car::write_car(
            &[raw_cid],
            [(&raw_cid, commit_block.as_ref())],
        )),
        rev: good.rev.clone(),
        time: good.time.clone(),
    };
    assert_eq!(
        validate_sync(&sync, &key, s, NOW, &strict()),
        Err(ValidationError::CommitCidNotBlessed)
    );

    // roots[0] is not a commit (a record block).
    let (rec_cid, rec) = record("not a commit");
    let mut e = good.clone();
    e.commit = rec_cid;
    e.blocks = Bytes::from(car::write_car(&[rec_cid], [(&rec_cid, rec.as_slice())]));
    expect_err(
        &e,
        &key,
        s,
        &strict(),
        ValidationError::Commit(CommitError::MissingField("version")),
    );

    // A commit signed for another DID (the signature cannot catch this).
    let other_did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    let data = car::read_car(good.blocks.clone(), &Default::default())
        .map(|c| {
            Commit::decode(c.blocks.get(&good.commit).unwrap())
                .unwrap()
                .data
        })
        .unwrap();
    let rev = Tid::parse(&good.rev).unwrap();
    let (cid, block) = Commit::sign(other_did, rev, data, &repo.key).unwrap();
    let mut blocks = vec![(&cid, block.as_slice())];
    blocks.extend(without_commit.iter().copied());
    let mut e = good.clone();
    e.commit = cid;
    e.blocks = Bytes::from(car::write_car(&[cid], blocks));
    expect_err(&e, &key, s, &strict(), ValidationError::RepoMismatch);

    // Event rev differs from the signed rev (higher, so not stale).
    let mut e = good.clone();
    e.rev = Tid::from_parts(NOW, 1).to_string();
    expect_err(&e, &key, s, &strict(), ValidationError::RevMismatch);
    e.rev = "not-a-tid".into();
    expect_err(&e, &key, s, &strict(), ValidationError::RevMismatch);

    // Deprecated fields (strict only).
    let mut e = good.clone();
    e.too_big = true;
    expect_err(
        &e,
        &key,
        s,
        &strict(),
        ValidationError::DeprecatedField("tooBig"),
    );
    accept(validate_commit(
        &e,
        &key,
        s,
        NOW,
        &ValidationPolicy::lenient(),
    ));
    let mut e = good.clone();
    e.rebase = true;
    expect_err(
        &e,
        &key,
        s,
        &strict(),
        ValidationError::DeprecatedField("rebase"),
    );

    // prevData: required once state is stored (strict); first commit without it is fine.
    let mut e = good.clone();
    e.prev_data = None;
    expect_err(&e, &key, s, &strict(), ValidationError::MissingPrevData);
    let (_, _, inv) = accept(validate_commit(&e, &key, None, NOW, &strict()));
    assert_eq!(inv, Inversion::FirstCommit);
    let (_, _, inv) = accept(validate_commit(
        &e,
        &key,
        s,
        NOW,
        &ValidationPolicy::lenient(),
    ));
    assert_eq!(inv, Inversion::NoPrevData);

    // time (strict only).
    let mut e = good.clone();
    e.time = "yesterday".into();
    expect_err(&e, &key, s, &strict(), ValidationError::BadTime);
    accept(validate_commit(
        &e,
        &key,
        s,
        NOW,
        &ValidationPolicy::lenient(),
    ));

    // Inversion: the op's cid is not the record in the tree; prevData that does not match.
    let mut e = good.clone();
    e.ops[0].cid = Some(rec_cid);
    expect_err(
        &e,
        &key,
        s,
        &strict(),
        ValidationError::Inversion(Sync11Error::RecordMismatch),
    );
    let mut e = good.clone();
    e.prev_data = Some(rec_cid);
    let r = validate_commit(&e, &key, s, NOW, &strict());
    assert!(
        matches!(
            r,
            Err(ValidationError::Inversion(Sync11Error::RootMismatch { .. }))
        ),
        "{r:?}"
    );
    assert_eq!(r.unwrap_err().reason(), "inversion-root-mismatch");
    // An operator's per-host override: the same commit passes, labelled as such, and every
    // other check still applies (a wrong key is still refused).
    let warn = ValidationPolicy {
        inversion_failure_warns: true,
        ..strict()
    };
    let (_, _, inv) = accept(validate_commit(&e, &key, s, NOW, &warn));
    assert_eq!(inv, Inversion::FailedWarnOnly);
    assert_eq!(inv.reason(), "failed-warn-only");
    expect_err(
        &e,
        &PrivateKey::generate(Curve::K256).public_key(),
        s,
        &warn,
        ValidationError::Signature(SigError::Invalid),
    );

    // Signature: a key of the other curve, and a different K-256 key.
    let p256 = PrivateKey::generate(Curve::P256).public_key();
    expect_err(
        &good,
        &p256,
        s,
        &strict(),
        ValidationError::Signature(SigError::Invalid),
    );
    let k256 = PrivateKey::generate(Curve::K256).public_key();
    expect_err(
        &good,
        &k256,
        s,
        &strict(),
        ValidationError::Signature(SigError::Invalid),
    );

    // Future rev: a commit signed 10 minutes ahead of `now`.
    repo.clock = NOW + 600_000_000;
    let future = repo.commit(&[Change::Create(path(2001))]);
    expect_err(&future, &key, s, &strict(), ValidationError::FutureRev);
    let relaxed = ValidationPolicy {
        future_rev_tolerance_micros: 3_600_000_000,
        ..strict()
    };
    // Accepted with a larger tolerance (discontinuous: it skips the previous commit).
    accept(validate_commit(&future, &key, s, NOW, &relaxed));
}

#[test]
fn legacy_ops_follow_the_policy() {
    let (mut repo, stored) = repo_with_history(Curve::K256);
    let key = repo.public();
    let mut evt = repo.commit(&[Change::Update(path(5))]);
    evt.ops[0].prev = None;
    expect_err(
        &evt,
        &key,
        Some(&stored),
        &strict(),
        ValidationError::LegacyOp,
    );
    assert_eq!(ValidationError::LegacyOp.reason(), "legacy-op");
    let accept_legacy = ValidationPolicy {
        legacy: LegacyPolicy::Accept,
        ..strict()
    };
    let (_, _, inv) = accept(validate_commit(
        &evt,
        &key,
        Some(&stored),
        NOW,
        &accept_legacy,
    ));
    assert_eq!(inv, Inversion::Legacy);
    let (_, _, inv) = accept(validate_commit(
        &evt,
        &key,
        Some(&stored),
        NOW,
        &ValidationPolicy::lenient(),
    ));
    assert_eq!(inv, Inversion::Legacy);
}

#[test]
fn sync_events() {
    let (mut repo, stored) = repo_with_history(Curve::K256);
    let key = repo.public();
    let sync = repo.sync();
    // Newer than stored: accepted, no continuity check.
    let Ok(SyncVerdict::Accept {
        new_state,
        rollback,
    }) = validate_sync(&sync, &key, Some(&stored), NOW, &strict())
    else {
        panic!()
    };
    assert!(!rollback);
    assert_eq!(Some(new_state), repo.state);
    // First sight of the account.
    assert!(matches!(
        validate_sync(&sync, &key, None, NOW, &strict()),
        Ok(SyncVerdict::Accept {
            rollback: false,
            ..
        })
    ));
    // Same rev and commit: duplicate, even with the wrong key (no signature spent).
    let wrong = PrivateKey::generate(Curve::K256).public_key();
    assert_eq!(
        validate_sync(&sync, &wrong, Some(&new_state), NOW, &strict()),
        Ok(SyncVerdict::Duplicate)
    );
    // Stored state is ahead: the PDS restored a backup. Rollback, state reset.
    let ahead = RepoState {
        rev: Tid::from_parts(NOW, 0),
        ..new_state
    };
    assert_eq!(
        validate_sync(&sync, &key, Some(&ahead), NOW, &strict()),
        Ok(SyncVerdict::Accept {
            new_state,
            rollback: true
        })
    );
    // Same rev, different commit: not a duplicate.
    let forked = RepoState {
        commit: stored.commit,
        ..new_state
    };
    assert!(matches!(
        validate_sync(&sync, &key, Some(&forked), NOW, &strict()),
        Ok(SyncVerdict::Accept {
            rollback: false,
            ..
        })
    ));
    // Errors.
    assert_eq!(
        validate_sync(&sync, &wrong, Some(&stored), NOW, &strict()),
        Err(ValidationError::Signature(SigError::Invalid))
    );
    let mut e = sync.clone();
    e.blocks = Bytes::from(vec![0u8; 10_001]);
    assert_eq!(
        validate_sync(&e, &key, None, NOW, &strict()),
        Err(ValidationError::TooLarge)
    );
    let mut e = sync.clone();
    e.did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into();
    assert_eq!(
        validate_sync(&e, &key, None, NOW, &strict()),
        Err(ValidationError::RepoMismatch)
    );
    let mut e = sync.clone();
    e.rev = Tid::from_parts(NOW, 0).to_string();
    assert_eq!(
        validate_sync(&e, &key, None, NOW, &strict()),
        Err(ValidationError::RevMismatch)
    );
    let mut e = sync.clone();
    e.time = "".into();
    assert_eq!(
        validate_sync(&e, &key, None, NOW, &strict()),
        Err(ValidationError::BadTime)
    );
    assert!(validate_sync(&e, &key, None, NOW, &ValidationPolicy::lenient()).is_ok());
    assert_eq!(
        validate_sync(&sync, &key, None, 1_700_000_000_000_000, &strict()),
        Err(ValidationError::FutureRev)
    );
    // A CAR with more than the commit block.
    let car = car::read_car(sync.blocks.clone(), &Default::default()).unwrap();
    let (commit_cid, commit_block) = car.blocks.iter().next().unwrap();
    let (rec_cid, rec) = record("extra");
    let mut e = sync.clone();
    e.blocks = Bytes::from(car::write_car(
        &[*commit_cid],
        [
            (commit_cid, commit_block.as_ref()),
            (&rec_cid, rec.as_slice()),
        ],
    ));
    assert_eq!(
        validate_sync(&e, &key, None, NOW, &strict()),
        Err(ValidationError::SyncExtraBlocks)
    );
    assert!(validate_sync(&e, &key, None, NOW, &ValidationPolicy::lenient()).is_ok());
    let mut e = sync.clone();
    e.blocks = Bytes::from(car::write_car(&[rec_cid], [(&rec_cid, rec.as_slice())]));
    assert!(matches!(
        validate_sync(&e, &key, None, NOW, &strict()),
        Err(ValidationError::Commit(_))
    ));
}

/// PROTOCOL.md §1: each record block may be at most 1,000,000 bytes, even inside a
/// `#commit.blocks` that is within its own 2,000,000-byte limit.
#[test]
fn record_blocks_over_one_megabyte_are_rejected() {
    // Block length for a `text` of n bytes (n >= 65,536: a 5-byte text head).
    let overhead = record(&"x".repeat(70_000)).1.len() - 70_000;
    let text_for = |block_len: usize| block_len - overhead;
    assert_eq!(
        record(&"x".repeat(text_for(MAX_RECORD_BLOCK_BYTES)))
            .1
            .len(),
        MAX_RECORD_BLOCK_BYTES
    );
    for curve in [Curve::K256, Curve::P256] {
        let (mut repo, stored) = repo_with_history(curve);
        let key = repo.public();
        let at_limit = repo.commit(&[Change::CreateSized(
            path(3000),
            text_for(MAX_RECORD_BLOCK_BYTES),
        )]);
        let (next, _, inversion) = accept(validate_commit(
            &at_limit,
            &key,
            Some(&stored),
            NOW,
            &strict(),
        ));
        assert_eq!(inversion, Inversion::Verified);
        let over = repo.commit(&[Change::CreateSized(
            path(3001),
            text_for(MAX_RECORD_BLOCK_BYTES + 1),
        )]);
        assert!(over.blocks.len() < MAX_COMMIT_BLOCKS_BYTES);
        expect_err(
            &over,
            &key,
            Some(&next),
            &strict(),
            ValidationError::RecordTooLarge,
        );
        // Also when no inversion runs (first commit, lenient without prevData).
        let mut first = over.clone();
        first.prev_data = None;
        first.since = None;
        expect_err(
            &first,
            &key,
            None,
            &strict(),
            ValidationError::RecordTooLarge,
        );
        expect_err(
            &first,
            &key,
            Some(&next),
            &ValidationPolicy::lenient(),
            ValidationError::RecordTooLarge,
        );
    }
}

#[test]
fn every_reason_is_distinct_per_variant_group() {
    let reasons = [
        ValidationError::TooLarge.reason(),
        ValidationError::TooManyOps.reason(),
        ValidationError::EmptyBlocks.reason(),
        ValidationError::MissingCommitBlock.reason(),
        ValidationError::CommitRootMismatch.reason(),
        ValidationError::RepoMismatch.reason(),
        ValidationError::RevMismatch.reason(),
        ValidationError::FutureRev.reason(),
        ValidationError::DeprecatedField("tooBig").reason(),
        ValidationError::MissingPrevData.reason(),
        ValidationError::BadTime.reason(),
        ValidationError::SyncExtraBlocks.reason(),
        ValidationError::LegacyOp.reason(),
        ValidationError::RecordTooLarge.reason(),
        ValidationError::CommitCidNotBlessed.reason(),
        ValidationError::Signature(SigError::Invalid).reason(),
        ValidationError::Car(CarError::Truncated).reason(),
    ];
    let unique: std::collections::HashSet<_> = reasons.iter().collect();
    assert_eq!(unique.len(), reasons.len());
}

// ------------------------------------------------------------------------------------------
// Never panic on mutated frames

struct Fixture {
    key: PublicKey,
    stored: RepoState,
    commit_msg: Vec<u8>,
    sync_msg: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (mut repo, stored) = repo_with_history(Curve::K256);
        let evt = repo.commit(&[Change::Create(path(2000)), Change::Delete(path(7))]);
        let sync = repo.sync();
        Fixture {
            key: repo.public(),
            stored,
            commit_msg: frame::encode_frame(&Frame::Commit(Box::new(evt))).unwrap(),
            sync_msg: frame::encode_frame(&Frame::Sync(sync)).unwrap(),
        }
    })
}

fn validate_any(msg: Vec<u8>, f: &Fixture) {
    let msg = Bytes::from(msg);
    for policy in [ValidationPolicy::default(), ValidationPolicy::lenient()] {
        match frame::decode_frame(&msg) {
            Ok(Frame::Commit(c)) => {
                let _ = validate_commit(&c, &f.key, Some(&f.stored), NOW, &policy);
                let _ = validate_commit(&c, &f.key, None, NOW, &policy);
            }
            Ok(Frame::Sync(s)) => {
                let _ = validate_sync(&s, &f.key, Some(&f.stored), NOW, &policy);
            }
            _ => {}
        }
    }
}

#[test]
fn unmutated_fixture_frames_are_valid() {
    let f = fixture();
    let Ok(Frame::Commit(c)) = frame::decode_frame(&Bytes::from(f.commit_msg.clone())) else {
        panic!()
    };
    let (_, disc, inv) = accept(validate_commit(&c, &f.key, Some(&f.stored), NOW, &strict()));
    assert_eq!((disc, inv), (None, Inversion::Verified));
    let Ok(Frame::Sync(s)) = frame::decode_frame(&Bytes::from(f.sync_msg.clone())) else {
        panic!()
    };
    assert!(validate_sync(&s, &f.key, Some(&f.stored), NOW, &strict()).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_frames_never_panic(
        which in any::<bool>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let f = fixture();
        let mut msg = if which { f.commit_msg.clone() } else { f.sync_msg.clone() };
        for (pos, byte) in edits {
            let i = pos.index(msg.len());
            msg[i] = byte;
        }
        if let Some(cut) = cut {
            msg.truncate(cut.index(msg.len() + 1));
        }
        validate_any(msg, f);
    }

    #[test]
    fn mutated_car_inside_a_valid_frame_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        // Mutate only the CAR so the frame still decodes and validation gets past framing.
        let f = fixture();
        let Ok(Frame::Commit(mut c)) = frame::decode_frame(&Bytes::from(f.commit_msg.clone())) else {
            panic!()
        };
        let mut blocks = c.blocks.to_vec();
        for (pos, byte) in edits {
            let i = pos.index(blocks.len());
            blocks[i] = byte;
        }
        c.blocks = Bytes::from(blocks);
        validate_any(frame::encode_frame(&Frame::Commit(c)).unwrap(), f);
    }
}

#[test]
fn scenario_frames_all_decode_into_validatable_events() {
    // Guards the harness: the scenario runner above sees every #commit/#sync frame.
    let frames: Vec<(String, Value)> = common::scenario_frames();
    let n = frames
        .iter()
        .filter(|(_, f)| matches!(f["header"]["t"].as_str(), Some("#commit" | "#sync")))
        .count();
    assert_eq!(n, 6 + 4 + 6 + 6 + 1 + 2 + 1);
}
