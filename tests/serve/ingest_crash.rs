//! `rookery serve` ingesting from a simulated PDS, killed with SIGKILL mid-stream and
//! restarted on the same data dir and database: no seq is reused, every commit the PDS
//! published is in the log exactly once, account state and the host's cursor end where the
//! PDS is.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use rookery::atproto::frame::{self, Frame};
use rookery::sim::{SimPds, SimPdsConfig, SimPlc};
use rookery::store::event_log::{EventLog, EventLogConfig};
use rookery::store::postgres::Db;
use rookery::testkit::repo::Change;

use crate::common::process::{free_port, read, send_signal};
use crate::relay_fixture::RelayFixture;

const ACCOUNTS: usize = 5;
const ROUNDS: usize = 40;

/// Polls `check` every 50 ms for at most `limit`.
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

/// Waits for the relay's subscription to `pds`.
async fn wait_for_live(pds: &SimPds, log: &Path) {
    wait_until(
        Duration::from_secs(60),
        "a live connection",
        log,
        || async { pds.live_connections() > 0 },
    )
    .await;
}

/// Waits until the relay's stored cursor for `pds` reaches `seq`.
async fn wait_for_cursor(db: &Db, pds: &SimPds, seq: i64, what: &str, log: &Path) {
    wait_until(Duration::from_secs(60), what, log, || async {
        host_cursor(db, &pds.hostname()).await >= seq
    })
    .await;
}

/// The log's commits as (repo, rev), asserting that seqs run from 1 without a gap and that no
/// commit is stored twice.
fn stored_commits_once(data: &Path) -> HashSet<(String, String)> {
    let (stored, _) = EventLog::open(EventLogConfig::new(data)).expect("open the log");
    let mut replay = stored.reader().read_after(0).expect("replay");
    let mut records = Vec::new();
    for _ in 0..10_000 {
        let batch = replay.next_batch(1_000, 16 << 20).expect("read");
        if batch.is_empty() {
            break;
        }
        records.extend(batch);
    }
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=records.len() as u64).collect::<Vec<_>>(),
        "seqs contiguous from 1: none reused, none skipped"
    );
    let mut commits = HashSet::new();
    for r in &records {
        if let Ok(Frame::Commit(c)) = frame::decode_frame(&r.body) {
            assert!(
                commits.insert((c.repo.clone(), c.rev.clone())),
                "commit {} {} stored twice",
                c.repo,
                c.rev
            );
        }
    }
    commits
}

/// Waits for the child's exit after SIGTERM and asserts a clean one.
async fn stop_cleanly(child: &mut std::process::Child, log: &Path) {
    send_signal(child.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", read(log));
}

/// A host the relay is subscribed to but has no stored cursor for (its events were all in
/// flight at a crash, or it never published): after a restart the relay asks for its whole
/// outbox, so what it published while the relay was down arrives, and what the outbox
/// replays from before (the accounts' creation `#sync`s, commits already stored) changes
/// nothing: no commit is stored twice.
#[actix_rt::test]
async fn a_subscribed_host_without_a_cursor_is_caught_up_from_its_outbox_once() {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let fixture = RelayFixture::new(&[&pds]).await;
    let (db, log, data) = (&fixture.db, fixture.log.clone(), fixture.data.clone());
    let mut child = fixture.spawn(&plc.url(), free_port(), free_port());
    wait_for_live(&pds, &log).await;
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|_| pds.create_account().expect("account"))
        .collect();
    let commit_round = |round: usize| {
        for did in &accounts {
            pds.commit(
                did,
                &[Change::Create(format!("app.bsky.feed.post/r{round}"))],
            )
            .expect("commit");
        }
    };
    commit_round(0);
    let head = pds.head_seq() as i64;
    wait_for_cursor(db, &pds, head, "the first round's cursor", &log).await;
    stop_cleanly(&mut child, &log).await;
    // The cursor never stored (a crash before its flush), the subscription known.
    let client = db.client().await.expect("client");
    let subscribed: bool = client
        .query_one(
            "UPDATE hosts SET last_seq = 0 WHERE hostname = $1              RETURNING subscribed_at IS NOT NULL",
            &[&pds.hostname()],
        )
        .await
        .expect("host row")
        .get(0);
    assert!(subscribed, "the handshake was stored");
    commit_round(1);

    let mut child = fixture.spawn(&plc.url(), free_port(), free_port());
    let head = pds.head_seq() as i64;
    wait_for_cursor(db, &pds, head, "the cursor at the PDS head", &log).await;
    stop_cleanly(&mut child, &log).await;
    let commits = stored_commits_once(&data);
    assert_eq!(
        commits.len(),
        ACCOUNTS * 2,
        "both rounds, once each: {}",
        read(&log)
    );
    pds.stop().await;
    plc.stop().await;
}

