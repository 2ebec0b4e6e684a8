//! An operator's account actions through the whole relay: simulated PDS hosts and PLC on
//! 127.0.0.1 → the pipeline with a real Postgres and event log → the firehose served on
//! 127.0.0.1 to real websocket consumers. Takedowns reach live and replaying consumers, hold
//! while commits stream in and across a restart; reversals bring the history back; raising a
//! host's limit promotes its oldest throttled accounts.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use awc::error::WsProtocolError;
use awc::ws;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use prometheus::Registry;
use rookery::actors::account_admin::{AccountAdminError, Missing};
use rookery::actors::firehose::{Firehose, FirehoseSettings, start_firehose};
use rookery::actors::obs::ActorMetrics;
use rookery::actors::sequencer::GetSequencerState;
use rookery::actors::shard_rules::LocalStatus;
use rookery::actors::validator_shard::system_clock;
use rookery::atproto::frame::{self, AccountEvent, Frame, MAX_FRAME_BYTES};
use rookery::http::{self, ListenerSettings};
use rookery::sim::{SimPds, SimPdsConfig, SimPlc};
use rookery::testkit::repo::Change;

use crate::relay_pipeline::{Relay, frame_did, settings};
use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// The firehose over the relay's pipeline, and its consumers

/// The firehose of a running relay, served on 127.0.0.1, with the takedown path attached.
struct Served {
    firehose: Firehose,
    server: ServerHandle,
    addr: SocketAddr,
}

fn serve(relay: &Relay) -> Served {
    let registry = Registry::new();
    let metrics = ActorMetrics::register(&registry).expect("metrics");
    let pipeline = relay.pipeline();
    let firehose = start_firehose(
        pipeline.ingest.reader.clone(),
        pipeline.ingest.durable_head.clone(),
        FirehoseSettings::default(),
        &metrics,
        &registry,
    )
    .expect("firehose");
    pipeline.accounts.attach_firehose(firehose.ring_masks());
    let (server, addrs) = http::start_public(
        "127.0.0.1:0".parse().expect("addr"),
        ListenerSettings::new(1, Duration::from_secs(1)),
        http::subscribe_repos::routes(&firehose),
    )
    .expect("bind");
    let handle = server.handle();
    actix_rt::spawn(server);
    Served {
        firehose,
        server: handle,
        addr: addrs[0],
    }
}

impl Served {
    async fn stop(self) {
        self.firehose.shutdown(Duration::from_secs(5)).await;
        self.server.stop(false).await;
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<ws::Frame, WsProtocolError>>>>;
type MessageSink = Pin<Box<dyn Sink<ws::Message, Error = WsProtocolError>>>;

/// A websocket consumer of `subscribeRepos` (answers pings, decodes every event).
struct Consumer {
    frames: FrameStream,
    sink: MessageSink,
    /// The events received so far: `(seq, frame)`.
    seen: Vec<(u64, Frame)>,
}

async fn consume(served: &Served, cursor: Option<u64>) -> Consumer {
    rookery::sim::install_crypto_provider();
    let path = "/xrpc/com.atproto.sync.subscribeRepos";
    let url = match cursor {
        Some(c) => format!("ws://{}{path}?cursor={c}", served.addr),
        None => format!("ws://{}{path}", served.addr),
    };
    let (_, framed) = awc::Client::builder()
        .timeout(WAIT)
        .finish()
        .ws(url)
        .max_frame_size(MAX_FRAME_BYTES)
        .connect()
        .await
        .expect("websocket upgrade");
    let (sink, frames) = framed.split();
    Consumer {
        frames: Box::pin(frames),
        sink: Box::pin(sink),
        seen: Vec::new(),
    }
}

fn seq_of(f: &Frame) -> Option<u64> {
    let seq = match f {
        Frame::Commit(c) => c.seq,
        Frame::Sync(s) => s.seq,
        Frame::Identity(i) => i.seq,
        Frame::Account(a) => a.seq,
        _ => return None,
    };
    u64::try_from(seq).ok()
}

impl Consumer {
    /// The next event within `within` (`None`: nothing came); pings are answered.
    async fn next_within(&mut self, within: Duration) -> Option<(u64, Frame)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.frames.next())
                .await
                .ok()??;
            match next.expect("websocket") {
                ws::Frame::Binary(bytes) => {
                    let f = frame::decode_frame(&bytes).expect("the relay's frames decode");
                    let seq = seq_of(&f).unwrap_or_else(|| panic!("not an event: {f:?}"));
                    if let Some((prev, _)) = self.seen.last() {
                        assert!(seq > *prev, "seq {seq} after {prev}");
                    }
                    self.seen.push((seq, f.clone()));
                    return Some((seq, f));
                }
                ws::Frame::Ping(payload) => {
                    let _ = self.sink.send(ws::Message::Pong(payload)).await;
                }
                ws::Frame::Close(reason) => panic!("closed: {reason:?}"),
                _ => {}
            }
        }
    }

    /// Events until the one with seq `last` (inclusive).
    async fn through(&mut self, last: u64) -> Vec<(u64, Frame)> {
        let mut got = Vec::new();
        for _ in 0..100_000 {
            let Some((seq, f)) = self.next_within(WAIT).await else {
                panic!("seq {last} never came; got {} events", got.len());
            };
            got.push((seq, f));
            if seq >= last {
                return got;
            }
        }
        panic!("seq {last} never came");
    }
}

