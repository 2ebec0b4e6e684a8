//! The firehose as a relay sees it: every frame decodes, seqs strictly increase, every
//! `#commit` verifies (strict) with the key resolved from the PLC against the previous state,
//! and cursors replay exactly the later events before going live.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rookery::atproto::did_doc::PdsEndpoint;
use rookery::atproto::frame::{FUTURE_CURSOR, Frame, decode_frame, peek_event};
use rookery::atproto::validate::{
    CommitVerdict, RepoState, SyncVerdict, ValidationPolicy, validate_commit, validate_sync,
};
use rookery::sim::{SimNetwork, SimPdsConfig};
use rookery::testkit::repo::{Change, record_path};

use crate::client::{Incoming, WAIT, connect, now_micros, resolve, with_cursor};

fn seq_of(frame: &Bytes) -> u64 {
    peek_event(frame).expect("frame header").seq.expect("seq")
}

#[actix_rt::test]
async fn every_commit_verifies_with_the_key_resolved_from_the_plc() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let host = &net.hosts[0];
    let mut firehose = connect(&host.subscribe_url()).await.unwrap();

    let alice = host.create_account().unwrap();
    let bob = host.create_account_with(25).unwrap();
    for did in [&alice, &bob] {
        host.commit(did, &[Change::Create(record_path(1000))])
            .unwrap();
        host.commit(
            did,
            &[
                Change::Create(record_path(1001)),
                Change::Create(record_path(1002)),
            ],
        )
        .unwrap();
        host.commit(
            did,
            &[
                Change::Update(record_path(1000)),
                Change::Delete(record_path(1001)),
            ],
        )
        .unwrap();
    }
    host.sync(&bob).unwrap();
    // 3 creation events and 3 commits per account, then one #sync.
    let frames = firehose.take(2 * 6 + 1).await;

    let expected_pds = PdsEndpoint::parse(&host.endpoint()).unwrap();
    let mut identities = HashMap::new();
    let mut stored: HashMap<String, RepoState> = HashMap::new();
    let mut last_seq = 0;
    let mut kinds = Vec::new();
    for bytes in &frames {
        let frame = decode_frame(bytes).expect("every frame decodes");
        kinds.push(frame.kind());
        let (seq, did) = match &frame {
            Frame::Commit(c) => (c.seq, c.repo.clone()),
            Frame::Sync(s) => (s.seq, s.did.clone()),
            Frame::Identity(i) => (i.seq, i.did.clone()),
            Frame::Account(a) => (a.seq, a.did.clone()),
            other => panic!("unexpected frame {other:?}"),
        };
        assert!(seq as u64 > last_seq, "seq {seq} after {last_seq}");
        last_seq = seq as u64;
        if !identities.contains_key(&did) {
            identities.insert(did.clone(), resolve(&net.plc.url(), &did).await);
        }
        let identity = &identities[&did];
        assert_eq!(identity.pds.as_ref(), Some(&expected_pds));
        assert_eq!(identity.pds.as_ref().unwrap().host, host.hostname());
        let key = identity.signing_key.as_ref().expect("a signing key");
        let policy = ValidationPolicy::default();
        match &frame {
            Frame::Identity(i) => assert_eq!(i.handle, identity.handle),
            Frame::Account(a) => assert!(a.active && a.status.is_none()),
            Frame::Sync(s) => {
                match validate_sync(s, key, stored.get(&did), now_micros(), &policy) {
                    Ok(SyncVerdict::Accept { new_state, .. }) => {
                        stored.insert(did.clone(), new_state);
                    }
                    other => panic!("#sync of {did}: {other:?}"),
                }
            }
            Frame::Commit(c) => {
                let verdict = validate_commit(c, key, stored.get(&did), now_micros(), &policy);
                match verdict {
                    Ok(CommitVerdict::Accept {
                        new_state,
                        discontinuity: None,
                        ..
                    }) => {
                        stored.insert(did.clone(), new_state);
                    }
                    other => panic!("#commit of {did}: {other:?}"),
                }
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(
        &kinds[..6],
        ["identity", "account", "sync", "identity", "account", "sync"]
    );
    for did in [&alice, &bob] {
        assert_eq!(stored.get(did.as_str()), host.repo_state(did).as_ref());
    }
    assert_eq!(last_seq, host.head_seq());
    net.stop().await;
}

#[actix_rt::test]
async fn a_cursor_replays_exactly_the_later_events_then_goes_live() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let host = &net.hosts[0];
    let mut live = connect(&host.subscribe_url()).await.unwrap();
    let did = host.create_account().unwrap();
    for i in 0..5 {
        host.commit(&did, &[Change::Create(record_path(i))])
            .unwrap();
    }
    let seen = live.take(3 + 5).await;
    let cursor = seq_of(&seen[3]);

    let mut replay = connect(&with_cursor(&host.subscribe_url(), cursor))
        .await
        .unwrap();
    let replayed = replay.take(seen.len() - 4).await;
    assert_eq!(
        replayed,
        seen[4..],
        "the events after the cursor, byte for byte"
    );
    host.commit(&did, &[Change::Create(record_path(5))])
        .unwrap();
    host.commit(&did, &[Change::Create(record_path(6))])
        .unwrap();
    let then_live = replay.take(2).await;
    assert_eq!(then_live, live.take(2).await);
    let seqs: Vec<u64> = replayed.iter().chain(&then_live).map(seq_of).collect();
    let consecutive: Vec<u64> = (cursor + 1..=host.head_seq()).collect();
    assert_eq!(seqs, consecutive, "no gap, no duplicate");
    assert!(matches!(
        replay.next_within(Duration::from_millis(200)).await,
        Incoming::Silent
    ));

    // Cursor 0 replays everything the outbox holds.
    let mut all = connect(&with_cursor(&host.subscribe_url(), 0))
        .await
        .unwrap();
    let everything = all.take(seen.len() + 2).await;
    assert_eq!(everything[..seen.len()], seen[..]);

    // A cursor at the head is live only.
    let mut at_head = connect(&with_cursor(&host.subscribe_url(), host.head_seq()))
        .await
        .unwrap();
    assert!(matches!(
        at_head.next_within(Duration::from_millis(200)).await,
        Incoming::Silent
    ));
    net.stop().await;
}

async fn expect_future_cursor(url: &str) {
    let mut firehose = connect(url).await.unwrap();
    let frame = firehose.next_binary().await;
    match decode_frame(&frame).unwrap() {
        Frame::Error(e) => {
            assert_eq!(e.error, FUTURE_CURSOR);
            assert!(e.message.is_some());
        }
        other => panic!("expected FutureCursor, got {other:?}"),
    }
    match firehose.next_within(WAIT).await {
        Incoming::Close(Some(reason)) => {
            assert_eq!(u16::from(reason.code), 1008);
            assert_eq!(reason.description.as_deref(), Some(FUTURE_CURSOR));
        }
        other => panic!("expected close 1008, got {other:?}"),
    }
}

#[actix_rt::test]
async fn a_cursor_above_the_head_gets_future_cursor_also_after_a_reset() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let host = &net.hosts[0];
    let did = host.create_account().unwrap();
    host.commit(&did, &[Change::Create(record_path(0))])
        .unwrap();
    let head = host.head_seq();
    assert_eq!(head, 4);
    expect_future_cursor(&with_cursor(&host.subscribe_url(), head + 1)).await;

    // A host that lost its state: the relay's old cursor is now in the future.
    let mut connected = connect(&host.subscribe_url()).await.unwrap();
    host.reset();
    assert!(matches!(
        connected.next_within(WAIT).await,
        Incoming::Ended | Incoming::Close(_)
    ));
    assert_eq!(host.head_seq(), 0);
    expect_future_cursor(&with_cursor(&host.subscribe_url(), head)).await;
    // The account lives on and the seq starts again at 1.
    assert_eq!(host.commit(&did, &[Change::Create(record_path(1))]), Ok(1));
    net.stop().await;
}

