//! Sequencer: the single place where relay seqs are assigned, in arrival order.
//!
//! Owns the next seq (resumed from the event log's `next_seq()`, so a seq is never reused,
//! even after `kill -9`) and the events sequenced but not yet handed to the Persister. Its
//! critical section is "take the next seq, queue the event" and nothing else (lesson 6:
//! a relay that held its sequence lock across persist and re-encode spun 548M times).
//!
//! Group commit: at most one batch is in flight to the Persister. While it is being written
//! and synced, arriving events accumulate here; when it is durable, everything queued goes
//! as the next batch. One pending `send` at a time also means batches can never overtake
//! each other (a full-mailbox `send` parks its message, so two could reorder: ACTORS.md).
//!
//! Memory is bounded in bytes by [`ByteBudget`]: the sender (a ValidatorShard) acquires a
//! permit for the frame's length *before* sending, the permit travels inside
//! [`IngestEvent`], and it is released when the event is durable (or dropped). A spent budget
//! makes shards wait, which makes Subscribers stop reading their sockets: delay, not drop
//! (lesson 10).
//!
//! What it never does: re-encode frames (the Persister does, off this actor), touch disk or
//! Postgres, or skip ahead after a failure. If the Persister reports a poisoned log, the
//! Sequencer halts: it refuses new events with [`SequencerError::Halted`] instead of
//! assigning seqs that could never be stored.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::obs::{ActorObs, InstrumentedAddr, ObservedMessage};
use super::persister::{PersistBatch, Persister, Sequenced};
use super::upstream_cursor::CursorMark;
use super::write_behind::AccountStateUpdate;

// ------------------------------------------------------------------------------------------
// Messages

/// The event-log kind byte of an event (stored in each record; replay can filter on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventKind {
    Commit = 1,
    Identity = 2,
    Account = 3,
    Sync = 4,
}

