//! ValidatorShard: N of them, one thread each; the DID's hash picks the shard
//! ([`super::shard_router`]), so one account's events are handled in order with no locks.
//!
//! What a shard owns: its [`AccountStore`] (the accounts of its DIDs, an LRU over Postgres),
//! the frames it holds while an identity, a fresh re-resolution, an account row or a
//! `getRepoStatus` answer is on its way, and an outbox to the Sequencer. What it never does:
//! read a socket, assign a seq, write account state itself (the write-behind does once the
//! event is durable), rebuild an event from structs (rewrites are byte-level, PROTOCOL.md §9),
//! or forward anything whose signature it has not verified (lesson 19).
//!
//! How one frame goes through (the rules are the pure [`shard_rules`]; this file is the I/O
//! around them):
//! 1. `decode_frame`, then [`shard_rules::decide`] with the cached account, the resolver's
//!    memory cache ([`Resolver::cached`]) and the source host, in a loop: each outcome either
//!    finishes the event (forward with its rewrite and account change, or drop with a counted
//!    reason) or names one step of I/O. Steps that take milliseconds against a local Postgres
//!    (load, create or move an account) are awaited in place; steps that wait on another
//!    server (resolving an identity, a fresh re-resolution, the host's `getRepoStatus`) are
//!    never awaited by the shard: the frame is **held** and a task on the shard's thread does
//!    the I/O, then wakes the shard, which decides again with the answer.
//! 2. While a DID has held frames, its later frames queue behind them (order per account),
//!    while every other DID goes on. Holds are bounded per DID and per shard; at the bound the
//!    shard stops taking frames from its queue until holds drain (so Subscribers stop reading:
//!    delay, never drop). A hold ends within `hold_for`: an identity that is still not
//!    resolvable then is dropped as `identity-unresolvable` (counted; nothing unverified is
//!    ever forwarded); an account row Postgres could not give in that time is abandoned
//!    without completing its cursor mark, so the host's cursor stays below it and the event
//!    comes again after a reconnect or a restart.
//! 3. Forwarded events go into a bounded outbox; one task per shard sends whatever is in it as
//!    one [`IngestBatch`] and awaits the answer before the next (ordered, one message in
//!    flight, the round trip paid per batch).
//!
//! Operators' changes ([`AccountCommand`]: takedown, reversal, promotion, from
//! `account_admin`) come through the same queue, so they fall between two of the account's
//! frames: the cached record takes the new local status (Postgres already has it), frames
//! already held for the DID are decided with it when they wake, and, when asked, the shard
//! emits the relay's own `#account` for the account (its published `active`/`status`) into the
//! outbox. The command is answered from the outbox task once everything before it is
//! sequenced, with the highest seq among them, which is what lets a takedown wait until the
//! account's earlier events are durable before it masks them.
//!
//! Panics: the loop runs under `catch_unwind`; a panic is counted as a restart of the shard
//! (`rookery_actor_restarts_total{actor="validator_shard",reason="panic"}`), the frame in hand
//! is lost with its mark abandoned (the cursor holds below it), and the loop starts again
//! with the same queue, cache and holds.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::Arbiter;
use futures_util::FutureExt;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::account_store::{AccountStore, AccountStoreSettings, AccountStoreState};
use super::host_supervisor::InversionWarnOnly;
use super::obs::{ActorMetrics, ActorObs, InstrumentedAddr};
use super::resolver::{ResolveError, ResolvedIdentity, Resolver};
use super::sequencer::{EventKind, IngestBatch, IngestEvent, Origin, Sequencer, SequencerError};
use super::shard_router::{
    AccountCommand, CommandDone, CommandFailed, ShardInput, ShardQueue, UpstreamFrame,
};
use super::shard_rules::{
    self, AccountChange, DropReason, EventFacts, IdentityView, Note, Rewrite, RuleOutcome, Source,
    UPSTREAM_ACTIVE, UPSTREAM_INACTIVE,
};
use crate::atproto::frame::{self, Frame};
use crate::atproto::validate::{
    CommitVerdict, Inversion, ValidationPolicy, validate_commit, validate_sync,
};
use crate::store::postgres::Db;

// ------------------------------------------------------------------------------------------
// Settings, metrics, observable state

/// Settings of every shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorShardSettings {
    /// Strict by default; `--lenient-legacy` gives `ValidationPolicy::lenient()`.
    pub policy: ValidationPolicy,
    /// Frames held for one DID before the shard stops reading its queue.
    pub hold_per_did: usize,
    /// Frames held by one shard before it stops reading its queue.
    pub hold_per_shard: usize,
    /// How long a frame may be held before it is dropped (identity) or abandoned (store).
    pub hold_for: Duration,
    /// First retry delay of a failing resolution or account load; doubles up to 16×.
    pub retry_after: Duration,
    /// Whole-request bound of a `getRepoStatus` re-check.
    pub recheck_timeout: Duration,
    /// Forwarded events waiting for the Sequencer, per shard.
    pub outbox: usize,
    pub account_store: AccountStoreSettings,
}

