//! The event driver: makes the fleet publish at an aggregate rate, spread over the hosts by
//! their table shares, and runs the faults that happen over time.
//!
//! Every tick (10 ms) it owes `rate × elapsed` events (the fraction carries over, so low
//! rates are exact over time), draws each event's host from the shares (a cumulative table
//! and a binary search) and an account of that host uniformly, and emits one valid event:
//! mostly a signed `#commit` creating a record, and in [`ValidEvent::SHARES`] an `#identity`,
//! an `#account` (active) or a signed `#sync`. A tick emits at most [`MAX_EVENTS_PER_TICK`], so a stalled
//! driver catches up in bounded steps instead of a burst. Hosts a relay cannot receive from
//! (dead, accept-then-drop) get no events; a host that claims to be a relay gets them, and
//! they are invalid: none may reach the relay's firehose.
//!
//! **Event faults** ([`EventFaults`], each a share of the events): instead of a valid commit,
//! the drawn host publishes a commit with a bad signature, a future rev, or blocks over the
//! 2 MB limit (on a copy of the account's repo, so the account's chain is untouched); a
//! valid commit of an account of *another* host (wrong host authority); garbage bytes; or a
//! copy of the last frame the driver published on it (a seq that does not go up; a copy of
//! an older frame, from before the relay connected, would be news to the relay). With a checker's feed
//! ([`EventDriver::start_recording`]), every event is handed over as published, valid or not.
//!
//! **Host faults over time**: flapping hosts drop their connections every period; at
//! [`EventFaults::resets_per_min`] a host forgets its events (its seq starts again at 1: a
//! relay's cursor becomes `FutureCursor`), and at [`EventFaults::restarts_per_min`] a host
//! goes down for [`RESTART_DOWNTIME`] and comes back having lost its outbox. Both pick a host
//! that has published nothing for [`QUIET_BEFORE_RESET`] and, with a checker's feed, whose
//! every valid event the checker has received, so no event is lost with the outbox (a
//! checker could not tell that loss from the relay's); the host gets no events until a
//! relay is connected to it again (a relay that reconnects without a cursor would never see
//! those).
//!
//! **Cost.** The commits are signed and their MST diffs built when emitted (by the host's
//! `SigningRepo`), on the caller's actix System thread: [`DriverStats::busy`] is the time
//! spent doing it, so a run reports what the driver took from the machine the relay shares.
//! That holds one thread to ~6,900 events/s; [`EventDriver::start_corpus`] publishes a
//! [`Corpus`] built beforehand instead (valid commits only, no event faults), at the cost
//! of a re-sequence per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Fleet;
use super::corpus::{Corpus, PreparedCommit};
use crate::sim::checker::{ExpectationFeed, Published};
use crate::sim::{Forgery, SimPds};
use crate::testkit::repo::{Change, record_path};

/// The driver's clock step.
pub const TICK: Duration = Duration::from_millis(10);
/// Most events one tick emits.
pub const MAX_EVENTS_PER_TICK: u64 = 1_000;
/// How long a host must have published nothing before a reset or restart may pick it.
pub const QUIET_BEFORE_RESET: Duration = Duration::from_secs(30);
/// How long a restarting host refuses connections.
pub const RESTART_DOWNTIME: Duration = Duration::from_secs(2);
/// Largest garbage frame.
const MAX_GARBAGE_BYTES: usize = 512;

/// The next record path any driver of this process creates: paths stay unique across the
/// drivers a bench starts one after another on one fleet, so every create is valid.
static NEXT_RECORD: AtomicUsize = AtomicUsize::new(0);

/// A record path no driver or corpus of this process has created.
pub(super) fn next_record_path() -> String {
    record_path(NEXT_RECORD.fetch_add(1, Ordering::Relaxed))
}

/// Faults the driver causes, as shares of the events (0–1; their sum at most 1) and rates
/// of host events per minute over the whole fleet. All zero by default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EventFaults {
    pub bad_signature: f64,
    pub wrong_authority: f64,
    pub future_rev: f64,
    pub oversized: f64,
    pub garbage: f64,
    pub out_of_order: f64,
    /// Hosts that forget their events (→ `FutureCursor`), per minute.
    pub resets_per_min: f64,
    /// Hosts that restart and lose their outbox, per minute.
    pub restarts_per_min: f64,
}

