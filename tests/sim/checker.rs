//! The coverage checker's own correctness. Events are real (a simulated host's frames,
//! re-sequenced as a relay does); they reach the checker through two kinds of firehose:
//! - a relay's real firehose (the event log, the Firehose actor and its `subscribeRepos`
//!   route), for a clean run and a reconnect that resumes with the cursor;
//! - a scripted websocket server that serves exactly the frames a test chooses, for what a
//!   good relay never does: a missing, a duplicated, a reordered and an invalid event, garbage,
//!   and a replay that repeats an event across a reconnect.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus::Registry;
use rookery::actors::firehose::{Firehose, FirehoseSettings, start_firehose};
use rookery::actors::obs::ActorMetrics;
use rookery::atproto::frame::{self, peek_event};
use rookery::http::{self, ListenerSettings};
use rookery::sim::checker::{Checker, CoverageReport, Expectations, Published, RunEnd, Stop};
use rookery::sim::{SimNetwork, SimPdsConfig};
use rookery::store::event_log::{AppendRecord, EventLog, EventLogConfig, did_hash};
use rookery::testkit::repo::{Change, record_path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long any one run may take.
const WAIT: Duration = Duration::from_secs(15);

/// What two accounts on one host published: creation events, commits, a `#sync`, a handle
/// change, in publication order. Returns (host name, frames).
fn published_events(net: &SimNetwork) -> (Arc<str>, Vec<Bytes>) {
    let host = &net.hosts[0];
    let alice = host.create_account().unwrap();
    let bob = host.create_account().unwrap();
    for i in 0..3 {
        for did in [&alice, &bob] {
            host.commit(did, &[Change::Create(record_path(100 + i))])
                .unwrap();
        }
    }
    host.sync(&alice).unwrap();
    host.change_handle(&bob, "bob2.test").unwrap();
    host.commit(&bob, &[Change::Update(record_path(100))])
        .unwrap();
    (host.hostname().into(), host.published())
}

fn expectations(host: &Arc<str>, valid: &[Bytes], invalid: &[Bytes]) -> Expectations {
    let mut expected = Expectations::new();
    let now = Instant::now();
    for (frames, valid) in [(valid, true), (invalid, false)] {
        for frame in frames {
            expected
                .add(Published {
                    host: host.clone(),
                    frame: frame.clone(),
                    published_at: now,
                    valid,
                })
                .unwrap();
        }
    }
    expected
}

/// `frames` as a relay emits them: re-sequenced from `first`.
fn relay_output(frames: &[Bytes], first: i64) -> Vec<Bytes> {
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| Bytes::from(frame::resequence(f, first + i as i64).unwrap()))
        .collect()
}

/// One websocket message as the scripted server sends it.
enum Scripted {
    Binary(Bytes),
    Text(&'static str),
}

/// A websocket server on 127.0.0.1 that serves one script per connection, in order, then
/// closes each with 1000. Records the request line of every connection.
async fn serve_scripts(scripts: Vec<Vec<Scripted>>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        for script in scripts {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            seen.lock().unwrap().push(line);
            let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                            Connection: Upgrade\r\n\r\n"
                .to_vec();
            for message in script {
                match message {
                    Scripted::Binary(b) => ws_frame(&mut out, 0x2, &b),
                    Scripted::Text(t) => ws_frame(&mut out, 0x1, t.as_bytes()),
                }
            }
            ws_frame(&mut out, 0x8, &1000u16.to_be_bytes());
            let _ = socket.write_all(&out).await;
            let _ = socket.shutdown().await;
        }
    });
    (addr, requests)
}

fn ws_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

fn binary(frames: &[Bytes]) -> Vec<Scripted> {
    frames.iter().cloned().map(Scripted::Binary).collect()
}

/// Runs until the stream closes (the scripted server always closes).
async fn run_to_close(checker: &mut Checker) -> CoverageReport {
    let end = checker
        .run_until(Instant::now() + WAIT, Stop::AtDeadline)
        .await;
    assert_eq!(end, RunEnd::Closed(None));
    checker.report()
}

