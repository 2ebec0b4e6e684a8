//! The single writer: validates seqs, encodes a batch into one buffer, writes it with
//! positional writes, syncs per the policy, then publishes (committed length, index
//! entries, durable head) so readers can see it. Group commit falls out of the API: the
//! Persister hands over everything that queued up since the last append as one batch,
//! and the batch costs one `write` and one `fdatasync`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use super::admin::EventLogAdmin;
use super::clock::unix_ms;
use super::config::{EventLogConfig, SyncPolicy};
use super::error::EventLogError;
use super::reader::EventLogReader;
use super::record::{AppendRecord, MAX_BODY_LEN, RECORD_HEADER_LEN, encode_record};
use super::segment::{
    IndexBuilder, IndexEntry, ScanSummary, Segment, encode_segment_header, segment_file_name,
    sync_dir, write_index_file,
};
use super::state::{LogStats, Shared};

/// Flush the encode buffer to the file once it holds this much (bounds memory for huge batches).
const MAX_BUFFERED: usize = 8 * 1024 * 1024;

/// The segment the writer appends to.
#[derive(Debug)]
pub(crate) struct OpenSegment {
    pub seg: Arc<Segment>,
    /// Write descriptor (readers have their own).
    pub file: File,
    pub written_len: u64,
    pub record_count: u64,
    pub last_seq: u64,
    pub max_timestamp_ms: u64,
    pub index_builder: IndexBuilder,
    /// Index entries of written but not yet published records.
    pub pending_index: Vec<IndexEntry>,
}

/// The writer half of the event log. Exactly one exists per events directory
/// (enforced with an advisory lock file).
#[derive(Debug)]
pub struct EventLog {
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: EventLogConfig,
    pub(crate) current: Option<OpenSegment>,
    pub(crate) next_seq: u64,
    pub(crate) last_written_seq: u64,
    pub(crate) last_timestamp_ms: u64,
    pub(crate) poisoned: bool,
    pub(crate) unsynced: bool,
    pub(crate) last_sync: Instant,
    pub(crate) buf: Vec<u8>,
    pub(crate) _lock: File,
}

impl EventLog {
    /// Append a batch stamped with the current wall-clock time. See [`EventLog::append_at`].
    pub fn append(&mut self, batch: &[AppendRecord]) -> Result<u64, EventLogError> {
        self.append_at(batch, unix_ms(SystemTime::now()))
    }

    /// Append a batch whose records carry strictly increasing seqs, all at or above
    /// [`EventLog::next_seq`]. Returns the durable head after the append: with
    /// `every-batch` that is the batch's last seq. The whole batch is checked before
    /// anything is written, so a rejected batch leaves the log untouched.
    ///
    /// On an I/O error the batch may be partly durable; the writer is poisoned and the
    /// caller must reopen the log and resume from [`EventLog::next_seq`].
    /// `now_unix_ms` is the record timestamp used by retention (kept monotone).
    pub fn append_at(
        &mut self,
        batch: &[AppendRecord],
        now_unix_ms: u64,
    ) -> Result<u64, EventLogError> {
        if self.poisoned {
            return Err(EventLogError::WriterPoisoned);
        }
        let Some(last) = batch.last() else {
            return Ok(self.durable_head());
        };
        let mut expected = self.next_seq;
        for r in batch {
            if r.seq < expected {
                return Err(EventLogError::SeqNotAfterHead {
                    seq: r.seq,
                    next_seq: expected,
                });
            }
            if r.body.len() > MAX_BODY_LEN {
                return Err(EventLogError::RecordTooLarge {
                    len: r.body.len(),
                    max: MAX_BODY_LEN,
                });
            }
            expected = r.seq.saturating_add(1);
        }
        let timestamp_ms = now_unix_ms.max(self.last_timestamp_ms);
        if let Err(e) = self.write_batch(batch, timestamp_ms) {
            self.poison();
            return Err(e);
        }
        self.next_seq = last.seq.saturating_add(1);
        self.last_written_seq = last.seq;
        self.last_timestamp_ms = timestamp_ms;
        self.unsynced = true;
        match self.config.sync {
            SyncPolicy::EveryBatch => self.sync_and_publish()?,
            SyncPolicy::Interval(every) => {
                if self.last_sync.elapsed() >= every {
                    self.sync_and_publish()?;
                }
            }
            SyncPolicy::None => self.publish(),
        }
        Ok(self.durable_head())
    }

    /// Sync anything written but not yet durable and publish it. Returns the durable head.
    pub fn flush(&mut self) -> Result<u64, EventLogError> {
        if self.poisoned {
            return Err(EventLogError::WriterPoisoned);
        }
        if self.unsynced {
            self.sync_and_publish()?;
        }
        Ok(self.durable_head())
    }

