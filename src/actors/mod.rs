//! The ingest actors (issue #9), on actix.
//!
//! The path of one event:
//! ```text
//! Subscriber(host) → ValidatorShard[hash(did) % N] → Sequencer → Persister → durable head → Broadcaster
//! ```
//! Which actor runs where, and why:
//! - **Sequencer** (one, supervised): on the ingest arbiter, the one `start_ingest` is called
//!   on. Its critical section is "assign the next seq, queue the event" (lesson 6), so it never
//!   needs a thread of its own and never blocks.
//! - **Persister** (one, supervised): on its **own `Arbiter`** (a dedicated OS thread).
//!   `fdatasync` blocks for milliseconds; on a networking arbiter it would stall every socket
//!   read there. A dedicated arbiter keeps an actor address (instrumented, bounded mailbox,
//!   supervised) instead of a hand-rolled thread and channel, and the Sequencer keeps at most
//!   one batch in flight to it, so its mailbox never grows.
//! - **WriteBehind** (one): on the ingest arbiter. It only awaits Postgres (async I/O), and
//!   its timers then follow that arbiter's clock, which tests pause.
//! - **HostSupervisor** (one) and the **Subscribers** (one per host): on the ingest arbiter;
//!   they only await sockets. [`supervision`] is the restart policy the supervisor applies.
//! - **ValidatorShards** (N): one arbiter (thread) each, since validation is CPU-bound;
//!   [`shard_router::UpstreamFrame`] and [`sequencer::IngestBatch`] are what they receive and
//!   send.
//! - **HostAuthorityResolver**: its fetchers on arbiters of their own.
//! - [`account_admin::AccountAdmin`] (a handle, no actor): an operator's takedowns,
//!   reversals and account-limit promotions, ordered across the owners above (Postgres, the
//!   account's shard, the durable head, the event log's masking, the firehose's ring).
//!
//! [`start_pipeline`] starts all of it around an opened event log and a database.
//!
//! - **Broadcaster** (one, supervised) and **ConsumerSession**s (one per websocket): the
//!   firehose out, assembled by [`firehose::start_firehose`]. The Broadcaster runs on the
//!   arbiter `start_firehose` is called on and only follows the durable head; each session
//!   runs on the HTTP worker that accepted its upgrade (see [`firehose`]) and writes through
//!   its [`consumer_socket`].
//!
//! Memory is bounded in bytes, not slots ([`sequencer::ByteBudget`]): a shard acquires a permit
//! for the frame's length before sending, and the permit travels with the event until it is
//! durable. When the budget is spent, shards (and then Subscribers) stop reading (lesson 10).
//!
//! Every actor kind reports through [`obs`] (mailbox depth, handled, handler time, restarts)
//! and exposes a small observable-state struct that tests and `/metrics` read.

pub mod account_admin;
pub mod account_store;
pub mod broadcaster;
pub mod consumer_session;
pub mod consumer_socket;
pub mod firehose;
pub mod host_supervisor;
pub mod obs;
pub mod persister;
pub mod resolver;
pub mod sequencer;
pub mod shard_router;
pub mod shard_rules;
pub mod subscriber;
pub mod supervision;
pub mod upstream_cursor;
pub mod upstream_tls;
pub mod validator_shard;
pub mod write_behind;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix::{Actor, Arbiter, Supervisor};
use prometheus::Registry;
use tokio::sync::watch;

use crate::store::event_log::{EventLog, EventLogReader};
use crate::store::postgres::Db;
use account_admin::{AccountAdmin, AccountAdminMetrics, AccountAdminSettings};
use host_supervisor::{HostSupervisor, HostSupervisorSettings, PostgresHostStore, StopSupervisor};
use obs::{ActorMetrics, InstrumentedAddr};
use persister::{Persister, PersisterMetrics};
use resolver::{Resolver, ResolverSettings, ResolverStartError};
use sequencer::{ByteBudget, Drain, Sequencer};
use shard_router::ShardRouter;
use subscriber::{AwcConnector, SubscriberDeps, SubscriberMetrics, SubscriberSettings};
use upstream_tls::UpstreamTls;
use validator_shard::{
    ShardDeps, ShardMetrics, ValidatorShardSettings, ValidatorShards, WallClock,
};
use write_behind::{
    FlushNow, PendingWrites, StateSink, WriteBehind, WriteBehindMetrics, WriteBehindSettings,
};

