//! Ingest pipeline throughput: N pre-built events pushed through Sequencer + Persister
//! (`every-batch` fsync, group commit) by 4 concurrent producers playing the ValidatorShards,
//! each awaiting its sends. Prints events/s, MB/s and the batches the group commit formed.
//! Files live under `target/bench-tmp/` (the project's disk, real fsync).
//!
//! Run: `cargo bench --bench ingest_pipeline` (a plain binary, no criterion: one timed run
//! per workload; set `INGEST_BENCH_EVENTS` to change N). Without `--bench` (nextest,
//! `cargo test --all-targets`) it lists no tests and smoke-runs 1,000 events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use prometheus::Registry;
use rookery::actors::obs::ActorMetrics;
use rookery::actors::persister::GetPersisterState;
use rookery::actors::sequencer::{Drain, EventKind, GetSequencerState, IngestEvent, Origin};
use rookery::actors::upstream_cursor::HostCursor;
use rookery::actors::write_behind::{AccountStateUpdate, StateSink};
use rookery::actors::{IngestSettings, start_ingest};
use rookery::atproto::frame::{self, Frame, IdentityEvent};
use rookery::atproto::keys::Curve;
use rookery::store::event_log::{EventLog, EventLogConfig};
use rookery::store::postgres::DbError;
use rookery::testkit::repo::{Change, SigningRepo, record_path};

const PRODUCERS: usize = 4;

struct NullSink;
impl StateSink for NullSink {
    fn write_cursors(&self, c: Vec<(i64, i64)>) -> BoxFuture<'static, Result<u64, DbError>> {
        Box::pin(async move { Ok(c.len() as u64) })
    }
    fn write_accounts(
        &self,
        a: Vec<AccountStateUpdate>,
        _checkpoint: u64,
    ) -> BoxFuture<'static, Result<u64, DbError>> {
        Box::pin(async move { Ok(a.len() as u64) })
    }
}

fn small_frames(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let f = frame::encode_frame(&Frame::Identity(IdentityEvent {
                seq: i as i64 + 1,
                did: format!("did:plc:bench{:016}", i % 5_000),
                time: "2025-12-31T23:00:00.000Z".into(),
                handle: Some(format!("user{i}.example.com")),
            }));
            Bytes::from(f.expect("encode"))
        })
        .collect()
}

fn commit_frames(n: usize) -> Vec<Bytes> {
    let mut repo = SigningRepo::new(
        "did:plc:benchcommits",
        Curve::K256,
        1_000,
        1_700_000_000_000_000,
    );
    (0..n)
        .map(|i| {
            let mut c = repo.commit(&[Change::Create(record_path(10_000 + i))]);
            c.seq = i as i64 + 1;
            Bytes::from(frame::encode_frame(&Frame::Commit(Box::new(c))).expect("encode"))
        })
        .collect()
}

fn run(name: &str, frames: Vec<Bytes>) {
    let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-tmp"));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let n = frames.len();
    let bytes: usize = frames.iter().map(Bytes::len).sum();
    let system = actix::System::new();
    system.block_on(async move {
        let registry = Registry::new();
        let metrics = ActorMetrics::register(&registry).expect("metrics");
        let (log, _) = EventLog::open(EventLogConfig::new(dir.path())).expect("log");
        let ingest = start_ingest(
            log,
            Arc::new(NullSink),
            IngestSettings::default(),
            &metrics,
            &registry,
        )
        .expect("start");
        let mut chunks: Vec<Vec<Bytes>> = vec![Vec::new(); PRODUCERS];
        for (i, f) in frames.into_iter().enumerate() {
            chunks[i % PRODUCERS].push(f);
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (p, chunk) in chunks.into_iter().enumerate() {
            let sequencer = ingest.sequencer.clone();
            let budget = ingest.budget.clone();
            let cursor = HostCursor::new(p as i64 + 1, 0, ingest.pending.clone());
            tasks.push(actix_rt::spawn(async move {
                for (i, f) in chunk.into_iter().enumerate() {
                    let peek = frame::peek_event(&f).expect("frame");
                    let kind = peek
                        .header
                        .t
                        .and_then(EventKind::from_frame_type)
                        .expect("kind");
                    let did = peek.did.expect("did").to_string();
                    let permit = budget.acquire(f.len()).await.expect("budget");
                    let ev = IngestEvent {
                        did,
                        kind,
                        frame: f,
                        account: None,
                        origin: Origin::Upstream {
                            cursor: cursor.begin(i as i64 + 1),
                            permit,
                        },
                    };
                    sequencer.send(ev).await.expect("mailbox").expect("seq");
                }
            }));
        }
        for t in tasks {
            t.await.expect("producer");
        }
        ingest.sequencer.send(Drain).await.expect("drain");
        let elapsed = started.elapsed().as_secs_f64();
        let persisted = ingest
            .persister
            .send(GetPersisterState)
            .await
            .expect("state");
        let seq = ingest
            .sequencer
            .send(GetSequencerState)
            .await
            .expect("state");
        assert_eq!(persisted.events, n as u64);
        println!(
            "{name}: {n} events ({:.0} B avg) in {elapsed:.2} s = {:.0} events/s, {:.1} MB/s in; \
             {} batches (mean {:.0}, largest {})",
            bytes as f64 / n as f64,
            n as f64 / elapsed,
            bytes as f64 / elapsed / 1e6,
            persisted.batches,
            n as f64 / persisted.batches as f64,
            seq.largest_batch,
        );
        ingest.shutdown().await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo nextest` lists tests first: this binary has none.
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; anything else (`cargo test --all-targets`) gets a
    // quick smoke run so the target is exercised without a long debug-build benchmark.
    let default = if args.iter().any(|a| a == "--bench") {
        100_000
    } else {
        1_000
    };
    let n: usize = std::env::var("INGEST_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    run("identity frames", small_frames(n));
    run("signed #commit frames", commit_frames((n / 5).max(1)));
}
