//! The event driver: makes the fleet publish at an aggregate rate, spread over the hosts by
//! their table shares, and runs the time-based faults (flapping hosts).
//!
//! Every tick (10 ms) it owes `rate × elapsed` events (the fraction carries over, so low
//! rates are exact over time), draws each event's host from the shares (a cumulative table
//! and a binary search) and an account of that host uniformly, and emits one signed
//! `#commit` creating a record. Dead hosts get no events. A tick emits at most
//! [`MAX_EVENTS_PER_TICK`], so a stalled driver catches up in bounded steps instead of a
//! burst.
//!
//! **Cost.** The commits are signed and their MST diffs built when emitted (by the host's
//! `SigningRepo`), on the caller's actix System thread: [`DriverStats::busy`] is the time
//! spent doing it, so a run reports what the driver took from the machine the relay shares.
//! A pre-generated corpus (frames built before the run, re-sequenced at emit time) is the
//! way to make this cheaper when the ingest benchmark needs rates above a few thousand
//! events/s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Fleet;
use crate::sim::SimPds;
use crate::testkit::repo::{Change, record_path};

/// The driver's clock step.
pub const TICK: Duration = Duration::from_millis(10);
/// Most events one tick emits.
pub const MAX_EVENTS_PER_TICK: u64 = 1_000;

/// What the driver has done so far.
#[derive(Debug, Default)]
pub struct DriverStats {
    events: AtomicU64,
    errors: AtomicU64,
    busy_micros: AtomicU64,
    flaps: AtomicU64,
}

impl DriverStats {
    /// Events emitted.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
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
}

struct Target {
    pds: SimPds,
    accounts: Vec<String>,
}

struct Flapper {
    pds: SimPds,
    period: Duration,
    next: Instant,
}

/// A running driver; it stops when dropped or [`EventDriver::stop`]ped.
pub struct EventDriver {
    stats: Arc<DriverStats>,
    task: actix_rt::task::JoinHandle<()>,
}

impl EventDriver {
    /// Starts driving `fleet` at `rate` events/s (0: faults only). Must be called inside an
    /// actix System.
    pub fn start(fleet: &Fleet, rate: f64, seed: u64) -> EventDriver {
        let mut targets = Vec::new();
        // cumulative[i] = sum of shares of targets 0..=i
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        let mut flappers = Vec::new();
        let now = Instant::now();
        for host in &fleet.hosts {
            if host.spec.is_dead() {
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
                total += host.spec.share;
                cumulative.push(total);
                targets.push(Target {
                    pds: host.pds.clone(),
                    accounts: host.accounts.clone(),
                });
            }
        }
        let rate = if rate.is_finite() && rate > 0.0 && !targets.is_empty() {
            rate
        } else {
            0.0
        };
        let stats = Arc::new(DriverStats::default());
        let task = actix_rt::spawn(run(
            targets,
            cumulative,
            total,
            flappers,
            rate,
            seed,
            stats.clone(),
        ));
        EventDriver { stats, task }
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

async fn run(
    targets: Vec<Target>,
    cumulative: Vec<f64>,
    total: f64,
    mut flappers: Vec<Flapper>,
    rate: f64,
    seed: u64,
    stats: Arc<DriverStats>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut owed = 0.0_f64;
    // Record paths are unique across the fleet, so every create is valid.
    let mut next_record = 0usize;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        for flapper in &mut flappers {
            if now >= flapper.next {
                flapper.pds.drop_connections();
                flapper.next = now + flapper.period;
                stats.flaps.fetch_add(1, Ordering::Relaxed);
            }
        }
        owed += rate * now.duration_since(last).as_secs_f64();
        last = now;
        let due = (owed.floor() as u64).min(MAX_EVENTS_PER_TICK);
        owed = (owed - due as f64).min(MAX_EVENTS_PER_TICK as f64);
        if due == 0 {
            continue;
        }
        let begun = Instant::now();
        for _ in 0..due {
            let pick = rng.random_range(0.0..total);
            let index = cumulative
                .partition_point(|&c| c <= pick)
                .min(targets.len() - 1);
            let target = &targets[index];
            let did = &target.accounts[rng.random_range(0..target.accounts.len())];
            let change = Change::Create(record_path(next_record));
            next_record += 1;
            match target.pds.commit(did, &[change]) {
                Ok(_) => stats.events.fetch_add(1, Ordering::Relaxed),
                Err(_) => stats.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        stats
            .busy_micros
            .fetch_add(begun.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}
