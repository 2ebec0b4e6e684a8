//! Subscriber: one upstream host's `subscribeRepos` websocket, read by one actix actor.
//!
//! What it owns: the socket (awc, `ws://` or `wss://` over rustls on ring), the per-socket
//! seq check, the host's rate limiter and its connection's cursor tracker
//! (`HostCursor`). What it never does: decode a body (only `frame::peek_event`: header,
//! seq, DID), validate, write to Postgres, retry (its HostSupervisor decides what follows an
//! exit), or drop an event because the host is fast: over the rate limit, or while the
//! owning shard's queue is full, it stops reading its socket (`ctx.wait`), so the upstream
//! and TCP buffer the excess (delay, never drop).
//!
//! Lessons prevented: 1 (it dials only once its supervisor handed it a handshake permit),
//! 3 (an upgrade whose `Server` header names `atproto-relay` ends the connection with
//! `RelayDetected` before any frame is read), 4 (the `FutureCursor` error frame is reported
//! as such, so the supervisor resets the cursor), 9 (an actor on an arbiter, no thread),
//! 10 (every frame holds a byte-budget permit until it is durable or dropped; a 5 MB cap on
//! reassembled messages), 11 (frames move as owned `Bytes`; the socket is closed only here).
//!
//! The exit is reported by the exit link it owns: whatever ends the actor (a close, an
//! error, a kill, a panic), dropping the link sends the notice.
use std::sync::Arc;
use std::time::Duration;

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use actix_ws::Item;
use awc::error::WsProtocolError;
use awc::ws::{CloseCode, CloseReason, Frame, Message as WsMessage};
use bytes::{Bytes, BytesMut};
use futures_util::future::{FutureExt, Shared};
use futures_util::stream::StreamExt;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::host_supervisor::{Connector, DialRequest, ExitLink};
use super::obs::{ActorMetrics, ActorObs};
use super::sequencer::{ByteBudget, EventKind};
use super::shard_router::{ShardRouter, UpstreamFrame};
use super::supervision::SubscriberExit;
use super::upstream_cursor::HostCursor;
use super::write_behind::PendingWrites;
use crate::atproto::frame::{self as fr, MAX_FRAME_BYTES};

// ------------------------------------------------------------------------------------------
// Settings, counters, observable state

/// Keepalive and dial settings of every Subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberSettings {
    /// Ping an upstream that sent nothing for this long (indigo: 30 s).
    pub ping_interval: Duration,
    /// Give up on an upstream silent for this long (indigo: after 4 failed pings).
    pub dead_after: Duration,
    /// DNS, TCP, TLS and upgrade together.
    pub handshake_timeout: Duration,
    /// Largest reassembled websocket message (PROTOCOL.md §1: 5,000,000 bytes).
    pub max_message_bytes: usize,
}

impl Default for SubscriberSettings {
    fn default() -> Self {
        SubscriberSettings {
            ping_interval: Duration::from_secs(30),
            dead_after: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(15),
            max_message_bytes: MAX_FRAME_BYTES,
        }
    }
}

/// Frames received by type and frames a Subscriber did not route, by bounded reason (no
/// per-host labels).
#[derive(Clone, Debug)]
pub struct SubscriberMetrics {
    received: IntCounterVec,
    skipped: IntCounterVec,
}

