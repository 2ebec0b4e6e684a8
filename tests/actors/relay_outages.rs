//! Issue 9's outage and backpressure cases through the running pipeline: Postgres made
//! unreachable for one relay while its hosts keep sending, and a shard made slow while a
//! host sends a burst.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_rt::task::JoinHandle;
use prometheus::Registry;
use rookery::actors::validator_shard::system_clock;
use rookery::actors::write_behind::GetWriteBehindState;
use rookery::atproto::frame::Frame;
use rookery::sim::{SimPds, SimPdsConfig, SimPlc};
use rookery::testkit::postgres::test_cluster;
use rookery::testkit::repo::{Change, record_path};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_postgres::config::Host;

use crate::relay_pipeline::{Relay, settings};
use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// Postgres unreachable

/// A TCP proxy on 127.0.0.1 in front of the test cluster's unix socket. The test cluster is
/// shared by every test of the process, so it cannot be stopped; cutting this proxy makes
/// it unreachable for the one relay that connects through it: every open connection is
/// closed and new ones are closed as soon as they are accepted, until it is restored.
struct PgProxy {
    port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl PgProxy {
    async fn start() -> PgProxy {
        let direct = test_cluster().pg_config("postgres");
        let socket = match (direct.get_hosts(), direct.get_ports()) {
            ([Host::Unix(dir)], [port]) => dir.join(format!(".s.PGSQL.{port}")),
            other => panic!("the test cluster listens on a unix socket: {other:?}"),
        };
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = actix_rt::spawn(accept_loop(
            listener,
            socket,
            Arc::clone(&up),
            Arc::clone(&connections),
        ));
        PgProxy {
            port,
            up,
            connections,
            accept,
        }
    }

    /// Connection settings for `direct`'s database and user, through this proxy.
    fn route(&self, direct: tokio_postgres::Config) -> tokio_postgres::Config {
        let mut via = tokio_postgres::Config::new();
        via.host("127.0.0.1")
            .port(self.port)
            .user(direct.get_user().expect("user"))
            .dbname(direct.get_dbname().expect("dbname"));
        via
    }

    /// Postgres is unreachable from now on (open connections are closed).
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    socket: PathBuf,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        if !up.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        let task = actix_rt::spawn(pipe(tcp, socket.clone()));
        let mut open = connections.lock().expect("lock");
        open.retain(|t| !t.is_finished());
        open.push(task);
    }
}

async fn pipe(mut tcp: TcpStream, socket: PathBuf) {
    if let Ok(mut unix) = UnixStream::connect(&socket).await {
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
    }
}

#[actix_rt::test]
async fn relay_keeps_ingesting_known_accounts_while_postgres_is_unreachable_and_loses_nothing() {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let proxy = PgProxy::start().await;
    let mut s = settings(&plc);
    // The issue asks for a 20 s outage. With the default backoff (1 s doubling to 60 s) the
    // write-behind fails 4 or 5 flushes in 20 s and then waits up to 16 s more. Here the
    // backoff is 100 ms doubling to 400 ms and the outage lasts until at least 6 flushes
    // have failed in a row (more than 20 s gives with the defaults), so it exercises the same
    // path in about 2 s and the recovery is seen within 400 ms of the restore.
    s.ingest.write_behind.retry_min = Duration::from_millis(100);
    s.ingest.write_behind.retry_max = Duration::from_millis(400);
    let mut relay =
        Relay::start_through(&[&pds], s, system_clock(), |direct| proxy.route(direct)).await;
    relay.wait_connected(&[&pds]).await;
    let accounts: Vec<String> = (0..3)
        .map(|_| pds.create_account().expect("account"))
        .collect();
    for did in &accounts {
        pds.commit(did, &[Change::Create(record_path(0))])
            .expect("commit");
    }
    relay.wait_settled(12).await;
    relay.flush().await;
    assert!(!relay.pipeline().ingest.degraded.load(Ordering::Acquire));

    proxy.cut();
    let mut decided = 12;
    let write_behind = relay.pipeline().ingest.write_behind.clone();
    for round in 1..=50 {
        for did in &accounts {
            pds.commit(did, &[Change::Create(record_path(round))])
                .expect("commit");
        }
        decided += accounts.len() as u64;
        relay.wait_settled(decided).await;
        let state = write_behind
            .send(GetWriteBehindState)
            .await
            .expect("write-behind");
        if state.consecutive_failures >= 6 {
            break;
        }
        assert!(round < 50, "the write-behind does not fail: {state:?}");
    }
    assert!(
        relay.pipeline().ingest.degraded.load(Ordering::Acquire),
        "readiness says degraded while Postgres is unreachable"
    );
    assert_eq!(
        relay.log().len() as u64,
        decided,
        "every event of the known accounts reached the log meanwhile"
    );
    assert_eq!(
        relay.shard_states().iter().map(|s| s.dropped).sum::<u64>(),
        0
    );
    for did in &accounts {
        let upstream = pds.repo_state(did).expect("state").rev.to_string();
        assert_ne!(
            relay.stored_rev(did).await,
            Some(upstream),
            "Postgres did not get the new state while unreachable"
        );
    }

    proxy.restore();
    let recovered = eventually(WAIT, || async {
        !relay.pipeline().ingest.degraded.load(Ordering::Acquire)
    })
    .await;
    assert!(recovered, "degraded clears once Postgres is back");
    relay.flush().await;
    for did in &accounts {
        let upstream = pds.repo_state(did).expect("state").rev.to_string();
        assert_eq!(
            relay.stored_rev(did).await,
            Some(upstream),
            "the account state written while down reached Postgres"
        );
    }
    let client = relay.db.client().await.expect("client");
    let last_seq: i64 = client
        .query_one(
            "SELECT last_seq FROM hosts WHERE hostname = $1",
            &[&pds.hostname()],
        )
        .await
        .expect("host")
        .get(0);
    assert_eq!(
        last_seq as u64,
        pds.head_seq(),
        "the host's cursor reached Postgres"
    );
    let seqs: Vec<u64> = relay.log().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=pds.head_seq()).collect::<Vec<_>>(), "once each");
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}

