//! Persister: appends sequenced batches to the event log, syncs them, then announces the new
//! durable head.
//!
//! Owns the event log writer ([`EventLog`]) and the sending half of the durable-head `watch`
//! the Broadcaster subscribes to. It runs on its **own `Arbiter`** (one OS thread): the
//! `fdatasync` of every batch blocks, and on a networking arbiter it would stall every socket
//! there (ACTORS.md: no blocking call on a networking arbiter). An actor on a dedicated
//! arbiter rather than a bare thread keeps one shape for every actor: a bounded, instrumented
//! mailbox, an address that survives a Supervisor restart, observable state.
//!
//! For each batch, in order:
//! 1. re-sequence each frame with `frame::resequence(bytes, seq)`: only `seq` changes (and
//!    missing required `#commit` fields are added), every other byte is kept (PROTOCOL.md §9,
//!    lesson 22; an event is never rebuilt from structs);
//! 2. `EventLog::append` (group commit: one write and one `fdatasync` for the batch), and a
//!    `flush` if the log's sync policy left part of it unsynced, so nothing is announced
//!    before it is on disk (ARCHITECTURE.md property 1);
//! 3. publish the durable head on the `watch`;
//! 4. complete each upstream event's cursor mark (the host's cursor moves once every seq
//!    routed before it is finished too, see `upstream_cursor`) and release its byte-budget
//!    permit (the relay's own events have neither: `sequencer::Origin`), and hand the
//!    accounts' new state to [`PendingWrites`] for the write-behind flusher.
//!
//! A frame that cannot be re-sequenced (the shard validated it, so this is a bug upstream) is
//! dropped and counted; its seq becomes a gap, which the protocol allows. An I/O error poisons
//! the log: the Persister logs it, counts it, exposes it in its state, and refuses every later
//! batch, so the Sequencer halts ingest rather than skipping seqs. Restarting the relay
//! reopens the log, whose recovery truncates any torn tail.

use actix::prelude::*;
use bytes::Bytes;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::watch;

use super::obs::{ActorObs, ObservedMessage};
use super::sequencer::IngestEvent;
use super::write_behind::PendingWrites;
use crate::atproto::frame;
use crate::store::event_log::{AppendRecord, EventLog, did_hash};

// ------------------------------------------------------------------------------------------
// Messages

/// One event with its relay seq.
#[derive(Debug)]
pub struct Sequenced {
    pub seq: u64,
    pub event: IngestEvent,
}

/// A batch from the Sequencer: events with strictly increasing seqs.
#[derive(Debug, Message)]
#[rtype(result = "Result<BatchDurable, PersistFailed>")]
pub struct PersistBatch(pub Vec<Sequenced>);
impl ObservedMessage for PersistBatch {
    const NAME: &'static str = "persist_batch";
}

/// The batch is on disk and announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchDurable {
    pub durable_head: u64,
    pub events: usize,
    /// Events dropped because their frame could not be re-sequenced.
    pub dropped: usize,
}

/// The log refused the batch; ingest must stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the event log failed: {reason}")]
pub struct PersistFailed {
    /// `EventLogError::reason` of the first failure.
    pub reason: &'static str,
}

/// Asks for the observable state.
#[derive(Debug, Message)]
#[rtype(result = "PersisterState")]
pub struct GetPersisterState;
impl ObservedMessage for GetPersisterState {
    const NAME: &'static str = "get_state";
}

// ------------------------------------------------------------------------------------------
// Observable state

/// What tests and `/metrics` read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersisterState {
    pub durable_head: u64,
    pub batches: u64,
    pub events: u64,
    /// Bytes of stored bodies.
    pub bytes: u64,
    pub resequence_failures: u64,
    /// Set once the log failed (reason label); every later batch is refused.
    pub failed: Option<&'static str>,
}

/// Pipeline counters of the Persister (the per-actor ones come from `obs`).
#[derive(Clone, Debug)]
pub struct PersisterMetrics {
    events: IntCounter,
    batches: IntCounter,
    durable_head: IntGauge,
    dropped: IntCounterVec,
    failures: IntCounterVec,
    /// Seconds to append and sync one batch (the group commit's write and `fdatasync`).
    sync_seconds: Histogram,
}

impl PersisterMetrics {
    pub fn register(registry: &Registry) -> Result<PersisterMetrics, prometheus::Error> {
        let m = PersisterMetrics {
            events: IntCounter::new("rookery_persisted_events_total", "Events made durable")?,
            batches: IntCounter::new(
                "rookery_persisted_batches_total",
                "Batches appended and synced (group commits)",
            )?,
            durable_head: IntGauge::new("rookery_durable_head_seq", "The durable head seq")?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "rookery_persist_dropped_total",
                    "Events the Persister dropped, by reason",
                ),
                &["reason"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "rookery_persist_failures_total",
                    "Event log failures that halted ingest, by reason",
                ),
                &["reason"],
            )?,
            sync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "rookery_event_log_sync_seconds",
                    "Seconds to append and fdatasync one batch of events (group commit)",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )?,
        };
        registry.register(Box::new(m.sync_seconds.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.batches.clone()))?;
        registry.register(Box::new(m.durable_head.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        Ok(m)
    }
}