/// The `#account` frame, or a panic naming what came instead.
fn account_of(f: &Frame) -> &AccountEvent {
    match f {
        Frame::Account(a) => a,
        other => panic!("expected #account, got {other:?}"),
    }
}

fn of_did<'a>(events: &'a [(u64, Frame)], did: &str) -> Vec<&'a (u64, Frame)> {
    events
        .iter()
        .filter(|(_, f)| frame_did(f) == Some(did))
        .collect()
}

fn commits_of(events: &[(u64, Frame)], did: &str) -> usize {
    of_did(events, did)
        .iter()
        .filter(|(_, f)| matches!(f, Frame::Commit(_)))
        .count()
}

fn durable_head(relay: &Relay) -> u64 {
    *relay.pipeline().ingest.durable_head.borrow()
}

async fn events_sequenced(relay: &Relay) -> u64 {
    relay
        .pipeline()
        .ingest
        .sequencer
        .send(GetSequencerState)
        .await
        .expect("sequencer")
        .events_sequenced
}

fn post(did: &str, pds: &SimPds, n: usize) -> u64 {
    pds.commit(did, &[Change::Create(format!("app.bsky.feed.post/p{n}"))])
        .expect("commit")
}

/// A relay reading one simulated PDS with accounts alice and bob, each with `commits`
/// commits, everything settled.
async fn relay_with_two_accounts(commits: usize) -> (SimPlc, SimPds, Relay, String, String) {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let relay = Relay::start(&[&pds], settings(&plc), system_clock()).await;
    relay.wait_connected(&[&pds]).await;
    let alice = pds.create_account().expect("alice");
    let bob = pds.create_account().expect("bob");
    for i in 0..commits {
        post(&alice, &pds, i);
        post(&bob, &pds, i);
    }
    relay.wait_settled(pds.head_seq()).await;
    (plc, pds, relay, alice, bob)
}

// ------------------------------------------------------------------------------------------
// Takedown and reversal

