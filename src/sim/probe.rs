//! The health probe: asks a relay's health endpoint every 250 ms during a run and reports how
//! long the answers took and how many failed, so a bench can say whether the relay stayed
//! responsive while it worked (the cold-start ramp is the hard case).
//!
//! A failure is an answer other than 200, a transport error, or no complete answer within the
//! timeout (1 s); every request, failed or not, counts in the latency figures, a timeout as the
//! full timeout, so a stall shows in p99 and max. Requests are sequential: a tick that passes
//! while one is outstanding is skipped, not queued (a stalled relay is not piled on).
//! Bounded for runs of hours: latencies go into a fixed-size [`LatencyHistogram`].
//!
//! Runs on the actix System's current thread (awc's client is not `Send`), like the rest of
//! the simulator.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

use crate::sim::latency::LatencyHistogram;

/// Largest health body read (the rest of a larger one is a failure).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The health path rookery serves.
pub const DEFAULT_HEALTH_PATH: &str = "/_health";

#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// The full URL asked, e.g. `http://127.0.0.1:2470/_health`.
    pub url: String,
    pub every: Duration,
    pub timeout: Duration,
}

impl ProbeSettings {
    /// Every 250 ms with a 1 s timeout.
    pub fn new(url: impl Into<String>) -> ProbeSettings {
        ProbeSettings {
            url: url.into(),
            every: Duration::from_millis(250),
            timeout: Duration::from_secs(1),
        }
    }
}

/// What the probe saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    pub requests: u64,
    pub failures: u64,
    /// Failures that were timeouts.
    pub timeouts: u64,
    /// Failures that were answers other than 200.
    pub bad_status: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Default)]
struct Tally {
    latency: LatencyHistogram,
    failures: u64,
    timeouts: u64,
    bad_status: u64,
}

impl Tally {
    fn report(&self) -> ProbeReport {
        ProbeReport {
            requests: self.latency.count(),
            failures: self.failures,
            timeouts: self.timeouts,
            bad_status: self.bad_status,
            p50_ms: self.latency.quantile_ms(0.5),
            p99_ms: self.latency.quantile_ms(0.99),
            max_ms: self.latency.max_ms(),
        }
    }
}

/// A running probe; [`Probe::stop`] ends it and returns the report.
pub struct Probe {
    tally: Arc<Mutex<Tally>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// How one request ended.
enum Outcome {
    Ok,
    BadStatus,
    Timeout,
    Failed,
}

impl Probe {
    /// Starts probing at once. Must be called inside an actix System.
    pub fn start(settings: ProbeSettings) -> Probe {
        crate::sim::install_crypto_provider();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let task_tally = tally.clone();
        let task = actix_rt::spawn(async move {
            // The request's own timeout is the probe's; awc's is only a backstop.
            let client = awc::Client::builder()
                .timeout(settings.timeout + Duration::from_secs(1))
                .finish();
            let mut ticks = tokio::time::interval(settings.every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stop_rx => return,
                    _ = ticks.tick() => {}
                }
                let started = Instant::now();
                let outcome = tokio::select! {
                    _ = &mut stop_rx => return,
                    outcome = tokio::time::timeout(settings.timeout, ask(&client, &settings.url)) => {
                        outcome.unwrap_or(Outcome::Timeout)
                    }
                };
                let took = started.elapsed().min(settings.timeout);
                let mut tally = lock(&task_tally);
                tally.latency.record(took);
                match outcome {
                    Outcome::Ok => {}
                    Outcome::BadStatus => {
                        tally.failures += 1;
                        tally.bad_status += 1;
                    }
                    Outcome::Timeout => {
                        tally.failures += 1;
                        tally.timeouts += 1;
                    }
                    Outcome::Failed => tally.failures += 1,
                }
            }
        });
        Probe {
            tally,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// The figures so far (for progress lines).
    pub fn snapshot(&self) -> ProbeReport {
        lock(&self.tally).report()
    }

    /// Stops probing (an outstanding request is abandoned, not counted) and reports.
    pub async fn stop(mut self) -> ProbeReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.snapshot()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A poisoned tally is still a tally: the counters stay meaningful.
fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn ask(client: &awc::Client, url: &str) -> Outcome {
    let Ok(mut response) = client.get(url).send().await else {
        return Outcome::Failed;
    };
    // Read the body, so the answer is complete and the connection can be reused.
    let body = response.body().limit(MAX_BODY_BYTES).await;
    match (response.status().as_u16(), body) {
        (200, Ok(_)) => Outcome::Ok,
        (200, Err(_)) => Outcome::Failed,
        _ => Outcome::BadStatus,
    }
}
