//! Event log: round trips across segments, cursor positions, seq rules, retention,
//! masking, and retention running beside a writer and readers.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rookery::store::event_log::{
    AppendRecord, EventLog, EventLogConfig, EventLogError, EventLogReader, LogRecord,
    RetentionPolicy, SyncPolicy, did_hash,
};

const HOUR_MS: u64 = 3600 * 1000;

fn small_config(dir: &Path) -> EventLogConfig {
    let mut c = EventLogConfig::new(dir);
    c.segment_max_bytes = 4096;
    c.segment_max_records = 40;
    c.index_interval_bytes = 512;
    c
}

/// A small-segment log whose retention is bound by total size (age is the 72 h default).
fn open_size_capped(dir: &Path, max_total_bytes: u64) -> EventLog {
    let mut config = small_config(dir);
    config.retention = RetentionPolicy {
        max_age: Duration::from_secs(72 * 3600),
        max_total_bytes: Some(max_total_bytes),
    };
    EventLog::open(config).expect("open").0
}

fn body_for(seq: u64) -> Bytes {
    let len = 8 + (seq * 37 % 150) as usize;
    let mut b = seq.to_le_bytes().to_vec();
    b.extend((8..len).map(|i| (seq as usize * 7 + i) as u8));
    Bytes::from(b)
}

fn rec(seq: u64, did: &str) -> AppendRecord {
    AppendRecord {
        seq,
        kind: (seq % 4) as u8,
        did_hash: did_hash(did),
        body: body_for(seq),
    }
}

fn read_all_after(reader: &EventLogReader, cursor: u64) -> Result<Vec<LogRecord>, EventLogError> {
    let mut replay = reader.read_after(cursor)?;
    let mut all = Vec::new();
    for _ in 0..100_000 {
        let batch = replay.next_batch(7, 700)?;
        if batch.is_empty() {
            return Ok(all);
        }
        all.extend(batch);
    }
    panic!("replay did not terminate");
}

/// Seqs with gaps: 1, 2, 4, 5, 7, ... (every third number skipped).
fn gapped_seqs(n: usize) -> Vec<u64> {
    (1u64..).filter(|s| s % 3 != 0).take(n).collect()
}

fn append_seqs(log: &mut EventLog, seqs: &[u64], did: &str) {
    let mut i = 0;
    let mut chunk = 1;
    while i < seqs.len() {
        let end = (i + chunk).min(seqs.len());
        let batch: Vec<_> = seqs[i..end].iter().map(|&s| rec(s, did)).collect();
        let head = log.append(&batch).expect("append");
        assert_eq!(head, seqs[end - 1]);
        i = end;
        chunk = chunk % 13 + 1;
    }
}

fn check_every_cursor(reader: &EventLogReader, seqs: &[u64]) {
    let max = *seqs.last().expect("non-empty");
    for cursor in 0..=max + 1 {
        let got = read_all_after(reader, cursor).expect("read");
        let expected: Vec<u64> = seqs.iter().copied().filter(|&s| s > cursor).collect();
        let got_seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
        assert_eq!(got_seqs, expected, "cursor {cursor}");
        for r in &got {
            assert_eq!(r.body, body_for(r.seq));
            assert_eq!(r.kind, (r.seq % 4) as u8);
        }
    }
    assert!(read_all_after(reader, u64::MAX).expect("read").is_empty());
}

#[test]
fn round_trip_across_many_segments_at_every_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seqs = gapped_seqs(400);
    let (mut log, report) = EventLog::open(small_config(dir.path())).expect("open");
    assert_eq!(report.next_seq, 1);
    assert_eq!(report.last_intact_seq, None);
    append_seqs(&mut log, &seqs, "did:plc:a");
    let stats = log.stats();
    assert!(stats.segment_count >= 10, "{stats:?}");
    assert_eq!(stats.oldest_seq, Some(1));
    assert_eq!(stats.newest_seq, seqs.last().copied());
    assert_eq!(stats.record_count, seqs.len() as u64);
    check_every_cursor(&log.reader(), &seqs);
    let sealed = stats.segment_count - 1;
    drop(log);

    // Reopen: sealed segments come from their sidecar indexes.
    let (log, report) = EventLog::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.rebuilt_indexes, 0);
    assert_eq!(report.bytes_truncated, 0);
    assert_eq!(report.last_intact_seq, seqs.last().copied());
    assert_eq!(log.next_seq(), seqs.last().copied().unwrap_or(0) + 1);
    assert_eq!(log.stats(), stats);
    check_every_cursor(&log.reader(), &seqs);
    drop(log);

    // Without sidecars the indexes are rebuilt by scanning, with the same result.
    for entry in std::fs::read_dir(dir.path().join("events")).expect("ls") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "idx") {
            std::fs::remove_file(path).expect("rm idx");
        }
    }
    let (log, report) = EventLog::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.rebuilt_indexes, sealed);
    assert_eq!(log.stats(), stats);
    check_every_cursor(&log.reader(), &seqs);
}

