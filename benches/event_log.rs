//! Event log benchmarks: append throughput with `every-batch` sync (group commit) for
//! 1 KB and 10 KB records at batch sizes 1, 64 and 1024, and replay throughput from the
//! page cache. Files live under `target/` (on the project's disk, not tmpfs).
//!
//! Run: `cargo bench --bench event_log -- --warm-up-time 1 --measurement-time 3`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rookery::store::event_log::{AppendRecord, EventLog, EventLogConfig, SyncPolicy, did_hash};

fn bench_dir() -> tempfile::TempDir {
    let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-tmp"));
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("tempdir")
}

fn batch(first_seq: u64, n: usize, body: &Bytes, did: u64) -> Vec<AppendRecord> {
    (0..n as u64)
        .map(|i| AppendRecord {
            seq: first_seq + i,
            kind: 1,
            did_hash: did,
            body: body.clone(),
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let did = did_hash("did:plc:bench");
    let mut group = c.benchmark_group("event_log_append_every_batch");
    group.sample_size(10);
    for record_size in [1024usize, 10 * 1024] {
        for batch_size in [1usize, 64, 1024] {
            group.throughput(Throughput::Elements(batch_size as u64));
            let id = BenchmarkId::new(format!("{}KB", record_size / 1024), batch_size);
            group.bench_function(id, |b| {
                let dir = bench_dir();
                let mut config = EventLogConfig::new(dir.path());
                config.sync = SyncPolicy::EveryBatch;
                config.segment_max_bytes = 64 * 1024 * 1024;
                let (mut log, _) = EventLog::open(config).expect("open");
                let body = Bytes::from(vec![0xab; record_size]);
                b.iter_custom(|iters| {
                    let batches: Vec<_> = (0..iters)
                        .map(|i| {
                            batch(
                                log.next_seq() + i * batch_size as u64,
                                batch_size,
                                &body,
                                did,
                            )
                        })
                        .collect();
                    let start = Instant::now();
                    for recs in &batches {
                        log.append(recs).expect("append");
                    }
                    start.elapsed()
                });
            });
        }
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    let did = did_hash("did:plc:bench");
    let mut group = c.benchmark_group("event_log_replay_page_cache");
    group.sample_size(10);
    for (record_size, count) in [(1024usize, 100_000u64), (10 * 1024, 10_000)] {
        let dir = bench_dir();
        let mut config = EventLogConfig::new(dir.path());
        config.sync = SyncPolicy::None;
        config.segment_max_bytes = 32 * 1024 * 1024;
        let (mut log, _) = EventLog::open(config).expect("open");
        let body = Bytes::from(vec![0xcd; record_size]);
        let mut seq = 1;
        while seq <= count {
            log.append(&batch(seq, 1000, &body, did)).expect("fill");
            seq += 1000;
        }
        log.flush().expect("flush");
        let reader = log.reader();
        group.throughput(Throughput::Bytes(count * record_size as u64));
        group.bench_function(
            BenchmarkId::new(format!("{}KB", record_size / 1024), count),
            |b| {
                b.iter(|| {
                    let mut replay = reader.read_after(0).expect("replay");
                    let mut n = 0u64;
                    loop {
                        let got = replay.next_batch(4096, 4 * 1024 * 1024).expect("batch");
                        if got.is_empty() {
                            break;
                        }
                        n += got.len() as u64;
                    }
                    assert_eq!(n, count);
                });
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = append, replay
}
criterion_main!(benches);
