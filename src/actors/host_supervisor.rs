//! HostSupervisor: owns the host table and keeps one Subscriber per host that should be read.
//!
//! What it owns: every known host's record (status, failures, cursor, limits), the epoch of
//! its current connection, the handshake permits of the startup ramp, and the status writes
//! waiting for their batched statement. What it never does: read a socket (the
//! [`Connector`] starts Subscribers), write a cursor from events (the write-behind does),
//! write one statement per host event (statuses are batched every `status_flush_every`), or
//! turn `banned` into anything but through [`Unban`].
//!
//! How it works:
//! - On start, one query loads the whole host table ([`HostStore::load_hosts`], lesson 8);
//!   each host that is not banned is dialled after [`startup_delay`] (deterministic
//!   jitter over `startup_spread`), and every dial first takes one of
//!   `max_concurrent_handshakes` permits, held until its handshake ended (lesson 1). A
//!   restart therefore resumes every such host from its stored cursor (lesson 24), and a
//!   host subscribed before without a cursor from 0 ([`HostRecord::subscribed`]).
//! - Subscribers are not actix-supervised (ACTORS.md). Each dial gets a new epoch and an
//!   [`ExitLink`]: the child drops it when it stops for any reason, panics included, and that
//!   sends the exit notice. A notice of an older epoch (a killed or banned connection) is
//!   ignored. The exit goes through the pure policy [`decide`] and its decision is applied:
//!   status, failures, a redial with `ctx.run_later` (lesson 2: never forgotten), a cursor
//!   reset on `FutureCursor` (lesson 4) written only after the write-behind's running flush
//!   ended, so the old connection cannot raise it back.
//! - A connection that delivers its first event reports it through the link: the host is
//!   `active` with zero failures from then on, even while the connection lasts.
//!
//! Testable without sockets: the [`Connector`] and the [`HostStore`] are injected, so the
//! paused-clock tests drive 30-minute backoffs and a 3,000-host ramp in milliseconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use super::obs::InstrumentedAddr;
use super::obs::{ActorObs, ObservedMessage};
use super::subscriber::{HostLimits, is_trusted};
use super::supervision::{
    BACKOFF_MIN, DEFAULT_STARTUP_SPREAD, HostState, HostStatus, STABLE_CONNECTION, SubscriberExit,
    decide, startup_delay,
};
use super::write_behind::{FlushNow, PendingWrites, WriteBehind};
use crate::store::postgres::{Db, DbError};

// ------------------------------------------------------------------------------------------
// The host table and the two injected sides

/// One row of `hosts`: everything spawning needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    pub id: i64,
    pub hostname: String,
    pub status: HostStatus,
    /// `last_seq`: the upstream cursor (0: none).
    pub cursor: i64,
    pub account_count: i64,
    pub account_limit: i64,
    pub failures: u32,
    pub trusted: bool,
    pub no_ssl: bool,
    pub relay_allowed: bool,
    /// Inversion failures of this host's commits only warn (an operator's override).
    pub inversion_warn_only: bool,
    /// The relay has completed a handshake with the host since its cursor was last reset
    /// (`subscribed_at` is set). Such a host is owed everything it published since, so it
    /// resumes from its cursor even when that is 0 (its whole retained outbox; the rev
    /// check drops what is stored) instead of live only: a quiet host whose connection
    /// ended, or whose events were all in flight at a crash, loses nothing.
    pub subscribed: bool,
}

/// Hosts whose inversion failures only warn, shared with the ValidatorShards (read per
/// commit; written by the supervisor on load and on [`SetInversionWarnOnly`]).
#[derive(Clone, Debug, Default)]
pub struct InversionWarnOnly(Arc<std::sync::RwLock<std::collections::HashSet<i64>>>);

impl InversionWarnOnly {
    pub fn contains(&self, host_id: i64) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&host_id)
    }

    fn set(&self, host_id: i64, on: bool) {
        let mut set = self.0.write().unwrap_or_else(|e| e.into_inner());
        if on {
            set.insert(host_id);
        } else {
            set.remove(&host_id);
        }
    }
}

/// Hosts known and connected, published by the supervisor every status tick for readers that
/// must not wait on its mailbox (readiness), and, when registered, as the
/// `rookery_hosts{status}` and `rookery_hosts_connected` gauges.
#[derive(Clone, Debug, Default)]
pub struct HostCounts(
    Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
    Option<(prometheus::IntGaugeVec, prometheus::IntGauge)>,
);

