//! The firehose out: assembly of the [`Broadcaster`] and the [`ConsumerSession`]s, their
//! settings, metrics and the consumer table.
//!
//! ```text
//! Persister ──durable head──► Broadcaster ──ring + published head──► ConsumerSession(ws) × N
//!                                  │ reads new records                     │ reads ring, or the
//!                                  ▼                                       ▼ log when behind
//!                              event log ◄──────────────────────────────────┘
//! ```
//! [`start_firehose`] starts the Broadcaster on the current arbiter; sessions start on the
//! HTTP worker that accepted their upgrade ([`Firehose::routes`] mounts
//! `subscribeRepos`). Nothing here queues per consumer: each session keeps its own cursor
//! and reads shared frames, so memory per consumer is its in-flight byte budget
//! ([`FirehoseSettings::session_buffer_bytes`]) and a log position; while it replays the log,
//! also the batch it sends, the one it reads ahead and the blocks its `Replay` keeps for
//! reuse (at most 8 × 256 KiB, mostly those same batches): about 2.5 MiB at the defaults.
//!
//! The [`ConsumerTable`] admits connections (`--max-consumers`, `--max-consumers-per-ip`)
//! and is the list the admin API serves; sessions update their entry with atomics, so the
//! list never waits on a session.
//!
//! Shutdown comes in two steps: [`Firehose::stop_admitting`] refuses new consumers (503)
//! while open sessions keep streaming what the draining pipeline makes durable; then
//! [`Firehose::shutdown`] flips a `watch` every session selects on: each one sends close
//! 1001 on its own socket and stops (lesson 11: no one else touches it). Dropping the handle
//! is not a shutdown; `main` calls both before stopping the HTTP server.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix::{Actor, MailboxError, Supervisor};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    exponential_buckets,
};
use tokio::sync::{Notify, watch};

use super::broadcaster::{
    Broadcaster, BroadcasterState, GetBroadcasterState, MaskAccount, SharedRing, UnmaskAccount,
};
use super::consumer_session::ConsumerSession;
use super::consumer_socket;
use super::obs::{ActorMetrics, InstrumentedAddr};
use crate::store::event_log::{EventLogError, EventLogReader};
use actix_web::{HttpRequest, HttpResponse, web};

/// Settings of the firehose out. The first four come from the command line
/// (`--consumer-stall-timeout`, `--max-consumer-lag`, `--max-consumers`,
/// `--max-consumers-per-ip`); the rest keep their defaults outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirehoseSettings {
    /// A live consumer whose socket drains nothing for this long gets `ConsumerTooSlow`.
    pub consumer_stall_timeout: Duration,
    /// A live consumer further behind the head than this many seqs gets `ConsumerTooSlow`.
    pub max_consumer_lag: u64,
    /// Open consumers at most (503 above).
    pub max_consumers: usize,
    /// Open consumers per remote IP at most (429 above).
    pub max_consumers_per_ip: usize,
    /// Bytes of recent frames the Broadcaster keeps in memory for live sessions.
    pub ring_max_bytes: usize,
    /// Bytes a session may have handed to its socket and not yet seen drain.
    pub session_buffer_bytes: usize,
    /// Bytes of record bodies a catching-up session reads from the log at a time.
    pub replay_batch_bytes: usize,
    /// An idle consumer is pinged this often; one that answers nothing for a whole
    /// interval after a ping is closed as dead.
    pub ping_interval: Duration,
    /// How long the error frame and close of a closing session may take.
    pub close_timeout: Duration,
}