// ------------------------------------------------------------------------------------------
// Actor

/// The Persister (one, supervised, on its own arbiter).
pub struct Persister {
    obs: ActorObs,
    metrics: PersisterMetrics,
    log: EventLog,
    head: watch::Sender<u64>,
    pending: PendingWrites,
    state: PersisterState,
}

impl Persister {
    /// Its `actor` label.
    pub const NAME: &'static str = "persister";
    /// The Sequencer keeps one batch in flight; the rest is room for state queries.
    pub const MAILBOX: usize = 8;

    /// Takes the log writer; the durable head starts at the log's.
    pub fn new(
        obs: ActorObs,
        metrics: PersisterMetrics,
        log: EventLog,
        pending: PendingWrites,
    ) -> (Persister, watch::Receiver<u64>) {
        let head_now = log.durable_head();
        let (head, head_rx) = watch::channel(head_now);
        metrics
            .durable_head
            .set(i64::try_from(head_now).unwrap_or(i64::MAX));
        let persister = Persister {
            obs,
            metrics,
            log,
            head,
            pending,
            state: PersisterState {
                durable_head: head_now,
                ..PersisterState::default()
            },
        };
        (persister, head_rx)
    }

    fn fail(&mut self, reason: &'static str, error: &dyn std::fmt::Display) -> PersistFailed {
        if self.state.failed.is_none() {
            tracing::error!(%error, reason, "event log failed: ingest stops");
            self.metrics.failures.with_label_values(&[reason]).inc();
            self.state.failed = Some(reason);
        }
        PersistFailed { reason }
    }

    fn persist(&mut self, batch: Vec<Sequenced>) -> Result<BatchDurable, PersistFailed> {
        if let Some(reason) = self.state.failed {
            return Err(PersistFailed { reason });
        }
        let mut records = Vec::with_capacity(batch.len());
        let mut stored = Vec::with_capacity(batch.len());
        let mut dropped = 0;
        for s in &batch {
            let seq = i64::try_from(s.seq).unwrap_or(i64::MAX);
            match frame::resequence(&s.event.frame, seq) {
                Ok(body) => {
                    stored.push(true);
                    records.push(AppendRecord {
                        seq: s.seq,
                        kind: s.event.kind.as_u8(),
                        did_hash: did_hash(&s.event.did),
                        body: Bytes::from(body),
                    });
                }
                Err(e) => {
                    stored.push(false);
                    dropped += 1;
                    self.metrics.dropped.with_label_values(&[e.reason()]).inc();
                    tracing::warn!(seq = s.seq, error = %e, "frame could not be re-sequenced; dropped");
                }
            }
        }
        let last = records.last().map(|r| r.seq);
        let started = std::time::Instant::now();
        let appended = self.log.append(&records).and_then(|head| match last {
            Some(last) if head < last => self.log.flush(),
            _ => Ok(head),
        });
        self.metrics
            .sync_seconds
            .observe(started.elapsed().as_secs_f64());
        let head = match appended {
            Ok(head) => head,
            Err(e) => return Err(self.fail(e.reason(), &e)),
        };
        // Durable: announce, then hand cursors and account state to the write-behind.
        self.head.send_replace(head);
        let bytes: u64 = records.iter().map(|r| r.body.len() as u64).sum();
        self.state.durable_head = head;
        self.state.batches += 1;
        self.state.events += records.len() as u64;
        self.state.bytes += bytes;
        self.state.resequence_failures += dropped as u64;
        self.metrics.batches.inc();
        self.metrics.events.inc_by(records.len() as u64);
        self.metrics
            .durable_head
            .set(i64::try_from(head).unwrap_or(i64::MAX));
        let events = batch.len() - dropped;
        for (s, stored) in batch.into_iter().zip(stored) {
            // A dropped event was dropped deliberately: its upstream seq is covered too, and
            // its bytes are free again.
            s.event.origin.complete();
            if let (true, Some(update)) = (stored, s.event.account) {
                self.pending.record_account(update);
            }
        }
        self.pending.record_durable(head);
        Ok(BatchDurable {
            durable_head: head,
            events,
            dropped,
        })
    }
}

impl Actor for Persister {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(Self::MAILBOX);
    }
}

impl Supervised for Persister {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Nothing is spawned on the context; the log and head stay in the struct.
        self.obs.restarted("stopped");
    }
}

impl Handler<PersistBatch> for Persister {
    type Result = Result<BatchDurable, PersistFailed>;

    fn handle(&mut self, batch: PersistBatch, _: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(PersistBatch::NAME);
        self.persist(batch.0)
    }
}

impl Handler<GetPersisterState> for Persister {
    type Result = MessageResult<GetPersisterState>;

    fn handle(&mut self, _: GetPersisterState, _: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(GetPersisterState::NAME);
        MessageResult(self.state.clone())
    }
}
