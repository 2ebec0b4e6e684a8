//! ConsumerSession: one actor per `subscribeRepos` websocket.
//!
//! Owns its socket (the outgoing queue [`WsOut`] and the client's messages), its cursor and,
//! while it is behind the ring, its own event-log `Replay`. It serves the cursor rules of
//! PROTOCOL.md §1 ([`plan_start`]) and then loops: take the frames after its cursor from the
//! Broadcaster's ring, or from the log when the ring no longer holds them (a read of at most
//! `replay_batch_bytes` on the blocking pool; the next one is read while a batch is sent),
//! hand them to the socket, move the cursor.
//! When it is at the head it waits for the Broadcaster's next published head.
//!
//! What it never does: wait for, or be waited on by, another session; let anyone else close
//! its socket (lesson 11); skip an event (lesson 15: a consumer gets every event in seq
//! order, or `ConsumerTooSlow` and a close).
//!
//! Back-pressure and memory: a batch of frames goes to the socket as one entry of its queue,
//! framed for the wire but not copied ([`super::consumer_socket`]), holding permits of the socket's
//! byte budget (`session_buffer_bytes`) until the connection takes it, so a consumer that
//! stops reading holds at most that many bytes here (batches are cut to the budget; ring
//! frames and log blocks are shared `Bytes`). Waiting for permits *is* the "socket stops
//! draining" signal:
//! - **catching up** (not yet at the head since it connected): never closed for being behind,
//!   however far (lesson 14). Only a socket that drains nothing for four stall timeouts is
//!   treated as dead and closed.
//! - **live** (caught up once): a socket that drains nothing for `consumer_stall_timeout`, or a
//!   cursor more than `max_consumer_lag` seqs behind the head, gets the error frame
//!   `ConsumerTooSlow` and close 1008, sent by this session.
//!
//! Idle consumers are pinged every `ping_interval`; one that answers nothing for a whole
//! interval after a ping is closed as dead. Client messages are ignored (pings answered).
//! Shutdown: close 1001. Damaged records met in the log are skipped, counted and logged
//! (`Replay::skip_damaged`), and the session goes on after them.
//!
//! Everything runs in the actor's context (one task): the message stream is a
//! `StreamHandler`, the send loop a spawned future owned by the actor. Times are tokio
//! times, so the pure verdicts below are tested on a paused clock.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::broadcaster::RingRead;
use super::consumer_socket::{
    ClientMessage, CloseCode, CloseReason, Framed, ProtocolError, TrySend, WsIn, WsOut,
};
use super::firehose::{ConsumerEntry, ConsumerSlot, FirehoseShared};
use super::obs::{ActorObs, LogSample};
use crate::atproto::frame::{
    CONSUMER_TOO_SLOW, FUTURE_CURSOR, OUTDATED_CURSOR, encode_error, encode_info,
};
use crate::store::event_log::{EventLogError, LogRecord, Replay};

/// Sampling of the "closed as dead" lines (a network partition kills many at once).
static DEAD: LogSample = LogSample::new();

/// Frames taken from the ring per step (with `replay_batch_bytes` as the byte bound).
const RING_BATCH_FRAMES: usize = 512;
/// Records read from the log per step.
const LOG_BATCH_RECORDS: usize = 2048;
/// A catching-up socket that drains nothing for this many stall timeouts is dead.
const CATCH_UP_DEAD_FACTOR: u32 = 4;

// ------------------------------------------------------------------------------------------
// Pure rules

/// Where a session starts (PROTOCOL.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPlan {
    /// No cursor: live from the published head.
    Live,
    /// `cursor=0`: the whole retained window, then live.
    FromOldest,
    /// Every retained event with `seq > cursor` (a cursor older than the window is found
    /// by the log: `#info OutdatedCursor`, then from the oldest).
    After(u64),
    /// Above the durable head: error frame `FutureCursor`, close 1008.
    Future,
}

/// The cursor rule. `durable_head` is the event log's (the truth about what exists).
pub fn plan_start(cursor: Option<u64>, durable_head: u64) -> StartPlan {
    match cursor {
        None => StartPlan::Live,
        Some(c) if c > durable_head => StartPlan::Future,
        Some(0) => StartPlan::FromOldest,
        Some(c) => StartPlan::After(c),
    }
}