impl SubscriberMetrics {
    pub fn register(registry: &Registry) -> Result<SubscriberMetrics, prometheus::Error> {
        let skipped = IntCounterVec::new(
            Opts::new(
                "rookery_subscriber_frames_skipped_total",
                "Upstream frames not routed to a shard, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(skipped.clone()))?;
        let received = IntCounterVec::new(
            Opts::new(
                "rookery_subscriber_frames_received_total",
                "Upstream websocket messages received, by frame type (commit, sync, identity, \
                 account, info, error, other, undecodable)",
            ),
            &["type"],
        )?;
        registry.register(Box::new(received.clone()))?;
        Ok(SubscriberMetrics { received, skipped })
    }

    /// Frames received so far of `frame_type`.
    pub fn received(&self, frame_type: &str) -> u64 {
        self.received.with_label_values(&[frame_type]).get()
    }

    /// Frames skipped so far for `reason`.
    pub fn skipped(&self, reason: &str) -> u64 {
        self.skipped.with_label_values(&[reason]).get()
    }
}

/// What one connection did (logged at exit; tests read it through [`SubscriberProbe`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriberState {
    pub routed: u64,
    pub non_increasing: u64,
    pub skipped: u64,
    pub rate_limited: u64,
    pub last_seq: Option<u64>,
}

/// A shared view of a running Subscriber's state (tests, the admin API later).
pub type SubscriberProbe = Arc<std::sync::Mutex<SubscriberState>>;

// ------------------------------------------------------------------------------------------
// Connector

/// What every Subscriber shares: the shards, the byte budget, the cursor map.
#[derive(Clone)]
pub struct SubscriberDeps {
    pub router: ShardRouter,
    pub budget: ByteBudget,
    pub pending: PendingWrites,
    pub settings: SubscriberSettings,
    pub actor_metrics: ActorMetrics,
    pub metrics: SubscriberMetrics,
    /// When set, each new connection's state is published here by hostname (tests).
    pub probes: Option<Arc<std::sync::Mutex<std::collections::HashMap<String, SubscriberProbe>>>>,
    /// TLS of `wss://` dials (`upstream_tls::UpstreamTls::websocket_config`).
    pub tls: Arc<rustls::ClientConfig>,
}

/// The production [`Connector`]: dials with awc and starts a [`Subscriber`] on the current
/// arbiter. The crypto provider must be installed once at start
/// (`rustls::crypto::ring::default_provider().install_default()`).
#[derive(Clone)]
pub struct AwcConnector {
    deps: SubscriberDeps,
}

impl AwcConnector {
    pub fn new(deps: SubscriberDeps) -> AwcConnector {
        AwcConnector { deps }
    }
}

impl Connector for AwcConnector {
    fn connect(&self, request: DialRequest) {
        actix_rt::spawn(dial(self.deps.clone(), request));
    }
}

/// `ws[s]://host/xrpc/com.atproto.sync.subscribeRepos[?cursor=N]`.
pub fn subscribe_url(hostname: &str, no_ssl: bool, cursor: Option<i64>) -> String {
    let scheme = if no_ssl { "ws" } else { "wss" };
    match cursor {
        Some(c) => format!("{scheme}://{hostname}/xrpc/com.atproto.sync.subscribeRepos?cursor={c}"),
        None => format!("{scheme}://{hostname}/xrpc/com.atproto.sync.subscribeRepos"),
    }
}

/// The handshake, then the actor. The link (and with it the handshake permit) is dropped on
/// every early return, which reports the exit.
async fn dial(deps: SubscriberDeps, request: DialRequest) {
    let DialRequest {
        host_id,
        hostname,
        cursor,
        catching_up,
        no_ssl,
        relay_allowed,
        limits,
        mut stop,
        mut link,
        ..
    } = request;
    let url = subscribe_url(&hostname, no_ssl, cursor);
    let client = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::clone(&deps.tls)))
        .timeout(deps.settings.handshake_timeout)
        .finish();
    let connect = client
        .ws(url)
        .max_frame_size(deps.settings.max_message_bytes)
        .connect();
    let result = tokio::select! {
        r = tokio::time::timeout(deps.settings.handshake_timeout, connect) => r,
        exit = &mut stop => {
            link.set_outcome(exit.unwrap_or(SubscriberExit::Shutdown));
            return;
        }
    };
    let (response, framed) = match result {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            tracing::debug!(host = %hostname, error = %e, "dial failed");
            return; // DialFailed
        }
        Err(_) => {
            tracing::debug!(host = %hostname, "handshake timed out");
            return;
        }
    };
    link.handshake_done();
    let server = response
        .headers()
        .get(awc::http::header::SERVER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if is_relay_server(server) && !relay_allowed {
        tracing::warn!(host = %hostname, server, "upstream is a relay");
        link.set_outcome(SubscriberExit::RelayDetected);
        return;
    }
    let probe = SubscriberProbe::default();
    if let Some(probes) = &deps.probes {
        probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hostname.to_string(), Arc::clone(&probe));
    }
    let obs = deps
        .actor_metrics
        .actor(Subscriber::NAME, Subscriber::MAILBOX);
    let now = Instant::now();
    let initial = *limits.borrow();
    let (sink, stream) = framed.split();
    Subscriber::create(move |ctx| {
        ctx.add_stream(stream);
        let sink: WsSink = Box::pin(sink);
        let sink = SinkWrite::new(sink, ctx);
        Subscriber {
            obs,
            hostname,
            no_ssl,
            catching_up,
            cursor: HostCursor::new(host_id, cursor.unwrap_or(0), deps.pending.clone()),
            router: deps.router.clone(),
            budget: deps.budget.clone(),
            metrics: deps.metrics.clone(),
            settings: deps.settings,
            seqs: SeqCheck::default(),
            limiter: RateLimiter::new(initial, now),
            limits,
            stop: stop.shared(),
            link,
            sink,
            partial: None,
            last_heard: now,
            state: SubscriberState::default(),
            probe,
        }
    });
}

