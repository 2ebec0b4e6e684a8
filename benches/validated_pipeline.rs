//! The whole ingest pipeline without the network: pre-generated signed sync-1.1 commits of
//! many accounts routed into the ValidatorShards (as Subscribers do), validated, sequenced and
//! persisted (`every-batch` fsync) to the durable head, with account state written behind to
//! a real Postgres. Reported next to the single-core `validate_commit` cost of the same kind
//! of commits, measured in the same run, as an efficiency ratio:
//!
//! `events/s ÷ (shards ÷ validate seconds per event)`
//!
//! 1.0 would mean the shards spend all their time validating and everything else (routing,
//! rules, account cache, rewrites, sequencing, persistence, fsync, Postgres) is free.
//! Identities are resolved and accounts created before the timed part (a warm relay).
//!
//! Run: `cargo bench --bench validated_pipeline` (a plain binary; `VALIDATED_BENCH_EVENTS`,
//! `VALIDATED_BENCH_SHARDS` change the workload). Without `--bench` (nextest lists no tests)
//! it smoke-runs a few hundred events.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus::Registry;
use rookery::actors::obs::ActorMetrics;
use rookery::actors::sequencer::{Drain, EventKind};
use rookery::actors::shard_router::UpstreamFrame;
use rookery::actors::upstream_cursor::HostCursor;
use rookery::actors::validator_shard::system_clock;
use rookery::actors::{PipelineSettings, start_pipeline};
use rookery::atproto::frame::{self, Frame};
use rookery::atproto::keys::{Curve, PublicKey};
use rookery::atproto::validate::{CommitVerdict, ValidationPolicy, validate_commit};
use rookery::sim::{PlcEntry, SimPlc, install_crypto_provider};
use rookery::store::event_log::{EventLog, EventLogConfig};
use rookery::store::migrations;
use rookery::store::postgres::{Db, DbSettings};
use rookery::testkit::postgres::test_cluster;
use rookery::testkit::repo::{Change, SigningRepo, record_path};

/// The host every account lives on (never dialled: its row is `idle`).
const HOST: &str = "localhost:1";
const PRODUCERS: usize = 4;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `per_account` signed commits (one create each) for each of `accounts` accounts.
fn corpus(plc: &SimPlc, accounts: usize, per_account: usize) -> Vec<(String, Vec<Bytes>)> {
    // Revs a second apart from two hours ago: all in the past when validated.
    let start = now_micros() - 2 * 3_600 * 1_000_000;
    (0..accounts)
        .map(|a| {
            let did = plc.new_did();
            let mut repo = SigningRepo::new(&did, Curve::K256, 200, start);
            plc.register(
                &did,
                PlcEntry {
                    handle: format!("u{a}.bench.test"),
                    signing_key: repo.public(),
                    pds_endpoint: format!("http://{HOST}"),
                    tombstoned: false,
                },
            );
            let frames = (0..per_account)
                .map(|i| {
                    let mut c = repo.commit(&[Change::Create(record_path(10_000 + i))]);
                    c.seq = (a * per_account + i) as i64 + 1;
                    Bytes::from(frame::encode_frame(&Frame::Commit(Box::new(c))).expect("encode"))
                })
                .collect();
            (did, frames)
        })
        .collect()
}

