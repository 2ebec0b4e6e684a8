//! `fanout`: N live consumers of the relay's firehose while the fleet publishes at a fixed
//! rate (1,000 events/s by default) → delivery latency p50/p99/max over every consumer, and
//! the relay's CPU and RSS per consumer. It starts with the warm-up of `ingest` (one commit
//! per account, so identities are resolved), then connects the consumers.
//!
//! The consumers run in child processes (`rookery-fleet bench-consumers`, [`CHILD_COMMAND`]),
//! so their reading costs neither the relay's process nor this one; each is a
//! [`LeanConsumer`]. Latency is wall clock from the event's creation on its host (the
//! timestamp of its `rev`, a TID the simulated hosts take from the clock when they build the
//! commit) to its receipt by a consumer, for every [`DEFAULT_SAMPLE`]-th frame of each
//! consumer (decoding them all would cost the children more than the relay). The children
//! connect, say so on stdout, read until their stdin closes, and print one JSON line: frames,
//! errors and a [`SparseHistogram`] the parent merges. The relay's CPU and RSS are read from
//! its process: `None` for a relay already running (`--relay-url`).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{BenchError, BenchOptions, NOT_OUR_PROCESS, RampResult, mb, round2};
use crate::atproto::frame::{Frame, decode_frame};
use crate::atproto::tid::Tid;
use crate::sim::checker::{Checker, Expectations};
use crate::sim::consumer::{LeanConsumer, Message};
use crate::sim::latency::{LatencyHistogram, SparseHistogram};
use crate::sim::probe::ProbeReport;

/// The hidden subcommand of `rookery-fleet` that runs consumers for this bench.
pub const CHILD_COMMAND: &str = "bench-consumers";
/// Every this-many-th frame of a consumer is timed.
pub const DEFAULT_SAMPLE: u64 = 20;
/// How long the children get to connect their consumers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// After the driver stops, the consumers read this much longer (the tail's deliveries).
const TAIL: Duration = Duration::from_secs(2);
/// Longest line a child may print.
const MAX_CHILD_LINE: u64 = 1 << 20;

/// How `fanout` runs.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    pub consumers: usize,
    /// Events/s the fleet publishes.
    pub rate: f64,
    pub duration: Duration,
    /// Consumer processes.
    pub procs: usize,
}

impl Default for FanoutOptions {
    fn default() -> Self {
        FanoutOptions {
            consumers: 500,
            rate: 1_000.0,
            duration: Duration::from_secs(30),
            procs: 2,
        }
    }
}

/// What one consumer process reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConsumersReport {
    pub consumers: usize,
    pub frames: u64,
    pub min_frames: u64,
    pub max_frames: u64,
    /// Consumers whose stream ended or failed before the end.
    pub ended: u64,
    pub latency: SparseHistogram,
}

/// What `fanout` measured.
#[derive(Debug, Clone)]
pub struct FanoutResult {
    pub ramp: RampResult,
    /// Seconds the warm-up (one commit per account, before the consumers) took.
    pub warm_up_s: f64,
    pub consumers: usize,
    pub published: u64,
    pub seconds: f64,
    pub frames: u64,
    pub min_frames: u64,
    pub ended: u64,
    pub latency: LatencyHistogram,
    /// The relay's CPU over the publishing window, in cores (`None`, like the RSS figures:
    /// not this bench's process).
    pub relay_cpu: Option<f64>,
    pub rss_before_mb: Option<f64>,
    pub rss_connected_mb: Option<f64>,
    pub rss_after_mb: Option<f64>,
    pub health: ProbeReport,
}