impl Default for FirehoseSettings {
    fn default() -> Self {
        FirehoseSettings {
            consumer_stall_timeout: Duration::from_secs(30),
            // Minutes of the real network's rate; a consumer further behind while live
            // reconnects with its cursor and catches up from the log.
            max_consumer_lag: 100_000,
            max_consumers: 5_000,
            max_consumers_per_ip: 50,
            ring_max_bytes: 64 * 1024 * 1024,
            session_buffer_bytes: 1024 * 1024,
            replay_batch_bytes: 256 * 1024,
            // indigo pings idle downstream clients every 30 s (PROTOCOL.md §1).
            ping_interval: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Metrics of the firehose out (per-actor ones come from `obs`). No per-consumer labels.
#[derive(Clone, Debug)]
pub struct FirehoseMetrics {
    pub consumers: IntGauge,
    /// Frames sent, by `mode` (`replay`: before the session first caught up; `live`).
    pub frames_sent: IntCounterVec,
    pub bytes_sent: IntCounterVec,
    /// `ConsumerTooSlow` sent, by `cause` (`lag`, `stall`).
    pub too_slow: IntCounterVec,
    /// Sessions ended, by `reason`.
    pub sessions_closed: IntCounterVec,
    /// Connections refused before the upgrade, by `reason`.
    pub rejected: IntCounterVec,
    /// `#info OutdatedCursor` frames sent.
    pub outdated_cursors: IntCounter,
    /// Seqs between a live session's cursor and the head, observed after each batch sent.
    pub lag: Histogram,
    /// Damaged event-log records skipped (sessions and the Broadcaster).
    pub damaged_skips: IntCounter,
    pub ring_bytes: IntGauge,
    pub ring_frames: IntGauge,
    /// The head published to sessions.
    pub head: IntGauge,
}

impl FirehoseMetrics {
    pub fn register(registry: &Registry) -> Result<FirehoseMetrics, prometheus::Error> {
        let m = FirehoseMetrics {
            consumers: IntGauge::new("rookery_firehose_consumers", "Open firehose consumers")?,
            frames_sent: IntCounterVec::new(
                Opts::new(
                    "rookery_firehose_frames_sent_total",
                    "Frames sent to consumers, by mode (replay or live)",
                ),
                &["mode"],
            )?,
            bytes_sent: IntCounterVec::new(
                Opts::new(
                    "rookery_firehose_bytes_sent_total",
                    "Frame bytes sent to consumers, by mode (replay or live)",
                ),
                &["mode"],
            )?,
            too_slow: IntCounterVec::new(
                Opts::new(
                    "rookery_firehose_consumer_too_slow_total",
                    "ConsumerTooSlow errors sent, by cause (lag or stall)",
                ),
                &["cause"],
            )?,
            sessions_closed: IntCounterVec::new(
                Opts::new(
                    "rookery_firehose_sessions_closed_total",
                    "Consumer sessions ended, by reason",
                ),
                &["reason"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "rookery_firehose_rejected_total",
                    "subscribeRepos requests refused before the upgrade, by reason",
                ),
                &["reason"],
            )?,
            outdated_cursors: IntCounter::new(
                "rookery_firehose_outdated_cursor_total",
                "#info OutdatedCursor frames sent",
            )?,
            lag: Histogram::with_opts(
                HistogramOpts::new(
                    "rookery_firehose_consumer_lag_events",
                    "Seqs between a live consumer's cursor and the head, after each batch",
                )
                .buckets(exponential_buckets(1.0, 4.0, 12)?),
            )?,
            damaged_skips: IntCounter::new(
                "rookery_firehose_damaged_records_skipped_total",
                "Damaged event-log records skipped while serving consumers",
            )?,
            ring_bytes: IntGauge::new(
                "rookery_firehose_ring_bytes",
                "Bytes of frames in the ring",
            )?,
            ring_frames: IntGauge::new("rookery_firehose_ring_frames", "Frames in the ring")?,
            head: IntGauge::new(
                "rookery_firehose_head_seq",
                "The head seq published to consumers",
            )?,
        };
        registry.register(Box::new(m.consumers.clone()))?;
        registry.register(Box::new(m.frames_sent.clone()))?;
        registry.register(Box::new(m.bytes_sent.clone()))?;
        registry.register(Box::new(m.too_slow.clone()))?;
        registry.register(Box::new(m.sessions_closed.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        registry.register(Box::new(m.outdated_cursors.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.damaged_skips.clone()))?;
        registry.register(Box::new(m.ring_bytes.clone()))?;
        registry.register(Box::new(m.ring_frames.clone()))?;
        registry.register(Box::new(m.head.clone()))?;
        Ok(m)
    }
}

// ------------------------------------------------------------------------------------------
// The consumer table

/// The admission rule, given the counts before this connection.
pub fn admit(
    open: usize,
    open_from_ip: usize,
    max_consumers: usize,
    max_per_ip: usize,
) -> Result<(), Refusal> {
    if open >= max_consumers {
        Err(Refusal::Full)
    } else if open_from_ip >= max_per_ip {
        Err(Refusal::IpFull)
    } else {
        Ok(())
    }
}

/// One open consumer as the session keeps it up to date.
#[derive(Debug)]
pub struct ConsumerEntry {
    pub id: u64,
    pub remote: SocketAddr,
    pub user_agent: String,
    pub connected_at: SystemTime,
    /// The cursor the consumer asked for (`None`: live).
    pub requested_cursor: Option<u64>,
    /// The last seq handed to the socket (or passed, for masked and skipped records).
    pub cursor: AtomicU64,
    pub events_sent: AtomicU64,
    /// Seqs between the cursor and the head, as of the session's last batch.
    pub lag: AtomicU64,
    /// Caught up at least once (a lagging live consumer can be too slow; a catching-up
    /// one never is).
    pub live: AtomicBool,
}

/// A snapshot of one consumer, for the admin API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerInfo {
    pub id: u64,
    pub remote_addr: String,
    pub user_agent: String,
    /// Unix milliseconds.
    pub connected_at_ms: u64,
    pub requested_cursor: Option<u64>,
    pub cursor: u64,
    pub events_sent: u64,
    pub lag: u64,
    pub live: bool,
}

impl ConsumerEntry {
    fn info(&self) -> ConsumerInfo {
        ConsumerInfo {
            id: self.id,
            remote_addr: self.remote.to_string(),
            user_agent: self.user_agent.clone(),
            connected_at_ms: self
                .connected_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            requested_cursor: self.requested_cursor,
            cursor: self.cursor.load(Ordering::Relaxed),
            events_sent: self.events_sent.load(Ordering::Relaxed),
            lag: self.lag.load(Ordering::Relaxed),
            live: self.live.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default)]
struct TableInner {
    by_id: HashMap<u64, Arc<ConsumerEntry>>,
    per_ip: HashMap<IpAddr, usize>,
}

/// Open consumers: admission, the admin list, and "all gone" for shutdown.
#[derive(Debug)]
pub struct ConsumerTable {
    inner: Mutex<TableInner>,
    next_id: AtomicU64,
    emptied: Notify,
    gauge: IntGauge,
}

/// A consumer's place in the table; dropping it (the session ending) frees it.
#[derive(Debug)]
pub struct ConsumerSlot {
    table: Arc<ConsumerTable>,
    entry: Arc<ConsumerEntry>,
}

impl ConsumerSlot {
    pub fn entry(&self) -> &Arc<ConsumerEntry> {
        &self.entry
    }
}

impl Drop for ConsumerSlot {
    fn drop(&mut self) {
        self.table.remove(&self.entry);
    }
}

/// Longest user agent kept (it is untrusted and shown to operators).
const MAX_USER_AGENT_CHARS: usize = 256;

impl ConsumerTable {
    fn new(gauge: IntGauge) -> ConsumerTable {
        ConsumerTable {
            inner: Mutex::new(TableInner::default()),
            next_id: AtomicU64::new(1),
            emptied: Notify::new(),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a consumer or says why not.
    pub fn admit(
        self: &Arc<Self>,
        settings: &FirehoseSettings,
        remote: SocketAddr,
        user_agent: &str,
        requested_cursor: Option<u64>,
    ) -> Result<ConsumerSlot, Refusal> {
        let mut inner = self.lock();
        let from_ip = inner.per_ip.get(&remote.ip()).copied().unwrap_or(0);
        admit(
            inner.by_id.len(),
            from_ip,
            settings.max_consumers,
            settings.max_consumers_per_ip,
        )?;
        let entry = Arc::new(ConsumerEntry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            remote,
            user_agent: user_agent.chars().take(MAX_USER_AGENT_CHARS).collect(),
            connected_at: SystemTime::now(),
            requested_cursor,
            cursor: AtomicU64::new(requested_cursor.unwrap_or(0)),
            events_sent: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            live: AtomicBool::new(false),
        });
        inner.by_id.insert(entry.id, Arc::clone(&entry));
        *inner.per_ip.entry(remote.ip()).or_insert(0) += 1;
        self.gauge
            .set(i64::try_from(inner.by_id.len()).unwrap_or(i64::MAX));
        Ok(ConsumerSlot {
            table: Arc::clone(self),
            entry,
        })
    }

    fn remove(&self, entry: &ConsumerEntry) {
        let mut inner = self.lock();
        if inner.by_id.remove(&entry.id).is_none() {
            return;
        }
        let ip = entry.remote.ip();
        if let Some(n) = inner.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                inner.per_ip.remove(&ip);
            }
        }
        self.gauge
            .set(i64::try_from(inner.by_id.len()).unwrap_or(i64::MAX));
        if inner.by_id.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Snapshots of every open consumer, by id.
    pub fn list(&self) -> Vec<ConsumerInfo> {
        let mut out: Vec<ConsumerInfo> = self.lock().by_id.values().map(|e| e.info()).collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// Waits until no consumer is open, at most `limit`; returns how many still are.
    pub async fn wait_empty(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let open = self.len();
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.len();
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The handle

/// What every session and the route share.
#[derive(Debug)]
pub struct FirehoseShared {
    pub settings: FirehoseSettings,
    pub reader: EventLogReader,
    pub ring: SharedRing,
    /// The head the Broadcaster published (every record up to it is in the ring or the log).
    pub head: watch::Receiver<u64>,
    pub shutdown: watch::Receiver<bool>,
    /// Set once no new consumer is admitted ([`Firehose::stop_admitting`]).
    pub closed: AtomicBool,
    pub table: Arc<ConsumerTable>,
    pub metrics: FirehoseMetrics,
    pub actor_metrics: ActorMetrics,
}

/// The firehose as the `subscribeRepos` route sees it.
struct Route(Arc<FirehoseShared>);

impl ConsumerSessions for Route {
    fn shutting_down(&self) -> bool {
        self.0.closed.load(Ordering::Acquire) || *self.0.shutdown.borrow()
    }

    fn count_rejected(&self, reason: &'static str) {
        self.0.metrics.rejected.with_label_values(&[reason]).inc();
    }

    fn admit(
        &self,
        remote: SocketAddr,
        user_agent: &str,
        cursor: Option<u64>,
    ) -> Result<SessionStart, Refusal> {
        let slot = self
            .0
            .table
            .admit(&self.0.settings, remote, user_agent, cursor)?;
        let shared = Arc::clone(&self.0);
        Ok(Box::new(move |req, payload| {
            let (response, socket, incoming) = consumer_socket::upgrade(
                req,
                payload,
                shared.settings.session_buffer_bytes,
                ConsumerSession::MAX_CLIENT_FRAME_BYTES,
            )?;
            // On the worker that accepted the upgrade.
            ConsumerSession::new(shared, slot, socket, incoming, cursor).start();
            Ok(response)
        }))
    }
}

/// Why the firehose could not start.
#[derive(Debug, thiserror::Error)]
pub enum FirehoseError {
    #[error("could not register the firehose metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("could not position the broadcaster in the event log: {0}")]
    EventLog(#[from] EventLogError),
}

/// The running firehose out.
pub struct Firehose {
    shared: Arc<FirehoseShared>,
    broadcaster: InstrumentedAddr<Broadcaster>,
    shutdown: watch::Sender<bool>,
}

/// Starts the Broadcaster (supervised) on the current arbiter, following `durable_head`
/// (the Persister's announcements) over `reader`. Must be called inside an actix system.
pub fn start_firehose(
    reader: EventLogReader,
    durable_head: watch::Receiver<u64>,
    settings: FirehoseSettings,
    actor_metrics: &ActorMetrics,
    registry: &Registry,
) -> Result<Firehose, FirehoseError> {
    let metrics = FirehoseMetrics::register(registry)?;
    let obs = actor_metrics.actor(Broadcaster::NAME, Broadcaster::MAILBOX);
    let (broadcaster, ring, head) = Broadcaster::new(
        obs.clone(),
        metrics.clone(),
        reader.clone(),
        durable_head,
        settings.ring_max_bytes,
    )?;
    let addr = Supervisor::start(move |_| broadcaster);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(FirehoseShared {
        settings,
        reader,
        ring,
        head,
        shutdown: shutdown_rx,
        closed: AtomicBool::new(false),
        table: Arc::new(ConsumerTable::new(metrics.consumers.clone())),
        metrics,
        actor_metrics: actor_metrics.clone(),
    });
    Ok(Firehose {
        shared,
        broadcaster: InstrumentedAddr::new(addr, obs),
        shutdown,
    })
}

/// Masks and unmasks accounts in the Broadcaster's ring. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RingMasks {
    broadcaster: InstrumentedAddr<Broadcaster>,
}

impl RingMasks {
    /// See [`Firehose::mask_account`].
    pub async fn mask(&self, did_hash: u64, through_seq: u64) -> Result<usize, MailboxError> {
        self.broadcaster
            .send(MaskAccount {
                did_hash,
                through_seq,
            })
            .await
    }

    /// After a reversal unmasked records up to `through_seq` in the log: the ring forgets its
    /// frames up to there, so sessions read them from the log. Returns the ring's new floor.
    pub async fn unmask(&self, through_seq: u64) -> Result<u64, MailboxError> {
        self.broadcaster.send(UnmaskAccount { through_seq }).await
    }
}

/// Why a connection was refused before the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-consumers` reached (503).
    Full,
    /// `--max-consumers-per-ip` reached for this address (429).
    IpFull,
}

impl Refusal {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "max_consumers",
            Refusal::IpFull => "max_consumers_per_ip",
        }
    }
}

/// Upgrades an admitted consumer's request to a websocket and starts its session on it (on
/// this worker); returns the 101 response. A failed handshake (no key, wrong version) is
/// answered with an error and frees the consumer's place, as does dropping it unused.
pub type SessionStart =
    Box<dyn FnOnce(&HttpRequest, web::Payload) -> Result<HttpResponse, actix_web::Error>>;

/// What the route needs from the firehose.
pub trait ConsumerSessions: Send + Sync + 'static {
    /// True once shutdown began: new consumers are refused (503).
    fn shutting_down(&self) -> bool;
    /// Counts a refusal (`rookery_firehose_rejected_total{reason}`).
    fn count_rejected(&self, reason: &'static str);
    /// Takes a place for a consumer (freed when its session ends, or when the returned
    /// start is dropped unused), or says why not.
    fn admit(
        &self,
        remote: SocketAddr,
        user_agent: &str,
        cursor: Option<u64>,
    ) -> Result<SessionStart, Refusal>;
}

impl Firehose {
    /// What the `subscribeRepos` route admits consumers through
    /// (`http::subscribe_repos::routes` mounts it).
    pub fn sessions(&self) -> Arc<dyn ConsumerSessions> {
        Arc::new(Route(Arc::clone(&self.shared)))
    }

    /// The open consumers (id, remote address, user agent, connected at, cursor, events
    /// sent, lag), for the admin API. Never waits on a session.
    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        self.shared.table.list()
    }

    /// Open consumers.
    pub fn consumer_count(&self) -> usize {
        self.shared.table.len()
    }

    /// The head published to sessions.
    pub fn head(&self) -> u64 {
        *self.shared.head.borrow()
    }

    pub fn metrics(&self) -> &FirehoseMetrics {
        &self.shared.metrics
    }

    /// The Broadcaster's observable state.
    pub async fn broadcaster_state(&self) -> Result<BroadcasterState, MailboxError> {
        self.broadcaster.send(GetBroadcasterState).await
    }

    /// After a takedown masked the account in the log: drop its frames with `seq <=
    /// through_seq` from the ring, so live sessions do not send them either. Returns how many
    /// were removed.
    pub async fn mask_account(
        &self,
        did_hash: u64,
        through_seq: u64,
    ) -> Result<usize, MailboxError> {
        self.ring_masks().mask(did_hash, through_seq).await
    }

    /// What the takedown path (`account_admin`) keeps to mask and unmask the ring: the
    /// firehose starts after the ingest pipeline, so the pipeline's account admin is given
    /// this once it exists.
    pub fn ring_masks(&self) -> RingMasks {
        RingMasks {
            broadcaster: self.broadcaster.clone(),
        }
    }

    /// Refuses new consumers from now on (the route answers 503); open sessions go on
    /// until [`Firehose::shutdown`]. The first step of a relay shutdown: consumers keep
    /// receiving what the draining pipeline makes durable.
    pub fn stop_admitting(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }

    /// Tells every session to close with 1001 and waits until all are gone, at most
    /// `limit`. Returns how many were still open. New connections are refused from now
    /// on (the route answers 503). Call before stopping the HTTP servers.
    pub async fn shutdown(&self, limit: Duration) -> usize {
        self.stop_admitting();
        self.shutdown.send_replace(true);
        self.shared.table.wait_empty(limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_rule() {
        assert_eq!(admit(0, 0, 5, 2), Ok(()));
        assert_eq!(admit(4, 1, 5, 2), Ok(()));
        assert_eq!(admit(5, 0, 5, 2), Err(Refusal::Full));
        assert_eq!(admit(3, 2, 5, 2), Err(Refusal::IpFull));
        // Full wins: the relay is out of room whoever asks.
        assert_eq!(admit(5, 2, 5, 2), Err(Refusal::Full));
        assert_eq!(admit(0, 0, 0, 2), Err(Refusal::Full));
    }

    #[actix_rt::test]
    async fn the_table_counts_per_ip_frees_on_drop_and_reports_empty() {
        let gauge = IntGauge::new("t", "t").expect("gauge");
        let table = Arc::new(ConsumerTable::new(gauge.clone()));
        let settings = FirehoseSettings {
            max_consumers: 3,
            max_consumers_per_ip: 2,
            ..FirehoseSettings::default()
        };
        let a: SocketAddr = "10.0.0.1:1000".parse().expect("addr");
        let a2: SocketAddr = "10.0.0.1:1001".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:1000".parse().expect("addr");
        let long_agent = "x".repeat(1000);
        let s1 = table.admit(&settings, a, &long_agent, None).expect("first");
        let s2 = table.admit(&settings, a2, "ua", Some(7)).expect("second");
        assert_eq!(
            table.admit(&settings, a, "ua", None).map(|_| ()),
            Err(Refusal::IpFull)
        );
        let s3 = table.admit(&settings, b, "ua", None).expect("other ip");
        assert_eq!(
            table.admit(&settings, b, "ua", None).map(|_| ()),
            Err(Refusal::Full)
        );
        assert_eq!(gauge.get(), 3);
        let list = table.list();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].user_agent.len(), MAX_USER_AGENT_CHARS);
        assert_eq!(list[1].requested_cursor, Some(7));
        assert_eq!(list[1].cursor, 7);
        drop(s1);
        let s4 = table.admit(&settings, a, "ua", None).expect("room again");
        assert_eq!(table.wait_empty(Duration::from_millis(10)).await, 3);
        let waiter = {
            let table = Arc::clone(&table);
            actix_rt::spawn(async move { table.wait_empty(Duration::from_secs(10)).await })
        };
        drop((s2, s3, s4));
        assert_eq!(waiter.await.expect("join"), 0);
        assert_eq!(gauge.get(), 0);
        assert!(table.is_empty());
    }
}
