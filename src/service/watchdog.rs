//! The watchdog: `WATCHDOG=1` only while the ingest pipeline makes progress, and a
//! `STATUS=` line for `systemctl status`.
//!
//! A ping from a timer alone would prove only that one thread runs. What a relay must not do
//! is sit alive while nothing it reads becomes durable, so each tick asks the two ingest
//! singletons every event passes through, and [`ProgressCheck`] decides:
//! - the **Sequencer** and the **Persister** answer a state query within the deadline (a
//!   Persister stuck in `fdatasync`, or an arbiter blocked by a bug, does not answer);
//! - neither is **halted or failed** (a poisoned event log stops ingest for good until a
//!   restart reopens it, which is exactly what the watchdog's restart does);
//! - when events are **sequenced but not yet durable**, the durable head moved within the
//!   stall window (a batch that never completes leaves both actors answering).
//!
//! A stall stops the pings (logged once, with the reason, and shown in `STATUS=`); systemd
//! then restarts the relay after `WatchdogSec=`. Progress resumes the pings. The decision is
//! the pure [`ProgressCheck::observe`] over a [`Sample`] and a clock, unit-tested on tokio's
//! paused clock; [`PipelineProbe`] takes samples from the real actors, [`start_service_loop`]
//! ties them to the [`Notifier`].
//!
//! A probe that does not answer in time is not dropped: it stays the one outstanding
//! question to that actor and is polled again at the next tick. Dropping it would leave the
//! instrumented mailbox count one too high, and re-asking every tick would fill the
//! Persister's small mailbox with questions while it is stuck.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::MailboxError;
use tokio::sync::watch;
use tokio::time::Instant;

use super::notify::Notifier;
use crate::actors::Ingest;
use crate::actors::firehose::Firehose;
use crate::actors::host_supervisor::HostCounts;
use crate::actors::obs::InstrumentedAddr;
use crate::actors::persister::{GetPersisterState, Persister, PersisterState};
use crate::actors::sequencer::{GetSequencerState, Sequencer, SequencerState};

/// How often `STATUS=` is refreshed (and progress checked) when systemd set no watchdog.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Stall window without a watchdog (the check then only logs).
pub const DEFAULT_STALL_WINDOW: Duration = Duration::from_secs(60);

/// One look at the ingest singletons. `None`: no answer within the deadline.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub sequencer: Option<SequencerState>,
    pub persister: Option<PersisterState>,
    /// The durable head the Persister last announced.
    pub durable_head: u64,
}

/// Why the pipeline is not making progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stall {
    SequencerUnresponsive,
    PersisterUnresponsive,
    /// The Sequencer refuses events (reason label).
    SequencerHalted(&'static str),
    /// The event log failed under the Persister (reason label).
    PersisterFailed(&'static str),
    /// Events wait to become durable and the head has not moved for `for_`.
    DurableHeadStuck {
        head: u64,
        waiting: usize,
        for_: Duration,
    },
}

impl Stall {
    /// A bounded label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Stall::SequencerUnresponsive => "sequencer_unresponsive",
            Stall::PersisterUnresponsive => "persister_unresponsive",
            Stall::SequencerHalted(_) => "sequencer_halted",
            Stall::PersisterFailed(_) => "persister_failed",
            Stall::DurableHeadStuck { .. } => "durable_head_stuck",
        }
    }
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stall::SequencerUnresponsive => f.write_str("the sequencer does not answer"),
            Stall::PersisterUnresponsive => f.write_str("the persister does not answer"),
            Stall::SequencerHalted(reason) => write!(f, "ingest halted ({reason})"),
            Stall::PersisterFailed(reason) => write!(f, "the event log failed ({reason})"),
            Stall::DurableHeadStuck {
                head,
                waiting,
                for_,
            } => write!(
                f,
                "{waiting} events wait to become durable and the head stayed at {head} for {}",
                humantime::format_duration(Duration::from_secs(for_.as_secs()))
            ),
        }
    }
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Progressing,
    Stalled(Stall),
}

/// Remembers when the durable head last moved and since when events wait, across samples.
#[derive(Clone, Debug)]
pub struct ProgressCheck {
    stall_window: Duration,
    head: u64,
    head_moved_at: Instant,
    /// Since when events have been waiting to become durable (none waiting: `None`).
    waiting_since: Option<Instant>,
}

impl ProgressCheck {
    /// Starts at `head`, as if it had just moved.
    pub fn new(now: Instant, head: u64, stall_window: Duration) -> ProgressCheck {
        ProgressCheck {
            stall_window,
            head,
            head_moved_at: now,
            waiting_since: None,
        }
    }