impl FanoutResult {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "fanout",
            "consumers": self.consumers,
            "warm_up_s": round2(self.warm_up_s),
            "rate": round2(self.published as f64 / self.seconds),
            "delivery_p50_ms": round2(self.latency.quantile_ms(0.5)),
            "delivery_p99_ms": round2(self.latency.quantile_ms(0.99)),
            "delivery_max_ms": round2(self.latency.max_ms()),
            "published": self.published,
            "frames": self.frames,
            "min_frames_per_consumer": self.min_frames,
            "consumers_ended": self.ended,
            "relay_cpu_cores": self.relay_cpu.map(round2),
            "relay_rss_mb": self.rss_after_mb.map(round2),
            "rss_per_consumer_kb": self.rss_per_consumer_kb().map(round2),
            "health_p99_ms": round2(self.health.p99_ms),
            "health_max_ms": round2(self.health.max_ms),
            "health_failures": self.health.failures,
        })
    }

    fn rss_per_consumer_kb(&self) -> Option<f64> {
        if self.consumers == 0 {
            return Some(0.0);
        }
        Some((self.rss_after_mb? - self.rss_before_mb?) * 1024.0 / self.consumers as f64)
    }

    pub fn table(&self) -> String {
        format!(
            "fanout: {} live consumers ({} hosts), {:.0} events/s for {:.0} s\n\
             published                  {}\n\
             frames received            {} (fewest by one consumer: {})\n\
             consumers cut off          {}\n\
             delivery p50 / p99 / max   {:.1} / {:.1} / {:.1} ms ({} samples)\n\
             relay CPU                  {}\n\
             relay RSS                  {}\n\
             /_health p50 / p99 / max   {:.1} / {:.1} / {:.1} ms, {} failures of {}",
            self.consumers,
            self.ramp.hosts,
            self.published as f64 / self.seconds,
            self.seconds,
            self.published,
            self.frames,
            self.min_frames,
            self.ended,
            self.latency.quantile_ms(0.5),
            self.latency.quantile_ms(0.99),
            self.latency.max_ms(),
            self.latency.count(),
            self.relay_cpu
                .map_or(NOT_OUR_PROCESS.to_string(), |cpu| format!(
                    "{cpu:.2} cores ({:.2} ms per consumer-second)",
                    if self.consumers > 0 {
                        cpu * 1000.0 / self.consumers as f64
                    } else {
                        0.0
                    }
                )),
            match (self.rss_per_consumer_kb(), self.rss_connected_mb) {
                (Some(per_consumer), Some(connected)) => format!(
                    "{} before, {connected:.1} MB connected, {} at the end ({per_consumer:.0} KB \
                     per consumer)",
                    mb(self.rss_before_mb),
                    mb(self.rss_after_mb)
                ),
                _ => NOT_OUR_PROCESS.to_string(),
            },
            self.health.p50_ms,
            self.health.p99_ms,
            self.health.max_ms,
            self.health.failures,
            self.health.requests,
        )
    }
}

/// Runs `fanout`. Must be called inside an actix System.
pub async fn fanout(
    options: &BenchOptions,
    fanout: &FanoutOptions,
) -> Result<FanoutResult, BenchError> {
    let (ramp, mut relay, fleet) = super::ramp_and_keep(options).await?;
    let deadline = Instant::now() + options.timeout;
    let mut checker = Checker::connect(relay.addr(), None, Expectations::new())
        .await
        .map_err(|e| BenchError::Relay(format!("checker: {e}")))?;
    let feed = checker.feed();
    let warm_up_s = super::warm_up(&fleet, &mut checker, &feed, deadline).await;
    drop((feed, checker));
    let rss_before_mb = relay.rss_mb()?;
    let procs = fanout.procs.clamp(1, fanout.consumers.max(1));
    let exe = std::env::current_exe()?;
    let mut children = Vec::with_capacity(procs);
    for index in 0..procs {
        let share = fanout.consumers / procs + usize::from(index < fanout.consumers % procs);
        let child = Command::new(&exe)
            .arg(CHILD_COMMAND)
            .arg("--addr")
            .arg(relay.addr().to_string())
            .arg("--consumers")
            .arg(share.to_string())
            .arg("--sample")
            .arg(DEFAULT_SAMPLE.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        children.push(ChildConsumers::new(child)?);
    }
    for child in &mut children {
        child.connected().await?;
    }
    eprintln!("{} consumers connected", fanout.consumers);
    let rss_connected_mb = relay.rss_mb()?;
    let probe = relay.probe();
    let cpu_before = relay.cpu_seconds()?;
    let begun = Instant::now();
    let driver = fleet.drive(fanout.rate, options.seed);
    let end = begun + fanout.duration;
    while Instant::now() < end {
        actix_rt::time::sleep(super::PROGRESS_PERIOD.min(end - Instant::now())).await;
        relay.check_alive()?;
        eprintln!(
            "{:>5.1} s  published {}  /_health p99 {:.1} ms",
            begun.elapsed().as_secs_f64(),
            driver.stats().events(),
            probe.snapshot().p99_ms,
        );
    }
    let published = driver.stats().events();
    let seconds = begun.elapsed().as_secs_f64();
    driver.stop();
    let relay_cpu = match (relay.cpu_seconds()?, cpu_before) {
        (Some(after), Some(before)) => Some((after - before) / seconds),
        _ => None,
    };
    actix_rt::time::sleep(TAIL).await;
    let mut latency = LatencyHistogram::new();
    let (mut frames, mut min_frames, mut ended) = (0, u64::MAX, 0);
    for child in children {
        let report = child.finish().await?;
        latency.merge(&report.latency);
        frames += report.frames;
        min_frames = min_frames.min(report.min_frames);
        ended += report.ended;
    }
    let result = FanoutResult {
        ramp,
        consumers: fanout.consumers,
        published,
        seconds,
        frames,
        min_frames: if min_frames == u64::MAX {
            0
        } else {
            min_frames
        },
        ended,
        latency,
        relay_cpu,
        warm_up_s,
        rss_before_mb,
        rss_connected_mb,
        rss_after_mb: relay.rss_mb()?,
        health: probe.stop().await,
    };
    drop(relay);
    fleet.stop().await;
    Ok(result)
}

/// One consumer process, from the parent's side.
struct ChildConsumers {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::io::Take<tokio::process::ChildStdout>>>,
}

impl ChildConsumers {
    fn new(mut child: Child) -> Result<ChildConsumers, BenchError> {
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Self::failed("no stdout"))?;
        Ok(ChildConsumers {
            child,
            lines: BufReader::new(stdout.take(16 * MAX_CHILD_LINE)).lines(),
        })
    }

    fn failed(what: impl std::fmt::Display) -> BenchError {
        BenchError::Relay(format!("consumer process: {what}"))
    }

    async fn next_line(&mut self) -> Result<String, BenchError> {
        match self.lines.next_line().await? {
            Some(line) if line.len() as u64 <= MAX_CHILD_LINE => Ok(line),
            Some(_) => Err(Self::failed("an overlong line")),
            None => Err(Self::failed("exited early")),
        }
    }

    /// Waits for the child's "connected" line.
    async fn connected(&mut self) -> Result<(), BenchError> {
        let line = tokio::time::timeout(CONNECT_TIMEOUT, self.next_line())
            .await
            .map_err(|_| Self::failed("its consumers did not connect in time"))??;
        if line.starts_with("connected") {
            Ok(())
        } else {
            Err(Self::failed(format!("unexpected line {line:?}")))
        }
    }

    /// Closes the child's stdin (its signal to stop) and reads its report.
    async fn finish(mut self) -> Result<ConsumersReport, BenchError> {
        drop(self.child.stdin.take());
        let line = tokio::time::timeout(Duration::from_secs(30), self.next_line())
            .await
            .map_err(|_| Self::failed("no report"))??;
        let _ = self.child.wait().await;
        serde_json::from_str(&line).map_err(Self::failed)
    }
}