impl Default for ValidatorShardSettings {
    fn default() -> Self {
        ValidatorShardSettings {
            policy: ValidationPolicy::default(),
            hold_per_did: 256,
            hold_per_shard: 10_000,
            hold_for: Duration::from_secs(60),
            retry_after: Duration::from_secs(1),
            recheck_timeout: Duration::from_secs(10),
            outbox: 1_024,
            account_store: AccountStoreSettings::default(),
        }
    }
}

/// The shards' counters (bounded labels only: no per-host or per-DID label).
#[derive(Clone, Debug)]
pub struct ShardMetrics {
    forwarded: IntCounterVec,
    dropped: IntCounterVec,
    notes: IntCounterVec,
    inversions: IntCounterVec,
    held: IntGauge,
    queued: prometheus::IntGaugeVec,
}

impl ShardMetrics {
    pub fn register(registry: &Registry) -> Result<ShardMetrics, prometheus::Error> {
        let m = ShardMetrics {
            forwarded: IntCounterVec::new(
                Opts::new(
                    "rookery_shard_forwarded_total",
                    "Events validated and sent to the Sequencer, by kind",
                ),
                &["kind"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "rookery_shard_dropped_total",
                    "Events dropped on purpose by a ValidatorShard, by reason",
                ),
                &["reason"],
            )?,
            notes: IntCounterVec::new(
                Opts::new(
                    "rookery_shard_notes_total",
                    "Forwarded events worth counting (discontinuity, rollback, duplicate #sync, ...)",
                ),
                &["note"],
            )?,
            inversions: IntCounterVec::new(
                Opts::new(
                    "rookery_shard_commit_inversions_total",
                    "Accepted commits by how their MST change was checked",
                ),
                &["inversion"],
            )?,
            held: IntGauge::new(
                "rookery_shard_held_frames",
                "Frames held while an identity, account or upstream status is fetched",
            )?,
            queued: prometheus::IntGaugeVec::new(
                Opts::new(
                    "rookery_shard_queue_frames",
                    "Frames waiting in each shard's queue",
                ),
                &["shard"],
            )?,
        };
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.notes.clone()))?;
        registry.register(Box::new(m.inversions.clone()))?;
        registry.register(Box::new(m.held.clone()))?;
        registry.register(Box::new(m.queued.clone()))?;
        Ok(m)
    }

    /// Events dropped so far for `reason` (tests).
    pub fn dropped(&self, reason: &str) -> u64 {
        self.dropped.with_label_values(&[reason]).get()
    }

    /// Forwarded events counted with `note` (tests).
    pub fn noted(&self, note: &str) -> u64 {
        self.notes.with_label_values(&[note]).get()
    }

    /// Forwarded events of `kind` (`commit`, `sync`, `identity`, `account`).
    pub fn forwarded(&self, kind: &str) -> u64 {
        self.forwarded.with_label_values(&[kind]).get()
    }

    /// Accepted commits by inversion label (`verified`, `legacy-op`, ...).
    pub fn inversions(&self, inversion: &str) -> u64 {
        self.inversions.with_label_values(&[inversion]).get()
    }
}

/// What one shard has done (tests, the admin API, `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardState {
    pub received: u64,
    pub forwarded: u64,
    pub dropped: u64,
    /// Frames abandoned (mark not completed) because their account row could not be had.
    pub abandoned: u64,
    pub held_now: usize,
    pub held_peak: usize,
    /// Resolutions and fresh re-resolutions started for held frames.
    pub lookups: u64,
    pub upstream_rechecks: u64,
    pub panics: u64,
    /// Operators' account commands handled (takedowns, reversals, promotions).
    pub commands: u64,
    pub accounts: AccountStoreState,
}

/// A shard's state, shared with whoever watches it.
pub type ShardProbe = Arc<Mutex<ShardState>>;

/// Wall-clock µs since the UNIX epoch (the rules' and `validate.rs`'s time). Injected so tests
/// can pin it.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`WallClock`].
pub fn system_clock() -> WallClock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// What every shard shares.
#[derive(Clone)]
pub struct ShardDeps {
    pub resolver: Resolver,
    pub db: Db,
    pub sequencer: InstrumentedAddr<Sequencer>,
    pub actor_metrics: ActorMetrics,
    pub metrics: ShardMetrics,
    pub clock: WallClock,
    /// Hosts whose inversion failures only warn (the supervisor keeps the set).
    pub warn_only: InversionWarnOnly,
    /// TLS of `getRepoStatus` calls to hosts (`upstream_tls::UpstreamTls::http_config`).
    pub tls: Arc<rustls::ClientConfig>,
}

// ------------------------------------------------------------------------------------------
// Handle