fn assert_clean(report: &CoverageReport, events: u64) {
    assert_eq!(report.valid_published, events, "{report:?}");
    assert_eq!(report.delivered, events, "{report:?}");
    assert_eq!(
        (
            report.missing,
            report.duplicated,
            report.out_of_order,
            report.invalid_delivered,
            report.unexpected,
            report.undecodable
        ),
        (0, 0, 0, 0, 0, 0),
        "{report:?}"
    );
    assert!(report.missing_sample.is_empty());
    assert!(report.latency_p50_ms <= report.latency_p99_ms);
    assert!(report.latency_p99_ms <= report.latency_max_ms);
    assert!(report.latency_max_ms < WAIT.as_millis() as f64);
}

#[actix_rt::test]
async fn a_clean_scripted_run_reports_nothing_wrong() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let (host, frames) = published_events(&net);
    let (addr, _) = serve_scripts(vec![binary(&relay_output(&frames, 1000))]).await;
    let mut checker = Checker::connect(addr, None, expectations(&host, &frames, &[]))
        .await
        .unwrap();
    // A passed deadline ends a run even with messages waiting.
    let end = checker.run_until(Instant::now(), Stop::AtDeadline).await;
    assert_eq!(end, RunEnd::Deadline);
    let report = run_to_close(&mut checker).await;
    assert_clean(&report, frames.len() as u64);
    assert_eq!(report.last_seq, Some(1000 + frames.len() as u64 - 1));
    net.stop().await;
}

#[actix_rt::test]
async fn a_missing_a_duplicated_and_an_invalid_event_are_each_counted() {
    let net = SimNetwork::start(2, SimPdsConfig::default()).unwrap();
    let (host, frames) = published_events(&net);
    // An event the second host published that the relay must reject (say, a bad signature).
    let mallory = net.hosts[1].create_account().unwrap();
    net.hosts[1]
        .commit(&mallory, &[Change::Create(record_path(1))])
        .unwrap();
    let invalid = net.hosts[1].published().last().cloned().unwrap();

    let mut output = frames.clone();
    let lost = output.remove(5);
    let repeated = output[7].clone();
    output.insert(9, repeated);
    // An `#identity` sent again: counted apart from duplicated commits and syncs.
    let announced = output[0].clone();
    assert_eq!(peek_event(&announced).unwrap().header.t, Some("#identity"));
    output.insert(10, announced);
    output.push(invalid.clone());
    let (addr, _) = serve_scripts(vec![binary(&relay_output(&output, 1))]).await;
    let mut checker = Checker::connect(addr, None, expectations(&host, &frames, &[invalid]))
        .await
        .unwrap();
    let report = run_to_close(&mut checker).await;

    assert_eq!(report.valid_published, frames.len() as u64);
    assert_eq!(report.delivered, frames.len() as u64 - 1);
    assert_eq!(report.missing, 1);
    assert_eq!(report.duplicated, 1);
    assert_eq!(report.harmless_repeats, 1);
    assert_eq!(report.invalid_delivered, 1);
    assert_eq!(report.invalid_published, 1);
    assert_eq!(report.out_of_order, 0, "{report:?}");
    assert_eq!(report.missing_sample.len(), 1);
    let lost_did = peek_event(&lost).unwrap().did.unwrap().to_string();
    assert!(
        report.missing_sample[0].contains(&lost_did) && report.missing_sample[0].contains(&*host),
        "{:?}",
        report.missing_sample
    );
    net.stop().await;
}