    /// The verdict on `sample`, taken at `now`.
    pub fn observe(&mut self, now: Instant, sample: &Sample) -> Verdict {
        if sample.durable_head != self.head {
            self.head = sample.durable_head;
            self.head_moved_at = now;
        }
        let Some(sequencer) = &sample.sequencer else {
            return Verdict::Stalled(Stall::SequencerUnresponsive);
        };
        let Some(persister) = &sample.persister else {
            return Verdict::Stalled(Stall::PersisterUnresponsive);
        };
        if let Some(reason) = persister.failed {
            return Verdict::Stalled(Stall::PersisterFailed(reason));
        }
        if let Some(reason) = sequencer.halted {
            return Verdict::Stalled(Stall::SequencerHalted(reason));
        }
        let waiting = sequencer.queued_events + sequencer.in_flight_events;
        if waiting == 0 {
            self.waiting_since = None;
            return Verdict::Progressing;
        }
        let since = *self.waiting_since.get_or_insert(now);
        // An idle relay's head stands still for hours; the clock starts when events began
        // to wait, or when the head last moved, whichever is later.
        let still = now.duration_since(since.max(self.head_moved_at));
        if still >= self.stall_window {
            return Verdict::Stalled(Stall::DurableHeadStuck {
                head: self.head,
                waiting,
                for_: still,
            });
        }
        Verdict::Progressing
    }
}

type Pending<T> = Pin<Box<dyn Future<Output = Result<T, MailboxError>>>>;

/// Takes [`Sample`]s from the running Sequencer and Persister, keeping at most one question
/// outstanding per actor.
pub struct PipelineProbe {
    sequencer: InstrumentedAddr<Sequencer>,
    persister: InstrumentedAddr<Persister>,
    durable_head: watch::Receiver<u64>,
    asking_sequencer: Option<Pending<SequencerState>>,
    asking_persister: Option<Pending<PersisterState>>,
}

impl PipelineProbe {
    pub fn new(ingest: &Ingest) -> PipelineProbe {
        PipelineProbe::from_parts(
            ingest.sequencer.clone(),
            ingest.persister.clone(),
            ingest.durable_head.clone(),
        )
    }

    /// Over a Sequencer and Persister started by hand (tests).
    pub fn from_parts(
        sequencer: InstrumentedAddr<Sequencer>,
        persister: InstrumentedAddr<Persister>,
        durable_head: watch::Receiver<u64>,
    ) -> PipelineProbe {
        PipelineProbe {
            sequencer,
            persister,
            durable_head,
            asking_sequencer: None,
            asking_persister: None,
        }
    }

    /// Asks both actors (or keeps waiting for the answers to earlier questions) for at most
    /// `deadline`.
    pub async fn sample(&mut self, deadline: Duration) -> Sample {
        let sequencer = self.sequencer.clone();
        let ask_sequencer = self.asking_sequencer.get_or_insert_with(|| {
            Box::pin(async move { sequencer.send(GetSequencerState).await })
        });
        let persister = self.persister.clone();
        let ask_persister = self.asking_persister.get_or_insert_with(|| {
            Box::pin(async move { persister.send(GetPersisterState).await })
        });
        let until = Instant::now() + deadline;
        let (sequencer, persister) = tokio::join!(
            tokio::time::timeout_at(until, ask_sequencer.as_mut()),
            tokio::time::timeout_at(until, ask_persister.as_mut()),
        );
        Sample {
            sequencer: answered(sequencer, &mut self.asking_sequencer),
            persister: answered(persister, &mut self.asking_persister),
            durable_head: *self.durable_head.borrow(),
        }
    }
}

/// The state if the question was answered (then the next sample asks again); `None` if it is
/// still pending (kept) or the actor is gone (asked again, and answered `Closed` at once).
fn answered<T, E>(
    outcome: Result<Result<T, MailboxError>, E>,
    pending: &mut Option<Pending<T>>,
) -> Option<T> {
    match outcome {
        Ok(answer) => {
            *pending = None;
            answer.ok()
        }
        Err(_) => None,
    }
}

/// What `STATUS=` reports besides the verdict.
#[derive(Clone)]
pub struct StatusSources {
    pub hosts: HostCounts,
    pub firehose: Arc<Firehose>,
    /// Raised by the write-behind while Postgres writes fail.
    pub postgres_degraded: Arc<AtomicBool>,
}

impl StatusSources {
    /// One line: the verdict, hosts connected, consumers, the seq head.
    pub fn line(&self, verdict: &Verdict, head: u64) -> String {
        let state = match verdict {
            Verdict::Stalled(stall) => format!("stalled, watchdog pings stopped: {stall}"),
            Verdict::Progressing if self.postgres_degraded.load(Ordering::Acquire) => {
                "degraded (Postgres writes failing)".to_string()
            }
            Verdict::Progressing => "ready".to_string(),
        };
        format!(
            "{state}; {}/{} hosts connected, {} consumers, seq head {head}",
            self.hosts.connected(),
            self.hosts.known(),
            self.firehose.consumer_count(),
        )
    }
}

/// The running status and watchdog loop; stops when dropped or [`ServiceLoop::stop`]ped.
pub struct ServiceLoop {
    task: actix_rt::task::JoinHandle<()>,
}