/// The running shards.
pub struct ValidatorShards {
    arbiters: Vec<Arbiter>,
    probes: Vec<ShardProbe>,
    stop: Vec<oneshot::Sender<()>>,
    stopped: Vec<oneshot::Receiver<()>>,
}

impl ValidatorShards {
    /// Starts one shard per queue, each on its own arbiter (thread). Must be called inside an
    /// actix system.
    pub fn start(
        queues: Vec<ShardQueue>,
        deps: ShardDeps,
        settings: ValidatorShardSettings,
    ) -> ValidatorShards {
        let mut shards = ValidatorShards {
            arbiters: Vec::new(),
            probes: Vec::new(),
            stop: Vec::new(),
            stopped: Vec::new(),
        };
        for (index, queue) in queues.into_iter().enumerate() {
            let arbiter = Arbiter::new();
            let probe = ShardProbe::default();
            let (stop_tx, stop_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let (deps, settings, shard_probe) =
                (deps.clone(), settings.clone(), Arc::clone(&probe));
            // The shard is built on its own thread: awc's client is `!Send`.
            arbiter.spawn_fn(move || {
                actix_rt::spawn(run_shard(
                    index,
                    queue,
                    deps,
                    settings,
                    shard_probe,
                    stop_rx,
                    done_tx,
                ));
            });
            shards.arbiters.push(arbiter);
            shards.probes.push(probe);
            shards.stop.push(stop_tx);
            shards.stopped.push(done_rx);
        }
        shards
    }

    /// A snapshot of each shard's state.
    pub fn states(&self) -> Vec<ShardState> {
        self.probes
            .iter()
            .map(|p| *p.lock().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }

    /// Stops taking frames, handles those already queued, sends the outbox, then stops the
    /// threads. Held frames are abandoned (their cursors stay below them). Call after the
    /// Subscribers stopped and before the Sequencer drains.
    pub async fn shutdown(self) {
        for stop in self.stop {
            let _ = stop.send(());
        }
        for done in self.stopped {
            let _ = done.await;
        }
        for arbiter in self.arbiters {
            arbiter.stop();
            let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
        }
    }
}

// ------------------------------------------------------------------------------------------
// The shard

/// Why a frame is held, and so what runs before the shard decides on it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldCause {
    /// No identity in the resolver's memory: resolve it.
    Resolve,
    /// The rules asked for a fresh resolution (host mismatch, bad signature, `#identity`).
    Fresh { purge: bool },
    /// The account row could not be read or created: try again after a delay.
    Store,
    /// Ask the host's `getRepoStatus`.
    Recheck,
}

/// What a finished piece of I/O tells the shard about the head frame of a DID's hold.
#[derive(Clone, Debug, Default)]
struct Answer {
    /// A resolution made for this very frame.
    fresh: Option<Arc<ResolvedIdentity>>,
    /// A resolution that failed for good or ran out of time (`Broken` / `Unresolvable`).
    identity_failed: Option<IdentityView<'static>>,
    /// `getRepoStatus`: the upstream status the host reports now (`None`: no answer).
    upstream_status: Option<String>,
    /// The re-check ran (answered or not): do not ask again for this frame.
    rechecked: bool,
}

/// A wake-up from a task: the DID and what it learned.
struct Wake {
    did: String,
    answer: Answer,
    /// The hold ran out of time for an account row: abandon the held frames.
    give_up_store: bool,
}

struct Held {
    frames: VecDeque<UpstreamFrame>,
    /// When the hold of the head frame ends. A head frame held again (e.g. a fresh
    /// resolution, then an account row Postgres cannot give) keeps its deadline, so it is
    /// decided within `hold_for` however often it goes round.
    deadline: Instant,
}

/// What goes into a shard's outbox, in order.
enum Outgoing {
    Event(IngestEvent),
    /// An account command's answer, sent once every event before it is sequenced.
    Sequenced {
        done: oneshot::Sender<Result<CommandDone, CommandFailed>>,
        announced: Option<(bool, Option<String>)>,
    },
}

/// What handling one frame came to.
enum Handled {
    Done,
    Hold(UpstreamFrame, HoldCause),
}

struct Shard {
    index: usize,
    settings: ValidatorShardSettings,
    resolver: Resolver,
    store: AccountStore,
    metrics: ShardMetrics,
    obs: ActorObs,
    clock: WallClock,
    warn_only: InversionWarnOnly,
    probe: ShardProbe,
    state: ShardState,
    holds: HashMap<String, Held>,
    held_total: usize,
    /// A DID whose hold reached `hold_per_did`: the queue is not read until it drains.
    blocked_on: Option<String>,
    wakes: mpsc::Sender<Wake>,
    outbox: mpsc::Sender<Outgoing>,
    http: awc::Client,
    /// Drops seen per reason, for sampled logging.
    drop_counts: HashMap<&'static str, u64>,
}

/// The actor label of the shards (their restarts and handler times).
pub const SHARD_ACTOR: &str = "validator_shard";

async fn run_shard(
    index: usize,
    mut queue: ShardQueue,
    deps: ShardDeps,
    settings: ValidatorShardSettings,
    probe: ShardProbe,
    mut stop: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
) {
    // One wake per hold, and holds are bounded by `hold_per_shard` (one more can start while
    // at the bound), so this never fills; if it did, a task would wait, never drop its wake,
    // and the loop drains wakes before anything else.
    let (wakes, mut wake_rx) = mpsc::channel(settings.hold_per_shard.max(1) + 1);
    let (outbox, outbox_rx) = mpsc::channel(settings.outbox.max(1));
    let sender = actix_rt::spawn(send_outbox(index, outbox_rx, deps.sequencer.clone()));
    let mut shard = Shard {
        index,
        store: AccountStore::new(deps.db.clone(), settings.account_store),
        resolver: deps.resolver.clone(),
        metrics: deps.metrics.clone(),
        obs: deps.actor_metrics.actor(SHARD_ACTOR, settings.outbox),
        clock: Arc::clone(&deps.clock),
        warn_only: deps.warn_only.clone(),
        http: awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(Arc::clone(&deps.tls)))
            .timeout(settings.recheck_timeout)
            .disable_redirects()
            .finish(),
        settings,
        probe,
        state: ShardState::default(),
        holds: HashMap::new(),
        held_total: 0,
        blocked_on: None,
        wakes,
        outbox,
        drop_counts: HashMap::new(),
    };
    let stopping = Arc::new(AtomicBool::new(false));
    loop {
        let run = shard.run(&mut queue, &mut wake_rx, &mut stop, &stopping);
        match AssertUnwindSafe(run).catch_unwind().await {
            Ok(()) => break,
            Err(_) => {
                shard.state.panics += 1;
                shard.obs.restarted("panic");
                tracing::error!(
                    shard = index,
                    "validator shard panicked; restarting its loop"
                );
                shard.publish();
            }
        }
    }
    // Frames still held are abandoned: their marks drop uncompleted.
    shard.metrics.held.sub(shard.held_total as i64);
    shard.holds.clear();
    shard.held_total = 0;
    shard.publish();
    drop(shard);
    let _ = sender.await;
    let _ = done.send(());
}

