//! The firehose out on 127.0.0.1, against the event log's own read rate in the same run.
//!
//! - `replay`: a log of N events (signed `#commit` frames, re-sequenced copies of a few
//!   thousand templates) is read back once by a bare `Replay` (the log's own rate), then by
//!   one websocket consumer (`sim::consumer::LeanConsumer`) from `cursor=0` through a
//!   ConsumerSession: events/s and MB/s received by the client.
//! - `fanout`: C live consumers while a writer appends at a fixed rate (default 1,000
//!   events/s, one event per append and head announcement): latency from the head
//!   announcement to receipt by each client (p50/p99/max), events delivered per second, and
//!   the relay side's CPU and RSS. The consumers run in `FIREHOSE_BENCH_CLIENT_PROCS` (default
//!   2) child processes (this binary again, `FIREHOSE_BENCH_ROLE=clients`), so the figures
//!   are the server's; latency is wall clock to wall clock on the one machine.
//!
//! Run: `cargo bench --bench firehose` (a plain timed binary, no criterion). Environment:
//! `FIREHOSE_BENCH_EVENTS` (replay, default 200,000), `FIREHOSE_BENCH_REPLAY_BATCH` and
//! `FIREHOSE_BENCH_SESSION_BUFFER` (replay: `replay_batch_bytes` and `session_buffer_bytes`,
//! default the firehose's; the bare log read uses the same batch size),
//! `FIREHOSE_BENCH_CONSUMERS` (default
//! 100), `FIREHOSE_BENCH_RATE` (events/s, default 1,000), `FIREHOSE_BENCH_SECONDS`
//! (default 10), `FIREHOSE_BENCH_CLIENT_PROCS` (default 2). Without `--bench` (nextest, `cargo test --all-targets`) it lists no tests
//! and smoke-runs a tiny workload. Files live under `target/bench-tmp/`.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus::Registry;
use rookery::actors::firehose::{Firehose, FirehoseSettings, start_firehose};
use rookery::actors::obs::ActorMetrics;
use rookery::atproto::frame::{self, Frame};
use rookery::atproto::keys::Curve;
use rookery::http::{self, ListenerSettings};
use rookery::sim::consumer::{LeanConsumer, Message};
use rookery::store::event_log::{AppendRecord, EventLog, EventLogConfig, did_hash};
use rookery::testkit::repo::{Change, SigningRepo, record_path};
use tokio::sync::watch;