/// A live consumer further behind the head than `max_lag` seqs is too slow; one that is
/// still catching up never is (lesson 14).
pub fn too_far_behind(live: bool, head: u64, cursor: u64, max_lag: u64) -> bool {
    live && head.saturating_sub(cursor) > max_lag
}

/// What to do when an idle consumer's ping interval elapsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleVerdict {
    Ping,
    /// Pinged at least an interval ago and nothing heard since.
    Dead,
}

pub fn idle_verdict(
    now: Instant,
    pinged_at: Option<Instant>,
    last_heard: Instant,
    ping_interval: Duration,
) -> IdleVerdict {
    match pinged_at {
        Some(p) if last_heard < p && now.saturating_duration_since(p) >= ping_interval => {
            IdleVerdict::Dead
        }
        _ => IdleVerdict::Ping,
    }
}

/// How long a send may wait for the socket to drain before the session gives up.
pub fn drain_limit(live: bool, stall_timeout: Duration) -> Duration {
    if live {
        stall_timeout
    } else {
        stall_timeout.saturating_mul(CATCH_UP_DEAD_FACTOR)
    }
}

// ------------------------------------------------------------------------------------------
// Why a session ends

/// Why a session ended (the `reason` label of `rookery_firehose_sessions_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The client closed or the connection dropped.
    ClientGone,
    Shutdown,
    FutureCursor,
    TooSlowLag,
    TooSlowStall,
    /// No answer to a ping, or a catching-up socket that drains nothing.
    Dead,
    /// The event log failed under the session (I/O).
    LogFailed,
}

impl Exit {
    pub fn reason(self) -> &'static str {
        match self {
            Exit::ClientGone => "client_gone",
            Exit::Shutdown => "shutdown",
            Exit::FutureCursor => "future_cursor",
            Exit::TooSlowLag => "too_slow_lag",
            Exit::TooSlowStall => "too_slow_stall",
            Exit::Dead => "dead",
            Exit::LogFailed => "log_failed",
        }
    }
}

// ------------------------------------------------------------------------------------------
// Actor

/// One consumer's websocket session.
pub struct ConsumerSession {
    obs: ActorObs,
    shared: Arc<FirehoseShared>,
    /// Kept for the session's life: dropping it frees the consumer's place in the table.
    slot: ConsumerSlot,
    /// Used for pongs and for echoing a client's close; the send loop holds a clone.
    socket: WsOut,
    incoming: Option<WsIn>,
    requested_cursor: Option<u64>,
    /// When anything last came from the client (pongs included).
    last_heard: Rc<Cell<Instant>>,
    pong_pending: Rc<Cell<bool>>,
    exit: Option<Exit>,
}

impl ConsumerSession {
    /// Its `actor` label.
    pub const NAME: &'static str = "consumer_session";
    /// Nobody sends it messages: its inputs are its socket and two `watch`es.
    pub const MAILBOX: usize = 4;
    /// Largest frame a client may send: clients have nothing to say; this only bounds memory.
    pub const MAX_CLIENT_FRAME_BYTES: usize = 64 * 1024;

    pub fn new(
        shared: Arc<FirehoseShared>,
        slot: ConsumerSlot,
        socket: WsOut,
        incoming: WsIn,
        requested_cursor: Option<u64>,
    ) -> ConsumerSession {
        let obs = shared.actor_metrics.actor(Self::NAME, Self::MAILBOX);
        ConsumerSession {
            obs,
            shared,
            slot,
            socket,
            incoming: Some(incoming),
            requested_cursor,
            last_heard: Rc::new(Cell::new(Instant::now())),
            pong_pending: Rc::new(Cell::new(false)),
            exit: None,
        }
    }
}