// ------------------------------------------------------------------------------------------
// Actor

/// The write half of the socket, type-erased (pongs, pings and the close frame).
type WsSink = std::pin::Pin<Box<dyn futures_util::Sink<WsMessage, Error = WsProtocolError>>>;

/// One host connection.
pub struct Subscriber {
    obs: ActorObs,
    hostname: Arc<str>,
    no_ssl: bool,
    /// See [`UpstreamFrame::catching_up`].
    catching_up: bool,
    cursor: HostCursor,
    router: ShardRouter,
    budget: ByteBudget,
    metrics: SubscriberMetrics,
    settings: SubscriberSettings,
    seqs: SeqCheck,
    limiter: RateLimiter,
    limits: watch::Receiver<HostLimits>,
    /// The supervisor's stop, shared: the reader awaits it, and so does every back-pressure
    /// wait, so a kill or ban takes effect even while the actor waits on a full shard.
    stop: Shared<oneshot::Receiver<SubscriberExit>>,
    link: ExitLink,
    sink: SinkWrite<WsMessage, WsSink>,
    /// A message arriving in continuation frames.
    partial: Option<BytesMut>,
    last_heard: Instant,
    state: SubscriberState,
    probe: SubscriberProbe,
}

impl Subscriber {
    /// Its `actor` label.
    pub const NAME: &'static str = "subscriber";
    /// Nothing is sent to a Subscriber on a data path (it reads its socket); the supervisor
    /// controls it through its stop channel. A small mailbox suffices for future probes.
    pub const MAILBOX: usize = 4;

    fn skip(&mut self, reason: &'static str) {
        self.state.skipped += 1;
        self.metrics.skipped.with_label_values(&[reason]).inc();
    }

    fn publish(&self) {
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = self.state;
    }

    fn fail(&mut self, reason: &'static str, ctx: &mut Context<Self>) {
        tracing::info!(host = %self.hostname, reason, "upstream connection ends");
        self.skip(reason);
        ctx.stop();
    }