/// After a crash the stored cursor lags the log, so the host resends its last events. A
/// `#sync` among them is below the state recovered from the log (a commit followed it): it
/// is an old one replayed, not a rollback, so the commit after it is not stored again.
#[actix_rt::test]
async fn a_sync_resent_after_a_crash_is_not_taken_for_a_rollback() {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let fixture = RelayFixture::new(&[&pds]).await;
    let (db, log, data) = (&fixture.db, fixture.log.clone(), fixture.data.clone());
    let mut child = fixture.spawn(&plc.url(), free_port(), free_port());
    wait_for_live(&pds, &log).await;
    let did = pds.create_account().expect("account");
    pds.commit(&did, &[Change::Create("app.bsky.feed.post/a".into())])
        .expect("commit");
    // The cursor the crash leaves behind: everything up to here was written.
    let lagging = pds.head_seq() as i64;
    pds.sync(&did).expect("sync");
    pds.commit(&did, &[Change::Create("app.bsky.feed.post/b".into())])
        .expect("commit");
    let head = pds.head_seq() as i64;
    wait_for_cursor(db, &pds, head, "the cursor at the PDS head", &log).await;
    stop_cleanly(&mut child, &log).await;
    db.client()
        .await
        .expect("client")
        .execute(
            "UPDATE hosts SET last_seq = $1 WHERE hostname = $2",
            &[&lagging, &pds.hostname()],
        )
        .await
        .expect("cursor back");

    let mut child = fixture.spawn(&plc.url(), free_port(), free_port());
    pds.commit(&did, &[Change::Create("app.bsky.feed.post/c".into())])
        .expect("commit");
    let head = pds.head_seq() as i64;
    wait_for_cursor(db, &pds, head, "the cursor at the PDS head again", &log).await;
    stop_cleanly(&mut child, &log).await;
    assert_eq!(stored_commits_once(&data).len(), 3, "{}", read(&log));
    pds.stop().await;
    plc.stop().await;
}

#[actix_rt::test]
async fn sigkill_during_ingest_reuses_no_seq_and_stores_every_commit_once() {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let fixture = RelayFixture::new(&[&pds]).await;
    let (db, log, data) = (&fixture.db, fixture.log.clone(), fixture.data.clone());
    let mut child = fixture.spawn(&plc.url(), free_port(), free_port());
    wait_for_live(&pds, &log).await;
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|_| pds.create_account().expect("account"))
        .collect();
    // Account creation's #sync must be behind the stored cursor before the crash: a resent
    // #sync below the stored rev is a rollback by design (PROTOCOL.md §10).
    let created = pds.head_seq() as i64;
    wait_for_cursor(db, &pds, created, "the creation cursor", &log).await;

    let commit_round = |round: usize| {
        for did in &accounts {
            pds.commit(
                did,
                &[Change::Create(format!("app.bsky.feed.post/r{round}"))],
            )
            .expect("commit");
        }
    };
    for round in 0..ROUNDS / 2 {
        commit_round(round);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Mid-stream: frames are in flight, durable but not yet in Postgres, or both.
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    for round in ROUNDS / 2..ROUNDS {
        commit_round(round);
    }

    let mut child = fixture.spawn(&plc.url(), free_port(), free_port());
    let head = pds.head_seq() as i64;
    wait_for_cursor(db, &pds, head, "the cursor at the PDS head", &log).await;
    stop_cleanly(&mut child, &log).await;
    let commits = stored_commits_once(&data);
    assert_eq!(
        commits.len(),
        ACCOUNTS * ROUNDS,
        "every commit of the PDS, once: {}",
        read(&log)
    );
    let client = db.client().await.expect("client");
    for did in &accounts {
        let rev: String = client
            .query_one(
                "SELECT s.rev FROM accounts a JOIN account_sync_state s ON s.uid = a.uid \
                 WHERE a.did = $1",
                &[did],
            )
            .await
            .expect("state row")
            .get(0);
        assert_eq!(
            rev,
            pds.repo_state(did).expect("repo").rev.to_string(),
            "{did}"
        );
    }
    pds.stop().await;
    plc.stop().await;
}
