//! Opening the log: list segments, load (or rebuild) the sidecar indexes of sealed
//! segments, scan the tail segment and cut it at the first bad record.
//!
//! Only the newest segment can be torn, because the writer syncs a segment before it
//! creates the next one. The tail is scanned record by record; the first record that is
//! incomplete, has an impossible length, fails its checksum or does not increase the seq
//! ends the intact prefix, and everything from there on is truncated (and synced). A tail
//! with no intact record left is removed. The next seq is one past the highest intact
//! record, but never below the configured floor, so a seq is never reused.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::config::EventLogConfig;
use super::error::EventLogError;
use super::markers::{SEQ_FLOOR_FILE, read_deleted_through, read_marker, write_marker};
use super::segment::{
    IndexBuilder, Segment, encode_segment_header, index_file_name, load_index_file,
    parse_segment_name, scan_segment, segment_file_name, sync_dir, write_index_file,
};
use super::state::Shared;
use super::writer::{EventLog, OpenSegment};

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Bytes cut from the tail (a torn or corrupt end, or a removed empty tail segment).
    pub bytes_truncated: u64,
    /// Records (complete or partial) in the truncated bytes, found by following
    /// length fields; a torn header counts as one.
    pub records_dropped: u64,
    /// Seq of the newest intact record, if any.
    pub last_intact_seq: Option<u64>,
    /// The seq the next append may use.
    pub next_seq: u64,
    /// The tail segment held no intact record and was deleted.
    pub removed_empty_tail: bool,
    /// Sealed segments whose sidecar index was missing or stale and was rebuilt by a scan.
    pub rebuilt_indexes: usize,
    /// First seqs of sealed (non-tail) segments with a bad record inside; they are kept
    /// as found (not truncated) and served up to the bad record.
    pub damaged_segments: Vec<u64>,
    /// The tail segment's file header was damaged but records behind it were intact;
    /// the header was rewritten.
    pub repaired_tail_header: bool,
    /// Segments deleted at open because a crash interrupted a retention pass.
    pub interrupted_retention_segments: usize,
    /// Highest seq among checksum-verified records found behind the first bad record of
    /// the tail and cut with it (e.g. bit rot in a durable record). They may have been
    /// reported durable, so the next seq stays above it (persisted in `SEQ_FLOOR`).
    pub highest_dropped_seq: Option<u64>,
}