/// Settings of the ingest path's singletons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestSettings {
    /// Bytes of frames allowed between the shards and durability.
    pub budget_bytes: u32,
    pub write_behind: WriteBehindSettings,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            // Room for a dozen maximal (5 MB) frames, or tens of thousands of typical ones.
            budget_bytes: 64 * 1024 * 1024,
            write_behind: WriteBehindSettings::default(),
        }
    }
}

/// The handles of a running ingest path.
pub struct Ingest {
    /// Where ValidatorShards send [`sequencer::IngestEvent`]s.
    pub sequencer: InstrumentedAddr<Sequencer>,
    pub persister: InstrumentedAddr<Persister>,
    pub write_behind: InstrumentedAddr<WriteBehind>,
    /// The durable head (the Broadcaster subscribes).
    pub durable_head: watch::Receiver<u64>,
    /// Shards acquire a permit per frame before sending.
    pub budget: ByteBudget,
    /// Cursors and account state waiting for the write-behind (filled through the hosts'
    /// `upstream_cursor::HostCursor`s and by the Persister).
    pub pending: PendingWrites,
    /// True while Postgres writes are failing (readiness reads it).
    pub degraded: Arc<AtomicBool>,
    /// Replays for consumers.
    pub reader: EventLogReader,
    persister_arbiter: Arbiter,
}

/// Starts the Sequencer and the WriteBehind on the current arbiter and the Persister on a
/// new one, around an opened event log. Must be called inside an actix system.
pub fn start_ingest(
    log: EventLog,
    sink: Arc<dyn StateSink>,
    settings: IngestSettings,
    metrics: &ActorMetrics,
    registry: &Registry,
) -> Result<Ingest, prometheus::Error> {
    let persister_metrics = PersisterMetrics::register(registry)?;
    let write_behind_metrics = WriteBehindMetrics::register(registry)?;
    let pending = PendingWrites::default();
    let degraded = Arc::new(AtomicBool::new(false));
    let budget = ByteBudget::new(settings.budget_bytes);
    let next_seq = log.next_seq();
    let reader = log.reader();

    let persister_obs = metrics.actor(Persister::NAME, Persister::MAILBOX);
    let (persister, durable_head) = Persister::new(
        persister_obs.clone(),
        persister_metrics,
        log,
        pending.clone(),
    );
    let persister_arbiter = Arbiter::new();
    let persister_addr =
        Supervisor::start_in_arbiter(&persister_arbiter.handle(), move |_| persister);
    let persister = InstrumentedAddr::new(persister_addr, persister_obs);

    let sequencer_obs = metrics.actor(Sequencer::NAME, Sequencer::MAILBOX);
    let seq = Sequencer::new(
        sequencer_obs.clone(),
        persister.clone(),
        budget.clone(),
        next_seq,
    );
    let sequencer = InstrumentedAddr::new(Supervisor::start(move |_| seq), sequencer_obs);

    let wb_obs = metrics.actor(WriteBehind::NAME, WriteBehind::MAILBOX);
    let wb = WriteBehind::new(
        wb_obs.clone(),
        pending.clone(),
        sink,
        settings.write_behind,
        Arc::clone(&degraded),
        write_behind_metrics,
    );
    let write_behind = InstrumentedAddr::new(wb.start(), wb_obs);

    Ok(Ingest {
        sequencer,
        persister,
        write_behind,
        durable_head,
        budget,
        pending,
        degraded,
        reader,
        persister_arbiter,
    })
}