#[actix_rt::test]
async fn a_takedown_reaches_live_and_replaying_consumers_and_later_commits_are_dropped() {
    let (plc, pds, relay, alice, bob) = relay_with_two_accounts(3).await;
    let served = serve(&relay);
    let mut live = consume(&served, None).await;
    let head = durable_head(&relay);
    let bobs_events = relay.frames_of(&bob).len();
    assert_eq!(bobs_events, 6, "identity, account, sync, three commits");

    let takedown = relay
        .pipeline()
        .accounts
        .take_down(&bob)
        .await
        .expect("takedown");
    assert!(!takedown.repeated);
    assert_eq!(
        takedown.seq,
        Some(head + 1),
        "the takedown is the next event"
    );
    assert_eq!(takedown.masked_records, bobs_events as u64);

    // The live consumer gets the relay's own #account, decoded field by field.
    let (seq, f) = live.next_within(WAIT).await.expect("the takedown event");
    assert_eq!(seq, head + 1);
    let account = account_of(&f);
    assert_eq!(
        (
            account.did.as_str(),
            account.active,
            account.status.as_deref()
        ),
        (bob.as_str(), false, Some("takendown"))
    );
    assert!(
        rookery::atproto::syntax::is_valid_datetime(&account.time),
        "{}",
        account.time
    );
    let row = relay.account_row(&bob).await.expect("row");
    assert_eq!(row.1, "takendown");

    // A consumer from the start: bob's earlier events are gone, the takedown is there, alice's
    // events are untouched.
    let mut replay = consume(&served, Some(0)).await;
    let all = replay.through(head + 1).await;
    let bobs: Vec<_> = of_did(&all, &bob);
    assert_eq!(bobs.len(), 1, "only the takedown: {bobs:?}");
    assert_eq!(bobs[0].0, head + 1);
    let alices: Vec<u64> = of_did(&all, &alice).iter().map(|(s, _)| *s).collect();
    let alices_in_log: Vec<u64> = relay
        .log()
        .iter()
        .filter(|r| {
            frame::decode_frame(&r.body)
                .ok()
                .as_ref()
                .and_then(frame_did)
                == Some(alice.as_str())
        })
        .map(|r| r.seq)
        .collect();
    assert_eq!(alices.len(), 6);
    assert_eq!(alices, alices_in_log);

    // A later commit of bob is dropped; alice's next commit is the next thing both see.
    post(&bob, &pds, 10);
    let ok = eventually(WAIT, || async { relay.dropped("account-takendown") == 1 }).await;
    assert!(ok, "bob's commit is dropped as account-takendown");
    post(&alice, &pds, 10);
    let (seq, f) = live.next_within(WAIT).await.expect("alice's commit");
    assert_eq!((seq, frame_did(&f)), (head + 2, Some(alice.as_str())));
    let (seq, _) = replay.next_within(WAIT).await.expect("alice's commit");
    assert_eq!(seq, head + 2);

    // Taking down again: it succeeds, masks nothing new, emits nothing.
    let again = relay
        .pipeline()
        .accounts
        .take_down(&bob)
        .await
        .expect("again");
    assert_eq!(
        (again.repeated, again.seq, again.masked_records),
        (true, None, 0)
    );
    assert!(live.next_within(Duration::from_millis(300)).await.is_none());
    assert_eq!(durable_head(&relay), head + 2);
    let metrics = relay.pipeline().accounts.metrics();
    assert_eq!(
        (
            metrics.actions("takedown"),
            metrics.actions("takedown-repeated")
        ),
        (1, 1)
    );

    served.stop().await;
    let mut relay = relay;
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}

