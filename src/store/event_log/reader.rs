//! Readers: find a position by segment name and sparse index, then stream records
//! across segment boundaries with positional reads.
//!
//! A [`Replay`] reads one block (about `max_bytes`, 64 KiB to 256 KiB) per `pread`, and
//! hands out record bodies as zero-copy `Bytes` slices of its blocks, so memory per batch
//! is bounded by `max_bytes` plus one block and at most one record. Blocks stay small so a
//! block is still in the CPU cache when its checksums are verified: with 4 MiB blocks the
//! same read ran at a quarter of the rate (BENCHMARKS.md, firehose replay). Every record's checksum is
//! verified. Nothing past the durable head or a segment's committed length is read, so
//! a reader never sees a record that is not yet durable. Readers take a lock only to look
//! up a segment in the list; they never wait for the writer's I/O.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use std::os::unix::fs::FileExt;

use super::error::EventLogError;
use super::record::{
    FLAG_MASKED, LogRecord, RECORD_HEADER_LEN, RecordDefect, decode_header, decode_record,
};
use super::segment::{SEGMENT_HEADER_LEN, Segment};
use super::state::{Shared, oldest_seq};

const MIN_BLOCK: usize = 64 * 1024;
const MAX_BLOCK: usize = 256 * 1024;

/// A read-only handle: replays from a cursor, the durable head, and the oldest retained
/// seq for the cursor rules (cheap to clone, `Send + Sync`).
///
/// Every ConsumerSession holds one, so it deliberately has no way to change the log:
/// retention, takedown masking and statistics are on [`super::EventLogAdmin`], which only
/// the owner of the writer can create ([`super::EventLog::admin`]); there is no path from
/// a reader to it. For example, neither of these compiles (stable rustdoc does not check
/// the error code, but the example on `EventLogAdmin` compiles the same calls on the
/// admin handle, so these fail only for the missing method):
///
/// ```compile_fail,E0599
/// # fn f(log: &rookery::store::event_log::EventLog) {
/// let _ = log.reader().retain_once(std::time::SystemTime::now());
/// # }
/// ```
/// ```compile_fail,E0599
/// # fn f(log: &rookery::store::event_log::EventLog) {
/// let _ = log.reader().set_masked(0, true);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct EventLogReader {
    shared: Arc<Shared>,
}

impl EventLogReader {
    pub(crate) fn new(shared: Arc<Shared>) -> EventLogReader {
        EventLogReader { shared }
    }

    /// Start a replay of every record with `seq > cursor` (PROTOCOL.md §1).
    /// Returns [`EventLogError::Outdated`] when records after `cursor` were deleted by
    /// retention (`cursor + 1` is at or below the highest deleted seq); the session then sends `#info OutdatedCursor` and uses
    /// [`EventLogReader::read_from_oldest`]. An empty log yields a replay that will
    /// see records as they arrive.
    pub fn read_after(&self, cursor: u64) -> Result<Replay, EventLogError> {
        let target = cursor.saturating_add(1);
        let segs = self.shared.segments_read();
        let deleted_through = self.shared.deleted_through.load(Ordering::Acquire);
        let oldest = oldest_seq(&segs);
        // Checked before the empty-log case: a log whose retained records were all lost
        // (see recovery) still knows that everything up to the marker was deleted.
        if target <= deleted_through {
            return Err(EventLogError::Outdated {
                oldest_seq: oldest.unwrap_or(deleted_through.saturating_add(1)),
            });
        }
        if oldest.is_none() {
            return Ok(self.unpositioned(cursor));
        }
        let i = segs.partition_point(|s| s.first_seq <= target).max(1);
        let seg = Arc::clone(&segs[i - 1]);
        drop(segs);
        let offset = seg.seek_offset(target);
        Ok(Replay {
            shared: Arc::clone(&self.shared),
            segment: Some(seg),
            offset,
            after: cursor,
            kept: Vec::new(),
        })
    }

