//! The coverage checker: one consumer of a relay's firehose that knows what the hosts
//! published and says, per run, what the relay lost, repeated, reordered or let through.
//!
//! Matching cannot use seq (the relay re-sequences every event), so an output frame is matched
//! to a published one by what the relay keeps byte for byte (PROTOCOL.md §9): `#commit` by
//! repo, rev and commit CID; `#sync` by did and rev; `#identity` and `#account` by did and
//! `time` (the relay rewrites `#account`'s `active`/`status` and may strip an `#identity`
//! handle, never `time`). Several published events can share a key (the simulator stamps
//! every `#identity`/`#account` with one `time`): the n-th delivery of a key is matched to its
//! n-th valid copy, and a delivery beyond the copies is a duplicate.
//!
//! Order is checked two ways: the relay's seqs must strictly increase over the whole run
//! (across reconnects too, since the checker resumes with `cursor=` its last seq), and each
//! account's events must arrive in the order they were added to [`Expectations`], which the
//! caller does in publication order.
//!
//! Bounds: the expectations are what the run publishes (known up front or fed while it runs
//! through [`Checker::feed`]); per account the checker keeps one position; frames that match
//! nothing yet (a delivery that overtook its expectation on the feed) wait in a set capped at
//! [`MAX_PARKED`]; latencies go into a fixed-size [`LatencyHistogram`]. The relay's frames are
//! untrusted: one that does not decode is counted, never a panic.
//!
//! The socket is read by [`LeanConsumer`] in a task of its own that stamps each message on
//! receipt, so the time the checker spends matching does not count as delivery latency and a
//! deadline never cancels a read halfway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::atproto::frame::{Frame, FrameError, decode_frame};
use crate::sim::consumer::{ConsumerError, LeanConsumer, Message};
use crate::sim::latency::LatencyHistogram;

/// Unmatched deliveries kept for a late expectation; beyond this they are counted as
/// unexpected at once.
pub const MAX_PARKED: usize = 65_536;
/// Messages read ahead of the checker (the reader task waits when it is full).
const READ_AHEAD: usize = 4096;
/// Expectations in flight on a [`Checker::feed`].
pub const FEED_CAPACITY: usize = 65_536;
/// Descriptions of missing events kept for the report.
const MISSING_SAMPLES: usize = 10;

const SUBSCRIBE_PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";
const USER_AGENT: &str = "rookery-fleet-checker";

