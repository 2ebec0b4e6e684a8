//! The real Subscriber against `SimPds` over loopback websockets (real time, short settings,
//! bounded waits), started by a real HostSupervisor: routing to the owning shard byte for
//! byte and in order, the per-socket seq check, relays, `FutureCursor` after a PDS reset, a
//! dead and restarted host, back-pressure from a full shard queue, and a supervisor restart
//! that resumes from the cursors in Postgres.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus::Registry;
use rookery::actors::host_supervisor::{
    HostStore, HostSupervisor, HostSupervisorSettings, ListConnections, PostgresHostStore,
    StopSupervisor,
};
use rookery::actors::obs::{ActorMetrics, InstrumentedAddr};
use rookery::actors::sequencer::ByteBudget;
use rookery::actors::shard_router::{ShardQueue, ShardRouter, shard_of};
use rookery::actors::subscriber::{
    AwcConnector, SubscriberDeps, SubscriberMetrics, SubscriberProbe, SubscriberSettings,
};
use rookery::actors::supervision::HostStatus;
use rookery::actors::upstream_tls::UpstreamTls;
use rookery::actors::write_behind::{
    FlushNow, PendingWrites, PostgresSink, WriteBehind, WriteBehindMetrics, WriteBehindSettings,
};
use rookery::sim::{SimPds, SimPdsConfig, SimPlc, install_crypto_provider};
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbSettings};
use rookery::testkit::postgres::test_cluster;

use crate::host_supervisor::{MemoryHosts, record, view};
use crate::support::{eventually, small_frame};

const SHARDS: usize = 4;
const WAIT: Duration = Duration::from_secs(15);

/// A frame as it reached its shard.
#[derive(Clone, Debug)]
struct Got {
    shard: usize,
    did: String,
    seq: i64,
    frame: Bytes,
}

struct Rig {
    deps: SubscriberDeps,
    probes: Arc<Mutex<HashMap<String, SubscriberProbe>>>,
    queues: Option<Vec<ShardQueue>>,
    got: Arc<Mutex<Vec<Got>>>,
    pending: PendingWrites,
    metrics: ActorMetrics,
}

fn rig(depth: usize) -> Rig {
    install_crypto_provider();
    let registry = Registry::new();
    let metrics = ActorMetrics::register(&registry).expect("metrics");
    let (router, queues) = ShardRouter::new(SHARDS, depth);
    let probes = Arc::new(Mutex::new(HashMap::new()));
    let pending = PendingWrites::default();
    let deps = SubscriberDeps {
        router,
        budget: ByteBudget::new(16 * 1024 * 1024),
        pending: pending.clone(),
        settings: SubscriberSettings {
            ping_interval: Duration::from_millis(500),
            dead_after: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            ..SubscriberSettings::default()
        },
        actor_metrics: metrics.clone(),
        metrics: SubscriberMetrics::register(&registry).expect("subscriber metrics"),
        probes: Some(Arc::clone(&probes)),
        tls: UpstreamTls::default().websocket_config(),
    };
    Rig {
        deps,
        probes,
        queues: Some(queues),
        got: Arc::default(),
        pending,
        metrics,
    }
}

/// A write-behind of `pending` into `db`, flushing every `flush_every`.
fn postgres_write_behind(
    pending: &PendingWrites,
    db: &Db,
    flush_every: Duration,
) -> InstrumentedAddr<WriteBehind> {
    let metrics = ActorMetrics::register(&Registry::new()).expect("m");
    let wb_obs = metrics.actor(WriteBehind::NAME, WriteBehind::MAILBOX);
    let wb = WriteBehind::new(
        wb_obs.clone(),
        pending.clone(),
        Arc::new(PostgresSink::new(db.clone())),
        WriteBehindSettings {
            flush_every,
            ..WriteBehindSettings::default()
        },
        Arc::default(),
        WriteBehindMetrics::register(&Registry::new()).expect("metrics"),
    );
    InstrumentedAddr::new(actix::Actor::start(wb), wb_obs)
}

impl Rig {
    /// Shards that take every frame, record it and complete its mark (as durability would).
    fn drain(&mut self) {
        for (shard, mut q) in self.queues.take().expect("queues").into_iter().enumerate() {
            let got = Arc::clone(&self.got);
            actix_rt::spawn(async move {
                while let Some(f) = q.recv().await.and_then(|input| input.into_frame()) {
                    got.lock().unwrap().push(Got {
                        shard,
                        did: f.did.clone(),
                        seq: f.cursor.seq(),
                        frame: f.frame.clone(),
                    });
                    f.cursor.complete();
                }
            });
        }
    }

