//! `chaos`: every fault at once for a while, one SIGKILL and restart of the relay, and
//! checker reconnects; the verdict is the coverage checker's: every valid event delivered,
//! no duplicate, no seq going backwards, no invalid event delivered.
//!
//! The table gets the host faults of the bench's options (dead, flapping, accept-then-drop,
//! slow and relay-claiming hosts; [`HostFaults::chaos`] unless set otherwise), the driver the
//! event faults ([`EventFaults::chaos`]: bad signatures, wrong authority, future revs,
//! oversized and garbage frames, out-of-order seqs, hosts that reset to `FutureCursor` and
//! hosts that restart without their outbox). The checker follows the run live and
//! reconnects with its cursor [`CHECKER_RECONNECTS`] times; at `restart_at` the relay is
//! killed with SIGKILL and started again on the same data dir, database and port (the
//! checker reconnects to it as soon as it answers). After `duration` the driver stops and
//! the relay gets `drain` to deliver the rest.
//!
//! Host resets and restarts pause from [`HOST_FAULTS_QUIET_BEFORE_RESTART`] before the
//! SIGKILL to [`HOST_FAULTS_QUIET_AFTER_RESTART`] after it. Together the two are a double
//! failure no relay can cover: a relay killed before it stored a host's cursor reset asks the
//! reset host for its old cursor; it gets `FutureCursor` and, by design (LESSONS.md 4),
//! reconnects without a cursor, or, once the host's new seqs pass the old cursor, gets only
//! what follows it. Either way the events the host published in between are not asked for. A relay already running (`--relay-url`) is
//! not this bench's process: it is never restarted, and the table says so.
//!
//! [`HostFaults::chaos`]: crate::sim::fleet::HostFaults::chaos

use std::time::{Duration, Instant};

use super::{BenchError, BenchOptions, RampResult, round2};
use crate::sim::checker::{Checker, CoverageReport, Expectations, RunEnd, Stop};
use crate::sim::fleet::{EventDriver, EventFaults};
use crate::sim::probe::ProbeReport;

/// Checker reconnects spread over the run (besides the one the relay's restart forces).
pub const CHECKER_RECONNECTS: u32 = 3;
/// Host resets and restarts pause from this long before the relay's SIGKILL …
pub const HOST_FAULTS_QUIET_BEFORE_RESTART: Duration = Duration::from_secs(15);
/// … to this long after it.
pub const HOST_FAULTS_QUIET_AFTER_RESTART: Duration = Duration::from_secs(30);
/// How long the checker keeps trying to reach a restarted relay.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// How `chaos` runs.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub duration: Duration,
    /// Events/s over the fleet, valid and invalid.
    pub rate: f64,
    pub faults: EventFaults,
    /// When the relay is killed and restarted, from the start of publishing (`None`: never).
    pub restart_at: Option<Duration>,
    pub drain: Duration,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            duration: Duration::from_secs(600),
            rate: 600.0,
            faults: EventFaults::chaos(),
            restart_at: Some(Duration::from_secs(300)),
            drain: Duration::from_secs(60),
        }
    }
}

/// What `chaos` measured.
#[derive(Debug, Clone)]
pub struct ChaosResult {
    pub ramp: RampResult,
    pub coverage: CoverageReport,
    pub published: u64,
    pub invalid_published: u64,
    pub flaps: u64,
    pub host_resets: u64,
    pub host_restarts: u64,
    pub relay_restarts: u32,
    /// A restart was asked for, but the relay is not this bench's process.
    pub restart_skipped: bool,
    /// From the SIGKILL until the checker is reconnected to the restarted relay.
    pub relay_down_s: Option<f64>,
    pub drained_after_s: Option<f64>,
    pub health: ProbeReport,
}

impl ChaosResult {
    /// The goal: everything valid delivered once, in order, nothing invalid.
    pub fn passed(&self) -> bool {
        let c = &self.coverage;
        c.missing == 0 && c.duplicated == 0 && c.out_of_order == 0 && c.invalid_delivered == 0
    }