#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    #[error("a valid event must decode: {0}")]
    UndecodableValidEvent(FrameError),
    #[error("a valid event must be a #commit, #sync, #identity or #account frame, not {0}")]
    NotAnEvent(&'static str),
    #[error("connect: {0}")]
    Connect(#[from] ConsumerError),
}

/// What identifies an event across the relay: the fields it keeps byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    kind: EventKind,
    did: Arc<str>,
    /// `rev` + commit CID for `#commit`, `rev` for `#sync`, `time` for the others.
    discriminator: Box<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum EventKind {
    Commit,
    Sync,
    Identity,
    Account,
}

impl EventKind {
    /// What a relay lets through again when a host resends it: `#identity` and `#account`
    /// (no rev) and `#sync` (one equal to the stored state is forwarded, PROTOCOL.md §10).
    fn may_repeat(self) -> bool {
        matches!(
            self,
            EventKind::Identity | EventKind::Account | EventKind::Sync
        )
    }
}

/// What a relay frame is to the checker.
enum Decoded {
    Event {
        key: EventKey,
        seq: i64,
    },
    Info,
    Error,
    /// `op = 1` with an unknown type, or an unknown op: skipped, as a consumer must.
    Skipped,
}

fn decode(frame: &Bytes) -> Result<Decoded, FrameError> {
    let (kind, did, discriminator, seq) = match decode_frame(frame)? {
        Frame::Commit(c) => (
            EventKind::Commit,
            c.repo,
            format!("{} {}", c.rev, c.commit),
            c.seq,
        ),
        Frame::Sync(s) => (EventKind::Sync, s.did, s.rev, s.seq),
        Frame::Identity(i) => (EventKind::Identity, i.did, i.time, i.seq),
        Frame::Account(a) => (EventKind::Account, a.did, a.time, a.seq),
        Frame::Info(_) => return Ok(Decoded::Info),
        Frame::Error(_) => return Ok(Decoded::Error),
        Frame::Unknown { .. } | Frame::UnknownOp { .. } => return Ok(Decoded::Skipped),
    };
    Ok(Decoded::Event {
        key: EventKey {
            kind,
            did: did.into(),
            discriminator: discriminator.into_boxed_str(),
        },
        seq,
    })
}

/// One event as a host published it.
#[derive(Debug, Clone)]
pub struct Published {
    /// The host's name (for the report's samples of missing events).
    pub host: Arc<str>,
    /// The frame as the host sent it.
    pub frame: Bytes,
    /// When the host published it (the start of its delivery latency).
    pub published_at: Instant,
    /// Valid events must be delivered exactly once; invalid ones never.
    pub valid: bool,
}

/// One valid copy of a key.
#[derive(Debug)]
struct ValidCopy {
    host: Arc<str>,
    published_at: Instant,
    /// Position among its account's valid events, in publication order.
    position: u32,
}

#[derive(Debug, Default)]
struct Slot {
    valid: Vec<ValidCopy>,
    invalid: u32,
    /// The host of the first invalid copy (for the report's samples).
    invalid_host: Option<Arc<str>>,
    /// Deliveries seen so far.
    delivered: u32,
    /// The relay's seq of the first delivery (for the report's samples of duplicates).
    first_seq: Option<u64>,
}

impl Slot {
    /// Deliveries that are not duplicates: one per valid copy, or, for a key with only
    /// invalid copies, one per invalid copy (each counted as wrongly delivered).
    fn copies(&self) -> usize {
        if self.valid.is_empty() {
            self.invalid as usize
        } else {
            self.valid.len()
        }
    }
}

/// What the hosts published: valid events (exactly once) and invalid ones (never).
#[derive(Debug, Default)]
pub struct Expectations {
    slots: HashMap<EventKey, Slot>,
    /// Valid events added per account (the next position).
    positions: HashMap<Arc<str>, u32>,
    valid: u64,
    invalid: u64,
}

impl Expectations {
    pub fn new() -> Expectations {
        Expectations::default()
    }

    /// Adds one published event; add an account's events in the order its host published
    /// them. A valid event must decode as an event; an invalid frame that does not decode
    /// (garbage a host sent) is counted and can never be matched.
    pub fn add(&mut self, published: Published) -> Result<(), CheckerError> {
        let key = match decode(&published.frame) {
            Ok(Decoded::Event { key, .. }) => key,
            Ok(other) if published.valid => {
                return Err(CheckerError::NotAnEvent(match other {
                    Decoded::Info => "#info",
                    Decoded::Error => "an error frame",
                    _ => "an unknown type",
                }));
            }
            Err(e) if published.valid => return Err(CheckerError::UndecodableValidEvent(e)),
            Ok(_) | Err(_) => {
                self.invalid += 1;
                return Ok(());
            }
        };
        self.insert(key, published.host, published.published_at, published.valid);
        Ok(())
    }

    fn insert(&mut self, key: EventKey, host: Arc<str>, published_at: Instant, valid: bool) {
        // One allocation per account, shared by its keys.
        let did = match self.positions.get_key_value(&key.did) {
            Some((did, _)) => did.clone(),
            None => key.did.clone(),
        };
        let key = EventKey { did, ..key };
        if valid {
            let next = self.positions.entry(key.did.clone()).or_insert(0);
            let position = *next;
            *next += 1;
            self.valid += 1;
            self.slots.entry(key).or_default().valid.push(ValidCopy {
                host,
                published_at,
                position,
            });
        } else {
            self.invalid += 1;
            let slot = self.slots.entry(key).or_default();
            slot.invalid += 1;
            slot.invalid_host.get_or_insert(host);
        }
    }

    pub fn valid_published(&self) -> u64 {
        self.valid
    }

    pub fn invalid_published(&self) -> u64 {
        self.invalid
    }
}

/// The result of one run. The first nine fields are the figures the benches print; the rest
/// say where the faults came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoverageReport {
    pub valid_published: u64,
    /// Valid events delivered at least once.
    pub delivered: u64,
    pub missing: u64,
    /// Deliveries of a `#commit` beyond its published copies (valid or invalid).
    pub duplicated: u64,
    /// The same for `#identity`, `#account` and `#sync`. Counted apart: a relay resumes a
    /// host from a cursor written every few seconds, so after a crash the host resends the
    /// last seconds of events; commits are dropped by rev, these pass again (no rev, or a
    /// `#sync` equal to the stored state, which is forwarded), which PROTOCOL.md §10 calls
    /// harmless.
    pub harmless_repeats: u64,
    /// `seq_regressions + account_order_violations`.
    pub out_of_order: u64,
    pub invalid_delivered: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// A seq not above the previous one (over the whole run, across reconnects).
    pub seq_regressions: u64,
    /// An account's event delivered before one its host published earlier.
    pub account_order_violations: u64,
    pub invalid_published: u64,
    /// Events that match nothing any host published.
    pub unexpected: u64,
    /// Binary messages that do not decode, and text messages.
    pub undecodable: u64,
    /// Valid events on the feed that were not decodable events (a fleet bug, not the relay's).
    pub bad_expectations: u64,
    pub info_frames: u64,
    pub error_frames: u64,
    /// Connections that ended with a read error (not a close or an end of stream).
    pub stream_errors: u64,
    pub reconnects: u64,
    /// The last seq received (the cursor of the next reconnect).
    pub last_seq: Option<u64>,
    /// Up to ten missing events, as `host kind did discriminator`.
    pub missing_sample: Vec<String>,
    /// Up to ten invalid events delivered, as `host kind did discriminator`.
    pub invalid_sample: Vec<String>,
    /// Up to ten valid events delivered once too often, the same way.
    pub duplicated_sample: Vec<String>,
}

