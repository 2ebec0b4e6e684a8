//! What the event log decides for consumers: masked (taken-down) accounts are not replayed,
//! from the log or from the ring, and a damaged sealed segment is skipped, counted, and the
//! session goes on.

use std::time::Duration;

use rookery::actors::firehose::FirehoseSettings;
use rookery::store::event_log::{
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, did_hash, parse_segment_name, segment_file_name,
};

use crate::support::{Harness, WAIT, connect, eventually, log_seqs, small_segments};

const ALICE: &str = "did:plc:alice";
const BOB: &str = "did:plc:bob";

#[actix_rt::test]
async fn a_taken_down_account_is_not_replayed_from_the_log_nor_from_the_ring() {
    // A small ring and small log batches: a replay reads the log until it reaches the
    // ring's floor, then the ring (which held bob's frames before the takedown).
    let settings = FirehoseSettings {
        ring_max_bytes: 4 * 1024,
        replay_batch_bytes: 1024,
        ..FirehoseSettings::default()
    };
    let mut h = Harness::start(settings, small_segments);
    for _ in 0..200 {
        h.append(&[ALICE, BOB]);
    }
    h.published(400).await;
    // The ring holds bob's newest events before the takedown.
    let state = h.firehose.broadcaster_state().await.expect("state");
    assert!(state.floor > 0 && state.ring_frames > 10, "{state:?}");

    // The takedown path: mask in the log, then in the ring.
    let report = h.log.admin().set_masked(did_hash(BOB), true).expect("mask");
    assert_eq!(report.records_matched, 200);
    let removed = h
        .firehose
        .mask_account(did_hash(BOB), u64::MAX)
        .await
        .expect("mask ring");
    assert!(removed > 0);

    let mut alice_only: Vec<u64> = (1..=400).filter(|s| s % 2 == 1).collect();
    assert_eq!(log_seqs(&h.reader(), 0), alice_only);
    for cursor in ["cursor=0", "cursor=1", "cursor=385"] {
        let mut consumer = connect(&h.url(cursor)).await;
        let from: u64 = cursor.trim_start_matches("cursor=").parse().expect("n");
        let expected: Vec<u64> = alice_only.iter().copied().filter(|s| *s > from).collect();
        assert_eq!(
            consumer.seqs_through(*expected.last().expect("some")).await,
            expected,
            "{cursor}"
        );
        // Live after the replay.
        let next = h.append(&[ALICE]);
        assert_eq!(consumer.seqs_through(next[0]).await, next, "{cursor}");
        alice_only.extend(next);
    }
    h.stop().await;
}

/// Bit rot in a sealed segment under a replaying consumer: the damaged records are skipped
/// (counted), everything before and after arrives once, in order, and the session stays.
#[actix_rt::test]
async fn a_damaged_sealed_segment_is_skipped_and_the_session_goes_on() {
    let settings = FirehoseSettings {
        ring_max_bytes: 4 * 1024,
        ..FirehoseSettings::default()
    };
    let mut h = Harness::start(settings, small_segments);
    h.append_n(1000, 10, ALICE);
    h.published(1000).await;

    // Damage a record body in the third segment (sealed: later segments exist).
    let events = h.dir.path().join("events");
    let mut firsts: Vec<u64> = std::fs::read_dir(&events)
        .expect("list")
        .filter_map(|e| parse_segment_name(&e.ok()?.file_name().to_string_lossy()))
        .collect();
    firsts.sort_unstable();
    assert!(firsts.len() > 4, "{firsts:?}");
    let path = events.join(segment_file_name(firsts[2]));
    let mut bytes = std::fs::read(&path).expect("read");
    // Walk to the 10th record by its length fields.
    let mut at = SEGMENT_HEADER_LEN as usize;
    for _ in 0..10 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("len")) as usize;
        at += RECORD_HEADER_LEN + len;
    }
    let damaged_seq = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().expect("seq"));
    bytes[at + RECORD_HEADER_LEN + 5] ^= 0xff;
    std::fs::write(&path, &bytes).expect("damage");

    let mut consumer = connect(&h.url("cursor=0")).await;
    let got = consumer.seqs_through(1000).await;
    // Everything before the damaged record arrived; the lost ones are one contiguous run
    // starting at it, inside that segment (resumed at the next indexed record).
    let lost: Vec<u64> = (1..=1000).filter(|s| !got.contains(s)).collect();
    assert!(!lost.is_empty());
    assert_eq!(lost[0], damaged_seq, "{lost:?}");
    assert_eq!(
        lost,
        (damaged_seq..damaged_seq + lost.len() as u64).collect::<Vec<_>>()
    );
    assert!(
        *lost.last().expect("one") < firsts[3],
        "{lost:?} within the segment"
    );
    assert!(
        eventually(WAIT, || async {
            h.firehose.metrics().damaged_skips.get() == 1
        })
        .await
    );
    // Still connected, and live.
    let next = h.append(&[ALICE]);
    assert_eq!(consumer.seqs_through(next[0]).await, next);
    consumer.assert_silent(Duration::from_millis(50)).await;
    assert_eq!(h.firehose.consumer_count(), 1);
    h.stop().await;
}
