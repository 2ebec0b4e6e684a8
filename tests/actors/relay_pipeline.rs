//! The whole ingest path, end to end: simulated PDS hosts and PLC on 127.0.0.1 → HostSupervisor
//! → Subscribers → ValidatorShards (resolver, account store, validation, rewrites) →
//! Sequencer → Persister → the event log on disk, with a real Postgres.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::Registry;
use rookery::actors::obs::ActorMetrics;
use rookery::actors::sequencer::{Drain, GetSequencerState};
use rookery::actors::validator_shard::{ShardState, WallClock, system_clock};
use rookery::actors::write_behind::FlushNow;
use rookery::actors::{Pipeline, PipelineSettings, start_pipeline};
use rookery::atproto::frame::{self, Frame};
use rookery::atproto::keys::PublicKey;
use rookery::atproto::validate::ValidationPolicy;
use rookery::sim::{PlcEntry, SimPds, SimPdsConfig, SimPlc, install_crypto_provider};
use rookery::store::event_log::LogRecord;
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbSettings};
use rookery::testkit::postgres::test_cluster;
use rookery::testkit::repo::{Change, SigningRepo};
use serde_json::Value;

use crate::common::vectors;
use crate::support::{eventually, open_log, read_all};

const WAIT: Duration = Duration::from_secs(20);

/// A relay on a temp dir and a fresh database, reading the given hosts.
pub struct Relay {
    pub pipeline: Option<Pipeline>,
    /// Straight to the test database (setup and assertions).
    pub db: Db,
    /// The pipeline's own pool to the same database: direct, or through a route a test can
    /// cut ([`Relay::start_through`]).
    pub pipeline_db: Db,
    pub dir: tempfile::TempDir,
    pub registry: Registry,
}

/// Test settings: fast status flushes and retries, a short hold.
pub fn settings(plc: &SimPlc) -> PipelineSettings {
    let mut s = PipelineSettings {
        shards: 2,
        ..PipelineSettings::default()
    };
    s.resolver.plc_url = plc.url();
    s.resolver.allow_localhost_did_web = true;
    s.resolver.request_timeout = Duration::from_secs(2);
    s.supervisor.startup_spread = Duration::ZERO;
    s.supervisor.status_flush_every = Duration::from_millis(100);
    s.ingest.write_behind.flush_every = Duration::from_millis(200);
    s.shard.hold_for = Duration::from_secs(3);
    s.shard.retry_after = Duration::from_millis(200);
    s
}

impl Relay {
    /// Registers `hosts` (admin-added, `ws://`) and starts the pipeline.
    pub async fn start(hosts: &[&SimPds], settings: PipelineSettings, clock: WallClock) -> Relay {
        Relay::start_through(hosts, settings, clock, |direct| direct).await
    }