/// Why [`Checker::run_until`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The deadline passed.
    Deadline,
    /// Every valid event expected so far was delivered (only with [`Stop::WhenAllSeen`]).
    AllSeen,
    /// The relay closed the stream or it failed; [`Checker::reconnect`] resumes it.
    Closed(Option<String>),
}

/// When [`Checker::run_until`] stops besides its deadline and the end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    AtDeadline,
    WhenAllSeen,
}

/// The message reader's output: a message stamped on receipt, or how the stream ended.
enum Read {
    Message(Instant, Bytes),
    Text,
    End(Option<String>),
}

/// A sender of expectations to a running [`Checker`] (a fleet registers each event as it
/// publishes it).
#[derive(Debug, Clone)]
pub struct ExpectationFeed {
    tx: mpsc::Sender<Published>,
    awaited: Arc<Awaited>,
}

impl ExpectationFeed {
    /// Waits while the checker is [`FEED_CAPACITY`] expectations behind; fails only when the
    /// checker is gone.
    pub async fn send(&self, published: Published) -> Result<(), Published> {
        if published.valid {
            // Counted before it is on the feed, so a host never looks caught up too early.
            self.awaited.add(&published.host);
        }
        self.tx.send(published).await.map_err(|e| e.0)
    }

    /// Valid events `host` published through this feed that the checker has not received
    /// yet. A fleet forgets a host's events (a reset) only at 0, so no event is lost with the
    /// host's outbox before the relay delivered it.
    pub fn awaited(&self, host: &str) -> u64 {
        self.awaited.of(host)
    }
}

