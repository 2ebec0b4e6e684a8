//! Event log recovery: torn and corrupt tails at every offset of the last record,
//! damaged sidecars and empty tails, plus a property test against an in-memory model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use proptest::prelude::*;
use rookery::store::event_log::{
    AppendRecord, EventLog, EventLogConfig, EventLogError, EventLogReader, LogRecord,
    RECORD_HEADER_LEN, RetentionPolicy, SyncPolicy, did_hash, segment_file_name,
};

const FLAGS_OFFSET: usize = 29;

fn small_config(dir: &Path) -> EventLogConfig {
    let mut c = EventLogConfig::new(dir);
    c.segment_max_bytes = 2048;
    c.segment_max_records = 1000;
    c.index_interval_bytes = 256;
    c
}

fn body_for(seq: u64) -> Bytes {
    let len = 8 + (seq * 13 % 40) as usize;
    let mut b = seq.to_le_bytes().to_vec();
    b.extend((8..len).map(|i| (seq as usize * 3 + i) as u8));
    Bytes::from(b)
}

fn rec(seq: u64) -> AppendRecord {
    AppendRecord {
        seq,
        kind: 1,
        did_hash: did_hash("did:plc:recovery"),
        body: body_for(seq),
    }
}

fn read_all(reader: &EventLogReader) -> Vec<LogRecord> {
    let mut replay = reader.read_after(0).expect("replay");
    let mut all = Vec::new();
    loop {
        let batch = replay.next_batch(64, 1 << 20).expect("batch");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("events"))
        .expect("ls")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect()
}

fn restore(files: &BTreeMap<String, Vec<u8>>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events");
    std::fs::create_dir(&events).expect("mkdir");
    for (name, bytes) in files {
        std::fs::write(events.join(name), bytes).expect("write");
    }
    dir
}

/// A log of records 1..=LAST, one per append, whose tail segment holds several records.
const LAST: u64 = 60;

fn build_log() -> (BTreeMap<String, Vec<u8>>, String, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = EventLog::open(small_config(dir.path())).expect("open");
    for seq in 1..=LAST {
        log.append(&[rec(seq)]).expect("append");
    }
    drop(log);
    let mut files = snapshot(dir.path());
    files.remove("LOCK");
    let tail = files
        .keys()
        .filter(|n| n.ends_with(".seg"))
        .max()
        .expect("tail")
        .clone();
    let tail_len = files[&tail].len();
    let last_start = tail_len - RECORD_HEADER_LEN - body_for(LAST).len();
    assert!(
        last_start > 16 + RECORD_HEADER_LEN,
        "tail must hold more than the last record"
    );
    (files, tail, last_start)
}

fn check_recovered_without_last(dir: &Path, expected_truncated: u64) {
    let (mut log, report) = EventLog::open(small_config(dir)).expect("open");
    assert_eq!(report.last_intact_seq, Some(LAST - 1));
    assert_eq!(report.bytes_truncated, expected_truncated);
    assert_eq!(report.records_dropped, u64::from(expected_truncated > 0));
    assert_eq!(log.next_seq(), LAST);
    let all = read_all(&log.reader());
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..LAST).collect::<Vec<_>>()
    );
    assert!(all.iter().all(|r| r.body == body_for(r.seq)));
    // The next seq is above every intact one; appending and reopening works.
    let next = AppendRecord {
        body: Bytes::from_static(b"after recovery"),
        ..rec(log.next_seq())
    };
    assert_eq!(log.append(&[next]).expect("append"), LAST);
    drop(log);
    let (log, report) = EventLog::open(small_config(dir)).expect("reopen");
    assert_eq!(report.bytes_truncated, 0);
    assert_eq!(report.last_intact_seq, Some(LAST));
    assert_eq!(
        read_all(&log.reader()).last().map(|r| r.body.clone()),
        Some(Bytes::from_static(b"after recovery"))
    );
}