#[actix_rt::test]
async fn relay_gives_up_on_a_new_account_within_the_hold_while_postgres_is_unreachable() {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let proxy = PgProxy::start().await;
    let mut s = settings(&plc);
    s.ingest.write_behind.retry_min = Duration::from_millis(100);
    s.ingest.write_behind.retry_max = Duration::from_millis(400);
    s.shard.hold_for = Duration::from_secs(1);
    // Keepalive (and with it the check for abandoned events) every 250 ms.
    s.subscriber.ping_interval = Duration::from_millis(500);
    let mut relay =
        Relay::start_through(&[&pds], s, system_clock(), |direct| proxy.route(direct)).await;
    relay.wait_connected(&[&pds]).await;
    let known = pds.create_account().expect("account");
    relay.wait_settled(3).await;

    // A new account needs its row, which Postgres cannot give: its events are held for at
    // most `hold_for` and then abandoned (their cursor marks not completed), while the known
    // account goes on.
    proxy.cut();
    let new = pds.create_account().expect("account");
    pds.commit(&known, &[Change::Create(record_path(1))])
        .expect("commit");
    relay.wait_settled(7).await;
    assert_eq!(relay.dropped("account-store-unavailable"), 3);
    assert_eq!(
        relay.frames_of(&known).len(),
        4,
        "the known account's commit is stored"
    );
    assert!(relay.frames_of(&new).is_empty());
    // Each retry of the account row decides the `#identity` again, on a fresh resolution:
    // at most one per `retry_after` (200 ms) within the 1 s hold, not without end.
    let lookups = plc.requests_for(&new);
    assert!(
        (1..=6).contains(&lookups),
        "resolutions bounded by the hold: {lookups}"
    );

    // Back up, the abandoned events come again with the next connection, which the
    // Subscriber opens by itself (the host's cursor stayed below them): they are stored, and
    // the replayed commit of the known account is stale.
    proxy.restore();
    let recovered = eventually(WAIT, || async {
        !relay.pipeline().ingest.degraded.load(Ordering::Acquire)
    })
    .await;
    assert!(recovered, "degraded clears once Postgres is back");
    let replayed = eventually(WAIT, || async { relay.frames_of(&new).len() == 3 }).await;
    assert!(replayed, "the new account's events after a reconnect");
    relay.wait_settled(4).await;
    assert_eq!(relay.dropped("stale-rev"), 1);
    assert_eq!(relay.log().len(), 7, "each event once");
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}

// ------------------------------------------------------------------------------------------
// Backpressure

/// The values of the gauge `name` in `registry`, one per label set.
fn gauge(registry: &Registry, name: &str) -> Vec<i64> {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .map(|m| m.get_gauge().get_value() as i64)
        .collect()
}