/// Per host, valid events sent on the feed and not yet delivered (one entry per host that
/// has any).
#[derive(Debug, Default)]
struct Awaited(std::sync::Mutex<HashMap<Arc<str>, u64>>);

impl Awaited {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, host: &Arc<str>) {
        *self.lock().entry(host.clone()).or_insert(0) += 1;
    }

    fn done(&self, host: &str) {
        let mut map = self.lock();
        if let Some(n) = map.get_mut(host) {
            *n -= 1;
            if *n == 0 {
                map.remove(host);
            }
        }
    }

    fn of(&self, host: &str) -> u64 {
        self.lock().get(host).copied().unwrap_or(0)
    }
}

/// A firehose consumer that checks coverage (see the module doc).
pub struct Checker {
    addr: SocketAddr,
    expected: Expectations,
    feed: Option<mpsc::Receiver<Published>>,
    awaited: Arc<Awaited>,
    /// Invalid frames and bad valid events that arrived on the feed.
    feed_errors: u64,
    reads: Option<mpsc::Receiver<Read>>,
    reader: Option<JoinHandle<()>>,
    /// Account → position of the last valid event delivered.
    last_position: HashMap<Arc<str>, u32>,
    /// Unmatched deliveries: key → receipt times.
    /// Deliveries waiting for their expectation: when, and the relay's seq.
    parked: HashMap<EventKey, Vec<(Instant, u64)>>,
    parked_len: usize,
    latency: LatencyHistogram,
    delivered: u64,
    duplicated: u64,
    harmless_repeats: u64,
    invalid_delivered: u64,
    /// Up to ten invalid events delivered, as `host kind did discriminator`.
    invalid_sample: Vec<String>,
    duplicated_sample: Vec<String>,
    seq_regressions: u64,
    account_order_violations: u64,
    unexpected: u64,
    undecodable: u64,
    info_frames: u64,
    error_frames: u64,
    stream_errors: u64,
    reconnects: u64,
    last_seq: Option<u64>,
}

impl Checker {
    /// Connects to the relay's firehose at `addr` (from `cursor` when given, else live) with
    /// what the hosts published so far.
    pub async fn connect(
        addr: SocketAddr,
        cursor: Option<u64>,
        expected: Expectations,
    ) -> Result<Checker, CheckerError> {
        let mut checker = Checker {
            addr,
            expected,
            feed: None,
            awaited: Arc::default(),
            feed_errors: 0,
            reads: None,
            reader: None,
            last_position: HashMap::new(),
            parked: HashMap::new(),
            parked_len: 0,
            latency: LatencyHistogram::new(),
            delivered: 0,
            duplicated: 0,
            harmless_repeats: 0,
            invalid_delivered: 0,
            invalid_sample: Vec::new(),
            duplicated_sample: Vec::new(),
            seq_regressions: 0,
            account_order_violations: 0,
            unexpected: 0,
            undecodable: 0,
            info_frames: 0,
            error_frames: 0,
            stream_errors: 0,
            reconnects: 0,
            last_seq: cursor,
        };
        checker.open(cursor).await?;
        Ok(checker)
    }

    /// A feed for expectations published while the checker runs; they are taken in before
    /// each delivery is matched. A second call replaces the first feed.
    pub fn feed(&mut self) -> ExpectationFeed {
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        self.feed = Some(rx);
        self.awaited = Arc::default();
        ExpectationFeed {
            tx,
            awaited: self.awaited.clone(),
        }
    }

    /// Adds an expectation directly (between runs).
    pub fn expect(&mut self, published: Published) -> Result<(), CheckerError> {
        let key = match decode(&published.frame) {
            Ok(Decoded::Event { key, .. }) => key,
            // Same rules as Expectations::add (an error for a valid non-event, else counted).
            _ => return self.expected.add(published),
        };
        self.take_key(key, published);
        Ok(())
    }

