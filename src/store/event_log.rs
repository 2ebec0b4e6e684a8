//! The durable event log: append-only segment files under `<data-dir>/events/`.
//!
//! Why this shape (see README "## Event log" for the on-disk format):
//! - **One writer, many readers, no shared lock on the hot path.** The writer
//!   ([`EventLog`]) owns the write descriptor. Readers ([`EventLogReader`], `Clone +
//!   Send + Sync`) use positional reads (`pread`) on their own descriptors and only see
//!   bytes the writer has *published* after syncing them: a per-segment committed length
//!   and one global durable head, both atomics. Locks are held only to look up or push a
//!   segment in the list, never across I/O.
//! - **Seqs come from the caller.** Record bodies are complete firehose frames that
//!   already contain their seq, so the Sequencer assigns seqs before the Persister
//!   appends; the log only checks that they strictly increase past everything stored and
//!   never accepts a seq twice, even across crashes ([`EventLog::next_seq`]).
//! - **Whole-segment retention** (lesson 7): deleting old data is unlinking files from a
//!   background task; the writer is never stopped and a reader already inside a deleted
//!   segment gets a typed [`EventLogError::Outdated`] on its next batch.
//! - **Masking in place**: a takedown flips one flags byte per record, a byte the checksum
//!   deliberately does not cover, so a flag write can never look like a torn record.
//! - **Failure stance**: after any I/O error the writer truncates its current segment back
//!   to the last committed length (best effort) and refuses further appends
//!   ([`EventLogError::WriterPoisoned`]) until the log is reopened; recovery on open
//!   detects and truncates any torn tail by checksum, so nothing half-written survives.

mod admin;
mod clock;
mod markers;
mod masking;
mod metrics;
mod reader;
mod record;
mod recovery;
mod retention;
mod segment;
mod writer;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

pub use admin::{EventLogAdmin, RetentionTask, spawn_retention};
pub use masking::MaskReport;
pub use metrics::EventLogCollector;
pub use reader::{EventLogReader, Replay};
pub use record::{AppendRecord, FLAG_MASKED, LogRecord, MAX_BODY_LEN, RECORD_HEADER_LEN, did_hash};
pub use recovery::RecoveryReport;
pub use retention::{RetentionPolicy, RetentionReport, SegmentAge, plan_retention};
pub use segment::{SEGMENT_HEADER_LEN, parse_segment_name, segment_file_name};
pub use writer::EventLog;

use segment::Segment;

/// Name of the directory under the data dir that holds the segments.
pub const EVENTS_DIR: &str = "events";

/// When the writer syncs appended data to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` after every appended batch before reporting it durable (default).
    #[default]
    EveryBatch,
    /// Sync when at least this long passed since the last sync; in between, appends
    /// return the previous durable head. Call [`EventLog::flush`] on a timer.
    Interval(Duration),
    /// Never sync; appended data is published at once. For benchmarks only: a crash
    /// can lose records that readers already saw.
    None,
}

/// Error parsing a [`SyncPolicy`] string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid sync policy {0:?}: expected every-batch, interval:<ms> or none")]
pub struct ParseSyncPolicyError(pub String);

impl FromStr for SyncPolicy {
    type Err = ParseSyncPolicyError;

    /// Accepts `every-batch`, `none` and `interval:<ms>` (e.g. `interval:5`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseSyncPolicyError(s.to_string());
        match s {
            "every-batch" => Ok(SyncPolicy::EveryBatch),
            "none" => Ok(SyncPolicy::None),
            _ => {
                let ms = s.strip_prefix("interval:").ok_or_else(bad)?;
                let ms = ms.strip_suffix("ms").unwrap_or(ms);
                let ms: u64 = ms.parse().map_err(|_| bad())?;
                Ok(SyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::EveryBatch => f.write_str("every-batch"),
            SyncPolicy::None => f.write_str("none"),
            SyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// Configuration of the event log.
#[derive(Clone, Debug)]
pub struct EventLogConfig {
    /// The relay's data dir; segments live in `<data_dir>/events/`.
    pub data_dir: PathBuf,
    /// Roll to a new segment before a record would make the current one larger.
    pub segment_max_bytes: u64,
    /// Roll to a new segment after this many records.
    pub segment_max_records: u64,
    pub sync: SyncPolicy,
    /// Floor for the next seq after recovery (never lower than 1).
    pub initial_seq: u64,
    pub retention: RetentionPolicy,
    /// Distance in bytes between sparse index entries.
    pub index_interval_bytes: u64,
}

impl EventLogConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> EventLogConfig {
        EventLogConfig {
            data_dir: data_dir.into(),
            segment_max_bytes: 256 * 1024 * 1024,
            segment_max_records: 1_000_000,
            sync: SyncPolicy::EveryBatch,
            initial_seq: 1,
            retention: RetentionPolicy::default(),
            index_interval_bytes: 64 * 1024,
        }
    }

    pub fn events_dir(&self) -> PathBuf {
        self.data_dir.join(EVENTS_DIR)
    }
}

/// Errors of the event log. [`EventLogError::reason`] is a bounded metric label.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("event log I/O error ({op}) on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("seq {seq} is not after the log head (next allowed seq is {next_seq})")]
    SeqNotAfterHead { seq: u64, next_seq: u64 },
    #[error("record body of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge { len: usize, max: usize },
    #[error("the writer failed earlier and refuses appends until the log is reopened")]
    WriterPoisoned,
    #[error("position is before the oldest retained record (oldest seq {oldest_seq})")]
    Outdated { oldest_seq: u64 },
    #[error("corrupt record in segment {segment_first_seq} at offset {offset}")]
    Corrupt { segment_first_seq: u64, offset: u64 },
    #[error("the event log in {0} is already open by another writer")]
    Locked(PathBuf),
}

impl EventLogError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EventLogError::Io { source, .. } => match source.kind() {
                io::ErrorKind::StorageFull => "disk_full",
                io::ErrorKind::PermissionDenied => "permission_denied",
                io::ErrorKind::FileTooLarge => "file_too_large",
                _ => "io",
            },
            EventLogError::SeqNotAfterHead { .. } => "seq_not_after_head",
            EventLogError::RecordTooLarge { .. } => "record_too_large",
            EventLogError::WriterPoisoned => "writer_poisoned",
            EventLogError::Outdated { .. } => "outdated",
            EventLogError::Corrupt { .. } => "corrupt",
            EventLogError::Locked(_) => "locked",
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> EventLogError {
        let path = path.into();
        move |source| EventLogError::Io { op, path, source }
    }
}

/// A point-in-time snapshot for metrics and the cursor rules.
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
    /// reported [`EventLogError::Outdated`] even after a restart, while a cursor below
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policy_parses_and_displays() {
        assert_eq!("every-batch".parse(), Ok(SyncPolicy::EveryBatch));
        assert_eq!("none".parse(), Ok(SyncPolicy::None));
        assert_eq!(
            "interval:250".parse(),
            Ok(SyncPolicy::Interval(Duration::from_millis(250)))
        );
        assert_eq!(
            "interval:5ms".parse(),
            Ok(SyncPolicy::Interval(Duration::from_millis(5)))
        );
        for bad in [
            "",
            "every",
            "interval:",
            "interval:x",
            "interval:-1",
            "NONE",
        ] {
            assert!(bad.parse::<SyncPolicy>().is_err(), "{bad}");
        }
        for p in [
            SyncPolicy::EveryBatch,
            SyncPolicy::None,
            SyncPolicy::Interval(Duration::from_millis(7)),
        ] {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
    }
}