#[actix_rt::test]
async fn a_takedown_while_commits_stream_in_masks_everything_before_and_drops_everything_after() {
    let (plc, pds, relay, alice, bob) = relay_with_two_accounts(0).await;
    let served = serve(&relay);
    let mut live = consume(&served, None).await;

    // Both accounts commit as fast as the PDS signs, until 20 commits after the takedown.
    let taken_down = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pds, alice, bob, taken_down) = (
            pds.clone(),
            alice.clone(),
            bob.clone(),
            Arc::clone(&taken_down),
        );
        tokio::task::spawn_blocking(move || {
            let (mut bobs, mut alices, mut after) = (0usize, 0usize, 0usize);
            for i in 0..3_000 {
                post(&bob, &pds, i);
                bobs += 1;
                if i % 2 == 0 {
                    post(&alice, &pds, i);
                    alices += 1;
                }
                if taken_down.load(Ordering::Acquire) {
                    after += 1;
                    if after >= 20 {
                        break;
                    }
                }
            }
            (bobs, alices, after)
        })
    };
    // Take bob down once the live consumer has seen some of his commits.
    for _ in 0..10_000 {
        if commits_of(&live.seen, &bob) >= 20 {
            break;
        }
        live.next_within(WAIT).await.expect("events stream in");
    }
    assert!(commits_of(&live.seen, &bob) >= 20);
    let takedown = relay
        .pipeline()
        .accounts
        .take_down(&bob)
        .await
        .expect("takedown");
    taken_down.store(true, Ordering::Release);
    let t = takedown.seq.expect("announced");
    let (bobs, alices, after) = writer.await.expect("writer");
    assert!(after >= 20, "commits after the takedown: {after}");
    relay.wait_settled(pds.head_seq()).await;
    let head = durable_head(&relay);

    // Live: bob's events all come before his takedown, none after it.
    live.through(head).await;
    let live_bob = of_did(&live.seen, &bob);
    let last = live_bob.last().expect("bob's events");
    assert_eq!(last.0, t, "the takedown is bob's last event live");
    let account = account_of(&last.1);
    assert_eq!(
        (account.active, account.status.as_deref()),
        (false, Some("takendown"))
    );
    assert!(
        live_bob[..live_bob.len() - 1]
            .iter()
            .all(|(s, f)| *s < t && matches!(f, Frame::Commit(_)))
    );

    // Replayed after the takedown: none of bob's commits, the takedown, all of alice's.
    let mut replay = consume(&served, Some(0)).await;
    let all = replay.through(head).await;
    let replay_bob: Vec<u64> = of_did(&all, &bob).iter().map(|(s, _)| *s).collect();
    assert_eq!(replay_bob, [t]);
    assert_eq!(commits_of(&all, &alice), alices);
    assert_eq!(
        relay.frames_of(&bob).len(),
        1,
        "the log replays only the takedown of bob"
    );

    // Every commit of bob was either sequenced before the takedown or dropped after it.
    let shard = &relay.pipeline().shard_metrics;
    let bob_forwarded = shard.forwarded("commit") - alices as u64;
    let bob_dropped = relay.dropped("account-takendown");
    assert_eq!(bob_forwarded + bob_dropped, bobs as u64);
    assert!(
        bob_forwarded >= 20 && bob_dropped >= 20,
        "{bob_forwarded} / {bob_dropped}"
    );

    served.stop().await;
    let mut relay = relay;
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}

#[actix_rt::test]
async fn a_reversal_announces_the_account_brings_its_history_back_and_lets_commits_through() {
    let (plc, pds, relay, alice, bob) = relay_with_two_accounts(2).await;
    let served = serve(&relay);
    let bobs_before: Vec<u64> = relay
        .log()
        .iter()
        .filter(|r| {
            frame::decode_frame(&r.body)
                .ok()
                .as_ref()
                .and_then(frame_did)
                == Some(bob.as_str())
        })
        .map(|r| r.seq)
        .collect();
    let takedown = relay
        .pipeline()
        .accounts
        .take_down(&bob)
        .await
        .expect("takedown");
    let t = takedown.seq.expect("announced");
    let mut live = consume(&served, Some(t)).await;

    let reversal = relay
        .pipeline()
        .accounts
        .reverse_takedown(&bob)
        .await
        .expect("reversal");
    assert_eq!(reversal.seq, Some(t + 1));
    assert_eq!(reversal.local_status, LocalStatus::Active);
    assert_eq!(reversal.published, Some((true, None)));
    assert_eq!(reversal.unmasked_records, bobs_before.len() as u64);
    let (seq, f) = live.next_within(WAIT).await.expect("the reversal event");
    assert_eq!(seq, t + 1);
    let account = account_of(&f);
    assert_eq!(
        (
            account.did.as_str(),
            account.active,
            account.status.as_deref()
        ),
        (bob.as_str(), true, None)
    );
    assert_eq!(relay.account_row(&bob).await.expect("row").1, "active");

    // Replay shows bob's old events again, then both of the relay's #account events.
    let mut replay = consume(&served, Some(0)).await;
    let all = replay.through(t + 1).await;
    let replay_bob: Vec<u64> = of_did(&all, &bob).iter().map(|(s, _)| *s).collect();
    let mut expected = bobs_before.clone();
    expected.extend([t, t + 1]);
    assert_eq!(replay_bob, expected);
    assert_eq!(commits_of(&all, &alice), 2);

    // New commits of bob flow again.
    post(&bob, &pds, 20);
    let (seq, f) = live.next_within(WAIT).await.expect("bob's commit");
    assert_eq!(seq, t + 2);
    assert!(matches!(f, Frame::Commit(ref c) if c.repo == bob));
    assert_eq!(relay.dropped("account-takendown"), 0);

    // Reversing what is not taken down changes nothing and emits nothing.
    let noop = relay
        .pipeline()
        .accounts
        .reverse_takedown(&bob)
        .await
        .expect("no-op");
    assert_eq!((noop.seq, noop.published), (None, None));
    assert!(live.next_within(Duration::from_millis(300)).await.is_none());
    let metrics = relay.pipeline().accounts.metrics();
    assert_eq!(
        (
            metrics.actions("reversal"),
            metrics.actions("reversal-not-taken-down")
        ),
        (1, 1)
    );

    served.stop().await;
    let mut relay = relay;
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}