impl EventFaults {
    /// Every fault at once: 1% of events of each invalid kind, 0.1% garbage and oversized
    /// frames, a reset and a restart every 20 s. Garbage ends the connection it arrives on
    /// (PROTOCOL.md §1), so each one costs its host a reconnect and the replay of what was in
    /// flight: more than this and the busiest hosts spend the run reconnecting.
    pub fn chaos() -> EventFaults {
        EventFaults {
            bad_signature: 0.01,
            wrong_authority: 0.01,
            future_rev: 0.01,
            oversized: 0.001,
            garbage: 0.001,
            out_of_order: 0.01,
            resets_per_min: 3.0,
            restarts_per_min: 3.0,
        }
    }

    fn event_shares(&self) -> [(EventKind, f64); 6] {
        [
            (EventKind::BadSignature, self.bad_signature),
            (EventKind::WrongAuthority, self.wrong_authority),
            (EventKind::FutureRev, self.future_rev),
            (EventKind::Oversized, self.oversized),
            (EventKind::Garbage, self.garbage),
            (EventKind::OutOfOrder, self.out_of_order),
        ]
    }

    /// Refuses shares outside 0–1, a sum above 1 and negative or non-finite rates.
    pub fn check(&self) -> Result<(), String> {
        let shares = self.event_shares();
        if shares
            .iter()
            .any(|(_, s)| !s.is_finite() || !(0.0..=1.0).contains(s))
        {
            return Err("fault shares must be between 0 and 1".into());
        }
        if shares.iter().map(|(_, s)| s).sum::<f64>() > 1.0 {
            return Err("fault shares must sum to at most 1".into());
        }
        for rate in [self.resets_per_min, self.restarts_per_min] {
            if !rate.is_finite() || rate < 0.0 {
                return Err("fault rates must be finite and not negative".into());
            }
        }
        Ok(())
    }
}

/// What a valid event is. Mostly commits, as on the network; now and then an account
/// announces its identity (`#identity`), its status (`#account`, active) or its whole repo
/// at a fresh rev (`#sync`), so a relay's handling of each is in every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidEvent {
    Commit,
    Identity,
    Account,
    Sync,
}

impl ValidEvent {
    /// Shares of the valid events that are not commits.
    pub const SHARES: [(ValidEvent, f64); 3] = [
        (ValidEvent::Identity, 0.01),
        (ValidEvent::Account, 0.005),
        (ValidEvent::Sync, 0.005),
    ];

    pub fn draw(rng: &mut impl Rng) -> ValidEvent {
        let mut u = rng.random_range(0.0..1.0);
        for (kind, share) in ValidEvent::SHARES {
            if u < share {
                return kind;
            }
            u -= share;
        }
        ValidEvent::Commit
    }

    /// Publishes one on `pds` for `did` (a commit creates a new record); returns its seq.
    pub fn publish(self, pds: &SimPds, did: &str) -> Result<u64, crate::sim::SimError> {
        match self {
            ValidEvent::Commit => pds.commit(did, &[Change::Create(next_record_path())]),
            ValidEvent::Identity => pds.identity(did),
            ValidEvent::Account => pds.set_status(did, true, None),
            ValidEvent::Sync => pds.sync(did),
        }
    }
}

/// What one drawn event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Valid,
    BadSignature,
    WrongAuthority,
    FutureRev,
    Oversized,
    Garbage,
    OutOfOrder,
}

/// What the driver has done so far.
#[derive(Debug, Default)]
pub struct DriverStats {
    events: AtomicU64,
    invalid: AtomicU64,
    errors: AtomicU64,
    busy_micros: AtomicU64,
    flaps: AtomicU64,
    resets: AtomicU64,
    restarts: AtomicU64,
}

impl DriverStats {
    /// Events emitted, valid or not.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Of [`DriverStats::events`], the ones a relay must not deliver.
    pub fn invalid(&self) -> u64 {
        self.invalid.load(Ordering::Relaxed)
    }

    /// Events the hosts refused (an account that migrated away, …).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Time spent building, signing and publishing events.
    pub fn busy(&self) -> Duration {
        Duration::from_micros(self.busy_micros.load(Ordering::Relaxed))
    }

    /// Connection drops done for flapping hosts.
    pub fn flaps(&self) -> u64 {
        self.flaps.load(Ordering::Relaxed)
    }

