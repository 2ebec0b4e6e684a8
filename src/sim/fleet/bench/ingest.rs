//! `ingest`: the highest rate of fully validated events the relay sustains, through real
//! websockets from the fleet, with one consumer (the coverage checker) and every check on.
//!
//! After the ramp, the checker connects live and every account publishes one commit (the
//! warm-up: identities resolved and account state stored, as in a relay that has run for a
//! while; not counted in the steps). Then, for each rate of `rates` in turn, a corpus of
//! `rate × step` commits is built on every core ([`crate::sim::fleet::corpus`]; the relay
//! idles meanwhile) and the driver publishes it at that rate for `step`, each event
//! re-sequenced under its host's next seq and handed to the checker as published; then it
//! stops and gives the relay `drain` to deliver the rest. A step is **sustained** when, by
//! the end of its drain, every event it published was delivered exactly once, in order, and
//! the relay delivered at least [`SUSTAINED_SHARE`] of them within the step itself (it kept
//! up, rather than catching up afterwards). `events_per_sec` is the delivered rate of the
//! best sustained step. Steps stop after the first that is not sustained.
//!
//! `validate_full_us` is the single-core cost of decoding and fully validating one of the
//! fleet's `#commit`s (signature, sync 1.1 inversion against the previous state), measured in
//! this process before the fleet starts; `efficiency` is `events_per_sec` over what one core
//! doing nothing but that validation would manage (`1e6 / validate_full_us`), so 1.0 means
//! the whole relay on this machine keeps the pace of one core of bare validation.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{BenchError, BenchOptions, RampResult, round2};
use crate::atproto::frame::{self, Frame};
use crate::atproto::keys::Curve;
use crate::atproto::validate::{CommitVerdict, RepoState, ValidationPolicy, validate_commit};
use crate::sim::checker::{Checker, CoverageReport, Expectations, Stop};
use crate::sim::fleet::{Corpus, CorpusHost, EventDriver, Fleet};
use crate::sim::probe::ProbeReport;
use crate::testkit::repo::{Change, SigningRepo, record_path};

/// Share of a step's events that must arrive within the step for it to count as sustained.
pub const SUSTAINED_SHARE: f64 = 0.97;

/// How `ingest` runs.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Offered rates, events/s, in the order they are tried.
    pub rates: Vec<f64>,
    /// How long each rate is offered.
    pub step: Duration,
    /// How long the relay gets after a step to deliver the rest.
    pub drain: Duration,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            rates: vec![1_000.0, 2_000.0, 4_000.0, 8_000.0, 16_000.0, 32_000.0],
            step: Duration::from_secs(20),
            drain: Duration::from_secs(10),
        }
    }
}

/// One rate of the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestStep {
    pub offered_per_sec: f64,
    /// What the driver managed to publish, per second of the step.
    pub published_per_sec: f64,
    /// What the checker received within the step, per second.
    pub delivered_per_sec: f64,
    pub published: u64,
    pub delivered_in_step: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub invalid_delivered: u64,
    /// Seconds after the step until everything was delivered (`None`: not within `drain`).
    pub drained_after_s: Option<f64>,
    /// Share of the step the driver spent publishing events (it shares the machine with
    /// the relay).
    pub driver_busy: f64,
    /// Commits in the step's corpus, and the seconds building them took before the step.
    pub corpus_commits: usize,
    pub corpus_built_s: f64,
    pub sustained: bool,
}

/// What `ingest` measured.
#[derive(Debug, Clone)]
pub struct IngestResult {
    pub ramp: RampResult,
    pub steps: Vec<IngestStep>,
    pub validate_full_us: f64,
    pub coverage: CoverageReport,
    /// Seconds the warm-up (one commit per account) took to be delivered.
    pub warm_up_s: f64,
    /// `/_health` during the steps.
    pub health: ProbeReport,
}

impl IngestResult {
    /// The best sustained step's delivered rate (0 when none was sustained).
    pub fn events_per_sec(&self) -> f64 {
        self.steps
            .iter()
            .filter(|s| s.sustained)
            .map(|s| s.delivered_per_sec)
            .fold(0.0, f64::max)
    }