    /// The smallest seq the next append may use (last stored seq + 1, at least the
    /// configured floor). The Sequencer resumes from here.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Seq of the last record written (durable or not), if any.
    pub fn last_seq(&self) -> Option<u64> {
        (self.last_written_seq > 0).then_some(self.last_written_seq)
    }

    /// Seq of the newest record that readers may see (0 if none).
    pub fn durable_head(&self) -> u64 {
        self.shared.durable_head()
    }

    /// True after an I/O error: appends are refused until the log is reopened.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// A read-only handle for replays (cheap to clone, `Send + Sync`).
    pub fn reader(&self) -> EventLogReader {
        EventLogReader::new(Arc::clone(&self.shared))
    }

    /// The administrative handle: retention (under this log's policy), masking and
    /// statistics (cheap to clone, `Send + Sync`). Give it only to the retention thread,
    /// the metrics collector and the takedown path, never to consumer sessions.
    pub fn admin(&self) -> EventLogAdmin {
        EventLogAdmin::new(Arc::clone(&self.shared), self.config.retention.clone())
    }

    pub fn stats(&self) -> LogStats {
        self.shared.stats()
    }

    pub fn config(&self) -> &EventLogConfig {
        &self.config
    }

    fn write_batch(
        &mut self,
        batch: &[AppendRecord],
        timestamp_ms: u64,
    ) -> Result<(), EventLogError> {
        self.buf.clear();
        for r in batch {
            let rec_len = (RECORD_HEADER_LEN + r.body.len()) as u64;
            let must_roll = match &self.current {
                None => true,
                Some(cur) => {
                    cur.record_count > 0
                        && (cur.written_len + self.buf.len() as u64 + rec_len
                            > self.config.segment_max_bytes
                            || cur.record_count >= self.config.segment_max_records)
                }
            };
            if must_roll {
                self.flush_buf()?;
                self.roll(r.seq)?;
            }
            let buffered = self.buf.len() as u64;
            let Some(cur) = self.current.as_mut() else {
                continue; // roll() always sets `current`; unreachable in practice
            };
            if let Some(e) = cur.index_builder.observe(r.seq, cur.written_len + buffered) {
                cur.pending_index.push(e);
            }
            encode_record(&mut self.buf, r, timestamp_ms, 0);
            cur.record_count += 1;
            cur.last_seq = r.seq;
            cur.max_timestamp_ms = cur.max_timestamp_ms.max(timestamp_ms);
            if self.buf.len() >= MAX_BUFFERED {
                self.flush_buf()?;
            }
        }
        self.flush_buf()
    }