#[test]
fn segment_files_are_named_by_first_seq_and_sort() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = EventLog::open(small_config(dir.path())).expect("open");
    append_seqs(&mut log, &gapped_seqs(200), "did:plc:a");
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("events"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    assert_eq!(names.len(), log.stats().segment_count);
    assert_eq!(names[0], "00000000000000000001.seg");
    let firsts: Vec<u64> = names
        .iter()
        .map(|n| n[..20].parse().expect("digits"))
        .collect();
    assert!(firsts.windows(2).all(|w| w[0] < w[1]));
    // Each segment's first record is the seq in its name.
    for first in firsts {
        let got = read_all_after(&log.reader(), first - 1).expect("read");
        assert_eq!(got[0].seq, first);
    }
}

#[test]
fn batches_respect_record_and_byte_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = EventLog::open(small_config(dir.path())).expect("open");
    append_seqs(&mut log, &gapped_seqs(100), "did:plc:a");
    let mut replay = log.reader().read_after(0).expect("replay");
    let mut seen = 0;
    loop {
        let batch = replay.next_batch(5, 300).expect("batch");
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 5);
        let bytes: usize = batch.iter().map(|r| r.body.len()).sum();
        assert!(
            bytes <= 300 || batch.len() == 1,
            "{bytes} bytes in {} records",
            batch.len()
        );
        seen += batch.len();
        assert_eq!(replay.cursor(), batch.last().map(|r| r.seq).unwrap_or(0));
    }
    assert_eq!(seen, 100);
    assert!(replay.next_batch(0, 100).expect("empty").is_empty());
}

/// A batch bigger than a read block (256 KiB) is read in several blocks, and a record bigger
/// than a block whole: every body comes back intact, in order, within the byte bound.
#[test]
fn batches_bigger_than_a_block_span_blocks_and_keep_big_records_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = EventLog::open(EventLogConfig::new(dir.path())).expect("open");
    let body = |seq: u64| {
        // Mostly 3 KB, with a 700 KB record every 97th seq.
        let len = if seq.is_multiple_of(97) {
            700_000
        } else {
            3_000
        };
        let mut b = seq.to_le_bytes().to_vec();
        b.extend((8..len).map(|i| (seq as usize * 31 + i) as u8));
        Bytes::from(b)
    };
    let records: Vec<AppendRecord> = (1..=600)
        .map(|seq| AppendRecord {
            seq,
            kind: 1,
            did_hash: did_hash("did:plc:a"),
            body: body(seq),
        })
        .collect();
    for chunk in records.chunks(50) {
        log.append(chunk).expect("append");
    }
    let mut replay = log.reader().read_after(0).expect("replay");
    let max_bytes = 4 << 20;
    let mut next = 1;
    for _ in 0..1_000 {
        let batch = replay.next_batch(10_000, max_bytes).expect("batch");
        if batch.is_empty() {
            break;
        }
        let bytes: usize = batch.iter().map(|r| r.body.len()).sum();
        assert!(bytes <= max_bytes, "{bytes} bytes");
        for r in batch {
            assert_eq!(r.seq, next);
            assert_eq!(r.body, body(next), "seq {next}");
            next += 1;
        }
    }
    assert_eq!(next, 601, "every record once");
}

