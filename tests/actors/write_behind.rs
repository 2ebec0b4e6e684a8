//! The write-behind: batched statements against a real Postgres (cursors never lower
//! `last_seq` nor touch `status`; account state upserted), ingest going on while Postgres is
//! unreachable, and the flush/retry schedule on tokio's paused clock with an in-memory sink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use prometheus::Registry;
use rookery::actors::IngestSettings;
use rookery::actors::obs::{ActorMetrics, InstrumentedAddr};
use rookery::actors::persister::GetPersisterState;
use rookery::actors::sequencer::Drain;
use rookery::actors::write_behind::{
    AccountStateUpdate, FlushNow, GetWriteBehindState, PendingWrites, PostgresSink, StateSink,
    SyncState, WriteBehind, WriteBehindMetrics, WriteBehindSettings,
};
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbError, DbSettings};
use rookery::testkit::postgres::test_cluster;

use crate::support::{event, eventually, small_frame, start};

const HOSTS: i64 = 12;

fn fast_settings() -> IngestSettings {
    IngestSettings {
        write_behind: WriteBehindSettings {
            flush_every: Duration::from_millis(100),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
        },
        ..IngestSettings::default()
    }
}

/// Hosts 1..=HOSTS (host 1 banned with cursor 5, host 2 idle with cursor 1,000,000) and one
/// account per host (uid = host id).
async fn seed(db: &Db) {
    migrations::migrate(db).await.expect("migrate");
    let client = db.client().await.expect("client");
    for id in 1..=HOSTS {
        let (status, last_seq) = match id {
            1 => ("banned", 5i64),
            2 => ("idle", 1_000_000),
            _ => ("active", 0),
        };
        client
            .execute(
                "INSERT INTO hosts (id, hostname, status, last_seq) VALUES ($1, $2, $3, $4)",
                &[&id, &format!("pds{id}.example.com"), &status, &last_seq],
            )
            .await
            .expect("host");
        client
            .execute(
                "INSERT INTO accounts (uid, did, host_id) VALUES ($1, $2, $1)",
                &[&id, &format!("did:plc:acct{id}")],
            )
            .await
            .expect("account");
    }
}

fn account_update(uid: i64, n: i64) -> AccountStateUpdate {
    AccountStateUpdate {
        uid,
        sync: Some(SyncState {
            rev: format!("3rev{n:08}"),
            commit_cid: format!("bafycommit{n}"),
            data_cid: format!("bafydata{n}"),
        }),
        upstream_status: (n % 2 == 0).then(|| "active".to_string()),
    }
}

/// Sends 5 events per host (upstream seqs 1..=5 ×10) with account updates.
async fn send_events(ingest: &rookery::actors::Ingest) -> u64 {
    let mut sent = 0;
    for round in 1..=5i64 {
        for host in 1..=HOSTS {
            let did = format!("did:plc:acct{host}");
            let upstream = round * 10;
            let ev = event(
                &ingest.budget,
                small_frame(&did, upstream),
                &ingest.pending,
                host,
                upstream,
                Some(account_update(host, round)),
            )
            .await;
            ingest
                .sequencer
                .send(ev)
                .await
                .expect("mailbox")
                .expect("seq");
            sent += 1;
        }
    }
    ingest.sequencer.send(Drain).await.expect("drain");
    sent
}

async fn check_rows(db: &Db) {
    let client = db.client().await.expect("client");
    let rows = client
        .query("SELECT id, status, last_seq FROM hosts ORDER BY id", &[])
        .await
        .expect("hosts");
    for row in rows {
        let (id, status, last_seq): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
        match id {
            1 => assert_eq!(
                (status.as_str(), last_seq),
                ("banned", 50),
                "banned stays banned"
            ),
            2 => assert_eq!(
                (status.as_str(), last_seq),
                ("idle", 1_000_000),
                "never lowered"
            ),
            _ => assert_eq!((status.as_str(), last_seq), ("active", 50)),
        }
    }
    let rows = client
        .query(
            "SELECT s.uid, s.rev, s.commit_cid, s.data_cid, a.upstream_status \
             FROM account_sync_state s JOIN accounts a USING (uid) ORDER BY uid",
            &[],
        )
        .await
        .expect("sync state");
    assert_eq!(rows.len() as i64, HOSTS);
    for row in rows {
        let rev: String = row.get(1);
        assert_eq!(rev, "3rev00000005", "the newest update wins");
        assert_eq!(row.get::<_, String>(2), "bafycommit5");
        assert_eq!(row.get::<_, String>(3), "bafydata5");
        assert_eq!(row.get::<_, String>(4), "active");
    }
}

