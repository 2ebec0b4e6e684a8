//! What is answered before the upgrade (405, 426, 400, 503, 429), the consumer list, pings
//! and dead consumers, ignored client messages, and close 1001 on shutdown.

use std::time::Duration;

use awc::http::Method;
use awc::ws;
use rookery::actors::firehose::FirehoseSettings;

use crate::support::{
    Harness, Incoming, RawConsumer, RawMessage, WAIT, connect, eventually, http_status,
    refused_upgrade, small_segments,
};

const ALICE: &str = "did:plc:alice";

#[actix_rt::test]
async fn requests_that_cannot_be_served_get_http_errors_before_the_upgrade() {
    let h = Harness::start(FirehoseSettings::default(), small_segments);
    let (status, body) = http_status(Method::POST, &h.http_url("")).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"], "MethodNotAllowed");
    let (status, body) = http_status(Method::GET, &h.http_url("")).await;
    assert_eq!(status, 426);
    assert_eq!(body["error"], "UpgradeRequired");
    for bad in ["cursor=abc", "cursor=-1", "cursor=", "cursor=1e3"] {
        let (status, body) = http_status(Method::GET, &h.http_url(bad)).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"], "InvalidRequest", "{bad}");
        // Also when the client asks for the upgrade.
        assert_eq!(refused_upgrade(&h.url(bad)).await.0, 400, "{bad}");
    }
    assert_eq!(h.firehose.consumer_count(), 0);
    let rejected = &h.firehose.metrics().rejected;
    assert_eq!(rejected.with_label_values(&["bad_cursor"]).get(), 8);
    assert_eq!(rejected.with_label_values(&["no_upgrade"]).get(), 1);
    h.stop().await;
}

#[actix_rt::test]
async fn the_consumer_limit_answers_503_and_the_per_address_limit_429() {
    let settings = FirehoseSettings {
        max_consumers: 2,
        max_consumers_per_ip: 10,
        ..FirehoseSettings::default()
    };
    let h = Harness::start(settings, small_segments);
    let first = connect(&h.url("")).await;
    let _second = connect(&h.url("")).await;
    assert_eq!(refused_upgrade(&h.url("")).await.0, 503);
    // A place frees when a consumer leaves.
    drop(first);
    assert!(eventually(WAIT, || async { h.firehose.consumer_count() == 1 }).await);
    let _third = connect(&h.url("")).await;
    h.stop().await;

    let settings = FirehoseSettings {
        max_consumers: 10,
        max_consumers_per_ip: 2,
        ..FirehoseSettings::default()
    };
    let h = Harness::start(settings, small_segments);
    let _a = connect(&h.url("")).await;
    let _b = connect(&h.url("")).await;
    assert_eq!(refused_upgrade(&h.url("")).await.0, 429);
    let rejected = &h.firehose.metrics().rejected;
    assert_eq!(
        rejected.with_label_values(&["max_consumers_per_ip"]).get(),
        1
    );
    h.stop().await;
}

#[actix_rt::test]
async fn the_consumer_list_shows_each_consumer_and_its_progress() {
    let mut h = Harness::start(FirehoseSettings::default(), small_segments);
    h.append_n(30, 10, ALICE);
    h.published(30).await;
    let mut replaying = connect(&h.url("cursor=10")).await;
    let mut live = connect(&h.url("")).await;
    assert_eq!(replaying.seqs_through(30).await.len(), 20);
    h.append(&[ALICE]);
    assert_eq!(live.seqs_through(31).await, vec![31]);
    assert_eq!(replaying.seqs_through(31).await, vec![31]);
    let listed = eventually(WAIT, || async {
        h.firehose.consumers().iter().all(|c| c.cursor == 31)
    })
    .await;
    assert!(listed, "{:?}", h.firehose.consumers());
    let list = h.firehose.consumers();
    assert_eq!(list.len(), 2);
    let (a, b) = (&list[0], &list[1]);
    assert!(a.id < b.id);
    assert_eq!(a.requested_cursor, Some(10));
    assert_eq!(b.requested_cursor, None);
    assert_eq!((a.events_sent, b.events_sent), (21, 1));
    for c in &list {
        assert!(c.remote_addr.starts_with("127.0.0.1:"), "{c:?}");
        assert_eq!(c.user_agent, "firehose-test/1");
        assert!(c.connected_at_ms > 1_700_000_000_000);
        assert_eq!(c.lag, 0);
        assert!(c.live);
    }
    assert_eq!(h.firehose.metrics().consumers.get(), 2);
    let frames = &h.firehose.metrics().frames_sent;
    assert_eq!(frames.with_label_values(&["replay"]).get(), 20);
    assert_eq!(frames.with_label_values(&["live"]).get(), 2);
    h.stop().await;
}