#[test]
fn truncating_the_tail_at_every_offset_of_the_last_record_recovers_the_rest() {
    let (files, tail, last_start) = build_log();
    let tail_len = files[&tail].len();
    for cut in last_start..tail_len {
        let mut files = files.clone();
        if let Some(bytes) = files.get_mut(&tail) {
            bytes.truncate(cut);
        }
        let dir = restore(&files);
        check_recovered_without_last(dir.path(), (cut - last_start) as u64);
    }
}

#[test]
fn flipping_any_byte_of_the_last_record_drops_only_it_except_the_flags_byte() {
    let (files, tail, last_start) = build_log();
    let tail_len = files[&tail].len();
    for at in last_start..tail_len {
        let mut files = files.clone();
        if let Some(bytes) = files.get_mut(&tail) {
            bytes[at] ^= 0xff;
        }
        let dir = restore(&files);
        if at == last_start + FLAGS_OFFSET {
            // A flag write is never mistaken for a torn record.
            let (log, report) = EventLog::open(small_config(dir.path())).expect("open");
            assert_eq!(report.bytes_truncated, 0);
            assert_eq!(report.last_intact_seq, Some(LAST));
            assert_eq!(log.next_seq(), LAST + 1);
            // The flipped byte set the masked bit, so replay hides the record.
            assert_eq!(
                read_all(&log.reader()).last().map(|r| r.seq),
                Some(LAST - 1)
            );
        } else {
            check_recovered_without_last(dir.path(), (tail_len - last_start) as u64);
        }
    }
}

#[test]
fn corruption_inside_the_tail_truncates_from_the_first_bad_record() {
    let (files, tail, _) = build_log();
    let first_in_tail: u64 = tail[..20].parse().expect("name");
    // Corrupt the body of the second record of the tail segment.
    let second = first_in_tail + 1;
    let offset = 16 + RECORD_HEADER_LEN + body_for(first_in_tail).len() + RECORD_HEADER_LEN + 2;
    let mut files = files.clone();
    if let Some(bytes) = files.get_mut(&tail) {
        bytes[offset] ^= 0x01;
    }
    let dir = restore(&files);
    let (log, report) = EventLog::open(small_config(dir.path())).expect("open");
    assert_eq!(report.last_intact_seq, Some(first_in_tail));
    assert_eq!(report.records_dropped, LAST - second + 1);
    // Records `second + 1..=LAST` were reported durable and still verify: their seqs
    // must never be handed out again, although they are cut with the bad record.
    assert_eq!(report.highest_dropped_seq, Some(LAST));
    assert_eq!(log.next_seq(), LAST + 1);
    assert_eq!(read_all(&log.reader()).len() as u64, first_in_tail);
    drop(log);
    // The cut records are gone from disk now; the floor must survive a reopen too.
    let (log, report) = EventLog::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.bytes_truncated, 0);
    assert_eq!(log.next_seq(), LAST + 1);
}

#[test]
fn a_tail_whose_first_record_is_bad_keeps_the_seqs_of_intact_records_behind_it() {
    let (files, tail, _) = build_log();
    let first_in_tail: u64 = tail[..20].parse().expect("name");
    let mut files = files.clone();
    if let Some(bytes) = files.get_mut(&tail) {
        bytes[16 + RECORD_HEADER_LEN] ^= 0x01; // first body byte of the first record
    }
    let dir = restore(&files);
    let (log, report) = EventLog::open(small_config(dir.path())).expect("open");
    assert!(report.removed_empty_tail);
    assert_eq!(report.last_intact_seq, Some(first_in_tail - 1));
    assert_eq!(report.highest_dropped_seq, Some(LAST));
    assert_eq!(log.next_seq(), LAST + 1);
    drop(log);
    let (log, _) = EventLog::open(small_config(dir.path())).expect("reopen");
    assert_eq!(log.next_seq(), LAST + 1);
}