    /// One whole websocket message.
    fn on_message(&mut self, msg: Bytes, ctx: &mut Context<Self>) {
        let peeked = fr::peek_event(&msg);
        let frame_type = match &peeked {
            Err(_) => "undecodable",
            Ok(p) if p.header.op == -1 => "error",
            Ok(p) => match p.header.t {
                Some("#commit") => "commit",
                Some("#sync") => "sync",
                Some("#identity") => "identity",
                Some("#account") => "account",
                Some("#info") => "info",
                _ => "other",
            },
        };
        self.metrics.received.with_label_values(&[frame_type]).inc();
        let (kind, seq, did) = match peeked {
            // Bad framing or CBOR is fatal for the connection (PROTOCOL.md §1).
            Err(_) => return self.fail("bad_frame", ctx),
            Ok(peek) if peek.header.op == -1 => {
                let error = match fr::decode_frame(&msg) {
                    Ok(fr::Frame::Error(e)) => e.error,
                    _ => String::new(),
                };
                if error == "FutureCursor" {
                    self.link.set_outcome(SubscriberExit::FutureCursor);
                }
                tracing::info!(host = %self.hostname, error, "upstream error frame");
                return self.fail("error_frame", ctx);
            }
            Ok(peek) if peek.header.op != 1 => return self.skip("unknown_op"),
            Ok(peek) => (
                peek.header.t.and_then(EventKind::from_frame_type),
                peek.seq,
                peek.did.map(str::to_string),
            ),
        };
        let Some(seq) = seq else {
            // `#info` and other frames without a seq: nothing for the cursor.
            return self.skip(if kind.is_some() {
                "no_seq"
            } else {
                "info_or_unknown"
            });
        };
        if !self.seqs.accept(seq) {
            self.state.non_increasing += 1;
            return self.skip("non_increasing_seq");
        }
        self.state.last_seq = Some(seq);
        // A checked `u64` that fits `i64` (peek_event guarantees it).
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let mark = self.cursor.begin(seq);
        let (Some(kind), Some(did)) = (kind, did) else {
            // Skipped on purpose: the cursor may pass it.
            mark.complete();
            return self.skip(if kind.is_none() {
                "unknown_type"
            } else {
                "no_did"
            });
        };
        let now = Instant::now();
        if self.limits.has_changed().unwrap_or(false) {
            let limits = *self.limits.borrow_and_update();
            self.limiter.set_limits(limits, now);
        }
        let until = self.limiter.admit(now).err();
        if until.is_some() {
            self.state.rate_limited += 1;
        }
        let router = self.router.clone();
        let budget = self.budget.clone();
        let hostname = Arc::clone(&self.hostname);
        let no_ssl = self.no_ssl;
        let catching_up = self.catching_up;
        let stop = self.stop.clone();
        // While this runs the actor reads nothing: the rate limit and a full shard queue
        // delay the upstream, they never drop (lesson 10). A stop abandons the frame's mark,
        // so the cursor stays below it and the next connection asks for it again.
        let deliver = async move {
            if let Some(until) = until {
                tokio::time::sleep_until(until).await;
            }
            let permit = budget.acquire(msg.len()).await.map_err(|_| None)?;
            router
                .route(UpstreamFrame {
                    hostname,
                    no_ssl,
                    catching_up,
                    did,
                    kind,
                    frame: msg,
                    cursor: mark,
                    permit,
                })
                .await
                .map_err(|_| None)
        };
        ctx.wait(
            async move {
                tokio::select! {
                    biased;
                    exit = stop => Err(Some(exit.unwrap_or(SubscriberExit::Shutdown))),
                    done = deliver => done,
                }
            }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(()) => {
                    act.state.routed += 1;
                    act.last_heard = Instant::now();
                    act.link.delivered();
                    act.publish();
                }
                Err(Some(exit)) => act.stop_with(exit, ctx),
                Err(None) => {
                    act.link.set_outcome(SubscriberExit::Shutdown);
                    act.fail("ingest_stopped", ctx);
                }
            }),
        );
    }

    /// The supervisor ended this connection: close it politely and report `exit`.
    fn stop_with(&mut self, exit: SubscriberExit, ctx: &mut Context<Self>) {
        self.link.set_outcome(exit);
        let _ = self.sink.write(WsMessage::Close(Some(CloseReason {
            code: CloseCode::Normal,
            description: None,
        })));
        ctx.stop();
    }

    fn keepalive(&mut self, ctx: &mut Context<Self>) {
        let idle = self.last_heard.elapsed();
        if idle >= self.settings.dead_after {
            return self.fail("dead_upstream", ctx);
        }
        if self.cursor.has_abandoned() {
            // A shard gave up on an event (its account row could not be had in time): only
            // a new connection from the cursor below it gets it again. Without this the
            // host's cursor would stay there until the connection dropped for another reason.
            return self.fail("resync_abandoned", ctx);
        }
        if idle >= self.settings.ping_interval {
            let _ = self.sink.write(WsMessage::Ping(Bytes::new()));
        }
    }
}

