//! A real crash: `rookery-logtool append-loop` appends with `every-batch` sync and
//! prints each durable head; the test SIGKILLs it at a random moment (std's
//! `Child::kill` sends SIGKILL on Unix), reopens the log and checks that every
//! reported-durable record is present and intact and that the next seq is above all
//! of them. Five rounds on the same directory, so recovery also runs on logs that
//! already went through crashes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::Rng;
use rookery::store::event_log::{EventLog, EventLogConfig};
use rookery::testkit::event_log::synthetic_body;

const BODY_SIZE: usize = 300;

#[test]
fn sigkill_never_loses_a_reported_durable_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::rng();
    let mut highest_durable = 0u64;
    for round in 0..5 {
        // Odd rounds write ~1.2 MB per batch into big segments: a SIGKILL can land inside
        // that write(2) (the kernel stops copying at a page boundary), leaving a torn
        // record; even rounds use small batches and segments, so kills also land around
        // segment rolls.
        let (batch, segment_max_bytes) = if round % 2 == 0 {
            ("8", "32768")
        } else {
            ("4096", "8000000")
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_rookery-logtool"))
            .arg("append-loop")
            .arg(dir.path())
            .args([
                "--body-size",
                &BODY_SIZE.to_string(),
                "--batch",
                batch,
                "--sync",
                "every-batch",
            ])
            .args(["--segment-max-bytes", segment_max_bytes])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn logtool");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let pump = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until it has opened and made some progress, then a random extra delay.
        let opened = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("child opened");
        assert!(opened.starts_with("opened next_seq="), "{opened}");
        let first_head = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("first durable head");
        assert!(first_head.starts_with("durable "));
        std::thread::sleep(Duration::from_millis(rng.random_range(10..300)));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(!status.success());
        pump.join().expect("pump");
        let mut lines = vec![first_head];
        let drain_deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
            assert!(Instant::now() < drain_deadline);
        }
        for line in &lines {
            let head: u64 = line
                .strip_prefix("durable ")
                .and_then(|h| h.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            assert!(head > highest_durable, "durable heads must increase");
            highest_durable = head;
        }

        let (log, report) =
            EventLog::open(EventLogConfig::new(dir.path())).expect("reopen after kill");
        let last = report.last_intact_seq.expect("records survived");
        assert!(
            last >= highest_durable,
            "round {round}: lost durable records ({last} < {highest_durable})"
        );
        assert!(log.next_seq() > highest_durable);
        // Every reported-durable record, from the first, is present, in order and intact.
        let mut replay = log.reader().read_after(0).expect("replay");
        let mut expected = 1u64;
        loop {
            let batch = replay.next_batch(1024, 1 << 20).expect("batch");
            if batch.is_empty() {
                break;
            }
            for r in batch {
                assert_eq!(r.seq, expected, "round {round}: gap or reorder");
                assert_eq!(
                    r.body,
                    synthetic_body(r.seq, BODY_SIZE),
                    "round {round}: seq {} damaged",
                    r.seq
                );
                expected += 1;
            }
        }
        assert!(
            expected > highest_durable,
            "round {round}: replay ended at {expected}"
        );
        eprintln!(
            "round {round}: durable {highest_durable}, recovered {last}, truncated {} bytes",
            report.bytes_truncated
        );
    }
}

/// An I/O error in the middle of a batch (EFBIG from a file-size limit, set with
/// `prlimit` and SIGXFSZ ignored) is a typed error, poisons the writer, and leaves no
/// half-written record: the writer cut the segment back to its committed length.
#[test]
fn a_failed_write_is_typed_poisons_the_writer_and_leaves_no_torn_record() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("prlimit (util-linux) is required for this test");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "trap '' XFSZ; exec prlimit --fsize=50000 {} append-loop {} --body-size {BODY_SIZE} --batch 8 --segment-max-bytes 1000000",
        env!("CARGO_BIN_EXE_rookery-logtool"),
        dir.path().display()
    );
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let n = lines.len();
    assert!(n >= 4, "{stdout}");
    assert_eq!(lines[n - 2], "error file_too_large", "{stdout}");
    assert_eq!(lines[n - 1], "retry writer_poisoned", "{stdout}");
    let highest: u64 = lines[n - 3]
        .strip_prefix("durable ")
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));

    let (log, report) = EventLog::open(EventLogConfig::new(dir.path())).expect("reopen");
    assert_eq!(
        report.bytes_truncated, 0,
        "the writer must have cut its partial write"
    );
    assert_eq!(report.last_intact_seq, Some(highest));
    let mut replay = log.reader().read_after(0).expect("replay");
    let mut count = 0;
    loop {
        let batch = replay.next_batch(1024, 1 << 20).expect("batch");
        if batch.is_empty() {
            break;
        }
        for r in batch {
            assert_eq!(r.body, synthetic_body(r.seq, BODY_SIZE));
            count += 1;
        }
    }
    assert_eq!(count, highest);
}
