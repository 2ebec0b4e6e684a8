//! How long the embedded Postgres takes to come up: the issue asks for "well under 3 s".
//! `start_stop_existing` is every `rookery serve` after the first; `initdb_start_stop_new`
//! is the first start on a fresh data dir. Both use the durable (production) settings.

use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rookery::store::managed_postgres::{ManagedPostgres, StartOptions};

fn bench_managed_postgres(c: &mut Criterion) {
    let root = tempfile::tempdir().expect("temp dir");
    let options = StartOptions {
        bin_dir: None,
        ephemeral: false,
    };
    let mut group = c.benchmark_group("managed_postgres");
    group.sample_size(10);

    let existing = root.path().join("existing");
    ManagedPostgres::start(&existing, &options)
        .expect("create the cluster")
        .stop()
        .expect("stop");
    group.bench_function("start_stop_existing", |b| {
        b.iter(|| {
            let postgres = ManagedPostgres::start(&existing, &options).expect("start");
            postgres.stop().expect("stop");
        })
    });

    let counter = AtomicUsize::new(0);
    group.bench_function("initdb_start_stop_new", |b| {
        b.iter_batched(
            || {
                root.path()
                    .join(format!("new-{}", counter.fetch_add(1, Ordering::Relaxed)))
            },
            |dir| {
                let postgres = ManagedPostgres::start(&dir, &options).expect("start");
                postgres.stop().expect("stop");
                drop(postgres);
                std::fs::remove_dir_all(&dir).expect("remove");
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_managed_postgres);
criterion_main!(benches);