impl Shard {
    async fn run(
        &mut self,
        queue: &mut ShardQueue,
        wakes: &mut mpsc::Receiver<Wake>,
        stop: &mut oneshot::Receiver<()>,
        stopping: &AtomicBool,
    ) {
        let shard_label = self.index.to_string();
        loop {
            // While stopping, holds do not stop the queue's last frames: they are abandoned.
            let room = stopping.load(Ordering::Relaxed)
                || (self.held_total < self.settings.hold_per_shard.max(1)
                    && self.blocked_on.is_none());
            tokio::select! {
                biased;
                Some(wake) = wakes.recv() => self.on_wake(wake).await,
                _ = &mut *stop, if !stopping.load(Ordering::Relaxed) => {
                    stopping.store(true, Ordering::Relaxed);
                    queue.close();
                }
                next = queue.recv(), if room => match next {
                    Some(input) => {
                        self.metrics
                            .queued
                            .with_label_values(&[&shard_label])
                            .set(queue.len() as i64);
                        match input {
                            ShardInput::Frame(frame) => self.on_frame(frame).await,
                            ShardInput::Command(command) => self.on_command(command).await,
                        }
                    }
                    None => return,
                },
                else => {
                    // Stopping with no room: nothing more will be handled.
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
            self.publish();
        }
    }

    fn publish(&mut self) {
        self.state.held_now = self.held_total;
        self.state.accounts = self.store.state();
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = self.state;
    }

    async fn on_frame(&mut self, frame: UpstreamFrame) {
        let _guard = self.obs.enter("upstream_frame");
        self.state.received += 1;
        if let Some(held) = self.holds.get_mut(&frame.did) {
            // Behind the DID's held frames, in order.
            held.frames.push_back(frame);
            self.held_total += 1;
            self.metrics.held.inc();
            if held.frames.len() >= self.settings.hold_per_did.max(1) {
                self.blocked_on = held.frames.front().map(|f| f.did.clone());
            }
            self.note_held();
            return;
        }
        match self.handle(frame, Answer::default()).await {
            Handled::Done => {}
            Handled::Hold(frame, cause) => {
                let did = frame.did.clone();
                let mut frames = VecDeque::new();
                frames.push_back(frame);
                let deadline = Instant::now() + self.settings.hold_for;
                self.hold(did, frames, cause, deadline);
            }
        }
    }

    /// An operator's change to one account (see the module doc). Frames the DID has held
    /// are not released early: they are decided with the new status when they wake.
    async fn on_command(&mut self, command: AccountCommand) {
        let _guard = self.obs.enter("account_command");
        self.state.commands += 1;
        let AccountCommand {
            did,
            local_status,
            announce,
            done,
        } = command;
        match self.store.load(&did).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let _ = done.send(Err(CommandFailed::UnknownAccount));
                return;
            }
            Err(e) => {
                tracing::warn!(shard = self.index, %did, error = %e, "account command: row not loaded");
                let _ = done.send(Err(CommandFailed::Store(e.reason())));
                return;
            }
        }
        if let Some(status) = local_status {
            self.store.set_local_status(&did, status);
        }
        let mut announced = None;
        if announce {
            let Some(record) = self.store.cached(&did) else {
                let _ = done.send(Err(CommandFailed::Store("evicted")));
                return;
            };
            let (active, status) = (
                record.is_active(),
                record.published_status().map(str::to_string),
            );
            let time = datetime_of_micros((self.clock)());
            let Ok(bytes) = frame::encode_account(0, &did, &time, active, status.as_deref()) else {
                let _ = done.send(Err(CommandFailed::Encode));
                return;
            };
            tracing::info!(shard = self.index, %did, active, status = ?status, "relay #account emitted");
            let event = IngestEvent {
                did: did.clone(),
                kind: EventKind::Account,
                frame: bytes.into(),
                account: None,
                origin: Origin::Relay,
            };
            if self.outbox.send(Outgoing::Event(event)).await.is_err() {
                let _ = done.send(Err(CommandFailed::Stopped));
                return;
            }
            announced = Some((active, status));
        }
        // A closed outbox drops `done`: the caller learns the shard stopped.
        let _ = self
            .outbox
            .send(Outgoing::Sequenced { done, announced })
            .await;
    }