    fn flush_buf(&mut self) -> Result<(), EventLogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(cur) = self.current.as_mut() else {
            self.buf.clear();
            return Ok(());
        };
        cur.file
            .write_all_at(&self.buf, cur.written_len)
            .map_err(EventLogError::io("write", &cur.seg.path))?;
        cur.written_len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Seal the current segment (sync it, publish it, store its sidecar index) and
    /// start a new one named `first_seq`. The old segment is synced before the new file
    /// exists, so after a crash only the newest segment can have a torn tail.
    fn roll(&mut self, first_seq: u64) -> Result<(), EventLogError> {
        if let Some(old) = self.current.as_ref() {
            old.file
                .sync_data()
                .map_err(EventLogError::io("fdatasync", &old.seg.path))?;
        }
        if let Some(mut old) = self.current.take() {
            publish_segment(&mut old);
            old.seg.sealed.store(true, Ordering::Release);
            let summary = ScanSummary {
                valid_len: old.written_len,
                file_len: old.written_len,
                record_count: old.record_count,
                last_seq: old.last_seq,
                max_timestamp_ms: old.max_timestamp_ms,
                index: old
                    .seg
                    .index
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                ..ScanSummary::default()
            };
            if let Err(e) = write_index_file(
                &self.shared.dir,
                old.seg.first_seq,
                old.written_len,
                &summary,
            ) {
                // Rebuildable: the next open scans the segment instead.
                tracing::warn!(error = %e, segment = old.seg.first_seq, "event log: writing sidecar index failed");
            }
        }
        let dir = &self.shared.dir;
        let path = dir.join(segment_file_name(first_seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(EventLogError::io("create segment", &path))?;
        let header = encode_segment_header(first_seq);
        file.write_all_at(&header, 0)
            .map_err(EventLogError::io("write segment header", &path))?;
        sync_dir(dir).map_err(EventLogError::io("fsync dir", dir))?;
        let read_fd = File::open(&path).map_err(EventLogError::io("open segment", &path))?;
        let summary = ScanSummary {
            valid_len: header.len() as u64,
            ..ScanSummary::default()
        };
        let seg = Arc::new(Segment::new(first_seq, path, read_fd, &summary));
        self.shared.segments_write().push(Arc::clone(&seg));
        self.current = Some(OpenSegment {
            seg,
            file,
            written_len: header.len() as u64,
            record_count: 0,
            last_seq: 0,
            max_timestamp_ms: 0,
            index_builder: IndexBuilder::new(self.config.index_interval_bytes),
            pending_index: Vec::new(),
        });
        Ok(())
    }

    fn sync_and_publish(&mut self) -> Result<(), EventLogError> {
        if let Some(cur) = self.current.as_ref()
            && let Err(e) = cur.file.sync_data()
        {
            let err = EventLogError::Io {
                op: "fdatasync",
                path: cur.seg.path.clone(),
                source: e,
            };
            self.poison();
            return Err(err);
        }
        self.last_sync = Instant::now();
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        if let Some(cur) = self.current.as_mut() {
            publish_segment(cur);
        }
        #[cfg(test)]
        super::segment::durability_trace::record(format!("publish {}", self.last_written_seq));
        self.unsynced = false;
        self.shared
            .durable_head
            .store(self.last_written_seq, Ordering::Release);
    }

    /// After an I/O error: cut the current segment back to what readers were told is
    /// committed (best effort; recovery checks checksums anyway) and refuse appends.
    fn poison(&mut self) {
        self.poisoned = true;
        self.buf.clear();
        if let Some(cur) = self.current.as_mut() {
            let committed = cur.seg.committed_len.load(Ordering::Acquire);
            if cur
                .file
                .set_len(committed)
                .and_then(|()| cur.file.sync_data())
                .is_ok()
            {
                cur.written_len = committed;
            }
        }
        tracing::error!("event log writer poisoned after an I/O error; reopen the log to continue");
    }
}

/// Make everything written to `cur` visible to readers. Only called once it is synced
/// (or when the policy is `none`).
fn publish_segment(cur: &mut OpenSegment) {
    let seg = &cur.seg;
    if !cur.pending_index.is_empty() {
        let mut index = seg.index.write().unwrap_or_else(|e| e.into_inner());
        index.append(&mut cur.pending_index);
    }
    seg.last_seq.store(cur.last_seq, Ordering::Release);
    seg.max_timestamp_ms
        .store(cur.max_timestamp_ms, Ordering::Release);
    seg.record_count.store(cur.record_count, Ordering::Release);
    seg.committed_len.store(cur.written_len, Ordering::Release);
}

impl Drop for EventLog {
    /// Best effort: sync what an `interval` policy left unsynced. Errors cannot be
    /// returned here; call [`EventLog::flush`] before shutdown to see them.
    fn drop(&mut self) {
        if self.unsynced
            && !self.poisoned
            && let Some(cur) = self.current.as_ref()
        {
            let _ = cur.file.sync_data();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::segment::durability_trace;
    use super::*;
    use bytes::Bytes;

    fn rec(seq: u64) -> AppendRecord {
        AppendRecord {
            seq,
            kind: 0,
            did_hash: 1,
            body: Bytes::from(vec![7u8; 40]),
        }
    }

    /// Power loss keeps a file's directory entry only if the directory was fsynced: each
    /// new segment's entry must be synced before any record in it is reported durable.
    #[test]
    fn a_new_segment_is_synced_into_its_directory_before_its_records_are_published() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = EventLogConfig::new(tmp.path());
        config.segment_max_records = 2;
        let events = config.events_dir();
        let (mut log, _) = EventLog::open(config).expect("open");
        durability_trace::take();
        for seq in 1..=5 {
            log.append(&[rec(seq)]).expect("append");
        }
        let sync = format!("sync_dir {}", events.display());
        // Segments start at 1, 3 and 5: a dir sync precedes the first publish of each.
        let expected: Vec<String> = vec![
            sync.clone(),
            "publish 1".into(),
            "publish 2".into(),
            sync.clone(),
            "publish 3".into(),
            "publish 4".into(),
            sync,
            "publish 5".into(),
        ];
        assert_eq!(durability_trace::take(), expected);
    }

    /// Opening a fresh data dir creates `events/`; its entry in the data dir (and the data
    /// dir's in its parent, if created too) must be synced, or a power loss can take the
    /// whole directory with every record reported durable in it.
    #[test]
    fn creating_the_events_directory_syncs_its_parents() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        durability_trace::take();
        let (log, _) = EventLog::open(EventLogConfig::new(&data_dir)).expect("open");
        let trace = durability_trace::take();
        for dir in [tmp.path(), data_dir.as_path()] {
            let want = format!("sync_dir {}", dir.display());
            assert!(trace.contains(&want), "{want} missing from {trace:?}");
        }
        drop(log);
        // Reopening an existing directory creates nothing and syncs nothing extra.
        let (_log, _) = EventLog::open(EventLogConfig::new(&data_dir)).expect("reopen");
        assert!(durability_trace::take().is_empty());
    }
}