/// A replay reads into blocks it read before once nobody holds them: records a caller still
/// holds are never overwritten, whichever batches it kept or dropped.
#[test]
fn records_still_held_are_never_overwritten_by_later_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = EventLog::open(EventLogConfig::new(dir.path())).expect("open");
    let body = |seq: u64| {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend((8..2_000).map(|i| (seq as usize * 13 + i) as u8));
        Bytes::from(b)
    };
    let records: Vec<AppendRecord> = (1..=2_000)
        .map(|seq| AppendRecord {
            seq,
            kind: 1,
            did_hash: did_hash("did:plc:a"),
            body: body(seq),
        })
        .collect();
    for chunk in records.chunks(100) {
        log.append(chunk).expect("append");
    }
    let mut replay = log.reader().read_after(0).expect("replay");
    let mut held: Vec<LogRecord> = Vec::new();
    let mut next = 1;
    for round in 0..1_000 {
        let batch = replay.next_batch(1_000, 64 * 1024).expect("batch");
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            assert_eq!(r.seq, next);
            next += 1;
        }
        // Hold every third batch, drop the others (their blocks become free to reuse).
        if round % 3 == 0 {
            held.extend(batch);
        }
    }
    assert_eq!(next, 2_001);
    assert!(held.len() > 500, "{} held", held.len());
    for r in &held {
        assert_eq!(r.body, body(r.seq), "seq {} overwritten", r.seq);
    }
}