    /// Drops the connection and connects again with `cursor=` the last seq received (or as
    /// first connected when nothing arrived yet). Events delivered again count as duplicates.
    /// On an error (the relay is down) the checker stays disconnected; call it again.
    pub async fn reconnect(&mut self) -> Result<(), CheckerError> {
        self.close_reader();
        self.open(self.last_seq).await?;
        self.reconnects += 1;
        Ok(())
    }

    async fn open(&mut self, cursor: Option<u64>) -> Result<(), CheckerError> {
        let path = match cursor {
            Some(c) => format!("{SUBSCRIBE_PATH}?cursor={c}"),
            None => SUBSCRIBE_PATH.to_string(),
        };
        let consumer = LeanConsumer::connect(self.addr, &path, USER_AGENT).await?;
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        self.reads = Some(rx);
        self.reader = Some(tokio::spawn(read_messages(consumer, tx)));
        Ok(())
    }

    fn close_reader(&mut self) {
        self.reads = None;
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }

    fn all_seen(&self) -> bool {
        self.delivered >= self.expected.valid
    }

    /// Consumes the firehose until `deadline`, the end of the stream, or (with
    /// [`Stop::WhenAllSeen`]) every valid event expected so far delivered.
    pub async fn run_until(&mut self, deadline: Instant, stop: Stop) -> RunEnd {
        loop {
            self.drain_feed();
            if stop == Stop::WhenAllSeen && self.all_seen() {
                return RunEnd::AllSeen;
            }
            // Checked here too: the select below prefers messages, and a busy stream always
            // has one ready.
            if Instant::now() >= deadline {
                return RunEnd::Deadline;
            }
            let Some(reads) = self.reads.as_mut() else {
                return RunEnd::Closed(None);
            };
            let read = tokio::select! {
                biased;
                Some(published) = recv_feed(&mut self.feed) => {
                    self.take_expectation(published);
                    continue;
                }
                read = reads.recv() => read,
                () = tokio::time::sleep_until(deadline) => return RunEnd::Deadline,
            };
            match read {
                Some(Read::Message(at, frame)) => self.observe(at, &frame),
                Some(Read::Text) => self.undecodable += 1,
                Some(Read::End(error)) => {
                    self.stream_errors += u64::from(error.is_some());
                    self.close_reader();
                    return RunEnd::Closed(error);
                }
                None => {
                    self.close_reader();
                    return RunEnd::Closed(None);
                }
            }
        }
    }

    fn drain_feed(&mut self) {
        while let Some(published) = self.feed.as_mut().and_then(|f| f.try_recv().ok()) {
            self.take_expectation(published);
        }
    }

    fn take_expectation(&mut self, published: Published) {
        let Ok(Decoded::Event { key, .. }) = decode(&published.frame) else {
            if published.valid {
                self.feed_errors += 1;
            } else {
                self.expected.invalid += 1;
            }
            return;
        };
        self.take_key(key, published);
    }

    fn take_key(&mut self, key: EventKey, published: Published) {
        self.expected.insert(
            key.clone(),
            published.host,
            published.published_at,
            published.valid,
        );
        // Deliveries that overtook their expectation are matched now, as far as the copies
        // go; the rest stay parked.
        if let Some(times) = self.parked.remove(&key) {
            self.parked_len -= times.len();
            let mut rest = Vec::new();
            for (at, seq) in times {
                if self.has_room(&key) {
                    self.deliver(&key, at, seq);
                } else {
                    rest.push((at, seq));
                }
            }
            if !rest.is_empty() {
                self.parked_len += rest.len();
                self.parked.insert(key, rest);
            }
        }
    }

    /// Whether one more delivery of `key` would not be a duplicate.
    fn has_room(&self, key: &EventKey) -> bool {
        self.expected
            .slots
            .get(key)
            .is_some_and(|slot| (slot.delivered as usize) < slot.copies())
    }