    pub fn json(&self) -> serde_json::Value {
        let c = &self.coverage;
        serde_json::json!({
            "bench": "chaos",
            "valid_published": c.valid_published,
            "delivered": c.delivered,
            "missing": c.missing,
            "duplicated": c.duplicated,
            "harmless_repeats": c.harmless_repeats,
            "out_of_order": c.out_of_order,
            "invalid_delivered": c.invalid_delivered,
            "invalid_published": c.invalid_published,
            "passed": self.passed(),
            "published": self.published,
            "flaps": self.flaps,
            "host_resets": self.host_resets,
            "host_restarts": self.host_restarts,
            "relay_restarts": self.relay_restarts,
            "relay_restart_skipped": self.restart_skipped,
            "relay_down_s": self.relay_down_s.map(round2),
            "checker_reconnects": c.reconnects,
            "drained_after_s": self.drained_after_s.map(round2),
            "missing_sample": c.missing_sample,
            "invalid_sample": c.invalid_sample,
            "duplicated_sample": c.duplicated_sample,
            "unexpected": c.unexpected,
            "latency_p50_ms": c.latency_p50_ms,
            "latency_p99_ms": c.latency_p99_ms,
            "hosts": self.ramp.hosts,
            "hosts_connected": self.ramp.hosts_connected,
            "health_p99_ms": round2(self.health.p99_ms),
            "health_max_ms": round2(self.health.max_ms),
            "health_failures": self.health.failures,
        })
    }

    pub fn table(&self) -> String {
        let c = &self.coverage;
        let secs = |s: Option<f64>| s.map_or("never".to_string(), |s| format!("{s:.1} s"));
        let restarts = if self.restart_skipped {
            "none: the relay is not this bench's process (no restart)".to_string()
        } else {
            format!("{} (down {})", self.relay_restarts, secs(self.relay_down_s))
        };
        format!(
            "chaos: {} hosts ({} reachable, {} connected after the ramp)\n\
             published                  {} ({} invalid)\n\
             valid published            {}\n\
             delivered                  {}\n\
             missing                    {}\n\
             duplicated                 {} (#commit)\n\
             harmless repeats           {} (#identity, #account, #sync resent after the crash)\n\
             out of order               {}\n\
             invalid delivered          {}\n\
             faults over time           {} flaps, {} host resets, {} host restarts\n\
             relay SIGKILLs             {restarts}\n\
             checker reconnects         {}\n\
             all delivered after        {} of drain\n\
             delivery p50 / p99 / max   {:.1} / {:.1} / {:.1} ms\n\
             /_health p50 / p99 / max   {:.1} / {:.1} / {:.1} ms, {} failures of {} \
             (the restart's included)\n\
             verdict                    {}",
            self.ramp.hosts,
            self.ramp.reachable,
            self.ramp.hosts_connected,
            self.published,
            self.invalid_published,
            c.valid_published,
            c.delivered,
            c.missing,
            c.duplicated,
            c.harmless_repeats,
            c.out_of_order,
            c.invalid_delivered,
            self.flaps,
            self.host_resets,
            self.host_restarts,
            c.reconnects,
            secs(self.drained_after_s),
            c.latency_p50_ms,
            c.latency_p99_ms,
            c.latency_max_ms,
            self.health.p50_ms,
            self.health.p99_ms,
            self.health.max_ms,
            self.health.failures,
            self.health.requests,
            if self.passed() {
                "every valid event delivered once, in order; nothing invalid"
            } else {
                "FAILED (see above)"
            },
        )
    }
}