impl HostCounts {
    /// Counts that are also exported on `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<HostCounts, prometheus::Error> {
        let by_status = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("rookery_hosts", "Known hosts, by status"),
            &["status"],
        )?;
        let connected = prometheus::IntGauge::new(
            "rookery_hosts_connected",
            "Hosts with a running Subscriber",
        )?;
        registry.register(Box::new(by_status.clone()))?;
        registry.register(Box::new(connected.clone()))?;
        for status in HostStatus::ALL {
            by_status.with_label_values(&[status.as_str()]).set(0);
        }
        Ok(HostCounts(Arc::default(), Some((by_status, connected))))
    }

    /// Hosts in the table.
    pub fn known(&self) -> usize {
        self.0.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hosts with a running Subscriber (handshaking or reading).
    pub fn connected(&self) -> usize {
        self.0.1.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Publishes the counts by status (the supervisor, every status tick).
    pub fn publish(&self, by_status: &[(HostStatus, usize)], connected: usize) {
        let known = by_status.iter().map(|(_, n)| n).sum();
        self.set(known, connected);
        if let Some((gauges, connected_gauge)) = &self.1 {
            for (status, n) in by_status {
                gauges
                    .with_label_values(&[status.as_str()])
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            connected_gauge.set(i64::try_from(connected).unwrap_or(i64::MAX));
        }
    }

    /// Publishes both totals.
    pub fn set(&self, known: usize, connected: usize) {
        self.0.0.store(known, std::sync::atomic::Ordering::Relaxed);
        self.0
            .1
            .store(connected, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A host added by requestCrawl or an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewHost {
    pub hostname: String,
    pub no_ssl: bool,
    pub admin_added: bool,
    /// Public-address checks were skipped for this host (an operator added `localhost:PORT`
    /// or a plain-http host); admission decides, the row records it.
    pub ssrf_exempt: bool,
    pub account_limit: Option<i64>,
}

/// A batched status write of one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusWrite {
    pub host_id: i64,
    pub status: HostStatus,
    pub failures: u32,
    /// Set `last_connected_at = now()`.
    pub connected: bool,
    /// Set `subscribed_at` if it is not set (a handshake completed).
    pub subscribed: bool,
}

/// Where host state lives (Postgres in production, in memory in paused-clock tests).
pub trait HostStore: 'static {
    /// The whole table, in one query.
    fn load_hosts(&self) -> BoxFuture<'static, Result<Vec<HostRecord>, DbError>>;
    /// One statement for all; `banned` is never overwritten.
    fn write_statuses(&self, writes: Vec<StatusWrite>) -> BoxFuture<'static, Result<u64, DbError>>;
    /// `last_seq = 0` and `subscribed_at = NULL`, after pending cursors of the host were
    /// forgotten and the running write-behind flush ended.
    fn reset_cursor(&self, host_id: i64) -> BoxFuture<'static, Result<(), DbError>>;
    /// Inserts (or finds) a host.
    fn add_host(&self, host: NewHost) -> BoxFuture<'static, Result<HostRecord, DbError>>;
    /// The one way out of `banned`: `active`, no failures.
    fn unban(&self, host_id: i64) -> BoxFuture<'static, Result<(), DbError>>;
    fn set_account_limit(
        &self,
        host_id: i64,
        limit: i64,
    ) -> BoxFuture<'static, Result<(), DbError>>;
    fn set_inversion_warn_only(
        &self,
        host_id: i64,
        on: bool,
    ) -> BoxFuture<'static, Result<(), DbError>>;
}

/// What a Subscriber is started with. Owned data only.
#[derive(Debug)]
pub struct DialRequest {
    pub host_id: i64,
    pub hostname: Arc<str>,
    /// The stored cursor (0 for a subscribed host without one: its whole outbox); `None`
    /// dials live only.
    pub cursor: Option<i64>,
    /// The connection will replay events the relay may have stored already: the host's
    /// first since this process started (its stored cursor lags the log by up to a
    /// write-behind interval after a crash) or a `cursor=0` catch-up. See
    /// [`crate::actors::shard_router::UpstreamFrame::catching_up`].
    pub catching_up: bool,
    pub no_ssl: bool,
    pub relay_allowed: bool,
    pub epoch: u64,
    /// The host's current rate limits (an operator may change them while connected).
    pub limits: watch::Receiver<HostLimits>,
    /// Fires when the supervisor ends this connection (kill, ban); the value is the exit to
    /// report.
    pub stop: oneshot::Receiver<SubscriberExit>,
    /// The exit notice and the handshake permit.
    pub link: ExitLink,
}

/// Starts a Subscriber for a [`DialRequest`]. It must not block; the Subscriber owns the
/// request's link and drops it when it ends.
pub trait Connector: 'static {
    fn connect(&self, request: DialRequest);
}

/// The child's side of supervision: holds the handshake permit until the handshake ended,
/// reports the first delivered event, and sends the exit notice when dropped.
#[derive(Debug)]
pub struct ExitLink {
    permit: Option<OwnedSemaphorePermit>,
    subscribed: Option<oneshot::Sender<()>>,
    live: Option<oneshot::Sender<()>>,
    exit: Option<oneshot::Sender<ExitNotice>>,
    outcome: Option<SubscriberExit>,
    /// When the upgrade succeeded.
    connected_at: Option<tokio::time::Instant>,
    events: u64,
    /// The host's events since this process started, over all its connections (the admin
    /// host list shows it).
    seen: Arc<AtomicU64>,
    cursor: Option<i64>,
}

/// What the supervisor learns when a Subscriber stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitNotice {
    pub exit: SubscriberExit,
    /// The connection's committed cursor, when it had one to report.
    pub cursor: Option<i64>,
}

impl ExitLink {
    /// The upgrade succeeded: the handshake permit goes back to the ramp.
    pub fn handshake_done(&mut self) {
        self.permit = None;
        self.connected_at = Some(tokio::time::Instant::now());
        if let Some(subscribed) = self.subscribed.take() {
            let _ = subscribed.send(());
        }
    }

    /// One event went to its shard.
    pub fn delivered(&mut self) {
        self.events += 1;
        self.seen.fetch_add(1, Ordering::Relaxed);
        if let Some(live) = self.live.take() {
            let _ = live.send(());
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// The exit to report (the first one set wins).
    pub fn set_outcome(&mut self, exit: SubscriberExit) {
        self.outcome.get_or_insert(exit);
    }

    /// The cursor this connection reached (every seq up to it durable or dropped).
    pub fn set_cursor(&mut self, committed: i64) {
        self.cursor = Some(committed);
    }
}

impl Drop for ExitLink {
    fn drop(&mut self) {
        let exit = self.outcome.unwrap_or(match self.connected_at {
            Some(at) if self.events == 0 && at.elapsed() >= STABLE_CONNECTION => {
                SubscriberExit::DroppedIdle
            }
            Some(_) => SubscriberExit::Dropped {
                events_delivered: self.events,
            },
            None => SubscriberExit::DialFailed,
        });
        if let Some(tx) = self.exit.take() {
            let _ = tx.send(ExitNotice {
                exit,
                cursor: self.cursor,
            });
        }
    }
}

// ------------------------------------------------------------------------------------------
// Messages (the admin API calls these)

/// requestCrawl or an admin add: a new host is stored and dialled; a known host that is not
/// banned and not connected is dialled at once (an `idle` host after `FutureCursor` too).
#[derive(Debug, Message)]
#[rtype(result = "Result<HostView, AddHostError>")]
pub struct AddHost(pub NewHost);
impl ObservedMessage for AddHost {
    const NAME: &'static str = "add_host";
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddHostError {
    #[error("host is banned")]
    Banned,
    #[error("host table: {0}")]
    Store(&'static str),
}

/// Bans a host: its connection ends and it is never dialled until [`Unban`].
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct Ban {
    pub hostname: String,
}
impl ObservedMessage for Ban {
    const NAME: &'static str = "ban";
}

/// Lifts a ban: `active`, no failures, dialled at once.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct Unban {
    pub hostname: String,
}
impl ObservedMessage for Unban {
    const NAME: &'static str = "unban";
}

/// Ends a host's current connection; it is redialled after the minimal backoff.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct KillConnection {
    pub hostname: String,
}
impl ObservedMessage for KillConnection {
    const NAME: &'static str = "kill_connection";
}

/// Changes a host's account limit (and with it its rate limits, live).
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct ChangeLimits {
    pub hostname: String,
    pub account_limit: i64,
}
impl ObservedMessage for ChangeLimits {
    const NAME: &'static str = "change_limits";
}

/// Sets a host's inversion failures to warn-only (`true`) or back to refusing (`false`),
/// stored and effective for its next commit. `false` when the host is unknown or the write
/// failed.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct SetInversionWarnOnly {
    pub hostname: String,
    pub warn_only: bool,
}
impl ObservedMessage for SetInversionWarnOnly {
    const NAME: &'static str = "set_inversion_warn_only";
}

/// Every host with its connection state, by hostname.
#[derive(Debug, Message)]
#[rtype(result = "Vec<HostView>")]
pub struct ListConnections;
impl ObservedMessage for ListConnections {
    const NAME: &'static str = "list_connections";
}

/// Stops the supervisor and, through their stop channels, every Subscriber.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopSupervisor;
impl ObservedMessage for StopSupervisor {
    const NAME: &'static str = "stop";
}

/// The supervisor's counters.
#[derive(Debug, Message)]
#[rtype(result = "SupervisorState")]
pub struct GetSupervisorState;
impl ObservedMessage for GetSupervisorState {
    const NAME: &'static str = "get_state";
}

// ------------------------------------------------------------------------------------------
// Observable state

/// Where a host's supervision stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A dial is scheduled (startup slot or backoff).
    Scheduled,
    /// Waiting for a handshake permit.
    WaitingPermit,
    /// A Subscriber is running (handshaking or reading).
    Connected,
    /// Not dialled: banned, idle after a restart, or shutting down.
    Stopped,
}

/// One host as `ListConnections` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    pub id: i64,
    pub hostname: String,
    pub status: HostStatus,
    pub failures: u32,
    pub cursor: i64,
    pub account_limit: i64,
    pub inversion_warn_only: bool,
    pub phase: Phase,
    pub epoch: u64,
    /// Dials so far in this process.
    pub dials: u64,
    /// The current connection delivered events.
    pub live: bool,
    /// Events delivered by all of the host's connections since this process started.
    pub events_seen: u64,
    /// The host's event rate limits now.
    pub limits: HostLimits,
}