impl Ingest {
    /// Waits until every event sequenced so far is durable (or ingest halted), writes the
    /// pending cursors and account state once more, then stops the Persister's arbiter and
    /// waits for its thread, which closes the event log. The Sequencer and WriteBehind stop
    /// with their arbiter.
    pub async fn shutdown(self) {
        self.shutdown_observed(&|_| {}).await;
    }

    /// [`Ingest::shutdown`], telling `step` what it starts.
    pub async fn shutdown_observed(self, step: &dyn Fn(ShutdownStep)) {
        step(ShutdownStep::PersistInFlight);
        let _ = self.sequencer.send(Drain).await;
        step(ShutdownStep::FlushPostgres);
        match self.write_behind.send(FlushNow).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                tracing::warn!(
                    reason,
                    "final write-behind flush failed; cursors replay a little"
                )
            }
            Err(_) => tracing::warn!("write-behind stopped before the final flush"),
        }
        step(ShutdownStep::CloseEventLog);
        self.budget.close();
        self.persister_arbiter.stop();
        let arbiter = self.persister_arbiter;
        let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
    }
}

// ------------------------------------------------------------------------------------------
// The whole ingest path

/// Settings of everything [`start_pipeline`] starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineSettings {
    pub ingest: IngestSettings,
    /// ValidatorShards (`--validator-shards`; default: the number of cores).
    pub shards: usize,
    /// Frames queued per shard before its Subscribers wait.
    pub shard_queue_depth: usize,
    pub shard: ValidatorShardSettings,
    pub resolver: ResolverSettings,
    pub supervisor: HostSupervisorSettings,
    pub subscriber: SubscriberSettings,
    pub account_admin: AccountAdminSettings,
    /// The roots trusted on TLS connections to hosts (`--upstream-ca-file`).
    pub upstream_tls: UpstreamTls,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            ingest: IngestSettings::default(),
            shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
            shard_queue_depth: 1_024,
            shard: ValidatorShardSettings::default(),
            resolver: ResolverSettings::default(),
            supervisor: HostSupervisorSettings::default(),
            subscriber: SubscriberSettings::default(),
            account_admin: AccountAdminSettings::default(),
            upstream_tls: UpstreamTls::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Resolver(#[from] ResolverStartError),
    #[error("recovering account state from the event log: {0}")]
    Recovery(#[from] write_behind::RecoveryError),
}

/// The running ingest path: hosts → shards → durable log.
pub struct Pipeline {
    pub ingest: Ingest,
    pub resolver: Resolver,
    pub shards: ValidatorShards,
    pub supervisor: InstrumentedAddr<HostSupervisor>,
    pub router: ShardRouter,
    pub shard_metrics: ShardMetrics,
    pub subscriber_metrics: SubscriberMetrics,
    /// Hosts known and connected, as the supervisor last published them.
    pub host_counts: host_supervisor::HostCounts,
    /// Takedowns, reversals, the takedown list and account-limit promotions (the admin
    /// routes); give it the firehose's ring with `attach_firehose` once that runs.
    pub accounts: AccountAdmin,
}

/// Brings account state in Postgres up to the event log (the tail after the write-behind's
/// last checkpoint, see [`write_behind::recover_account_state`]), then starts the ingest
/// singletons, the resolver, the shards and the HostSupervisor (which loads the host table
/// and dials every host that is not banned). Must be called inside an actix system.
pub async fn start_pipeline(
    log: EventLog,
    db: Db,
    settings: PipelineSettings,
    clock: WallClock,
    metrics: &ActorMetrics,
    registry: &Registry,
) -> Result<Pipeline, PipelineError> {
    let recovery = write_behind::recover_account_state(&log.reader(), &db).await?;
    tracing::info!(
        checkpoint = recovery.checkpoint,
        head = recovery.head,
        events = recovery.events_read,
        accounts = recovery.accounts,
        "account state recovered from the event log tail"
    );
    let sink = Arc::new(write_behind::PostgresSink::new(db.clone()));
    let log_admin = log.admin();
    let ingest = start_ingest(log, sink, settings.ingest, metrics, registry)?;
    let resolver = Resolver::start(settings.resolver, Some(db.clone()), metrics, registry)?;
    let shard_metrics = ShardMetrics::register(registry)?;
    let warn_only = host_supervisor::InversionWarnOnly::default();
    let host_counts = host_supervisor::HostCounts::register(registry)?;
    let subscriber_metrics = SubscriberMetrics::register(registry)?;
    let (router, queues) = ShardRouter::new(settings.shards, settings.shard_queue_depth);
    let shards = ValidatorShards::start(
        queues,
        ShardDeps {
            resolver: resolver.clone(),
            db: db.clone(),
            sequencer: ingest.sequencer.clone(),
            actor_metrics: metrics.clone(),
            metrics: shard_metrics.clone(),
            clock,
            warn_only: warn_only.clone(),
            tls: settings.upstream_tls.http_config(),
        },
        settings.shard,
    );
    let connector = AwcConnector::new(SubscriberDeps {
        router: router.clone(),
        budget: ingest.budget.clone(),
        pending: ingest.pending.clone(),
        settings: settings.subscriber,
        actor_metrics: metrics.clone(),
        metrics: subscriber_metrics.clone(),
        probes: None,
        tls: settings.upstream_tls.websocket_config(),
    });
    let obs = metrics.actor(HostSupervisor::NAME, HostSupervisor::MAILBOX);
    let supervisor = HostSupervisor::new(
        obs.clone(),
        Arc::new(PostgresHostStore::new(db.clone())),
        Arc::new(connector),
        settings.supervisor,
    )
    .with_cursors(ingest.pending.clone(), Some(ingest.write_behind.clone()))
    .with_inversion_warn_only(warn_only)
    .with_counts(host_counts.clone());
    let supervisor = InstrumentedAddr::new(supervisor.start(), obs);
    let accounts = AccountAdmin::new(
        db,
        router.clone(),
        log_admin,
        ingest.durable_head.clone(),
        supervisor.clone(),
        AccountAdminMetrics::register(registry)?,
        settings.account_admin,
    );
    Ok(Pipeline {
        ingest,
        resolver,
        shards,
        supervisor,
        router,
        shard_metrics,
        subscriber_metrics,
        host_counts,
        accounts,
    })
}

/// The steps of stopping the ingest path, in order (what a bounded shutdown reports as
/// unfinished when it runs out of time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownStep {
    StopSubscribers,
    DrainValidators,
    PersistInFlight,
    FlushPostgres,
    CloseEventLog,
}

impl ShutdownStep {
    pub fn describe(self) -> &'static str {
        match self {
            ShutdownStep::StopSubscribers => "stop the subscribers",
            ShutdownStep::DrainValidators => "drain the validator shards",
            ShutdownStep::PersistInFlight => "persist and sync the events in flight",
            ShutdownStep::FlushPostgres => "flush host cursors and account state to Postgres",
            ShutdownStep::CloseEventLog => "close the event log",
        }
    }
}

impl Pipeline {
    /// Stops in the order that loses nothing: Subscribers (their unfinished marks keep the
    /// cursors below what they did not deliver), then the shards (queued frames handled,
    /// outboxes sent), then ingest (everything sequenced made durable, cursors and account
    /// state flushed).
    pub async fn shutdown(self) {
        self.shutdown_observed(&|_| {}).await;
    }

    /// [`Pipeline::shutdown`], telling `step` what it starts.
    pub async fn shutdown_observed(self, step: &dyn Fn(ShutdownStep)) {
        step(ShutdownStep::StopSubscribers);
        let _ = self.supervisor.send(StopSupervisor).await;
        step(ShutdownStep::DrainValidators);
        drop(self.router);
        self.shards.shutdown().await;
        self.ingest.shutdown_observed(step).await;
    }
}