#[actix_rt::test]
async fn relay_backpressure_from_a_slow_shard_delays_the_upstream_within_its_bounds() {
    const ACCOUNTS: usize = 24;
    const DEPTH: usize = 4;
    const HOLDS: usize = 2;
    const BUDGET: u32 = 24 * 1024;
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let mut s = settings(&plc);
    // One shard, made slow: every account starts with an `#identity`, which the shard decides
    // only after a fresh resolution, and the directory takes 150 ms to answer; the shard holds
    // at most 2 frames meanwhile, then stops reading its queue of 4. Each account's commit
    // carries a 12 kB record, so two of them do not fit the 24 kB byte budget: it binds too.
    s.shards = 1;
    s.shard_queue_depth = DEPTH;
    s.shard.hold_per_shard = HOLDS;
    s.shard.hold_per_did = HOLDS;
    s.shard.hold_for = Duration::from_secs(10);
    s.ingest.budget_bytes = BUDGET;
    let mut relay = Relay::start(&[&pds], s, system_clock()).await;
    relay.wait_connected(&[&pds]).await;
    plc.set_response_delay(Duration::from_millis(150));

    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|_| {
            let did = pds.create_account().expect("account");
            pds.commit(&did, &[Change::CreateSized(record_path(0), 12_000)])
                .expect("commit");
            did
        })
        .collect();
    let total = pds.head_seq();
    assert_eq!(total, 4 * ACCOUNTS as u64);

    // Sampled until everything is decided. One second in, the shard has decided a few
    // accounts; the rest of the burst must still be upstream (in the PDS and the socket
    // buffers), not read into the relay.
    let started = std::time::Instant::now();
    let mut upstream_after_1s: Option<u64> = None;
    let mut peak_budget = 0u64;
    let settled = eventually(WAIT, || {
        let states = relay.shard_states();
        let queued: usize = relay.pipeline().router.queued().iter().sum();
        assert!(queued <= DEPTH, "the shard queue stays within {DEPTH}");
        let held = states.iter().map(|s| s.held_now).sum::<usize>();
        assert!(held <= HOLDS, "holds stay within {HOLDS}");
        let in_use = relay.pipeline().ingest.budget.in_use();
        assert!(in_use <= u64::from(BUDGET), "budget {in_use} > {BUDGET}");
        peak_budget = peak_budget.max(in_use);
        for depth in gauge(&relay.registry, "rookery_shard_queue_frames") {
            assert!(depth <= DEPTH as i64, "queue gauge {depth}");
        }
        for held in gauge(&relay.registry, "rookery_shard_held_frames") {
            assert!(held <= HOLDS as i64, "held gauge {held}");
        }
        // What the Subscriber has read so far: routed to the shard (received or queued),
        // plus at most one frame waiting for the budget or the queue.
        let received: u64 = states.iter().map(|s| s.received).sum();
        let read = received + queued as u64;
        if upstream_after_1s.is_none() && started.elapsed() >= Duration::from_secs(1) {
            upstream_after_1s = Some(total.saturating_sub(read + 1));
        }
        let decided: u64 = states.iter().map(|s| s.forwarded + s.dropped).sum();
        assert!(
            read - decided <= (DEPTH + HOLDS) as u64,
            "frames read but not decided: {}",
            read - decided
        );
        async move { decided >= total }
    })
    .await;
    assert!(settled, "every event arrives: {:?}", relay.shard_states());
    relay.wait_settled(total).await;
    let upstream = upstream_after_1s.expect("the slow shard took more than a second");
    assert!(
        upstream >= total / 4,
        "the Subscriber stopped reading: after 1 s only {upstream} of {total} events waited \
         upstream"
    );
    assert!(
        peak_budget >= u64::from(BUDGET / 2),
        "the 12 kB commits filled the byte budget (peak {peak_budget} of {BUDGET})"
    );
    assert_eq!(
        relay.shard_states().iter().map(|s| s.dropped).sum::<u64>(),
        0,
        "delayed, never dropped"
    );
    let log = relay.log();
    assert_eq!(log.len() as u64, total, "every event stored once");
    for did in &accounts {
        let kinds: Vec<&str> = relay.frames_of(did).iter().map(Frame::kind).collect();
        assert_eq!(kinds, ["identity", "account", "sync", "commit"], "{did}");
    }
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}