/// Counters tests and `/metrics` read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SupervisorState {
    pub loaded: bool,
    pub hosts: usize,
    pub connected: usize,
    pub dials: u64,
    /// Handshakes holding a permit now.
    pub handshakes_in_flight: usize,
    pub exits: u64,
    /// Exit notices of an older epoch (killed or banned connections).
    pub stale_exits: u64,
    pub cursor_resets: u64,
    pub relays_banned: u64,
    pub status_statements: u64,
    pub status_write_failures: u64,
}

// ------------------------------------------------------------------------------------------
// Actor

/// Ramp, keepalive and flush settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSupervisorSettings {
    /// `--max-concurrent-handshakes`.
    pub max_concurrent_handshakes: usize,
    /// `--startup-spread`: first dials are spread over this window.
    pub startup_spread: Duration,
    /// Batched status writes this often.
    pub status_flush_every: Duration,
    /// Retry of the initial host-table load.
    pub load_retry: Duration,
    /// Domain suffixes whose hosts get the trusted limits (e.g. `.host.bsky.network`).
    pub trusted_domains: Vec<String>,
}

impl Default for HostSupervisorSettings {
    fn default() -> Self {
        HostSupervisorSettings {
            max_concurrent_handshakes: 64,
            startup_spread: DEFAULT_STARTUP_SPREAD,
            status_flush_every: Duration::from_secs(1),
            load_retry: Duration::from_secs(5),
            trusted_domains: Vec::new(),
        }
    }
}

struct Conn {
    stop: oneshot::Sender<SubscriberExit>,
    limits: watch::Sender<HostLimits>,
}

struct Host {
    rec: HostRecord,
    epoch: u64,
    phase: Phase,
    conn: Option<Conn>,
    timer: Option<SpawnHandle>,
    dials: u64,
    live: bool,
    seen: Arc<AtomicU64>,
}

/// The host supervisor (one).
pub struct HostSupervisor {
    obs: ActorObs,
    store: Arc<dyn HostStore>,
    connector: Arc<dyn Connector>,
    settings: HostSupervisorSettings,
    permits: Arc<Semaphore>,
    hosts: HashMap<i64, Host>,
    by_name: HashMap<String, i64>,
    pending_status: HashMap<i64, StatusWrite>,
    flushing: bool,
    /// Pending cursors (a reset forgets the host's) and the write-behind whose running
    /// flush a reset waits for.
    cursors: Option<(PendingWrites, Option<InstrumentedAddr<WriteBehind>>)>,
    warn_only: InversionWarnOnly,
    counts: HostCounts,
    /// Consecutive failed status flushes (logged once per outage).
    status_failing: u64,
    state: SupervisorState,
}