    fn supervisor(&self, store: Arc<dyn HostStore>) -> InstrumentedAddr<HostSupervisor> {
        let obs = self
            .metrics
            .actor(HostSupervisor::NAME, HostSupervisor::MAILBOX);
        let sup = HostSupervisor::new(
            obs.clone(),
            store,
            Arc::new(AwcConnector::new(self.deps.clone())),
            HostSupervisorSettings {
                startup_spread: Duration::ZERO,
                status_flush_every: Duration::from_millis(100),
                ..HostSupervisorSettings::default()
            },
        )
        .with_cursors(self.pending.clone(), None);
        InstrumentedAddr::new(actix::Actor::start(sup), obs)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn seqs(&self) -> Vec<i64> {
        self.got().iter().map(|g| g.seq).collect()
    }

    async fn connected(&self, host: &str) -> bool {
        eventually(WAIT, || async {
            self.probes.lock().unwrap().contains_key(host)
        })
        .await
    }

    fn probe(&self, host: &str) -> rookery::actors::subscriber::SubscriberState {
        *self.probes.lock().unwrap()[host].lock().unwrap()
    }
}

fn did(i: i64) -> String {
    format!("did:plc:{:024}", i % 5)
}

fn pds() -> SimPds {
    let plc = SimPlc::start().expect("plc");
    SimPds::start(&plc, SimPdsConfig::default()).expect("pds")
}

#[actix_rt::test]
async fn routes_frames_to_their_shard_byte_identical_and_in_order() {
    let mut rig = rig(64);
    rig.drain();
    let pds = pds();
    for seq in 1..=30 {
        pds.push_raw(small_frame(&did(seq), seq));
    }
    let host = pds.hostname();
    let store = MemoryHosts::with(vec![record(1, &host, HostStatus::Active, 1)]);
    let sup = rig.supervisor(Arc::new(store.clone()));
    assert!(rig.connected(&host).await);
    for seq in 31..=40 {
        pds.push_raw(small_frame(&did(seq), seq));
    }
    assert!(
        eventually(WAIT, || async { rig.got().len() == 39 }).await,
        "{:?}",
        rig.seqs()
    );
    let got = rig.got();
    let mut per_did: HashMap<String, Vec<i64>> = HashMap::new();
    for g in &got {
        assert_eq!(g.shard, shard_of(&g.did, SHARDS), "owning shard");
        assert_eq!(g.frame, small_frame(&g.did, g.seq), "byte-identical");
        assert_eq!(g.did, did(g.seq));
        per_did.entry(g.did.clone()).or_default().push(g.seq);
    }
    for seqs in per_did.values() {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "in order per DID: {seqs:?}"
        );
    }
    let mut all: Vec<i64> = got.iter().map(|g| g.seq).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (2..=40).collect::<Vec<_>>(),
        "replay after cursor 1, then live"
    );
    assert_eq!(
        rig.pending.len().0,
        1,
        "the host's cursor is pending for the write-behind"
    );
    let v = view(&sup, &host).await;
    assert_eq!((v.status, v.live), (HostStatus::Active, true));
    sup.send(StopSupervisor).await.expect("stop");
}

#[actix_rt::test]
async fn seqs_that_do_not_increase_are_dropped() {
    let mut rig = rig(64);
    rig.drain();
    let pds = pds();
    let host = pds.hostname();
    let store = MemoryHosts::with(vec![record(1, &host, HostStatus::Active, 0)]);
    let sup = rig.supervisor(Arc::new(store));
    assert!(rig.connected(&host).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seq in [5, 5, 3, 6, 6, 7] {
        pds.push_raw(small_frame(&did(seq), seq));
    }
    assert!(
        eventually(WAIT, || async { rig.got().len() == 3 }).await,
        "{:?}",
        rig.seqs()
    );
    assert!(eventually(WAIT, || async { rig.probe(&host).non_increasing == 3 }).await);
    let mut seqs = rig.seqs();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![5, 6, 7]);
    sup.send(StopSupervisor).await.expect("stop");
}