#[actix_rt::test]
async fn unknown_accounts_and_hosts_are_not_found_and_takedowns_page_without_gap_or_repeat() {
    let plc = SimPlc::start().expect("plc");
    let relay = Relay::start(&[], settings(&plc), system_clock()).await;
    let accounts = &relay.pipeline().accounts;
    for result in [
        accounts.take_down("did:plc:nobodyhere").await.map(|_| ()),
        accounts
            .reverse_takedown("did:plc:nobodyhere")
            .await
            .map(|_| ()),
    ] {
        let e = result.expect_err("unknown account");
        assert!(e.is_not_found());
        assert!(matches!(e, AccountAdminError::NotFound(Missing::Account)));
    }
    let e = accounts
        .change_account_limit("nowhere.example.com", 10)
        .await
        .expect_err("unknown host");
    assert!(matches!(e, AccountAdminError::NotFound(Missing::Host)));
    assert_eq!(events_sequenced(&relay).await, 0, "nothing emitted");
    assert_eq!(durable_head(&relay), 0);

    // 1,200 taken-down accounts among 1,800.
    relay
        .db
        .client()
        .await
        .expect("client")
        .batch_execute(
            "INSERT INTO hosts (hostname) VALUES ('pds.example.com');
             INSERT INTO accounts (did, host_id, local_status)
             SELECT 'did:plc:a' || lpad(g::text, 6, '0'), (SELECT id FROM hosts),
                    CASE WHEN g % 3 = 0 THEN 'active' ELSE 'takendown' END
             FROM generate_series(1, 1800) g;",
        )
        .await
        .expect("seed");
    let expected: Vec<String> = (1..=1800)
        .filter(|g| g % 3 != 0)
        .map(|g| format!("did:plc:a{g:06}"))
        .collect();
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    for _ in 0..100 {
        let (dids, next) = accounts.takedowns(cursor, 97).await.expect("page");
        pages += 1;
        assert!(dids.len() <= 97);
        seen.extend(dids);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 1200usize.div_ceil(97));
    assert_eq!(
        seen, expected,
        "every taken-down account once, in uid order"
    );
    // Exactly a full last page: no trailing empty page.
    let (all, next) = accounts.takedowns(None, 1200).await.expect("one page");
    assert_eq!((all.len(), next), (1200, None));

    let mut relay = relay;
    relay.stop().await;
    plc.stop().await;
}

// ------------------------------------------------------------------------------------------
// Host limits