#[actix_rt::test]
async fn idle_consumers_are_pinged_silent_ones_closed_and_client_messages_ignored() {
    let settings = FirehoseSettings {
        ping_interval: Duration::from_millis(500),
        ..FirehoseSettings::default()
    };
    let mut h = Harness::start(settings, small_segments);
    // A consumer that answers pings (while it reads) stays, whatever else it sends.
    let mut polite = connect(&h.url("")).await;
    polite.send(ws::Message::Text("hello".into())).await;
    polite
        .send(ws::Message::Binary(vec![0u8; 1000].into()))
        .await;
    let polite = actix_rt::spawn(async move {
        let seqs = polite.seqs_through(1).await;
        (seqs, polite)
    });
    // One that never answers.
    let mut silent = RawConsumer::connect(h.addr, "").await;
    assert_eq!(silent.next().await, RawMessage::Ping);
    // Closed as dead a ping interval later: the connection ends.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match silent.next().await {
                RawMessage::Ping => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("closed in time");
    assert!(
        matches!(ended, RawMessage::Ended | RawMessage::Close(_)),
        "{ended:?}"
    );
    assert!(
        eventually(WAIT, || async {
            h.firehose
                .metrics()
                .sessions_closed
                .with_label_values(&["dead"])
                .get()
                == 1
        })
        .await
    );
    // The polite one answered every ping and still gets events.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.firehose.consumer_count(), 1);
    h.append(&[ALICE]);
    let (seqs, _polite) = polite.await.expect("join");
    assert_eq!(seqs, vec![1]);
    assert_eq!(h.firehose.consumer_count(), 1);
    h.stop().await;
}

/// A client frame declared bigger than the 64 KiB limit ends the connection from its header,
/// before the relay buffers any of it.
#[actix_rt::test]
async fn a_client_frame_declared_too_big_ends_the_connection_at_its_header() {
    let h = Harness::start(FirehoseSettings::default(), small_segments);
    let mut raw = RawConsumer::connect(h.addr, "").await;
    assert!(eventually(WAIT, || async { h.firehose.consumer_count() == 1 }).await);
    // A masked binary frame header declaring 1 GiB, then a little of its payload.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&[0u8; 1024]);
    raw.send_raw(&frame).await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match raw.next().await {
                RawMessage::Ping => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("closed in time");
    assert!(
        matches!(ended, RawMessage::Ended | RawMessage::Close(_)),
        "{ended:?}"
    );
    assert!(eventually(WAIT, || async { h.firehose.consumer_count() == 0 }).await);
    let closed = &h.firehose.metrics().sessions_closed;
    assert_eq!(closed.with_label_values(&["client_gone"]).get(), 1);
    h.stop().await;
}

#[actix_rt::test]
async fn shutdown_closes_every_session_with_1001_and_refuses_new_ones() {
    let mut h = Harness::start(FirehoseSettings::default(), small_segments);
    h.append_n(100, 10, ALICE);
    h.published(100).await;
    let mut consumers = Vec::new();
    for cursor in ["", "cursor=0", "cursor=50"] {
        consumers.push(connect(&h.url(cursor)).await);
    }
    assert!(eventually(WAIT, || async { h.firehose.consumer_count() == 3 }).await);
    let still_open = h.firehose.shutdown(Duration::from_secs(5)).await;
    assert_eq!(still_open, 0);
    for mut consumer in consumers {
        let close = loop {
            match consumer.next_within(WAIT).await {
                Incoming::Binary(_) => continue, // replay frames sent before the close
                other => break other,
            }
        };
        match close {
            Incoming::Close(Some(reason)) => assert_eq!(reason.code, ws::CloseCode::Away),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    assert_eq!(refused_upgrade(&h.url("")).await.0, 503);
    assert_eq!(
        h.firehose
            .metrics()
            .sessions_closed
            .with_label_values(&["shutdown"])
            .get(),
        3
    );
    h.stop().await;
}
