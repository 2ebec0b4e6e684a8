//! The upstream cursor of one host connection: the highest upstream seq the relay may resume
//! from after a restart.
//!
//! A host's events fan out over several ValidatorShards (the DID picks the shard), so they
//! finish out of order: seq 11 of one account may be dropped by its shard while seq 10 of
//! another account still waits for durability. The cursor may only cover a seq once it *and
//! every seq routed before it* are durable or were deliberately dropped (ARCHITECTURE.md,
//! Subscriber); otherwise a crash between the two loses seq 10 for good, because the PDS is
//! asked to resume after 11.
//!
//! So the Subscriber takes a [`CursorMark`] per routed frame ([`HostCursor::begin`]); the mark
//! travels with the event (inside `IngestEvent`, or to the shard that drops it) and is
//! [`CursorMark::complete`]d by whoever finishes the event: the Persister once it is durable,
//! a shard when it drops it on purpose. A mark dropped without `complete` (a halted pipeline,
//! a panicking handler) is *abandoned*: the cursor never passes it on this connection, so the
//! next connection asks for it again and the rev check drops what was already stored. When
//! the contiguous prefix grows, the new cursor goes to the write-behind
//! ([`PendingWrites::record_cursor`]), which writes all hosts' cursors in one statement.
//!
//! Memory: one map entry per event in flight (bounded by the byte budget) plus one per
//! abandoned event of this connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::write_behind::PendingWrites;

#[derive(Debug)]
struct Track {
    host_id: i64,
    /// The host's cursor generation when this connection started (a reset starts a new one).
    generation: u64,
    /// Everything at or below this is durable or dropped on purpose.
    committed: i64,
    /// The highest seq begun so far.
    last_begun: i64,
    /// Seqs begun and not completed; `true` marks an abandoned one.
    outstanding: BTreeMap<i64, bool>,
}

impl Track {
    /// The cursor implied by what is outstanding.
    fn contiguous(&self) -> i64 {
        match self.outstanding.keys().next() {
            Some(first) => (first - 1).max(self.committed),
            None => self.last_begun.max(self.committed),
        }
    }
}

/// The cursor tracker of one host connection. Cheap to clone; owned by its Subscriber.
#[derive(Clone, Debug)]
pub struct HostCursor {
    track: Arc<Mutex<Track>>,
    pending: PendingWrites,
}

impl HostCursor {
    /// A tracker for `host_id` whose stored cursor is `start` (0: none).
    pub fn new(host_id: i64, start: i64, pending: PendingWrites) -> HostCursor {
        HostCursor {
            track: Arc::new(Mutex::new(Track {
                host_id,
                generation: pending.cursor_generation(host_id),
                committed: start,
                last_begun: start,
                outstanding: BTreeMap::new(),
            })),
            pending,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Track> {
        lock(&self.track)
    }

    /// Starts tracking upstream `seq`, which must be above every seq begun before (the
    /// Subscriber drops non-increasing seqs before routing). A seq that is not is returned
    /// as a mark that completes to nothing.
    pub fn begin(&self, seq: i64) -> CursorMark {
        let mut t = self.lock();
        let tracked = seq > t.last_begun;
        if tracked {
            t.last_begun = seq;
            t.outstanding.insert(seq, false);
        }
        CursorMark {
            cursor: tracked.then(|| self.clone()),
            host_id: t.host_id,
            seq,
        }
    }

    /// The cursor as far as this connection knows: every seq up to it is finished.
    pub fn committed(&self) -> i64 {
        self.lock().committed
    }

    /// Number of seqs begun and not completed (abandoned ones included).
    pub fn outstanding(&self) -> usize {
        self.lock().outstanding.len()
    }

    /// Whether an event of this connection was abandoned: the cursor can never pass it on
    /// this connection, so the Subscriber reconnects from the cursor below it (the upstream
    /// resends it; what was already stored is dropped by rev).
    pub fn has_abandoned(&self) -> bool {
        self.lock().outstanding.values().any(|abandoned| *abandoned)
    }

    fn finish(&self, seq: i64, abandoned: bool) {
        let mut t = self.lock();
        if abandoned {
            if let Some(flag) = t.outstanding.get_mut(&seq) {
                *flag = true;
            }
            return;
        }
        t.outstanding.remove(&seq);
        let cursor = t.contiguous();
        if cursor > t.committed {
            t.committed = cursor;
            let (host_id, generation) = (t.host_id, t.generation);
            drop(t);
            self.pending.record_cursor_in(host_id, generation, cursor);
        }
    }
}

fn lock(track: &Mutex<Track>) -> MutexGuard<'_, Track> {
    // Plain integers and a map: still consistent after a panic elsewhere.
    track.lock().unwrap_or_else(|e| e.into_inner())
}

/// One routed upstream seq, travelling with its event until it is durable or dropped.
#[derive(Debug)]
pub struct CursorMark {
    cursor: Option<HostCursor>,
    host_id: i64,
    seq: i64,
}

impl CursorMark {
    /// `hosts.id` of the host the event came from.
    pub fn host_id(&self) -> i64 {
        self.host_id
    }