#[actix_rt::test]
async fn raising_a_host_limit_promotes_its_oldest_throttled_accounts_in_creation_order() {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let relay = Relay::start(&[&pds], settings(&plc), system_clock()).await;
    relay.wait_connected(&[&pds]).await;
    relay
        .db
        .client()
        .await
        .expect("client")
        .execute("UPDATE hosts SET account_limit = 2", &[])
        .await
        .expect("limit");
    // One at a time, so the relay creates them in this order.
    let mut dids = Vec::new();
    for _ in 0..5 {
        dids.push(pds.create_account().expect("account"));
        relay.wait_settled(pds.head_seq()).await;
    }
    let mut statuses = Vec::new();
    for did in &dids {
        statuses.push(relay.account_row(did).await.expect("row").1);
    }
    assert_eq!(
        statuses,
        ["active", "active", "throttled", "throttled", "throttled"]
    );
    let served = serve(&relay);
    let mut live = consume(&served, None).await;
    let head = durable_head(&relay);
    post(&dids[2], &pds, 0);
    let ok = eventually(WAIT, || async { relay.dropped("account-throttled") >= 4 }).await;
    assert!(ok, "a throttled account's sync and commit are dropped");

    let host = pds.hostname();
    let change = relay
        .pipeline()
        .accounts
        .change_account_limit(&host, 4)
        .await
        .expect("raise");
    assert_eq!(
        change.promoted,
        [(dids[2].clone(), head + 1), (dids[3].clone(), head + 2)],
        "the two oldest, in creation order"
    );
    assert!(change.not_announced.is_empty());
    for (did, seq) in &change.promoted {
        let (got, f) = live.next_within(WAIT).await.expect("#account");
        let account = account_of(&f);
        assert_eq!(
            (
                got,
                account.did.as_str(),
                account.active,
                account.status.as_deref()
            ),
            (*seq, did.as_str(), true, None)
        );
    }
    let mut statuses = Vec::new();
    for did in &dids {
        statuses.push(relay.account_row(did).await.expect("row").1);
    }
    assert_eq!(
        statuses,
        ["active", "active", "active", "active", "throttled"]
    );
    assert_eq!(relay.pipeline().accounts.metrics().actions("promotion"), 2);

    // Their commits flow now; the youngest is still throttled.
    let dropped = relay.dropped("account-throttled");
    post(&dids[2], &pds, 1);
    let (seq, f) = live
        .next_within(WAIT)
        .await
        .expect("a promoted account's commit");
    assert_eq!((seq, frame_did(&f)), (head + 3, Some(dids[2].as_str())));
    post(&dids[4], &pds, 0);
    let ok = eventually(WAIT, || async {
        relay.dropped("account-throttled") == dropped + 1
    })
    .await;
    assert!(ok);

    // Lowering throttles nobody.
    let lower = relay
        .pipeline()
        .accounts
        .change_account_limit(&host, 1)
        .await
        .expect("lower");
    assert_eq!(lower, Default::default());
    assert_eq!(relay.account_row(&dids[3]).await.expect("row").1, "active");
    let count: i64 = relay
        .db
        .client()
        .await
        .expect("client")
        .query_one("SELECT account_count FROM hosts", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 5);

    // A throttled account taken down and reversed is throttled again, and says so.
    relay
        .pipeline()
        .accounts
        .take_down(&dids[4])
        .await
        .expect("takedown");
    let reversal = relay
        .pipeline()
        .accounts
        .reverse_takedown(&dids[4])
        .await
        .expect("reversal");
    assert_eq!(reversal.local_status, LocalStatus::Throttled);
    assert_eq!(
        reversal.published,
        Some((false, Some("throttled".to_string())))
    );
    assert_eq!(
        relay.account_row(&dids[4]).await.expect("row").1,
        "throttled"
    );

    served.stop().await;
    let mut relay = relay;
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}

// ------------------------------------------------------------------------------------------
// Restart

#[actix_rt::test]
async fn a_takedown_survives_a_restart_of_the_relay() {
    let (plc, pds, mut relay, alice, bob) = relay_with_two_accounts(2).await;
    let takedown = relay
        .pipeline()
        .accounts
        .take_down(&bob)
        .await
        .expect("takedown");
    let t = takedown.seq.expect("announced");
    relay.stop().await;

    relay.restart(settings(&plc), system_clock()).await;
    relay.wait_connected(&[&pds]).await;
    post(&bob, &pds, 10);
    let ok = eventually(WAIT, || async { relay.dropped("account-takendown") == 1 }).await;
    assert!(ok, "still dropped after the restart");
    post(&alice, &pds, 10);
    relay.wait_settled(2).await;
    let served = serve(&relay);
    let mut replay = consume(&served, Some(0)).await;
    let all = replay.through(t + 1).await;
    let replay_bob: Vec<u64> = of_did(&all, &bob).iter().map(|(s, _)| *s).collect();
    assert_eq!(replay_bob, [t], "still masked");
    assert_eq!(commits_of(&all, &alice), 3);

    // The reversal after the restart finds the takedown's seq and brings bob back.
    let reversal = relay
        .pipeline()
        .accounts
        .reverse_takedown(&bob)
        .await
        .expect("reversal");
    assert_eq!(reversal.seq, Some(t + 2));
    assert_eq!(reversal.unmasked_records, 5);
    let mut again = consume(&served, Some(0)).await;
    let all = again.through(t + 2).await;
    assert_eq!(commits_of(&all, &bob), 2);

    served.stop().await;
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}
