//! The coverage checker against a whole relay: simulated hosts and PLC → the ingest pipeline
//! (Subscribers, ValidatorShards, Sequencer, Persister, a real Postgres) → the Firehose and its
//! `subscribeRepos` route. The relay re-sequences every event and rewrites `#account`; the
//! checker must still match every valid event exactly once, see the one the relay must reject
//! never delivered, and stay clean across a reconnect with its cursor.

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use rookery::actors::firehose::{FirehoseSettings, start_firehose};
use rookery::actors::obs::ActorMetrics;
use rookery::actors::validator_shard::system_clock;
use rookery::actors::{PipelineSettings, start_pipeline};
use rookery::atproto::frame::peek_event;
use rookery::atproto::keys::Curve;
use rookery::http::{self, ListenerSettings};
use rookery::sim::checker::{Checker, ExpectationFeed, Expectations, Published, RunEnd, Stop};
use rookery::sim::{PlcEntry, SimNetwork, SimPds, SimPdsConfig, install_crypto_provider};
use rookery::store::event_log::{EventLog, EventLogConfig};
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbSettings};
use rookery::testkit::postgres::test_cluster;
use rookery::testkit::repo::{Change, SigningRepo, commit_frame, record_path};
use tokio::time::Instant;

use crate::common::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// Sends the frames `host` published since the last call to the checker, stamped now.
struct Recorder {
    feed: ExpectationFeed,
    /// Per host, the head already recorded.
    heads: Vec<u64>,
}

impl Recorder {
    async fn record(&mut self, index: usize, host: &SimPds, valid: bool) -> usize {
        let after = self.heads[index];
        let now = Instant::now();
        let name: Arc<str> = host.hostname().into();
        let mut n = 0;
        for frame in host.published() {
            let seq = peek_event(&frame).unwrap().seq.unwrap();
            if seq <= after {
                continue;
            }
            self.heads[index] = self.heads[index].max(seq);
            self.feed
                .send(Published {
                    host: name.clone(),
                    frame,
                    published_at: now,
                    valid,
                })
                .await
                .unwrap();
            n += 1;
        }
        n
    }
}

#[actix_rt::test]
async fn a_whole_relay_delivers_every_valid_event_once_and_never_the_forged_one() {
    install_crypto_provider();
    let net = SimNetwork::start(2, SimPdsConfig::default()).unwrap();
    let database = test_cluster().fresh_database().await.unwrap();
    let db = Db::new(database.pg_config, DbSettings::default()).unwrap();
    migrations::migrate(&db).await.unwrap();
    let client = db.client().await.unwrap();
    for host in &net.hosts {
        client
            .execute(
                "INSERT INTO hosts (hostname, no_ssl, admin_added) VALUES ($1, true, true)",
                &[&host.hostname()],
            )
            .await
            .unwrap();
    }
    let mut settings = PipelineSettings {
        shards: 2,
        ..PipelineSettings::default()
    };
    settings.resolver.plc_url = net.plc.url();
    settings.resolver.allow_localhost_did_web = true;
    settings.supervisor.startup_spread = Duration::ZERO;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(EventLogConfig::new(dir.path())).unwrap().0;
    let registry = Registry::new();
    let metrics = ActorMetrics::register(&registry).unwrap();
    let pipeline = start_pipeline(log, db, settings, system_clock(), &metrics, &registry)
        .await
        .unwrap();
    let firehose = start_firehose(
        pipeline.ingest.reader.clone(),
        pipeline.ingest.durable_head.clone(),
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
    let connected = eventually(WAIT, || async {
        net.hosts.iter().all(|h| h.live_connections() > 0)
    })
    .await;
    assert!(connected, "the relay did not connect to every host");

    let mut checker = Checker::connect(addrs[0], Some(0), Expectations::new())
        .await
        .unwrap();
    let mut recorder = Recorder {
        feed: checker.feed(),
        heads: vec![0; net.hosts.len()],
    };
    let (a, b) = (&net.hosts[0], &net.hosts[1]);
    let alice = a.create_account().unwrap();
    let bob = b.create_account().unwrap();
    let carol = a.create_account_with(5).unwrap();
    for i in 0..4 {
        for (host, did) in [(a, &alice), (b, &bob), (a, &carol)] {
            host.commit(did, &[Change::Create(record_path(100 + i))])
                .unwrap();
        }
    }
    b.sync(&bob).unwrap();
    a.change_handle(&alice, "alice2.test").unwrap();
    a.deactivate(&carol).unwrap();
    let mut valid = recorder.record(0, a, true).await;
    valid += recorder.record(1, b, true).await;

    // Halfway: reconnect with the cursor, then more events.
    let end = checker
        .run_until(
            Instant::now() + Duration::from_millis(300),
            Stop::AtDeadline,
        )
        .await;
    assert_eq!(end, RunEnd::Deadline);
    checker.reconnect().await.unwrap();
    for i in 0..3 {
        a.commit(&alice, &[Change::Update(record_path(100 + i))])
            .unwrap();
        b.commit(&bob, &[Change::Delete(record_path(100 + i))])
            .unwrap();
    }
    valid += recorder.record(0, a, true).await;
    valid += recorder.record(1, b, true).await;

    // A forged commit: mallory's DID names host b and a key the forger does not hold.
    let mallory = net.plc.new_did();
    let registered = SigningRepo::new(&mallory, Curve::K256, 1, 1);
    net.plc.register(
        &mallory,
        PlcEntry {
            handle: "mallory.test".into(),
            signing_key: registered.public(),
            pds_endpoint: b.endpoint(),
            tombstoned: false,
        },
    );
    let mut forger = SigningRepo::new(&mallory, Curve::K256, 1, 2);
    let forged = forger.commit(&[Change::Create(record_path(1))]);
    b.push_raw(commit_frame(&forged, b.head_seq() as i64 + 1));
    assert_eq!(recorder.record(1, b, false).await, 1);
    // A valid event after it, so the run cannot end before the forged one was decided.
    b.commit(&bob, &[Change::Create(record_path(999))]).unwrap();
    valid += recorder.record(1, b, true).await;

    let end = checker
        .run_until(Instant::now() + WAIT, Stop::WhenAllSeen)
        .await;
    let report = checker.report();
    assert_eq!(end, RunEnd::AllSeen, "{report:?}");
    // Anything still in flight arrives within a moment.
    checker
        .run_until(
            Instant::now() + Duration::from_millis(300),
            Stop::AtDeadline,
        )
        .await;
    let report = checker.report();
    assert_eq!(report.valid_published, valid as u64);
    assert_eq!(report.delivered, valid as u64, "{report:?}");
    assert_eq!(report.invalid_published, 1);
    assert_eq!(
        (
            report.missing,
            report.duplicated,
            report.out_of_order,
            report.invalid_delivered,
            report.unexpected,
            report.undecodable,
        ),
        (0, 0, 0, 0, 0, 0),
        "{report:?}"
    );
    assert_eq!(report.reconnects, 1);
    assert!(report.latency_max_ms > 0.0 && report.latency_max_ms < WAIT.as_millis() as f64);
    net.stop().await;
}