    /// Start a replay at the oldest retained record.
    pub fn read_from_oldest(&self) -> Replay {
        self.unpositioned(0)
    }

    fn unpositioned(&self, cursor: u64) -> Replay {
        Replay {
            shared: Arc::clone(&self.shared),
            segment: None,
            offset: SEGMENT_HEADER_LEN,
            after: cursor,
            kept: Vec::new(),
        }
    }

    /// Seq of the newest durable record (0 if none).
    pub fn durable_head(&self) -> u64 {
        self.shared.durable_head()
    }

    /// Seq of the oldest retained record (`None` when the log holds none), for the
    /// cursor rules: a replay from before it starts at it. Whether a cursor is outdated
    /// (records after it were deleted) is what [`EventLogReader::read_after`] reports.
    pub fn oldest_seq(&self) -> Option<u64> {
        oldest_seq(&self.shared.segments_read())
    }
}

/// One consumer's position in the log. Owned by one session; create as many as needed.
#[derive(Debug)]
pub struct Replay {
    shared: Arc<Shared>,
    /// `None` until the log has a record at or after the position.
    segment: Option<Arc<Segment>>,
    offset: u64,
    /// Last seq consumed (returned or skipped); the next record returned is after it.
    after: u64,
    /// The blocks this replay read last (at most [`KEPT_BLOCKS`], none above [`MAX_BLOCK`];
    /// dropped when a batch finds nothing new, so an idle replay holds none). One that nobody
    /// holds a slice of any more is read into again: no allocation, no zeroing, memory the
    /// cache has seen. A replay feeding a socket has several blocks in flight, so a fresh
    /// block each time cost page faults and cold copies.
    kept: Vec<Bytes>,
}

/// Blocks a replay keeps for reuse (a session has up to about five in flight: its socket's
/// budget, the batch being sent and the one read ahead).
const KEPT_BLOCKS: usize = 8;

/// What [`Replay::skip_damaged`] passed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DamageSkip {
    pub segment_first_seq: u64,
    /// Offset of the damaged record.
    pub offset: u64,
    /// The replay's cursor before and after the skip: seqs in between that the log held
    /// were not delivered.
    pub cursor_before: u64,
    pub cursor_after: u64,
}

enum NextSegment {
    Found(Arc<Segment>),
    CurrentRetired,
    None,
}

enum Step {
    /// The batch is complete (budget reached or nothing more is visible).
    Done,
    /// Keep reading at the updated position.
    More,
}

impl Replay {
    /// The last seq this replay has passed (its cursor).
    pub fn cursor(&self) -> u64 {
        self.after
    }

    /// The next records after the cursor, at most `max_records` and, unless the first
    /// record alone is bigger, at most `max_bytes` of bodies. Masked records are
    /// skipped. An empty batch means the replay has caught up with the durable head.
    /// [`EventLogError::Outdated`] means retention deleted records after this replay's
    /// cursor (the segment it was reading); a replay that had finished the deleted
    /// segment just continues in the next one.
    pub fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, EventLogError> {
        let batch = self.read_batch(max_records, max_bytes);
        if batch.as_ref().is_ok_and(Vec::is_empty) {
            // Caught up: a replay waiting for new records holds no blocks.
            self.kept.clear();
        }
        batch
    }