    /// Like [`Relay::start`], but the pipeline connects to the database with the settings
    /// `route` makes of the direct ones (e.g. through a proxy the test can cut), while
    /// [`Relay::db`] stays direct.
    pub async fn start_through(
        hosts: &[&SimPds],
        settings: PipelineSettings,
        clock: WallClock,
        route: impl FnOnce(tokio_postgres::Config) -> tokio_postgres::Config,
    ) -> Relay {
        install_crypto_provider();
        let database = test_cluster().fresh_database().await.expect("db");
        let pipeline_db =
            Db::new(route(database.pg_config.clone()), DbSettings::default()).expect("pool");
        let db = Db::new(database.pg_config, DbSettings::default()).expect("pool");
        migrations::migrate(&db).await.expect("migrate");
        let client = db.client().await.expect("client");
        for host in hosts {
            client
                .execute(
                    "INSERT INTO hosts (hostname, no_ssl, admin_added) VALUES ($1, true, true)",
                    &[&host.hostname()],
                )
                .await
                .expect("host");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut relay = Relay {
            pipeline: None,
            db,
            pipeline_db,
            dir,
            registry: Registry::new(),
        };
        relay.restart(settings, clock).await;
        relay
    }

    /// Starts the pipeline on the relay's data dir and database (again).
    pub async fn restart(&mut self, settings: PipelineSettings, clock: WallClock) {
        self.registry = Registry::new();
        let metrics = ActorMetrics::register(&self.registry).expect("metrics");
        let pipeline = start_pipeline(
            open_log(self.dir.path()),
            self.pipeline_db.clone(),
            settings,
            clock,
            &metrics,
            &self.registry,
        )
        .await
        .expect("pipeline");
        self.pipeline = Some(pipeline);
    }

    pub fn pipeline(&self) -> &Pipeline {
        self.pipeline.as_ref().expect("running")
    }

    pub fn shard_states(&self) -> Vec<ShardState> {
        self.pipeline().shards.states()
    }

    /// Waits until the shards decided `n` more frames than at `since`, then until everything
    /// they forwarded is durable.
    pub async fn wait_settled(&self, n: u64) {
        let ok = eventually(WAIT, || async {
            let states = self.shard_states();
            let decided: u64 = states.iter().map(|s| s.forwarded + s.dropped).sum();
            let forwarded: u64 = states.iter().map(|s| s.forwarded).sum();
            let sequenced = self
                .pipeline()
                .ingest
                .sequencer
                .send(GetSequencerState)
                .await
                .expect("sequencer")
                .events_sequenced;
            decided >= n && sequenced >= forwarded
        })
        .await;
        if !ok {
            let sup = self
                .pipeline()
                .supervisor
                .send(rookery::actors::host_supervisor::ListConnections)
                .await;
            panic!("not settled: {:?}\nhosts: {sup:?}", self.shard_states());
        }
        self.pipeline()
            .ingest
            .sequencer
            .send(Drain)
            .await
            .expect("drain");
    }

    /// Waits until every host in `hosts` has a live connection from this relay.
    pub async fn wait_connected(&self, hosts: &[&SimPds]) {
        let ok = eventually(WAIT, || async {
            hosts.iter().all(|h| h.live_connections() > 0)
        })
        .await;
        assert!(ok, "hosts not connected");
    }

    pub fn log(&self) -> Vec<LogRecord> {
        read_all(&self.pipeline().ingest.reader, 0)
    }

    pub fn dropped(&self, reason: &str) -> u64 {
        self.pipeline().shard_metrics.dropped(reason)
    }

    /// Writes the pending cursors and account state to Postgres now.
    pub async fn flush(&self) {
        self.pipeline()
            .ingest
            .write_behind
            .send(FlushNow)
            .await
            .expect("write-behind")
            .expect("flushed");
    }

    /// `hosts.id` of `host`.
    pub async fn host_id(&self, host: &SimPds) -> i64 {
        let client = self.db.client().await.expect("client");
        client
            .query_one(
                "SELECT id FROM hosts WHERE hostname = $1",
                &[&host.hostname()],
            )
            .await
            .expect("host row")
            .get(0)
    }

    /// `accounts` of `did` as Postgres has it now: `(host_id, local_status, upstream_status)`.
    pub async fn account_row(&self, did: &str) -> Option<(i64, String, String)> {
        let client = self.db.client().await.expect("client");
        client
            .query_opt(
                "SELECT host_id, local_status, upstream_status FROM accounts WHERE did = $1",
                &[&did],
            )
            .await
            .expect("accounts")
            .map(|row| (row.get(0), row.get(1), row.get(2)))
    }

    /// `account_sync_state.rev` of `did` as Postgres has it now.
    pub async fn stored_rev(&self, did: &str) -> Option<String> {
        let client = self.db.client().await.expect("client");
        client
            .query_opt(
                "SELECT s.rev FROM account_sync_state s JOIN accounts a USING (uid) \
                 WHERE a.did = $1",
                &[&did],
            )
            .await
            .expect("account_sync_state")
            .map(|row| row.get(0))
    }

    /// The log records of `did`, decoded.
    pub fn frames_of(&self, did: &str) -> Vec<Frame> {
        self.log()
            .iter()
            .map(|r| frame::decode_frame(&r.body).expect("stored frames decode"))
            .filter(|f| frame_did(f) == Some(did))
            .collect()
    }

    pub async fn stop(&mut self) {
        if let Some(p) = self.pipeline.take() {
            p.shutdown().await;
        }
    }
}

/// The account a stored frame is about.
pub fn frame_did(f: &Frame) -> Option<&str> {
    match f {
        Frame::Commit(c) => Some(&c.repo),
        Frame::Sync(s) => Some(&s.did),
        Frame::Identity(i) => Some(&i.did),
        Frame::Account(a) => Some(&a.did),
        _ => None,
    }
}

/// A wall clock pinned at `micros`.
pub fn pinned(micros: u64) -> WallClock {
    Arc::new(move || micros)
}

// ------------------------------------------------------------------------------------------
// The indigo relay scenarios through a simulated PDS

/// 2025-04-17T00:00:00Z: after every rev in the relay scenarios.
const SCENARIO_NOW: u64 = 1_744_848_000_000_000;

/// Registers the scenario's accounts in `plc` with `pds` as their host.
fn register_accounts(scenario: &Value, plc: &SimPlc, pds: &SimPds) {
    for account in scenario["accounts"].as_array().expect("accounts") {
        let id = &account["identity"];
        let key = id["keys"]["atproto"]["publicKeyMultibase"]
            .as_str()
            .expect("key");
        let handle = id["alsoKnownAs"][0]
            .as_str()
            .and_then(|a| a.strip_prefix("at://"))
            .expect("handle");
        plc.register(
            id["did"].as_str().expect("did"),
            PlcEntry {
                handle: handle.to_string(),
                signing_key: PublicKey::from_multikey(key).expect("multikey"),
                pds_endpoint: pds.endpoint(),
                tombstoned: false,
            },
        );
    }
}

#[actix_rt::test]
async fn every_indigo_scenario_reaches_the_log_exactly_as_expected() {
    for name in vectors::RELAY_SCENARIOS {
        let scenario = vectors::read_json(&format!("indigo/cmd/relay/testing/testdata/{name}"));
        let plc = SimPlc::start().expect("plc");
        let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
        register_accounts(&scenario, &plc, &pds);
        let messages: Vec<(Bytes, bool)> = scenario["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                (
                    Bytes::from(vectors::frame_bytes(&m["frame"])),
                    m["drop"].as_bool().expect("drop"),
                )
            })
            .collect();
        // The Subscriber drops non-increasing upstream seqs before any shard sees them.
        let mut last = 0;
        let mut reach_shards = 0;
        for (msg, _) in &messages {
            let seq = frame::peek_event(msg).expect("peek").seq.expect("seq");
            if seq > last {
                reach_shards += 1;
                last = seq;
            }
        }
        let mut s = settings(&plc);
        if scenario["lenient"].as_bool().expect("lenient") {
            s.shard.policy = ValidationPolicy::lenient();
        }
        let mut relay = Relay::start(&[&pds], s, pinned(SCENARIO_NOW)).await;
        relay.wait_connected(&[&pds]).await;
        for (msg, _) in &messages {
            pds.push_raw(msg.clone());
        }
        relay.wait_settled(reach_shards).await;
        let log = relay.log();