#[test]
fn seqs_must_increase_and_respect_the_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(dir.path());
    config.initial_seq = 1000;
    let (mut log, report) = EventLog::open(config.clone()).expect("open");
    assert_eq!(report.next_seq, 1000);
    assert_eq!(log.next_seq(), 1000);
    match log.append(&[rec(999, "did:plc:a")]) {
        Err(
            e @ EventLogError::SeqNotAfterHead {
                seq: 999,
                next_seq: 1000,
            },
        ) => {
            assert_eq!(e.reason(), "seq_not_after_head")
        }
        other => panic!("expected SeqNotAfterHead, got {other:?}"),
    }
    assert_eq!(
        log.append(&[rec(1000, "did:plc:a"), rec(1005, "did:plc:a")])
            .expect("append"),
        1005
    );
    // Reused, equal and non-increasing seqs are rejected, and nothing of the batch is written.
    for bad in [
        vec![1005],
        vec![1006, 1006],
        vec![1007, 1006],
        vec![1010, 1004],
    ] {
        let batch: Vec<_> = bad.iter().map(|&s| rec(s, "did:plc:a")).collect();
        assert!(
            matches!(
                log.append(&batch),
                Err(EventLogError::SeqNotAfterHead { .. })
            ),
            "{bad:?}"
        );
    }
    assert_eq!(log.next_seq(), 1006);
    assert_eq!(log.stats().record_count, 2);
    let huge = AppendRecord {
        seq: 1006,
        kind: 0,
        did_hash: 0,
        body: Bytes::from(vec![0u8; rookery::store::event_log::MAX_BODY_LEN + 1]),
    };
    assert!(matches!(
        log.append(&[huge]),
        Err(EventLogError::RecordTooLarge { .. })
    ));
    assert!(!log.is_poisoned());
    assert_eq!(log.append(&[]).expect("empty batch"), 1005);
    drop(log);

    // After reopening, the floor is below the head: resume after the head.
    let (log, report) = EventLog::open(config.clone()).expect("reopen");
    assert_eq!(log.next_seq(), 1006);
    assert_eq!(report.last_intact_seq, Some(1005));
    drop(log);
    // A raised floor wins over the head.
    config.initial_seq = 20_000_000_000;
    let (log, _) = EventLog::open(config).expect("reopen");
    assert_eq!(log.next_seq(), 20_000_000_000);
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, _) = EventLog::open(small_config(dir.path())).expect("open");
    match EventLog::open(small_config(dir.path())) {
        Err(e @ EventLogError::Locked(_)) => assert_eq!(e.reason(), "locked"),
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn interval_and_none_policies_publish_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(dir.path());
    config.sync = SyncPolicy::Interval(Duration::from_secs(3600));
    let (mut log, _) = EventLog::open(config).expect("open");
    // Within the interval nothing becomes durable or visible until flush.
    assert_eq!(log.append(&[rec(1, "did:plc:a")]).expect("append"), 0);
    assert!(read_all_after(&log.reader(), 0).expect("read").is_empty());
    assert_eq!(log.flush().expect("flush"), 1);
    assert_eq!(read_all_after(&log.reader(), 0).expect("read").len(), 1);
    drop(log);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(dir.path());
    config.sync = SyncPolicy::None;
    let (mut log, _) = EventLog::open(config).expect("open");
    assert_eq!(
        log.append(&[rec(1, "did:plc:a"), rec(2, "did:plc:a")])
            .expect("append"),
        2
    );
    assert_eq!(read_all_after(&log.reader(), 0).expect("read").len(), 2);
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[test]
fn retention_by_age_deletes_old_segments_and_outdates_readers_inside_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = EventLog::open(small_config(dir.path())).expect("open");
    let t0 = 1_000 * HOUR_MS;
    // 200 old records (several segments) at t0, then 200 new ones 80 hours later.
    let old: Vec<u64> = (1..=200).collect();
    let new: Vec<u64> = (201..=400).collect();
    for chunk in old.chunks(10) {
        let batch: Vec<_> = chunk.iter().map(|&s| rec(s, "did:plc:a")).collect();
        log.append_at(&batch, t0).expect("append");
    }
    let (reader, admin) = (log.reader(), log.admin());
    // A reader that is inside the first segment before retention runs.
    let mut inside = reader.read_after(0).expect("replay");
    assert_eq!(inside.next_batch(3, 1 << 20).expect("batch").len(), 3);
    for chunk in new.chunks(10) {
        let batch: Vec<_> = chunk.iter().map(|&s| rec(s, "did:plc:a")).collect();
        log.append_at(&batch, t0 + 80 * HOUR_MS).expect("append");
    }
    let before = log.stats();

    // Nothing is old enough yet.
    let r = admin.retain_once(at(t0 + 71 * HOUR_MS)).expect("retain");
    assert_eq!(r.segments_deleted, 0);
    assert_eq!(log.stats(), before);

    let r = admin.retain_once(at(t0 + 73 * HOUR_MS)).expect("retain");
    assert!(r.segments_deleted >= 4, "{r:?}");
    let oldest = r.oldest_seq.expect("oldest");
    assert!(oldest > 1 && oldest <= 201, "{oldest}");
    let after = log.stats();
    assert_eq!(after.oldest_seq, Some(oldest));
    assert_eq!(
        after.segment_count,
        before.segment_count - r.segments_deleted
    );
    assert_eq!(after.total_bytes, before.total_bytes - r.bytes_freed);
    let seg_files = std::fs::read_dir(dir.path().join("events"))
        .expect("ls")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
        })
        .count();
    assert_eq!(seg_files, after.segment_count);

    // The reader inside a deleted segment is told, and so is a cursor before the oldest.
    match inside.next_batch(10, 1 << 20) {
        Err(EventLogError::Outdated { oldest_seq }) => assert_eq!(oldest_seq, oldest),
        other => panic!("expected Outdated, got {other:?}"),
    }
    for cursor in [0, 1, oldest - 2] {
        assert!(
            matches!(reader.read_after(cursor), Err(EventLogError::Outdated { oldest_seq }) if oldest_seq == oldest)
        );
    }
    // The first and every later position still work.
    let got = read_all_after(&reader, oldest - 1).expect("read");
    assert_eq!(got.first().map(|r| r.seq), Some(oldest));
    assert_eq!(got.last().map(|r| r.seq), Some(400));
    let mut from_oldest = reader.read_from_oldest();
    assert_eq!(
        from_oldest.next_batch(1, 1 << 20).expect("batch")[0].seq,
        oldest
    );

    // Even when everything is old, the segment being written survives.
    let r = admin.retain_once(at(t0 + 1000 * HOUR_MS)).expect("retain");
    assert!(r.segments_deleted >= 1);
    assert_eq!(log.stats().segment_count, 1);
    log.append_at(&[rec(401, "did:plc:a")], t0 + 1000 * HOUR_MS)
        .expect("append after retention");
    assert_eq!(read_all_after(&reader, 400).expect("read")[0].seq, 401);
    drop(log);
    let (log, report) = EventLog::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.last_intact_seq, Some(401));
    assert_eq!(log.stats().segment_count, 1);
    // The deletion is remembered across a restart.
    assert!(matches!(
        log.reader().read_after(0),
        Err(EventLogError::Outdated { .. })
    ));
    assert_eq!(
        read_all_after(&log.reader(), 400).expect("read")[0].seq,
        401
    );
}

