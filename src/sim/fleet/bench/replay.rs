//! `replay`: one consumer's `cursor=0` catch-up over a large log, against the log's own
//! read rate measured in the same run.
//!
//! The bench writes an event log of `log_bytes` (re-sequenced copies of real signed
//! `#commit` frames from a simulated account) into a throwaway data dir, reads it back once
//! with the log's own `Replay` from the oldest record (twice; the faster counts, both from
//! the page cache as the consumer's read is), then starts `rookery serve` on that data dir
//! and connects one [`LeanConsumer`] with `cursor=0`, counting frames until the last one.
//! A `/_health` probe runs during the catch-up. No fleet is needed: the relay only serves.
//! It refuses a relay already running (`--relay-url`): the log is written under the relay.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{BenchError, BenchOptions, RelayProcess, round2};
use crate::atproto::frame::{self, Frame};
use crate::atproto::keys::Curve;
use crate::sim::SimPlc;
use crate::sim::consumer::{LeanConsumer, Message};
use crate::sim::probe::ProbeReport;
use crate::store::event_log::{AppendRecord, EventLog, EventLogConfig, did_hash};
use crate::testkit::repo::{Change, SigningRepo, record_path};

/// Distinct commits the log repeats (re-sequenced).
const TEMPLATES: usize = 2_000;
/// Records per append (one fsync each).
const APPEND_BATCH: usize = 1_000;
/// The log's own read, in the batch size a ConsumerSession reads.
const READ_BATCH_RECORDS: usize = 2_048;
const READ_BATCH_BYTES: usize = 256 * 1024;
const DID: &str = "did:plc:rookeryfleetreplay";

/// How `replay` runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Size of the log written, in bytes.
    pub log_bytes: u64,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            log_bytes: 5_000_000_000,
        }
    }
}

/// What `replay` measured.
#[derive(Debug, Clone)]
pub struct ReplayResult {
    pub events: u64,
    pub bytes: u64,
    pub write_seconds: f64,
    pub log_seconds: f64,
    pub consumer_seconds: f64,
    pub health: ProbeReport,
}

impl ReplayResult {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.consumer_seconds
    }

    pub fn log_replay_events_per_sec(&self) -> f64 {
        self.events as f64 / self.log_seconds
    }

    /// The consumer's time over the log's own.
    pub fn ratio(&self) -> f64 {
        self.consumer_seconds / self.log_seconds
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "replay",
            "events_per_sec": round2(self.events_per_sec()),
            "log_replay_events_per_sec": round2(self.log_replay_events_per_sec()),
            "ratio_to_log": round2(self.ratio()),
            "mb_per_sec": round2(self.bytes as f64 / 1e6 / self.consumer_seconds),
            "events": self.events,
            "log_bytes": self.bytes,
            "health_p99_ms": round2(self.health.p99_ms),
            "health_max_ms": round2(self.health.max_ms),
            "health_failures": self.health.failures,
        })
    }

    pub fn table(&self) -> String {
        let mb = self.bytes as f64 / 1e6;
        format!(
            "replay: {} events, {:.0} MB ({:.0} B average), written in {:.1} s\n\
             log's own Replay           {:.0} events/s, {:.0} MB/s ({:.2} s)\n\
             one consumer, cursor=0     {:.0} events/s, {:.0} MB/s ({:.2} s)\n\
             consumer / log time        {:.2}x\n\
             /_health p50 / p99 / max   {:.1} / {:.1} / {:.1} ms, {} failures of {}",
            self.events,
            mb,
            self.bytes as f64 / self.events.max(1) as f64,
            self.write_seconds,
            self.log_replay_events_per_sec(),
            mb / self.log_seconds,
            self.log_seconds,
            self.events_per_sec(),
            mb / self.consumer_seconds,
            self.consumer_seconds,
            self.ratio(),
            self.health.p50_ms,
            self.health.p99_ms,
            self.health.max_ms,
            self.health.failures,
            self.health.requests,
        )
    }
}

