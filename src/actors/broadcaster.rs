//! Broadcaster: follows the durable head and keeps a ring of the newest encoded frames.
//!
//! Owns the [`Ring`] (shared read-only with every ConsumerSession behind a short lock) and
//! the sending half of the *published head* `watch`. On each durable-head announcement from
//! the Persister it reads the new records back from the event log (one `Replay` it keeps at
//! the head) and appends their bodies to the ring as shared `Bytes`: the stored bytes are
//! already re-sequenced frames, so nothing is ever rebuilt from structs (lesson 22). Then it
//! publishes the new head, which wakes the sessions that wait for it.
//!
//! What it never does: wait on a session, hold a per-consumer queue, or touch a socket
//! (lessons 11, 14, 15). A session reads the ring or the log at its own cursor; the
//! Broadcaster only publishes a number.
//!
//! Log reads run on tokio's blocking pool (`spawn_blocking`): they are `pread`s of data the
//! Persister just wrote (page-cache hits as a rule), but a cold read must not stall the
//! arbiter. One read is in flight at a time, so the ring grows in seq order.
//!
//! The ring is bounded in bytes ([`Ring::max_bytes`]): the oldest frames leave first and its
//! *floor* rises with them, so "the ring holds every retained record with `floor < seq <=
//! head`" always holds, and a session below the floor reads the log instead.
//!
//! Masking: the log skips masked records, but frames already in the ring were read before a
//! takedown. [`MaskAccount`] removes an account's frames up to a seq from the ring, so a
//! takedown reaches live consumers too (the takedown path masks the log first, then sends
//! it). A read step already running when it arrives may have read those records before the
//! log was masked: the mask is kept and applied again when that step is absorbed, so nothing
//! it read slips in afterwards. The bound (`through_seq`) keeps the relay's own `#account
//! {takendown}`, sequenced after the mask, out of its reach. [`UnmaskAccount`] (a reversal)
//! cannot put the removed frames back in the middle of the ring, so it raises the ring's floor
//! over them instead: sessions below it read the (unmasked) log, as they would after any
//! eviction.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::watch;

use super::firehose::FirehoseMetrics;
use super::obs::{ActorObs, ObservedMessage};
use crate::store::event_log::{EventLogError, EventLogReader, Replay};

// ------------------------------------------------------------------------------------------
// Messages

/// Removes the frames of one account (by its event-log DID hash) with `seq <= through_seq`
/// from the ring, including frames a read step already in flight brings later.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct MaskAccount {
    pub did_hash: u64,
    pub through_seq: u64,
}
impl ObservedMessage for MaskAccount {
    const NAME: &'static str = "mask_account";
}

/// A reversal unmasked records with `seq <= through_seq` in the log: the ring forgets every
/// frame up to there ([`Ring::raise_floor`]), so sessions read them from the log. Answers the
/// new floor.
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct UnmaskAccount {
    pub through_seq: u64,
}
impl ObservedMessage for UnmaskAccount {
    const NAME: &'static str = "unmask_account";
}

/// Asks for the observable state.
#[derive(Debug, Message)]
#[rtype(result = "BroadcasterState")]
pub struct GetBroadcasterState;
impl ObservedMessage for GetBroadcasterState {
    const NAME: &'static str = "get_state";
}

// ------------------------------------------------------------------------------------------
// Observable state

/// What tests and `/metrics` read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BroadcasterState {
    /// The head published to sessions.
    pub head: u64,
    /// The ring holds every retained record with `floor < seq <= head`.
    pub floor: u64,
    pub ring_frames: usize,
    pub ring_bytes: usize,
    /// Head announcements handled (reads of the log).
    pub reads: u64,
    /// Damaged records skipped while following the head.
    pub damaged_skips: u64,
    /// Set when the durable-head announcements ended (the Persister is gone).
    pub source_closed: bool,
}

// ------------------------------------------------------------------------------------------
// The ring

/// One frame in the ring.
#[derive(Clone, Debug)]
pub struct RingFrame {
    pub seq: u64,
    pub did_hash: u64,
    pub frame: Bytes,
}

/// What [`Ring::read_after`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum RingRead {
    /// Frames after the cursor, in seq order (empty: the cursor is at the head).
    Frames(Vec<(u64, Bytes)>),
    /// The cursor is below the floor: some records after it left the ring; read the log.
    Behind,
}

