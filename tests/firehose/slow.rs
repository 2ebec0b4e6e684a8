//! The slow-consumer policy: a live consumer that stops draining, or falls too far behind,
//! gets `ConsumerTooSlow` from its own session, and nobody else loses or repeats an event;
//! a consumer catching up from far behind is never kicked.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use rookery::actors::firehose::FirehoseSettings;
use rookery::atproto::frame::CONSUMER_TOO_SLOW;

use crate::support::{
    Consumer, Harness, RawConsumer, RawMessage, WAIT, connect, error_name, eventually, header_of,
    seq_of, small_segments,
};

const ALICE: &str = "did:plc:alice";

/// Reads a stalled raw consumer's backlog: events without a gap from `first`, then the
/// error frame and close 1008. Returns the last seq it got.
async fn drain_too_slow(raw: &mut RawConsumer, first: u64) -> u64 {
    let mut expected = first;
    for _ in 0..1_000_000 {
        match raw.next().await {
            RawMessage::Binary(frame) => {
                let frame = Bytes::from(frame);
                match seq_of(&frame) {
                    Some(seq) => {
                        assert_eq!(seq, expected, "no gap, no duplicate");
                        expected += 1;
                    }
                    None => {
                        assert_eq!(header_of(&frame), (-1, None));
                        assert_eq!(error_name(&frame), CONSUMER_TOO_SLOW);
                        assert_eq!(raw.next().await, RawMessage::Close(Some(1008)));
                        return expected - 1;
                    }
                }
            }
            // The session pinged while it was idle earlier: answer as a client would.
            RawMessage::Ping => raw.pong().await,
            other => panic!("unexpected {other:?} after seq {}", expected - 1),
        }
    }
    panic!("no ConsumerTooSlow");
}

/// Spawns an awc consumer that reads until `final_seq` is set and reached, recording its
/// progress in `progress`. Returns its seqs.
fn spawn_reader(
    url: String,
    final_seq: Rc<Cell<u64>>,
    progress: Rc<Cell<u64>>,
) -> actix_rt::task::JoinHandle<(Vec<u64>, Consumer)> {
    actix_rt::spawn(async move {
        let mut consumer = connect(&url).await;
        progress.set(1); // connected
        let mut got: Vec<u64> = Vec::new();
        while final_seq.get() == 0 || got.last().is_none_or(|s| *s < final_seq.get()) {
            let frame = consumer.next_binary().await;
            let seq = seq_of(&frame).expect("event");
            got.push(seq);
            progress.set(seq);
        }
        (got, consumer)
    })
}

#[actix_rt::test]
async fn among_200_consumers_a_stalled_live_one_gets_too_slow_and_no_other_loses_or_repeats() {
    const FAST: usize = 199;
    let settings = FirehoseSettings {
        consumer_stall_timeout: Duration::from_secs(1),
        max_consumers: 500,
        max_consumers_per_ip: 500,
        session_buffer_bytes: 64 * 1024,
        ..FirehoseSettings::default()
    };
    let mut h = Harness::start(settings, small_segments);
    h.pad = 2000;
    let final_seq = Rc::new(Cell::new(0u64));
    let mut readers = Vec::new();
    let mut progress = Vec::new();
    for _ in 0..FAST {
        let p = Rc::new(Cell::new(0u64));
        readers.push(spawn_reader(
            h.url(""),
            Rc::clone(&final_seq),
            Rc::clone(&p),
        ));
        progress.push(p);
    }
    let mut slow = RawConsumer::connect(h.addr, "").await;
    let all_connected =
        eventually(WAIT, || async { h.firehose.consumer_count() == FAST + 1 }).await;
    assert!(all_connected, "{} connected", h.firehose.consumer_count());

    // Append in small batches, letting the fast consumers keep up, until the stalled one is
    // told it is too slow (bounded in rounds and time).
    let too_slow = h.firehose.metrics().too_slow.clone();
    let mut last = 0;
    for _ in 0..2_000 {
        last = *h.append(&[ALICE; 10]).last().expect("seq");
        let kept_up = eventually(WAIT, || async {
            progress.iter().all(|p| p.get() + 50 >= last)
        })
        .await;
        assert!(kept_up, "fast consumers fell behind");
        if too_slow.with_label_values(&["stall"]).get() > 0 {
            break;
        }
    }
    assert_eq!(too_slow.with_label_values(&["stall"]).get(), 1);
    // More events after the kick reach everyone else.
    final_seq.set(h.log.next_seq() + 9);
    h.append(&[ALICE; 10]);
    let got_before_kick = drain_too_slow(&mut slow, 1).await;
    assert!(
        got_before_kick < last,
        "the stalled consumer was cut off before the end"
    );
    let mut open = Vec::new();
    for reader in readers {
        let (got, consumer) = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("reader finished")
            .expect("join");
        assert_eq!(got, (1..=final_seq.get()).collect::<Vec<_>>());
        open.push(consumer);
    }
    assert_eq!(too_slow.with_label_values(&["stall"]).get(), 1);
    assert_eq!(too_slow.with_label_values(&["lag"]).get(), 0);
    assert_eq!(h.firehose.consumer_count(), FAST);
    h.stop().await;
}