    pub fn efficiency(&self) -> f64 {
        if self.validate_full_us > 0.0 {
            self.events_per_sec() * self.validate_full_us / 1e6
        } else {
            0.0
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "ingest",
            "events_per_sec": round2(self.events_per_sec()),
            "validate_full_us": round2(self.validate_full_us),
            "efficiency": round2(self.efficiency()),
            "hosts": self.ramp.hosts,
            "hosts_connected": self.ramp.hosts_connected,
            "steps": self.steps,
            "warm_up_s": round2(self.warm_up_s),
            "missing": self.coverage.missing,
            "duplicated": self.coverage.duplicated,
            "out_of_order": self.coverage.out_of_order,
            "latency_p50_ms": self.coverage.latency_p50_ms,
            "latency_p99_ms": self.coverage.latency_p99_ms,
            "health_p99_ms": round2(self.health.p99_ms),
            "health_max_ms": round2(self.health.max_ms),
            "health_failures": self.health.failures,
        })
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "ingest: {} hosts ({} connected), one consumer, every check on\n\
             {:>9} {:>9} {:>9} {:>8} {:>6} {:>5} {:>7} {:>7}  sustained\n",
            self.ramp.hosts,
            self.ramp.hosts_connected,
            "offered/s",
            "publ./s",
            "deliv./s",
            "missing",
            "dups",
            "ooo",
            "drain s",
            "drv %",
        );
        for s in &self.steps {
            out.push_str(&format!(
                "{:>9.0} {:>9.0} {:>9.0} {:>8} {:>6} {:>5} {:>7} {:>6.0}%  {}\n",
                s.offered_per_sec,
                s.published_per_sec,
                s.delivered_per_sec,
                s.missing,
                s.duplicated,
                s.out_of_order,
                s.drained_after_s
                    .map_or("never".to_string(), |d| format!("{d:.1}")),
                s.driver_busy * 100.0,
                if s.sustained { "yes" } else { "no" },
            ));
        }
        out.push_str(&format!(
            "sustained                  {:.0} events/s\n\
             validate/full, one core    {:.1} µs per event ({:.0} events/s)\n\
             efficiency                 {:.2} (sustained rate / one core of bare validation)\n\
             delivery p50 / p99 / max   {:.1} / {:.1} / {:.1} ms\n\
             /_health p50 / p99 / max   {:.1} / {:.1} / {:.1} ms, {} failures of {}",
            self.events_per_sec(),
            self.validate_full_us,
            if self.validate_full_us > 0.0 {
                1e6 / self.validate_full_us
            } else {
                0.0
            },
            self.efficiency(),
            self.coverage.latency_p50_ms,
            self.coverage.latency_p99_ms,
            self.coverage.latency_max_ms,
            self.health.p50_ms,
            self.health.p99_ms,
            self.health.max_ms,
            self.health.failures,
            self.health.requests,
        ));
        out
    }
}

/// Runs `ingest`. Must be called inside an actix System.
pub async fn ingest(
    options: &BenchOptions,
    ingest: &IngestOptions,
) -> Result<IngestResult, BenchError> {
    let validate_full_us = validate_full_micros()?;
    eprintln!("validate/full on one core: {validate_full_us:.1} µs per event");
    let (ramp, mut relay, fleet) = super::ramp_and_keep(options).await?;
    let mut checker = Checker::connect(relay.addr(), None, Expectations::new())
        .await
        .map_err(|e| BenchError::Relay(format!("checker: {e}")))?;
    let feed = checker.feed();
    let probe = relay.probe();
    let deadline = Instant::now() + options.timeout;
    let warm_up_s = super::warm_up(&fleet, &mut checker, &feed, deadline).await;
    let mut steps = Vec::new();
    for (index, &rate) in ingest.rates.iter().enumerate() {
        if Instant::now() + ingest.step + ingest.drain > deadline {
            eprintln!(
                "the run's --timeout ends before step {}; stopping",
                index + 1
            );
            break;
        }
        relay.check_alive()?;
        let corpus = build_corpus(
            &fleet,
            &mut checker,
            (rate * ingest.step.as_secs_f64() * CORPUS_MARGIN).ceil() as usize,
            options.seed + index as u64,
        )
        .await?;
        let (corpus_commits, corpus_built_s) = (corpus.len(), corpus.built_in.as_secs_f64());
        let before = checker.report();
        let driver = EventDriver::start_corpus(&fleet, rate, corpus, feed.clone());
        let begun = Instant::now();
        let step_end = tokio::time::Instant::now() + ingest.step;
        // Progress every few seconds while the step runs.
        while tokio::time::Instant::now() < step_end {
            let next = (tokio::time::Instant::now() + super::PROGRESS_PERIOD).min(step_end);
            checker.run_until(next, Stop::AtDeadline).await;
            let now = checker.report();
            eprintln!(
                "{:>5.1} s at {rate:.0}/s: published {}, delivered {}, behind {}",
                begun.elapsed().as_secs_f64(),
                now.valid_published - before.valid_published,
                now.delivered - before.delivered,
                now.valid_published - now.delivered,
            );
        }
        let seconds = begun.elapsed().as_secs_f64();
        let stats = driver.stats().clone();
        driver.stop();
        let in_step = checker.report();
        let drain_begun = Instant::now();
        checker
            .run_until(
                tokio::time::Instant::now() + ingest.drain,
                Stop::WhenAllSeen,
            )
            .await;
        let after = checker.report();
        let published = after.valid_published - before.valid_published;
        let delivered_in_step = in_step.delivered - before.delivered;
        let missing = after.missing;
        let step = IngestStep {
            offered_per_sec: rate,
            published_per_sec: published as f64 / seconds,
            delivered_per_sec: delivered_in_step as f64 / seconds,
            published,
            delivered_in_step,
            missing,
            duplicated: after.duplicated - before.duplicated,
            out_of_order: after.out_of_order - before.out_of_order,
            invalid_delivered: after.invalid_delivered - before.invalid_delivered,
            drained_after_s: (missing == 0).then(|| drain_begun.elapsed().as_secs_f64()),
            driver_busy: stats.busy().as_secs_f64() / seconds,
            corpus_commits,
            corpus_built_s: round2(corpus_built_s),
            sustained: missing == 0
                && after.duplicated == before.duplicated
                && after.out_of_order == before.out_of_order
                && delivered_in_step as f64 >= SUSTAINED_SHARE * published as f64,
        };
        eprintln!(
            "step {rate:.0}/s: published {:.0}/s, delivered {:.0}/s in the step, missing {}, \
             {}",
            step.published_per_sec,
            step.delivered_per_sec,
            step.missing,
            if step.sustained {
                "sustained"
            } else {
                "not sustained"
            }
        );
        let sustained = step.sustained;
        steps.push(step);
        if !sustained {
            break;
        }
    }
    let health = probe.stop().await;
    let coverage = checker.report();
    drop(relay);
    fleet.stop().await;
    Ok(IngestResult {
        ramp,
        steps,
        validate_full_us,
        coverage,
        warm_up_s,
        health,
    })
}