#[test]
fn a_cursor_below_the_first_record_is_not_outdated_when_nothing_was_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(dir.path());
    config.initial_seq = 5000;
    let (mut log, _) = EventLog::open(config).expect("open");
    let reader = log.reader();
    // A replay opened on the empty log sees records as they arrive.
    let mut early = reader.read_after(0).expect("empty log replay");
    assert!(early.next_batch(10, 1 << 20).expect("batch").is_empty());
    append_seqs(&mut log, &(5000..5100).collect::<Vec<_>>(), "did:plc:a");
    assert_eq!(early.next_batch(1000, 1 << 20).expect("batch").len(), 100);
    assert_eq!(read_all_after(&reader, 0).expect("read").len(), 100);
    assert_eq!(read_all_after(&reader, 4999).expect("read")[0].seq, 5000);
}

#[test]
fn retention_by_size_keeps_the_log_under_the_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open_size_capped(dir.path(), 10_000);
    append_seqs(&mut log, &gapped_seqs(300), "did:plc:a");
    assert!(log.stats().total_bytes > 10_000);
    let r = log.admin().retain_once(SystemTime::now()).expect("retain");
    assert!(r.segments_deleted > 0);
    let stats = log.stats();
    assert!(stats.total_bytes <= 10_000, "{stats:?}");
    // Deleting one more segment would not have been needed: the cap is respected minimally.
    assert!(stats.total_bytes + 4096 > 10_000, "{stats:?}");
}

#[test]
fn masking_hides_a_did_on_replay_and_reversal_restores_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = EventLog::open(small_config(dir.path())).expect("open");
    let dids = ["did:plc:alice", "did:plc:bob", "did:web:carol.example"];
    for seq in 1..=300u64 {
        log.append(&[rec(seq, dids[(seq % 3) as usize])])
            .expect("append");
    }
    let (reader, admin) = (log.reader(), log.admin());
    let bob = did_hash("did:plc:bob");
    let report = admin.set_masked(bob, true).expect("mask");
    assert_eq!(report.records_matched, 100);
    assert_eq!(report.records_changed, 100);
    assert_eq!(report.segments_scanned, log.stats().segment_count);
    let visible: Vec<u64> = read_all_after(&reader, 0)
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        visible,
        (1..=300).filter(|s| s % 3 != 1).collect::<Vec<_>>()
    );
    // Masking again changes nothing.
    assert_eq!(
        admin.set_masked(bob, true).expect("mask").records_changed,
        0
    );
    // The writer keeps going, and flags survive a reopen without being mistaken for damage.
    log.append(&[rec(301, "did:plc:alice")]).expect("append");
    drop(log);
    let (log, report) = EventLog::open(small_config(dir.path())).expect("reopen");
    assert_eq!(report.bytes_truncated, 0);
    assert_eq!(report.last_intact_seq, Some(301));
    let (reader, admin) = (log.reader(), log.admin());
    let visible = read_all_after(&reader, 0).expect("read");
    assert_eq!(visible.len(), 201);
    assert!(visible.iter().all(|r| r.did_hash != bob));

    let report = admin.set_masked(bob, false).expect("unmask");
    assert_eq!(report.records_changed, 100);
    let visible: Vec<u64> = read_all_after(&reader, 0)
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(visible, (1..=301).collect::<Vec<_>>());
}

#[test]
fn retention_beside_a_running_writer_and_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open_size_capped(dir.path(), 16 * 1024);
    let (reader, admin) = (log.reader(), log.admin());
    const LAST: u64 = 3000;
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(5));
    let deadline = Instant::now() + Duration::from_secs(30);

    let writer = {
        let start = Arc::clone(&start);
        std::thread::spawn(move || {
            start.wait();
            let mut seq = 1;
            while seq <= LAST {
                let batch: Vec<_> = (seq..(seq + 7).min(LAST + 1))
                    .map(|s| rec(s, "did:plc:a"))
                    .collect();
                seq += batch.len() as u64;
                log.append(&batch).expect("append while retention runs");
            }
            log
        })
    };
    let retention = {
        let (admin, done, start) = (admin.clone(), Arc::clone(&done), Arc::clone(&start));
        std::thread::spawn(move || {
            start.wait();
            let mut deleted = 0;
            while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                deleted += admin
                    .retain_once(SystemTime::now())
                    .expect("retain")
                    .segments_deleted;
                std::thread::sleep(Duration::from_millis(1));
            }
            deleted
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (reader, start) = (reader.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let mut outdated = 0;
                let mut replay = reader.read_from_oldest();
                let mut last = 0;
                while last < LAST && Instant::now() < deadline {
                    match replay.next_batch(16, 4096) {
                        Ok(batch) => {
                            for r in batch {
                                // In order, with no gap inside one replay, intact bodies.
                                assert!(last == 0 || r.seq == last + 1, "{} after {last}", r.seq);
                                assert_eq!(r.body, body_for(r.seq));
                                last = r.seq;
                            }
                        }
                        Err(EventLogError::Outdated { oldest_seq }) => {
                            assert!(oldest_seq > last);
                            outdated += 1;
                            replay = reader.read_from_oldest();
                            last = 0;
                        }
                        Err(e) => panic!("reader error: {e}"),
                    }
                }
                (last, outdated)
            })
        })
        .collect();
    let log = writer.join().expect("writer");
    for r in readers {
        let (last, _outdated) = r.join().expect("reader");
        assert_eq!(last, LAST, "reader did not reach the head in time");
    }
    done.store(true, Ordering::Release);
    let deleted = retention.join().expect("retention");
    assert!(deleted > 0);
    let r = admin.retain_once(SystemTime::now()).expect("retain");
    assert!(log.stats().total_bytes <= 16 * 1024 || r.segments_deleted == 0);
    assert_eq!(log.stats().newest_seq, Some(LAST));
}