    fn observe(&mut self, at: Instant, frame: &Bytes) {
        let (key, seq) = match decode(frame) {
            Ok(Decoded::Event { key, seq }) => (key, seq),
            Ok(Decoded::Info) => {
                self.info_frames += 1;
                return;
            }
            Ok(Decoded::Error) => {
                self.error_frames += 1;
                return;
            }
            Ok(Decoded::Skipped) => return,
            Err(_) => {
                self.undecodable += 1;
                return;
            }
        };
        // decode_frame keeps seq as i64; a negative one is below every valid seq.
        let seq = u64::try_from(seq).unwrap_or(0);
        if self.last_seq.is_some_and(|last| seq <= last) {
            self.seq_regressions += 1;
        }
        self.last_seq = Some(self.last_seq.map_or(seq, |last| last.max(seq)));
        if self.has_room(&key) {
            self.deliver(&key, at, seq);
        } else if self.parked_len < MAX_PARKED {
            // Unknown, or more deliveries than copies so far: a copy may still be on the feed.
            self.parked_len += 1;
            self.parked.entry(key).or_default().push((at, seq));
        } else if self.expected.slots.contains_key(&key) {
            self.deliver(&key, at, seq);
        } else {
            self.unexpected += 1;
        }
    }

    /// One delivery of a known key.
    fn deliver(&mut self, key: &EventKey, at: Instant, seq: u64) {
        let Some(slot) = self.expected.slots.get_mut(key) else {
            return;
        };
        let n = slot.delivered as usize;
        slot.delivered = slot.delivered.saturating_add(1);
        slot.first_seq.get_or_insert(seq);
        if let Some(copy) = slot.valid.get(n) {
            self.delivered += 1;
            self.awaited.done(&copy.host);
            self.latency
                .record(at.saturating_duration_since(copy.published_at));
            match self.last_position.get_mut(&key.did) {
                Some(last) if copy.position < *last => self.account_order_violations += 1,
                Some(last) => *last = copy.position,
                None => {
                    self.last_position.insert(key.did.clone(), copy.position);
                }
            }
        } else if slot.valid.is_empty() && n < slot.invalid as usize {
            self.invalid_delivered += 1;
            if self.invalid_sample.len() < MISSING_SAMPLES {
                let host = slot.invalid_host.as_deref().unwrap_or("?");
                self.invalid_sample.push(format!(
                    "{host} {:?} {} {}",
                    key.kind, key.did, key.discriminator
                ));
            }
        } else if key.kind.may_repeat() {
            self.harmless_repeats += 1;
        } else {
            self.duplicated += 1;
            if self.duplicated_sample.len() < MISSING_SAMPLES {
                let host = slot.valid.first().map_or("?", |c| &*c.host);
                self.duplicated_sample.push(format!(
                    "{host} {:?} {} {} at seq {} and {seq}",
                    key.kind,
                    key.did,
                    key.discriminator,
                    slot.first_seq.unwrap_or(0)
                ));
            }
        }
    }

