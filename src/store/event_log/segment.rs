//! Segment files: `<first seq, 20 digits>.seg`, a 16-byte file header, then records.
//!
//! Each segment keeps a sparse in-memory index of `(seq, offset)` pairs (one entry per
//! ~64 KiB of records) so a reader finds its position with two binary searches and
//! at most one index interval of reading. When the writer seals a segment it stores the
//! index in a sidecar `<first seq>.idx` (checksummed), so opening a large log reads a
//! few small index files instead of scanning every segment. A missing or stale sidecar is
//! simply rebuilt by one scan; it holds nothing that is not derivable from the segment.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::record::{RECORD_HEADER_LEN, RecordDefect, decode_header, decode_record};

/// File header: 8 magic bytes then the first seq (must match the file name).
pub const SEGMENT_MAGIC: &[u8; 8] = b"RKEVLOG1";
pub const SEGMENT_HEADER_LEN: u64 = 16;
const INDEX_MAGIC: &[u8; 8] = b"RKEVIDX1";
/// Upper bound on a sidecar index file we are willing to read.
const MAX_INDEX_FILE: u64 = 64 * 1024 * 1024;
/// Scan buffer size (recovery, masking, index rebuilds).
pub const SCAN_BLOCK: usize = 1024 * 1024;

/// One sparse index entry: the record with `seq` starts at byte `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: u64,
    pub offset: u64,
}

pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

pub fn index_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.idx")
}

/// Parse `<20 digits>.seg` into the first seq.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub fn encode_segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// A segment as shared between the writer, readers, retention and masking.
/// Readers only look at bytes below `committed_len`, which the writer publishes after
/// the bytes are synced (per the sync policy).
#[derive(Debug)]
pub struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Read-only descriptor shared by all readers (positional reads only).
    pub file: File,
    pub committed_len: AtomicU64,
    /// Seq of the last committed record (0 if none).
    pub last_seq: AtomicU64,
    /// Largest record timestamp (unix ms) among committed records.
    pub max_timestamp_ms: AtomicU64,
    pub record_count: AtomicU64,
    /// Set (Release) after the final `committed_len` is stored: no more bytes will come.
    pub sealed: AtomicBool,
    /// Set by retention when the file is removed from the log.
    pub retired: AtomicBool,
    pub index: RwLock<Vec<IndexEntry>>,
}

impl Segment {
    pub fn new(first_seq: u64, path: PathBuf, file: File, summary: &ScanSummary) -> Segment {
        Segment {
            first_seq,
            path,
            file,
            committed_len: AtomicU64::new(summary.valid_len),
            last_seq: AtomicU64::new(summary.last_seq),
            max_timestamp_ms: AtomicU64::new(summary.max_timestamp_ms),
            record_count: AtomicU64::new(summary.record_count),
            sealed: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            index: RwLock::new(summary.index.clone()),
        }
    }

    /// Byte offset to start reading from to find the first record with seq >= `target`.
    pub fn seek_offset(&self, target: u64) -> u64 {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let n = index.partition_point(|e| e.seq <= target);
        if n == 0 {
            SEGMENT_HEADER_LEN
        } else {
            index[n - 1].offset
        }
    }
}

/// What a scan of a segment found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Length of the intact prefix (file header plus intact records).
    pub valid_len: u64,
    pub file_len: u64,
    pub record_count: u64,
    pub last_seq: u64,
    pub max_timestamp_ms: u64,
    pub index: Vec<IndexEntry>,
    /// The first bad record, if the intact prefix ends before the file does.
    pub defect: Option<ScanDefect>,
    /// Records (complete or partial) found after the intact prefix by following
    /// length fields; a torn header counts as one.
    pub records_after_defect: u64,
    /// The file header itself is missing or wrong (records may still be intact).
    pub bad_file_header: bool,
    /// Highest seq of a checksum-verified record found after the defect by following
    /// length fields (0 if none). Such a record was intact, possibly reported durable.
    pub highest_seq_after_defect: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanDefect {
    Record(RecordDefect),
    /// Seq not above the previous record (or below the segment's first seq).
    SeqOrder,
}

/// Adds an index entry when at least `interval` bytes passed since the last one.
#[derive(Clone, Debug)]
pub struct IndexBuilder {
    interval: u64,
    last_indexed_offset: Option<u64>,
}

impl IndexBuilder {
    pub fn new(interval: u64) -> IndexBuilder {
        IndexBuilder {
            interval: interval.max(1),
            last_indexed_offset: None,
        }
    }

    pub fn resume(interval: u64, index: &[IndexEntry]) -> IndexBuilder {
        IndexBuilder {
            interval: interval.max(1),
            last_indexed_offset: index.last().map(|e| e.offset),
        }
    }