#[test]
fn records_larger_than_read_and_scan_blocks_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EventLogConfig::new(dir.path());
    config.segment_max_bytes = 8 * 1024 * 1024;
    let sizes = [10usize, 1_500_000, 10, 300_000, 0, 70_000, 10];
    let bodies: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| Bytes::from((0..n).map(|j| (i * 31 + j) as u8).collect::<Vec<_>>()))
        .collect();
    {
        let (mut log, _) = EventLog::open(config.clone()).expect("open");
        let batch: Vec<_> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| AppendRecord {
                seq: i as u64 + 1,
                kind: 0,
                did_hash: did_hash(if i % 2 == 0 {
                    "did:plc:small"
                } else {
                    "did:plc:big"
                }),
                body: b.clone(),
            })
            .collect();
        log.append(&batch).expect("append");
    }
    // Reopen: the tail scan crosses the 1 MiB scan block.
    let (log, report) = EventLog::open(config).expect("reopen");
    assert_eq!(report.bytes_truncated, 0);
    assert_eq!(report.last_intact_seq, Some(sizes.len() as u64));
    let reader = log.reader();
    let mut replay = reader.read_after(0).expect("replay");
    let mut got = Vec::new();
    loop {
        let batch = replay.next_batch(100, 1000).expect("batch");
        if batch.is_empty() {
            break;
        }
        let total: usize = batch.iter().map(|r| r.body.len()).sum();
        assert!(total <= 1000 || batch.len() == 1);
        got.extend(batch);
    }
    assert_eq!(
        got.iter().map(|r| r.body.clone()).collect::<Vec<_>>(),
        bodies
    );
    // Masking walks over the big records too.
    let report = log
        .admin()
        .set_masked(did_hash("did:plc:big"), true)
        .expect("mask");
    assert_eq!(report.records_changed, 3);
    let visible: Vec<u64> = read_all_after(&reader, 0)
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(visible, vec![1, 3, 5, 7]);
}

#[test]
fn the_retention_thread_deletes_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open_size_capped(dir.path(), 8 * 1024);
    append_seqs(&mut log, &gapped_seqs(300), "did:plc:a");
    let before = log.stats().segment_count;
    let task = rookery::store::event_log::spawn_retention(log.admin(), Duration::from_millis(5))
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.stats().total_bytes > 8 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    task.stop();
    let stats = log.stats();
    assert!(stats.total_bytes <= 8 * 1024, "{stats:?}");
    assert!(stats.segment_count < before);
    assert!(matches!(
        log.reader().read_after(0),
        Err(EventLogError::Outdated { .. })
    ));
}