/// CPU seconds used so far by the process (`self`) or the calling thread (`thread-self`),
/// from `/proc/<which>/stat` (utime + stime, in clock ticks of 1/100 s). CPU time does not
/// count the time other processes on a loaded machine take, so ratios of CPU times hold
/// where wall-clock ratios do not.
fn cpu_seconds(which: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{which}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Single-core `validate_commit` cost over one account's chain: (wall seconds, thread CPU
/// seconds) per event.
fn validate_cost(frames: &[Bytes], key: &PublicKey) -> (f64, f64) {
    let commits: Vec<_> = frames
        .iter()
        .map(|f| match frame::decode_frame(f).expect("decode") {
            Frame::Commit(c) => c,
            _ => unreachable!("commits only"),
        })
        .collect();
    let policy = ValidationPolicy::default();
    let now = now_micros();
    let mut rounds = 0u32;
    let started = Instant::now();
    let cpu_started = cpu_seconds("thread-self");
    let mut validated = 0u64;
    while started.elapsed() < Duration::from_secs(2) && rounds < 50 {
        let mut stored = None;
        for c in &commits {
            let verdict = validate_commit(c, key, stored.as_ref(), now, &policy);
            match verdict {
                Ok(CommitVerdict::Accept { new_state, .. }) => stored = Some(new_state),
                other => panic!("bench commit refused: {other:?}"),
            }
            validated += 1;
        }
        rounds += 1;
    }
    let n = validated as f64;
    (
        started.elapsed().as_secs_f64() / n,
        (cpu_seconds("thread-self") - cpu_started) / n,
    )
}

fn run(total: usize, shards: usize) {
    install_crypto_provider();
    let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-tmp"));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let accounts = (total / 50).clamp(4, 400);
    let per_account = (total / accounts).max(2);
    let system = actix::System::new();
    system.block_on(async move {
        let plc = SimPlc::start().expect("plc");
        let corpus = corpus(&plc, accounts, per_account);
        let database = test_cluster().fresh_database().await.expect("db");
        let db = Db::new(database.pg_config, DbSettings::default()).expect("pool");
        migrations::migrate(&db).await.expect("migrate");
        let host_id: i64 = db
            .client()
            .await
            .expect("client")
            .query_one(
                "INSERT INTO hosts (hostname, status, no_ssl, admin_added, account_limit) \
                 VALUES ($1, 'idle', true, true, 1000000) RETURNING id",
                &[&HOST],
            )
            .await
            .expect("host")
            .get(0);

        let mut settings = PipelineSettings {
            shards,
            ..PipelineSettings::default()
        };
        settings.resolver.plc_url = plc.url();
        let registry = Registry::new();
        let metrics = ActorMetrics::register(&registry).expect("metrics");
        let (log, _) = EventLog::open(EventLogConfig::new(dir.path())).expect("log");
        let pipeline = start_pipeline(log, db.clone(), settings, system_clock(), &metrics, &registry)
            .await
            .expect("pipeline");
        for (did, _) in &corpus {
            pipeline.resolver.resolve(did).await.expect("identity");
        }
        let cursor = HostCursor::new(host_id, 0, pipeline.ingest.pending.clone());
        let route = |did: &str, f: &Bytes| {
            let router = pipeline.router.clone();
            let budget = pipeline.ingest.budget.clone();
            let seq = frame::peek_event(f).expect("peek").seq.expect("seq") as i64;
            let mark = cursor.begin(seq);
            let (did, f) = (did.to_string(), f.clone());
            async move {
                let permit = budget.acquire(f.len()).await.expect("budget");
                router
                    .route(UpstreamFrame {
                        hostname: HOST.into(),
                        no_ssl: true,
                        catching_up: false,
                        did,
                        kind: EventKind::Commit,
                        frame: f,
                        cursor: mark,
                        permit,
                    })
                    .await
                    .expect("route");
            }
        };
        let forwarded = |p: &rookery::actors::Pipeline| -> u64 {
            p.shards.states().iter().map(|s| s.forwarded + s.dropped).sum()
        };
        // Warm-up, untimed: each account's first commit creates its row.
        for (did, frames) in &corpus {
            route(did, &frames[0]).await;
        }
        let warm = corpus.len() as u64;
        while forwarded(&pipeline) < warm {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pipeline.ingest.sequencer.send(Drain).await.expect("drain");

        let timed = corpus.len() * (per_account - 1);
        let sample = &corpus[0];
        let key = plc.entry(&sample.0).expect("entry").signing_key;
        // Measured before and after the pipeline run, averaged: load drifts.
        let before = validate_cost(&sample.1, &key);
        // Each producer's schedule, built before the clock starts: one producer per account
        // subset keeps each account's order (like one Subscriber per host), and accounts
        // interleave round by round as on a busy host.
        let schedules: Vec<Vec<(String, Bytes)>> = (0..PRODUCERS)
            .map(|p| {
                let mine: Vec<&(String, Vec<Bytes>)> = corpus
                    .iter()
                    .enumerate()
                    .filter(|(a, _)| a % PRODUCERS == p)
                    .map(|(_, c)| c)
                    .collect();
                (1..per_account)
                    .flat_map(|i| mine.iter().map(move |(did, frames)| (did.clone(), frames[i].clone())))
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let cpu_started = cpu_seconds("self");
        let mut producers = Vec::new();
        for schedule in schedules {
            let route = &route;
            producers.push(async move {
                for (did, f) in schedule {
                    route(&did, &f).await;
                }
            });
        }
        futures_util::future::join_all(producers).await;
        while forwarded(&pipeline) < warm + timed as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        pipeline.ingest.sequencer.send(Drain).await.expect("drain");
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds("self") - cpu_started;
        let states = pipeline.shards.states();
        let dropped: u64 = states.iter().map(|s| s.dropped).sum();
        assert_eq!(dropped, 0, "every bench commit is valid: {states:?}");
        let rate = timed as f64 / elapsed;

        let after = validate_cost(&sample.1, &key);
        let per_event = (before.0 + after.0) / 2.0;
        let validate_cpu = (before.1 + after.1) / 2.0;
        let ratio = rate / (shards as f64 / per_event);
        let pipeline_cpu = cpu / timed as f64;
        println!(
            "validated pipeline: {timed} commits of {} accounts, {shards} shards, every-batch fsync: \
             {rate:.0} events/s; validate_commit single core {:.1} µs/event ({:.0}/s); \
             efficiency {ratio:.2}; CPU per event: relay process {:.1} µs, of it validation \
             {:.1} µs ({:.0}%)",
            corpus.len(),
            per_event * 1e6,
            1.0 / per_event,
            pipeline_cpu * 1e6,
            validate_cpu * 1e6,
            100.0 * validate_cpu / pipeline_cpu,
        );
        pipeline.shutdown().await;
        plc.stop().await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let default = if args.iter().any(|a| a == "--bench") {
        20_000
    } else {
        400
    };
    let n: usize = std::env::var("VALIDATED_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let shards: usize = std::env::var("VALIDATED_BENCH_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    run(n, shards);
}
