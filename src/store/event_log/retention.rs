//! Retention: delete whole segments that are older than the window or over the size
//! cap, oldest first, never the newest segment (the one being written).
//!
//! The decision is a pure function ([`plan_retention`]) of segment sizes, their newest
//! record timestamps and the time given by the caller, so tests control the clock.
//! Applying it takes the segment-list lock only long enough to detach the doomed
//! segments and mark them retired; the files are unlinked after the lock is released.
//! A reader still inside a retired segment keeps its open descriptor (the data stays
//! readable until it lets go) but is told [`super::EventLogError::Outdated`] on its next
//! batch, because its position is now before the oldest retained record.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::clock::unix_ms;
use super::error::EventLogError;
use super::markers::{DELETED_THROUGH_FILE, write_deleted_through};
use super::segment::{Segment, index_file_name, sync_dir};
use super::state::{Shared, oldest_seq};

/// How long and how much the log keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete a segment once its newest record is older than this (default 72 h).
    pub max_age: Duration,
    /// Delete oldest segments while the log is larger than this.
    pub max_total_bytes: Option<u64>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            max_age: Duration::from_secs(72 * 3600),
            max_total_bytes: None,
        }
    }
}

/// The facts retention decides on, per segment, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentAge {
    pub bytes: u64,
    /// Timestamp (unix ms) of the newest record in the segment (0 if it has none).
    pub newest_timestamp_ms: u64,
}

/// How many of the oldest segments to delete. The newest segment is never deleted.
pub fn plan_retention(
    segments: &[SegmentAge],
    now_unix_ms: u64,
    policy: &RetentionPolicy,
) -> usize {
    let max_age_ms = u64::try_from(policy.max_age.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_unix_ms.saturating_sub(max_age_ms);
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut n = 0;
    for s in segments.iter().take(segments.len().saturating_sub(1)) {
        let too_old = s.newest_timestamp_ms < cutoff;
        let over_size = policy.max_total_bytes.is_some_and(|cap| total > cap);
        if !too_old && !over_size {
            break;
        }
        total -= s.bytes;
        n += 1;
    }
    n
}

/// What one retention pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_freed: u64,
    /// Oldest retained seq after the pass.
    pub oldest_seq: Option<u64>,
}

/// One retention pass under `policy` at time `now`; see [`super::EventLogAdmin::retain_once`].
pub(crate) fn retain_once(
    shared: &Shared,
    policy: &RetentionPolicy,
    now: SystemTime,
) -> Result<RetentionReport, EventLogError> {
    let _serial = shared
        .retention_lock
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Plan under the read lock, persist the marker, and only then detach: a pass that
    // cannot persist its marker (disk full) changes nothing, instead of detaching
    // segments that no later pass could unlink and telling readers they are gone. The
    // planned prefix cannot change meanwhile: passes are serialised and the writer only
    // pushes segments at the end.
    let planned: Vec<Arc<Segment>> = {
        let segs = shared.segments_read();
        let ages: Vec<SegmentAge> = segs
            .iter()
            .map(|s| SegmentAge {
                bytes: s.committed_len.load(Ordering::Acquire),
                newest_timestamp_ms: s.max_timestamp_ms.load(Ordering::Acquire),
            })
            .collect();
        let n = plan_retention(&ages, unix_ms(now), policy);
        segs[..n].to_vec()
    };
    if !planned.is_empty() {
        let marker = planned
            .iter()
            .map(|s| s.last_seq.load(Ordering::Acquire))
            .fold(shared.deleted_through.load(Ordering::Acquire), u64::max);
        // Persist the marker before unlinking: a crash in between leaves files that the
        // next open deletes, never a deletion that cursors cannot detect.
        write_deleted_through(&shared.dir, marker).map_err(EventLogError::io(
            "write marker",
            shared.dir.join(DELETED_THROUGH_FILE),
        ))?;
    }
    let doomed: Vec<Arc<Segment>> = {
        let mut segs = shared.segments_write();
        let n = planned
            .iter()
            .zip(segs.iter())
            .take_while(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        for s in &segs[..n] {
            // The marker first, so whoever sees `retired` also sees the marker.
            shared
                .deleted_through
                .fetch_max(s.last_seq.load(Ordering::Acquire), Ordering::AcqRel);
            s.retired.store(true, Ordering::Release);
        }
        segs.drain(..n).collect()
    };
    let mut report = RetentionReport {
        segments_deleted: doomed.len(),
        ..RetentionReport::default()
    };
    let mut first_error = None;
    for seg in &doomed {
        report.bytes_freed += seg.committed_len.load(Ordering::Acquire);
        for path in [
            seg.path.clone(),
            shared.dir.join(index_file_name(seg.first_seq)),
        ] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(error = %e, path = %path.display(), "event log retention: remove failed");
                    first_error.get_or_insert(EventLogError::Io {
                        op: "remove segment",
                        path,
                        source: e,
                    });
                }
                _ => {}
            }
        }
    }
    if !doomed.is_empty() {
        sync_dir(&shared.dir).map_err(EventLogError::io("fsync dir", &shared.dir))?;
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    report.oldest_seq = oldest_seq(&shared.segments_read());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3600 * 1000;

    fn seg(bytes: u64, newest_timestamp_ms: u64) -> SegmentAge {
        SegmentAge {
            bytes,
            newest_timestamp_ms,
        }
    }

    #[test]
    fn deletes_only_segments_older_than_window_and_never_the_newest() {
        let policy = RetentionPolicy::default();
        let now = 100 * HOUR_MS;
        let segs = [
            seg(10, HOUR_MS),
            seg(10, 20 * HOUR_MS),
            seg(10, 50 * HOUR_MS),
            seg(10, 99 * HOUR_MS),
        ];
        assert_eq!(plan_retention(&segs, now, &policy), 2);
        // Everything old: still keeps the newest.
        let old = [seg(10, 1), seg(10, 2)];
        assert_eq!(plan_retention(&old, now, &policy), 1);
        assert_eq!(plan_retention(&[seg(10, 1)], now, &policy), 0);
        assert_eq!(plan_retention(&[], now, &policy), 0);
        // Stops at the first young segment even if an older-timestamped one follows.
        let mixed = [seg(10, 90 * HOUR_MS), seg(10, 1), seg(10, 99 * HOUR_MS)];
        assert_eq!(plan_retention(&mixed, now, &policy), 0);
    }

    #[test]
    fn size_cap_deletes_oldest_until_under_cap() {
        let policy = RetentionPolicy {
            max_age: Duration::from_secs(72 * 3600),
            max_total_bytes: Some(25),
        };
        let now = 10 * HOUR_MS;
        let segs = [seg(10, now), seg(10, now), seg(10, now), seg(10, now)];
        assert_eq!(plan_retention(&segs, now, &policy), 2);
        let policy = RetentionPolicy {
            max_total_bytes: Some(0),
            ..policy
        };
        assert_eq!(plan_retention(&segs, now, &policy), 3);
    }
}
