//! The cursor rules of PROTOCOL.md §1 over real websockets, and the replay-to-live switch
//! while events keep arriving.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use rookery::actors::firehose::FirehoseSettings;
use rookery::atproto::frame::{FUTURE_CURSOR, OUTDATED_CURSOR};
use rookery::store::event_log::RetentionPolicy;

use crate::support::{
    Harness, Incoming, RawConsumer, RawMessage, connect, error_name, header_of, log_seqs, seq_of,
    small_segments,
};

const ALICE: &str = "did:plc:alice";

#[actix_rt::test]
async fn no_cursor_streams_live_from_the_head_only() {
    let mut h = Harness::start(FirehoseSettings::default(), small_segments);
    h.append_n(50, 7, ALICE);
    h.published(50).await;
    let mut consumer = connect(&h.url("")).await;
    // Nothing from before the connection arrives.
    consumer.assert_silent(Duration::from_millis(200)).await;
    let new = h.append_n(20, 3, ALICE);
    assert_eq!(consumer.seqs_through(70).await, new);
    consumer.assert_silent(Duration::from_millis(100)).await;
    h.stop().await;
}

#[actix_rt::test]
async fn cursor_zero_replays_the_whole_window_across_segments_then_goes_live() {
    // A ring far smaller than the log: the start comes from the log, the end from the ring.
    let settings = FirehoseSettings {
        ring_max_bytes: 8 * 1024,
        ..FirehoseSettings::default()
    };
    let mut h = Harness::start(settings, small_segments);
    h.append_n(600, 13, ALICE);
    h.published(600).await;
    assert!(h.log.stats().segment_count >= 5, "{:?}", h.log.stats());
    let mut consumer = connect(&h.url("cursor=0")).await;
    assert_eq!(
        consumer.seqs_through(600).await,
        (1..=600).collect::<Vec<_>>()
    );
    let live = h.append_n(40, 4, ALICE);
    assert_eq!(consumer.seqs_through(640).await, live);
    h.stop().await;
}

#[actix_rt::test]
async fn a_cursor_inside_the_window_gets_every_later_event_then_live() {
    let settings = FirehoseSettings {
        ring_max_bytes: 8 * 1024,
        ..FirehoseSettings::default()
    };
    let mut h = Harness::start(settings, small_segments);
    h.append_n(300, 9, ALICE);
    h.published(300).await;
    for cursor in [1u64, 123, 290, 300] {
        let mut consumer = connect(&h.url(&format!("cursor={cursor}"))).await;
        let head = h.log.durable_head();
        if cursor < head {
            assert_eq!(
                consumer.seqs_through(head).await,
                ((cursor + 1)..=head).collect::<Vec<_>>(),
                "cursor {cursor}"
            );
        }
        let next = h.append(&[ALICE]);
        assert_eq!(
            consumer.seqs_through(next[0]).await,
            next,
            "cursor {cursor}"
        );
    }
    h.stop().await;
}

#[actix_rt::test]
async fn a_cursor_older_than_the_window_gets_outdated_cursor_then_the_oldest_event() {
    let mut h = Harness::start(FirehoseSettings::default(), |config| {
        small_segments(config);
        config.retention = RetentionPolicy {
            max_age: Duration::from_secs(3600),
            max_total_bytes: Some(64 * 1024),
        };
    });
    h.append_n(1500, 20, ALICE);
    let report = h
        .log
        .admin()
        .retain_once(SystemTime::now())
        .expect("retention");
    assert!(report.segments_deleted > 0, "{report:?}");
    let oldest = h.reader().oldest_seq().expect("some retained");
    assert!(oldest > 10, "oldest {oldest}");
    h.published(1500).await;

    let mut consumer = connect(&h.url("cursor=5")).await;
    let info = consumer.next_binary().await;
    assert_eq!(header_of(&info), (1, Some("#info".to_string())));
    assert_eq!(error_name(&info), OUTDATED_CURSOR);
    assert_eq!(consumer.seqs_through(1500).await, log_seqs(&h.reader(), 0));
    assert_eq!(h.firehose.metrics().outdated_cursors.get(), 1);

    // `cursor=0` asks for the whole window: no #info, the oldest event first.
    let mut consumer = connect(&h.url("cursor=0")).await;
    let first = consumer.next_binary().await;
    assert_eq!(seq_of(&first), Some(oldest));
    h.stop().await;
}