    /// The event's upstream seq.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// The event is durable, or was dropped on purpose: the cursor may pass it.
    pub fn complete(mut self) {
        if let Some(cursor) = self.cursor.take() {
            cursor.finish(self.seq, false);
        }
    }
}

impl Drop for CursorMark {
    fn drop(&mut self) {
        // Not completed: the event was lost in flight. Hold the cursor below it.
        if let Some(cursor) = self.cursor.take() {
            cursor.finish(self.seq, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(start: i64) -> (HostCursor, PendingWrites) {
        let pending = PendingWrites::default();
        (HostCursor::new(7, start, pending.clone()), pending)
    }

    #[test]
    fn the_cursor_covers_only_a_finished_prefix() {
        let (c, pending) = tracker(100);
        let m101 = c.begin(101);
        let m102 = c.begin(105);
        let m103 = c.begin(106);
        assert_eq!((m102.host_id(), m102.seq()), (7, 105));
        m103.complete();
        assert_eq!(c.committed(), 100, "106 finished before 101 and 105");
        m101.complete();
        assert_eq!(
            c.committed(),
            104,
            "102..=104 were never sent: the gap is covered"
        );
        m102.complete();
        assert_eq!(c.committed(), 106, "gaps in upstream seqs are fine");
        assert_eq!(pending.len(), (1, 0));
        assert_eq!(c.outstanding(), 0);
    }

    #[test]
    fn an_abandoned_event_is_reported() {
        let (c, _) = tracker(0);
        let a = c.begin(1);
        let b = c.begin(2);
        assert!(!c.has_abandoned());
        b.complete();
        assert!(!c.has_abandoned());
        drop(a);
        assert!(c.has_abandoned());
    }

    #[test]
    fn an_abandoned_event_holds_the_cursor_below_it() {
        let (c, _) = tracker(0);
        let a = c.begin(1);
        let b = c.begin(2);
        let d = c.begin(3);
        a.complete();
        drop(b);
        d.complete();
        assert_eq!(c.committed(), 1);
        let e = c.begin(4);
        e.complete();
        assert_eq!(
            c.committed(),
            1,
            "never past the lost seq 2 on this connection"
        );
        assert_eq!(c.outstanding(), 1);
    }

    #[test]
    fn marks_of_a_connection_older_than_a_reset_are_ignored() {
        let (old, pending) = tracker(500);
        let late = old.begin(501);
        pending.reset_cursor(7);
        let new = HostCursor::new(7, 0, pending.clone());
        late.complete();
        assert!(
            pending.is_empty(),
            "the old connection cannot raise a reset cursor"
        );
        new.begin(3).complete();
        assert_eq!(pending.len(), (1, 0));
        old.begin(502).complete();
        assert_eq!(pending.len(), (1, 0));
    }

    #[test]
    fn non_increasing_seqs_are_not_tracked() {
        let (c, pending) = tracker(50);
        c.begin(50).complete();
        c.begin(10).complete();
        assert_eq!(c.committed(), 50);
        assert!(pending.is_empty(), "nothing new to write");
        let m = c.begin(51);
        drop(c.begin(51)); // a repeat is untracked: dropping it abandons nothing
        m.complete();
        assert_eq!(c.committed(), 51);
    }
}