/// The child side: connects `consumers` live consumers to `addr`, prints `connected`, reads
/// until stdin closes, prints one [`ConsumersReport`] line. Must run inside an actix System.
pub async fn run_consumers(addr: SocketAddr, consumers: usize, sample: u64) -> Result<(), String> {
    let sample = sample.max(1);
    let mut connections = Vec::with_capacity(consumers);
    for _ in 0..consumers {
        let consumer = LeanConsumer::connect(
            addr,
            "/xrpc/com.atproto.sync.subscribeRepos",
            "rookery-fleet-fanout",
        )
        .await
        .map_err(|e| format!("connect: {e}"))?;
        connections.push(consumer);
    }
    println!("connected {consumers}");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|consumer| actix_rt::spawn(read_until_stopped(consumer, sample, stop_rx.clone())))
        .collect();
    // Stdin closing (or any input) is the parent's signal to stop.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let _ = stdin.read(&mut buf).await;
    let _ = stop_tx.send(true);
    let mut report = ConsumersReport {
        consumers,
        frames: 0,
        min_frames: u64::MAX,
        max_frames: 0,
        ended: 0,
        latency: LatencyHistogram::new().to_sparse(),
    };
    let mut latency = LatencyHistogram::new();
    for task in tasks {
        let (frames, ended, histogram) = task.await.map_err(|e| e.to_string())?;
        report.frames += frames;
        report.min_frames = report.min_frames.min(frames);
        report.max_frames = report.max_frames.max(frames);
        report.ended += u64::from(ended);
        latency.merge(&histogram.to_sparse());
    }
    if consumers == 0 {
        report.min_frames = 0;
    }
    report.latency = latency.to_sparse();
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// One consumer: counts frames, times every `sample`-th `#commit` by its rev, until told to
/// stop or its stream ends (→ `ended`).
async fn read_until_stopped(
    mut consumer: LeanConsumer,
    sample: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, bool, LatencyHistogram) {
    let mut latency = LatencyHistogram::new();
    let mut frames = 0u64;
    loop {
        let message = tokio::select! {
            _ = stop.changed() => return (frames, false, latency),
            message = consumer.next() => message,
        };
        match message {
            Ok(Some(Message::Binary(frame))) => {
                frames += 1;
                if frames.is_multiple_of(sample)
                    && let Ok(Frame::Commit(commit)) = decode_frame(&frame)
                    && let Ok(rev) = Tid::parse(&commit.rev)
                {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as u64);
                    latency.record(Duration::from_micros(
                        now.saturating_sub(rev.timestamp_micros()),
                    ));
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return (frames, true, latency),
        }
    }
}