#[actix_rt::test]
async fn a_future_cursor_gets_the_error_frame_and_close_1008() {
    let mut h = Harness::start(FirehoseSettings::default(), small_segments);
    h.append_n(10, 10, ALICE);
    h.published(10).await;
    let mut raw = RawConsumer::connect(h.addr, "cursor=11").await;
    let RawMessage::Binary(frame) = raw.next().await else {
        panic!("expected the error frame");
    };
    let frame = bytes::Bytes::from(frame);
    assert_eq!(header_of(&frame), (-1, None));
    assert_eq!(error_name(&frame), FUTURE_CURSOR);
    assert_eq!(raw.next().await, RawMessage::Close(Some(1008)));
    // With awc too, and the head itself is not in the future.
    let mut consumer = connect(&h.url("cursor=99999")).await;
    let frame = consumer.next_binary().await;
    assert_eq!(error_name(&frame), FUTURE_CURSOR);
    assert!(
        matches!(consumer.next_within(crate::support::WAIT).await, Incoming::Close(Some(r)) if r.code == awc::ws::CloseCode::Policy)
    );
    let mut at_head = connect(&h.url("cursor=10")).await;
    at_head.assert_silent(Duration::from_millis(200)).await;
    h.stop().await;
}

/// Consumers join at many cursors while a writer appends as fast as it can: each one
/// receives exactly the log's seqs after its cursor, in order, across the log → ring switch.
#[actix_rt::test]
async fn the_replay_to_live_switch_under_concurrent_appends_has_no_gap_and_no_duplicate() {
    let settings = FirehoseSettings {
        ring_max_bytes: 16 * 1024,
        replay_batch_bytes: 4 * 1024,
        ..FirehoseSettings::default()
    };
    let mut h = Harness::start(settings, small_segments);
    for i in 0..400u64 {
        if i % 7 == 3 {
            h.leave_gap(2);
        }
        h.append(&[ALICE]);
    }
    let head = h.log.durable_head();
    h.published(head).await;

    // The last seq, once known; consumers read until they have it.
    let final_seq = Rc::new(Cell::new(0u64));
    let mut consumers = Vec::new();
    let cursors = [0u64, 1, 57, 200, 333, head - 1, head];
    const ROUNDS: usize = 60;
    for round in 0..ROUNDS {
        // Bursts of appends between joins, with no pause for the sessions.
        if round % 5 == 0 {
            h.leave_gap(1);
        }
        h.append_n(17, 5, ALICE);
        if round % 8 == 0 && consumers.len() < cursors.len() {
            let cursor = cursors[consumers.len()];
            let url = h.url(&format!("cursor={cursor}"));
            let final_seq = Rc::clone(&final_seq);
            consumers.push((
                cursor,
                actix_rt::spawn(async move {
                    let mut consumer = connect(&url).await;
                    let mut got: Vec<u64> = Vec::new();
                    while final_seq.get() == 0 || got.last().is_none_or(|s| *s < final_seq.get()) {
                        let frame = consumer.next_binary().await;
                        got.push(seq_of(&frame).expect("event"));
                    }
                    got
                }),
            ));
        }
        actix_rt::task::yield_now().await;
    }
    assert_eq!(consumers.len(), cursors.len());
    final_seq.set(h.log.next_seq() + 4);
    let last = h.append_n(5, 5, ALICE);
    assert_eq!(last.last(), Some(&final_seq.get()));
    for (cursor, task) in consumers {
        let got = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("consumer finished in time")
            .expect("join");
        assert_eq!(got, log_seqs(&h.reader(), cursor), "cursor {cursor}");
    }
    h.stop().await;
}
