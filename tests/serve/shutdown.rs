//! The graceful shutdown of `rookery serve`, bounded by `--shutdown-timeout`: SIGTERM during
//! ingest loses nothing (every event a consumer saw is in the log, host cursors and account
//! state are in Postgres, consumers are closed with 1001) and exits 0 within the bound; a
//! shutdown that cannot finish (Postgres stopped answering) exits 1 at the bound naming what
//! was left, a second signal exits at once, and a restart then catches up without loss.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use awc::ws;
use bytes::Bytes;
use futures_util::StreamExt;
use rookery::atproto::frame::{self, Frame};
use rookery::sim::{SimPds, SimPdsConfig, SimPlc, install_crypto_provider};
use rookery::store::event_log::{EventLog, EventLogConfig};
use rookery::store::postgres::Db;
use rookery::testkit::repo::Change;

use crate::common::pg_proxy::PgProxy;
use crate::common::process::{free_port, http_get, read, send_signal};
use crate::relay_fixture::RelayFixture;

const WAIT: Duration = Duration::from_secs(60);

async fn wait_until<F, Fut>(limit: Duration, what: &str, log: &Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            read(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (without blocking the test's runtime) for the child to exit, at most `limit`.
async fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready(port: u16, pds: &SimPds, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + WAIT;
    while pds.live_connections() == 0
        || http_get(port, "/_readyz").map(|r| r.status).ok() != Some(200)
    {
        assert!(Instant::now() < deadline, "not ready: {}", read(log));
        assert!(child.try_wait().expect("wait").is_none(), "{}", read(log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn host_cursor(db: &Db, hostname: &str) -> i64 {
    match db.client().await {
        Ok(client) => client
            .query_opt(
                "SELECT last_seq FROM hosts WHERE hostname = $1",
                &[&hostname],
            )
            .await
            .ok()
            .flatten()
            .map_or(0, |row| row.get(0)),
        Err(_) => 0,
    }
}

/// Every record of the stopped relay's log, in order.
fn stored_records(data: &Path) -> Vec<(u64, Bytes)> {
    let (log, _) = EventLog::open(EventLogConfig::new(data)).expect("open the log");
    let mut replay = log.reader().read_after(0).expect("replay");
    let mut records = Vec::new();
    for _ in 0..10_000 {
        let batch = replay.next_batch(1_000, 16 << 20).expect("read");
        if batch.is_empty() {
            break;
        }
        records.extend(batch.into_iter().map(|r| (r.seq, r.body)));
    }
    records
}

/// `(repo, rev)` of every commit frame.
fn commits<'a>(frames: impl Iterator<Item = &'a Bytes>) -> Vec<(String, String)> {
    frames
        .filter_map(|f| match frame::decode_frame(f) {
            Ok(Frame::Commit(c)) => Some((c.repo.clone(), c.rev.clone())),
            _ => None,
        })
        .collect()
}

/// The PDS's seq of each of its commits.
fn published_commit_seqs(pds: &SimPds) -> HashMap<(String, String), u64> {
    pds.published()
        .iter()
        .filter_map(|f| {
            let seq = frame::peek_event(f).ok()?.seq?;
            match frame::decode_frame(f) {
                Ok(Frame::Commit(c)) => Some(((c.repo.clone(), c.rev.clone()), seq)),
                _ => None,
            }
        })
        .collect()
}

/// What a consumer read before the relay closed it, and the close code.
async fn consume(port: u16) -> actix_rt::task::JoinHandle<(Vec<Bytes>, Option<ws::CloseCode>)> {
    let url = format!("ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos");
    let (_, mut framed) = awc::Client::new()
        .ws(url)
        .max_frame_size(frame::MAX_FRAME_BYTES)
        .connect()
        .await
        .expect("upgrade");
    actix_rt::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, framed.next()).await {
                Ok(Some(Ok(ws::Frame::Binary(b)))) => got.push(b),
                Ok(Some(Ok(ws::Frame::Close(reason)))) => return (got, reason.map(|r| r.code)),
                Ok(Some(Ok(_))) => continue,
                _ => return (got, None),
            }
        }
    })
}

#[actix_rt::test]
async fn sigterm_during_ingest_exits_0_within_the_bound_with_everything_durable_flushed_and_consumers_closed_1001()
 {
    install_crypto_provider();
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let fixture = RelayFixture::new(&[&pds]).await;
    let (db, log) = (&fixture.db, fixture.log.clone());
    let port = free_port();
    let bound = Duration::from_secs(10);
    let mut child = fixture.spawn_with(
        &plc.url(),
        port,
        free_port(),
        &[("ROOKERY_SHUTDOWN_TIMEOUT", "10s")],
    );
    ready(port, &pds, &mut child, &log).await;
    let consumer = consume(port).await;
    let accounts: Vec<String> = (0..4)
        .map(|_| pds.create_account().expect("account"))
        .collect();

    // Commits keep coming; SIGTERM lands halfway through.
    let mut signalled = None;
    for round in 0..60 {
        if round == 30 {
            send_signal(child.id(), "TERM");
            signalled = Some(Instant::now());
        }
        for did in &accounts {
            pds.commit(
                did,
                &[Change::Create(format!("app.bsky.feed.post/r{round}"))],
            )
            .expect("commit");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = signalled.expect("signalled");
    let status = exit_within(&mut child, bound + Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no exit after SIGTERM: {}", read(&log)));
    let took = signalled.elapsed();
    let stderr = read(&log);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        took < bound,
        "exit took {took:?}, bound {bound:?}: {stderr}"
    );
    assert!(stderr.contains("rookery stopped"), "{stderr}");
    assert!(!stderr.contains("cut short"), "{stderr}");

    // The consumer was closed with 1001, and everything it was sent is in the log.
    let (received, close) = consumer.await.expect("consumer task");
    assert_eq!(close, Some(ws::CloseCode::Away), "{stderr}");
    let stored = stored_records(&fixture.data);
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "contiguous"
    );
    let by_seq: BTreeMap<u64, &Bytes> = stored.iter().map(|(s, b)| (*s, b)).collect();
    assert!(
        !received.is_empty(),
        "the consumer saw events before the shutdown"
    );
    for frame in &received {
        let seq = frame::peek_event(frame).expect("event").seq.expect("seq");
        assert_eq!(
            by_seq.get(&seq),
            Some(&frame),
            "sent seq {seq} is durable as sent"
        );
    }

    // The host's cursor covers exactly what is stored: every commit at or below it is in the
    // log, and every stored commit is at or below it.
    let stored_commits = commits(stored.iter().map(|(_, b)| b));
    assert!(stored_commits.len() > 4, "ingest ran: {stderr}");
    let unique: HashSet<_> = stored_commits.iter().cloned().collect();
    assert_eq!(unique.len(), stored_commits.len(), "no commit stored twice");
    let pds_seqs = published_commit_seqs(&pds);
    let cursor = host_cursor(db, &pds.hostname()).await as u64;
    for commit in &stored_commits {
        let seq = pds_seqs[commit];
        assert!(
            seq <= cursor,
            "stored commit at PDS seq {seq} above the cursor {cursor}"
        );
    }
    for (commit, seq) in &pds_seqs {
        if *seq <= cursor {
            assert!(
                unique.contains(commit),
                "PDS seq {seq} is below the cursor {cursor} but not stored"
            );
        }
    }
    assert!(
        cursor < pds.head_seq(),
        "the relay stopped before the PDS did ({cursor} of {})",
        pds.head_seq()
    );
    // Account state in Postgres is that of the last stored commit of each account.
    let client = db.client().await.expect("client");
    for did in &accounts {
        let newest = stored_commits
            .iter()
            .filter(|(repo, _)| repo == did)
            .map(|(_, rev)| rev.clone())
            .max();
        let row = client
            .query_opt(
                "SELECT s.rev FROM accounts a JOIN account_sync_state s ON s.uid = a.uid \
                 WHERE a.did = $1",
                &[did],
            )
            .await
            .expect("query");
        let rev: Option<String> = row.map(|r| r.get(0));
        let newest = newest.expect("commits of every account were stored");
        assert_eq!(rev.as_deref(), Some(newest.as_str()), "{did}");
    }
    pds.stop().await;
    plc.stop().await;
}

#[actix_rt::test]
async fn a_shutdown_that_cannot_finish_stops_at_the_bound_a_second_signal_exits_at_once_and_nothing_is_lost()
 {
    install_crypto_provider();
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let mut fixture = RelayFixture::new(&[&pds]).await;
    let proxy = PgProxy::start();
    fixture.database_url = proxy.connection_string(&fixture.dbname);
    let log = fixture.log.clone();

    // 1. Postgres stops answering mid-run: the final flush cannot finish, so the bound
    // (3 s) ends the shutdown, exit 1, naming the unfinished stage.
    let port = free_port();
    let mut child = fixture.spawn_with(
        &plc.url(),
        port,
        free_port(),
        &[("ROOKERY_SHUTDOWN_TIMEOUT", "3s")],
    );
    ready(port, &pds, &mut child, &log).await;
    let accounts: Vec<String> = (0..3)
        .map(|_| pds.create_account().expect("account"))
        .collect();
    let mut round = 0;
    let mut commit_round = |pds: &SimPds| {
        for did in &accounts {
            pds.commit(
                did,
                &[Change::Create(format!("app.bsky.feed.post/r{round}"))],
            )
            .expect("commit");
        }
        round += 1;
    };
    let head = pds.head_seq() as i64;
    wait_until(WAIT, "the creation cursor", &log, || async {
        host_cursor(&fixture.db, &pds.hostname()).await >= head
    })
    .await;
    proxy.freeze();
    for _ in 0..5 {
        commit_round(&pds);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_signal(child.id(), "TERM");
    let signalled = Instant::now();
    let status = exit_within(&mut child, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no exit at the bound: {}", read(&log)));
    let took = signalled.elapsed();
    let stderr = read(&log);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "exit after {took:?}: {stderr}"
    );
    assert!(
        stderr.contains(
            "shutdown did not finish within --shutdown-timeout (3s); unfinished: stop ingest: "
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("close consumers with 1001 (not started)"),
        "{stderr}"
    );
    proxy.thaw();

    // 2. Again, with a long bound: a second SIGTERM exits at once.
    // The dead relay's connection counts as live until the PDS next writes to it; drop it
    // so `ready` waits for the new relay's subscriber.
    pds.drop_connections();
    let port = free_port();
    let mut child = fixture.spawn_with(
        &plc.url(),
        port,
        free_port(),
        &[("ROOKERY_SHUTDOWN_TIMEOUT", "60s")],
    );
    ready(port, &pds, &mut child, &log).await;
    // A fresh relay loads its accounts from Postgres: let it do that (one round, flushed)
    // before Postgres stops answering, so the rounds below are ingested and their cursors
    // are what the final flush cannot write.
    commit_round(&pds);
    let head = pds.head_seq() as i64;
    wait_until(WAIT, "the first round's cursor", &log, || async {
        host_cursor(&fixture.db, &pds.hostname()).await >= head
    })
    .await;
    proxy.freeze();
    for _ in 0..5 {
        commit_round(&pds);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = read(&log).len();
    send_signal(child.id(), "TERM");
    wait_until(WAIT, "the shutdown to reach ingest", &log, || async {
        read(&log)[before..].contains("stage=\"stop ingest\"")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_signal(child.id(), "TERM");
    let again = Instant::now();
    let status = exit_within(&mut child, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no exit after the second SIGTERM: {}", read(&log)));
    let stderr = read(&log)[before..].to_string();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        again.elapsed() < Duration::from_secs(2),
        "{:?}",
        again.elapsed()
    );
    assert!(
        stderr.contains("second signal: exiting at once"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "SIGTERM received again during shutdown: exited at once; unfinished: stop ingest: "
        ),
        "{stderr}"
    );
    proxy.thaw();

    // 3. Cut short twice, nothing is lost: a normal run catches up with the PDS, every commit
    // stored exactly once, seqs contiguous.
    pds.drop_connections();
    let port = free_port();
    let mut child = fixture.spawn_with(&plc.url(), port, free_port(), &[]);
    ready(port, &pds, &mut child, &log).await;
    commit_round(&pds);
    let head = pds.head_seq() as i64;
    wait_until(WAIT, "the cursor at the PDS head", &log, || async {
        host_cursor(&fixture.db, &pds.hostname()).await >= head
    })
    .await;
    send_signal(child.id(), "TERM");
    let status = exit_within(&mut child, Duration::from_secs(30))
        .await
        .expect("exit");
    assert_eq!(status.code(), Some(0), "{}", read(&log));
    let stored = stored_records(&fixture.data);
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "contiguous"
    );
    let stored_commits = commits(stored.iter().map(|(_, b)| b));
    let unique: HashSet<_> = stored_commits.iter().cloned().collect();
    assert_eq!(unique.len(), stored_commits.len(), "no commit stored twice");
    assert_eq!(
        unique.len(),
        12 * 3, // twelve rounds of three accounts
        "every commit of the PDS: {}",
        read(&log)
    );
    drop(proxy);
    pds.stop().await;
    plc.stop().await;
}