async fn write_behind_state(
    ingest: &rookery::actors::Ingest,
) -> rookery::actors::write_behind::WriteBehindState {
    ingest
        .write_behind
        .send(GetWriteBehindState)
        .await
        .expect("state")
}

#[actix_rt::test]
async fn cursors_and_account_state_land_in_batched_statements_without_touching_status() {
    let database = test_cluster().fresh_database().await.expect("db");
    let db = Db::new(database.pg_config, DbSettings::default()).expect("pool");
    seed(&db).await;
    let dir = tempfile::tempdir().expect("tmp");
    let (ingest, _) = start(
        dir.path(),
        Arc::new(PostgresSink::new(db.clone())),
        fast_settings(),
    );
    let sent = send_events(&ingest).await;

    let landed = eventually(Duration::from_secs(10), || async {
        let s = write_behind_state(&ingest).await;
        s.pending_cursors == 0 && s.pending_accounts == 0 && s.cursor_statements > 0
    })
    .await;
    assert!(landed, "{:?}", write_behind_state(&ingest).await);
    let state = write_behind_state(&ingest).await;
    // One statement per table per flush, never one per host or per event.
    assert!(state.cursor_statements < HOSTS as u64, "{state:?}");
    assert!(state.account_statements < HOSTS as u64, "{state:?}");
    assert!(state.cursor_statements + state.account_statements < sent);
    assert!(!state.degraded);
    check_rows(&db).await;
    ingest.shutdown().await;
}

#[actix_rt::test]
async fn ingest_goes_on_while_postgres_is_unreachable_and_the_writes_land_when_it_is_back() {
    let cluster = test_cluster();
    let name = format!("late_{:016x}", rand_id());
    let settings = DbSettings {
        connect_timeout: Duration::from_secs(2),
        ..DbSettings::default()
    };
    // The database does not exist yet: every connection is refused.
    let db = Db::new(cluster.pg_config(&name), settings).expect("pool");
    let dir = tempfile::tempdir().expect("tmp");
    let (ingest, _) = start(
        dir.path(),
        Arc::new(PostgresSink::new(db.clone())),
        fast_settings(),
    );
    let sent = send_events(&ingest).await;

    // Every event is durable although Postgres refuses.
    let persisted = ingest
        .persister
        .send(GetPersisterState)
        .await
        .expect("state");
    assert_eq!(persisted.events, sent);
    assert_eq!(*ingest.durable_head.borrow(), sent);
    let degraded = eventually(Duration::from_secs(10), || async {
        ingest.degraded.load(Ordering::Acquire)
    })
    .await;
    assert!(degraded, "degraded is raised");
    let state = write_behind_state(&ingest).await;
    assert!(state.degraded && state.failures >= 1, "{state:?}");
    assert_eq!(state.pending_cursors as i64, HOSTS, "nothing lost");
    assert_eq!(state.pending_accounts as i64, HOSTS);

    // Postgres comes back (the database appears, with the schema and rows).
    let admin = rookery::store::postgres::connect_once(
        &cluster.pg_config("postgres"),
        Duration::from_secs(10),
    )
    .await
    .expect("admin");
    // Seeded under another name and renamed, so the database appears complete at once: a
    // flush that ran between creating the tables and inserting the rows would find no host.
    let staging = format!("{name}_staging");
    admin
        .batch_execute(&format!("CREATE DATABASE {staging}"))
        .await
        .expect("create");
    let staging_db = Db::new(cluster.pg_config(&staging), settings).expect("pool");
    seed(&staging_db).await;
    drop(staging_db);
    admin
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{staging}'; \
             ALTER DATABASE {staging} RENAME TO {name}"
        ))
        .await
        .expect("rename");

    let recovered = eventually(Duration::from_secs(10), || async {
        let s = write_behind_state(&ingest).await;
        !s.degraded && s.pending_cursors == 0 && s.pending_accounts == 0
    })
    .await;
    assert!(recovered, "{:?}", write_behind_state(&ingest).await);
    assert!(!ingest.degraded.load(Ordering::Acquire));
    check_rows(&db).await;
    ingest.shutdown().await;
}