#[test]
fn a_replay_that_finished_a_deleted_segment_continues_and_one_inside_it_is_outdated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seqs = gapped_seqs(200);
    let (total, first_segment_bytes, second_first) = {
        let (mut log, _) = EventLog::open(small_config(dir.path())).expect("open");
        append_seqs(&mut log, &seqs, "did:plc:a");
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("events"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        let bytes = std::fs::metadata(dir.path().join("events").join(&names[0]))
            .expect("stat")
            .len();
        let second: u64 = names[1][..20].parse().expect("name");
        (log.stats().total_bytes, bytes, second)
    };
    // A size cap that removes exactly the first segment.
    let mut config = small_config(dir.path());
    config.retention = RetentionPolicy {
        max_age: Duration::from_secs(72 * 3600),
        max_total_bytes: Some(total - first_segment_bytes),
    };
    let (log, _) = EventLog::open(config).expect("reopen");
    let (reader, admin) = (log.reader(), log.admin());
    let in_first: Vec<u64> = seqs.iter().copied().filter(|&s| s < second_first).collect();
    let mut finished = reader.read_after(0).expect("replay");
    let got = finished.next_batch(in_first.len(), 1 << 20).expect("batch");
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), in_first);
    let mut inside = reader.read_after(0).expect("replay");
    assert_eq!(inside.next_batch(2, 1 << 20).expect("batch").len(), 2);

    let r = admin.retain_once(SystemTime::now()).expect("retain");
    assert_eq!(r.segments_deleted, 1);
    assert_eq!(r.oldest_seq, Some(second_first));
    // Finished the deleted segment: nothing after its cursor was lost, so it continues.
    let next = finished.next_batch(3, 1 << 20).expect("continues");
    assert_eq!(next[0].seq, second_first);
    // Still inside it: outdated.
    assert!(matches!(
        inside.next_batch(3, 1 << 20),
        Err(EventLogError::Outdated { oldest_seq }) if oldest_seq == second_first
    ));
    // And a cursor exactly at the last deleted seq is not outdated either.
    let last_deleted = *in_first.last().expect("non-empty");
    assert_eq!(
        read_all_after(&reader, last_deleted).expect("read")[0].seq,
        second_first
    );
    assert!(matches!(
        reader.read_after(last_deleted - 1),
        Err(EventLogError::Outdated { .. })
    ));
}

/// Two retention passes at once (the retention thread and an operator's call) must not
/// interleave their writes of the `DELETED_THROUGH` marker: a mangled, too-high marker
/// makes the next open delete retained segments as an "interrupted retention pass".
#[test]
fn concurrent_retention_passes_keep_the_marker_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config(dir.path());
    config.segment_max_records = 1;
    config.sync = SyncPolicy::None;
    config.retention = RetentionPolicy {
        max_total_bytes: Some(1),
        ..RetentionPolicy::default()
    };
    let (mut log, _) = EventLog::open(config.clone()).expect("open");
    let admin = log.admin();
    let stop = Arc::new(AtomicBool::new(false));
    let passes: Vec<_> = (0..2)
        .map(|_| {
            let (admin, stop) = (admin.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    admin.retain_once(SystemTime::now()).expect("retain");
                }
            })
        })
        .collect();
    // Seqs jump across decimal lengths, where interleaved writes of two values into one
    // temp file leave a longer, bigger number.
    let mut seq = 1u64;
    for round in 0..3000u64 {
        seq = if round % 2 == 0 {
            seq + 1
        } else {
            seq * 10 - 1
        };
        if seq > u64::MAX / 100 {
            break;
        }
        log.append(&[rec(seq, "did:plc:a")]).expect("append");
    }
    stop.store(true, Ordering::Relaxed);
    for p in passes {
        p.join().expect("join");
    }
    admin.retain_once(SystemTime::now()).expect("retain");
    let before = log.stats();
    let last = log.last_seq().expect("last");
    drop(log);
    let text = std::fs::read_to_string(dir.path().join("events/DELETED_THROUGH")).expect("marker");
    let marker: u64 = text.parse().expect("marker parses");
    assert!(
        marker < last,
        "marker {marker} not below the newest seq {last}"
    );
    let (log, report) = EventLog::open(config).expect("reopen");
    assert_eq!(report.interrupted_retention_segments, 0);
    assert_eq!(log.stats().oldest_seq, before.oldest_seq);
}

