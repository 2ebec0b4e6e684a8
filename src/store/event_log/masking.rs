//! Takedown masking: set or clear the masked flag of every stored record of one DID.
//!
//! Runs beside the writer and readers: it snapshots the segment list, opens each
//! segment with its own read-write descriptor, scans the committed records in large
//! blocks and `pwrite`s the single flags byte where it must change, then syncs that
//! segment. The flags byte is outside the checksum, so a concurrent reader or a crash
//! mid-way can only see the old or the new flag, never a "torn" record. Records appended
//! after the scan passed their position are not covered: the ingest path must stop
//! sequencing a taken-down account's events before masking its history.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::error::EventLogError;
use super::record::{FLAG_MASKED, FLAGS_OFFSET, RecordDefect, decode_header, decode_record};
use super::segment::{SCAN_BLOCK, SEGMENT_HEADER_LEN};
use super::state::Shared;

/// What one masking run changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskReport {
    pub segments_scanned: usize,
    /// Records whose DID hash matched.
    pub records_matched: u64,
    /// Records whose flag byte was rewritten.
    pub records_changed: u64,
}

pub(crate) fn set_masked(
    shared: &Shared,
    did_hash: u64,
    masked: bool,
) -> Result<MaskReport, EventLogError> {
    let _serial = shared.mask_lock.lock().unwrap_or_else(|e| e.into_inner());
    let segments = shared.segments_read().clone();
    let mut report = MaskReport::default();
    for seg in segments {
        if seg.retired.load(Ordering::Acquire) {
            continue;
        }
        let file = match OpenOptions::new().read(true).write(true).open(&seg.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // retention won
            Err(e) => return Err(EventLogError::io("open for masking", &seg.path)(e)),
        };
        report.segments_scanned += 1;
        let end = seg.committed_len.load(Ordering::Acquire);
        let mut offset = SEGMENT_HEADER_LEN;
        let mut changed_here = false;
        let mut buf = vec![0u8; SCAN_BLOCK];
        'segment: while offset < end {
            let want = (end - offset).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..want], offset)
                .map_err(EventLogError::io("read for masking", &seg.path))?;
            let block = &buf[..want];
            let mut pos = 0usize;
            while pos < block.len() {
                let h = match decode_record(&block[pos..]) {
                    Ok(h) => h,
                    Err(RecordDefect::Truncated) if pos > 0 => break,
                    Err(RecordDefect::Truncated) => {
                        // A record larger than the buffer: grow it and reread.
                        let need = decode_header(block).map(|h| h.total_len()).unwrap_or(0);
                        if need as usize > buf.len() && need <= end - offset {
                            buf.resize(need as usize, 0);
                            continue 'segment;
                        }
                        tracing::warn!(
                            segment = seg.first_seq,
                            offset,
                            "masking stopped at a damaged record"
                        );
                        break 'segment;
                    }
                    Err(_) => {
                        tracing::warn!(
                            segment = seg.first_seq,
                            offset = offset + pos as u64,
                            "masking stopped at a damaged record"
                        );
                        break 'segment;
                    }
                };
                if h.did_hash == did_hash {
                    report.records_matched += 1;
                    let flags = if masked {
                        h.flags | FLAG_MASKED
                    } else {
                        h.flags & !FLAG_MASKED
                    };
                    if flags != h.flags {
                        let at = offset + (pos + FLAGS_OFFSET) as u64;
                        file.write_all_at(&[flags], at)
                            .map_err(EventLogError::io("write flag", &seg.path))?;
                        report.records_changed += 1;
                        changed_here = true;
                    }
                }
                pos += h.total_len() as usize;
            }
            offset += pos as u64;
        }
        if changed_here {
            file.sync_data()
                .map_err(EventLogError::io("fdatasync", &seg.path))?;
        }
    }
    Ok(report)
}