#[actix_rt::test]
async fn reordered_events_seq_regressions_and_garbage_are_counted_without_panic() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let (host, frames) = published_events(&net);
    let did_of = |f: &Bytes| peek_event(f).unwrap().did.unwrap().to_string();
    // Two events of one account swapped, under increasing seqs.
    let mut output = frames.clone();
    let first = 6;
    let second = (first + 1..output.len())
        .find(|&i| did_of(&output[i]) == did_of(&output[first]))
        .unwrap();
    output.swap(first, second);
    let mut script = binary(&relay_output(&output, 100));
    // A seq that goes back (a copy of the last frame under a lower seq), garbage, a text
    // message, an error frame.
    let last = frames.last().unwrap();
    script.push(Scripted::Binary(Bytes::from(
        frame::resequence(last, 50).unwrap(),
    )));
    script.push(Scripted::Binary(Bytes::from_static(
        b"\xa1\x62op\x01garbage",
    )));
    script.push(Scripted::Binary(Bytes::new()));
    script.push(Scripted::Text("hello"));
    script.push(Scripted::Binary(Bytes::from(
        frame::encode_error("ConsumerTooSlow", None).unwrap(),
    )));
    let (addr, _) = serve_scripts(vec![script]).await;
    let mut checker = Checker::connect(addr, None, expectations(&host, &frames, &[]))
        .await
        .unwrap();
    let report = run_to_close(&mut checker).await;

    assert_eq!(report.missing, 0, "{report:?}");
    assert_eq!(report.account_order_violations, 1, "{report:?}");
    assert_eq!(report.seq_regressions, 1, "{report:?}");
    assert_eq!(report.out_of_order, 2);
    // The copy under a lower seq is also delivered twice.
    assert_eq!(report.duplicated, 1);
    assert_eq!(report.undecodable, 3);
    assert_eq!(report.error_frames, 1);
    net.stop().await;
}

#[actix_rt::test]
async fn an_event_delivered_before_and_after_a_reconnect_is_a_duplicate() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let (host, frames) = published_events(&net);
    let output = relay_output(&frames, 500);
    let half = output.len() / 2;
    // The second connection replays the last event of the first one again, under a new seq
    // above the cursor, then the rest.
    let mut again = vec![Bytes::from(
        frame::resequence(&frames[half - 1], 500 + half as i64).unwrap(),
    )];
    again.extend(relay_output(&frames[half..], 501 + half as i64));
    let (addr, requests) = serve_scripts(vec![binary(&output[..half]), binary(&again)]).await;
    let mut checker = Checker::connect(addr, Some(0), expectations(&host, &frames, &[]))
        .await
        .unwrap();
    run_to_close(&mut checker).await;
    checker.reconnect().await.unwrap();
    let report = run_to_close(&mut checker).await;

    let cursor = 500 + half - 1;
    let requests = requests.lock().unwrap().clone();
    assert!(requests[0].contains("cursor=0"), "{requests:?}");
    assert!(
        requests[1].contains(&format!("cursor={cursor} ")),
        "{requests:?}"
    );
    assert_eq!(report.reconnects, 1);
    assert_eq!(report.delivered, frames.len() as u64);
    assert_eq!(report.missing, 0);
    assert_eq!(report.duplicated, 1, "{report:?}");
    assert_eq!(report.out_of_order, 0, "{report:?}");
    net.stop().await;
}

#[actix_rt::test]
async fn expectations_fed_while_running_match_deliveries_that_overtook_them() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let (host, frames) = published_events(&net);
    let (addr, _) = serve_scripts(vec![binary(&relay_output(&frames, 1))]).await;
    let (early, late) = frames.split_at(4);
    let mut checker = Checker::connect(addr, None, expectations(&host, early, &[]))
        .await
        .unwrap();
    let feed = checker.feed();
    // The deliveries of `late` arrive before their expectations: they wait, parked.
    let end = checker
        .run_until(Instant::now() + WAIT, Stop::AtDeadline)
        .await;
    assert_eq!(end, RunEnd::Closed(None));
    // Until their expectations come, they match nothing, or (bob's second `#identity`,
    // whose key equals his first) one copy too many.
    let before = checker.report();
    assert_eq!(before.delivered, early.len() as u64, "{before:?}");
    assert_eq!(
        before.unexpected + before.harmless_repeats,
        late.len() as u64
    );
    assert_eq!(before.harmless_repeats, 1, "{before:?}");
    for frame in late {
        feed.send(Published {
            host: host.clone(),
            frame: frame.clone(),
            published_at: Instant::now(),
            valid: true,
        })
        .await
        .unwrap();
    }
    // Closed: the run takes in the feed and returns at once.
    checker
        .run_until(Instant::now() + WAIT, Stop::WhenAllSeen)
        .await;
    let report = checker.report();
    assert_clean(&report, frames.len() as u64);
    net.stop().await;
}