/// Power loss right after the writer rolled to a new segment whose first records were
/// never synced, while retention had already deleted every older segment: recovery
/// removes the empty tail and finds no record at all. Seqs that were reported durable
/// (and deleted by retention) must still never be reused.
#[test]
fn next_seq_stays_above_what_retention_deleted_when_the_tail_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(dir.path());
    config.segment_max_records = 1;
    config.sync = SyncPolicy::Interval(std::time::Duration::from_secs(3600));
    config.retention = RetentionPolicy {
        max_total_bytes: Some(1),
        ..RetentionPolicy::default()
    };
    const DURABLE: u64 = 5;
    let (mut log, _) = EventLog::open(config.clone()).expect("open");
    for seq in 1..=DURABLE {
        log.append(&[rec(seq)]).expect("append");
        assert_eq!(log.flush().expect("flush"), seq);
    }
    // Rolls to a new segment; written but not synced, so not reported durable.
    assert_eq!(log.append(&[rec(DURABLE + 1)]).expect("append"), DURABLE);
    let retained = log
        .admin()
        .retain_once(std::time::SystemTime::now())
        .expect("retain");
    assert_eq!(retained.segments_deleted, DURABLE as usize);
    drop(log);
    // Power loss: the unsynced record of the new segment did not survive.
    let tail = dir
        .path()
        .join("events")
        .join(segment_file_name(DURABLE + 1));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tail)
        .and_then(|f| f.set_len(16))
        .expect("cut tail");
    let (mut log, report) = EventLog::open(config).expect("reopen");
    assert!(report.removed_empty_tail);
    assert_eq!(log.next_seq(), DURABLE + 1);
    assert!(matches!(
        log.append(&[rec(DURABLE)]),
        Err(EventLogError::SeqNotAfterHead { .. })
    ));
    // A cursor inside what retention deleted is outdated even while the log is empty.
    assert!(matches!(
        log.reader().read_after(0),
        Err(EventLogError::Outdated { .. })
    ));
    log.append(&[rec(DURABLE + 1)]).expect("append");
    assert!(matches!(
        log.reader().read_after(0),
        Err(EventLogError::Outdated { .. })
    ));
}

#[test]
fn a_torn_new_segment_is_removed_and_damaged_sidecars_are_rebuilt() {
    let (mut files, _, _) = build_log();
    // A crash right after creating the next segment file: partial file header only.
    files.insert(segment_file_name(LAST + 1), b"RKEV".to_vec());
    // A damaged sidecar index of a sealed segment.
    let idx = files
        .keys()
        .find(|n| n.ends_with(".idx"))
        .expect("idx")
        .clone();
    if let Some(bytes) = files.get_mut(&idx) {
        bytes[10] ^= 0x55;
    }
    let dir = restore(&files);
    let (mut log, report) = EventLog::open(small_config(dir.path())).expect("open");
    assert!(report.removed_empty_tail);
    assert_eq!(report.bytes_truncated, 4);
    // The damaged sidecar, and the former tail (never sealed, so it had none).
    assert_eq!(report.rebuilt_indexes, 2);
    assert!(report.damaged_segments.is_empty());
    assert_eq!(report.last_intact_seq, Some(LAST));
    assert_eq!(log.next_seq(), LAST + 1);
    assert!(
        !dir.path()
            .join("events")
            .join(segment_file_name(LAST + 1))
            .exists()
    );
    log.append(&[rec(LAST + 1)]).expect("append");
    assert_eq!(read_all(&log.reader()).len() as u64, LAST + 1);
}

// ---- property test: random appends, reopens, reads and masks against a model ----

#[derive(Clone, Debug)]
enum Op {
    /// Append records: (seq gap above next_seq, body length, did index).
    Append(Vec<(u8, u8, u8)>),
    /// Try to append a seq at or below the last one (must be rejected).
    AppendStale(u8),
    Reopen,
    Read {
        cursor_pick: u16,
        max_records: u8,
        max_bytes: u16,
    },
    Mask {
        did: u8,
        masked: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((0u8..3, 0u8..120, 0u8..3), 1..12).prop_map(Op::Append),
        1 => any::<u8>().prop_map(Op::AppendStale),
        1 => Just(Op::Reopen),
        2 => (any::<u16>(), 1u8..20, 1u16..600).prop_map(|(c, r, b)| Op::Read { cursor_pick: c, max_records: r, max_bytes: b }),
        1 => (0u8..3, any::<bool>()).prop_map(|(did, masked)| Op::Mask { did, masked }),
    ]
}