/// A step's corpus holds this much more than `rate × step` (the driver catches up after a
/// slow tick, and must not run out before the step ends).
const CORPUS_MARGIN: f64 = 1.05;

/// Builds a step's corpus on every core of the machine (the relay idles meanwhile) while the
/// checker keeps reading the firehose, so the relay never sees a consumer that stopped.
async fn build_corpus(
    fleet: &Fleet,
    checker: &mut Checker,
    count: usize,
    seed: u64,
) -> Result<Corpus, BenchError> {
    let hosts = CorpusHost::of(fleet);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let building =
        tokio::task::spawn_blocking(move || Corpus::generate(&hosts, count, seed, threads));
    while !building.is_finished() {
        checker
            .run_until(
                tokio::time::Instant::now() + Duration::from_millis(100),
                Stop::AtDeadline,
            )
            .await;
    }
    let corpus = building
        .await
        .map_err(|e| BenchError::Relay(format!("building the corpus: {e}")))?
        .map_err(|e| BenchError::Relay(format!("building the corpus: {e}")))?;
    eprintln!(
        "corpus: {} commits, {:.0} MB, built in {:.1} s on {threads} threads",
        corpus.len(),
        corpus.bytes() as f64 / 1e6,
        corpus.built_in.as_secs_f64(),
    );
    Ok(corpus)
}

/// Commits validated per measurement of [`validate_full_micros`].
const VALIDATE_SAMPLE: usize = 200;
/// Records in the measured repo (the fleet's accounts hold far fewer; a deeper tree costs
/// more, so this errs on the side of a higher cost per event).
const VALIDATE_REPO_RECORDS: usize = 1_000;

/// The single-core cost in µs of `decode_frame` + `validate_commit` of a 1-op `#commit` as
/// the fleet's hosts send it (K-256, one create), each against its previous state: the
/// median of five passes over [`VALIDATE_SAMPLE`] commits.
pub fn validate_full_micros() -> Result<f64, BenchError> {
    let failed = |what: String| BenchError::Relay(format!("measuring validate/full: {what}"));
    // Revs are checked against a `now` far ahead, so the repo's clock can be anything.
    let mut repo = SigningRepo::new(
        "did:plc:ingestbenchvalidate",
        Curve::K256,
        VALIDATE_REPO_RECORDS,
        1_700_000_000_000_000,
    );
    repo.sync();
    let key = repo.public();
    let mut cases: Vec<(Option<RepoState>, Bytes)> = Vec::with_capacity(VALIDATE_SAMPLE);
    for i in 0..VALIDATE_SAMPLE {
        let previous = repo.state;
        let event = repo.commit(&[Change::Create(record_path(VALIDATE_REPO_RECORDS + i))]);
        let bytes = frame::encode_frame(&Frame::Commit(Box::new(event)))
            .map_err(|e| failed(e.to_string()))?;
        cases.push((previous, Bytes::from(bytes)));
    }
    let now = u64::MAX / 2;
    let policy = ValidationPolicy::default();
    let mut passes = Vec::with_capacity(5);
    for _ in 0..5 {
        let begun = Instant::now();
        for (previous, bytes) in &cases {
            let Ok(Frame::Commit(event)) = frame::decode_frame(bytes) else {
                return Err(failed("a commit does not decode".into()));
            };
            let verdict = validate_commit(&event, &key, previous.as_ref(), now, &policy);
            if !matches!(verdict, Ok(CommitVerdict::Accept { .. })) {
                return Err(failed(format!("a commit is not accepted: {verdict:?}")));
            }
        }
        passes.push(begun.elapsed().as_secs_f64() * 1e6 / cases.len() as f64);
    }
    passes.sort_by(f64::total_cmp);
    Ok(passes[passes.len() / 2])
}