/// A pass that cannot persist its marker (disk full, permissions) must change nothing:
/// no segment detached from the log (readers are not told Outdated for data still
/// there) and none stranded on disk, so a later pass deletes them.
#[test]
fn a_retention_pass_that_cannot_persist_its_marker_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open_size_capped(dir.path(), 1);
    append_seqs(&mut log, &gapped_seqs(300), "did:plc:a");
    let before = log.stats();
    assert!(before.segment_count > 2);
    let events = dir.path().join("events");
    let count_segment_files = || {
        std::fs::read_dir(&events)
            .expect("ls")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            })
            .count()
    };
    // A directory in the way of the marker's temp file makes the marker write fail.
    let blocker = events.join("DELETED_THROUGH.tmp");
    std::fs::create_dir(&blocker).expect("blocker");
    let (reader, admin) = (log.reader(), log.admin());
    assert!(matches!(
        admin.retain_once(SystemTime::now()),
        Err(EventLogError::Io { .. })
    ));
    assert_eq!(log.stats(), before);
    assert!(read_all_after(&reader, 0).is_ok());
    std::fs::remove_dir(&blocker).expect("unblock");
    let r = admin.retain_once(SystemTime::now()).expect("retain");
    assert_eq!(r.segments_deleted, before.segment_count - 1);
    assert_eq!(count_segment_files(), 1);
    assert!(matches!(
        read_all_after(&reader, 0),
        Err(EventLogError::Outdated { .. })
    ));
}

/// Offsets of the records in a segment file, found by following the length fields.
fn record_offsets(path: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(path).expect("read segment");
    let mut out = Vec::new();
    let mut pos = rookery::store::event_log::SEGMENT_HEADER_LEN as usize;
    while pos + rookery::store::event_log::RECORD_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(bytes[pos + 4..pos + 12].try_into().expect("8 bytes"));
        out.push((seq, pos as u64));
        pos += rookery::store::event_log::RECORD_HEADER_LEN + len;
    }
    out
}

/// Bit rot in a sealed segment: a replay returns the intact records before it, reports
/// `Corrupt` at the damaged record, and `skip_damaged` resumes at the next indexed record of
/// that segment; everything after it arrives intact and in order.
#[test]
fn a_damaged_sealed_segment_is_reported_and_skipped_to_the_next_indexed_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = EventLog::open(small_config(dir.path())).expect("open");
    for seq in 1..=400u64 {
        log.append(&[rec(seq, "did:plc:alice")]).expect("append");
    }
    let reader = log.reader();
    // The third segment is sealed (later ones exist); damage the body of its 5th record.
    let events = small_config(dir.path()).events_dir();
    let mut names: Vec<u64> = std::fs::read_dir(&events)
        .expect("list")
        .filter_map(|e| {
            rookery::store::event_log::parse_segment_name(&e.ok()?.file_name().to_string_lossy())
        })
        .collect();
    names.sort_unstable();
    assert!(names.len() > 4, "several segments: {names:?}");
    let first_seq = names[2];
    let path = events.join(rookery::store::event_log::segment_file_name(first_seq));
    let offsets = record_offsets(&path);
    let (damaged_seq, damaged_at) = offsets[4];
    let mut bytes = std::fs::read(&path).expect("read");
    let body_byte = damaged_at as usize + rookery::store::event_log::RECORD_HEADER_LEN + 3;
    bytes[body_byte] ^= 0x5a;
    std::fs::write(&path, &bytes).expect("damage");

    let mut replay = reader.read_after(0).expect("replay");
    let mut got = Vec::new();
    let mut skips = Vec::new();
    for _ in 0..10_000 {
        match replay.next_batch(50, 1 << 20) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => got.extend(batch.iter().map(|r| r.seq)),
            Err(EventLogError::Corrupt {
                segment_first_seq,
                offset,
            }) => {
                assert_eq!((segment_first_seq, offset), (first_seq, damaged_at));
                // Every intact record before the damage was delivered first.
                assert_eq!(got.last(), Some(&(damaged_seq - 1)));
                let skip = replay
                    .skip_damaged(segment_first_seq, offset)
                    .expect("positioned at the damage");
                skips.push(skip);
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(skips.len(), 1, "one damaged record, one skip");
    let skip = skips[0];
    assert_eq!(skip.cursor_before, damaged_seq - 1);
    // Resumed at an indexed record (index every 512 bytes) after the damage, in that segment.
    assert!(skip.cursor_after >= damaged_seq, "{skip:?}");
    assert!(
        offsets.iter().any(|&(s, _)| s == skip.cursor_after + 1),
        "resumed inside the damaged segment: {skip:?}"
    );
    let expected: Vec<u64> = (1..=400)
        .filter(|s| *s <= skip.cursor_before || *s > skip.cursor_after)
        .collect();
    assert_eq!(got, expected);
    // A replay not at the damage does not move.
    let mut fresh = reader.read_after(0).expect("replay");
    assert_eq!(fresh.skip_damaged(first_seq, damaged_at), None);
    assert_eq!(fresh.cursor(), 0);
}