impl EventKind {
    /// From the frame header's `t` (`#commit`, ...); `None` for types that are never stored.
    pub fn from_frame_type(t: &str) -> Option<EventKind> {
        match t {
            "#commit" => Some(EventKind::Commit),
            "#identity" => Some(EventKind::Identity),
            "#account" => Some(EventKind::Account),
            "#sync" => Some(EventKind::Sync),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(b: u8) -> Option<EventKind> {
        [
            EventKind::Commit,
            EventKind::Identity,
            EventKind::Account,
            EventKind::Sync,
        ]
        .into_iter()
        .find(|k| k.as_u8() == b)
    }
}

/// A validated event, sent by the ValidatorShard that owns its DID. Owned data only
/// (lesson 11).
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, SequencerError>")]
pub struct IngestEvent {
    /// The account (`repo` of a `#commit`, `did` otherwise).
    pub did: String,
    pub kind: EventKind,
    /// The frame as received, or as the shard rewrote it (`#account`, `#identity`), or the
    /// relay's own; its seq is replaced by the relay's with `frame::resequence` before
    /// storing.
    pub frame: Bytes,
    /// Account state to write behind once the event is durable.
    pub account: Option<AccountStateUpdate>,
    /// Where it came from, and so what finishes when it is durable.
    pub origin: Origin,
}

/// Where an event came from.
#[derive(Debug)]
pub enum Origin {
    /// From a host's firehose.
    Upstream {
        /// The host and its seq there: completed once the event is durable, so the host's
        /// cursor covers it.
        cursor: CursorMark,
        /// This event's share of the byte budget, released when it is durable.
        permit: BytePermit,
    },
    /// The relay's own event (an operator's takedown, reversal or promotion: an `#account`
    /// the shard that owns the account emits). No host's cursor waits for it, and it holds
    /// no budget bytes: it is a few hundred bytes, at most one per operator action in
    /// flight, and the shard's bounded outbox already makes it wait behind a busy Sequencer.
    Relay,
}

impl Origin {
    /// The event is durable (or dropped on purpose): the host's cursor may pass it, its
    /// bytes are free again.
    pub fn complete(self) {
        if let Origin::Upstream { cursor, permit } = self {
            cursor.complete();
            drop(permit);
        }
    }
}

impl ObservedMessage for IngestEvent {
    const NAME: &'static str = "ingest_event";
}

/// Several events of one shard, sequenced in their order in one handler call: a shard sends
/// whatever validated while its previous batch was on the way, so the cross-thread round trip
/// is paid once per batch, not once per event. Answers the last seq assigned.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, SequencerError>")]
pub struct IngestBatch(pub Vec<IngestEvent>);

impl ObservedMessage for IngestBatch {
    const NAME: &'static str = "ingest_batch";
}

/// Why an event was not sequenced. The event (and its permit) is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SequencerError {
    /// Ingest stopped after a persistence failure (reason label inside); the relay must be
    /// restarted to reopen the log.
    #[error("ingest halted: {0}")]
    Halted(&'static str),
}

/// Answers once every event sequenced before it is durable (or ingest halted): shutdown.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;
impl ObservedMessage for Drain {
    const NAME: &'static str = "drain";
}

/// Asks for the observable state.
#[derive(Debug, Message)]
#[rtype(result = "SequencerState")]
pub struct GetSequencerState;
impl ObservedMessage for GetSequencerState {
    const NAME: &'static str = "get_state";
}

// ------------------------------------------------------------------------------------------
// Byte budget

/// The bytes of frames between the shards and durability. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ByteBudget {
    semaphore: Arc<Semaphore>,
    total: u32,
}

/// The budget was closed (the relay is shutting down).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the byte budget is closed")]
pub struct BudgetClosed;

/// A share of the budget; dropping it gives the bytes back.
#[derive(Debug)]
pub struct BytePermit {
    permit: OwnedSemaphorePermit,
}

impl BytePermit {
    pub fn bytes(&self) -> u32 {
        self.permit.num_permits() as u32
    }
}

impl ByteBudget {
    /// A budget of `total` bytes (at least one frame of `MAX_FRAME_BYTES` is sensible).
    pub fn new(total: u32) -> ByteBudget {
        let total = total.max(1);
        ByteBudget {
            semaphore: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `len` bytes are free. A frame larger than the whole budget takes all of
    /// it (so it can still pass, alone).
    pub async fn acquire(&self, len: usize) -> Result<BytePermit, BudgetClosed> {
        Arc::clone(&self.semaphore)
            .acquire_many_owned(self.clamp(len))
            .await
            .map(|permit| BytePermit { permit })
            .map_err(|_| BudgetClosed)
    }

    /// Wakes every waiting `acquire` with [`BudgetClosed`] (shutdown).
    pub fn close(&self) {
        self.semaphore.close();
    }

    /// Takes `len` bytes if they are free now.
    pub fn try_acquire(&self, len: usize) -> Option<BytePermit> {
        Arc::clone(&self.semaphore)
            .try_acquire_many_owned(self.clamp(len))
            .ok()
            .map(|permit| BytePermit { permit })
    }

    /// Bytes currently held by events not yet durable.
    pub fn in_use(&self) -> u64 {
        u64::from(self.total) - self.semaphore.available_permits() as u64
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    fn clamp(&self, len: usize) -> u32 {
        u32::try_from(len).unwrap_or(u32::MAX).clamp(1, self.total)
    }
}

// ------------------------------------------------------------------------------------------
// Observable state

/// What tests and `/metrics` read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SequencerState {
    /// The seq the next event gets.
    pub next_seq: u64,
    /// The durable head last reported by the Persister.
    pub durable_head: u64,
    pub events_sequenced: u64,
    /// Batches handed to the Persister, and the largest one.
    pub batches: u64,
    pub largest_batch: usize,
    /// Events waiting for the batch in flight to finish.
    pub queued_events: usize,
    pub queued_bytes: u64,
    /// Events in the batch being persisted.
    pub in_flight_events: usize,
    /// Bytes of the budget in use (queued here, in flight, or in a shard's hands).
    pub budget_bytes_in_use: u64,
    /// Set when ingest stopped (reason label).
    pub halted: Option<&'static str>,
}

// ------------------------------------------------------------------------------------------
// Actor

/// The Sequencer (one, supervised).
pub struct Sequencer {
    obs: ActorObs,
    persister: InstrumentedAddr<Persister>,
    budget: ByteBudget,
    next_seq: u64,
    queued: VecDeque<Sequenced>,
    queued_bytes: u64,
    in_flight: bool,
    in_flight_events: usize,
    drains: Vec<oneshot::Sender<()>>,
    state: SequencerState,
}

impl Sequencer {
    /// Its `actor` label.
    pub const NAME: &'static str = "sequencer";
    /// One slot per shard with room to spare: each shard awaits its send, so the mailbox
    /// holds at most one event per shard; bytes are bounded by the budget anyway.
    pub const MAILBOX: usize = 256;

    /// `next_seq` must come from `EventLog::next_seq()` of the log the Persister writes.
    pub fn new(
        obs: ActorObs,
        persister: InstrumentedAddr<Persister>,
        budget: ByteBudget,
        next_seq: u64,
    ) -> Sequencer {
        Sequencer {
            obs,
            persister,
            budget,
            next_seq,
            queued: VecDeque::new(),
            queued_bytes: 0,
            in_flight: false,
            in_flight_events: 0,
            drains: Vec::new(),
            state: SequencerState {
                next_seq,
                ..SequencerState::default()
            },
        }
    }

    /// Hands everything queued to the Persister, unless a batch is already in flight.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            return;
        }
        if self.queued.is_empty() || self.state.halted.is_some() {
            for drained in self.drains.drain(..) {
                let _ = drained.send(());
            }
            return;
        }
        let events: Vec<Sequenced> = self.queued.drain(..).collect();
        self.queued_bytes = 0;
        self.in_flight = true;
        self.in_flight_events = events.len();
        self.state.batches += 1;
        self.state.largest_batch = self.state.largest_batch.max(events.len());
        let persister = self.persister.clone();
        let write = async move { persister.send(PersistBatch(events)).await };
        ctx.spawn(write.into_actor(self).map(|result, act, ctx| {
            act.in_flight = false;
            act.in_flight_events = 0;
            match result {
                Ok(Ok(done)) => {
                    act.state.durable_head = done.durable_head;
                    act.dispatch(ctx);
                }
                Ok(Err(e)) => act.halt(e.reason),
                Err(_) => act.halt("persister_gone"),
            }
        }));
    }