    fn note_held(&mut self) {
        self.state.held_peak = self.state.held_peak.max(self.held_total);
    }

    /// Holds `frames` (the first one caused it) until `deadline` at the latest, and starts
    /// the I/O that will wake them.
    fn hold(
        &mut self,
        did: String,
        frames: VecDeque<UpstreamFrame>,
        cause: HoldCause,
        deadline: Instant,
    ) {
        let count = frames.len();
        let (host, no_ssl) = frames
            .front()
            .map(|f| (f.hostname.to_string(), f.no_ssl))
            .unwrap_or_default();
        self.holds.insert(did.clone(), Held { frames, deadline });
        self.held_total += count;
        self.metrics.held.add(count as i64);
        self.note_held();
        let resolver = self.resolver.clone();
        let wakes = self.wakes.clone();
        let retry = self.settings.retry_after;
        match cause {
            HoldCause::Resolve | HoldCause::Fresh { .. } => {
                self.state.lookups += 1;
                actix_rt::spawn(async move {
                    let answer = lookup(&resolver, &did, cause, retry, deadline).await;
                    let _ = wakes
                        .send(Wake {
                            did,
                            answer,
                            give_up_store: false,
                        })
                        .await;
                });
            }
            HoldCause::Store => {
                actix_rt::spawn(async move {
                    let give_up = Instant::now() + retry > deadline;
                    if !give_up {
                        tokio::time::sleep(retry).await;
                    }
                    let _ = wakes
                        .send(Wake {
                            did,
                            answer: Answer::default(),
                            give_up_store: give_up,
                        })
                        .await;
                });
            }
            HoldCause::Recheck => {
                self.state.upstream_rechecks += 1;
                let http = self.http.clone();
                actix_rt::spawn(async move {
                    let status = repo_status(&http, &host, no_ssl, &did).await;
                    let _ = wakes
                        .send(Wake {
                            did,
                            answer: Answer {
                                upstream_status: status,
                                rechecked: true,
                                ..Answer::default()
                            },
                            give_up_store: false,
                        })
                        .await;
                });
            }
        }
    }

    async fn on_wake(&mut self, wake: Wake) {
        let Some(held) = self.holds.remove(&wake.did) else {
            return;
        };
        let _guard = self.obs.enter("wake");
        self.held_total -= held.frames.len();
        self.metrics.held.sub(held.frames.len() as i64);
        if self.blocked_on.as_deref() == Some(wake.did.as_str()) {
            self.blocked_on = None;
        }
        let mut frames = held.frames;
        if wake.give_up_store {
            for frame in frames {
                // The mark drops uncompleted: the cursor stays below this event.
                self.state.abandoned += 1;
                self.count_drop("account-store-unavailable", &frame, false);
            }
            return;
        }
        let mut answer = wake.answer;
        let failed = answer.identity_failed;
        // The head frame keeps its deadline when it is held again; a frame behind it that
        // becomes the head starts a hold of its own.
        let mut deadline = held.deadline;
        while let Some(frame) = frames.pop_front() {
            match self.handle(frame, std::mem::take(&mut answer)).await {
                Handled::Done => {}
                Handled::Hold(frame, cause) => {
                    frames.push_front(frame);
                    self.hold(wake.did, frames, cause, deadline);
                    return;
                }
            }
            deadline = Instant::now() + self.settings.hold_for;
            // An identity that failed for good fails every frame held with it.
            answer.identity_failed = failed;
        }
    }

