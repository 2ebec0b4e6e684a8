//! The bound on a graceful shutdown: one deadline (`--shutdown-timeout`, default 20 s) for
//! the whole sequence, each stage getting what is left of it.
//!
//! `main` runs the stages in the order that loses nothing (see its module doc); this module
//! owns the clock and the bookkeeping: which stage is running (and, inside the pipeline's
//! stage, which step), what did not finish and what never started. On expiry the remaining
//! stages are skipped, the caller logs [`ShutdownExpired`] (naming them) and exits non-zero;
//! whatever was left undone is what recovery handles after a crash anyway (the event log's
//! tail, cursors that replay a little), so cutting short is safe, only slower to restart.
//!
//! The manager sees each stage in `STATUS=`. systemd's own `TimeoutStopSec=` must be longer
//! than this bound plus stopping the embedded Postgres, or it kills rookery first.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::notify::Notifier;

/// Default bound of the whole graceful shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// The shutdown did not finish in time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "shutdown did not finish within --shutdown-timeout ({}); unfinished: {}",
    humantime::format_duration(*limit),
    unfinished.join("; ")
)]
pub struct ShutdownExpired {
    pub limit: Duration,
    /// The stage (and step) that was running, then every stage not started.
    pub unfinished: Vec<String>,
}

/// Which stage runs now, shared with whoever must report it (a second signal). Cheap to
/// clone.
#[derive(Clone, Debug, Default)]
pub struct ShutdownProgress(Arc<Mutex<Progress>>);

#[derive(Debug, Default)]
struct Progress {
    stage: Option<&'static str>,
    step: Option<&'static str>,
}

impl ShutdownProgress {
    /// Inside the current stage, the step now running (the pipeline reports its own).
    pub fn set_step(&self, step: &'static str) {
        self.lock().step = Some(step);
    }

    /// `stage` or `stage: step`, when a stage runs.
    pub fn current(&self) -> Option<String> {
        let p = self.lock();
        p.stage.map(|stage| match p.step {
            Some(step) => format!("{stage}: {step}"),
            None => stage.to_string(),
        })
    }

    fn enter(&self, stage: Option<&'static str>) {
        let mut p = self.lock();
        p.stage = stage;
        p.step = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs shutdown stages against one deadline.
#[derive(Debug)]
pub struct BoundedShutdown {
    limit: Duration,
    started: Instant,
    deadline: Instant,
    progress: ShutdownProgress,
    notifier: Notifier,
    unfinished: Mutex<Vec<String>>,
}

impl BoundedShutdown {
    /// Starts the clock: everything must be done within `limit` from now.
    pub fn start(limit: Duration, notifier: Notifier) -> BoundedShutdown {
        let started = Instant::now();
        BoundedShutdown {
            limit,
            started,
            deadline: started + limit,
            progress: ShutdownProgress::default(),
            notifier,
            unfinished: Mutex::default(),
        }
    }

    pub fn progress(&self) -> ShutdownProgress {
        self.progress.clone()
    }

    /// What is left of the bound.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Runs `work` with what is left of the bound. `None` if it did not finish (recorded,
    /// logged) or never started because the bound had already expired.
    pub async fn stage<F: Future>(&self, name: &'static str, work: F) -> Option<F::Output> {
        if self.remaining().is_zero() {
            self.record(format!("{name} (not started)"));
            return None;
        }
        self.progress.enter(Some(name));
        self.notifier.status(&format!("stopping: {name}"));
        let left = Duration::from_millis(self.remaining().as_millis() as u64);
        tracing::info!(stage = name, remaining = %humantime::format_duration(left), "shutdown stage");
        let outcome = tokio::time::timeout_at(self.deadline, work).await;
        let unfinished = self.progress.current();
        self.progress.enter(None);
        match outcome {
            Ok(done) => Some(done),
            Err(_) => {
                let what = unfinished.unwrap_or_else(|| name.to_string());
                tracing::warn!(stage = %what, limit = ?self.limit, "shutdown stage cut short by --shutdown-timeout");
                self.record(what);
                None
            }
        }
    }

    /// How long the shutdown took, or what it left unfinished.
    pub fn finish(self) -> Result<Duration, ShutdownExpired> {
        let unfinished = self
            .unfinished
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        if unfinished.is_empty() {
            Ok(self.started.elapsed())
        } else {
            Err(ShutdownExpired {
                limit: self.limit,
                unfinished,
            })
        }
    }

    fn record(&self, what: String) {
        self.unfinished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stages_within_the_bound_finish() {
        let shutdown = BoundedShutdown::start(Duration::from_secs(20), Notifier::disabled());
        let a = shutdown
            .stage("first", async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                1
            })
            .await;
        assert_eq!(a, Some(1));
        assert_eq!(shutdown.remaining(), Duration::from_secs(15));
        let b = shutdown.stage("second", async { 2 }).await;
        assert_eq!(b, Some(2));
        assert_eq!(shutdown.finish(), Ok(Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_names_the_running_step_and_skips_the_rest() {
        let shutdown = BoundedShutdown::start(Duration::from_secs(20), Notifier::disabled());
        let progress = shutdown.progress();
        shutdown
            .stage("stop accepting", tokio::time::sleep(Duration::from_secs(2)))
            .await;
        let stuck = shutdown
            .stage("stop ingest", async {
                progress.set_step("drain the validators");
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress.set_step("flush cursors and account state");
                assert_eq!(
                    progress.current().as_deref(),
                    Some("stop ingest: flush cursors and account state")
                );
                std::future::pending::<()>().await;
            })
            .await;
        assert_eq!(stuck, None);
        assert_eq!(progress.current(), None, "no stage runs any more");
        let started = Instant::now();
        assert_eq!(shutdown.stage("close consumers", async { 3 }).await, None);
        assert_eq!(
            Instant::now(),
            started,
            "a stage after expiry does not start"
        );
        let expired = shutdown.finish().expect_err("expired");
        assert_eq!(
            expired.unfinished,
            [
                "stop ingest: flush cursors and account state",
                "close consumers (not started)"
            ]
        );
        assert_eq!(
            expired.to_string(),
            "shutdown did not finish within --shutdown-timeout (20s); unfinished: stop ingest: \
             flush cursors and account state; close consumers (not started)"
        );
    }
}