    /// Hosts that forgot their events.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// Hosts restarted without their outbox.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

struct Target {
    pds: SimPds,
    hostname: Arc<str>,
    accounts: Vec<String>,
    /// Everything it publishes is invalid (it claims to be a relay).
    invalid_host: bool,
    last_published: Instant,
    /// The seq of the last event this driver published on the host (what an out-of-order
    /// frame repeats: a relay connected since has seen it, unlike the host's older frames).
    last_seq: Option<u64>,
    /// Reset or restarted: no events until a relay is connected again.
    cooling: bool,
}

struct Flapper {
    pds: SimPds,
    period: Duration,
    next: Instant,
}

/// A running driver; it stops when dropped or [`EventDriver::stop`]ped.
pub struct EventDriver {
    stats: Arc<DriverStats>,
    host_faults_paused: Arc<AtomicBool>,
    task: actix_rt::task::JoinHandle<()>,
}

impl EventDriver {
    /// Starts driving `fleet` at `rate` events/s (0: faults only), valid events only. Must
    /// be called inside an actix System.
    pub fn start(fleet: &Fleet, rate: f64, seed: u64) -> EventDriver {
        EventDriver::start_with(fleet, rate, seed, EventFaults::default(), None)
    }

    /// Like [`EventDriver::start`] with `faults`, handing every event it publishes to a
    /// coverage checker's `feed` (the driver waits while the checker is a full feed behind).
    pub fn start_recording(
        fleet: &Fleet,
        rate: f64,
        seed: u64,
        faults: EventFaults,
        feed: ExpectationFeed,
    ) -> EventDriver {
        EventDriver::start_with(fleet, rate, seed, faults, Some(feed))
    }

    /// Publishes `corpus` in order at `rate` events/s (host faults of the table go on; no
    /// event faults), handing every event to `feed`; emits nothing once it is used up.
    pub fn start_corpus(
        fleet: &Fleet,
        rate: f64,
        corpus: Corpus,
        feed: ExpectationFeed,
    ) -> EventDriver {
        EventDriver::start_from(
            fleet,
            rate,
            0,
            EventFaults::default(),
            Some(feed),
            Some(corpus),
        )
    }

    /// Like [`EventDriver::start`] with `faults`, without a checker.
    pub fn start_with_faults(
        fleet: &Fleet,
        rate: f64,
        seed: u64,
        faults: EventFaults,
    ) -> EventDriver {
        EventDriver::start_with(fleet, rate, seed, faults, None)
    }

    fn start_with(
        fleet: &Fleet,
        rate: f64,
        seed: u64,
        faults: EventFaults,
        feed: Option<ExpectationFeed>,
    ) -> EventDriver {
        EventDriver::start_from(fleet, rate, seed, faults, feed, None)
    }

    fn start_from(
        fleet: &Fleet,
        rate: f64,
        seed: u64,
        faults: EventFaults,
        feed: Option<ExpectationFeed>,
        corpus: Option<Corpus>,
    ) -> EventDriver {
        let mut targets = Vec::new();
        let mut target_of = vec![None; fleet.hosts.len()];
        // cumulative[i] = sum of shares of targets 0..=i
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        let mut flappers = Vec::new();
        let now = Instant::now();
        for (fleet_index, host) in fleet.hosts.iter().enumerate() {
            if host.spec.is_dead() || host.spec.accepts_then_drops() {
                continue;
            }
            if let Some(period_ms) = host.spec.flap_period_ms() {
                let period = Duration::from_millis(period_ms);
                flappers.push(Flapper {
                    pds: host.pds.clone(),
                    period,
                    next: now + period,
                });
            }
            if host.spec.share > 0.0 && !host.accounts.is_empty() {
                target_of[fleet_index] = Some(targets.len());
                total += host.spec.share;
                cumulative.push(total);
                targets.push(Target {
                    pds: host.pds.clone(),
                    hostname: host.pds.hostname().into(),
                    accounts: host.accounts.clone(),
                    invalid_host: host.spec.claims_relay(),
                    last_published: now,
                    last_seq: None,
                    cooling: false,
                });
            }
        }
        let rate = if rate.is_finite() && rate > 0.0 && !targets.is_empty() {
            rate
        } else {
            0.0
        };
        let stats = Arc::new(DriverStats::default());
        let host_faults_paused = Arc::new(AtomicBool::new(false));
        let run = Run {
            targets,
            cumulative,
            total,
            flappers,
            faults,
            rng: StdRng::seed_from_u64(seed),
            feed,
            stats: stats.clone(),
            host_faults_paused: host_faults_paused.clone(),
            corpus: corpus.map(|c| c.commits.into_iter()),
            target_of,
        };
        let task = actix_rt::spawn(run.run(rate));
        EventDriver {
            stats,
            host_faults_paused,
            task,
        }
    }