    /// Decides on one frame, doing the quick I/O in place. Returns the frame when it must
    /// wait for slow I/O.
    async fn handle(&mut self, f: UpstreamFrame, answer: Answer) -> Handled {
        let decoded = match frame::decode_frame(&f.frame) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.drop_event(f, DropReason::Invalid(e.reason()));
                return Handled::Done;
            }
        };
        let facts = match &decoded {
            Frame::Commit(c) if c.repo == f.did => EventFacts::Commit,
            Frame::Sync(s) if s.did == f.did => EventFacts::Sync,
            Frame::Identity(i) if i.did == f.did => EventFacts::Identity {
                handle: i.handle.as_deref(),
            },
            Frame::Account(a) if a.did == f.did => EventFacts::Account {
                active: a.active,
                status: a.status.as_deref(),
            },
            _ => {
                self.drop_event(f, DropReason::Invalid("frame-mismatch"));
                return Handled::Done;
            }
        };
        let identity = match (&answer.fresh, answer.identity_failed) {
            (Some(fresh), _) => Ok(Some(Arc::clone(fresh))),
            (None, Some(view)) => Err(view),
            (None, None) => match self.resolver.cached(&f.did).await {
                Some(Ok(id)) => Ok(Some(id)),
                Some(Err(e)) if !e.is_transient() => Err(IdentityView::Broken),
                _ => Ok(None),
            },
        };
        let fresh = answer.fresh.is_some();
        match (&identity, facts) {
            // `#identity` is always decided on a purge and a fresh resolution.
            (Ok(_), EventFacts::Identity { .. }) if !fresh => {
                return Handled::Hold(f, HoldCause::Fresh { purge: true });
            }
            (Ok(None), _) => return Handled::Hold(f, HoldCause::Resolve),
            _ => {}
        }
        match self.store.load(&f.did).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => return Handled::Hold(f, HoldCause::Store),
            Err(e) => {
                tracing::warn!(shard = self.index, did = %f.did, error = %e, "account row unusable");
                self.drop_event(f, DropReason::Invalid("account-row"));
                return Handled::Done;
            }
        }
        let source_host_id = f.cursor.host_id();
        let mut status_change: Option<String> = None;
        let mut rechecked = answer.rechecked;
        let now = (self.clock)();
        // Each I/O step happens at most once per event, so this ends well within the bound.
        for _ in 0..8 {
            let view = match &identity {
                Ok(Some(id)) => IdentityView::Resolved {
                    pds_host: &id.pds.host,
                    handle: id.handle.as_deref(),
                    fresh,
                },
                Ok(None) => IdentityView::Pending,
                Err(view) => *view,
            };
            let source = Source {
                host_id: source_host_id,
                hostname: &f.hostname,
            };
            let account = self.store.cached(&f.did);
            let mut outcome = shard_rules::decide(facts, account, view, &source, now);
            if outcome == RuleOutcome::Validate {
                let (Ok(Some(id)), Some(account)) = (&identity, account) else {
                    break;
                };
                outcome = match &decoded {
                    Frame::Commit(c) => {
                        let policy = ValidationPolicy {
                            inversion_failure_warns: self.warn_only.contains(source_host_id),
                            ..self.settings.policy
                        };
                        let result = validate_commit(
                            c,
                            &id.signing_key,
                            account.sync.as_ref(),
                            now,
                            &policy,
                        );
                        if let Ok(CommitVerdict::Accept { inversion, .. }) = &result {
                            self.count_inversion(*inversion);
                        }
                        shard_rules::after_commit(&result, account, fresh)
                    }
                    Frame::Sync(s) => {
                        let result = validate_sync(
                            s,
                            &id.signing_key,
                            account.sync.as_ref(),
                            now,
                            &self.settings.policy,
                        );
                        shard_rules::after_sync(&result, account, fresh, f.catching_up)
                    }
                    _ => break,
                };
            }
            match outcome {
                RuleOutcome::Forward(mut forward) => {
                    if let Some(status) = status_change.take() {
                        let change = forward.change.get_or_insert(AccountChange {
                            uid: self.store.cached(&f.did).map_or(0, |a| a.uid),
                            sync: None,
                            upstream_status: None,
                        });
                        change.upstream_status.get_or_insert(status);
                    }
                    self.forward(f, &decoded, forward.rewrite, forward.change, forward.note)
                        .await;
                    return Handled::Done;
                }
                RuleOutcome::Drop(reason) => {
                    self.drop_event(f, reason);
                    return Handled::Done;
                }
                RuleOutcome::CreateAccount => match self.store.create(&f.did, source_host_id).await
                {
                    Ok(_) => {}
                    Err(e) if e.is_transient() => return Handled::Hold(f, HoldCause::Store),
                    Err(e) => {
                        tracing::warn!(shard = self.index, did = %f.did, error = %e, "account not created");
                        self.drop_event(f, DropReason::Invalid("account-row"));
                        return Handled::Done;
                    }
                },
                RuleOutcome::MoveAccount { to_host_id } => {
                    if let Err(e) = self.store.move_to_host(&f.did, to_host_id).await {
                        // The cache moved; the row follows on a later event after a reload.
                        tracing::warn!(shard = self.index, did = %f.did, error = %e, "account move not written");
                    } else {
                        tracing::info!(shard = self.index, did = %f.did, host = %f.hostname, "account migrated");
                    }
                }
                RuleOutcome::ReResolve => {
                    return Handled::Hold(f, HoldCause::Fresh { purge: false });
                }
                RuleOutcome::Hold => return Handled::Hold(f, HoldCause::Resolve),
                RuleOutcome::RecheckUpstream { next_allowed } => {
                    if !rechecked {
                        return Handled::Hold(f, HoldCause::Recheck);
                    }
                    rechecked = false;
                    self.store.set_upstream_recheck_after(&f.did, next_allowed);
                    if let (Some(status), Some(account)) =
                        (&answer.upstream_status, self.store.cached(&f.did))
                        && &account.upstream_status != status
                    {
                        let change = AccountChange {
                            uid: account.uid,
                            sync: None,
                            upstream_status: Some(status.clone()),
                        };
                        self.store.apply(&f.did, &change);
                        status_change = Some(status.clone());
                    }
                }
                RuleOutcome::Validate => break,
            }
        }
        // Only a bug in the rules gets here; never forward what was not decided.
        tracing::error!(shard = self.index, did = %f.did, "decision loop did not end");
        self.drop_event(f, DropReason::Invalid("undecided"));
        Handled::Done
    }

    async fn forward(
        &mut self,
        f: UpstreamFrame,
        decoded: &Frame,
        rewrite: Rewrite,
        change: Option<AccountChange>,
        note: Option<Note>,
    ) {
        let bytes = match &rewrite {
            Rewrite::None => Ok(f.frame.clone()),
            Rewrite::Account { active, status } => {
                frame::rewrite_account(&f.frame, *active, status.as_deref())
            }
            Rewrite::StripHandle => frame::strip_identity_handle(&f.frame),
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                self.drop_event(f, DropReason::Invalid(e.reason()));
                return;
            }
        };
        if let Some(change) = &change {
            self.store.apply(&f.did, change);
        }
        if let Some(note) = note {
            self.metrics.notes.with_label_values(&[note.reason()]).inc();
        }
        self.metrics
            .forwarded
            .with_label_values(&[decoded.kind()])
            .inc();
        self.state.forwarded += 1;
        let event = IngestEvent {
            did: f.did,
            kind: f.kind,
            frame: bytes,
            account: change.as_ref().map(AccountChange::to_write),
            origin: Origin::Upstream {
                cursor: f.cursor,
                permit: f.permit,
            },
        };
        // A full outbox waits (the Sequencer is behind): the queue fills, Subscribers wait.
        if self.outbox.send(Outgoing::Event(event)).await.is_err() {
            tracing::warn!(
                shard = self.index,
                "outbox closed; event not sequenced (its cursor stays below it)"
            );
        }
    }

    fn drop_event(&mut self, f: UpstreamFrame, reason: DropReason) {
        self.count_drop(reason.reason(), &f, !reason.is_quiet());
        // Dropped on purpose: the host's cursor may pass it.
        f.cursor.complete();
    }

    fn count_drop(&mut self, reason: &'static str, f: &UpstreamFrame, log: bool) {
        self.state.dropped += 1;
        self.metrics.dropped.with_label_values(&[reason]).inc();
        let seen = self.drop_counts.entry(reason).or_default();
        *seen += 1;
        // Sampled: the 1st, 2nd, 4th, 8th ... and then every 1,024th of each reason.
        if log && (seen.is_power_of_two() || seen.is_multiple_of(1024)) {
            tracing::info!(
                shard = self.index,
                reason,
                did = %f.did,
                host = %f.hostname,
                seen = *seen,
                "event dropped"
            );
        }
    }

    fn count_inversion(&self, inversion: Inversion) {
        self.metrics
            .inversions
            .with_label_values(&[inversion.reason()])
            .inc();
    }
}