/// Runs `chaos`. Must be called inside an actix System.
pub async fn chaos(
    options: &BenchOptions,
    chaos: &ChaosOptions,
) -> Result<ChaosResult, BenchError> {
    chaos
        .faults
        .check()
        .map_err(|e| BenchError::Relay(format!("faults: {e}")))?;
    let (ramp, mut relay, fleet) = super::ramp_and_keep(options).await?;
    let checker_err = |e: &dyn std::fmt::Display| BenchError::Relay(format!("checker: {e}"));
    let mut checker = Checker::connect(relay.addr(), None, Expectations::new())
        .await
        .map_err(|e| checker_err(&e))?;
    let feed = checker.feed();
    let probe = relay.probe();
    let driver = EventDriver::start_recording(&fleet, chaos.rate, options.seed, chaos.faults, feed);
    let begun = Instant::now();
    let end = begun + chaos.duration;
    let step = chaos.duration / (CHECKER_RECONNECTS + 1);
    let mut reconnects_at: Vec<Instant> =
        (1..=CHECKER_RECONNECTS).map(|i| begun + step * i).collect();
    let restart_skipped = chaos.restart_at.is_some() && relay.process().is_none();
    if restart_skipped {
        eprintln!("no restart: the relay is not this bench's process");
    }
    let mut restart_at = chaos
        .restart_at
        .filter(|_| !restart_skipped)
        .map(|at| begun + at);
    let restart_time = restart_at;
    let mut relay_restarts = 0;
    let mut relay_down_s = None;
    let mut next_progress = begun + super::PROGRESS_PERIOD;
    while Instant::now() < end {
        let now = Instant::now();
        driver.pause_host_faults(restart_time.is_some_and(|at| {
            now + HOST_FAULTS_QUIET_BEFORE_RESTART >= at
                && now < at + HOST_FAULTS_QUIET_AFTER_RESTART
        }));
        let mut wake = end.min(next_progress);
        if let Some(&at) = reconnects_at.first() {
            wake = wake.min(at);
        }
        if let Some(at) = restart_at {
            wake = wake.min(at);
        }
        if let RunEnd::Closed(_) = checker.run_until(wake.into(), Stop::AtDeadline).await {
            // The relay went away (its restart) or cut the stream: resume with the cursor.
            reconnect(&mut checker, &mut relay).await?;
        }
        let now_after = Instant::now();
        if reconnects_at.first().is_some_and(|&at| now_after >= at) {
            reconnects_at.remove(0);
            reconnect(&mut checker, &mut relay).await?;
        }
        if restart_at.is_some_and(|at| now_after >= at) {
            restart_at = None;
            eprintln!(
                "{:>6.1} s  SIGKILL to the relay",
                begun.elapsed().as_secs_f64()
            );
            let killed = Instant::now();
            if let Some(process) = relay.process() {
                process.kill_and_restart()?;
            }
            relay_restarts += 1;
            reconnect(&mut checker, &mut relay).await?;
            relay_down_s = Some(killed.elapsed().as_secs_f64());
        }
        if now_after >= next_progress {
            next_progress = now_after + super::PROGRESS_PERIOD;
            let r = checker.report();
            let stats = driver.stats();
            eprintln!(
                "{:>6.1} s  published {} ({} invalid)  delivered {}  behind {}  dups {}  \
                 invalid delivered {}  resets {}  restarts {}",
                begun.elapsed().as_secs_f64(),
                stats.events(),
                stats.invalid(),
                r.delivered,
                r.valid_published - r.delivered,
                r.duplicated,
                r.invalid_delivered,
                stats.resets(),
                stats.restarts(),
            );
        }
    }
    let stats = driver.stats().clone();
    driver.stop();
    eprintln!("publishing stopped; draining for up to {:?}", chaos.drain);
    let drain_begun = Instant::now();
    let drain_end = drain_begun + chaos.drain;
    while Instant::now() < drain_end {
        match checker.run_until(drain_end.into(), Stop::WhenAllSeen).await {
            RunEnd::AllSeen | RunEnd::Deadline => break,
            RunEnd::Closed(_) => reconnect(&mut checker, &mut relay).await?,
        }
    }
    let coverage = checker.report();
    let drained_after_s = (coverage.missing == 0).then(|| drain_begun.elapsed().as_secs_f64());
    let health = probe.stop().await;
    drop(relay);
    fleet.stop().await;
    Ok(ChaosResult {
        ramp,
        coverage,
        published: stats.events(),
        invalid_published: stats.invalid(),
        flaps: stats.flaps(),
        host_resets: stats.resets(),
        host_restarts: stats.restarts(),
        relay_restarts,
        restart_skipped,
        relay_down_s,
        drained_after_s,
        health,
    })
}

/// Reconnects the checker with its cursor, retrying while the relay (re)starts.
async fn reconnect(checker: &mut Checker, relay: &mut super::Relay) -> Result<(), BenchError> {
    let deadline = Instant::now() + RECONNECT_PATIENCE;
    loop {
        relay.check_alive()?;
        match checker.reconnect().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(BenchError::Relay(format!("checker reconnect: {e}")));
            }
            Err(_) => actix_rt::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