        let expected: Vec<&Bytes> = messages
            .iter()
            .filter(|(_, drop)| !drop)
            .map(|(m, _)| m)
            .collect();
        assert_eq!(
            log.len(),
            expected.len(),
            "{name}: every frame not marked drop is stored once, and nothing else"
        );
        for (i, (record, want)) in log.iter().zip(expected).enumerate() {
            assert_eq!(record.seq, i as u64 + 1, "{name}: seqs from 1, no gap");
            let want_bytes = frame::resequence(want, record.seq as i64).expect("reseq");
            match frame::decode_frame(&record.body).expect("stored frames decode") {
                // `#account` is re-emitted with the relay's computed values, which for these
                // accounts are the PDS's.
                Frame::Account(got) => {
                    let Frame::Account(sent) =
                        frame::decode_frame(&Bytes::from(want_bytes)).expect("decode")
                    else {
                        panic!("{name} #{i}: kinds differ");
                    };
                    assert_eq!(got, sent, "{name} #{i}");
                }
                _ => assert_eq!(
                    record.body.as_ref(),
                    want_bytes.as_slice(),
                    "{name} #{i}: byte-identical apart from seq"
                ),
            }
        }
        relay.stop().await;
        pds.stop().await;
        plc.stop().await;
    }
}

#[actix_rt::test]
async fn a_relay_restarted_on_its_data_resumes_without_duplicates_or_reused_seqs() {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let mut relay = Relay::start(&[&pds], settings(&plc), system_clock()).await;
    relay.wait_connected(&[&pds]).await;
    let accounts: Vec<String> = (0..4)
        .map(|_| pds.create_account().expect("account"))
        .collect();
    for (i, did) in accounts.iter().enumerate() {
        pds.commit(did, &[Change::Create(format!("app.bsky.feed.post/a{i}"))])
            .expect("commit");
    }
    let upstream = pds.head_seq();
    relay.wait_settled(upstream).await;
    let first = relay.log();
    assert_eq!(
        first.len() as u64,
        upstream,
        "every event of the simulated host is stored"
    );
    relay.stop().await;

    // More events while the relay is down; a restart resumes from the stored cursor.
    for did in &accounts {
        pds.commit(did, &[Change::Create("app.bsky.feed.post/b".to_string())])
            .expect("commit");
    }
    relay.restart(settings(&plc), system_clock()).await;
    relay.wait_settled(accounts.len() as u64).await;
    let all = relay.log();
    assert_eq!(all.len() as u64, pds.head_seq(), "the new events once each");
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=pds.head_seq()).collect::<Vec<_>>(),
        "no seq reused or skipped"
    );
    assert_eq!(
        relay.dropped("stale-rev"),
        0,
        "resumed from the cursor, not from the start"
    );
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}