/// Resolves for a held frame: retries transient failures with doubling delays until the
/// hold's deadline.
async fn lookup(
    resolver: &Resolver,
    did: &str,
    cause: HoldCause,
    retry: Duration,
    deadline: Instant,
) -> Answer {
    let fresh = matches!(cause, HoldCause::Fresh { .. });
    let mut delay = retry;
    loop {
        // `#identity` purges and resolves without `resolve_fresh`: that would spend the DID's
        // one forced re-resolution per `fresh_interval`, so a signature failure soon after an
        // `#identity` (every account creation starts with one) would get the stale cached key
        // back and drop a validly signed commit as `bad-signature`.
        let result = match cause {
            HoldCause::Fresh { purge: true } => resolver.purge_and_resolve(did).await,
            HoldCause::Fresh { purge: false } => resolver.resolve_fresh(did).await,
            _ => resolver.resolve(did).await,
        };
        match result {
            Ok(id) => {
                return Answer {
                    fresh: fresh.then_some(id),
                    ..Answer::default()
                };
            }
            Err(e) if !e.is_transient() => {
                return Answer {
                    identity_failed: Some(IdentityView::Broken),
                    ..Answer::default()
                };
            }
            Err(ResolveError::Transient(t)) => {
                tracing::debug!(did, error = %t, "identity lookup failed; retrying");
            }
            Err(_) => {}
        }
        if Instant::now() + delay > deadline {
            return Answer {
                identity_failed: Some(IdentityView::Unresolvable),
                ..Answer::default()
            };
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(retry * 16);
    }
}

/// The upstream status the host reports for `did` now, from its `getRepoStatus`; `None`
/// when it does not answer usefully (the account then stays as it was).
async fn repo_status(http: &awc::Client, host: &str, no_ssl: bool, did: &str) -> Option<String> {
    let scheme = if no_ssl { "http" } else { "https" };
    let url = format!("{scheme}://{host}/xrpc/com.atproto.sync.getRepoStatus");
    let mut response = http
        .get(url)
        .query(&[("did", did)])
        .ok()?
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.body().limit(16 * 1024).await.ok()?;
    let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
    if json.get("did").and_then(|d| d.as_str()) != Some(did) {
        return None;
    }
    let active = json.get("active")?.as_bool()?;
    if active {
        return Some(UPSTREAM_ACTIVE.to_string());
    }
    let status = json.get("status").and_then(|s| s.as_str());
    Some(match status {
        Some(s)
            if !s.is_empty()
                && s.len() <= shard_rules::MAX_UPSTREAM_STATUS_LEN
                && s != UPSTREAM_ACTIVE =>
        {
            s.to_string()
        }
        _ => UPSTREAM_INACTIVE.to_string(),
    })
}

/// An RFC 3339 UTC datetime with milliseconds (`2026-01-01T00:00:00.000Z`) for µs since the
/// UNIX epoch: the `time` of the relay's own events.
pub fn datetime_of_micros(micros: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_micros(micros);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Sends the outbox to the Sequencer: everything ready as one batch, one batch in flight.
/// Account commands' answers ride along: each is answered after the batch that holds the
/// events before it, with the seq of the last of them (a batch's events get consecutive seqs
/// ending at the one the Sequencer answers).
async fn send_outbox(
    index: usize,
    mut outbox: mpsc::Receiver<Outgoing>,
    sequencer: InstrumentedAddr<Sequencer>,
) {
    const MAX_BATCH: usize = 512;
    let mut items = Vec::with_capacity(MAX_BATCH);
    // The highest seq assigned to this shard's events so far (0: none yet).
    let mut last_seq = 0u64;
    while outbox.recv_many(&mut items, MAX_BATCH).await > 0 {
        let mut batch = Vec::with_capacity(items.len());
        // Each answer with the number of events before it in this batch.
        let mut answers = Vec::new();
        for item in items.drain(..) {
            match item {
                Outgoing::Event(event) => batch.push(event),
                Outgoing::Sequenced { done, announced } => {
                    answers.push((batch.len() as u64, done, announced));
                }
            }
        }
        let events = batch.len() as u64;
        let outcome = if batch.is_empty() {
            Ok(last_seq)
        } else {
            match sequencer.send(IngestBatch(batch)).await {
                Ok(Ok(last)) => Ok(last),
                Ok(Err(SequencerError::Halted(reason))) => {
                    tracing::error!(shard = index, reason, "sequencer halted; events not stored");
                    Err(CommandFailed::Halted(reason))
                }
                Err(_) => {
                    tracing::warn!(shard = index, "sequencer gone; events not stored");
                    Err(CommandFailed::Stopped)
                }
            }
        };
        match outcome {
            Ok(last) => {
                let first = (last + 1).saturating_sub(events);
                for (before, done, announced) in answers {
                    let seq = if before == 0 {
                        last_seq
                    } else {
                        first + before - 1
                    };
                    let _ = done.send(Ok(CommandDone { seq, announced }));
                }
                last_seq = last;
            }
            Err(failed) => {
                for (_, done, _) in answers {
                    let _ = done.send(Err(failed));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::syntax::parse_datetime_micros;

    #[test]
    fn the_relays_event_time_is_a_lexicon_datetime_in_milliseconds() {
        let micros = 1_767_225_600_123_456; // 2026-01-01T00:00:00.123456Z
        let time = datetime_of_micros(micros);
        assert_eq!(time, "2026-01-01T00:00:00.123Z");
        assert_eq!(parse_datetime_micros(&time), Ok(1_767_225_600_123_000));
        assert_eq!(datetime_of_micros(0), "1970-01-01T00:00:00.000Z");
    }
}