#[actix_rt::test]
async fn the_outbox_is_bounded_and_an_old_cursor_gets_outdated_cursor_first() {
    let config = SimPdsConfig {
        outbox_max_events: 4,
        ..SimPdsConfig::default()
    };
    let net = SimNetwork::start(1, config).unwrap();
    let host = &net.hosts[0];
    let did = host.create_account().unwrap();
    for i in 0..5 {
        host.commit(&did, &[Change::Create(record_path(i))])
            .unwrap();
    }
    // Seqs 1..=8 were emitted; 5..=8 are kept.
    let mut firehose = connect(&with_cursor(&host.subscribe_url(), 1))
        .await
        .unwrap();
    match decode_frame(&firehose.next_binary().await).unwrap() {
        Frame::Info(info) => assert_eq!(info.name, "OutdatedCursor"),
        other => panic!("expected #info, got {other:?}"),
    }
    let seqs: Vec<u64> = firehose.take(4).await.iter().map(seq_of).collect();
    assert_eq!(seqs, [5, 6, 7, 8]);
    net.stop().await;
}

#[actix_rt::test]
async fn a_client_that_does_not_read_is_cut_off_and_the_host_carries_on() {
    let config = SimPdsConfig {
        live_buffer_events: 4,
        send_timeout: Duration::from_millis(300),
        ..SimPdsConfig::default()
    };
    let net = SimNetwork::start(1, config).unwrap();
    let host = &net.hosts[0];
    let did = host.create_account().unwrap();
    let mut stuck = connect(&host.subscribe_url()).await.unwrap();
    // 200 commits of ~200 KB: far more than the socket buffers, actix-ws's channel and the
    // live ring hold together.
    const COMMITS: usize = 200;
    for i in 0..COMMITS {
        host.commit(&did, &[Change::CreateSized(record_path(i), 200_000)])
            .unwrap();
    }
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let mut delivered = 0;
    let ending = loop {
        match stuck.next_within(WAIT).await {
            Incoming::Binary(frame) => match decode_frame(&frame).unwrap() {
                Frame::Commit(_) => delivered += 1,
                Frame::Error(e) => break Some(e.error),
                other => panic!("unexpected {other:?}"),
            },
            Incoming::Close(_) | Incoming::Ended => break None,
            Incoming::Silent => panic!("the stuck connection was not cut off"),
            Incoming::Pong(_) => panic!("no ping was sent"),
        }
        assert!(delivered < COMMITS, "every commit was delivered");
    };
    assert!(matches!(ending.as_deref(), None | Some("ConsumerTooSlow")));
    // The host serves new connections as before.
    let mut fresh = connect(&host.subscribe_url()).await.unwrap();
    host.commit(&did, &[Change::Create(record_path(COMMITS))])
        .unwrap();
    assert!(matches!(
        decode_frame(&fresh.next_binary().await).unwrap(),
        Frame::Commit(_)
    ));
    net.stop().await;
}