impl Actor for ConsumerSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(Self::MAILBOX);
        if let Some(incoming) = self.incoming.take() {
            ctx.add_stream(incoming);
        }
        let pump = Pump {
            socket: self.socket.clone(),
            shared: Arc::clone(&self.shared),
            entry: Arc::clone(self.slot.entry()),
            head: self.shared.head.clone(),
            shutdown: self.shared.shutdown.clone(),
            last_heard: Rc::clone(&self.last_heard),
            obs: self.obs.clone(),
            cursor: 0,
            replay: None,
            reading: None,
            live: false,
            pinged_at: None,
        };
        let requested = self.requested_cursor;
        ctx.spawn(pump.run(requested).into_actor(self).map(|exit, act, ctx| {
            act.exit = Some(exit);
            ctx.stop();
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let exit = self.exit.unwrap_or(Exit::ClientGone);
        self.shared
            .metrics
            .sessions_closed
            .with_label_values(&[exit.reason()])
            .inc();
        let entry = self.slot.entry();
        tracing::debug!(
            consumer = entry.id,
            remote = %entry.remote,
            reason = exit.reason(),
            events_sent = entry.events_sent.load(Ordering::Relaxed),
            "consumer session ended"
        );
    }
}

impl StreamHandler<Result<ClientMessage, ProtocolError>> for ConsumerSession {
    fn handle(&mut self, msg: Result<ClientMessage, ProtocolError>, ctx: &mut Context<Self>) {
        let _guard = self.obs.enter("client_message");
        self.last_heard.set(Instant::now());
        match msg {
            // One pong in flight at most: a client that pings without reading cannot fill
            // the socket's queue (the send loop counts on room there).
            Ok(ClientMessage::Ping(payload)) if !self.pong_pending.get() => {
                self.pong_pending.set(true);
                let pending = Rc::clone(&self.pong_pending);
                let socket = self.socket.clone();
                ctx.spawn(
                    async move {
                        let _ = socket.pong(&payload).await;
                        pending.set(false);
                    }
                    .into_actor(self),
                );
            }
            Ok(ClientMessage::Close) => {
                // Echo the close, then end (the send loop ends with the actor).
                let socket = self.socket.clone();
                let limit = self.shared.settings.close_timeout;
                self.exit = Some(Exit::ClientGone);
                ctx.wait(
                    async move {
                        let _ = tokio::time::timeout(limit, socket.close(None)).await;
                    }
                    .into_actor(self)
                    .map(|_, _, ctx| ctx.stop()),
                );
            }
            // A protocol error (oversized or malformed client frame) ends the connection.
            Err(_) => {
                self.exit = Some(Exit::ClientGone);
                ctx.stop();
            }
            // A server ignores what the client sends (PROTOCOL.md §1).
            Ok(_) => {}
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.exit.is_none() {
            self.exit = Some(Exit::ClientGone);
        }
        ctx.stop();
    }
}

// ------------------------------------------------------------------------------------------
// The send loop

/// A log read on the blocking pool: the replay and the batch it read.
type LogRead = tokio::task::JoinHandle<(Replay, Result<Vec<LogRecord>, EventLogError>)>;

/// Where the next frames came from.
enum Next {
    /// Frames to send, and the cursor once they are sent (at least the last frame's seq).
    Frames(Vec<(u64, Bytes)>, u64),
    /// Nothing after the cursor yet.
    AtHead,
    /// Read again at once (the source changed, a damaged record was skipped...).
    Again,
    End(Exit),
}

/// Result of one send.
enum Sent {
    Ok,
    Exit(Exit),
}

/// Completes when [`super::firehose::Firehose::shutdown`] was called. A dropped handle
/// is not a shutdown: the sessions then end with the HTTP server, not by surprise.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Completes when the published head gets more than `max_lag` seqs past `cursor` (never,
/// if the Broadcaster is gone).
async fn lag_exceeded(mut head: watch::Receiver<u64>, cursor: u64, max_lag: u64) {
    loop {
        if too_far_behind(true, *head.borrow_and_update(), cursor, max_lag) {
            return;
        }
        if head.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The state of the send loop, owned by the spawned future.
struct Pump {
    socket: WsOut,
    shared: Arc<FirehoseShared>,
    entry: Arc<ConsumerEntry>,
    head: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    last_heard: Rc<Cell<Instant>>,
    obs: ActorObs,
    /// Last seq sent or passed.
    cursor: u64,
    /// Set while the session reads the log (behind the ring's floor).
    replay: Option<Replay>,
    /// The next log batch, read while the previous one is sent (the replay moved with it).
    reading: Option<LogRead>,
    live: bool,
    pinged_at: Option<Instant>,
}

impl Pump {
    async fn run(mut self, requested: Option<u64>) -> Exit {
        let durable = self.shared.reader.durable_head();
        match plan_start(requested, durable) {
            StartPlan::Future => {
                let message = format!("cursor is ahead of the stream (head {durable})");
                self.close_with_error(FUTURE_CURSOR, &message).await;
                return Exit::FutureCursor;
            }
            StartPlan::Live => {
                self.cursor = *self.head.borrow_and_update();
                self.set_live();
            }
            // Replays start in the log even when the ring could serve them: the log alone
            // knows the retained window (the ring may still hold frames retention deleted).
            // The first batch hands over to the ring if it covers the rest.
            StartPlan::FromOldest => {
                self.cursor = 0;
                self.replay = Some(self.shared.reader.read_from_oldest());
            }
            StartPlan::After(c) => {
                self.cursor = c;
                match self.shared.reader.read_after(c) {
                    Ok(replay) => self.replay = Some(replay),
                    Err(EventLogError::Outdated { oldest_seq }) => {
                        if let Next::End(exit) = self.outdated(oldest_seq).await {
                            return exit;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "consumer could not open a log replay");
                        return Exit::LogFailed;
                    }
                }
            }
        }
        self.entry.cursor.store(self.cursor, Ordering::Relaxed);
        loop {
            if *self.shutdown.borrow() {
                return self.close_away().await;
            }
            let next = if self.replay.is_some() || self.reading.is_some() {
                self.next_from_log().await
            } else {
                self.next_from_ring().await
            };
            match next {
                Next::Frames(frames, passed) => {
                    if let Sent::Exit(exit) = self.send_frames(frames).await {
                        return exit;
                    }
                    // Masked records after the last frame were passed too.
                    self.cursor = self.cursor.max(passed);
                    if let Some(exit) = self.after_batch().await {
                        return exit;
                    }
                }
                Next::Again => {}
                Next::AtHead => {
                    if let Some(exit) = self.wait_for_head().await {
                        return exit;
                    }
                }
                Next::End(exit) => return exit,
            }
        }
    }

    fn set_live(&mut self) {
        if !self.live {
            self.live = true;
            self.entry.live.store(true, Ordering::Relaxed);
        }
    }

    /// Frames after the cursor from the ring; below its floor, opens a log replay.
    async fn next_from_ring(&mut self) -> Next {
        // The ring's head is read under the same lock as its frames: a head read later
        // could be past frames this read did not see.
        let (read, head) = {
            let ring = self.shared.ring.read();
            let read = ring.read_after(
                self.cursor,
                RING_BATCH_FRAMES,
                self.shared.settings.replay_batch_bytes,
            );
            (read, ring.head())
        };
        match read {
            RingRead::Frames(frames) if frames.is_empty() => {
                if self.cursor >= head {
                    Next::AtHead
                } else {
                    // The ring's head moved past us with no frame (masked records).
                    self.cursor = head;
                    Next::Again
                }
            }
            RingRead::Frames(frames) => {
                let last = frames.last().map_or(self.cursor, |(seq, _)| *seq);
                Next::Frames(frames, last)
            }
            RingRead::Behind => {
                let max_lag = self.shared.settings.max_consumer_lag;
                if too_far_behind(self.live, head, self.cursor, max_lag) {
                    return Next::End(self.too_slow(Exit::TooSlowLag).await);
                }
                match self.shared.reader.read_after(self.cursor) {
                    Ok(replay) => {
                        self.replay = Some(replay);
                        Next::Again
                    }
                    Err(EventLogError::Outdated { oldest_seq }) => self.outdated(oldest_seq).await,
                    Err(e) => {
                        tracing::error!(error = %e, "consumer could not open a log replay");
                        Next::End(Exit::LogFailed)
                    }
                }
            }
        }
    }

    /// Sends `#info OutdatedCursor` and continues from the oldest retained event.
    async fn outdated(&mut self, oldest_seq: u64) -> Next {
        self.shared.metrics.outdated_cursors.inc();
        let message = format!("cursor is older than the replay window; oldest seq is {oldest_seq}");
        let frame = match encode_info(OUTDATED_CURSOR, Some(&message)) {
            Ok(frame) => Bytes::from(frame),
            Err(_) => return Next::End(Exit::LogFailed),
        };
        if let Sent::Exit(exit) = self.send(Framed::binary(std::iter::once(&frame))).await {
            return Next::End(exit);
        }
        self.replay = Some(self.shared.reader.read_from_oldest());
        Next::Again
    }

    /// Reads the replay's next batch on the blocking pool.
    fn start_read(&self, mut replay: Replay) -> LogRead {
        let bytes = self.shared.settings.replay_batch_bytes;
        tokio::task::spawn_blocking(move || {
            let batch = replay.next_batch(LOG_BATCH_RECORDS, bytes);
            (replay, batch)
        })
    }

    /// The next batch from the session's log replay (read ahead, or read now).
    async fn next_from_log(&mut self) -> Next {
        let read = match (self.reading.take(), self.replay.take()) {
            (Some(read), _) => read,
            (None, Some(replay)) => self.start_read(replay),
            (None, None) => return Next::Again,
        };
        let (mut replay, batch) = match read.await {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(error = %e, "consumer log read failed");
                return Next::End(Exit::LogFailed);
            }
        };
        match batch {
            Ok(records) => {
                let frames = self.fresh(records);
                let passed = self.cursor.max(replay.cursor());
                // Back to the ring as soon as it holds everything after the replay.
                let behind_ring = passed < self.shared.ring.read().floor();
                if frames.is_empty() {
                    self.cursor = passed;
                    if behind_ring {
                        // The log has nothing newer yet and the ring does not cover us:
                        // wait for the next head instead of spinning.
                        self.replay = Some(replay);
                        return Next::AtHead;
                    }
                    return Next::Again;
                }
                if behind_ring {
                    // The next read runs while this batch is sent, so the socket never
                    // waits for the disk nor for the hop to the blocking pool and back.
                    self.reading = Some(self.start_read(replay));
                }
                Next::Frames(frames, passed)
            }
            Err(EventLogError::Corrupt {
                segment_first_seq,
                offset,
            }) => match replay.skip_damaged(segment_first_seq, offset) {
                Some(skip) => {
                    self.shared.metrics.damaged_skips.inc();
                    tracing::error!(
                        consumer = self.entry.id,
                        segment_first_seq,
                        offset,
                        skipped_after = skip.cursor_before,
                        resumed_after = skip.cursor_after,
                        "damaged event log record skipped during replay"
                    );
                    self.cursor = self.cursor.max(skip.cursor_after);
                    self.replay = Some(replay);
                    Next::Again
                }
                None => {
                    tracing::error!(
                        segment_first_seq,
                        offset,
                        "damaged record could not be skipped"
                    );
                    Next::End(Exit::LogFailed)
                }
            },
            Err(EventLogError::Outdated { oldest_seq }) => self.outdated(oldest_seq).await,
            Err(e) => {
                tracing::error!(error = %e, "consumer log read failed");
                Next::End(Exit::LogFailed)
            }
        }
    }

    /// Record bodies after the cursor (never a seq at or below it: no duplicate).
    fn fresh(&self, records: Vec<LogRecord>) -> Vec<(u64, Bytes)> {
        records
            .into_iter()
            .filter(|r| r.seq > self.cursor)
            .map(|r| (r.seq, r.body))
            .collect()
    }

    async fn send_frames(&mut self, frames: Vec<(u64, Bytes)>) -> Sent {
        let mode = if self.live { "live" } else { "replay" };
        // Never a seq at or below the cursor: no duplicate.
        let first = frames.partition_point(|(seq, _)| *seq <= self.cursor);
        let mut rest = &frames[first..];
        // A quarter of the budget per entry: room frees while the socket drains, so the next
        // batch can be queued before the previous one is all gone.
        let entry_bytes = (self.socket.budget_bytes() / 4).max(1);
        let (mut sent, mut bytes) = (0u64, 0u64);
        let mut outcome = Sent::Ok;
        while !rest.is_empty() {
            // One queue entry per group of at most `entry_bytes` (or one bigger frame).
            let mut n = 0;
            let mut group_bytes = 0;
            while let Some((_, frame)) = rest.get(n) {
                if n > 0 && group_bytes + frame.len() > entry_bytes {
                    break;
                }
                group_bytes += frame.len();
                n += 1;
            }
            let (group, tail) = rest.split_at(n);
            if let Sent::Exit(exit) = self
                .send(Framed::binary(group.iter().map(|(_, f)| f)))
                .await
            {
                outcome = Sent::Exit(exit);
                break;
            }
            let last = group.last().map_or(self.cursor, |(seq, _)| *seq);
            self.cursor = last;
            self.entry.cursor.store(last, Ordering::Relaxed);
            self.entry
                .events_sent
                .fetch_add(n as u64, Ordering::Relaxed);
            sent += n as u64;
            bytes += group_bytes as u64;
            rest = tail;
        }
        // Counted once per batch: a labelled counter costs a hash of its labels per lookup.
        let metrics = &self.shared.metrics;
        metrics.frames_sent.with_label_values(&[mode]).inc_by(sent);
        metrics.bytes_sent.with_label_values(&[mode]).inc_by(bytes);
        if matches!(outcome, Sent::Ok) {
            self.pinged_at = None;
        }
        outcome
    }

    /// Queues framed frames once the socket's budget has room for them. A socket that does
    /// not drain in time ends the session (too slow when live, dead when catching up).
    async fn send(&mut self, framed: Framed) -> Sent {
        // Fast path, the common case of a draining socket: room now, so no timer and no
        // select.
        let framed = match self.socket.try_send(framed) {
            TrySend::Sent => return Sent::Ok,
            TrySend::Closed => return Sent::Exit(Exit::ClientGone),
            TrySend::Full(framed) => framed,
        };
        let socket = self.socket.clone();
        let send = async move { socket.send(framed).await };
        let limit = drain_limit(self.live, self.shared.settings.consumer_stall_timeout);
        let mut shutdown = self.shutdown.clone();
        // While a live consumer's socket is blocked the head keeps moving: the lag rule
        // applies now, not only after the send.
        let lagging = lag_exceeded(
            self.head.clone(),
            self.cursor,
            self.shared.settings.max_consumer_lag,
        );
        let live = self.live;
        tokio::select! {
            _ = lagging, if live => Sent::Exit(self.too_slow(Exit::TooSlowLag).await),
            sent = tokio::time::timeout(limit, send) => match sent {
                Ok(Ok(())) => Sent::Ok,
                Ok(Err(_)) => Sent::Exit(Exit::ClientGone),
                Err(_) if self.live => Sent::Exit(self.too_slow(Exit::TooSlowStall).await),
                Err(_) => {
                    if let Some(seen) = DEAD.hit() {
                        tracing::info!(consumer = self.entry.id, seen, "catching-up consumer drains nothing; closed as dead");
                    }
                    Sent::Exit(Exit::Dead)
                }
            },
            _ = shutdown_requested(&mut shutdown) => Sent::Exit(self.close_away().await),
        }
    }

    /// After a batch: record the lag, and apply the live lag rule.
    async fn after_batch(&mut self) -> Option<Exit> {
        let _guard = self.obs.enter("batch_sent");
        let head = *self.head.borrow();
        let lag = head.saturating_sub(self.cursor);
        self.entry.lag.store(lag, Ordering::Relaxed);
        if self.live {
            self.shared.metrics.lag.observe(lag as f64);
        }
        if too_far_behind(
            self.live,
            head,
            self.cursor,
            self.shared.settings.max_consumer_lag,
        ) {
            return Some(self.too_slow(Exit::TooSlowLag).await);
        }
        None
    }

    /// At the head: live from now on; wait for the next head, pinging while idle.
    async fn wait_for_head(&mut self) -> Option<Exit> {
        self.set_live();
        self.entry.lag.store(0, Ordering::Relaxed);
        let interval = self.shared.settings.ping_interval;
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            changed = self.head.changed() => {
                if changed.is_err() {
                    // The Broadcaster is gone: the relay is stopping.
                    return Some(self.close_away().await);
                }
                None
            }
            _ = shutdown_requested(&mut shutdown) => Some(self.close_away().await),
            _ = tokio::time::sleep(interval) => {
                let now = Instant::now();
                match idle_verdict(now, self.pinged_at, self.last_heard.get(), interval) {
                    IdleVerdict::Dead => {
                        if let Some(seen) = DEAD.hit() {
                            tracing::info!(consumer = self.entry.id, seen, "consumer answered no ping; closed as dead");
                        }
                        Some(Exit::Dead)
                    }
                    IdleVerdict::Ping => {
                        if self.pinged_at.is_none_or(|p| self.last_heard.get() >= p) {
                            self.pinged_at = Some(now);
                        }
                        match tokio::time::timeout(interval, self.socket.ping(b"")).await {
                            Ok(Ok(())) => None,
                            Ok(Err(_)) => Some(Exit::ClientGone),
                            Err(_) => Some(Exit::Dead),
                        }
                    }
                }
            }
        }
    }

    /// `ConsumerTooSlow`, counted by cause, then close 1008.
    async fn too_slow(&mut self, exit: Exit) -> Exit {
        let cause = if exit == Exit::TooSlowStall {
            "stall"
        } else {
            "lag"
        };
        self.shared
            .metrics
            .too_slow
            .with_label_values(&[cause])
            .inc();
        let head = *self.head.borrow();
        // Sampled: a slow-consumer storm closes hundreds at once; the metric counts each.
        static TOO_SLOW: LogSample = LogSample::new();
        if let Some(seen) = TOO_SLOW.hit() {
            tracing::info!(
                consumer = self.entry.id,
                remote = %self.entry.remote,
                cursor = self.cursor,
                head,
                cause,
                seen,
                "consumer too slow; closing"
            );
        }
        let message = match exit {
            Exit::TooSlowStall => "the connection stopped draining",
            _ => "the consumer fell too far behind the live stream",
        };
        self.close_with_error(CONSUMER_TOO_SLOW, message).await;
        exit
    }

    /// Error frame, then close 1008 with the error name (as the reference PDS does). Both
    /// bypass the byte budget and are bounded in time: a stuck socket gets dropped.
    async fn close_with_error(&mut self, error: &str, message: &str) {
        let limit = self.shared.settings.close_timeout;
        if let Ok(frame) = encode_error(error, Some(message))
            && !matches!(
                tokio::time::timeout(limit, self.socket.binary_unbudgeted(frame.into())).await,
                Ok(Ok(()))
            )
        {
            return;
        }
        let reason = CloseReason {
            code: CloseCode::Policy,
            description: Some(error.to_string()),
        };
        let _ = tokio::time::timeout(limit, self.socket.close(Some(reason))).await;
    }

    /// Close 1001 ("going away") for a relay shutdown.
    async fn close_away(&mut self) -> Exit {
        let limit = self.shared.settings.close_timeout;
        let reason = CloseReason {
            code: CloseCode::Away,
            description: Some("relay shutting down".to_string()),
        };
        let _ = tokio::time::timeout(limit, self.socket.close(Some(reason))).await;
        Exit::Shutdown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_rules() {
        assert_eq!(plan_start(None, 0), StartPlan::Live);
        assert_eq!(plan_start(None, 50), StartPlan::Live);
        assert_eq!(plan_start(Some(0), 0), StartPlan::FromOldest);
        assert_eq!(plan_start(Some(0), 50), StartPlan::FromOldest);
        assert_eq!(plan_start(Some(1), 50), StartPlan::After(1));
        assert_eq!(plan_start(Some(50), 50), StartPlan::After(50));
        assert_eq!(plan_start(Some(51), 50), StartPlan::Future);
        assert_eq!(plan_start(Some(1), 0), StartPlan::Future);
        assert_eq!(plan_start(Some(u64::MAX), 50), StartPlan::Future);
    }

    #[test]
    fn only_live_consumers_are_too_far_behind() {
        assert!(!too_far_behind(false, 1_000_000, 0, 10));
        assert!(!too_far_behind(true, 110, 100, 10));
        assert!(too_far_behind(true, 111, 100, 10));
        // A cursor ahead of the published head (read from the log) is not behind.
        assert!(!too_far_behind(true, 100, 120, 10));
    }

    #[test]
    fn drain_limits() {
        let stall = Duration::from_secs(30);
        assert_eq!(drain_limit(true, stall), stall);
        assert_eq!(drain_limit(false, stall), Duration::from_secs(120));
        assert_eq!(drain_limit(false, Duration::MAX), Duration::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_consumers_are_pinged_and_silent_ones_declared_dead() {
        let interval = Duration::from_secs(30);
        let t0 = Instant::now();
        // Never pinged: ping.
        assert_eq!(idle_verdict(t0, None, t0, interval), IdleVerdict::Ping);
        tokio::time::advance(interval).await;
        let t1 = Instant::now();
        // Pinged at t0, heard nothing since, a whole interval passed: dead.
        assert_eq!(
            idle_verdict(t1, Some(t0), t0 - Duration::from_secs(1), interval),
            IdleVerdict::Dead
        );
        // Heard after the ping (a pong): ping again.
        assert_eq!(
            idle_verdict(t1, Some(t0), t0 + Duration::from_secs(1), interval),
            IdleVerdict::Ping
        );
        // Not a whole interval yet: ping (not dead).
        tokio::time::advance(Duration::from_secs(10)).await;
        let t2 = Instant::now();
        assert_eq!(idle_verdict(t2, Some(t1), t0, interval), IdleVerdict::Ping);
    }
}