/// A relay's real firehose over an event log in a temp dir that the test appends to (the
/// Persister's role), served on 127.0.0.1.
struct LogFirehose {
    log: EventLog,
    head: watch::Sender<u64>,
    addr: SocketAddr,
    _firehose: Firehose,
    _dir: tempfile::TempDir,
}

impl LogFirehose {
    fn start() -> LogFirehose {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(EventLogConfig::new(dir.path())).unwrap().0;
        let (head, head_rx) = watch::channel(log.durable_head());
        let registry = Registry::new();
        let metrics = ActorMetrics::register(&registry).unwrap();
        let firehose = start_firehose(
            log.reader(),
            head_rx,
            FirehoseSettings::default(),
            &metrics,
            &registry,
        )
        .unwrap();
        let (server, addrs) = http::start_public(
            "127.0.0.1:0".parse().unwrap(),
            ListenerSettings::new(1, Duration::from_secs(1)),
            rookery::http::subscribe_repos::routes(&firehose),
        )
        .unwrap();
        actix_rt::spawn(server);
        LogFirehose {
            log,
            head,
            addr: addrs[0],
            _firehose: firehose,
            _dir: dir,
        }
    }

    /// Appends `frames` re-sequenced after the log's head, as the Sequencer would.
    fn append(&mut self, frames: &[Bytes]) {
        let first = self.log.next_seq();
        let records: Vec<AppendRecord> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let seq = first + i as u64;
                let did = peek_event(f).unwrap().did.unwrap().to_string();
                AppendRecord {
                    seq,
                    kind: 1,
                    did_hash: did_hash(&did),
                    body: Bytes::from(frame::resequence(f, seq as i64).unwrap()),
                }
            })
            .collect();
        let head = self.log.append(&records).unwrap();
        self.head.send_replace(head);
    }
}

#[actix_rt::test]
async fn a_real_firehose_across_a_reconnect_is_clean_and_a_reappended_event_is_a_duplicate() {
    let net = SimNetwork::start(1, SimPdsConfig::default()).unwrap();
    let (host, frames) = published_events(&net);
    let mut relay = LogFirehose::start();
    let (first, rest) = frames.split_at(frames.len() / 2);
    relay.append(first);
    let mut checker = Checker::connect(relay.addr, Some(0), expectations(&host, &frames, &[]))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut delivered = 0;
    while delivered < first.len() as u64 && Instant::now() < deadline {
        checker
            .run_until(Instant::now() + Duration::from_millis(50), Stop::AtDeadline)
            .await;
        delivered = checker.report().delivered;
    }
    assert_eq!(delivered, first.len() as u64);

    // The relay replays from the cursor: the second half only, once.
    checker.reconnect().await.unwrap();
    relay.append(rest);
    let end = checker.run_until(deadline, Stop::WhenAllSeen).await;
    assert_eq!(end, RunEnd::AllSeen);
    let report = checker.report();
    assert_clean(&report, frames.len() as u64);
    assert_eq!(report.reconnects, 1);

    // A relay bug: one commit sequenced twice (after the six creation events).
    assert_eq!(peek_event(&frames[6]).unwrap().header.t, Some("#commit"));
    relay.append(&frames[6..7]);
    let mut report = checker.report();
    while report.duplicated == 0 && Instant::now() < deadline {
        checker
            .run_until(Instant::now() + Duration::from_millis(50), Stop::AtDeadline)
            .await;
        report = checker.report();
    }
    assert_eq!(report.duplicated, 1, "{report:?}");
    assert_eq!(report.out_of_order, 0, "{report:?}");
    net.stop().await;
}