/// The newest frames, bounded in bytes. Pure data: tested without actors.
#[derive(Debug)]
pub struct Ring {
    frames: VecDeque<RingFrame>,
    bytes: usize,
    max_bytes: usize,
    floor: u64,
    head: u64,
}

impl Ring {
    /// An empty ring at `head`: it covers nothing below it.
    pub fn new(head: u64, max_bytes: usize) -> Ring {
        Ring {
            frames: VecDeque::new(),
            bytes: 0,
            max_bytes: max_bytes.max(1),
            floor: head,
            head,
        }
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Appends a frame (seqs must increase; an older one is ignored) and evicts the oldest
    /// frames while the ring is over its byte bound, always keeping the newest frame.
    pub fn push(&mut self, seq: u64, did_hash: u64, frame: Bytes) {
        if seq <= self.head {
            return;
        }
        self.bytes += frame.len();
        self.frames.push_back(RingFrame {
            seq,
            did_hash,
            frame,
        });
        self.head = seq;
        while self.bytes > self.max_bytes && self.frames.len() > 1 {
            if let Some(old) = self.frames.pop_front() {
                self.bytes -= old.frame.len();
                self.floor = old.seq;
            }
        }
    }

    /// Moves the head over records that carry no frame (masked, or skipped as damaged):
    /// the ring still holds every retained record up to it.
    pub fn advance_head(&mut self, head: u64) {
        self.head = self.head.max(head);
    }

    /// Up to `max_frames` frames with `seq > cursor`, stopping before `max_bytes` unless the
    /// first frame alone is bigger.
    pub fn read_after(&self, cursor: u64, max_frames: usize, max_bytes: usize) -> RingRead {
        if cursor < self.floor {
            return RingRead::Behind;
        }
        let start = self.frames.partition_point(|f| f.seq <= cursor);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for f in self.frames.range(start..).take(max_frames) {
            if !out.is_empty() && bytes + f.frame.len() > max_bytes {
                break;
            }
            bytes += f.frame.len();
            out.push((f.seq, f.frame.clone()));
        }
        RingRead::Frames(out)
    }

    /// Removes an account's frames with `seq <= through_seq`; returns how many.
    pub fn mask(&mut self, did_hash: u64, through_seq: u64) -> usize {
        let before = self.frames.len();
        self.frames
            .retain(|f| f.did_hash != did_hash || f.seq > through_seq);
        self.bytes = self.frames.iter().map(|f| f.frame.len()).sum();
        before - self.frames.len()
    }

    /// Forgets every frame up to `seq` (at most the head): the floor rises there, so a cursor
    /// below it reads the log. Returns the new floor.
    pub fn raise_floor(&mut self, seq: u64) -> u64 {
        self.floor = self.floor.max(seq.min(self.head));
        while self.frames.front().is_some_and(|f| f.seq <= self.floor) {
            if let Some(old) = self.frames.pop_front() {
                self.bytes -= old.frame.len();
            }
        }
        self.floor
    }
}

/// The ring as shared by the Broadcaster (writer) and the sessions (readers). Locks are
/// held only to copy out a few `Bytes` handles, never across I/O or an await.
#[derive(Clone, Debug)]
pub struct SharedRing(Arc<RwLock<Ring>>);

impl SharedRing {
    pub fn new(ring: Ring) -> SharedRing {
        SharedRing(Arc::new(RwLock::new(ring)))
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Ring> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Ring> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

// ------------------------------------------------------------------------------------------
// Reading the log after the head

/// Bodies read per step before the head is published (the rest follows at once).
const READ_STEP_BYTES: usize = 8 * 1024 * 1024;

/// What one blocking read step returns.
struct ReadStep {
    replay: Replay,
    records: Vec<(u64, u64, Bytes)>,
    /// The replay's cursor after the step (covers masked and skipped records too).
    cursor: u64,
    skips: u64,
    /// True when the step stopped at its byte bound (more may be visible).
    more: bool,
    error: Option<EventLogError>,
}

/// Reads what became visible after the replay's cursor, skipping damaged records.
fn read_step(mut replay: Replay) -> ReadStep {
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut skips = 0u64;
    let mut error = None;
    let mut more = false;
    loop {
        if bytes >= READ_STEP_BYTES {
            more = true;
            break;
        }
        match replay.next_batch(4096, 1024 * 1024) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                for r in batch {
                    bytes += r.body.len();
                    // Copied out of the read block: a slice would keep the whole block
                    // alive for as long as any of its frames stays in the ring, and the
                    // ring's byte bound would not be the memory it holds.
                    records.push((r.seq, r.did_hash, Bytes::copy_from_slice(&r.body)));
                }
            }
            Err(EventLogError::Corrupt {
                segment_first_seq,
                offset,
            }) => match replay.skip_damaged(segment_first_seq, offset) {
                Some(skip) => {
                    tracing::error!(
                        segment_first_seq,
                        offset,
                        skipped_after = skip.cursor_before,
                        resumed_after = skip.cursor_after,
                        "damaged event log record skipped by the broadcaster"
                    );
                    skips += 1;
                }
                None => {
                    error = Some(EventLogError::Corrupt {
                        segment_first_seq,
                        offset,
                    });
                    break;
                }
            },
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let cursor = replay.cursor();
    ReadStep {
        replay,
        records,
        cursor,
        skips,
        more,
        error,
    }
}

// ------------------------------------------------------------------------------------------
// Actor

/// The Broadcaster (one, supervised).
pub struct Broadcaster {
    obs: ActorObs,
    metrics: FirehoseMetrics,
    reader: EventLogReader,
    /// `None` while a read step owns it.
    replay: Option<Replay>,
    /// Durable-head announcements from the Persister.
    durable: watch::Receiver<u64>,
    ring: SharedRing,
    published: watch::Sender<u64>,
    /// When the head was last published (the next publication waits for [`PUBLISH_EVERY`]).
    last_publish: Option<tokio::time::Instant>,
    /// Masks that arrived while a read step was running: `(did_hash, through_seq)`, applied
    /// again when that step is absorbed (see the module doc).
    masks_in_flight: Vec<(u64, u64)>,
    state: BroadcasterState,
}

/// Sessions are woken at most this often. Under a steady stream every wake then carries a
/// few frames, which a session hands to its socket together (one task poll and one write per
/// wake instead of per frame, per consumer: the cost that decides how many consumers a core
/// serves); an event after a quiet spell is published at once. The price is at most this
/// much latency.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(5);

impl Broadcaster {
    /// Its `actor` label.
    pub const NAME: &'static str = "broadcaster";
    /// Only admin requests (state, masking) arrive by message; head moves come through the
    /// `watch`, so a few slots are plenty.
    pub const MAILBOX: usize = 16;

    /// A Broadcaster whose ring starts empty at the log's durable head. Returns it with
    /// the shared ring and the published-head receiver sessions clone.
    pub fn new(
        obs: ActorObs,
        metrics: FirehoseMetrics,
        reader: EventLogReader,
        durable: watch::Receiver<u64>,
        ring_max_bytes: usize,
    ) -> Result<(Broadcaster, SharedRing, watch::Receiver<u64>), EventLogError> {
        let head = reader.durable_head();
        let replay = reader.read_after(head)?;
        let ring = SharedRing::new(Ring::new(head, ring_max_bytes));
        let (published, published_rx) = watch::channel(head);
        let broadcaster = Broadcaster {
            obs,
            metrics,
            reader,
            replay: Some(replay),
            durable,
            ring: ring.clone(),
            published,
            last_publish: None,
            masks_in_flight: Vec::new(),
            state: BroadcasterState {
                head,
                floor: head,
                ..BroadcasterState::default()
            },
        };
        Ok((broadcaster, ring, published_rx))
    }

    /// Waits for the next durable-head announcement, then reads. The wait owns a clone of
    /// the receiver, so a restart that drops it loses nothing.
    fn wait_for_head(&mut self, ctx: &mut Context<Self>) {
        let mut durable = self.durable.clone();
        let not_before = self.last_publish.map(|at| at + PUBLISH_EVERY);
        ctx.spawn(
            async move {
                let alive = durable.changed().await.is_ok();
                if alive && let Some(at) = not_before {
                    tokio::time::sleep_until(at).await;
                }
                alive
            }
            .into_actor(self)
            .map(|alive, act, ctx| {
                if alive {
                    // Marked seen before reading: the read goes to the log's durable
                    // head, which covers every announcement made until then.
                    act.durable.borrow_and_update();
                    act.read(ctx);
                } else {
                    tracing::info!("durable-head announcements ended; the ring stays");
                    act.state.source_closed = true;
                }
            }),
        );
    }

    /// One read step on the blocking pool; then publish, and read again or wait.
    fn read(&mut self, ctx: &mut Context<Self>) {
        let Some(replay) = self.replay.take() else {
            return;
        };
        ctx.spawn(
            async move { tokio::task::spawn_blocking(move || read_step(replay)).await }
                .into_actor(self)
                .map(|joined, act, ctx| match joined {
                    Ok(step) => {
                        let more = step.more;
                        act.absorb(step);
                        if more {
                            act.read(ctx);
                        } else {
                            act.wait_for_head(ctx);
                        }
                    }
                    Err(e) => {
                        // The replay went with the panicked task: restart from the head.
                        tracing::error!(error = %e, "broadcaster read step failed");
                        let head = act.ring.read().head();
                        match act.reader.read_after(head) {
                            Ok(replay) => act.replay = Some(replay),
                            Err(e) => tracing::error!(error = %e, "broadcaster cannot reopen"),
                        }
                        act.wait_for_head(ctx);
                    }
                }),
        );
    }

    /// Puts a step's frames into the ring and publishes the new head.
    fn absorb(&mut self, step: ReadStep) {
        let _guard = self.obs.enter("absorb");
        self.state.reads += 1;
        self.state.damaged_skips += step.skips;
        self.metrics.damaged_skips.inc_by(step.skips);
        let mut replay = step.replay;
        if let Some(e) = step.error {
            tracing::error!(error = %e, "broadcaster could not read the event log");
            if let EventLogError::Outdated { .. } = e {
                // Retention removed the segment under the head (a window shorter than a
                // read step): follow the log from its head again.
                if let Ok(fresh) = self.reader.read_after(self.reader.durable_head()) {
                    replay = fresh;
                }
            }
        }
        let (head, floor, frames, bytes) = {
            let mut ring = self.ring.write();
            for (seq, did_hash, frame) in step.records {
                ring.push(seq, did_hash, frame);
            }
            // The step may have read records before a takedown masked them in the log.
            for (did_hash, through_seq) in self.masks_in_flight.drain(..) {
                ring.mask(did_hash, through_seq);
            }
            ring.advance_head(step.cursor.max(replay.cursor()));
            (ring.head(), ring.floor(), ring.len(), ring.bytes())
        };
        self.replay = Some(replay);
        self.state.head = head;
        self.state.floor = floor;
        self.state.ring_frames = frames;
        self.state.ring_bytes = bytes;
        self.metrics
            .ring_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.metrics
            .ring_frames
            .set(i64::try_from(frames).unwrap_or(i64::MAX));
        self.metrics
            .head
            .set(i64::try_from(head).unwrap_or(i64::MAX));
        // Never waits: sessions read the new value when they next look.
        let moved = self.published.send_if_modified(|h| {
            let moved = head > *h;
            *h = (*h).max(head);
            moved
        });
        if moved {
            self.last_publish = Some(tokio::time::Instant::now());
        }
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(Self::MAILBOX);
        // Catch up with anything that became durable between `new` and now.
        self.read(ctx);
    }
}

impl Supervised for Broadcaster {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The spawned read or wait died with the old context; the replay or the receiver
        // it owned may be gone with it. `started` re-arms from the ring's head.
        self.obs.restarted("stopped");
        let head = self.ring.read().head();
        if self.replay.is_none()
            && let Ok(replay) = self.reader.read_after(head)
        {
            self.replay = Some(replay);
        }
    }
}

impl Handler<MaskAccount> for Broadcaster {
    type Result = usize;