impl HostSupervisor {
    /// Its `actor` label.
    pub const NAME: &'static str = "host_supervisor";
    /// Control messages only (admin API); a few dozen at once is already a burst.
    pub const MAILBOX: usize = 64;

    pub fn new(
        obs: ActorObs,
        store: Arc<dyn HostStore>,
        connector: Arc<dyn Connector>,
        settings: HostSupervisorSettings,
    ) -> HostSupervisor {
        HostSupervisor {
            obs,
            store,
            connector,
            permits: Arc::new(Semaphore::new(settings.max_concurrent_handshakes.max(1))),
            settings,
            hosts: HashMap::new(),
            by_name: HashMap::new(),
            pending_status: HashMap::new(),
            flushing: false,
            cursors: None,
            warn_only: InversionWarnOnly::default(),
            counts: HostCounts::default(),
            status_failing: 0,
            state: SupervisorState::default(),
        }
    }

    /// Cursor resets forget the host's pending cursors here and wait for `write_behind`'s
    /// running flush before writing `last_seq = 0`.
    pub fn with_cursors(
        mut self,
        pending: PendingWrites,
        write_behind: Option<InstrumentedAddr<WriteBehind>>,
    ) -> HostSupervisor {
        self.cursors = Some((pending, write_behind));
        self
    }

    /// Where the host counts are published (readiness reads them).
    pub fn with_counts(mut self, counts: HostCounts) -> HostSupervisor {
        self.counts = counts;
        self
    }

    /// The shared set of warn-only hosts, which the shards read.
    pub fn with_inversion_warn_only(mut self, warn_only: InversionWarnOnly) -> HostSupervisor {
        self.warn_only = warn_only;
        self
    }

    fn limits_of(&self, rec: &HostRecord) -> HostLimits {
        let trusted = rec.trusted || is_trusted(&rec.hostname, &self.settings.trusted_domains);
        HostLimits::for_host(rec.account_limit, trusted)
    }

    fn view(&self, h: &Host) -> HostView {
        HostView {
            id: h.rec.id,
            hostname: h.rec.hostname.clone(),
            status: h.rec.status,
            failures: h.rec.failures,
            cursor: h.rec.cursor,
            account_limit: h.rec.account_limit,
            inversion_warn_only: h.rec.inversion_warn_only,
            phase: h.phase,
            epoch: h.epoch,
            dials: h.dials,
            live: h.live,
            events_seen: h.seen.load(Ordering::Relaxed),
            limits: self.limits_of(&h.rec),
        }
    }

    fn insert(&mut self, rec: HostRecord) {
        self.warn_only.set(rec.id, rec.inversion_warn_only);
        self.by_name.insert(rec.hostname.clone(), rec.id);
        self.hosts.insert(
            rec.id,
            Host {
                rec,
                epoch: 0,
                phase: Phase::Stopped,
                conn: None,
                timer: None,
                dials: 0,
                live: false,
                seen: Arc::default(),
            },
        );
    }

    fn id_of(&self, hostname: &str) -> Option<i64> {
        self.by_name.get(hostname).copied()
    }

    fn queue_status(&mut self, id: i64, connected: bool) {
        let Some(h) = self.hosts.get(&id) else { return };
        let w = self.pending_status.entry(id).or_insert(StatusWrite {
            host_id: id,
            status: h.rec.status,
            failures: h.rec.failures,
            connected,
            subscribed: false,
        });
        w.status = h.rec.status;
        w.failures = h.rec.failures;
        w.connected |= connected;
        // Cleared by a cursor reset before its flush: the reset forgets the subscription.
        w.subscribed = h.rec.subscribed;
    }