    /// The figures so far.
    pub fn report(&self) -> CoverageReport {
        let valid_published = self.expected.valid;
        let mut missing_sample = Vec::new();
        if self.delivered < valid_published {
            'slots: for (key, slot) in &self.expected.slots {
                for copy in slot.valid.iter().skip(slot.delivered as usize) {
                    if missing_sample.len() == MISSING_SAMPLES {
                        break 'slots;
                    }
                    missing_sample.push(format!(
                        "{} {:?} {} {}",
                        copy.host, key.kind, key.did, key.discriminator
                    ));
                }
            }
        }
        // Deliveries still parked: beyond the copies of a known key they are duplicates,
        // of an unknown key unexpected.
        let (mut parked_duplicates, mut parked_repeats, mut parked_unknown) = (0, 0, 0);
        let mut duplicated_sample = self.duplicated_sample.clone();
        for (key, times) in &self.parked {
            if self.expected.slots.contains_key(key) && key.kind.may_repeat() {
                parked_repeats += times.len() as u64;
            } else if let Some(slot) = self.expected.slots.get(key) {
                parked_duplicates += times.len() as u64;
                if duplicated_sample.len() < MISSING_SAMPLES {
                    let host = slot.valid.first().map_or("?", |c| &*c.host);
                    let seqs: Vec<u64> = times.iter().map(|t| t.1).collect();
                    duplicated_sample.push(format!(
                        "{host} {:?} {} {} at seq {} and {seqs:?}",
                        key.kind,
                        key.did,
                        key.discriminator,
                        slot.first_seq.unwrap_or(0)
                    ));
                }
            } else {
                parked_unknown += times.len() as u64;
            }
        }
        CoverageReport {
            valid_published,
            delivered: self.delivered,
            missing: valid_published.saturating_sub(self.delivered),
            duplicated: self.duplicated + parked_duplicates,
            harmless_repeats: self.harmless_repeats + parked_repeats,
            out_of_order: self.seq_regressions + self.account_order_violations,
            invalid_delivered: self.invalid_delivered,
            latency_p50_ms: self.latency.quantile_ms(0.5),
            latency_p99_ms: self.latency.quantile_ms(0.99),
            latency_max_ms: self.latency.max_ms(),
            seq_regressions: self.seq_regressions,
            account_order_violations: self.account_order_violations,
            invalid_published: self.expected.invalid,
            unexpected: self.unexpected + parked_unknown,
            undecodable: self.undecodable,
            bad_expectations: self.feed_errors,
            info_frames: self.info_frames,
            error_frames: self.error_frames,
            stream_errors: self.stream_errors,
            reconnects: self.reconnects,
            last_seq: self.last_seq,
            missing_sample,
            invalid_sample: self.invalid_sample.clone(),
            duplicated_sample,
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.close_reader();
    }
}

/// The feed's next expectation; never resolves without a feed (so `select!` skips it).
async fn recv_feed(feed: &mut Option<mpsc::Receiver<Published>>) -> Option<Published> {
    match feed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads messages until the stream ends, stamping each on receipt.
async fn read_messages(mut consumer: LeanConsumer, tx: mpsc::Sender<Read>) {
    loop {
        let read = match consumer.next().await {
            Ok(Some(Message::Binary(frame))) => Read::Message(Instant::now(), frame),
            Ok(Some(Message::Text(_))) => Read::Text,
            Ok(Some(Message::Close(_))) | Ok(None) => Read::End(None),
            Err(e) => Read::End(Some(e.to_string())),
        };
        let end = matches!(read, Read::End(_));
        if tx.send(read).await.is_err() || end {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::frame::{IdentityEvent, encode_error, encode_frame};

    fn published(frame: Vec<u8>, valid: bool) -> Published {
        Published {
            host: "h".into(),
            frame: Bytes::from(frame),
            published_at: Instant::now(),
            valid,
        }
    }

    fn identity(did: &str, time: &str) -> Vec<u8> {
        encode_frame(&Frame::Identity(IdentityEvent {
            seq: 1,
            did: did.into(),
            time: time.into(),
            handle: None,
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_event_must_be_an_event_and_invalid_garbage_is_only_counted() {
        let mut e = Expectations::new();
        assert!(matches!(
            e.add(published(b"garbage".to_vec(), true)),
            Err(CheckerError::UndecodableValidEvent(_))
        ));
        assert!(matches!(
            e.add(published(encode_error("X", None).unwrap(), true)),
            Err(CheckerError::NotAnEvent(_))
        ));
        e.add(published(b"garbage".to_vec(), false)).unwrap();
        e.add(published(identity("did:plc:a", "t1"), true)).unwrap();
        e.add(published(identity("did:plc:a", "t1"), true)).unwrap();
        e.add(published(identity("did:plc:a", "t2"), false))
            .unwrap();
        assert_eq!((e.valid_published(), e.invalid_published()), (2, 2));
        // Equal keys share a slot, one copy each; the DID is stored once.
        assert_eq!(e.slots.len(), 2);
        assert_eq!(e.positions.len(), 1);
    }
}