#[actix_rt::test]
async fn shutdown_writes_what_is_pending_and_flush_now_reports_an_outage() {
    let database = test_cluster().fresh_database().await.expect("db");
    let db = Db::new(database.pg_config, DbSettings::default()).expect("pool");
    seed(&db).await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut settings = fast_settings();
    settings.write_behind.flush_every = Duration::from_secs(3600);
    let (ingest, _) = start(
        dir.path(),
        Arc::new(PostgresSink::new(db.clone())),
        settings,
    );
    send_events(&ingest).await;
    assert_eq!(
        write_behind_state(&ingest).await.cursor_statements,
        0,
        "no timer flush yet"
    );
    ingest.shutdown().await;
    check_rows(&db).await;

    // FlushNow against a database that does not exist answers with the reason.
    let missing = Db::new(
        test_cluster().pg_config(&format!("missing_{:016x}", rand_id())),
        DbSettings::default(),
    )
    .expect("pool");
    let dir = tempfile::tempdir().expect("tmp");
    let (ingest, _) = start(dir.path(), Arc::new(PostgresSink::new(missing)), settings);
    send_events(&ingest).await;
    let answer = ingest.write_behind.send(FlushNow).await.expect("mailbox");
    assert_eq!(answer, Err("connect"));
    let state = write_behind_state(&ingest).await;
    assert!(state.degraded);
    assert_eq!(state.pending_cursors as i64, HOSTS);
    ingest.shutdown().await;
}

fn rand_id() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

// ------------------------------------------------------------------------------------------
// Paused clock, in-memory sink

#[derive(Default)]
struct FakeDb {
    up: AtomicBool,
    cursor_calls: Mutex<Vec<Vec<(i64, i64)>>>,
    account_calls: Mutex<Vec<Vec<AccountStateUpdate>>>,
    failed_calls: Mutex<u32>,
}

struct FakeSink(Arc<FakeDb>);

impl StateSink for FakeSink {
    fn write_cursors(&self, c: Vec<(i64, i64)>) -> BoxFuture<'static, Result<u64, DbError>> {
        let db = Arc::clone(&self.0);
        Box::pin(async move {
            if !db.up.load(Ordering::Acquire) {
                *db.failed_calls.lock().expect("lock") += 1;
                return Err(DbError::PoolTimeout);
            }
            let n = c.len() as u64;
            db.cursor_calls.lock().expect("lock").push(c);
            Ok(n)
        })
    }
    fn write_accounts(
        &self,
        a: Vec<AccountStateUpdate>,
        _checkpoint: u64,
    ) -> BoxFuture<'static, Result<u64, DbError>> {
        let db = Arc::clone(&self.0);
        Box::pin(async move {
            if !db.up.load(Ordering::Acquire) {
                *db.failed_calls.lock().expect("lock") += 1;
                return Err(DbError::PoolTimeout);
            }
            let n = a.len() as u64;
            db.account_calls.lock().expect("lock").push(a);
            Ok(n)
        })
    }
}

/// Lets the actor run whatever became due.
async fn settle() {
    for _ in 0..20 {
        actix_rt::task::yield_now().await;
    }
}