    /// Ends the current connection (if any) and cancels any scheduled dial; later notices of
    /// that connection are stale.
    fn disconnect(&mut self, id: i64, exit: SubscriberExit, ctx: &mut Context<Self>) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        h.epoch += 1;
        h.live = false;
        if let Some(conn) = h.conn.take() {
            let _ = conn.stop.send(exit);
        }
        if let Some(t) = h.timer.take() {
            ctx.cancel_future(t);
        }
        h.phase = Phase::Stopped;
    }

    /// Dials `id` after `delay` (through a handshake permit).
    fn schedule(&mut self, id: i64, delay: Duration, ctx: &mut Context<Self>) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        if let Some(t) = h.timer.take() {
            ctx.cancel_future(t);
        }
        h.phase = Phase::Scheduled;
        let handle = ctx.run_later(delay, move |act, ctx| act.await_permit(id, ctx));
        if let Some(h) = self.hosts.get_mut(&id) {
            h.timer = Some(handle);
        }
    }

    fn await_permit(&mut self, id: i64, ctx: &mut Context<Self>) {
        let permits = Arc::clone(&self.permits);
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        h.phase = Phase::WaitingPermit;
        let handle = ctx.spawn(
            async move { permits.acquire_owned().await.ok() }
                .into_actor(self)
                .map(move |permit, act, ctx| {
                    if let Some(permit) = permit {
                        act.dial(id, permit, ctx);
                    }
                }),
        );
        if let Some(h) = self.hosts.get_mut(&id) {
            h.timer = Some(handle);
        }
    }

    fn dial(&mut self, id: i64, permit: OwnedSemaphorePermit, ctx: &mut Context<Self>) {
        let limits = match self.hosts.get(&id) {
            Some(h) if h.rec.status != HostStatus::Banned && h.conn.is_none() => {
                self.limits_of(&h.rec)
            }
            _ => return,
        };
        // Events of the last connection that were in flight when it ended may have become
        // durable since: resume after them (see `PendingWrites::resume_cursor`).
        let resume = self
            .cursors
            .as_ref()
            .and_then(|(pending, _)| pending.resume_cursor(id));
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        h.rec.cursor = h.rec.cursor.max(resume.unwrap_or(0));
        let cursor = h.rec.cursor;
        h.timer = None;
        h.epoch += 1;
        h.dials += 1;
        h.live = false;
        h.phase = Phase::Connected;
        let epoch = h.epoch;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (limits_tx, limits_rx) = watch::channel(limits);
        let (subscribed_tx, subscribed_rx) = oneshot::channel();
        let (live_tx, live_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        h.conn = Some(Conn {
            stop: stop_tx,
            limits: limits_tx,
        });
        let request = DialRequest {
            host_id: id,
            hostname: Arc::from(h.rec.hostname.as_str()),
            cursor: (cursor > 0 || h.rec.subscribed).then_some(cursor),
            catching_up: h.dials == 1 || (cursor == 0 && h.rec.subscribed),
            no_ssl: h.rec.no_ssl,
            relay_allowed: h.rec.relay_allowed,
            epoch,
            limits: limits_rx,
            stop: stop_rx,
            link: ExitLink {
                permit: Some(permit),
                subscribed: Some(subscribed_tx),
                live: Some(live_tx),
                exit: Some(exit_tx),
                outcome: None,
                connected_at: None,
                events: 0,
                seen: Arc::clone(&h.seen),
                cursor: None,
            },
        };
        self.state.dials += 1;
        ctx.spawn(subscribed_rx.into_actor(self).map(move |r, act, _| {
            if r.is_ok() {
                act.on_subscribed(id, epoch);
            }
        }));
        ctx.spawn(live_rx.into_actor(self).map(move |r, act, _| {
            if r.is_ok() {
                act.on_live(id, epoch);
            }
        }));
        ctx.spawn(exit_rx.into_actor(self).map(move |r, act, ctx| {
            // A sender dropped without a notice cannot happen (the link's Drop sends);
            // count it as a drop without events all the same.
            let notice = r.unwrap_or(ExitNotice {
                exit: SubscriberExit::Dropped {
                    events_delivered: 0,
                },
                cursor: None,
            });
            act.on_exit(id, epoch, notice, ctx);
        }));
        self.connector.connect(request);
    }

    /// The handshake completed: from now on the host is owed every event it publishes, so
    /// the fact is stored (with the next status statement) for the dials after a restart.
    fn on_subscribed(&mut self, id: i64, epoch: u64) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        if h.epoch != epoch || h.rec.subscribed {
            return;
        }
        h.rec.subscribed = true;
        let status = h.rec.status;
        if status != HostStatus::Banned {
            self.queue_status(id, false);
        }
    }

    fn on_live(&mut self, id: i64, epoch: u64) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        if h.epoch != epoch || h.rec.status == HostStatus::Banned {
            return;
        }
        h.live = true;
        h.rec.failures = 0;
        h.rec.status = HostStatus::Active;
        self.queue_status(id, true);
    }

    fn on_exit(&mut self, id: i64, epoch: u64, notice: ExitNotice, ctx: &mut Context<Self>) {
        let exit = notice.exit;
        self.state.exits += 1;
        self.obs.restarted(exit.reason());
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        if let Some(c) = notice.cursor {
            // Also for a stale epoch (a kill): the next dial resumes from here.
            h.rec.cursor = h.rec.cursor.max(c);
        }
        if h.epoch != epoch {
            self.state.stale_exits += 1;
            return;
        }
        h.conn = None;
        h.live = false;
        let decision = decide(
            &HostState {
                hostname: &h.rec.hostname,
                status: h.rec.status,
                failures: h.rec.failures,
                relay_allowed: h.rec.relay_allowed,
            },
            exit,
        );
        let was_banned = h.rec.status == HostStatus::Banned;
        h.rec.status = decision.status;
        h.rec.failures = decision.failures;
        h.phase = Phase::Stopped;
        if decision.status == HostStatus::Banned && !was_banned {
            self.state.relays_banned += u64::from(exit == SubscriberExit::RelayDetected);
            tracing::warn!(host = %h.rec.hostname, reason = exit.reason(), "host banned");
        }
        let hostname = h.rec.hostname.clone();
        if decision.reset_cursor {
            // Live only after a reset (lesson 4): what the host published before it lost
            // its outbox is gone, and its new seqs say nothing about what we stored.
            h.rec.cursor = 0;
            h.rec.subscribed = false;
            self.state.cursor_resets += 1;
            tracing::warn!(host = %hostname, "upstream FutureCursor: cursor reset, host idle");
            self.queue_status(id, false);
            if let Some(delay) = decision.redial_after {
                self.reset_then_redial(id, delay, ctx);
            }
            return;
        }
        self.queue_status(id, false);
        if let Some(delay) = decision.redial_after {
            self.schedule(id, delay, ctx);
        }
    }

    /// Forgets the host's pending cursors, waits for the running write-behind flush, writes
    /// `last_seq = 0`, then schedules the redial (without a cursor).
    fn reset_then_redial(&mut self, id: i64, delay: Duration, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let cursors = self.cursors.clone();
        if let Some(h) = self.hosts.get_mut(&id) {
            h.phase = Phase::Scheduled;
        }
        let epoch = self.hosts.get(&id).map(|h| h.epoch);
        ctx.spawn(
            async move {
                if let Some((pending, wb)) = cursors {
                    pending.reset_cursor(id);
                    if let Some(wb) = wb {
                        let _ = wb.send(FlushNow).await;
                    }
                }
                store.reset_cursor(id).await
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                if let Err(e) = res {
                    tracing::warn!(host_id = id, reason = e.reason(), "cursor reset not stored");
                }
                // Still the same connection generation (no ban, kill or crawl meanwhile).
                if act.hosts.get(&id).map(|h| h.epoch) == epoch
                    && act
                        .hosts
                        .get(&id)
                        .is_some_and(|h| h.phase == Phase::Scheduled)
                {
                    act.schedule(id, delay, ctx);
                }
            }),
        );
    }

    fn flush_statuses(&mut self, ctx: &mut Context<Self>) {
        let connected = self.hosts.values().filter(|h| h.conn.is_some()).count();
        let by_status: Vec<(HostStatus, usize)> = HostStatus::ALL
            .iter()
            .map(|s| {
                (
                    *s,
                    self.hosts.values().filter(|h| h.rec.status == *s).count(),
                )
            })
            .collect();
        self.counts.publish(&by_status, connected);
        if self.flushing || self.pending_status.is_empty() {
            return;
        }
        self.flushing = true;
        let mut writes: Vec<StatusWrite> = self.pending_status.drain().map(|(_, w)| w).collect();
        writes.sort_unstable_by_key(|w| w.host_id);
        let store = Arc::clone(&self.store);
        let retry = writes.clone();
        ctx.spawn(
            async move { store.write_statuses(writes).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    act.flushing = false;
                    match res {
                        Ok(_) => {
                            if act.status_failing > 0 {
                                tracing::info!(
                                    failed = act.status_failing,
                                    "host status writes work again"
                                );
                            }
                            act.status_failing = 0;
                            act.state.status_statements += 1;
                        }
                        Err(e) => {
                            act.state.status_write_failures += 1;
                            act.status_failing += 1;
                            // Once per outage, not once per flush; the counter has the rest.
                            if act.status_failing == 1 {
                                tracing::warn!(
                                    reason = e.reason(),
                                    "host status writes fail; retrying every flush"
                                );
                            }
                            for w in retry {
                                // Newer writes recorded meanwhile win.
                                act.pending_status.entry(w.host_id).or_insert(w);
                            }
                        }
                    }
                }),
        );
    }

    fn load(&mut self, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        ctx.wait(
            async move { store.load_hosts().await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(rows) => {
                        act.state.loaded = true;
                        let spread = act.settings.startup_spread;
                        for rec in rows {
                            let (id, status) = (rec.id, rec.status);
                            let delay = startup_delay(&rec.hostname, spread);
                            act.insert(rec);
                            // `idle` too: in-process a host idle after `FutureCursor` is
                            // redialled after a backoff, so one whose redial a restart cut
                            // short must not wait for a requestCrawl (lesson 2).
                            if status != HostStatus::Banned {
                                act.schedule(id, delay, ctx);
                            }
                        }
                        tracing::info!(hosts = act.hosts.len(), "host table loaded");
                    }
                    Err(e) => {
                        tracing::warn!(reason = e.reason(), "host table load failed; retrying");
                        let retry = act.settings.load_retry;
                        ctx.run_later(retry, |act, ctx| act.load(ctx));
                    }
                }),
        );
    }
}

