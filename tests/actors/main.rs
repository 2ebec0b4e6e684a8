//! The ingest actors: Sequencer + Persister against a real event log (concurrent producers
//! playing the ValidatorShards' role), and the write-behind against a real Postgres and,
//! on tokio's paused clock, against an in-memory sink; the watchdog's probe of the ingest
//! singletons.

#[path = "../common/mod.rs"]
mod common;

mod account_admin;
mod account_store;
mod host_supervisor;
mod pipeline;
mod relay_outages;
mod relay_pipeline;
mod relay_validation;
mod resolver;
mod shard_scenarios;
mod subscriber;
mod support;
mod watchdog;
mod write_behind;