    /// Returns the entry to add for a record starting at `offset`, if any.
    pub fn observe(&mut self, seq: u64, offset: u64) -> Option<IndexEntry> {
        let due = match self.last_indexed_offset {
            None => true,
            Some(last) => offset.saturating_sub(last) >= self.interval,
        };
        if due {
            self.last_indexed_offset = Some(offset);
            Some(IndexEntry { seq, offset })
        } else {
            None
        }
    }
}

/// Scan a whole segment from its file header, stopping at the first bad record.
/// Reads in large blocks with positional reads; memory stays bounded by
/// `SCAN_BLOCK` plus one maximal record.
pub fn scan_segment(file: &File, first_seq: u64, index_interval: u64) -> io::Result<ScanSummary> {
    let file_len = file.metadata()?.len();
    let mut summary = ScanSummary {
        file_len,
        ..ScanSummary::default()
    };
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    if file_len < SEGMENT_HEADER_LEN {
        summary.bad_file_header = true;
        return Ok(summary);
    }
    file.read_exact_at(&mut header, 0)?;
    if header != encode_segment_header(first_seq) {
        // Keep scanning: records carry their own checksums, and a damaged file header
        // must not cost the durable records behind it.
        summary.bad_file_header = true;
    }
    let mut builder = IndexBuilder::new(index_interval);
    let mut offset = SEGMENT_HEADER_LEN;
    let mut prev_seq = first_seq.saturating_sub(1);
    let mut buf = vec![0u8; SCAN_BLOCK];
    while offset < file_len && summary.defect.is_none() {
        let want = (file_len - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..want], offset)?;
        let block = &buf[..want];
        let block_reaches_end = offset + want as u64 >= file_len;
        let mut pos = 0usize;
        let mut grow_to = None;
        while pos < block.len() {
            let rest = &block[pos..];
            match decode_record(rest) {
                Ok(h) if h.seq <= prev_seq => {
                    summary.defect = Some(ScanDefect::SeqOrder);
                    break;
                }
                Ok(h) => {
                    if let Some(e) = builder.observe(h.seq, offset + pos as u64) {
                        summary.index.push(e);
                    }
                    prev_seq = h.seq;
                    summary.record_count += 1;
                    summary.last_seq = h.seq;
                    summary.max_timestamp_ms = summary.max_timestamp_ms.max(h.timestamp_ms);
                    pos += h.total_len() as usize;
                }
                Err(RecordDefect::Truncated) if !block_reaches_end => {
                    // The record continues past this block; a record bigger than the
                    // whole block needs a bigger buffer (bounded by MAX_BODY_LEN).
                    if pos == 0 {
                        let need = decode_header(rest).map(|h| h.total_len()).unwrap_or(0);
                        if need > file_len - offset || need as usize <= want {
                            summary.defect = Some(ScanDefect::Record(RecordDefect::Truncated));
                        } else {
                            grow_to = Some(need as usize);
                        }
                    }
                    break;
                }
                Err(defect) => {
                    summary.defect = Some(ScanDefect::Record(defect));
                    break;
                }
            }
        }
        offset += pos as u64;
        match grow_to {
            Some(need) => buf.resize(need.max(SCAN_BLOCK), 0),
            None if buf.len() > SCAN_BLOCK => buf.truncate(SCAN_BLOCK),
            None => {}
        }
    }
    summary.valid_len = offset;
    if summary.defect.is_some() {
        let (count, highest) = follow_framed_records(file, offset, file_len, buf)?;
        summary.records_after_defect = count;
        summary.highest_seq_after_defect = highest;
    }
    Ok(summary)
}

/// Follow length fields through `[offset, end)`: count record frames (to report how
/// many records a truncation drops) and find the highest seq among those that verify.
/// A record behind a bad one that still passes its checksum is real data (bit rot in
/// front of it, or a torn write persisted out of order), so recovery must keep the next
/// seq above it. Memory: `buf` grows to at most one maximal record.
fn follow_framed_records(
    file: &File,
    mut offset: u64,
    end: u64,
    mut buf: Vec<u8>,
) -> io::Result<(u64, u64)> {
    let mut count = 0;
    let mut highest = 0;
    let mut header = [0u8; RECORD_HEADER_LEN];
    while offset < end {
        count += 1;
        if end - offset < RECORD_HEADER_LEN as u64 {
            break;
        }
        file.read_exact_at(&mut header, offset)?;
        let Ok(h) = decode_header(&header) else {
            break;
        };
        let total = h.total_len();
        if total <= end - offset {
            // total <= RECORD_HEADER_LEN + MAX_BODY_LEN, so this allocation is bounded.
            buf.resize(total as usize, 0);
            file.read_exact_at(&mut buf, offset)?;
            if let Ok(h) = decode_record(&buf) {
                highest = highest.max(h.seq);
            }
        }
        offset += total;
    }
    Ok((count, highest))
}

