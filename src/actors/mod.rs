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
//!   `sequencer::IngestEvent` message is the contract the shards send.
//!
//! Memory is bounded in bytes, not slots (`sequencer::ByteBudget`): a shard acquires a permit
//! for the frame's length before sending, and the permit travels with the event until it is
//! durable. When the budget is spent, shards (and then Subscribers) stop reading (lesson 10).
//!
//! Every actor kind reports through `obs` (mailbox depth, handled, handler time, restarts)
//! and exposes a small observable-state struct that tests and `/metrics` read.

pub mod obs;
pub mod supervision;
