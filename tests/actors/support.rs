//! Building events from real frames, starting the pipeline, reading the log back.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use prometheus::Registry;
use rookery::actors::obs::ActorMetrics;
use rookery::actors::sequencer::{ByteBudget, EventKind, IngestEvent, Origin};
use rookery::actors::upstream_cursor::HostCursor;
use rookery::actors::write_behind::{AccountStateUpdate, PendingWrites, StateSink};
use rookery::actors::{Ingest, IngestSettings, start_ingest};
use rookery::atproto::frame::{self, Frame, IdentityEvent};
use rookery::store::event_log::{EventLog, EventLogConfig, EventLogReader, LogRecord};
use rookery::store::postgres::DbError;

/// A frame a PDS would send: `#account` or `#identity` events, alternating, for `did`.
pub fn small_frame(did: &str, upstream_seq: i64) -> Bytes {
    let time = "2025-12-31T23:00:00.000Z";
    let bytes = if upstream_seq % 2 == 0 {
        frame::encode_account(upstream_seq, did, time, true, None)
    } else {
        frame::encode_frame(&Frame::Identity(IdentityEvent {
            seq: upstream_seq,
            did: did.to_string(),
            time: time.to_string(),
            handle: Some(format!("h{upstream_seq}.example.com")),
        }))
    };
    Bytes::from(bytes.expect("encodes"))
}

/// The message a shard would send for `frame`, with a budget permit for its length.
pub async fn event(
    budget: &ByteBudget,
    frame: Bytes,
    pending: &PendingWrites,
    host_id: i64,
    upstream_seq: i64,
    account: Option<AccountStateUpdate>,
) -> IngestEvent {
    let peek = frame::peek_event(&frame).expect("a valid frame");
    let kind = peek
        .header
        .t
        .and_then(EventKind::from_frame_type)
        .expect("a stored kind");
    let did = peek.did.expect("a did").to_string();
    let permit = budget.acquire(frame.len()).await.expect("budget open");
    IngestEvent {
        did,
        kind,
        frame,
        account,
        origin: Origin::Upstream {
            // A tracker of its own: completing the mark records exactly this cursor.
            cursor: HostCursor::new(host_id, upstream_seq - 1, pending.clone()).begin(upstream_seq),
            permit,
        },
    }
}

/// A sink for pipelines whose Postgres side is not under test: accepts everything.
pub struct NullSink;

impl StateSink for NullSink {
    fn write_cursors(
        &self,
        c: Vec<(i64, i64)>,
    ) -> futures_util::future::BoxFuture<'static, Result<u64, DbError>> {
        Box::pin(async move { Ok(c.len() as u64) })
    }
    fn write_accounts(
        &self,
        a: Vec<AccountStateUpdate>,
        _checkpoint: u64,
    ) -> futures_util::future::BoxFuture<'static, Result<u64, DbError>> {
        Box::pin(async move { Ok(a.len() as u64) })
    }
}

pub fn open_log(dir: &Path) -> EventLog {
    let mut config = EventLogConfig::new(dir);
    config.segment_max_bytes = 64 * 1024;
    EventLog::open(config).expect("open log").0
}

/// Starts the pipeline on a fresh registry; returns it with its actor metrics.
pub fn start(
    dir: &Path,
    sink: Arc<dyn StateSink>,
    settings: IngestSettings,
) -> (Ingest, ActorMetrics) {
    let registry = Registry::new();
    let metrics = ActorMetrics::register(&registry).expect("metrics");
    let ingest = start_ingest(open_log(dir), sink, settings, &metrics, &registry).expect("start");
    (ingest, metrics)
}

/// Every record after `cursor` a fresh reader sees.
pub fn read_all(reader: &EventLogReader, cursor: u64) -> Vec<LogRecord> {
    let mut replay = reader.read_after(cursor).expect("replay");
    let mut all = Vec::new();
    for _ in 0..100_000 {
        let batch = replay.next_batch(256, 1 << 20).expect("read");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
    panic!("replay did not terminate");
}

pub use crate::common::wait::eventually;