struct Setup {
    log: EventLog,
    head: watch::Sender<u64>,
    firehose: Firehose,
    server: actix_web::dev::ServerHandle,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A log filled by `fill` before the firehose starts at its head, as after a restart.
fn setup(settings: FirehoseSettings, fill: impl FnOnce(&mut EventLog)) -> Setup {
    let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-tmp"));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let (mut log, _) = EventLog::open(EventLogConfig::new(dir.path())).expect("log");
    fill(&mut log);
    let (head, head_rx) = watch::channel(log.durable_head());
    let registry = Registry::new();
    let metrics = ActorMetrics::register(&registry).expect("metrics");
    let firehose =
        start_firehose(log.reader(), head_rx, settings, &metrics, &registry).expect("firehose");
    let (server, addrs) = http::start_public(
        "127.0.0.1:0".parse().expect("addr"),
        ListenerSettings::new(2, Duration::from_secs(1)),
        rookery::http::subscribe_repos::routes(&firehose),
    )
    .expect("bind");
    let handle = server.handle();
    actix_rt::spawn(server);
    Setup {
        log,
        head,
        firehose,
        server: handle,
        addr: addrs[0],
        _dir: dir,
    }
}

fn commit_templates(n: usize) -> Vec<Bytes> {
    let mut repo = SigningRepo::new(
        "did:plc:benchfirehose",
        Curve::K256,
        1_000,
        1_700_000_000_000_000,
    );
    (0..n)
        .map(|i| {
            let c = repo.commit(&[Change::Create(record_path(10_000 + i))]);
            Bytes::from(frame::encode_frame(&Frame::Commit(Box::new(c))).expect("encode"))
        })
        .collect()
}

const SUBSCRIBE: &str = "/xrpc/com.atproto.sync.subscribeRepos";

async fn connect(addr: SocketAddr, query: &str) -> LeanConsumer {
    LeanConsumer::connect(addr, &format!("{SUBSCRIBE}{query}"), "firehose-bench")
        .await
        .expect("upgrade")
}

/// Wall-clock nanoseconds: the clients run in other processes, so latency is measured
/// between two readings of the machine's real-time clock.
fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn replay(events: usize, settings: FirehoseSettings) {
    let system = actix::System::new();
    system.block_on(async move {
        let templates = commit_templates(2_000.min(events));
        let mut bytes = 0usize;
        // The log is filled before the firehose starts (a relay restarted on a full log):
        // the Broadcaster starts at the head, the consumer replays the whole log.
        let s = setup(settings, |log| {
            let mut batch = Vec::with_capacity(1_000);
            for i in 0..events {
                let seq = i as u64 + 1;
                let body = Bytes::from(
                    frame::resequence(&templates[i % templates.len()], seq as i64)
                        .expect("reseq"),
                );
                bytes += body.len();
                batch.push(AppendRecord {
                    seq,
                    kind: 1,
                    did_hash: did_hash("did:plc:benchfirehose"),
                    body,
                });
                if batch.len() == 1_000 || i + 1 == events {
                    log.append(&batch).expect("append");
                    batch.clear();
                }
            }
        });
        let mb = bytes as f64 / 1e6;

        // The log's own rate: one Replay from the oldest record in the sessions' batch
        // size, twice (the faster counts: both then read from the page cache, as the
        // websocket run after them does).
        let reader = s.log.reader();
        let mut log_secs = f64::MAX;
        for _ in 0..2 {
            let started = Instant::now();
            let mut replay = reader.read_from_oldest();
            let mut n = 0usize;
            loop {
                let batch = replay
                    .next_batch(2048, settings.replay_batch_bytes)
                    .expect("read");
                if batch.is_empty() {
                    break;
                }
                n += batch.len();
            }
            log_secs = log_secs.min(started.elapsed().as_secs_f64());
            assert_eq!(n, events);
        }

        // One consumer from cursor=0 through the firehose.
        let mut client = connect(s.addr, "?cursor=0").await;
        let started = Instant::now();
        let mut got = 0usize;
        let mut got_bytes = 0usize;
        while got < events {
            match client.next().await {
                Ok(Some(Message::Binary(b))) => {
                    got += 1;
                    got_bytes += b.len();
                }
                Ok(Some(_)) => {}
                other => {
                    let closed = &s.firehose.metrics().sessions_closed;
                    let reasons: Vec<(&str, u64)> = [
                        "client_gone", "shutdown", "future_cursor", "too_slow_lag",
                        "too_slow_stall", "dead", "log_failed",
                    ]
                    .iter()
                    .map(|r| (*r, closed.with_label_values(&[r]).get()))
                    .collect();
                    panic!("stream ended after {got} of {events}: {other:?}; sessions closed {reasons:?}");
                }
            }
        }
        let ws_secs = started.elapsed().as_secs_f64();
        assert_eq!(got_bytes, bytes);
        println!(
            "replay: {events} #commit events, {mb:.0} MB ({:.0} B avg)\n  \
             log Replay:          {:.0} events/s, {:.0} MB/s ({log_secs:.2} s)\n  \
             websocket cursor=0:  {:.0} events/s, {:.0} MB/s ({ws_secs:.2} s), {:.2}x the log's time",
            bytes as f64 / events as f64,
            events as f64 / log_secs,
            mb / log_secs,
            events as f64 / ws_secs,
            mb / ws_secs,
            ws_secs / log_secs,
        );
        s.firehose.shutdown(Duration::from_secs(5)).await;
        s.server.stop(false).await;
    });
}

/// Every `SAMPLE`th seq's receipt is timed by each client (bounded memory at 500 consumers).
const SAMPLE: u64 = 5;

fn fanout(consumers: usize, rate: u64, seconds: u64, procs: usize) {
    let system = actix::System::new();
    system.block_on(async move {
        let Setup {
            log,
            head,
            firehose,
            server,
            addr,
            _dir,
        } = setup(
            FirehoseSettings {
                max_consumers_per_ip: consumers + 10,
                ..FirehoseSettings::default()
            },
            |_| {},
        );
        let templates = commit_templates(200);
        let avg_frame =
            templates.iter().map(Bytes::len).sum::<usize>() as f64 / templates.len() as f64;
        let total = rate * seconds;
        let announce_file = _dir.path().join("announced");
        let rss_before = rss_kib();
        // The client processes: each connects its share, says so, reads `total` events,
        // waits for the announcement times, and prints its sampled latencies.
        let procs = procs.clamp(1, consumers.max(1));
        let mut children = Vec::new();
        for p in 0..procs {
            let share = consumers / procs + usize::from(p < consumers % procs);
            let child = Command::new(std::env::current_exe().expect("exe"))
                .env("FIREHOSE_BENCH_ROLE", "clients")
                .env("FIREHOSE_BENCH_ADDR", addr.to_string())
                .env("FIREHOSE_BENCH_CLIENTS", share.to_string())
                .env("FIREHOSE_BENCH_TOTAL", total.to_string())
                .env("FIREHOSE_BENCH_ANNOUNCED", &announce_file)
                .stdout(Stdio::piped())
                .spawn()
                .expect("client process");
            children.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while firehose.consumer_count() < consumers {
            assert!(Instant::now() < deadline, "clients did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rss_connected = rss_kib();
        let cpu_start = cpu_seconds();
        let started = Instant::now();
        // The writer plays the Persister on a thread of its own (append + fdatasync, then
        // announce), so its blocking never delays the Broadcaster or the sessions.
        let writer = {
            let mut log = log;
            std::thread::spawn(move || {
                let interval = Duration::from_secs_f64(1.0 / rate as f64);
                let begin = Instant::now();
                let mut announced = Vec::with_capacity(total as usize);
                for i in 0..total {
                    let seq = i + 1;
                    let body = Bytes::from(
                        frame::resequence(&templates[i as usize % templates.len()], seq as i64)
                            .expect("reseq"),
                    );
                    log.append(&[AppendRecord {
                        seq,
                        kind: 1,
                        did_hash: did_hash("did:plc:benchfirehose"),
                        body,
                    }])
                    .expect("append");
                    announced.push(wall_nanos());
                    head.send_replace(seq);
                    let next = begin + interval * (i as u32 + 1);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                (log, announced)
            })
        };
        let (_log, announced) = loop {
            if writer.is_finished() {
                break writer.join().expect("writer");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Wait for delivery to finish (every session at the head, bounded), then publish
        // the announcement times for the clients.
        let deadline = Instant::now() + Duration::from_secs(120);
        while firehose.consumers().iter().any(|c| c.cursor < total) {
            assert!(Instant::now() < deadline, "delivery did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_start;
        let rss_end = rss_kib();
        write_announced(&announce_file, &announced);
        let mut l: Vec<u64> = Vec::new();
        let mut client_cpu = 0.0;
        for child in children {
            let out = child.wait_with_output().expect("client output");
            assert!(out.status.success(), "client process failed");
            for line in out.stdout.lines() {
                let line = line.expect("line");
                if let Some(cpu) = line.strip_prefix("cpu ") {
                    client_cpu += cpu.parse::<f64>().unwrap_or(0.0);
                } else if let Some(samples) = line.strip_prefix("latencies ") {
                    l.extend(samples.split(' ').filter_map(|v| v.parse::<u64>().ok()));
                }
            }
        }
        l.sort_unstable();
        assert!(!l.is_empty(), "no latency samples");
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1e6;
        println!(
            "fanout: {consumers} live consumers in {procs} client processes, {rate} events/s for \
             {seconds} s ({total} events, ~{avg_frame:.0} B each)\n  \
             head → client latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)\n  \
             delivered {:.0} events/s in all; relay CPU {:.2} s over {secs:.1} s ({:.0}% of one \
             core, {:.3} ms per consumer-second); clients' CPU {client_cpu:.2} s\n  \
             relay RSS {} MiB before, {} MiB with consumers connected, {} MiB at the end \
             ({:.0} KiB per consumer)",
            pct(0.5),
            pct(0.99),
            pct(1.0),
            l.len(),
            (total as usize * consumers) as f64 / secs,
            cpu,
            cpu / secs * 100.0,
            cpu / secs / consumers as f64 * 1e3,
            rss_before / 1024,
            rss_connected / 1024,
            rss_end / 1024,
            (rss_end.saturating_sub(rss_before)) as f64 / consumers as f64,
        );
        firehose.shutdown(Duration::from_secs(5)).await;
        server.stop(false).await;
    });
}

/// Announcement times (wall nanoseconds) of seqs 1.., one per line, written whole and then
/// renamed into place so a client never reads half of it.
fn write_announced(path: &Path, announced: &[u64]) {
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("announce file"));
    for t in announced {
        writeln!(f, "{t}").expect("write");
    }
    f.flush().expect("flush");
    drop(f);
    std::fs::rename(&tmp, path).expect("rename");
}

/// The client role: `FIREHOSE_BENCH_CLIENTS` lean consumers on one thread.
fn clients() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}"));
    let addr: SocketAddr = var("FIREHOSE_BENCH_ADDR").parse().expect("addr");
    let n: usize = var("FIREHOSE_BENCH_CLIENTS").parse().expect("clients");
    let total: u64 = var("FIREHOSE_BENCH_TOTAL").parse().expect("total");
    let announced_path = PathBuf::from(var("FIREHOSE_BENCH_ANNOUNCED"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let received: Vec<Vec<(u64, u64)>> = runtime.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let mut c = connect(addr, "").await;
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::with_capacity((total / SAMPLE) as usize + 1);
                let mut last = 0;
                while last < total {
                    match c.next().await {
                        Ok(Some(Message::Binary(b))) => {
                            let at = wall_nanos();
                            let seq = frame::peek_event(&b).ok().and_then(|p| p.seq).expect("seq");
                            assert_eq!(seq, last + 1, "every event once, in order");
                            last = seq;
                            if seq.is_multiple_of(SAMPLE) {
                                seen.push((seq, at));
                            }
                        }
                        Ok(Some(_)) => {}
                        other => panic!("stream ended at {last}: {other:?}"),
                    }
                }
                seen
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.expect("client"));
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !announced_path.exists() {
        assert!(Instant::now() < deadline, "no announcement times");
        std::thread::sleep(Duration::from_millis(20));
    }
    let announced: Vec<u64> = std::fs::read_to_string(&announced_path)
        .expect("read announced")
        .lines()
        .map(|l| l.parse().expect("nanos"))
        .collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    write!(out, "latencies").expect("write");
    for (seq, at) in received.into_iter().flatten() {
        let sent = announced[(seq - 1) as usize];
        write!(out, " {}", at.saturating_sub(sent)).expect("write");
    }
    writeln!(out).expect("write");
    writeln!(out, "cpu {}", cpu_seconds()).expect("write");
}

fn main() {
    // Warnings and errors of the relay's code (a session closing early says why).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().collect();
    // `cargo nextest` lists tests first: this binary has none.
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if std::env::var("FIREHOSE_BENCH_ROLE").as_deref() == Ok("clients") {
        clients();
        return;
    }
    let bench = args.iter().any(|a| a == "--bench");
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    if bench {
        let defaults = FirehoseSettings::default();
        let settings = FirehoseSettings {
            replay_batch_bytes: env(
                "FIREHOSE_BENCH_REPLAY_BATCH",
                defaults.replay_batch_bytes as u64,
            ) as usize,
            session_buffer_bytes: env(
                "FIREHOSE_BENCH_SESSION_BUFFER",
                defaults.session_buffer_bytes as u64,
            ) as usize,
            ..defaults
        };
        replay(env("FIREHOSE_BENCH_EVENTS", 200_000) as usize, settings);
        fanout(
            env("FIREHOSE_BENCH_CONSUMERS", 100) as usize,
            env("FIREHOSE_BENCH_RATE", 1_000),
            env("FIREHOSE_BENCH_SECONDS", 10),
            env("FIREHOSE_BENCH_CLIENT_PROCS", 2) as usize,
        );
    } else {
        replay(500, FirehoseSettings::default());
        fanout(3, 200, 1, 2);
    }
}