    fn handle(&mut self, msg: MaskAccount, _: &mut Context<Self>) -> usize {
        let _guard = self.obs.enter(MaskAccount::NAME);
        if self.replay.is_none() {
            // A read step owns the replay: it may bring this account's records in later.
            self.masks_in_flight.push((msg.did_hash, msg.through_seq));
        }
        let mut ring = self.ring.write();
        let removed = ring.mask(msg.did_hash, msg.through_seq);
        self.state.ring_frames = ring.len();
        self.state.ring_bytes = ring.bytes();
        removed
    }
}

impl Handler<UnmaskAccount> for Broadcaster {
    type Result = u64;

    fn handle(&mut self, msg: UnmaskAccount, _: &mut Context<Self>) -> u64 {
        let _guard = self.obs.enter(UnmaskAccount::NAME);
        let mut ring = self.ring.write();
        let floor = ring.raise_floor(msg.through_seq);
        self.state.floor = floor;
        self.state.ring_frames = ring.len();
        self.state.ring_bytes = ring.bytes();
        floor
    }
}

impl Handler<GetBroadcasterState> for Broadcaster {
    type Result = MessageResult<GetBroadcasterState>;

    fn handle(&mut self, _: GetBroadcasterState, _: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(GetBroadcasterState::NAME);
        MessageResult(self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, len: usize) -> Bytes {
        let mut b = seq.to_be_bytes().to_vec();
        b.resize(len.max(8), 0);
        Bytes::from(b)
    }

    fn seqs(read: RingRead) -> Vec<u64> {
        match read {
            RingRead::Frames(f) => f.into_iter().map(|(s, _)| s).collect(),
            RingRead::Behind => panic!("behind"),
        }
    }

    #[test]
    fn reads_after_a_cursor_and_reports_behind_below_the_floor() {
        let mut ring = Ring::new(10, 1000);
        assert_eq!(ring.read_after(9, 10, 1000), RingRead::Behind);
        assert_eq!(seqs(ring.read_after(10, 10, 1000)), Vec::<u64>::new());
        for s in [11, 12, 14, 15] {
            ring.push(s, 0, frame(s, 100));
        }
        assert_eq!(seqs(ring.read_after(10, 10, 1000)), vec![11, 12, 14, 15]);
        // Gaps: a cursor between frames starts at the next one.
        assert_eq!(seqs(ring.read_after(13, 10, 1000)), vec![14, 15]);
        assert_eq!(seqs(ring.read_after(12, 1, 1000)), vec![14]);
        // Byte bound, but the first frame always comes.
        assert_eq!(seqs(ring.read_after(10, 10, 250)), vec![11, 12]);
        assert_eq!(seqs(ring.read_after(10, 10, 1)), vec![11]);
        assert_eq!(seqs(ring.read_after(15, 10, 1000)), Vec::<u64>::new());
        // Older or repeated seqs are ignored.
        ring.push(15, 0, frame(15, 100));
        ring.push(3, 0, frame(3, 100));
        assert_eq!(ring.len(), 4);
    }

    #[test]
    fn eviction_keeps_bytes_bounded_and_raises_the_floor() {
        let mut ring = Ring::new(0, 350);
        for s in 1..=10 {
            ring.push(s, 0, frame(s, 100));
            assert!(ring.bytes() <= 350, "{}", ring.bytes());
            // Every seq above the floor up to the head is still there.
            let got = seqs(ring.read_after(ring.floor(), 100, usize::MAX));
            assert_eq!(got, ((ring.floor() + 1)..=s).collect::<Vec<_>>());
        }
        assert_eq!(ring.floor(), 7);
        assert_eq!(ring.read_after(6, 10, 1000), RingRead::Behind);
        // One frame larger than the bound stays, alone.
        ring.push(11, 0, frame(11, 1000));
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.floor(), 10);
        assert_eq!(seqs(ring.read_after(10, 10, 10)), vec![11]);
    }