    fn read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, EventLogError> {
        let mut out = Vec::new();
        if max_records == 0 {
            return Ok(out);
        }
        let head = self.shared.durable_head();
        let mut body_bytes = 0usize;
        let block_size = max_bytes
            .saturating_add(RECORD_HEADER_LEN)
            .clamp(MIN_BLOCK, MAX_BLOCK);
        loop {
            let seg = match &self.segment {
                Some(seg) => Arc::clone(seg),
                None => match self.locate_first() {
                    Some(seg) => seg,
                    None => return Ok(out),
                },
            };
            if seg.retired.load(Ordering::Acquire) {
                let segs = self.shared.segments_read();
                if self.after >= self.shared.deleted_through.load(Ordering::Acquire) {
                    // Everything deleted is at or before our cursor (we had finished
                    // the segment): continue in the retained segments, nothing is lost.
                    let target = self.after.saturating_add(1);
                    let i = segs.partition_point(|s| s.first_seq <= target).max(1);
                    if let Some(next) = segs.get(i - 1) {
                        let next = Arc::clone(next);
                        drop(segs);
                        self.offset = next.seek_offset(target);
                        self.segment = Some(next);
                        continue;
                    }
                }
                if !out.is_empty() {
                    return Ok(out);
                }
                let oldest = oldest_seq(&segs).unwrap_or(self.after.saturating_add(1));
                return Err(EventLogError::Outdated { oldest_seq: oldest });
            }
            let committed = seg.committed_len.load(Ordering::Acquire);
            if self.offset >= committed {
                if !seg.sealed.load(Ordering::Acquire) {
                    return Ok(out);
                }
                if self.offset < seg.committed_len.load(Ordering::Acquire) {
                    continue;
                }
                match self.next_segment(&seg) {
                    NextSegment::Found(next) => {
                        self.segment = Some(next);
                        self.offset = SEGMENT_HEADER_LEN;
                        continue;
                    }
                    // Retention removed it meanwhile: the retired check above reports it.
                    NextSegment::CurrentRetired => continue,
                    NextSegment::None => return Ok(out),
                }
            }
            match self.read_block(
                &seg,
                committed,
                block_size,
                head,
                max_records,
                max_bytes,
                &mut out,
                &mut body_bytes,
            ) {
                Ok(Step::Done) => return Ok(out),
                Ok(Step::More) => {}
                // The intact records before the damage go out first; the position stays
                // before the damaged record, so the next call reports it.
                Err(EventLogError::Corrupt { .. }) if !out.is_empty() => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves past a damaged record after [`Replay::next_batch`] reported
    /// [`EventLogError::Corrupt`] at `offset` of the segment starting at `segment_first_seq`:
    /// to the next indexed record after the damage in that segment (index entries are
    /// written for intact records only, at most `index_interval_bytes` apart), or, when
    /// the segment has none, to the end of its committed bytes (the next segment follows
    /// as usual). Returns what was skipped, or `None` when the replay is not at that
    /// position (nothing moves then). Records between the damage and the resume point are
    /// lost to this replay; the caller counts and logs them.
    pub fn skip_damaged(&mut self, segment_first_seq: u64, offset: u64) -> Option<DamageSkip> {
        let seg = Arc::clone(self.segment.as_ref()?);
        if seg.first_seq != segment_first_seq || offset < self.offset {
            return None;
        }
        let resume = {
            let index = seg.index.read().unwrap_or_else(|e| e.into_inner());
            index.iter().find(|e| e.offset > offset).copied()
        };
        let cursor_before = self.after;
        match resume {
            Some(entry) => {
                self.offset = entry.offset;
                self.after = self.after.max(entry.seq.saturating_sub(1));
            }
            None => {
                self.offset = seg.committed_len.load(Ordering::Acquire).max(offset);
                self.after = self.after.max(seg.last_seq.load(Ordering::Acquire));
            }
        }
        Some(DamageSkip {
            segment_first_seq,
            offset,
            cursor_before,
            cursor_after: self.after,
        })
    }

    /// Position an unpositioned replay at the first segment, if any exists.
    fn locate_first(&mut self) -> Option<Arc<Segment>> {
        let segs = self.shared.segments_read();
        let seg = Arc::clone(segs.first()?);
        drop(segs);
        self.offset = seg.seek_offset(self.after.saturating_add(1));
        self.segment = Some(Arc::clone(&seg));
        Some(seg)
    }

    /// The segment after `seg`, but only while `seg` itself is still in the list:
    /// retention deletes a prefix, so if `seg` is present its successor was never
    /// deleted, and no record can be skipped silently.
    fn next_segment(&self, seg: &Arc<Segment>) -> NextSegment {
        let segs = self.shared.segments_read();
        let i = segs.partition_point(|s| s.first_seq < seg.first_seq);
        match segs.get(i) {
            Some(s) if Arc::ptr_eq(s, seg) => match segs.get(i + 1) {
                Some(next) => NextSegment::Found(Arc::clone(next)),
                None => NextSegment::None,
            },
            _ => NextSegment::CurrentRetired,
        }
    }

    /// A buffer of `len` bytes to read into: a kept block nobody else holds, or a new one.
    fn buffer(&mut self, len: usize) -> BytesMut {
        // The newest free one: the likeliest still in the cache.
        if let Some(i) = self.kept.iter().rposition(Bytes::is_unique)
            && let Ok(mut buf) = self.kept.remove(i).try_into_mut()
        {
            // Only bytes beyond what the block held are zeroed (the read overwrites all).
            buf.resize(len, 0);
            return buf;
        }
        BytesMut::zeroed(len)
    }

    #[allow(clippy::too_many_arguments)]
    fn read_block(
        &mut self,
        seg: &Segment,
        committed: u64,
        block_size: usize,
        head: u64,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<LogRecord>,
        body_bytes: &mut usize,
    ) -> Result<Step, EventLogError> {
        let corrupt = |offset| EventLogError::Corrupt {
            segment_first_seq: seg.first_seq,
            offset,
        };
        let remaining = committed - self.offset;
        let mut want = remaining.min(block_size as u64) as usize;
        let block = loop {
            let mut buf = self.buffer(want);
            seg.file
                .read_exact_at(&mut buf, self.offset)
                .map_err(EventLogError::io("read segment", &seg.path))?;
            let block = buf.freeze();
            if block.len() <= MAX_BLOCK {
                if self.kept.len() == KEPT_BLOCKS {
                    self.kept.remove(0);
                }
                self.kept.push(block.clone());
            }
            match decode_record(&block) {
                Err(RecordDefect::Truncated) => {
                    // One record larger than the block: read exactly that record.
                    let need = decode_header(&block)
                        .map_err(|_| corrupt(self.offset))?
                        .total_len();
                    if need > remaining || need as usize <= want {
                        return Err(corrupt(self.offset));
                    }
                    want = need as usize;
                }
                Err(_) => return Err(corrupt(self.offset)),
                Ok(_) => break block,
            }
        };
        let mut pos = 0usize;
        while pos < block.len() {
            let h = match decode_record(&block[pos..]) {
                Ok(h) => h,
                Err(RecordDefect::Truncated) => break, // continues in the next block
                Err(_) => return Err(corrupt(self.offset + pos as u64)),
            };
            if h.seq > head {
                self.offset += pos as u64;
                return Ok(Step::Done);
            }
            let total = h.total_len() as usize;
            let wanted = h.seq > self.after && h.flags & FLAG_MASKED == 0;
            if wanted
                && !out.is_empty()
                && body_bytes.saturating_add(h.body_len as usize) > max_bytes
            {
                self.offset += pos as u64;
                return Ok(Step::Done);
            }
            pos += total;
            if h.seq <= self.after {
                continue;
            }
            self.after = h.seq;
            if wanted {
                *body_bytes += h.body_len as usize;
                out.push(LogRecord {
                    seq: h.seq,
                    kind: h.kind,
                    flags: h.flags,
                    did_hash: h.did_hash,
                    timestamp_ms: h.timestamp_ms,
                    body: block.slice(pos - h.body_len as usize..pos),
                });
                if out.len() >= max_records {
                    self.offset += pos as u64;
                    return Ok(Step::Done);
                }
            }
        }
        self.offset += pos as u64;
        Ok(Step::More)
    }
}