#[actix_rt::test]
async fn account_state_lost_before_its_write_behind_is_rebuilt_from_the_log_tail() {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let mut relay = Relay::start(&[&pds], settings(&plc), system_clock()).await;
    relay.wait_connected(&[&pds]).await;
    let accounts: Vec<String> = (0..3)
        .map(|_| pds.create_account().expect("account"))
        .collect();
    // Account creation (#identity, #account, #sync each) ends here; commits follow.
    let created = pds.head_seq() as i64;
    for round in 0..3 {
        for did in &accounts {
            pds.commit(
                did,
                &[Change::Create(format!("app.bsky.feed.post/r{round}"))],
            )
            .expect("commit");
        }
    }
    relay.wait_settled(pds.head_seq()).await;
    let stored = relay.log().len();
    assert_eq!(stored as u64, pds.head_seq());
    relay.stop().await;

    // As after a crash between durable events and their account statement and cursor: the
    // checkpoint, the sync state and the cursor are behind the log. (A replayed `#sync` below
    // the stored rev would be a rollback, passed and applied by design, PROTOCOL.md §10: the
    // cursor goes back over commits only.)
    let client = relay.db.client().await.expect("client");
    client
        .batch_execute(
            "UPDATE relay_checkpoint SET account_state_seq = 0; DELETE FROM account_sync_state",
        )
        .await
        .expect("roll back");
    client
        .execute("UPDATE hosts SET last_seq = $1", &[&created])
        .await
        .expect("cursor back");
    relay.restart(settings(&plc), system_clock()).await;
    let rows = client
        .query(
            "SELECT a.did, s.rev FROM accounts a JOIN account_sync_state s ON s.uid = a.uid",
            &[],
        )
        .await
        .expect("state");
    assert_eq!(rows.len(), accounts.len(), "every account's state rebuilt");
    for row in rows {
        let did: String = row.get(0);
        let rev: String = row.get(1);
        let want = pds.repo_state(&did).expect("repo").rev.to_string();
        assert_eq!(rev, want, "{did}: the log's last rev");
    }
    // The upstream replays every commit after the cursor: all already stored, all dropped by
    // rev, so none is stored twice.
    let replayed = pds.head_seq() - created as u64;
    relay.wait_settled(replayed).await;
    let commits = |log: &[LogRecord]| {
        log.iter()
            .filter(|r| matches!(frame::decode_frame(&r.body), Ok(Frame::Commit(_))))
            .count()
    };
    let all = relay.log();
    assert_eq!(commits(&all), 3 * accounts.len(), "no commit stored twice");
    assert_eq!(
        relay.dropped("stale-rev"),
        3 * accounts.len() as u64,
        "the replayed commits were retransmissions"
    );
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}

/// A signed commit of `repo` as a frame with upstream seq `seq`; `break_inversion` gives it a
/// `prevData` that does not match its ops (the signature stays valid: `prevData` is not in
/// the signed block).
fn commit_frame(repo: &mut SigningRepo, path: &str, seq: u64, break_inversion: bool) -> Bytes {
    let mut c = repo.commit(&[Change::Create(path.to_string())]);
    c.seq = seq as i64;
    if break_inversion {
        c.prev_data = Some(rookery::testkit::repo::record("not the tree").0);
    }
    Bytes::from(frame::encode_frame(&Frame::Commit(Box::new(c))).expect("encode"))
}