impl ServiceLoop {
    /// Stops the loop (shutdown: the manager expects no pings while stopping).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for ServiceLoop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the loop on the current arbiter: every tick (half of `watchdog`, or
/// [`STATUS_INTERVAL`] without one) it samples the pipeline, pings when it progresses and
/// `watchdog` is set, and refreshes `STATUS=`. The first tick is immediate. The loop runs
/// without a service manager too: it then only logs stalls.
pub fn start_service_loop(
    notifier: Notifier,
    watchdog: Option<Duration>,
    mut probe: PipelineProbe,
    status: StatusSources,
) -> ServiceLoop {
    let tick = watchdog
        .map_or(STATUS_INTERVAL, |w| w / 2)
        .max(Duration::from_millis(10));
    let stall_window = watchdog.unwrap_or(DEFAULT_STALL_WINDOW);
    let task = actix_rt::spawn(async move {
        let mut check = ProgressCheck::new(Instant::now(), probe.durable_head(), stall_window);
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = false;
        loop {
            ticks.tick().await;
            let sample = probe.sample(tick * 3 / 4).await;
            let verdict = check.observe(Instant::now(), &sample);
            match &verdict {
                Verdict::Progressing => {
                    if watchdog.is_some() {
                        notifier.watchdog();
                    }
                    if stalled {
                        tracing::warn!("ingest progresses again; watchdog pings resumed");
                    }
                    stalled = false;
                }
                Verdict::Stalled(stall) => {
                    if !stalled {
                        tracing::error!(
                            reason = stall.reason(),
                            detail = %stall,
                            watchdog = watchdog.is_some(),
                            "ingest stalled: watchdog pings stop (systemd restarts rookery after WatchdogSec)"
                        );
                    }
                    stalled = true;
                }
            }
            notifier.status(&status.line(&verdict, sample.durable_head));
        }
    });
    ServiceLoop { task }
}

impl PipelineProbe {
    fn durable_head(&self) -> u64 {
        *self.durable_head.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(head: u64, waiting: usize) -> Sample {
        Sample {
            sequencer: Some(SequencerState {
                queued_events: waiting,
                ..SequencerState::default()
            }),
            persister: Some(PersisterState::default()),
            durable_head: head,
        }
    }

    const WINDOW: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn an_idle_or_moving_pipeline_progresses() {
        let mut check = ProgressCheck::new(Instant::now(), 5, WINDOW);
        // Idle for an hour: nothing waits, nothing is wrong.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(
            check.observe(Instant::now(), &sample(5, 0)),
            Verdict::Progressing
        );
        // Events start waiting: the window starts now, not when the head last moved.
        assert_eq!(
            check.observe(Instant::now(), &sample(5, 3)),
            Verdict::Progressing
        );
        // Waiting all along, but the head keeps moving: progress.
        for head in 6..20 {
            tokio::time::advance(WINDOW / 2).await;
            assert_eq!(
                check.observe(Instant::now(), &sample(head, 3)),
                Verdict::Progressing
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_stays_put_while_events_wait_is_a_stall() {
        let mut check = ProgressCheck::new(Instant::now(), 7, WINDOW);
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(
            check.observe(Instant::now(), &sample(7, 4)),
            Verdict::Progressing
        );
        tokio::time::advance(WINDOW - Duration::from_secs(1)).await;
        assert_eq!(
            check.observe(Instant::now(), &sample(7, 4)),
            Verdict::Progressing
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let verdict = check.observe(Instant::now(), &sample(7, 4));
        let Verdict::Stalled(stall) = verdict else {
            panic!("expected a stall, got {verdict:?}");
        };
        assert_eq!(stall.reason(), "durable_head_stuck");
        assert_eq!(
            stall,
            Stall::DurableHeadStuck {
                head: 7,
                waiting: 4,
                for_: WINDOW
            }
        );
        // The batch completes: progress again, and a new wait starts a new window.
        assert_eq!(
            check.observe(Instant::now(), &sample(11, 0)),
            Verdict::Progressing
        );
        tokio::time::advance(WINDOW / 2).await;
        assert_eq!(
            check.observe(Instant::now(), &sample(11, 2)),
            Verdict::Progressing
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_halts_and_failures_are_stalls_at_once() {
        let mut check = ProgressCheck::new(Instant::now(), 0, WINDOW);
        let now = Instant::now();
        let silent_sequencer = Sample {
            sequencer: None,
            ..sample(0, 0)
        };
        assert_eq!(
            check.observe(now, &silent_sequencer),
            Verdict::Stalled(Stall::SequencerUnresponsive)
        );
        let silent_persister = Sample {
            persister: None,
            ..sample(0, 0)
        };
        assert_eq!(
            check.observe(now, &silent_persister),
            Verdict::Stalled(Stall::PersisterUnresponsive)
        );
        let mut halted = sample(0, 0);
        if let Some(s) = halted.sequencer.as_mut() {
            s.halted = Some("io");
        }
        assert_eq!(
            check.observe(now, &halted),
            Verdict::Stalled(Stall::SequencerHalted("io"))
        );
        let mut failed = sample(0, 0);
        if let Some(p) = failed.persister.as_mut() {
            p.failed = Some("io");
        }
        assert_eq!(
            check.observe(now, &failed),
            Verdict::Stalled(Stall::PersisterFailed("io"))
        );
        assert_eq!(check.observe(now, &sample(0, 0)), Verdict::Progressing);
    }
}