#[actix_rt::test]
async fn a_relay_header_bans_the_host() {
    let rig = rig(64);
    let pds = pds();
    pds.set_relay_header(true);
    let host = pds.hostname();
    let store = MemoryHosts::with(vec![record(1, &host, HostStatus::Active, 0)]);
    let sup = rig.supervisor(Arc::new(store.clone()));
    assert!(
        eventually(WAIT, || async {
            view(&sup, &host).await.status == HostStatus::Banned
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(view(&sup, &host).await.dials, 1, "never redialled");
    assert_eq!(store.row(1).status, HostStatus::Banned);
    assert!(
        !rig.probes.lock().unwrap().contains_key(&host),
        "no frame was read"
    );
}

#[actix_rt::test]
async fn a_reset_pds_gives_future_cursor_then_live_without_a_cursor() {
    let mut rig = rig(64);
    rig.drain();
    let pds = pds();
    for seq in 1..=5 {
        pds.push_raw(small_frame(&did(seq), seq));
    }
    let host = pds.hostname();
    let store = MemoryHosts::with(vec![record(1, &host, HostStatus::Active, 1)]);
    let sup = rig.supervisor(Arc::new(store.clone()));
    assert!(eventually(WAIT, || async { rig.got().len() == 4 }).await);
    pds.reset();
    // Redial with cursor 5 → FutureCursor → idle, cursor reset, redial without a cursor.
    assert!(eventually(WAIT, || async { !store.resets.lock().unwrap().is_empty() }).await);
    assert_eq!(store.row(1).cursor, 0);
    assert!(
        eventually(WAIT, || async {
            let v = view(&sup, &host).await;
            v.dials >= 3 && v.phase == rookery::actors::host_supervisor::Phase::Connected
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    pds.push_raw(small_frame(&did(1), 1));
    assert!(
        eventually(WAIT, || async {
            view(&sup, &host).await.status == HostStatus::Active && rig.got().len() == 5
        })
        .await,
        "{:?} {:?}",
        view(&sup, &host).await,
        rig.seqs()
    );
    sup.send(StopSupervisor).await.expect("stop");
}

#[actix_rt::test]
async fn a_stopped_pds_fails_and_a_restarted_one_is_reconnected() {
    let mut rig = rig(64);
    rig.drain();
    let pds = pds();
    pds.push_raw(small_frame(&did(1), 1));
    let host = pds.hostname();
    let store = MemoryHosts::with(vec![record(1, &host, HostStatus::Active, 0)]);
    let sup = rig.supervisor(Arc::new(store.clone()));
    assert!(rig.connected(&host).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    pds.push_raw(small_frame(&did(2), 2));
    assert!(eventually(WAIT, || async { rig.got().len() == 1 }).await);
    pds.stop().await;
    assert!(
        eventually(WAIT, || async { view(&sup, &host).await.failures >= 2 }).await,
        "{:?}",
        view(&sup, &host).await
    );
    pds.restart().expect("restart");
    assert!(
        eventually(Duration::from_secs(20), || async {
            let v = view(&sup, &host).await;
            v.phase == rookery::actors::host_supervisor::Phase::Connected && v.dials >= 3
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    pds.push_raw(small_frame(&did(3), 3));
    assert!(
        eventually(WAIT, || async {
            let v = view(&sup, &host).await;
            v.failures == 0 && v.status == HostStatus::Active && rig.got().len() == 2
        })
        .await,
        "{:?} {:?}",
        view(&sup, &host).await,
        rig.seqs()
    );
    sup.send(StopSupervisor).await.expect("stop");
}

#[actix_rt::test]
async fn a_full_shard_queue_stops_reading_and_drops_nothing() {
    // One slot per shard and no shard reading yet.
    let mut rig = rig(1);
    let pds = pds();
    let host = pds.hostname();
    let store = MemoryHosts::with(vec![record(1, &host, HostStatus::Active, 0)]);
    let sup = rig.supervisor(Arc::new(store));
    assert!(rig.connected(&host).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let one_did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    for seq in 1..=50 {
        pds.push_raw(small_frame(one_did, seq));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let routed = rig.probe(&host).routed;
    assert!(
        routed <= 1,
        "the Subscriber waits on the full queue: {routed}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rig.probe(&host).routed,
        routed,
        "and reads nothing meanwhile"
    );
    rig.drain();
    assert!(
        eventually(WAIT, || async { rig.got().len() == 50 }).await,
        "{:?}",
        rig.seqs()
    );
    assert_eq!(
        rig.seqs(),
        (1..=50).collect::<Vec<_>>(),
        "nothing dropped, in order"
    );
    assert_eq!(rig.probe(&host).non_increasing, 0);
    sup.send(StopSupervisor).await.expect("stop");
}

/// A quiet host: subscribed, no event yet, so no cursor. What it publishes while the relay
/// is down is fetched from its outbox after the restart, not lost to a live-only dial.
#[actix_rt::test]
async fn a_quiet_host_loses_nothing_it_published_while_the_relay_was_down() {
    let database = test_cluster().fresh_database().await.expect("db");
    let db = Db::new(database.pg_config, DbSettings::default()).expect("pool");
    migrations::migrate(&db).await.expect("migrate");
    let mut rig = rig(64);
    rig.drain();
    let quiet = pds();
    let client = db.client().await.expect("client");
    client
        .execute(
            "INSERT INTO hosts (hostname, no_ssl, admin_added) VALUES ($1, true, true)",
            &[&quiet.hostname()],
        )
        .await
        .expect("host");
    let subscribed = || async {
        client
            .query_one(
                "SELECT subscribed_at IS NOT NULL, last_seq FROM hosts WHERE hostname = $1",
                &[&quiet.hostname()],
            )
            .await
            .map(|r| (r.get::<_, bool>(0), r.get::<_, i64>(1)))
            .expect("row")
    };
    let store: Arc<dyn HostStore> = Arc::new(PostgresHostStore::new(db.clone()));
    let sup = rig.supervisor(Arc::clone(&store));
    assert!(
        eventually(WAIT, || async { subscribed().await == (true, 0) }).await,
        "{:?}",
        subscribed().await
    );
    sup.send(StopSupervisor).await.expect("stop");
    for seq in 1..=2 {
        quiet.push_raw(small_frame(&did(seq), seq));
    }
    let sup = rig.supervisor(store);
    assert!(
        eventually(WAIT, || async { rig.got().len() == 2 }).await,
        "{:?}",
        rig.seqs()
    );
    assert_eq!(rig.seqs(), vec![1, 2], "fetched from cursor 0");
    sup.send(StopSupervisor).await.expect("stop");
}

#[actix_rt::test]
async fn a_restarted_supervisor_resumes_from_the_cursors_in_postgres() {
    let database = test_cluster().fresh_database().await.expect("db");
    let db = Db::new(database.pg_config, DbSettings::default()).expect("pool");
    migrations::migrate(&db).await.expect("migrate");
    let mut rig = rig(64);
    rig.drain();
    let (a, b) = (pds(), pds());
    for seq in 1..=6 {
        a.push_raw(small_frame(&did(seq), seq));
        b.push_raw(small_frame(&did(seq), seq));
    }
    let client = db.client().await.expect("client");
    for (host, status, last_seq) in [(a.hostname(), "active", 3i64), (b.hostname(), "banned", 0)] {
        client
            .execute(
                "INSERT INTO hosts (hostname, status, last_seq, no_ssl, admin_added) \
                 VALUES ($1, $2, $3, true, true)",
                &[&host, &status, &last_seq],
            )
            .await
            .expect("host");
    }
    let wb = postgres_write_behind(&rig.pending, &db, Duration::from_millis(100));

    let store: Arc<dyn HostStore> = Arc::new(PostgresHostStore::new(db.clone()));
    let sup = rig.supervisor(Arc::clone(&store));
    assert!(
        eventually(WAIT, || async { rig.got().len() == 3 }).await,
        "{:?}",
        rig.seqs()
    );
    assert_eq!(
        rig.seqs(),
        vec![4, 5, 6],
        "resumed after the stored cursor 3"
    );
    assert!(
        !rig.probes.lock().unwrap().contains_key(&b.hostname()),
        "banned: not dialled"
    );
    wb.send(FlushNow).await.expect("wb").expect("flushed");
    let row = client
        .query_one(
            "SELECT status, last_seq, last_connected_at IS NOT NULL FROM hosts WHERE hostname = $1",
            &[&a.hostname()],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, i64>(1), 6);
    assert!(
        eventually(WAIT, || async {
            let row = client
                .query_one(
                    "SELECT last_connected_at IS NOT NULL FROM hosts WHERE hostname = $1",
                    &[&a.hostname()],
                )
                .await
                .expect("row");
            row.get::<_, bool>(0)
        })
        .await,
        "status write batched in"
    );
    sup.send(StopSupervisor).await.expect("stop");
    let banned: String = client
        .query_one(
            "SELECT status FROM hosts WHERE hostname = $1",
            &[&b.hostname()],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(banned, "banned");

    // A new supervisor (a relay restart) resumes from 6 without any requestCrawl.
    for seq in 7..=8 {
        a.push_raw(small_frame(&did(seq), seq));
    }
    let sup = rig.supervisor(store);
    assert!(
        eventually(WAIT, || async { rig.got().len() == 5 }).await,
        "{:?}",
        rig.seqs()
    );
    assert_eq!(rig.seqs(), vec![4, 5, 6, 7, 8]);
    let list = sup.send(ListConnections).await.expect("list");
    assert_eq!(list.len(), 2);
    sup.send(StopSupervisor).await.expect("stop");
}

#[actix_rt::test]
async fn a_kill_takes_effect_while_waiting_on_a_full_shard() {
    let rig = rig(1);
    let pds = pds();
    let host = pds.hostname();
    let store = MemoryHosts::with(vec![record(1, &host, HostStatus::Active, 0)]);
    let sup = rig.supervisor(Arc::new(store));
    assert!(rig.connected(&host).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let one_did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    for seq in 1..=5 {
        pds.push_raw(small_frame(one_did, seq));
    }
    assert!(eventually(WAIT, || async { rig.probe(&host).routed == 1 }).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        sup.send(rookery::actors::host_supervisor::KillConnection {
            hostname: host.clone()
        })
        .await
        .unwrap()
    );
    assert!(
        eventually(WAIT, || async {
            sup.send(rookery::actors::host_supervisor::GetSupervisorState)
                .await
                .unwrap()
                .stale_exits
                == 1
        })
        .await,
        "the blocked Subscriber stopped"
    );
    assert!(
        rig.pending.is_empty(),
        "no frame was completed: the cursor did not move"
    );
    sup.send(StopSupervisor).await.expect("stop");
}

#[actix_rt::test]
async fn over_the_rate_limit_events_are_delayed_not_dropped() {
    let mut rig = rig(1024);
    rig.drain();
    let pds = pds();
    let host = pds.hostname();
    // account_limit 0: 50 events per second.
    let mut rec = record(1, &host, HostStatus::Active, 0);
    rec.account_limit = 0;
    let store = MemoryHosts::with(vec![rec]);
    let sup = rig.supervisor(Arc::new(store));
    assert!(rig.connected(&host).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    for seq in 1..=120 {
        pds.push_raw(small_frame(&did(seq), seq));
    }
    assert!(eventually(WAIT, || async { rig.got().len() == 120 }).await);
    let took = started.elapsed();
    // 50 at once, then 70 more at 50 per second.
    assert!(took >= Duration::from_millis(1_300), "{took:?}");
    let mut seqs = rig.seqs();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=120).collect::<Vec<_>>());
    assert!(
        rig.probe(&host).rate_limited >= 60,
        "{:?}",
        rig.probe(&host)
    );
    sup.send(StopSupervisor).await.expect("stop");
}

#[actix_rt::test]
async fn postgres_status_writes_never_unban_and_a_future_cursor_reset_sticks() {
    use rookery::actors::host_supervisor::{NewHost, StatusWrite};
    use rookery::actors::upstream_cursor::HostCursor;
    let database = test_cluster().fresh_database().await.expect("db");
    let db = Db::new(database.pg_config, DbSettings::default()).expect("pool");
    migrations::migrate(&db).await.expect("migrate");
    let store = PostgresHostStore::new(db.clone());
    let client = db.client().await.expect("client");

    // The batched status statement: `banned` stays, everything else is written.
    let a = store
        .add_host(NewHost {
            hostname: "a.example".into(),
            no_ssl: false,
            admin_added: false,
            ssrf_exempt: false,
            account_limit: None,
        })
        .await
        .expect("add");
    let again = store
        .add_host(NewHost {
            hostname: "a.example".into(),
            no_ssl: false,
            admin_added: false,
            ssrf_exempt: false,
            account_limit: None,
        })
        .await
        .expect("add again");
    assert_eq!(a.id, again.id, "adding is idempotent");
    client
        .execute(
            "INSERT INTO hosts (hostname, status) VALUES ('b.example', 'banned')",
            &[],
        )
        .await
        .expect("b");
    let hosts = store.load_hosts().await.expect("load");
    let b = hosts.iter().find(|h| h.hostname == "b.example").expect("b");
    assert_eq!(b.status, HostStatus::Banned);
    let writes = [(a.id, HostStatus::Offline), (b.id, HostStatus::Active)]
        .map(|(host_id, status)| StatusWrite {
            host_id,
            status,
            failures: 15,
            connected: true,
            subscribed: true,
        })
        .to_vec();
    assert!(!a.subscribed, "a new host is not subscribed");
    assert_eq!(store.write_statuses(writes).await.expect("write"), 2);
    let rows = store.load_hosts().await.expect("load");
    assert!(rows.iter().all(|h| h.subscribed), "a handshake is stored");
    let status = |id: i64| {
        rows.iter()
            .find(|h| h.id == id)
            .map(|h| (h.status, h.failures))
    };
    assert_eq!(status(a.id), Some((HostStatus::Offline, 15)));
    assert_eq!(
        status(b.id),
        Some((HostStatus::Banned, 15)),
        "never unbanned by a write"
    );
    store.unban(b.id).await.expect("unban");
    let rows = store.load_hosts().await.expect("load");
    let b_row = rows.iter().find(|h| h.id == b.id).expect("b");
    assert_eq!((b_row.status, b_row.failures), (HostStatus::Active, 0));
    // A cursor reset forgets the subscription too (the host is dialled live after it).
    store.reset_cursor(b.id).await.expect("reset");
    let rows = store.load_hosts().await.expect("load");
    let subscribed = |id: i64| rows.iter().find(|h| h.id == id).map(|h| h.subscribed);
    assert_eq!(
        (subscribed(a.id), subscribed(b.id)),
        (Some(true), Some(false))
    );

    // FutureCursor from a real PDS against a real write-behind: the old connection's late
    // mark cannot raise the reset cursor, and the new connection's cursor is written.
    let mut rig = rig(64);
    rig.drain();
    let pds = pds();
    for seq in 1..=3 {
        pds.push_raw(small_frame(&did(seq), seq));
    }
    let row = client
        .query_one(
            "INSERT INTO hosts (hostname, last_seq, no_ssl) VALUES ($1, 500, true) RETURNING id",
            &[&pds.hostname()],
        )
        .await
        .expect("host");
    let id: i64 = row.get(0);
    let late = HostCursor::new(id, 500, rig.pending.clone()).begin(501);
    let wb = postgres_write_behind(&rig.pending, &db, Duration::from_millis(50));
    let obs = rig
        .metrics
        .actor(HostSupervisor::NAME, HostSupervisor::MAILBOX);
    let sup = HostSupervisor::new(
        obs.clone(),
        Arc::new(store.clone()),
        Arc::new(AwcConnector::new(rig.deps.clone())),
        HostSupervisorSettings {
            startup_spread: Duration::ZERO,
            status_flush_every: Duration::from_millis(50),
            ..HostSupervisorSettings::default()
        },
    )
    .with_cursors(rig.pending.clone(), Some(wb.clone()));
    let sup = InstrumentedAddr::new(actix::Actor::start(sup), obs);
    let last_seq = || async {
        client
            .query_one("SELECT last_seq, status FROM hosts WHERE id = $1", &[&id])
            .await
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
            .expect("row")
    };
    assert!(
        eventually(WAIT, || async {
            last_seq().await == (0, "idle".to_string())
        })
        .await,
        "{:?}",
        last_seq().await
    );
    late.complete();
    wb.send(FlushNow).await.expect("wb").expect("flush");
    assert_eq!(
        last_seq().await.0,
        0,
        "the old connection's mark did not undo the reset"
    );
    // Redialled without a cursor (live only): the next event moves the cursor from 0.
    assert!(
        eventually(WAIT, || async {
            view(&sup, &pds.hostname()).await.dials >= 2
                && rig.probes.lock().unwrap().contains_key(&pds.hostname())
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    pds.push_raw(small_frame(&did(9), 9));
    assert!(
        eventually(WAIT, || async {
            last_seq().await == (9, "active".to_string())
        })
        .await,
        "{:?}",
        last_seq().await
    );
    sup.send(StopSupervisor).await.expect("stop");
}