impl Actor for HostSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(Self::MAILBOX);
        self.load(ctx);
        let every = self.settings.status_flush_every;
        ctx.run_interval(every, |act, ctx| act.flush_statuses(ctx));
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        // Every child ends with `Shutdown` (its notice then goes nowhere).
        for h in self.hosts.values_mut() {
            if let Some(conn) = h.conn.take() {
                let _ = conn.stop.send(SubscriberExit::Shutdown);
            }
        }
        Running::Stop
    }
}

impl Handler<AddHost> for HostSupervisor {
    type Result = ResponseActFuture<Self, Result<HostView, AddHostError>>;
    fn handle(&mut self, msg: AddHost, ctx: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(AddHost::NAME);
        if let Some(id) = self.id_of(&msg.0.hostname) {
            let Some(h) = self.hosts.get(&id) else {
                return Box::pin(fut::ready(Err(AddHostError::Store("missing host"))));
            };
            if h.rec.status == HostStatus::Banned {
                return Box::pin(fut::ready(Err(AddHostError::Banned)));
            }
            if h.conn.is_none() {
                // requestCrawl: dial now (an idle host after FutureCursor, or one in backoff).
                self.schedule(id, Duration::ZERO, ctx);
            }
            let view = self.hosts.get(&id).map(|h| self.view(h));
            return Box::pin(fut::ready(view.ok_or(AddHostError::Store("missing host"))));
        }
        let store = Arc::clone(&self.store);
        Box::pin(
            async move { store.add_host(msg.0).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    let rec = res.map_err(|e| AddHostError::Store(e.reason()))?;
                    let id = rec.id;
                    if rec.status == HostStatus::Banned {
                        act.insert(rec);
                        return Err(AddHostError::Banned);
                    }
                    if !act.hosts.contains_key(&id) {
                        act.insert(rec);
                    }
                    if act.hosts.get(&id).is_some_and(|h| h.conn.is_none()) {
                        act.schedule(id, Duration::ZERO, ctx);
                    }
                    act.hosts
                        .get(&id)
                        .map(|h| act.view(h))
                        .ok_or(AddHostError::Store("missing host"))
                }),
        )
    }
}

impl Handler<Ban> for HostSupervisor {
    type Result = bool;
    fn handle(&mut self, msg: Ban, ctx: &mut Context<Self>) -> bool {
        let _guard = self.obs.enter(Ban::NAME);
        let Some(id) = self.id_of(&msg.hostname) else {
            return false;
        };
        self.disconnect(id, SubscriberExit::AdminBan, ctx);
        if let Some(h) = self.hosts.get_mut(&id) {
            h.rec.status = HostStatus::Banned;
        }
        self.queue_status(id, false);
        tracing::warn!(host = %msg.hostname, "host banned by an operator");
        true
    }
}

