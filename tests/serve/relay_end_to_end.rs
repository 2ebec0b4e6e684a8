//! The relay as an operator runs it: `rookery serve` reads a simulated PDS and a consumer on
//! `subscribeRepos` receives what it published, re-sequenced from 1, byte-identical apart from
//! seq, in order; a consumer that comes back with its cursor gets exactly what it missed.

use std::time::{Duration, Instant};

use awc::ws;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use rookery::atproto::frame;
use rookery::sim::{SimPds, SimPdsConfig, SimPlc, install_crypto_provider};
use rookery::testkit::repo::Change;

use crate::common::process::{free_port, http_get, read, send_signal};
use crate::relay_fixture::RelayFixture;

const WAIT: Duration = Duration::from_secs(30);

async fn subscribe(
    port: u16,
    cursor: Option<u64>,
) -> impl Stream<Item = Result<ws::Frame, awc::error::WsProtocolError>> + Unpin {
    let url = match cursor {
        Some(c) => format!("ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor={c}"),
        None => format!("ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"),
    };
    let (_, framed) = awc::Client::new()
        .ws(url)
        .max_frame_size(frame::MAX_FRAME_BYTES)
        .connect()
        .await
        .expect("upgrade");
    framed
}

/// Reads binary frames until the one with seq `last`; panics on a seq that does not increase.
async fn frames_through<S>(frames: &mut S, last: u64) -> Vec<Bytes>
where
    S: Stream<Item = Result<ws::Frame, awc::error::WsProtocolError>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut out: Vec<Bytes> = Vec::new();
    let mut prev = 0;
    loop {
        let next = tokio::time::timeout_at(deadline, frames.next())
            .await
            .expect("frames within the limit");
        match next {
            Some(Ok(ws::Frame::Binary(b))) => {
                let seq = frame::peek_event(&b).expect("event").seq.expect("seq");
                assert!(seq > prev, "seq {seq} after {prev}");
                prev = seq;
                out.push(b);
                if seq >= last {
                    return out;
                }
            }
            Some(Ok(_)) => continue,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

#[actix_rt::test]
async fn a_consumer_receives_what_the_pds_published_resequenced_and_resumes_with_its_cursor() {
    install_crypto_provider();
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let fixture = RelayFixture::new(&[&pds]).await;
    let log = fixture.log.clone();
    let port = free_port();
    let metrics_port = free_port();
    let mut child = fixture.spawn(&plc.url(), port, metrics_port);
    let deadline = Instant::now() + WAIT;
    while pds.live_connections() == 0
        || http_get(port, "/_readyz").map(|r| r.status).ok() != Some(200)
    {
        assert!(Instant::now() < deadline, "not ready: {}", read(&log));
        assert!(child.try_wait().expect("wait").is_none(), "{}", read(&log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut live = subscribe(port, None).await;
    let mut published = Vec::new();
    let accounts: Vec<String> = (0..3)
        .map(|_| pds.create_account().expect("account"))
        .collect();
    for round in 0..4 {
        for did in &accounts {
            pds.commit(
                did,
                &[Change::Create(format!("app.bsky.feed.post/p{round}"))],
            )
            .expect("commit");
        }
    }
    published.extend(pds.published());
    let n = published.len() as u64;
    assert_eq!(
        n,
        pds.head_seq(),
        "3 × (#identity, #account, #sync) + 12 commits"
    );
    let got = frames_through(&mut live, n).await;
    assert_eq!(got.len() as u64, n, "every event, once, seqs 1..=n");
    // Accounts go through different shards, so only each account's own order is kept: per
    // DID, the relay's frames are the PDS's, with only seq changed (`#account` re-emitted
    // with the relay's computed status, for these accounts the PDS's).
    let by_did = |frames: &[Bytes]| {
        let mut map: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
        for f in frames {
            let did = frame::peek_event(f)
                .expect("event")
                .did
                .expect("did")
                .to_string();
            let normal = match frame::decode_frame(f).expect("decodes") {
                frame::Frame::Account(a) => {
                    format!("account {} {} {:?}", a.did, a.active, a.status).into_bytes()
                }
                _ => frame::resequence(f, 1).expect("reseq"),
            };
            map.entry(did).or_default().push(normal);
        }
        map
    };
    assert_eq!(by_did(&got), by_did(&published));
    // A consumer that saw up to 5 comes back: exactly the rest, then live.
    let mut again = subscribe(port, Some(5)).await;
    let rest = frames_through(&mut again, n).await;
    let seqs: Vec<u64> = rest
        .iter()
        .map(|b| frame::peek_event(b).expect("event").seq.expect("seq"))
        .collect();
    assert_eq!(seqs, (6..=n).collect::<Vec<_>>());
    pds.commit(
        &accounts[0],
        &[Change::Create("app.bsky.feed.post/late".into())],
    )
    .expect("commit");
    let late = frames_through(&mut again, n + 1).await;
    assert_eq!(late.len(), 1, "then live");

    // Readiness reports the head, the host counts (published every second) and flow.
    let deadline = Instant::now() + WAIT;
    let ready = loop {
        let r = http_get(port, "/_readyz").expect("readyz");
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        if body["hosts"]["connected"] == 1 || Instant::now() > deadline {
            break (r.status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.0, 200);
    assert_eq!(ready.1["status"], "ready", "{}", ready.1);
    assert_eq!(
        ready.1["hosts"],
        serde_json::json!({"known": 1, "connected": 1})
    );
    assert!(ready.1["seq"].as_u64().expect("seq") >= n);
    assert_eq!(ready.1["events_flowing"], true);

    // The sync queries are mounted on the same listener and see what ingest stored.
    let hosts = http_get(port, "/xrpc/com.atproto.sync.listHosts").expect("listHosts");
    assert_eq!(hosts.status, 200);
    assert!(hosts.body.contains(&pds.hostname()), "{}", hosts.body);
    let status = http_get(
        port,
        &format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", accounts[0]),
    )
    .expect("getRepoStatus");
    assert_eq!(status.status, 200, "{}", status.body);
    let body: serde_json::Value = serde_json::from_str(&status.body).expect("json");
    assert_eq!(body["did"], accounts[0].as_str());
    assert_eq!(body["active"], true);

    // /metrics shows the mailbox of every actor kind that runs here (with a host connected
    // and a consumer subscribed, all of them).
    // The write-behind flushes every few seconds: wait for its first statements.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let m = http_get(metrics_port, "/metrics").expect("metrics");
        let flushed = m
            .body
            .contains("rookery_write_behind_statement_seconds_bucket{table=\"hosts\"")
            && m.body
                .contains("rookery_write_behind_statement_seconds_bucket{table=\"accounts\"");
        if flushed || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l == "rookery_hosts{status=\"active\"} 1"),
        "hosts by status in /metrics"
    );
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l == "rookery_hosts_connected 1")
    );
    // Frames in, by type: 12 commits and the late one; 3 of each of the account-creation
    // events.
    let received = |t: &str| {
        metrics
            .body
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "rookery_subscriber_frames_received_total{{type=\"{t}\"}} "
                ))
            })
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(received("commit"), Some(13));
    assert_eq!(received("sync"), Some(3));
    assert_eq!(received("identity"), Some(3));
    assert_eq!(received("account"), Some(3));
    // Postgres batch latency (the write-behind flushed this run's cursors and accounts) and
    // the group commit's fsync latency.
    for family in [
        "rookery_write_behind_statement_seconds_bucket{table=\"hosts\"",
        "rookery_write_behind_statement_seconds_bucket{table=\"accounts\"",
        "rookery_event_log_sync_seconds_count",
    ] {
        assert!(
            metrics.body.lines().any(|l| l.starts_with(family)),
            "{family} in /metrics"
        );
    }
    let series = |family: &str, actor: &str| {
        metrics
            .body
            .lines()
            .any(|l| l.starts_with(&format!("{family}{{actor=\"{actor}\"")))
    };
    for actor in [
        "host_supervisor",
        "subscriber",
        "resolver_fetcher",
        "validator_shard",
        "sequencer",
        "persister",
        "write_behind",
        "broadcaster",
        "consumer_session",
    ] {
        assert!(
            series("rookery_actor_mailbox_depth", actor),
            "{actor}: mailbox depth in /metrics"
        );
    }
    // Every kind that handled messages on the data path shows handled counts and times.
    for actor in [
        "validator_shard",
        "sequencer",
        "persister",
        "resolver_fetcher",
    ] {
        assert!(
            series("rookery_actor_messages_handled_total", actor),
            "{actor}: handled messages in /metrics"
        );
        assert!(
            series("rookery_actor_handler_seconds_count", actor),
            "{actor}: handler time in /metrics"
        );
    }

    send_signal(child.id(), "TERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", read(&log));
    // Consumers were closed by the relay with 1001 (going away).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, again.next()).await {
            Ok(Some(Ok(ws::Frame::Close(reason)))) => {
                assert_eq!(reason.map(|r| r.code), Some(ws::CloseCode::Away));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
    pds.stop().await;
    plc.stop().await;
}