fn did_name(i: u8) -> String {
    format!("did:plc:model{i}")
}

struct Harness {
    path: PathBuf,
    log: Option<EventLog>,
    /// (seq, did index, body, masked). Masking covers the records stored when it runs.
    model: Vec<(u64, u8, Bytes, bool)>,
}

impl Harness {
    fn log(&mut self) -> &mut EventLog {
        if self.log.is_none() {
            self.log = Some(EventLog::open(small_config(&self.path)).expect("open").0);
        }
        self.log.as_mut().expect("open")
    }

    fn last_seq(&self) -> u64 {
        self.model.last().map(|r| r.0).unwrap_or(0)
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append(recs) => {
                let mut seq = self.log().next_seq();
                prop_assert_eq!(seq, self.last_seq() + 1);
                let mut batch = Vec::new();
                for (gap, len, did) in recs {
                    seq += u64::from(gap);
                    let body = Bytes::from(vec![did.wrapping_add(len); usize::from(len)]);
                    batch.push(AppendRecord {
                        seq,
                        kind: did,
                        did_hash: did_hash(&did_name(did)),
                        body: body.clone(),
                    });
                    self.model.push((seq, did, body, false));
                    seq += 1;
                }
                let head = self.log().append(&batch).expect("append");
                prop_assert_eq!(head, self.last_seq());
            }
            Op::AppendStale(back) => {
                let last = self.last_seq();
                let seq = last.saturating_sub(u64::from(back) % (last + 1));
                let result = self.log().append(&[AppendRecord {
                    seq,
                    kind: 0,
                    did_hash: 0,
                    body: Bytes::new(),
                }]);
                let rejected = matches!(result, Err(EventLogError::SeqNotAfterHead { .. }));
                prop_assert!(rejected, "stale seq {} accepted", seq);
            }
            Op::Reopen => {
                self.log = None;
                let (log, report) = EventLog::open(small_config(&self.path)).expect("reopen");
                prop_assert_eq!(report.bytes_truncated, 0);
                prop_assert_eq!(report.last_intact_seq.unwrap_or(0), self.last_seq());
                prop_assert_eq!(log.next_seq(), self.last_seq() + 1);
                self.log = Some(log);
            }
            Op::Read {
                cursor_pick,
                max_records,
                max_bytes,
            } => {
                let cursor = u64::from(cursor_pick) % (self.last_seq() + 2);
                let expected: Vec<(u64, Bytes)> = self
                    .model
                    .iter()
                    .filter(|r| r.0 > cursor && !r.3)
                    .map(|r| (r.0, r.2.clone()))
                    .collect();
                let reader = self.log().reader();
                let mut replay = reader.read_after(cursor).expect("replay");
                let mut got = Vec::new();
                loop {
                    let batch = replay
                        .next_batch(usize::from(max_records), usize::from(max_bytes))
                        .expect("batch");
                    if batch.is_empty() {
                        break;
                    }
                    prop_assert!(batch.len() <= usize::from(max_records));
                    got.extend(batch.into_iter().map(|r| (r.seq, r.body)));
                }
                prop_assert_eq!(got, expected);
            }
            Op::Mask { did, masked } => {
                self.log()
                    .admin()
                    .set_masked(did_hash(&did_name(did)), masked)
                    .expect("mask");
                for r in self.model.iter_mut().filter(|r| r.1 == did) {
                    r.3 = masked;
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn log_agrees_with_an_in_memory_model(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = Harness { path: dir.path().to_path_buf(), log: None, model: Vec::new() };
        for op in ops {
            h.apply(op)?;
        }
        h.apply(Op::Reopen)?;
        h.apply(Op::Read { cursor_pick: 0, max_records: 7, max_bytes: 100 })?;
    }
}

#[test]
fn an_interrupted_retention_pass_is_finished_at_open() {
    let (files, _, _) = build_log();
    let dir = restore(&files);
    let first_segment_last = {
        let (log, _) = EventLog::open(small_config(dir.path())).expect("open");
        let stats = log.stats();
        assert!(stats.segment_count >= 2);
        // The last seq of the first segment is the seq before the second segment's name.
        let second = files
            .keys()
            .filter(|n| n.ends_with(".seg"))
            .nth(1)
            .expect("second")
            .clone();
        let second_first: u64 = second[..20].parse().expect("name");
        second_first - 1
    };
    // A crash after the marker was persisted but before the files were unlinked.
    std::fs::write(
        dir.path().join("events/DELETED_THROUGH"),
        first_segment_last.to_string(),
    )
    .expect("marker");
    let (log, report) = EventLog::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.interrupted_retention_segments, 1);
    assert_eq!(log.stats().oldest_seq, Some(first_segment_last + 1));
    assert!(matches!(
        log.reader().read_after(0),
        Err(EventLogError::Outdated { .. })
    ));
    let all: Vec<u64> = {
        let mut replay = log.reader().read_after(first_segment_last).expect("replay");
        let mut v = Vec::new();
        loop {
            let b = replay.next_batch(100, 1 << 20).expect("batch");
            if b.is_empty() {
                break v;
            }
            v.extend(b.iter().map(|r| r.seq));
        }
    };
    assert_eq!(all, (first_segment_last + 1..=LAST).collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// Arbitrary bytes after intact records in the tail never panic recovery, and
    /// recovery keeps every intact record before them.
    #[test]
    fn arbitrary_garbage_after_the_tail_is_cut_cleanly(garbage in proptest::collection::vec(any::<u8>(), 1..300), keep in 1u64..5) {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut log, _) = EventLog::open(small_config(dir.path())).expect("open");
            for seq in 1..=keep {
                log.append(&[rec(seq)]).expect("append");
            }
        }
        let tail = dir.path().join("events").join(segment_file_name(1));
        let mut bytes = std::fs::read(&tail).expect("read");
        bytes.extend_from_slice(&garbage);
        std::fs::write(&tail, &bytes).expect("write");
        let (log, report) = EventLog::open(small_config(dir.path())).expect("open");
        // Garbage could by chance form a valid record with a higher seq; it never removes one.
        let last = report.last_intact_seq.expect("records kept");
        prop_assert!(last >= keep);
        let got = read_all(&log.reader());
        prop_assert!(got.len() as u64 >= keep);
        for (i, r) in got.iter().take(keep as usize).enumerate() {
            prop_assert_eq!(r.seq, i as u64 + 1);
            prop_assert_eq!(&r.body, &body_for(r.seq));
        }
    }
}

#[test]
fn a_damaged_tail_header_does_not_cost_the_records_behind_it() {
    let (mut files, tail, _) = build_log();
    if let Some(bytes) = files.get_mut(&tail) {
        bytes[3] ^= 0x40;
    }
    let dir = restore(&files);
    let (log, report) = EventLog::open(small_config(dir.path())).expect("open");
    assert!(report.repaired_tail_header);
    assert_eq!(report.bytes_truncated, 0);
    assert_eq!(report.last_intact_seq, Some(LAST));
    assert_eq!(read_all(&log.reader()).len() as u64, LAST);
    drop(log);
    let (_, report) = EventLog::open(small_config(dir.path())).expect("reopen");
    assert!(!report.repaired_tail_header);
}

/// Bit rot in the first record of a sealed segment whose sidecar is gone (the sidecar is
/// not fsynced, so a power loss after sealing can take it): the segment has no readable
/// record, but no retention ever ran, so it must be kept and reported, never deleted
/// as if a retention pass had been interrupted.
#[test]
fn a_sealed_segment_without_readable_records_is_not_taken_for_interrupted_retention() {
    let (mut files, _, _) = build_log();
    let first = segment_file_name(1);
    if let Some(bytes) = files.get_mut(&first) {
        bytes[16 + RECORD_HEADER_LEN] ^= 0x01; // first body byte of record 1
    }
    files.retain(|name, _| !name.ends_with(".idx"));
    let dir = restore(&files);
    let (log, report) = EventLog::open(small_config(dir.path())).expect("open");
    assert_eq!(report.interrupted_retention_segments, 0);
    assert_eq!(report.damaged_segments, vec![1]);
    assert!(dir.path().join("events").join(&first).exists());
    assert_eq!(log.next_seq(), LAST + 1);
}

/// Bit rot inside a sealed segment whose sidecar is intact is not seen by recovery (only
/// the tail is scanned); readers verify every checksum and stop with a typed `Corrupt`
/// at the bad record, after serving everything before it, without panicking or
/// allocating from a garbage length field.
#[test]
fn readers_report_bit_rot_in_a_sealed_segment_as_corrupt() {
    let (files, _, _) = build_log();
    let first = segment_file_name(1);
    // Offset of record 3 in segment 1 (records 1 and 2 precede it).
    let third = 16 + 2 * RECORD_HEADER_LEN + body_for(1).len() + body_for(2).len();
    type Damage = (&'static str, fn(&mut [u8], usize));
    let damages: [Damage; 3] = [
        ("body bit", |b, at| b[at + RECORD_HEADER_LEN + 3] ^= 0x10),
        ("length above the limit", |b, at| {
            b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes())
        }),
        ("length past the segment", |b, at| {
            b[at..at + 4].copy_from_slice(&(1_000_000u32).to_le_bytes())
        }),
    ];
    for (what, damage) in damages {
        let mut files = files.clone();
        if let Some(bytes) = files.get_mut(&first) {
            damage(bytes, third);
        }
        let dir = restore(&files);
        let (log, report) = EventLog::open(small_config(dir.path())).expect("open");
        assert!(
            report.damaged_segments.is_empty(),
            "{what}: sidecar trusted"
        );
        let mut replay = log.reader().read_after(0).expect("replay");
        let mut seen = Vec::new();
        let err = loop {
            match replay.next_batch(1, 1 << 20) {
                Ok(b) if b.is_empty() => panic!("{what}: replay ended without an error"),
                Ok(b) => seen.extend(b.iter().map(|r| r.seq)),
                Err(e) => break e,
            }
        };
        assert_eq!(seen, vec![1, 2], "{what}");
        assert!(
            matches!(
                err,
                EventLogError::Corrupt { segment_first_seq: 1, offset } if offset == third as u64
            ),
            "{what}: {err:?}"
        );
        // The error is stable: the replay does not skip past the damage.
        assert!(matches!(
            replay.next_batch(10, 1 << 20),
            Err(EventLogError::Corrupt { .. })
        ));
        // A replay that starts behind the damage (found by the sparse index) is served.
        let later: Vec<u64> = {
            let mut r = log.reader().read_after(LAST - 2).expect("replay");
            r.next_batch(10, 1 << 20)
                .expect("batch")
                .iter()
                .map(|r| r.seq)
                .collect()
        };
        assert_eq!(later, vec![LAST - 1, LAST], "{what}");
    }
}

/// The newest sealed segment has bit rot in its first record and no sidecar (it was the
/// tail when the writer rolled; a power loss then took the new segment's records). Its
/// records were synced before the roll, so their seqs (including the segment's name)
/// must never be handed out again, and the writer must not collide with its file.
#[test]
fn a_damaged_newest_sealed_segment_still_bounds_the_next_seq() {
    let (mut files, tail, _) = build_log();
    let tail_first: u64 = tail[..20].parse().expect("name");
    if let Some(bytes) = files.get_mut(&tail) {
        bytes[16 + RECORD_HEADER_LEN] ^= 0x01; // first body byte of its first record
    }
    files.insert(segment_file_name(LAST + 1), b"RKEV".to_vec());
    let dir = restore(&files);
    let (mut log, report) = EventLog::open(small_config(dir.path())).expect("open");
    assert!(report.removed_empty_tail);
    assert_eq!(report.damaged_segments, vec![tail_first]);
    assert_eq!(log.next_seq(), LAST + 1);
    log.append(&[rec(LAST + 1)]).expect("append");
    drop(log);
    let (log, _) = EventLog::open(small_config(dir.path())).expect("reopen");
    assert_eq!(log.next_seq(), LAST + 2);
}