#[actix_rt::test]
async fn a_host_set_to_warn_only_passes_inversion_failures_and_no_other_host_does() {
    use rookery::actors::host_supervisor::{ListConnections, SetInversionWarnOnly};
    let plc = SimPlc::start().expect("plc");
    let lax = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let strict = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let relay = Relay::start(&[&lax, &strict], settings(&plc), system_clock()).await;
    relay.wait_connected(&[&lax, &strict]).await;
    let set = relay
        .pipeline()
        .supervisor
        .send(SetInversionWarnOnly {
            hostname: lax.hostname(),
            warn_only: true,
        })
        .await
        .expect("supervisor");
    assert!(set, "the override is stored");
    let hosts = relay
        .pipeline()
        .supervisor
        .send(ListConnections)
        .await
        .expect("supervisor");
    let shown: Vec<(String, bool)> = hosts
        .iter()
        .map(|h| (h.hostname.clone(), h.inversion_warn_only))
        .collect();
    assert!(shown.contains(&(lax.hostname(), true)), "{shown:?}");
    assert!(shown.contains(&(strict.hostname(), false)), "{shown:?}");
    let stored: bool = relay
        .db
        .client()
        .await
        .expect("client")
        .query_one(
            "SELECT inversion_warn_only FROM hosts WHERE hostname = $1",
            &[&lax.hostname()],
        )
        .await
        .expect("row")
        .get(0);
    assert!(stored);

    let start = rookery::actors::validator_shard::system_clock()() - 3_600_000_000;
    for pds in [&lax, &strict] {
        let did = plc.new_did();
        let mut repo = SigningRepo::new(&did, rookery::atproto::keys::Curve::K256, 10, start);
        plc.register(
            &did,
            PlcEntry {
                handle: format!("u{}.sim.test", pds.port()),
                signing_key: repo.public(),
                pds_endpoint: pds.endpoint(),
                tombstoned: false,
            },
        );
        pds.push_raw(commit_frame(&mut repo, "app.bsky.feed.post/a", 1, false));
        pds.push_raw(commit_frame(&mut repo, "app.bsky.feed.post/b", 2, true));
    }
    relay.wait_settled(4).await;
    assert_eq!(
        relay.log().len(),
        3,
        "both good commits and the lax host's bad one"
    );
    assert_eq!(
        relay
            .pipeline()
            .shard_metrics
            .inversions("failed-warn-only"),
        1
    );
    assert_eq!(
        relay.dropped("inversion-root-mismatch"),
        1,
        "the strict host's"
    );
    let mut relay = relay;
    relay.stop().await;
    lax.stop().await;
    strict.stop().await;
    plc.stop().await;
}

#[actix_rt::test]
async fn a_missed_reactivation_is_found_by_asking_the_host_and_the_commit_is_stored() {
    let plc = SimPlc::start().expect("plc");
    let pds = SimPds::start(&plc, SimPdsConfig::default()).expect("pds");
    let relay = Relay::start(&[&pds], settings(&plc), system_clock()).await;
    relay.wait_connected(&[&pds]).await;
    let did = pds.create_account().expect("account");
    pds.deactivate(&did).expect("deactivate");
    relay.wait_settled(4).await;
    // The PDS reactivates the account but the relay never sees the #account (lost upstream):
    // the next commit comes from an account the relay holds inactive. It asks the host's
    // getRepoStatus once, learns it is active, and stores the commit.
    pds.set_status_silently(&did, true, None)
        .expect("reactivate");
    pds.commit(&did, &[Change::Create("app.bsky.feed.post/back".into())])
        .expect("commit");
    relay.wait_settled(5).await;
    assert_eq!(relay.dropped("account-inactive"), 0, "not dropped");
    let states = relay.shard_states();
    assert_eq!(states.iter().map(|s| s.upstream_rechecks).sum::<u64>(), 1);
    let last = relay.log().pop().expect("stored");
    assert!(
        matches!(frame::decode_frame(&last.body), Ok(Frame::Commit(_))),
        "the commit is stored"
    );
    // The status learned this way reaches Postgres with the commit's state.
    let flushed = eventually(WAIT, || async {
        relay
            .db
            .client()
            .await
            .expect("client")
            .query_one(
                "SELECT upstream_status FROM accounts WHERE did = $1",
                &[&did],
            )
            .await
            .expect("row")
            .get::<_, String>(0)
            == "active"
    })
    .await;
    assert!(flushed, "upstream status written behind");

    // Deactivated again, announced this time: its commits are dropped, and the host is not
    // asked again within 10 minutes of the last question.
    pds.set_status_silently(&did, false, Some(rookery::sim::AccountStatus::Deactivated))
        .expect("deactivate");
    pds.deactivate(&did).expect("announced");
    pds.commit(&did, &[Change::Create("app.bsky.feed.post/gone".into())])
        .expect("commit");
    pds.commit(&did, &[Change::Create("app.bsky.feed.post/gone2".into())])
        .expect("commit");
    relay.wait_settled(8).await;
    assert_eq!(relay.dropped("account-inactive"), 2);
    let states = relay.shard_states();
    assert_eq!(
        states.iter().map(|s| s.upstream_rechecks).sum::<u64>(),
        1,
        "at most one re-check per account per 10 minutes, not one per commit"
    );
    let mut relay = relay;
    relay.stop().await;
    pds.stop().await;
    plc.stop().await;
}