impl Handler<Unban> for HostSupervisor {
    type Result = ResponseActFuture<Self, bool>;
    fn handle(&mut self, msg: Unban, _: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(Unban::NAME);
        let id = match self.id_of(&msg.hostname) {
            Some(id)
                if self
                    .hosts
                    .get(&id)
                    .is_some_and(|h| h.rec.status == HostStatus::Banned) =>
            {
                id
            }
            _ => return Box::pin(fut::ready(false)),
        };
        let store = Arc::clone(&self.store);
        Box::pin(
            async move { store.unban(id).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    if let Err(e) = res {
                        tracing::warn!(reason = e.reason(), "unban not stored");
                        return false;
                    }
                    if let Some(h) = act.hosts.get_mut(&id) {
                        h.rec.status = HostStatus::Active;
                        h.rec.failures = 0;
                    }
                    // The unban statement wrote these; a pending `banned` must not follow it.
                    act.pending_status.remove(&id);
                    act.schedule(id, Duration::ZERO, ctx);
                    true
                }),
        )
    }
}

impl Handler<KillConnection> for HostSupervisor {
    type Result = bool;
    fn handle(&mut self, msg: KillConnection, ctx: &mut Context<Self>) -> bool {
        let _guard = self.obs.enter(KillConnection::NAME);
        let Some(id) = self.id_of(&msg.hostname) else {
            return false;
        };
        let connected = self.hosts.get(&id).is_some_and(|h| h.conn.is_some());
        if !connected {
            return false;
        }
        self.disconnect(id, SubscriberExit::Shutdown, ctx);
        self.schedule(id, BACKOFF_MIN, ctx);
        true
    }
}

impl HostSupervisor {
    /// An operator's change to one host: written to the store first, then applied to the
    /// host's record by `apply` (which also reaches its running connection). `false` when the
    /// host is unknown or the write failed (nothing changed then).
    fn store_then_apply<W>(
        &mut self,
        hostname: &str,
        write: impl FnOnce(Arc<dyn HostStore>, i64) -> W,
        apply: impl FnOnce(&mut HostSupervisor, i64) + 'static,
    ) -> ResponseActFuture<Self, bool>
    where
        W: std::future::Future<Output = Result<(), DbError>> + 'static,
    {
        let Some(id) = self.id_of(hostname) else {
            return Box::pin(fut::ready(false));
        };
        let written = write(Arc::clone(&self.store), id);
        Box::pin(written.into_actor(self).map(move |res, act, _| {
            if let Err(e) = res {
                tracing::warn!(error = %e, "host change not stored");
                return false;
            }
            if !act.hosts.contains_key(&id) {
                return false;
            }
            apply(act, id);
            true
        }))
    }
}

impl Handler<ChangeLimits> for HostSupervisor {
    type Result = ResponseActFuture<Self, bool>;
    fn handle(&mut self, msg: ChangeLimits, _: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(ChangeLimits::NAME);
        let limit = msg.account_limit;
        self.store_then_apply(
            &msg.hostname,
            move |store, id| async move { store.set_account_limit(id, limit).await },
            move |act, id| {
                let Some(h) = act.hosts.get_mut(&id) else {
                    return;
                };
                h.rec.account_limit = limit;
                let rec = h.rec.clone();
                let limits = act.limits_of(&rec);
                if let Some(conn) = act.hosts.get(&id).and_then(|h| h.conn.as_ref()) {
                    let _ = conn.limits.send(limits);
                }
            },
        )
    }
}

impl Handler<SetInversionWarnOnly> for HostSupervisor {
    type Result = ResponseActFuture<Self, bool>;
    fn handle(&mut self, msg: SetInversionWarnOnly, _: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(SetInversionWarnOnly::NAME);
        let on = msg.warn_only;
        self.store_then_apply(
            &msg.hostname,
            move |store, id| async move { store.set_inversion_warn_only(id, on).await },
            move |act, id| {
                act.warn_only.set(id, on);
                if let Some(h) = act.hosts.get_mut(&id) {
                    h.rec.inversion_warn_only = on;
                    tracing::info!(host = %h.rec.hostname, warn_only = on, "inversion override set");
                }
            },
        )
    }
}

impl Handler<ListConnections> for HostSupervisor {
    type Result = MessageResult<ListConnections>;
    fn handle(&mut self, _: ListConnections, _: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(ListConnections::NAME);
        let mut v: Vec<HostView> = self.hosts.values().map(|h| self.view(h)).collect();
        v.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        MessageResult(v)
    }
}

impl Handler<StopSupervisor> for HostSupervisor {
    type Result = ();
    fn handle(&mut self, _: StopSupervisor, ctx: &mut Context<Self>) {
        let _guard = self.obs.enter(StopSupervisor::NAME);
        ctx.stop();
    }
}

impl Handler<GetSupervisorState> for HostSupervisor {
    type Result = MessageResult<GetSupervisorState>;
    fn handle(&mut self, _: GetSupervisorState, _: &mut Context<Self>) -> Self::Result {
        let _guard = self.obs.enter(GetSupervisorState::NAME);
        let mut s = self.state.clone();
        s.hosts = self.hosts.len();
        s.connected = self.hosts.values().filter(|h| h.conn.is_some()).count();
        s.handshakes_in_flight =
            self.settings.max_concurrent_handshakes.max(1) - self.permits.available_permits();
        MessageResult(s)
    }
}

// ------------------------------------------------------------------------------------------
// Postgres

/// The host table's columns, in [`PostgresHostStore`]'s `SELECT` order.
const HOST_COLUMNS: &str = "id, hostname, status, last_seq, account_count, account_limit, \
consecutive_failures, trusted, no_ssl, relay_allowed, inversion_warn_only, \
subscribed_at IS NOT NULL";

