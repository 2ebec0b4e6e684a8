//! The administrative handle: retention, takedown masking and statistics, plus the
//! background thread that runs retention.
//!
//! Why a separate handle: every ConsumerSession holds an [`super::EventLogReader`], and a
//! handle that thousands of sessions carry must not be able to delete segments or mask
//! accounts. Operations that change what the log holds (or that only operators and
//! metrics need) live here instead, on a handle that only the owner of the writer can
//! create ([`super::EventLog::admin`]) and hands to the retention thread, the metrics
//! collector and the takedown path. Neither handle can be turned into the other.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::error::EventLogError;
use super::masking::{self, MaskReport};
use super::retention::{self, RetentionPolicy, RetentionReport};
use super::state::{LogStats, Shared};

/// Retention, masking and statistics for one log (cheap to clone, `Send + Sync`).
/// Obtained from [`super::EventLog::admin`]; it carries the log's retention policy.
///
/// ```
/// # fn f(log: &rookery::store::event_log::EventLog) {
/// // What a reader cannot do (see `EventLogReader`):
/// let _ = log.admin().retain_once(std::time::SystemTime::now());
/// let _ = log.admin().set_masked(0, true);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct EventLogAdmin {
    shared: Arc<Shared>,
    retention: RetentionPolicy,
}

impl EventLogAdmin {
    pub(crate) fn new(shared: Arc<Shared>, retention: RetentionPolicy) -> EventLogAdmin {
        EventLogAdmin { shared, retention }
    }

    /// A point-in-time snapshot of the log's size and seq range.
    pub fn stats(&self) -> LogStats {
        self.shared.stats()
    }

    /// One retention pass at time `now`: delete whole segments older than the policy's
    /// window or over its size cap, oldest first, never the newest. See
    /// the `retention` module. Passes are serialised; a failed pass changes nothing that
    /// readers can observe and is simply retried next time.
    pub fn retain_once(&self, now: SystemTime) -> Result<RetentionReport, EventLogError> {
        retention::retain_once(&self.shared, &self.retention, now)
    }

    /// Set (`masked = true`) or clear the takedown flag on every stored record whose
    /// DID hash is `did_hash`. See the `masking` module.
    pub fn set_masked(&self, did_hash: u64, masked: bool) -> Result<MaskReport, EventLogError> {
        masking::set_masked(&self.shared, did_hash, masked)
    }
}

/// A background thread running [`EventLogAdmin::retain_once`] every `every`.
/// Stop it with [`RetentionTask::stop`] (or by dropping it).
#[derive(Debug)]
pub struct RetentionTask {
    stop: Option<mpsc::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

/// Run retention on its own thread. Errors are logged and the pass is retried next time.
pub fn spawn_retention(admin: EventLogAdmin, every: Duration) -> std::io::Result<RetentionTask> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let join = std::thread::Builder::new()
        .name("event-log-retention".into())
        .spawn(move || {
            loop {
                match stop_rx.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                match admin.retain_once(SystemTime::now()) {
                    Ok(r) if r.segments_deleted > 0 => tracing::info!(
                        segments = r.segments_deleted,
                        bytes = r.bytes_freed,
                        "event log retention deleted segments"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, reason = e.reason(), "event log retention failed"),
                }
            }
        })?;
    Ok(RetentionTask {
        stop: Some(stop_tx),
        join: Some(join),
    })
}

impl RetentionTask {
    /// Stop the thread and wait for it (at most one pass in progress).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

impl Drop for RetentionTask {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::event_log::{AppendRecord, EventLog, EventLogConfig, did_hash};
    use bytes::Bytes;

    fn rec(seq: u64, did: &str) -> AppendRecord {
        AppendRecord {
            seq,
            kind: 0,
            did_hash: did_hash(did),
            body: Bytes::from(vec![7u8; 200]),
        }
    }

    fn seqs(replay_after: u64, log: &EventLog) -> Vec<u64> {
        let mut replay = log.reader().read_after(replay_after).expect("replay");
        let mut out = Vec::new();
        loop {
            let batch = replay.next_batch(1000, 1 << 20).expect("batch");
            if batch.is_empty() {
                return out;
            }
            out.extend(batch.iter().map(|r| r.seq));
        }
    }

    #[test]
    fn the_admin_handle_is_a_shareable_handle() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<EventLogAdmin>();
    }

    /// Stats, masking and retention all go through the admin handle, from another thread
    /// and from a clone, while readers only see the effects.
    #[test]
    fn stats_masking_and_retention_go_through_the_admin_handle() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = EventLogConfig::new(tmp.path());
        config.segment_max_records = 10;
        config.retention = RetentionPolicy {
            max_age: Duration::from_secs(3600),
            max_total_bytes: None,
        };
        let (mut log, _) = EventLog::open(config).expect("open");
        let t0 = 1_000_000_000_000u64;
        for seq in 1..=30 {
            let did = if seq % 2 == 0 {
                "did:plc:even"
            } else {
                "did:plc:odd"
            };
            log.append_at(&[rec(seq, did)], t0 + seq).expect("append");
        }
        let admin = log.admin();
        let stats = admin.stats();
        assert_eq!(stats, log.stats());
        assert_eq!((stats.oldest_seq, stats.newest_seq), (Some(1), Some(30)));
        assert_eq!((stats.segment_count, stats.record_count), (3, 30));

        let clone = admin.clone();
        let masked = std::thread::spawn(move || clone.set_masked(did_hash("did:plc:even"), true))
            .join()
            .expect("thread")
            .expect("mask");
        assert_eq!((masked.records_matched, masked.records_changed), (15, 15));
        assert_eq!(seqs(0, &log), (1..=30).step_by(2).collect::<Vec<_>>());
        let unmasked = admin
            .set_masked(did_hash("did:plc:even"), false)
            .expect("unmask");
        assert_eq!(unmasked.records_changed, 15);
        assert_eq!(seqs(0, &log), (1..=30).collect::<Vec<_>>());

        // The handle carries the log's policy: nothing is older than an hour yet.
        let at = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let r = admin.retain_once(at(t0 + 30)).expect("retain");
        assert_eq!(r.segments_deleted, 0);
        let r = admin.retain_once(at(t0 + 3_600_000 + 31)).expect("retain");
        assert_eq!(r.segments_deleted, 2);
        assert_eq!(r.oldest_seq, Some(21));
        assert_eq!(admin.stats().oldest_seq, Some(21));
        assert_eq!(log.reader().oldest_seq(), Some(21));
        assert!(matches!(
            log.reader().read_after(0),
            Err(EventLogError::Outdated { oldest_seq: 21 })
        ));
        assert_eq!(seqs(20, &log), (21..=30).collect::<Vec<_>>());
    }
}