    #[test]
    fn advancing_the_head_over_missing_records_and_masking() {
        let mut ring = Ring::new(0, 10_000);
        ring.push(1, 7, frame(1, 10));
        ring.push(2, 8, frame(2, 10));
        ring.advance_head(5);
        assert_eq!(ring.head(), 5);
        assert_eq!(seqs(ring.read_after(2, 10, 1000)), Vec::<u64>::new());
        ring.push(4, 7, frame(4, 10)); // not after the head: ignored
        ring.push(6, 7, frame(6, 10));
        ring.push(7, 7, frame(7, 10));
        assert_eq!(ring.mask(7, 6), 2, "up to the bound only");
        assert_eq!(seqs(ring.read_after(0, 10, 1000)), vec![2, 7]);
        assert_eq!(ring.bytes(), 20);
        assert_eq!(ring.head(), 7);
        ring.advance_head(3);
        assert_eq!(ring.head(), 7, "the head never goes back");
    }

    #[test]
    fn raising_the_floor_forgets_frames_up_to_it_but_never_above_the_head() {
        let mut ring = Ring::new(0, 10_000);
        for s in 1..=5 {
            ring.push(s, 1, frame(s, 10));
        }
        assert_eq!(ring.raise_floor(3), 3);
        assert_eq!(ring.read_after(2, 10, 1000), RingRead::Behind);
        assert_eq!(seqs(ring.read_after(3, 10, 1000)), vec![4, 5]);
        assert_eq!(ring.bytes(), 20);
        assert_eq!(ring.raise_floor(1), 3, "the floor never goes back");
        assert_eq!(ring.raise_floor(99), 5, "not above the head");
        assert!(ring.is_empty());
        ring.push(6, 1, frame(6, 10));
        assert_eq!(seqs(ring.read_after(5, 10, 1000)), vec![6]);
    }
}