/// One statement for all status writes; `banned` stays `banned`.
pub const STATUSES_SQL: &str = "\
UPDATE hosts AS h SET \
  status = CASE WHEN h.status = 'banned' THEN 'banned' ELSE v.status END, \
  consecutive_failures = v.failures, \
  last_connected_at = CASE WHEN v.connected THEN now() ELSE h.last_connected_at END, \
  subscribed_at = CASE WHEN v.subscribed THEN coalesce(h.subscribed_at, now()) ELSE h.subscribed_at END, \
  updated_at = now() \
FROM unnest($1::bigint[], $2::text[], $3::int[], $4::bool[], $5::bool[]) \
  AS v(id, status, failures, connected, subscribed) \
WHERE h.id = v.id";

/// The production host store.
#[derive(Clone, Debug)]
pub struct PostgresHostStore {
    db: Db,
}

impl PostgresHostStore {
    pub fn new(db: Db) -> PostgresHostStore {
        PostgresHostStore { db }
    }
}

fn host_row(row: &tokio_postgres::Row) -> Result<HostRecord, DbError> {
    let status: String = row.try_get(2)?;
    let failures: i32 = row.try_get(6)?;
    Ok(HostRecord {
        id: row.try_get(0)?,
        hostname: row.try_get(1)?,
        // The CHECK constraint admits only known values; anything else reads as offline.
        status: status.parse().unwrap_or(HostStatus::Offline),
        cursor: row.try_get(3)?,
        account_count: row.try_get(4)?,
        account_limit: row.try_get(5)?,
        failures: u32::try_from(failures).unwrap_or(0),
        trusted: row.try_get(7)?,
        no_ssl: row.try_get(8)?,
        relay_allowed: row.try_get(9)?,
        inversion_warn_only: row.try_get(10)?,
        subscribed: row.try_get(11)?,
    })
}

impl HostStore for PostgresHostStore {
    fn load_hosts(&self) -> BoxFuture<'static, Result<Vec<HostRecord>, DbError>> {
        let db = self.db.clone();
        Box::pin(async move {
            let client = db.client().await?;
            let rows = client
                .query(
                    &format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY id"),
                    &[],
                )
                .await?;
            rows.iter().map(host_row).collect()
        })
    }

    fn write_statuses(&self, writes: Vec<StatusWrite>) -> BoxFuture<'static, Result<u64, DbError>> {
        let db = self.db.clone();
        Box::pin(async move {
            let ids: Vec<i64> = writes.iter().map(|w| w.host_id).collect();
            let statuses: Vec<&str> = writes.iter().map(|w| w.status.as_str()).collect();
            let failures: Vec<i32> = writes
                .iter()
                .map(|w| i32::try_from(w.failures).unwrap_or(i32::MAX))
                .collect();
            let connected: Vec<bool> = writes.iter().map(|w| w.connected).collect();
            let subscribed: Vec<bool> = writes.iter().map(|w| w.subscribed).collect();
            let client = db.client().await?;
            Ok(client
                .execute(
                    STATUSES_SQL,
                    &[&ids, &statuses, &failures, &connected, &subscribed],
                )
                .await?)
        })
    }

    fn reset_cursor(&self, host_id: i64) -> BoxFuture<'static, Result<(), DbError>> {
        let db = self.db.clone();
        Box::pin(async move {
            let client = db.client().await?;
            client
                .execute(
                    "UPDATE hosts SET last_seq = 0, subscribed_at = NULL, updated_at = now() \
                     WHERE id = $1",
                    &[&host_id],
                )
                .await?;
            Ok(())
        })
    }

    fn add_host(&self, host: NewHost) -> BoxFuture<'static, Result<HostRecord, DbError>> {
        let db = self.db.clone();
        Box::pin(async move {
            let client = db.client().await?;
            let limit = host.account_limit.unwrap_or(100);
            let row = client
                .query_one(
                    &format!(
                        "INSERT INTO hosts (hostname, no_ssl, admin_added, ssrf_exempt, account_limit) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (hostname) DO UPDATE SET updated_at = now() \
                         RETURNING {HOST_COLUMNS}"
                    ),
                    &[
                        &host.hostname,
                        &host.no_ssl,
                        &host.admin_added,
                        &host.ssrf_exempt,
                        &limit,
                    ],
                )
                .await?;
            host_row(&row)
        })
    }

    fn unban(&self, host_id: i64) -> BoxFuture<'static, Result<(), DbError>> {
        let db = self.db.clone();
        Box::pin(async move {
            let client = db.client().await?;
            client
                .execute(
                    "UPDATE hosts SET status = 'active', consecutive_failures = 0, \
                     updated_at = now() WHERE id = $1",
                    &[&host_id],
                )
                .await?;
            Ok(())
        })
    }

    fn set_account_limit(
        &self,
        host_id: i64,
        limit: i64,
    ) -> BoxFuture<'static, Result<(), DbError>> {
        let db = self.db.clone();
        Box::pin(async move {
            let client = db.client().await?;
            client
                .execute(
                    "UPDATE hosts SET account_limit = $2, updated_at = now() WHERE id = $1",
                    &[&host_id, &limit],
                )
                .await?;
            Ok(())
        })
    }

    fn set_inversion_warn_only(
        &self,
        host_id: i64,
        on: bool,
    ) -> BoxFuture<'static, Result<(), DbError>> {
        let db = self.db.clone();
        Box::pin(async move {
            let client = db.client().await?;
            client
                .execute(
                    "UPDATE hosts SET inversion_warn_only = $2, updated_at = now() WHERE id = $1",
                    &[&host_id, &on],
                )
                .await?;
            Ok(())
        })
    }
}