#[actix_rt::test]
async fn a_live_consumer_further_behind_than_max_lag_gets_too_slow() {
    let settings = FirehoseSettings {
        consumer_stall_timeout: Duration::from_secs(600),
        max_consumer_lag: 100,
        session_buffer_bytes: 64 * 1024,
        ..FirehoseSettings::default()
    };
    let mut h = Harness::start(settings, small_segments);
    h.pad = 2000;
    let final_seq = Rc::new(Cell::new(0u64));
    let progress = Rc::new(Cell::new(0u64));
    let fast = spawn_reader(h.url(""), Rc::clone(&final_seq), Rc::clone(&progress));
    let mut slow = RawConsumer::connect(h.addr, "").await;
    assert!(eventually(WAIT, || async { h.firehose.consumer_count() == 2 }).await);
    let too_slow = h.firehose.metrics().too_slow.clone();
    for _ in 0..2_000 {
        let last = *h.append(&[ALICE; 10]).last().expect("seq");
        assert!(eventually(WAIT, || async { progress.get() + 50 >= last }).await);
        if too_slow.with_label_values(&["lag"]).get() > 0 {
            break;
        }
    }
    assert_eq!(too_slow.with_label_values(&["lag"]).get(), 1);
    // One more event, so a reader already at the head wakes and sees the end.
    final_seq.set(h.log.next_seq());
    h.append(&[ALICE]);
    drain_too_slow(&mut slow, 1).await;
    let done = eventually(WAIT, || async { progress.get() >= final_seq.get() }).await;
    if !done {
        let closed = h.firehose.metrics().sessions_closed.clone();
        panic!(
            "fast consumer stuck at {} of {}: consumers {:?}, head {}, closed lag {} stall {} gone {}",
            progress.get(),
            final_seq.get(),
            h.firehose.consumers(),
            h.firehose.head(),
            closed.with_label_values(&["too_slow_lag"]).get(),
            closed.with_label_values(&["too_slow_stall"]).get(),
            closed.with_label_values(&["client_gone"]).get(),
        );
    }
    let (got, _consumer) = tokio::time::timeout(Duration::from_secs(60), fast)
        .await
        .expect("finished")
        .expect("join");
    assert_eq!(got, (1..=final_seq.get()).collect::<Vec<_>>());
    assert_eq!(too_slow.with_label_values(&["stall"]).get(), 0);
    h.stop().await;
}

/// From `cursor=0` over hundreds of segments, far more than `max_consumer_lag` behind,
/// reading slowly while a writer keeps appending: never kicked, every event exactly once.
#[actix_rt::test]
async fn a_consumer_catching_up_from_cursor_zero_is_never_kicked() {
    // The stall limit only bounds how long a catching-up socket may drain nothing (4×);
    // it is kept short so that a kick for being behind would show.
    let settings = FirehoseSettings {
        consumer_stall_timeout: Duration::from_secs(1),
        max_consumer_lag: 5_000,
        ring_max_bytes: 64 * 1024,
        ..FirehoseSettings::default()
    };
    let mut h = Harness::start(settings, small_segments);
    h.append_n(20_000, 500, ALICE);
    assert!(h.log.stats().segment_count > 100, "{:?}", h.log.stats());
    h.published(20_000).await;

    let final_seq = Rc::new(Cell::new(0u64));
    let got = {
        let url = h.url("cursor=0");
        let final_seq = Rc::clone(&final_seq);
        actix_rt::spawn(async move {
            let mut consumer = connect(&url).await;
            let mut got: Vec<u64> = Vec::new();
            while final_seq.get() == 0 || got.last().is_none_or(|s| *s < final_seq.get()) {
                let frame = consumer.next_binary().await;
                got.push(seq_of(&frame).expect("event"));
                if got.len().is_multiple_of(1000) {
                    // A slow consumer: it drains, but at its own pace.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (got, consumer)
        })
    };
    // The writer keeps going meanwhile, in bursts.
    for _ in 0..60 {
        h.append_n(50, 50, ALICE);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // One more event, so a reader already at the head wakes and sees the end.
    final_seq.set(h.log.next_seq());
    h.append(&[ALICE]);
    let (got, _consumer) = tokio::time::timeout(Duration::from_secs(120), got)
        .await
        .expect("caught up in time")
        .expect("join");
    assert_eq!(got, (1..=final_seq.get()).collect::<Vec<_>>());
    let metrics = h.firehose.metrics();
    assert_eq!(metrics.too_slow.with_label_values(&["lag"]).get(), 0);
    assert_eq!(metrics.too_slow.with_label_values(&["stall"]).get(), 0);
    let consumers = h.firehose.consumers();
    assert_eq!(consumers.len(), 1, "still connected");
    assert!(consumers[0].live);
    assert_eq!(consumers[0].events_sent, final_seq.get());
    h.stop().await;
}