#[actix_rt::test]
async fn flushes_on_the_interval_and_retries_with_backoff_on_a_paused_clock() {
    tokio::time::pause();
    let fake = Arc::new(FakeDb::default());
    fake.up.store(true, Ordering::Release);
    let registry = Registry::new();
    let metrics = ActorMetrics::register(&registry).expect("metrics");
    let obs = metrics.actor(WriteBehind::NAME, WriteBehind::MAILBOX);
    let wb_metrics = WriteBehindMetrics::register(&registry).expect("metrics");
    let pending = PendingWrites::default();
    let degraded = Arc::new(AtomicBool::new(false));
    let settings = WriteBehindSettings::default(); // 4 s; retries 1 s doubling to 60 s
    let actor = WriteBehind::new(
        obs.clone(),
        pending.clone(),
        Arc::new(FakeSink(Arc::clone(&fake))),
        settings,
        Arc::clone(&degraded),
        wb_metrics.clone(),
    );
    let addr = InstrumentedAddr::new(actix::Actor::start(actor), obs);
    let s = Duration::from_secs;
    let ms = Duration::from_millis;

    for host in 1..=100 {
        pending.record_cursor(host, host * 10);
    }
    pending.record_account(AccountStateUpdate {
        uid: 7,
        sync: None,
        upstream_status: Some("deactivated".into()),
    });
    settle().await;
    tokio::time::advance(s(4) - ms(1)).await;
    settle().await;
    assert!(
        fake.cursor_calls.lock().expect("lock").is_empty(),
        "not before 4 s"
    );
    tokio::time::advance(ms(2)).await;
    settle().await;
    {
        let calls = fake.cursor_calls.lock().expect("lock");
        assert_eq!(calls.len(), 1, "one statement for 100 hosts");
        assert_eq!(calls[0].len(), 100);
        assert_eq!(fake.account_calls.lock().expect("lock").len(), 1);
    }

    // Postgres goes away: the next flush fails, degraded is raised, retries back off.
    fake.up.store(false, Ordering::Release);
    pending.record_cursor(1, 11);
    // (Timers have millisecond granularity: each check leaves 10 ms either side.)
    tokio::time::advance(s(4) + ms(10)).await;
    settle().await;
    assert_eq!(*fake.failed_calls.lock().expect("lock"), 1);
    assert!(degraded.load(Ordering::Acquire));
    // Retries after 1 s, 2 s, 4 s: three more attempts within 7 s, none early.
    for (wait, attempts) in [(s(1), 2), (s(2), 3), (s(4), 4)] {
        tokio::time::advance(wait - ms(10)).await;
        settle().await;
        assert_eq!(
            *fake.failed_calls.lock().expect("lock"),
            attempts - 1,
            "not early"
        );
        tokio::time::advance(ms(20)).await;
        settle().await;
        assert_eq!(*fake.failed_calls.lock().expect("lock"), attempts);
    }
    let state = addr.send(GetWriteBehindState).await.expect("state");
    assert_eq!(
        (
            state.pending_cursors,
            state.failures,
            state.consecutive_failures
        ),
        (1, 4, 4)
    );
    assert!(state.degraded);
    assert_eq!(wb_metrics.degraded(), 1);
    assert_eq!(wb_metrics.failures("pool_timeout"), 4);

    // Newer writes during the outage merge; when Postgres is back, they land at the next retry.
    pending.record_cursor(1, 15);
    pending.record_cursor(2, 25);
    fake.up.store(true, Ordering::Release);
    tokio::time::advance(s(8) - ms(30)).await;
    settle().await;
    assert_eq!(
        fake.cursor_calls.lock().expect("lock").len(),
        1,
        "retry not early"
    );
    tokio::time::advance(ms(40)).await;
    settle().await;
    {
        let calls = fake.cursor_calls.lock().expect("lock");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1], vec![(1, 15), (2, 25)]);
    }
    assert!(!degraded.load(Ordering::Acquire));
    assert_eq!(wb_metrics.degraded(), 0);
    let state = addr.send(GetWriteBehindState).await.expect("state");
    assert_eq!(state.pending_cursors, 0);
    assert_eq!(state.consecutive_failures, 0);
    assert_eq!(state.cursor_statements, 2);
    // Back on the 4 s cadence.
    pending.record_cursor(3, 30);
    tokio::time::advance(s(4) + ms(10)).await;
    settle().await;
    assert_eq!(fake.cursor_calls.lock().expect("lock").len(), 3);
}