/// Runs `replay`. Must be called inside an actix System.
pub async fn replay(
    options: &BenchOptions,
    replay: &ReplayOptions,
) -> Result<ReplayResult, BenchError> {
    options.require_spawned(
        "replay",
        "it writes the event log the relay serves into the relay's data dir",
    )?;
    crate::sim::install_crypto_provider();
    // Removed on every exit: by this guard until the relay runs, then with the relay.
    let mut dir = RemoveOnDrop(Some(RelayProcess::new_dir()?));
    let data = dir.path().join("data");
    let log_err = |e: String| BenchError::Relay(format!("event log: {e}"));
    let written = Instant::now();
    let (mut log, _) =
        EventLog::open(EventLogConfig::new(&data)).map_err(|e| log_err(e.to_string()))?;
    let (events, bytes) = fill(&mut log, replay.log_bytes).map_err(log_err)?;
    let write_seconds = written.elapsed().as_secs_f64();
    eprintln!(
        "wrote {events} events, {:.0} MB in {write_seconds:.1} s; reading it back",
        bytes as f64 / 1e6
    );
    let log_seconds = own_read_seconds(&log, events).map_err(log_err)?;
    // The relay opens the log itself.
    drop(log);
    eprintln!(
        "the log's own Replay: {:.0} events/s; starting the relay",
        events as f64 / log_seconds
    );

    let plc = SimPlc::start()?;
    let database_url = super::prepare_database(&[], true).await?;
    let bin = match &options.relay_bin {
        Some(bin) => bin.clone(),
        None => super::default_relay_bin()?,
    };
    let mut relay = RelayProcess::spawn_in(
        dir.disarm(),
        &bin,
        &database_url,
        &plc.url(),
        &options.relay_env,
    )?;
    let deadline = Instant::now() + options.timeout;
    while !relay.answers_health().await {
        relay.check_alive()?;
        if Instant::now() > deadline {
            return Err(BenchError::Relay("never answered /_health".into()));
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let probe = relay.probe();
    let mut consumer = LeanConsumer::connect(
        relay.addr(),
        "/xrpc/com.atproto.sync.subscribeRepos?cursor=0",
        "rookery-fleet-replay",
    )
    .await
    .map_err(|e| BenchError::Relay(format!("connect: {e}")))?;
    let begun = Instant::now();
    let mut got = 0u64;
    let mut next_progress = begun + super::PROGRESS_PERIOD;
    while got < events {
        match tokio::time::timeout_at(deadline.into(), consumer.next()).await {
            Ok(Ok(Some(Message::Binary(_)))) => got += 1,
            Ok(Ok(Some(_))) => {}
            Ok(other) => {
                return Err(BenchError::Relay(format!(
                    "the stream ended after {got} of {events} events: {other:?}"
                )));
            }
            Err(_) => {
                return Err(BenchError::Relay(format!(
                    "--timeout after {got} of {events} events"
                )));
            }
        }
        if got.is_multiple_of(10_000) && Instant::now() >= next_progress {
            next_progress = Instant::now() + super::PROGRESS_PERIOD;
            eprintln!(
                "{:>5.1} s  {got} of {events} events ({:.0}/s)",
                begun.elapsed().as_secs_f64(),
                got as f64 / begun.elapsed().as_secs_f64()
            );
        }
    }
    let consumer_seconds = begun.elapsed().as_secs_f64();
    consumer.close().await;
    let health = probe.stop().await;
    drop(relay);
    plc.stop().await;
    Ok(ReplayResult {
        events,
        bytes,
        write_seconds,
        log_seconds,
        consumer_seconds,
        health,
    })
}

/// A directory removed when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn disarm(&mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Appends re-sequenced commits until the log holds `target` bytes; returns events and
/// bytes.
fn fill(log: &mut EventLog, target: u64) -> Result<(u64, u64), String> {
    let mut repo = SigningRepo::new(DID, Curve::K256, 1_000, 1_700_000_000_000_000);
    let mut templates = Vec::with_capacity(TEMPLATES);
    for i in 0..TEMPLATES {
        let commit = repo.commit(&[Change::Create(record_path(10_000 + i))]);
        let encoded =
            frame::encode_frame(&Frame::Commit(Box::new(commit))).map_err(|e| e.to_string())?;
        templates.push(Bytes::from(encoded));
    }
    let hash = did_hash(DID);
    let (mut events, mut bytes) = (0u64, 0u64);
    let mut batch = Vec::with_capacity(APPEND_BATCH);
    let mut next_report = 1_000_000_000;
    while bytes < target {
        let seq = events + 1;
        let template = &templates[(events % TEMPLATES as u64) as usize];
        let body = Bytes::from(frame::resequence(template, seq as i64).map_err(|e| e.to_string())?);
        bytes += body.len() as u64;
        events += 1;
        batch.push(AppendRecord {
            seq,
            kind: 1,
            did_hash: hash,
            body,
        });
        if batch.len() == APPEND_BATCH || bytes >= target {
            log.append(&batch).map_err(|e| e.to_string())?;
            batch.clear();
        }
        if bytes >= next_report {
            eprintln!("  {:.1} GB written", bytes as f64 / 1e9);
            next_report += 1_000_000_000;
        }
    }
    Ok((events, bytes))
}

/// The log's own read of every record from the oldest: the faster of two passes.
fn own_read_seconds(log: &EventLog, events: u64) -> Result<f64, String> {
    let reader = log.reader();
    let mut best = f64::MAX;
    for _ in 0..2 {
        let begun = Instant::now();
        let mut replay = reader.read_from_oldest();
        let mut read = 0u64;
        loop {
            let batch = replay
                .next_batch(READ_BATCH_RECORDS, READ_BATCH_BYTES)
                .map_err(|e| e.to_string())?;
            if batch.is_empty() {
                break;
            }
            read += batch.len() as u64;
        }
        if read != events {
            return Err(format!("read {read} of {events} records"));
        }
        best = best.min(begun.elapsed().as_secs_f64());
    }
    Ok(best)
}
