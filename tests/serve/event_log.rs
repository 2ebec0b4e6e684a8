//! `rookery serve` and its event log: recovery at start, stats on /metrics, one writer per
//! data dir, and no seq reused across a restart.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::process::{free_port, http_get, read, rookery, send_signal, wait_exit};
use bytes::Bytes;
use rookery::store::event_log::{
    AppendRecord, EventLog, EventLogConfig, did_hash, parse_segment_name,
};
use rookery::testkit::postgres::test_cluster;

fn relay(data: &Path, database_url: &str, port: u16, metrics_port: u16, log: &Path) -> Command {
    let mut command = rookery();
    command
        .args(["serve", "--initial-seq", "50", "--data-dir"])
        .arg(data)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--metrics-bind", &format!("127.0.0.1:{metrics_port}")])
        .env("DATABASE_URL", database_url)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    command
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn serve_recovers_the_log_reports_it_and_never_reuses_a_seq() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let database = runtime.block_on(test_cluster().fresh_database()).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");

    // A log left by an earlier run: seqs 100..=104, then a torn half record at the tail.
    {
        let (mut log, _) = EventLog::open(EventLogConfig::new(&data)).unwrap();
        let batch: Vec<AppendRecord> = (100..=104)
            .map(|seq| AppendRecord {
                seq,
                kind: 1,
                did_hash: did_hash("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"),
                body: Bytes::from(format!("event {seq}")),
            })
            .collect();
        assert_eq!(log.append(&batch).unwrap(), 104);
    }
    let segment = std::fs::read_dir(data.join("events"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_name)
                .is_some()
        })
        .unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    file.write_all(&[0x55; 20]).unwrap();
    drop(file);

    let (port, metrics_port) = (free_port(), free_port());
    let log_path = temp.path().join("first.log");
    let mut first = relay(
        &data,
        &database.connection_string,
        port,
        metrics_port,
        &log_path,
    )
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        if let Ok(response) = http_get(metrics_port, "/metrics") {
            break response.body;
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "exited early: {}",
            read(&log_path)
        );
        assert!(Instant::now() < deadline, "never served");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        metric(&metrics, "rookery_event_log_newest_seq"),
        Some(104),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "rookery_event_log_oldest_seq"),
        Some(100),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "rookery_event_log_records"),
        Some(5),
        "{metrics}"
    );
    assert_eq!(http_get(port, "/_health").unwrap().status, 200);

    // A second relay on the same data dir is refused: one writer per event log.
    let second_log = temp.path().join("second.log");
    let mut second = relay(
        &data,
        &database.connection_string,
        free_port(),
        free_port(),
        &second_log,
    )
    .spawn()
    .unwrap();
    let status = wait_exit(&mut second, Duration::from_secs(30)).expect("second relay exits");
    let stderr = read(&second_log);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already open by another writer"),
        "{stderr}"
    );

    send_signal(first.id(), "TERM");
    let status = wait_exit(&mut first, Duration::from_secs(10)).expect("exit after SIGTERM");
    let stderr = read(&log_path);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("event log recovered"), "{stderr}");
    assert!(
        stderr.contains("truncated"),
        "the torn tail is reported: {stderr}"
    );

    // Every record is intact and the next seq is past all of them (floor 50 is lower).
    let mut config = EventLogConfig::new(&data);
    config.initial_seq = 50;
    let (log, report) = EventLog::open(config).unwrap();
    assert_eq!(report.next_seq, 105);
    assert_eq!(report.bytes_truncated, 0, "already truncated by the relay");
    let mut replay = log.reader().read_after(0).unwrap();
    let records = replay.next_batch(100, 1 << 20).unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![100, 101, 102, 103, 104]);
    assert_eq!(&records[4].body[..], b"event 104");
}
