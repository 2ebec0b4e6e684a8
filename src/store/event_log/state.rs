//! State shared by the writer and every handle: the segment list, the durable head and
//! the retention marker, behind atomics and short locks. Only this crate's modules see
//! it; the public handles expose chosen operations on it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::segment::Segment;

/// A point-in-time snapshot for metrics and operators ([`super::EventLogAdmin::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Seq of the oldest retained record.
    pub oldest_seq: Option<u64>,
    /// Seq of the newest durable record (the durable head).
    pub newest_seq: Option<u64>,
    pub total_bytes: u64,
    pub segment_count: usize,
    pub record_count: u64,
}

/// State shared by the writer, readers, retention and masking.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// Seq of the newest record readers may see (0: none). Stored after the data is synced.
    pub durable_head: AtomicU64,
    /// Serialises masking runs (never taken by the writer or readers).
    pub mask_lock: Mutex<()>,
    /// Serialises retention passes (never taken by the writer or readers): two passes
    /// would otherwise race on the `DELETED_THROUGH` temp file and its rename.
    pub retention_lock: Mutex<()>,
    /// Highest seq retention may have deleted (0: nothing deleted yet). Persisted in
    /// `events/DELETED_THROUGH` before files are unlinked, so a cursor at or below it is
    /// reported [`super::EventLogError::Outdated`] even after a restart, while a cursor below
    /// the oldest record of a log that never lost anything is not.
    pub deleted_through: AtomicU64,
}

impl Shared {
    pub fn segments_read(&self) -> RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn segments_write(&self) -> RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.segments.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn durable_head(&self) -> u64 {
        self.durable_head.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> LogStats {
        let head = self.durable_head();
        let segs = self.segments_read();
        let mut stats = LogStats {
            oldest_seq: oldest_seq(&segs),
            newest_seq: (head > 0).then_some(head),
            segment_count: segs.len(),
            ..LogStats::default()
        };
        for s in segs.iter() {
            stats.total_bytes += s.committed_len.load(Ordering::Acquire);
            stats.record_count += s.record_count.load(Ordering::Acquire);
        }
        stats
    }
}

/// Seq of the first committed record in the first non-empty segment. The first index
/// entry of a segment is always its first record.
pub(crate) fn oldest_seq(segs: &[Arc<Segment>]) -> Option<u64> {
    segs.iter().find_map(|s| {
        let index = s.index.read().unwrap_or_else(|e| e.into_inner());
        index.first().map(|e| e.seq)
    })
}