    /// Holds (or lets go again) the host resets and restarts; what is owed meanwhile is not
    /// made up. Events and their faults go on.
    pub fn pause_host_faults(&self, paused: bool) {
        self.host_faults_paused.store(paused, Ordering::Relaxed);
    }

    pub fn stats(&self) -> &Arc<DriverStats> {
        &self.stats
    }

    /// Stops the driver (the same as dropping it): no event is emitted after this returns.
    pub fn stop(self) {}
}

impl Drop for EventDriver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One valid commit from every account of every host a relay can receive from (in table
/// order), each handed to `feed`: afterwards a relay has resolved and stored every account,
/// as one that has run for a while has. Returns the events published.
pub async fn publish_once_per_account(fleet: &Fleet, feed: &ExpectationFeed) -> u64 {
    let mut published = 0;
    for host in &fleet.hosts {
        if !host.spec.delivers() {
            continue;
        }
        let hostname: Arc<str> = host.pds.hostname().into();
        for did in &host.accounts {
            let path = next_record_path();
            let Ok(seq) = host.pds.commit(did, &[Change::Create(path)]) else {
                continue;
            };
            let Some(frame) = host.pds.published_frame(seq) else {
                continue;
            };
            let event = Published {
                host: hostname.clone(),
                frame,
                published_at: tokio::time::Instant::now(),
                valid: true,
            };
            if feed.send(event).await.is_err() {
                return published;
            }
            published += 1;
        }
    }
    published
}

/// The driver's state, owned by its task.
struct Run {
    targets: Vec<Target>,
    cumulative: Vec<f64>,
    total: f64,
    flappers: Vec<Flapper>,
    faults: EventFaults,
    rng: StdRng,
    feed: Option<ExpectationFeed>,
    stats: Arc<DriverStats>,
    host_faults_paused: Arc<AtomicBool>,
    /// What to publish instead of drawing and signing (see [`EventDriver::start_corpus`]).
    corpus: Option<std::vec::IntoIter<PreparedCommit>>,
    /// Index in `targets` of each of the fleet's hosts.
    target_of: Vec<Option<usize>>,
}

impl Run {
    async fn run(mut self, rate: f64) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        let mut owed = 0.0_f64;
        let (mut resets_owed, mut restarts_owed) = (0.0_f64, 0.0_f64);
        loop {
            ticks.tick().await;
            let now = Instant::now();
            let elapsed = now.duration_since(last).as_secs_f64();
            last = now;
            for flapper in &mut self.flappers {
                if now >= flapper.next {
                    flapper.pds.drop_connections();
                    flapper.next = now + flapper.period;
                    self.stats.flaps.fetch_add(1, Ordering::Relaxed);
                }
            }
            for target in &mut self.targets {
                if target.cooling && target.pds.live_connections() > 0 {
                    target.cooling = false;
                }
            }
            if self.host_faults_paused.load(Ordering::Relaxed) {
                (resets_owed, restarts_owed) = (0.0, 0.0);
            } else {
                resets_owed += self.faults.resets_per_min * elapsed / 60.0;
                restarts_owed += self.faults.restarts_per_min * elapsed / 60.0;
            }
            if resets_owed >= 1.0 && self.host_fault(false).await {
                resets_owed -= 1.0;
            }
            if restarts_owed >= 1.0 && self.host_fault(true).await {
                restarts_owed -= 1.0;
            }
            owed += rate * elapsed;
            let due = (owed.floor() as u64).min(MAX_EVENTS_PER_TICK);
            owed = (owed - due as f64).min(MAX_EVENTS_PER_TICK as f64);
            if due == 0 {
                continue;
            }
            let begun = Instant::now();
            for _ in 0..due {
                if self.corpus.is_some() {
                    self.emit_prepared().await;
                } else {
                    self.emit_one().await;
                }
            }
            self.stats
                .busy_micros
                .fetch_add(begun.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }

    fn draw_target(&mut self) -> usize {
        let pick = self.rng.random_range(0.0..self.total);
        self.cumulative
            .partition_point(|&c| c <= pick)
            .min(self.targets.len() - 1)
    }

    fn draw_kind(&mut self) -> EventKind {
        let mut u = self.rng.random_range(0.0..1.0);
        for (kind, share) in self.faults.event_shares() {
            if u < share {
                return kind;
            }
            u -= share;
        }
        EventKind::Valid
    }

    /// Publishes one drawn event and hands it to the feed.
    async fn emit_one(&mut self) {
        let index = self.draw_target();
        if self.targets[index].cooling {
            // A reset host gets its share again once a relay is back on it.
            return;
        }
        let kind = self.draw_kind();
        // Wrong authority: a valid commit of an account of another host.
        let other = match kind {
            EventKind::WrongAuthority => match self.draw_target() {
                other if other == index || self.targets[other].invalid_host => return,
                other => other,
            },
            _ => index,
        };
        let target = &self.targets[index];
        let did = target.accounts[self.rng.random_range(0..target.accounts.len())].clone();
        let path = next_record_path();
        let published = match kind {
            EventKind::Valid => ValidEvent::draw(&mut self.rng).publish(&target.pds, &did),
            EventKind::BadSignature => target.pds.publish_forged(&did, Forgery::BadSignature, path),
            EventKind::FutureRev => target.pds.publish_forged(&did, Forgery::FutureRev, path),
            EventKind::Oversized => target.pds.publish_forged(&did, Forgery::Oversized, path),
            EventKind::WrongAuthority => {
                let owner = &self.targets[other];
                let owner_did = &owner.accounts[self.rng.random_range(0..owner.accounts.len())];
                owner
                    .pds
                    .unpublished_commit(owner_did, path)
                    .and_then(|frame| target.pds.publish_resequenced(&frame))
            }
            EventKind::Garbage => {
                let len = self.rng.random_range(1..=MAX_GARBAGE_BYTES);
                let bytes: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
                let frame = Bytes::from(bytes);
                target.pds.push_raw(frame.clone());
                self.record(index, frame, false).await;
                return;
            }
            EventKind::OutOfOrder => {
                // A copy of the driver's last frame on this host: its seq is not above the
                // one the relay saw last.
                let Some(frame) = target
                    .last_seq
                    .and_then(|seq| target.pds.published_frame(seq))
                else {
                    return;
                };
                target.pds.push_raw(frame.clone());
                self.record(index, frame, false).await;
                return;
            }
        };
        let target = &self.targets[index];
        let seq = match published {
            Ok(seq) => seq,
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let Some(frame) = target.pds.published_frame(seq) else {
            return;
        };
        let valid = kind == EventKind::Valid && !target.invalid_host;
        self.targets[index].last_seq = Some(seq);
        self.record(index, frame, valid).await;
    }

    /// Publishes the corpus's next commit under its host's next seq.
    async fn emit_prepared(&mut self) {
        let Some(commit) = self.corpus.as_mut().and_then(Iterator::next) else {
            return;
        };
        let Some(index) = self.target_of.get(commit.host).copied().flatten() else {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let target = &self.targets[index];
        let frame = match target.pds.publish_resequenced(&commit.frame) {
            Ok(seq) => target.pds.published_frame(seq),
            Err(_) => None,
        };
        let Some(frame) = frame else {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let valid = !target.invalid_host;
        self.record(index, frame, valid).await;
    }

    /// Counts one published event and hands it to the feed.
    async fn record(&mut self, index: usize, frame: Bytes, valid: bool) {
        let target = &mut self.targets[index];
        target.last_published = Instant::now();
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        if !valid {
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(feed) = &self.feed {
            let published = Published {
                host: target.hostname.clone(),
                frame,
                published_at: tokio::time::Instant::now(),
                valid,
            };
            // An error means the checker is gone: nobody counts any more.
            let _ = feed.send(published).await;
        }
    }

    /// Resets (or, with `restart`, restarts without its outbox) one host that has been quiet
    /// for [`QUIET_BEFORE_RESET`] and has a relay connected; false when none qualifies.
    async fn host_fault(&mut self, restart: bool) -> bool {
        let now = Instant::now();
        let eligible: Vec<usize> = (0..self.targets.len())
            .filter(|&i| {
                let t = &self.targets[i];
                !t.cooling
                    && !t.invalid_host
                    && now.duration_since(t.last_published) >= QUIET_BEFORE_RESET
                    && t.pds.live_connections() > 0
                    && self
                        .feed
                        .as_ref()
                        .is_none_or(|feed| feed.awaited(&t.hostname) == 0)
            })
            .collect();
        if eligible.is_empty() {
            return false;
        }
        let index = eligible[self.rng.random_range(0..eligible.len())];
        let target = &mut self.targets[index];
        target.cooling = true;
        target.last_seq = None;
        if restart {
            target.pds.stop().await;
            target.pds.reset();
            let pds = target.pds.clone();
            actix_rt::spawn(async move {
                actix_rt::time::sleep(RESTART_DOWNTIME).await;
                // The port was ours a moment ago; failing to get it back is a dead host.
                let _ = pds.restart();
            });
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        } else {
            target.pds.reset();
            self.stats.resets.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}