    fn halt(&mut self, reason: &'static str) {
        tracing::error!(
            reason,
            queued = self.queued.len(),
            "ingest halted: the event log cannot store more events; restart to reopen it"
        );
        self.state.halted = Some(reason);
        // Their seqs were never stored nor announced; dropping releases their bytes.
        self.queued.clear();
        self.queued_bytes = 0;
        for drained in self.drains.drain(..) {
            let _ = drained.send(());
        }
    }
}

impl Actor for Sequencer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(Self::MAILBOX);
    }
}

impl Supervised for Sequencer {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.obs.restarted("stopped");
        // A restart drops the in-flight request; its outcome is unknown, so continuing
        // could announce a gap as durable. Halt loudly instead.
        if self.in_flight {
            self.halt("restarted_with_batch_in_flight");
        }
    }
}

impl Handler<IngestEvent> for Sequencer {
    type Result = Result<u64, SequencerError>;

    fn handle(&mut self, event: IngestEvent, ctx: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(IngestEvent::NAME);
        if let Some(reason) = self.state.halted {
            return Err(SequencerError::Halted(reason));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued_bytes += event.frame.len() as u64;
        self.queued.push_back(Sequenced { seq, event });
        self.state.events_sequenced += 1;
        self.dispatch(ctx);
        Ok(seq)
    }
}

impl Handler<IngestBatch> for Sequencer {
    type Result = Result<u64, SequencerError>;

    fn handle(&mut self, batch: IngestBatch, ctx: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(IngestBatch::NAME);
        if let Some(reason) = self.state.halted {
            return Err(SequencerError::Halted(reason));
        }
        let mut last = self.next_seq.saturating_sub(1);
        for event in batch.0 {
            last = self.next_seq;
            self.next_seq += 1;
            self.queued_bytes += event.frame.len() as u64;
            self.queued.push_back(Sequenced { seq: last, event });
            self.state.events_sequenced += 1;
        }
        self.dispatch(ctx);
        Ok(last)
    }
}

impl Handler<Drain> for Sequencer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(Drain::NAME);
        let (done, drained) = oneshot::channel();
        self.drains.push(done);
        self.dispatch(ctx);
        Box::pin(async move {
            let _ = drained.await;
        })
    }
}

impl Handler<GetSequencerState> for Sequencer {
    type Result = MessageResult<GetSequencerState>;

    fn handle(&mut self, _: GetSequencerState, _: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(GetSequencerState::NAME);
        MessageResult(SequencerState {
            next_seq: self.next_seq,
            queued_events: self.queued.len(),
            queued_bytes: self.queued_bytes,
            in_flight_events: self.in_flight_events,
            budget_bytes_in_use: self.budget.in_use(),
            ..self.state.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_types_have_none() {
        for t in ["#commit", "#identity", "#account", "#sync"] {
            let k = EventKind::from_frame_type(t).expect(t);
            assert_eq!(EventKind::from_u8(k.as_u8()), Some(k));
        }
        assert_eq!(EventKind::from_frame_type("#info"), None);
        assert_eq!(EventKind::from_u8(0), None);
    }

    #[tokio::test]
    async fn the_budget_counts_bytes_and_clamps_huge_frames() {
        let budget = ByteBudget::new(1_000);
        let a = budget.acquire(600).await.expect("open");
        assert_eq!(budget.in_use(), 600);
        assert!(budget.try_acquire(500).is_none());
        let b = budget.try_acquire(400).expect("fits");
        assert_eq!(budget.in_use(), 1_000);
        drop(a);
        assert_eq!(budget.in_use(), 400);
        drop(b);
        let huge = budget.acquire(10_000_000).await.expect("open");
        assert_eq!(huge.bytes(), 1_000);
        drop(huge);
        assert_eq!(budget.try_acquire(0).map(|p| p.bytes()), Some(1));
    }
}