impl Actor for Subscriber {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(Self::MAILBOX);
        ctx.spawn(self.stop.clone().into_actor(self).map(|exit, act, ctx| {
            // A supervisor that went away stops its children too.
            act.stop_with(exit.unwrap_or(SubscriberExit::Shutdown), ctx);
        }));
        let every = self.settings.ping_interval.min(self.settings.dead_after) / 2;
        ctx.run_interval(every.max(Duration::from_millis(10)), |act, ctx| {
            act.keepalive(ctx)
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.publish();
        // What this connection made durable so far: the next dial resumes from it (marks
        // still in flight only raise the stored cursor later; a lower cursor replays a few
        // events, which the rev check drops).
        self.link.set_cursor(self.cursor.committed());
        tracing::debug!(host = %self.hostname, state = ?self.state, "subscriber stopped");
        // Dropping `self.link` with the actor reports the exit.
    }
}

impl WriteHandler<WsProtocolError> for Subscriber {}

impl StreamHandler<Result<Frame, WsProtocolError>> for Subscriber {
    fn handle(&mut self, item: Result<Frame, WsProtocolError>, ctx: &mut Context<Self>) {
        let _guard = self.obs.enter("frame");
        self.last_heard = Instant::now();
        let frame = match item {
            Ok(frame) => frame,
            // Oversized frames, bad masking, a reset socket: the connection is over.
            Err(_) => return self.fail("protocol_error", ctx),
        };
        match frame {
            Frame::Binary(msg) => self.on_message(msg, ctx),
            Frame::Continuation(Item::FirstBinary(part)) => {
                let mut buf = BytesMut::with_capacity(part.len());
                buf.extend_from_slice(&part);
                self.partial = Some(buf);
            }
            Frame::Continuation(Item::Continue(part)) => self.continuation(part, false, ctx),
            Frame::Continuation(Item::Last(part)) => self.continuation(part, true, ctx),
            // A text message is fatal (indigo); so is one split into text continuations.
            Frame::Text(_) | Frame::Continuation(Item::FirstText(_)) => {
                self.fail("text_frame", ctx)
            }
            Frame::Ping(payload) => {
                let _ = self.sink.write(WsMessage::Pong(payload));
            }
            Frame::Pong(_) => {}
            Frame::Close(_) => ctx.stop(),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Subscriber {
    /// One continuation part; the whole message is handled after the last one.
    fn continuation(&mut self, part: Bytes, last: bool, ctx: &mut Context<Self>) {
        let Some(buf) = self.partial.as_mut() else {
            return self.fail("bad_continuation", ctx);
        };
        if buf.len() + part.len() > self.settings.max_message_bytes {
            return self.fail("message_too_large", ctx);
        }
        buf.extend_from_slice(&part);
        if last && let Some(buf) = self.partial.take() {
            self.on_message(buf.freeze(), ctx);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Pure pieces (table-tested below, no actors)

/// The per-socket seq rule (PROTOCOL.md §1, §7): an upstream seq must strictly increase on
/// one connection; a frame whose seq does not is dropped (counted), never routed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqCheck {
    last: Option<u64>,
}

impl SeqCheck {
    /// True (and remembered) when `seq` is above every seq accepted on this socket.
    pub fn accept(&mut self, seq: u64) -> bool {
        if self.last.is_some_and(|last| seq <= last) {
            return false;
        }
        self.last = Some(seq);
        true
    }

    pub fn last(&self) -> Option<u64> {
        self.last
    }
}

/// True when a websocket upgrade's `Server` header says the upstream is a relay (lesson 3).
pub fn is_relay_server(server_header: &str) -> bool {
    server_header.to_ascii_lowercase().contains("atproto-relay")
}

/// A host's event rate limits per second, hour and day (PROTOCOL.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    pub per_second: u64,
    pub per_hour: u64,
    pub per_day: u64,
}

impl HostLimits {
    /// indigo's formulas: 50/s + limit/1000, 2,500/h + limit, 20,000/day + 10·limit for a
    /// normal host; 5,000/s, 50M/h and 500M/day for a trusted one.
    pub fn for_host(account_limit: i64, trusted: bool) -> HostLimits {
        if trusted {
            return HostLimits {
                per_second: 5_000,
                per_hour: 50_000_000,
                per_day: 500_000_000,
            };
        }
        let limit = u64::try_from(account_limit).unwrap_or(0);
        HostLimits {
            per_second: 50 + limit / 1_000,
            per_hour: 2_500u64.saturating_add(limit),
            per_day: 20_000u64.saturating_add(limit.saturating_mul(10)),
        }
    }
}

/// True when `hostname` ends with one of the trusted domain suffixes (e.g.
/// `.host.bsky.network`): such hosts get the trusted limits.
pub fn is_trusted(hostname: &str, suffixes: &[String]) -> bool {
    suffixes
        .iter()
        .any(|s| !s.is_empty() && hostname.ends_with(s.as_str()))
}

/// One token bucket: `capacity` tokens refilled evenly over `period`, so at most
/// `capacity` events in any window of `period` plus the steady rate.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    capacity: f64,
    period: Duration,
    tokens: f64,
}

impl Bucket {
    fn new(capacity: u64, period: Duration) -> Bucket {
        let capacity = capacity.max(1) as f64;
        Bucket {
            capacity,
            period,
            tokens: capacity,
        }
    }

    fn refill(&mut self, elapsed: Duration) {
        let per_sec = self.capacity / self.period.as_secs_f64();
        self.tokens = (self.tokens + elapsed.as_secs_f64() * per_sec).min(self.capacity);
    }

    /// How long until one token is there (zero when it is).
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        let per_sec = self.capacity / self.period.as_secs_f64();
        Duration::from_secs_f64((1.0 - self.tokens) / per_sec)
    }
}

/// The rate limiter of one host connection: three token buckets (second, hour, day). It
/// never drops: [`RateLimiter::admit`] either takes one token from each bucket or says how
/// long to wait, and the Subscriber then stops reading its socket until then (PROTOCOL.md
/// §7: over the limit, events are delayed).
#[derive(Clone, Debug)]
pub struct RateLimiter {
    limits: HostLimits,
    buckets: [Bucket; 3],
    at: Instant,
}

impl RateLimiter {
    pub fn new(limits: HostLimits, now: Instant) -> RateLimiter {
        RateLimiter {
            limits,
            buckets: Self::buckets(limits),
            at: now,
        }
    }

    fn buckets(l: HostLimits) -> [Bucket; 3] {
        [
            Bucket::new(l.per_second, Duration::from_secs(1)),
            Bucket::new(l.per_hour, Duration::from_secs(3_600)),
            Bucket::new(l.per_day, Duration::from_secs(86_400)),
        ]
    }

    pub fn limits(&self) -> HostLimits {
        self.limits
    }

    /// New limits (an operator changed the account limit): full buckets at the new sizes,
    /// minus what was already spent.
    pub fn set_limits(&mut self, limits: HostLimits, now: Instant) {
        if limits == self.limits {
            return;
        }
        self.advance(now);
        let mut fresh = Self::buckets(limits);
        for (new, old) in fresh.iter_mut().zip(&self.buckets) {
            new.tokens = (new.capacity - (old.capacity - old.tokens)).max(0.0);
        }
        self.buckets = fresh;
        self.limits = limits;
    }

    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        for b in &mut self.buckets {
            b.refill(elapsed);
        }
        self.at = self.at.max(now);
    }

    /// Takes one event's tokens at `now`. `Ok` means go now; `Err(t)` means the tokens are
    /// reserved and the event may go at `t` (later events queue behind it): never a drop.
    pub fn admit(&mut self, now: Instant) -> Result<(), Instant> {
        self.advance(now);
        let wait = self
            .buckets
            .iter()
            .map(Bucket::wait)
            .max()
            .unwrap_or_default();
        for b in &mut self.buckets {
            b.tokens -= 1.0;
        }
        if wait > Duration::ZERO {
            return Err(now + wait);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_must_strictly_increase_on_a_socket() {
        // (seq, accepted)
        let table = [
            (5, true),
            (5, false),
            (4, false),
            (6, true),
            (100, true),
            (1, false),
            (101, true),
        ];
        let mut check = SeqCheck::default();
        for (seq, want) in table {
            assert_eq!(check.accept(seq), want, "seq {seq}");
        }
        assert_eq!(check.last(), Some(101));
    }

    #[test]
    fn relay_server_headers() {
        let table = [
            ("rookery-sim (atproto-relay)", true),
            ("atproto-relay/0.1", true),
            ("Indigo ATPROTO-RELAY", true),
            ("nginx", false),
            ("atproto-pds", false),
            ("", false),
        ];
        for (header, want) in table {
            assert_eq!(is_relay_server(header), want, "{header:?}");
        }
    }

    #[test]
    fn limits_follow_the_account_limit_and_trust() {
        let table = [
            (100, false, (50, 2_600, 21_000)),
            (0, false, (50, 2_500, 20_000)),
            (10_000, false, (60, 12_500, 120_000)),
            (-5, false, (50, 2_500, 20_000)),
            (100, true, (5_000, 50_000_000, 500_000_000)),
        ];
        for (limit, trusted, (s, h, d)) in table {
            let got = HostLimits::for_host(limit, trusted);
            assert_eq!(
                (got.per_second, got.per_hour, got.per_day),
                (s, h, d),
                "{limit} {trusted}"
            );
        }
        let suffixes = vec![".host.bsky.network".to_string()];
        assert!(is_trusted("morel.us-east.host.bsky.network", &suffixes));
        assert!(!is_trusted("evil-host.bsky.network.example", &suffixes));
        assert!(!is_trusted("x.example", &[String::new()]));
    }

    #[test]
    fn the_limiter_delays_never_drops() {
        let t0 = Instant::now();
        let limits = HostLimits {
            per_second: 10,
            per_hour: 25,
            per_day: 1_000,
        };
        let mut l = RateLimiter::new(limits, t0);
        for _ in 0..10 {
            assert_eq!(l.admit(t0), Ok(()));
        }
        // The 11th event in the same instant waits ~0.1 s for a per-second token, the
        // 12th ~0.2 s: reserved, queued, never dropped.
        let until = l.admit(t0).expect_err("over the per-second limit");
        let wait = until - t0;
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
        let second = l.admit(t0).expect_err("queued behind");
        assert!(
            second - t0 > Duration::from_millis(190),
            "{:?}",
            second - t0
        );
        // The hour bucket (25) runs out after 25 events however they are spread.
        let mut now = t0;
        for _ in 12..25 {
            now += Duration::from_secs(1);
            assert_eq!(l.admit(now), Ok(()));
        }
        now += Duration::from_secs(1);
        let until = l.admit(now).expect_err("hourly limit");
        // One hour-token comes every 3600/25 = 144 s.
        assert!(until - now > Duration::from_secs(100), "{:?}", until - now);
        assert!(until - now <= Duration::from_secs(144), "{:?}", until - now);
    }

    #[test]
    fn raising_limits_keeps_what_was_spent() {
        let t0 = Instant::now();
        let small = HostLimits {
            per_second: 2,
            per_hour: 100,
            per_day: 100,
        };
        let mut l = RateLimiter::new(small, t0);
        assert_eq!(l.admit(t0), Ok(()));
        assert_eq!(l.admit(t0), Ok(()));
        l.set_limits(
            HostLimits {
                per_second: 5,
                ..small
            },
            t0,
        );
        for _ in 0..3 {
            assert_eq!(l.admit(t0), Ok(()));
        }
        assert!(l.admit(t0).is_err(), "2 spent + 3 = the new 5");
        assert_eq!(l.limits().per_second, 5);
    }
}