pub(crate) fn open(config: EventLogConfig) -> Result<(EventLog, RecoveryReport), EventLogError> {
    let dir = config.events_dir();
    create_dir_durably(&dir)?;
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(EventLogError::io("open lock", &lock_path))?;
    // `File::try_lock` (flock) is std since Rust 1.89; the toolchain here is 1.95 and
    // the alternative (libc::flock) would need `unsafe`. The lock dies with the process,
    // so a crash never leaves a stale lock behind.
    let locked = lock.try_lock();
    if locked.is_err() {
        return Err(EventLogError::Locked(dir));
    }
    let names = list_segments(&dir).map_err(EventLogError::io("list dir", &dir))?;
    let interval = config.index_interval_bytes;
    let mut report = RecoveryReport::default();
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(names.len());
    let mut current: Option<OpenSegment> = None;
    let mut seq_floor = read_marker(&dir, SEQ_FLOOR_FILE);
    // Highest seq known to have been synced in a sealed segment beyond its intact prefix:
    // its name (a sealed segment's first record was synced before the next segment was
    // created) and any verified record behind damage. A damaged segment with no readable
    // record has last_seq 0, and it may be the newest one left.
    let mut sealed_high = 0u64;

    for (i, &first_seq) in names.iter().enumerate() {
        let path = dir.join(segment_file_name(first_seq));
        let is_tail = i + 1 == names.len();
        if !is_tail {
            let file = File::open(&path).map_err(EventLogError::io("open segment", &path))?;
            let len = file
                .metadata()
                .map_err(EventLogError::io("stat segment", &path))?
                .len();
            let summary = match load_index_file(&dir, first_seq, len) {
                Some(s) => s,
                None => {
                    let s = scan_segment(&file, first_seq, interval)
                        .map_err(EventLogError::io("scan segment", &path))?;
                    if s.defect.is_some() || s.bad_file_header {
                        tracing::warn!(
                            segment = first_seq,
                            valid_len = s.valid_len,
                            "event log: damaged sealed segment"
                        );
                        report.damaged_segments.push(first_seq);
                        sealed_high = sealed_high.max(first_seq).max(s.highest_seq_after_defect);
                    } else {
                        report.rebuilt_indexes += 1;
                        if let Err(e) = write_index_file(&dir, first_seq, len, &s) {
                            tracing::warn!(error = %e, segment = first_seq, "event log: writing sidecar index failed");
                        }
                    }
                    s
                }
            };
            let seg = Segment::new(first_seq, path, file, &summary);
            seg.sealed.store(true, Ordering::Release);
            segments.push(Arc::new(seg));
            continue;
        }
        // The tail segment: scan and truncate.
        let wfile = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(EventLogError::io("open segment", &path))?;
        let summary = scan_segment(&wfile, first_seq, interval)
            .map_err(EventLogError::io("scan segment", &path))?;
        report.records_dropped += summary.records_after_defect;
        if summary.highest_seq_after_defect > 0 {
            // Intact records behind the first bad one are cut with it; persist a floor
            // above them before they leave the disk, so their seqs are never reused.
            let highest = summary.highest_seq_after_defect;
            report.highest_dropped_seq = Some(highest);
            if highest >= seq_floor {
                seq_floor = highest.saturating_add(1);
                write_marker(&dir, SEQ_FLOOR_FILE, seq_floor).map_err(EventLogError::io(
                    "write seq floor",
                    dir.join(SEQ_FLOOR_FILE),
                ))?;
            }
            tracing::warn!(
                segment = first_seq,
                highest_dropped_seq = highest,
                "event log: intact records behind a bad record were cut"
            );
        }
        if summary.record_count == 0 {
            report.bytes_truncated += summary.file_len;
            report.removed_empty_tail = true;
            drop(wfile);
            std::fs::remove_file(&path).map_err(EventLogError::io("remove empty tail", &path))?;
            remove_if_exists(&dir.join(index_file_name(first_seq)))
                .map_err(EventLogError::io("remove index", &dir))?;
            sync_dir(&dir).map_err(EventLogError::io("fsync dir", &dir))?;
            continue;
        }
        if summary.valid_len < summary.file_len {
            report.bytes_truncated += summary.file_len - summary.valid_len;
            wfile
                .set_len(summary.valid_len)
                .and_then(|()| wfile.sync_all())
                .map_err(EventLogError::io("truncate tail", &path))?;
            tracing::warn!(
                segment = first_seq,
                bytes = summary.file_len - summary.valid_len,
                "event log: truncated torn tail"
            );
        }
        if summary.bad_file_header {
            wfile
                .write_all_at(&encode_segment_header(first_seq), 0)
                .and_then(|()| wfile.sync_data())
                .map_err(EventLogError::io("repair segment header", &path))?;
            tracing::warn!(
                segment = first_seq,
                "event log: repaired damaged tail segment header"
            );
            report.repaired_tail_header = true;
        }
        // The writer appends here, so a sidecar index (from an earlier seal) is stale.
        remove_if_exists(&dir.join(index_file_name(first_seq)))
            .map_err(EventLogError::io("remove index", &dir))?;
        let read_fd = File::open(&path).map_err(EventLogError::io("open segment", &path))?;
        let seg = Arc::new(Segment::new(first_seq, path, read_fd, &summary));
        segments.push(Arc::clone(&seg));
        current = Some(OpenSegment {
            seg,
            file: wfile,
            written_len: summary.valid_len,
            record_count: summary.record_count,
            last_seq: summary.last_seq,
            max_timestamp_ms: summary.max_timestamp_ms,
            index_builder: IndexBuilder::resume(interval, &summary.index),
            pending_index: Vec::new(),
        });
    }

    // Finish a retention pass that a crash interrupted after persisting its marker.
    // Retention deletes a prefix of whole segments and the marker is the last seq of the
    // last one, so a segment belongs to the pass iff its *name* (first seq) is at or below
    // the marker. Not `last_seq`: a damaged segment with no readable record has
    // last_seq 0, which would pass for "deleted" even when no retention ever ran.
    let deleted_through = read_deleted_through(&dir);
    while segments.len() > 1 && segments[0].first_seq <= deleted_through {
        let seg = segments.remove(0);
        for path in [seg.path.clone(), dir.join(index_file_name(seg.first_seq))] {
            remove_if_exists(&path).map_err(EventLogError::io("remove retained segment", &path))?;
        }
        report.interrupted_retention_segments += 1;
    }
    if report.interrupted_retention_segments > 0 {
        sync_dir(&dir).map_err(EventLogError::io("fsync dir", &dir))?;
    }

    let last_intact = segments
        .iter()
        .map(|s| s.last_seq.load(Ordering::Acquire))
        .max()
        .unwrap_or(0);
    let last_timestamp_ms = segments
        .iter()
        .map(|s| s.max_timestamp_ms.load(Ordering::Acquire))
        .max()
        .unwrap_or(0);
    // Retention never deletes the newest segment, but that segment can be one the writer
    // had just created and whose records a power loss took (it is removed above), so the
    // retained segments alone may hold nothing: seqs retention deleted were durable once
    // and must never be handed out again.
    let next_seq = last_intact
        .max(deleted_through)
        .max(sealed_high)
        .saturating_add(1)
        .max(seq_floor)
        .max(config.initial_seq)
        .max(1);
    report.segments = segments.len();
    report.last_intact_seq = (last_intact > 0).then_some(last_intact);
    report.next_seq = next_seq;

    let shared = Arc::new(Shared {
        dir,
        segments: RwLock::new(segments),
        durable_head: AtomicU64::new(last_intact),
        mask_lock: Mutex::new(()),
        retention_lock: Mutex::new(()),
        deleted_through: AtomicU64::new(deleted_through),
    });
    let log = EventLog {
        shared,
        config,
        current,
        next_seq,
        last_written_seq: last_intact,
        last_timestamp_ms,
        poisoned: false,
        unsynced: false,
        last_sync: Instant::now(),
        buf: Vec::new(),
        _lock: lock,
    };
    Ok((log, report))
}

/// `create_dir_all`, then fsync the parent of every directory it created (deepest
/// first), so a power loss cannot take `events/` with the records in it. Nothing is
/// synced when the directory already existed.
fn create_dir_durably(dir: &Path) -> Result<(), EventLogError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::create_dir_all(dir).map_err(EventLogError::io("create dir", dir))?;
    for created in missing {
        if let Some(parent) = created.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            sync_dir(parent).map_err(EventLogError::io("fsync dir", parent))?;
        }
    }
    Ok(())
}

/// Segment first seqs in the directory, ascending. Leftover temp files are removed.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = parse_segment_name(name) {
            names.push(first);
        } else if name.ends_with(".tmp") {
            remove_if_exists(&entry.path())?;
        }
    }
    names.sort_unstable();
    Ok(names)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