/// Serialize the sidecar index of a sealed segment.
pub fn encode_index_file(segment_len: u64, first_seq: u64, summary: &ScanSummary) -> Vec<u8> {
    let mut out = Vec::with_capacity(60 + summary.index.len() * 16);
    out.extend_from_slice(INDEX_MAGIC);
    for v in [
        segment_len,
        first_seq,
        summary.last_seq,
        summary.record_count,
        summary.max_timestamp_ms,
        summary.index.len() as u64,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for e in &summary.index {
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Parse a sidecar index; `None` if it is damaged or does not describe a segment of
/// exactly `segment_len` bytes starting at `first_seq`.
pub fn decode_index_file(bytes: &[u8], segment_len: u64, first_seq: u64) -> Option<ScanSummary> {
    const FIXED: usize = 8 + 6 * 8;
    if bytes.len() < FIXED + 4 {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().ok()?);
    if crc32c::crc32c(body) != crc || &body[..8] != INDEX_MAGIC {
        return None;
    }
    let field = |i: usize| -> Option<u64> {
        let start = 8 + i * 8;
        Some(u64::from_le_bytes(
            body.get(start..start + 8)?.try_into().ok()?,
        ))
    };
    let (len, first, last, count, max_ts, n) = (
        field(0)?,
        field(1)?,
        field(2)?,
        field(3)?,
        field(4)?,
        field(5)?,
    );
    if len != segment_len || first != first_seq {
        return None;
    }
    let n = usize::try_from(n).ok()?;
    if body.len() != FIXED.checked_add(n.checked_mul(16)?)? {
        return None;
    }
    let mut index = Vec::with_capacity(n);
    for chunk in body[FIXED..].chunks_exact(16) {
        let seq = u64::from_le_bytes(chunk[..8].try_into().ok()?);
        let offset = u64::from_le_bytes(chunk[8..].try_into().ok()?);
        if offset < SEGMENT_HEADER_LEN || offset >= segment_len {
            return None;
        }
        index.push(IndexEntry { seq, offset });
    }
    if !index
        .windows(2)
        .all(|w| w[0].seq < w[1].seq && w[0].offset < w[1].offset)
    {
        return None;
    }
    Some(ScanSummary {
        valid_len: segment_len,
        file_len: segment_len,
        record_count: count,
        last_seq: last,
        max_timestamp_ms: max_ts,
        index,
        ..ScanSummary::default()
    })
}

/// Load the sidecar index of `first_seq` if it is valid for a segment of `segment_len`.
pub fn load_index_file(dir: &Path, first_seq: u64, segment_len: u64) -> Option<ScanSummary> {
    let path = dir.join(index_file_name(first_seq));
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len > MAX_INDEX_FILE {
        return None;
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0).ok()?;
    decode_index_file(&bytes, segment_len, first_seq)
}

/// Write the sidecar index (temp file + rename). Not fsynced: it is rebuildable, and a
/// damaged one fails its checksum and is rebuilt by a scan at the next open.
pub fn write_index_file(
    dir: &Path,
    first_seq: u64,
    segment_len: u64,
    summary: &ScanSummary,
) -> io::Result<()> {
    let final_path = dir.join(index_file_name(first_seq));
    let tmp_path = dir.join(format!("{}.tmp", index_file_name(first_seq)));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp_path)?;
    f.write_all(&encode_index_file(segment_len, first_seq, summary))?;
    drop(f);
    std::fs::rename(tmp_path, final_path)
}

/// fsync a directory so a created, renamed or removed entry is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    #[cfg(test)]
    durability_trace::record(format!("sync_dir {}", dir.display()));
    Ok(())
}

/// Test-only record of durability-relevant operations on this thread, in order, so unit
/// tests can check what a power loss would keep (a missing fsync cannot be observed on
/// a running system).
#[cfg(test)]
pub(crate) mod durability_trace {
    use std::cell::RefCell;

    thread_local! {
        static EVENTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    pub fn record(event: String) {
        EVENTS.with(|e| e.borrow_mut().push(event));
    }

    pub fn take() -> Vec<String> {
        EVENTS.with(|e| std::mem::take(&mut *e.borrow_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name("00000000000000000042.seg"), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn index_file_round_trip_and_rejects_mismatch() {
        let summary = ScanSummary {
            valid_len: 1000,
            file_len: 1000,
            record_count: 7,
            last_seq: 19,
            max_timestamp_ms: 55,
            index: vec![
                IndexEntry {
                    seq: 10,
                    offset: 16,
                },
                IndexEntry {
                    seq: 15,
                    offset: 500,
                },
            ],
            ..ScanSummary::default()
        };
        let bytes = encode_index_file(1000, 10, &summary);
        assert_eq!(decode_index_file(&bytes, 1000, 10), Some(summary));
        assert_eq!(decode_index_file(&bytes, 1001, 10), None);
        assert_eq!(decode_index_file(&bytes, 1000, 11), None);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert_eq!(decode_index_file(&bad, 1000, 10), None);
    }

    proptest! {
        #[test]
        fn arbitrary_index_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_index_file(&bytes, 1000, 10);
        }
    }
}
