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
//! - Subscribers, ValidatorShards, the HostSupervisor and the resolver come next; the
//!   [`shard_router::UpstreamFrame`] and [`sequencer::IngestEvent`] messages are the contracts
//!   the shards send, and [`supervision`] is the restart policy the HostSupervisor applies.
//!
//! - **Broadcaster** (one, supervised) and **ConsumerSession**s (one per websocket): the
//!   firehose out, assembled by [`firehose::start_firehose`]. The Broadcaster runs on the
//!   arbiter `start_firehose` is called on and only follows the durable head; each session
//!   runs on the HTTP worker that accepted its upgrade (see [`firehose`]).
//!
//! Memory is bounded in bytes, not slots ([`sequencer::ByteBudget`]): a shard acquires a permit
//! for the frame's length before sending, and the permit travels with the event until it is
//! durable. When the budget is spent, shards (and then Subscribers) stop reading (lesson 10).
//!
//! Every actor kind reports through [`obs`] (mailbox depth, handled, handler time, restarts)
//! and exposes a small observable-state struct that tests and `/metrics` read.

pub mod account_store;
pub mod broadcaster;
pub mod consumer_session;
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
pub mod write_behind;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix::{Actor, Arbiter, Supervisor};
use prometheus::Registry;
use tokio::sync::watch;

use crate::store::event_log::{EventLog, EventLogReader};
use obs::{ActorMetrics, InstrumentedAddr};
use persister::{Persister, PersisterMetrics};
use sequencer::{ByteBudget, Drain, Sequencer};
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
        let _ = self.sequencer.send(Drain).await;
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
        self.budget.close();
        self.persister_arbiter.stop();
        let arbiter = self.persister_arbiter;
        let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
    }
}
